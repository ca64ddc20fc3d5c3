//! The guard's timeouts and the limiter's caps, on in-memory streams.

use crate::h2::H2_PREFACE;
use crate::*;
use std::io;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn t(ms: u64) -> Option<Duration> {
    Some(Duration::from_millis(ms))
}

fn timeouts(idle: u64, header: u64) -> ConnTimeouts {
    ConnTimeouts {
        idle: t(idle),
        header: t(header),
        write: None,
    }
}

/// An HTTP/2 frame header (+ payload of zeros).
fn frame(ty: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.resize(9 + len, 0);
    f
}

#[tokio::test]
async fn idle_connection_reads_eof() {
    let (a, _b) = tokio::io::duplex(64);
    let mut g = GuardedIo::new(a, timeouts(100, 50));
    let mut buf = [0u8; 8];
    assert_eq!(g.read(&mut buf).await.ok(), Some(0));
}

#[tokio::test]
async fn trickled_header_times_out_and_requests_do_not() {
    let (a, mut b) = tokio::io::duplex(64);
    let mut g = GuardedIo::new(a, timeouts(1000, 50));
    let act = g.activity();
    let mut buf = [0u8; 8];
    b.write_all(b"GET").await.ok();
    assert_eq!(g.read(&mut buf).await.ok(), Some(3));
    let e = g.read(&mut buf).await.err().map(|e| e.kind());
    assert_eq!(e, Some(io::ErrorKind::TimedOut));
    // During a request nothing times out.
    let (a, mut b) = tokio::io::duplex(64);
    let mut g = GuardedIo::new(a, timeouts(100, 50));
    let req = g.activity().request();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let n = g.read(&mut buf).await.ok();
        (n, g)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.write_all(b"x").await.ok();
    let (n, mut g) = reader.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, Some(1));
    // The request ends: the idle timer runs again.
    drop(req);
    assert_eq!(g.read(&mut buf).await.ok(), Some(0));
    drop(act);
}

/// Reads until end of file or error, within `limit`; what happened and
/// when.
async fn read_to_end<S: AsyncRead + Unpin>(
    g: &mut GuardedIo<S>,
    limit: Duration,
) -> Option<(io::Result<()>, Duration)> {
    let start = Instant::now();
    let mut buf = vec![0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match g.read(&mut buf).await {
                Ok(0) => return (Ok(()), start.elapsed()),
                Ok(_) => {}
                Err(e) => return (Err(e), start.elapsed()),
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn http2_idle_counts_requests_not_bytes() {
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(300, 100));
    let act = g.activity();
    let req = act.request();
    // The preface and pings every 50 ms, while a request is in progress
    // (600 ms) and after: only the end of the request starts the idle
    // clock, and the pings do not hold it off.
    let pinger = tokio::spawn(async move {
        b.write_all(H2_PREFACE).await.ok();
        b.write_all(&frame(0x4, 0, 0, 0)).await.ok();
        for _ in 0..40 {
            if b.write_all(&frame(0x6, 0, 0, 8)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b
    });
    let ender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(req);
    });
    let r = read_to_end(&mut g, Duration::from_secs(2)).await;
    let (r, took) = r.unwrap_or_else(|| panic!("still open"));
    assert!(r.is_ok(), "{r:?}");
    assert!(g.is_http2());
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(1300),
        "closed after {took:?}"
    );
    ender.await.ok();
    drop(pinger);
}

#[tokio::test]
async fn http2_header_block_is_timed_from_headers_to_end_headers() {
    // A complete header block (HEADERS without END_HEADERS, then a
    // CONTINUATION with it), then a request in progress: no timeout.
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(300, 200)).http2();
    let act = g.activity();
    b.write_all(H2_PREFACE).await.ok();
    b.write_all(&frame(0x1, 0, 1, 10)).await.ok();
    b.write_all(&frame(0x9, 0x4, 1, 5)).await.ok();
    let mut buf = [0u8; 1024];
    let mut got = 0;
    while got < 24 + 19 + 14 {
        got += g.read(&mut buf).await.unwrap_or(0);
    }
    let req = act.request();
    let r = tokio::time::timeout(Duration::from_millis(500), g.read(&mut buf)).await;
    assert!(r.is_err(), "timed out with a request in progress: {r:?}");
    // Another stream's HEADERS without END_HEADERS, never finished:
    // the header timeout, although a request is in progress.
    b.write_all(&frame(0x1, 0, 3, 4)).await.ok();
    let (r, took) = read_to_end(&mut g, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("still open"));
    assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    assert!(took < Duration::from_millis(400), "{took:?}");
    drop(req);
    // A HEADERS frame whose payload trickles is still a head in progress.
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(5000, 200));
    b.write_all(H2_PREFACE).await.ok();
    b.write_all(&frame(0x1, 0x4, 1, 100)[..20]).await.ok();
    let (r, took) = read_to_end(&mut g, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("still open"));
    assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    assert!(took < Duration::from_millis(400), "{took:?}");
}

