//! Reading request bodies within the limits: the body deadline
//! ([`Limits::body_timeout`](super::Limits::body_timeout)), bounded reads,
//! streaming to the blocking pool chunk by chunk, and draining what a
//! response left unread.

use super::exec::{joined, Cx, Fail};
use super::parse::Reject;
use super::{BoxError, Engine};
use crate::body::SpockBody;
use crate::identity;
use crate::pool::{BlockingPool, JobHandle};
use crate::{Errno, FsResult};
use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::time::Duration;

impl Engine {
    /// Drains what is left of the request body (bounded) so the connection
    /// can be reused; if too much is left, asks the client to close.
    pub(super) async fn finish<B>(
        &self,
        version: http::Version,
        mut resp: Response<SpockBody>,
        mut body: Pin<&mut B>,
    ) -> Response<SpockBody>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return resp;
        }
        // A body that stalled (408) will not be drained either.
        if resp.status() != StatusCode::REQUEST_TIMEOUT
            && body.size_hint().lower() <= self.limits.drain as u64
        {
            let mut drained = 0usize;
            let deadline = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    frame = body.frame() => match frame {
                        None => return resp,
                        Some(Ok(f)) => {
                            drained += f.data_ref().map_or(0, |d| d.remaining());
                            if drained > self.limits.drain {
                                break;
                            }
                        }
                        Some(Err(_)) => break,
                    },
                    _ = &mut deadline => break,
                }
            }
        }
        // Unread body left on an HTTP/1 connection: it cannot be reused.
        if version <= http::Version::HTTP_11 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The body deadline ([`Limits::body_timeout`](super::Limits::body_timeout)): each `chunk` bytes of a
/// request body (or its rest, if shorter) must arrive within `timeout`, so a
/// stalled body fails after `timeout` and a trickling one as soon as a
/// chunk takes longer.
pub(super) struct BodyClock {
    timeout: Duration,
    chunk: usize,
    deadline: tokio::time::Instant,
    received: usize,
}

impl BodyClock {
    pub(super) fn new(timeout: Duration, chunk: usize) -> BodyClock {
        BodyClock {
            timeout,
            chunk: chunk.max(1),
            deadline: tokio::time::Instant::now() + timeout,
            received: 0,
        }
    }

    fn got(&mut self, n: usize) {
        self.received += n;
        if self.received >= self.chunk {
            self.received %= self.chunk;
            self.deadline = tokio::time::Instant::now() + self.timeout;
        }
    }
}

/// The next frame of a request body, by the clock's deadline: a body that
/// stalls or trickles is 408 (`ETIMEDOUT`).
async fn next_frame<B>(
    mut body: Pin<&mut B>,
    clock: &mut BodyClock,
) -> Result<Option<http_body::Frame<B::Data>>, Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout_at(clock.deadline, body.frame()).await {
        Err(_) => Err(Fail::Reject(Reject {
            status: StatusCode::REQUEST_TIMEOUT,
            errno: Errno::ETIMEDOUT,
            message: format!(
                "request body too slow: less than {} bytes in {} s",
                clock.chunk,
                clock.timeout.as_secs_f32()
            ),
        })),
        Ok(None) => Ok(None),
        Ok(Some(Ok(f))) => {
            clock.got(f.data_ref().map_or(0, |d| d.remaining()));
            Ok(Some(f))
        }
        Ok(Some(Err(e))) => Err(Fail::Reject(Reject::bad(format!(
            "reading request body: {}",
            e.into()
        )))),
    }
}

/// A PUT body over [`Limits::max_put_size`](super::Limits::max_put_size).
pub(super) fn too_large(max: u64) -> Fail {
    Fail::Reject(Reject {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        errno: Errno::EFBIG,
        message: format!("PUT body larger than this server's limit of {max} bytes"),
    })
}

/// Reads a whole body of at most `limit` bytes; more is 413.
pub(super) async fn read_limited<B>(
    mut body: Pin<&mut B>,
    limit: usize,
    mut clock: BodyClock,
) -> Result<Bytes, Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(Fail::Errno(Errno::E2BIG));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = next_frame(body.as_mut(), &mut clock).await? {
        if let Ok(mut data) = frame.into_data() {
            if buf.len() + data.remaining() > limit {
                return Err(Fail::Errno(Errno::E2BIG));
            }
            while data.has_remaining() {
                let c = data.chunk();
                buf.extend_from_slice(c);
                let n = c.len();
                data.advance(n);
            }
        }
    }
    Ok(buf.freeze())
}

/// How [`stream_to`] reads the body.
pub(super) struct BodyRules {
    /// Bytes per write.
    pub(super) chunk: usize,
    /// The announced length, if any: more or fewer bytes is 400.
    pub(super) announced: Option<u64>,
    /// The server's PUT limit: more is 413.
    pub(super) cap: Option<u64>,
    /// Longest wait for the next frame.
    pub(super) timeout: Duration,
}

/// Streams the request body to `write` in chunks, each write on a blocking
/// thread while the next chunk is read (one write in flight, so at most two
/// chunks in memory). Fails unless the body has the announced length.
pub(super) async fn stream_to<B, W, F>(
    pool: &BlockingPool,
    cx: Cx<'_>,
    mut body: Pin<&mut B>,
    rules: BodyRules,
    mut write: W,
) -> Result<(), Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
    W: FnMut(Bytes, u64) -> F,
    F: FnOnce() -> FsResult<()> + Send + 'static,
{
    let chunk = rules.chunk;
    let max = rules.announced.unwrap_or(u64::MAX);
    let mut buf = BytesMut::with_capacity(chunk.min(max as usize));
    let mut written: u64 = 0;
    let mut eof = false;
    let mut clock = BodyClock::new(rules.timeout, chunk);
    let mut pending: Option<JobHandle<FsResult<()>>> = None;
    while !eof {
        // Fill one chunk.
        while buf.len() < chunk {
            match next_frame(body.as_mut(), &mut clock).await? {
                None => {
                    eof = true;
                    break;
                }
                Some(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let c = data.chunk();
                            buf.extend_from_slice(c);
                            let n = c.len();
                            data.advance(n);
                        }
                    }
                }
            }
            if let Some(cap) = rules.cap {
                if written + buf.len() as u64 > cap {
                    return Err(too_large(cap));
                }
            }
        }
        if buf.is_empty() {
            break;
        }
        if written + buf.len() as u64 > max {
            return Err(Fail::Reject(Reject::bad(
                "request body longer than announced",
            )));
        }
        let data = buf.split().freeze();
        let n = data.len() as u64;
        let job = write(data, written);
        // One write in flight: the previous chunk's must have succeeded
        // before this one is submitted (so a failed write stops the
        // stream), and this one runs while the next chunk arrives.
        if let Some(p) = pending.take() {
            joined(p).await??;
        }
        if cx.backend.is_blocking() {
            // As the request's identity: the kernel's write path decides
            // what a write clears (set-ID bits) by the writer's capabilities.
            let who = cx.who.clone();
            pending = Some(pool.run(move || identity::run_as(who.as_ref(), job).and_then(|r| r)));
        } else {
            identity::acting_as(cx.who.as_ref(), job)?;
        }
        written += n;
        buf.reserve(chunk);
    }
    if let Some(p) = pending.take() {
        joined(p).await??;
    }
    if rules.announced.is_some_and(|n| n != written) {
        return Err(Fail::Reject(Reject::bad(format!(
            "request body ended after {written} of {max} bytes"
        ))));
    }
    Ok(())
}
