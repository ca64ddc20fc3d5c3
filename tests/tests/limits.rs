//! Limits that protect the host, and slow clients, over real HTTP against
//! both example servers (the axum app and the Pingora gateway): each cap
//! exceeded answers the documented way, and the server keeps serving
//! others afterwards.

use spockfs_tests::raw::{read_response, Raw};
use spockfs_tests::servers::{up, Conf, Srv, BOTH};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (Content-Length or chunked body) within `limit`.
async fn read_raw(sock: &mut TcpStream, limit: Duration) -> Result<Raw, String> {
    read_response(sock, &mut Vec::new(), tokio::time::Instant::now() + limit).await
}

/// Waits until the server closes `sock` (EOF or reset); its response, if
/// it sent one first, is returned too. `Err` if still open after `limit`.
async fn wait_closed(sock: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut tmp)).await {
            Err(_) => return Err("still open".into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

fn is_spock_error(r: &spockfs_tests::Resp, status: u16, errno: &str) {
    assert_eq!(r.status.as_u16(), status, "{r:?}");
    assert_eq!(r.errno(), errno, "{r:?}");
    assert!(
        r.body.ends_with(b"\n") && r.body.iter().filter(|&&b| b == b'\n').count() == 1,
        "not one line: {:?}",
        r.body
    );
}

/// Over `max_requests`: a request waits `max_requests_wait`, then 503 with
/// Retry-After and EAGAIN; with the wait queue full, 503 at once; and once
/// the slots free up, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_answers_503_and_recovers() {
    for srv in BOTH {
        let conf = Conf {
            max_requests: Some(2),
            wait_ms: Some(300),
            ..Conf::default()
        };
        let s = up(srv, &conf).await;
        // Two PUTs whose bodies stall hold both slots.
        let mut holders = Vec::new();
        for i in 0..2 {
            let mut c = connect(s.addr).await;
            let head =
                format!("PUT /fs/f{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde");
            c.write_all(head.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            holders.push(c);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = s.client.req("GETATTR", "/", &[]).await;
        let waited = t.elapsed();
        is_spock_error(&r, 503, "EAGAIN");
        assert_eq!(r.header("retry-after"), "1", "{srv:?}");
        assert!(
            waited >= Duration::from_millis(280) && waited < Duration::from_secs(3),
            "{srv:?}: 503 after {waited:?}, expected after the 300 ms wait"
        );
        // With the wait queue full (as many waiting as the cap), shed at once.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let c = s.client.clone();
                tokio::spawn(async move { c.req("GETATTR", "/", &[]).await.status.as_u16() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let t = Instant::now();
        let r = s.client.req("GETATTR", "/", &[]).await;
        let shed = t.elapsed();
        is_spock_error(&r, 503, "EAGAIN");
        assert!(
            shed < Duration::from_millis(200),
            "{srv:?}: queue full, but the 503 took {shed:?}"
        );
        for h in slow {
            assert_eq!(h.await.unwrap_or(0), 503, "{srv:?}");
        }
        // Free the slots: the held PUTs complete, and service resumes.
        for (i, c) in holders.iter_mut().enumerate() {
            c.write_all(b"fghij")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let r = read_raw(c, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{srv:?} holder {i}: {e}"));
            assert_eq!(r.status, 201, "{srv:?} {r:?}");
        }
        let r = s.client.req("GETATTR", "/f0", &[]).await;
        assert_eq!(r.status, 200, "{srv:?}");
        assert_eq!(r.header("x-spock-size"), "10");
        println!("{srv:?}: 503 after waiting {waited:?}; shed with a full queue in {shed:?}");
    }
}

/// PUT over `max_put_size`: 413 EFBIG and nothing written or changed, for a
/// Content-Length, a Content-Range and a chunked body (which fails mid-way);
/// the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_size_cap_answers_413_and_changes_nothing() {
    for srv in BOTH {
        let s = up(
            srv,
            &Conf {
                max_put: Some(100_000),
                ..Conf::default()
            },
        )
        .await;
        std::fs::write(s.root.join("f"), b"previous").unwrap_or_else(|e| panic!("{e}"));
        let big = vec![b'x'; 150_000];
        // Content-Length over the limit.
        let r = s.client.send("PUT", "/f", &[], big.clone()).await;
        is_spock_error(&r, 413, "EFBIG");
        let r = s.client.send("PUT", "/new", &[], big.clone()).await;
        is_spock_error(&r, 413, "EFBIG");
        // Content-Range over the limit.
        let r = s
            .client
            .send(
                "PUT",
                "/f",
                &[("content-range", b"bytes=0-149999")],
                big.clone(),
            )
            .await;
        is_spock_error(&r, 413, "EFBIG");
        // Chunked, exceeding the limit after 10 chunks of 16 KiB: the
        // previous content stays.
        let mut c = connect(s.addr).await;
        c.write_all(b"PUT /fs/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000));
        for _ in 0..10 {
            if c.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = c.write_all(b"0\r\n\r\n").await;
        let r = read_raw(&mut c, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{srv:?} chunked: {e}"));
        assert_eq!(r.status, 413, "{srv:?}: {r:?}");
        assert_eq!(r.header("x-spock-errno"), Some("EFBIG"));
        assert_eq!(
            std::fs::read(s.root.join("f")).unwrap_or_default(),
            b"previous",
            "{srv:?}"
        );
        let mut names: Vec<_> = std::fs::read_dir(&s.root)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["f"], "{srv:?}: something was left behind");
        // At the limit: fine.
        let ok = vec![b'z'; 100_000];
        let r = s.client.send("PUT", "/f", &[], ok.clone()).await;
        assert_eq!(r.status, 200, "{srv:?}");
        assert_eq!(std::fs::read(s.root.join("f")).unwrap_or_default(), ok);
        // Chunked under the limit too.
        let mut c = connect(s.addr).await;
        c.write_all(
            b"PUT /fs/g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let r = read_raw(&mut c, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 201, "{srv:?}");
        assert_eq!(s.client.req("GETATTR", "/", &[]).await.status, 200);
    }
}

/// Request heads over `max_header_bytes`: 431; under it: served; and the
/// server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_size_cap_answers_431() {
    for srv in BOTH {
        let s = up(
            srv,
            &Conf {
                max_header: Some(16 * 1024),
                ..Conf::default()
            },
        )
        .await;
        let fits = "a".repeat(12 * 1024);
        let r = s.client.req("GETATTR", "/", &[("x-pad", &fits)]).await;
        assert_eq!(r.status, 200, "{srv:?}: a 12 KiB head under a 16 KiB limit");
        let mut c = connect(s.addr).await;
        let head = format!(
            "GETATTR /fs/ HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "b".repeat(17 * 1024)
        );
        c.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = read_raw(&mut c, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{srv:?}: {e}"));
        assert_eq!(r.status, 431, "{srv:?}: {r:?}");
        if srv == Srv::Gateway {
            assert_eq!(r.header("x-spock-errno"), Some("E2BIG"));
        }
        assert_eq!(s.client.req("GETATTR", "/", &[]).await.status, 200);
    }
}

/// READDIR streams: a listing longer than one batch is sent chunked and
/// complete (plain and readdir-attrs), a short one keeps its
/// Content-Length, and over `readdir_max_entries` it is 413 E2BIG before
/// anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_streams_and_entry_cap_answers_413() {
    let n = 5000;
    for srv in BOTH {
        let s = up(
            srv,
            &Conf {
                readdir_max: Some(n as u64),
                ..Conf::default()
            },
        )
        .await;
        let big = s.root.join("big");
        std::fs::create_dir(&big).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..n {
            std::fs::write(big.join(format!("file-{i:05}")), b"").unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir(s.root.join("small")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(s.root.join("small/a"), b"1").unwrap_or_else(|e| panic!("{e}"));

        let r = s.client.req("READDIR", "/big", &[]).await;
        assert_eq!(r.status, 200, "{srv:?}");
        assert_eq!(r.header("transfer-encoding"), "chunked", "{srv:?}");
        let mut lines: Vec<&[u8]> = r.body.split(|&b| b == b'\n').collect();
        assert_eq!(lines.pop(), Some(&b""[..]));
        assert_eq!(&lines[..2], [&b"."[..], b".."]);
        let mut names: Vec<Vec<u8>> = lines[2..].iter().map(|l| l.to_vec()).collect();
        names.sort();
        let want: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("file-{i:05}").into_bytes())
            .collect();
        assert_eq!(names, want, "{srv:?}: plain listing");

        let r = s
            .client
            .req("READDIR", "/big", &[("x-spock-readdir", "attrs")])
            .await;
        assert_eq!(r.status, 200, "{srv:?}");
        let mut names: Vec<Vec<u8>> = r
            .body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, st) = spockfs_core::listing::parse_attrs_line(l)
                    .unwrap_or_else(|| panic!("bad line {l:?}"));
                assert_eq!(st.mode & 0o170000, 0o100000);
                name.to_vec()
            })
            .collect();
        names.sort();
        assert_eq!(names, want, "{srv:?}: attrs listing");

        let r = s.client.req("READDIR", "/small", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b".\n..\na\n");
        assert_eq!(r.header("content-length"), "7", "{srv:?}");

        std::fs::write(big.join("one-too-many"), b"").unwrap_or_else(|e| panic!("{e}"));
        for attrs in [None, Some("attrs")] {
            let h: Vec<(&str, &str)> = attrs.map(|a| ("x-spock-readdir", a)).into_iter().collect();
            let r = s.client.req("READDIR", "/big", &h).await;
            is_spock_error(&r, 413, "E2BIG");
        }
        assert_eq!(s.client.req("READDIR", "/small", &[]).await.status, 200);
    }
}

/// A PUT body that stalls: 408 ETIMEDOUT after `body_timeout`, the
/// connection closed, the previous content intact. Both a whole-file PUT
/// and a ranged one small enough to be read before the file is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_answers_408() {
    let heads: [&[u8]; 2] = [
        b"PUT /fs/f HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        b"PUT /fs/f HTTP/1.1\r\nHost: x\r\nContent-Range: bytes=0-99\r\nContent-Length: 100\r\n\r\nabc",
    ];
    for (srv, head) in BOTH.into_iter().flat_map(|s| heads.map(|h| (s, h))) {
        let s = up(
            srv,
            &Conf {
                body_ms: Some(800),
                ..Conf::default()
            },
        )
        .await;
        std::fs::write(s.root.join("f"), b"previous").unwrap_or_else(|e| panic!("{e}"));
        let mut c = connect(s.addr).await;
        let t = Instant::now();
        c.write_all(head).await.unwrap_or_else(|e| panic!("{e}"));
        let r = read_raw(&mut c, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{srv:?}: {e}"));
        let took = t.elapsed();
        assert_eq!(r.status, 408, "{srv:?}: {r:?}");
        assert_eq!(r.header("x-spock-errno"), Some("ETIMEDOUT"));
        assert!(
            took >= Duration::from_millis(750) && took < Duration::from_secs(3),
            "{srv:?}: 408 after {took:?}"
        );
        wait_closed(&mut c, Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{srv:?}: connection after 408: {e}"));
        assert_eq!(
            std::fs::read(s.root.join("f")).unwrap_or_default(),
            b"previous"
        );
        assert_eq!(s.client.req("GETATTR", "/f", &[]).await.status, 200);
    }
}

/// Slowloris: connections trickling a header, trickling a body, or sitting
/// idle are all closed after their timeout, while a normal client on the
/// same server keeps getting fast answers the whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_others_stay_fast() {
    for srv in BOTH {
        let conf = Conf {
            header_ms: Some(1000),
            idle_ms: Some(1500),
            body_ms: Some(1000),
            ..Conf::default()
        };
        let s = up(srv, &conf).await;
        std::fs::write(s.root.join("f"), b"previous").unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        let mut attackers = Vec::new();
        for i in 0..24 {
            let addr = s.addr;
            attackers.push(tokio::spawn(async move {
                let kind = i % 3;
                let mut c = connect(addr).await;
                let t = Instant::now();
                let (head, trickle): (&[u8], u8) = match kind {
                    // A header, one byte every 100 ms, never finished.
                    0 => (b"GETATTR /fs/ HTTP/1.1\r\nHost: x\r\n", b'X'),
                    // A body, one byte every 100 ms.
                    1 => (
                        b"PUT /fs/f HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
                        b'y',
                    ),
                    // Nothing at all.
                    _ => (b"", 0),
                };
                if c.write_all(head).await.is_err() {
                    return (kind, t.elapsed(), Vec::new());
                }
                let mut got = Vec::new();
                loop {
                    if t.elapsed() > Duration::from_secs(8) {
                        return (kind, Duration::MAX, got);
                    }
                    if let Ok(g) = wait_closed(&mut c, Duration::from_millis(100)).await {
                        got.extend(g);
                        return (kind, t.elapsed(), got);
                    }
                    if trickle != 0 && c.write_all(&[trickle]).await.is_err() {
                        let g = wait_closed(&mut c, Duration::from_secs(1)).await;
                        return (kind, t.elapsed(), g.unwrap_or_default());
                    }
                }
            }));
        }
        // Meanwhile, a normal client.
        let mut lat = Vec::new();
        while start.elapsed() < Duration::from_millis(3500) {
            let t = Instant::now();
            let r = s.client.req("GETATTR", "/f", &[]).await;
            lat.push(t.elapsed());
            assert_eq!(r.status, 200, "{srv:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut closed = [Vec::new(), Vec::new(), Vec::new()];
        for a in attackers {
            let (kind, took, got) = a.await.unwrap_or_else(|e| panic!("{e}"));
            let (lo, hi) = match kind {
                0 => (900, 3000),
                1 => (900, 3000),
                _ => (1400, 3500),
            };
            assert!(
                took >= Duration::from_millis(lo) && took <= Duration::from_millis(hi),
                "{srv:?}: attacker kind {kind} closed after {took:?}, expected {lo}-{hi} ms"
            );
            if kind == 1 {
                let text = String::from_utf8_lossy(&got);
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "{srv:?}: trickled body got {text:?}"
                );
            }
            closed[kind].push(took);
        }
        assert_eq!(
            std::fs::read(s.root.join("f")).unwrap_or_default(),
            b"previous"
        );
        lat.sort();
        let p50 = lat[lat.len() / 2];
        let p99 = lat[lat.len() * 99 / 100];
        let max = lat[lat.len() - 1];
        let span = |v: &Vec<Duration>| {
            format!(
                "{:?}..{:?}",
                v.iter().min().copied().unwrap_or_default(),
                v.iter().max().copied().unwrap_or_default()
            )
        };
        println!(
            "{srv:?}: header trickles closed after {}, body trickles after {}, idle after {}; \
             normal client: {} requests, p50 {p50:?}, p99 {p99:?}, max {max:?}",
            span(&closed[0]),
            span(&closed[1]),
            span(&closed[2]),
            lat.len()
        );
        assert!(
            p99 < Duration::from_millis(250) && max < Duration::from_secs(1),
            "{srv:?}: normal client slowed down: p99 {p99:?}, max {max:?}"
        );
        assert!(lat.len() > 20, "{srv:?}: only {} requests", lat.len());
    }
}