#[tokio::test]
async fn preface_split_over_reads_is_recognised() {
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(300, 100));
    let mut buf = [0u8; 64];
    b.write_all(&H2_PREFACE[..5]).await.ok();
    assert_eq!(g.read(&mut buf).await.ok(), Some(5));
    b.write_all(&H2_PREFACE[5..]).await.ok();
    b.write_all(&frame(0x4, 0, 0, 6)).await.ok();
    // HTTP/1 would hit the 100 ms header timeout; HTTP/2 idles out.
    let (r, took) = read_to_end(&mut g, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("still open"));
    assert!(r.is_ok(), "{r:?}");
    assert!(g.is_http2());
    assert!(took >= Duration::from_millis(200), "{took:?}");
}

#[tokio::test]
async fn detected_preface_is_replayed_and_keeps_its_clocks() {
    // HTTP/2: the preface, settings and an unfinished head are read to
    // decide, read again by the next reads, and the header clock that
    // the head started keeps running (declaring HTTP/2 again changes
    // nothing).
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(5000, 200));
    let mut sent = H2_PREFACE.to_vec();
    sent.extend(frame(0x4, 0, 0, 0));
    sent.extend(frame(0x1, 0, 1, 3));
    b.write_all(&sent).await.ok();
    assert!(g.detect_http2().await.unwrap_or(false));
    let mut g = g.http2();
    let mut got = vec![0u8; sent.len()];
    g.read_exact(&mut got)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, sent);
    let (r, _) = read_to_end(&mut g, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("still open"));
    assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    // HTTP/1: decided on the first byte that differs, replayed too.
    let (a, mut b) = tokio::io::duplex(4096);
    let mut g = GuardedIo::new(a, timeouts(5000, 200));
    b.write_all(b"GETATTR / HTTP/1.1\r\n").await.ok();
    assert!(!g.detect_http2().await.unwrap_or(true));
    let mut got = [0u8; 20];
    g.read_exact(&mut got)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&got, b"GETATTR / HTTP/1.1\r\n");
    // Nothing at all: the idle timeout decides (end of file).
    let (a, _b) = tokio::io::duplex(64);
    let mut g = GuardedIo::new(a, timeouts(100, 50));
    assert!(!g.detect_http2().await.unwrap_or(true));
    assert_eq!(g.read(&mut got).await.ok(), Some(0));
}

#[tokio::test]
async fn blocked_write_times_out() {
    let (a, mut b) = tokio::io::duplex(1024);
    let mut g = GuardedIo::new(
        a,
        ConnTimeouts {
            idle: None,
            header: None,
            write: t(200),
        },
    );
    let start = Instant::now();
    let chunk = [7u8; 512];
    let e = loop {
        match g.write(&chunk).await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(600),
        "{took:?}"
    );
    // A reader that keeps up is never cut off.
    let (a, mut b2) = tokio::io::duplex(1024);
    let mut g = GuardedIo::new(
        a,
        ConnTimeouts {
            idle: None,
            header: None,
            write: t(200),
        },
    );
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        let mut n = 0;
        while n < 64 * 1024 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            n += b2.read(&mut buf).await.unwrap_or(0);
        }
    });
    for _ in 0..128 {
        g.write_all(&chunk).await.unwrap_or_else(|e| panic!("{e}"));
    }
    reader.await.ok();
    let mut sink = [0u8; 4096];
    let _ = b.read(&mut sink).await;
}

