//! Raw HTTP/1.1 responses read off a socket, for tests that must control
//! the bytes on the wire (pipelining, early answers, clients that vanish).

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// A response read off a socket.
#[derive(Debug)]
pub struct Raw {
    /// Status code.
    pub status: u16,
    /// Status line and headers, without the blank line.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Raw {
    /// The first value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (a `Content-Length` or chunked body; none without
/// either) by `deadline`. `buf` holds bytes already read from `sock` and
/// keeps what follows the response (the next pipelined one).
pub async fn read_response(
    sock: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Raw, String> {
    let end = loop {
        if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break e;
        }
        read_more(sock, buf, deadline).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut r = Raw {
        status,
        head,
        body: Vec::new(),
    };
    buf.drain(..end + 4);
    if let Some(len) = r.header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        while buf.len() < len {
            read_more(sock, buf, deadline).await?;
        }
        r.body = buf.drain(..len).collect();
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                read_more(sock, buf, deadline).await?;
                continue;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..eol]).trim(), 16)
                .map_err(|_| "bad chunk size")?;
            while buf.len() < eol + 2 + size + 2 {
                read_more(sock, buf, deadline).await?;
            }
            r.body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
            buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Ok(r)
}

async fn read_more(
    sock: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), String> {
    let mut tmp = vec![0u8; 65536];
    let n = tokio::time::timeout_at(deadline, sock.read(&mut tmp))
        .await
        .map_err(|_| "timed out reading the response".to_string())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}