#[tokio::test]
async fn limiter_closes_the_idlest_and_refuses_when_none_is_idle() {
    let limiter = ConnLimiter::new(Some(2), None);
    let ip: Option<IpAddr> = "192.0.2.1".parse().ok();
    let (a1, _p1) = tokio::io::duplex(64);
    let mut a = GuardedIo::admitted(
        a1,
        timeouts(60_000, 10_000),
        limiter.admit(ip).unwrap_or_else(|e| panic!("{e}")),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (b1, _p2) = tokio::io::duplex(64);
    let b = GuardedIo::admitted(
        b1,
        timeouts(60_000, 10_000),
        limiter.admit(ip).unwrap_or_else(|e| panic!("{e}")),
    );
    let b_req = b.activity().request();
    // A reader parked on `a` is woken and sees end of file.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let n = a.read(&mut buf).await.ok();
        (n, a)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = limiter.admit(ip).unwrap_or_else(|e| panic!("{e}"));
    let (n, a) = tokio::time::timeout(Duration::from_secs(1), reader)
        .await
        .unwrap_or_else(|_| panic!("the idlest connection was not closed"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, Some(0));
    assert_eq!(limiter.open(), 2);
    drop(a);
    assert_eq!(
        limiter.open(),
        2,
        "an evicted connection's place is not freed twice"
    );
    // `b` is busy and `c` is not wrapped yet (mid-handshake): refused.
    assert_eq!(limiter.admit(ip).err(), Some(Refused::Full));
    drop(b_req);
    let d = limiter.admit(ip).unwrap_or_else(|e| panic!("{e}"));
    drop((b, c, d));
    assert_eq!(limiter.open(), 0);
}

#[tokio::test]
async fn per_ip_cap_makes_room_within_the_address_only() {
    let limiter = ConnLimiter::new(None, Some(1));
    let x: Option<IpAddr> = "192.0.2.1".parse().ok();
    let y: Option<IpAddr> = "192.0.2.2".parse().ok();
    let (s1, _p1) = tokio::io::duplex(64);
    let x1 = GuardedIo::admitted(
        s1,
        timeouts(60_000, 10_000),
        limiter.admit(x).unwrap_or_else(|e| panic!("{e}")),
    );
    let (s2, _p2) = tokio::io::duplex(64);
    let y1 = GuardedIo::admitted(
        s2,
        timeouts(60_000, 10_000),
        limiter.admit(y).unwrap_or_else(|e| panic!("{e}")),
    );
    let y_req = y1.activity().request();
    // x's second connection closes x's first (idle); y's is refused
    // (its only one is busy), and x's is never touched for it.
    let x2 = limiter.admit(x).unwrap_or_else(|e| panic!("{e}"));
    assert!(x1.shared.lock().evicted);
    assert_eq!(limiter.admit(y).err(), Some(Refused::PerIp));
    assert!(!y1.shared.lock().evicted);
    drop((x1, x2, y_req, y1));
    assert_eq!(limiter.open(), 0);
}

#[test]
fn max_connections_formula() {
    assert_eq!(max_connections_for(256, 1024), 96);
    assert_eq!(max_connections_for(1024, 1024), 480);
    assert_eq!(max_connections_for(65536, 1024), 65536 - 64 - 1024);
    assert_eq!(max_connections_for(65536, 0), (65536 - 64) / 2);
    assert_eq!(max_connections_for(10, 1024), 1);
}

/// Connections closed to make room count until their descriptors are
/// released: past MAX_CLOSING of them the limiter refuses instead of
/// closing more, and `settled` returns once one is gone.
#[tokio::test]
async fn closed_connections_hold_their_place_until_gone() {
    let limiter = ConnLimiter::new(Some(1), None);
    let ip: Option<IpAddr> = "192.0.2.1".parse().ok();
    let mut held = Vec::new();
    let mut pipes = Vec::new();
    let (s, p) = tokio::io::duplex(64);
    pipes.push(p);
    held.push(GuardedIo::admitted(
        s,
        timeouts(60_000, 10_000),
        limiter.admit(ip).unwrap_or_else(|e| panic!("{e}")),
    ));
    // Each new connection closes the previous (idle) one, whose task has
    // not run: its descriptor is still open.
    for _ in 0..MAX_CLOSING {
        let (s, p) = tokio::io::duplex(64);
        pipes.push(p);
        held.push(GuardedIo::admitted(
            s,
            timeouts(60_000, 10_000),
            limiter.admit(ip).unwrap_or_else(|e| panic!("{e}")),
        ));
    }
    assert_eq!(limiter.open(), 1);
    assert_eq!(limiter.closing(), MAX_CLOSING);
    assert_eq!(limiter.admit(ip).err(), Some(Refused::Closing));
    let settled = limiter.clone();
    let waiter = tokio::spawn(async move { settled.settled().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiter.is_finished(),
        "settled() returned with {MAX_CLOSING} closing"
    );
    // The oldest closed connection goes: room again.
    drop(held.remove(0));
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .unwrap_or_else(|_| panic!("settled() did not return once one was gone"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(limiter.closing(), MAX_CLOSING - 1);
    let last = limiter.admit(ip).unwrap_or_else(|e| panic!("{e}"));
    drop((held, last));
    assert_eq!((limiter.open(), limiter.closing()), (0, 0));
}
