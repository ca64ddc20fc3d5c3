//! Connection protection shared by the example servers: a transparent
//! wrapper around a connection's byte stream ([`GuardedIo`]) that enforces
//! the connection timeouts of HTTP/1 and HTTP/2, and a registry of open
//! connections ([`ConnLimiter`]) that caps how many there are, in all and
//! per client address.
//!
//! The wrapper cannot parse HTTP/1; the server tells it when a request head
//! has been read and when its response is done ([`ConnActivity::request`],
//! whose guard ends the request when dropped). Of HTTP/2 it reads just the
//! frame headers. The timeouts ([`ConnTimeouts`]):
//!
//! - **idle**: no request in progress for [`ConnTimeouts::idle`] (from
//!   accept, or from the end of the last response): the read side reports
//!   end of file and the server closes the connection quietly. For HTTP/2
//!   this counts requests, not bytes: pings and window updates do not keep
//!   a connection open.
//! - **header**: a request head started but not complete within
//!   [`ConnTimeouts::header`]: the read side fails with `TimedOut` and the
//!   server drops the connection. HTTP/1: from the first byte of the head
//!   to the server taking the request. HTTP/2: from a `HEADERS` frame to
//!   the end of the frame that carries `END_HEADERS` (the stream's
//!   `HEADERS` or its last `CONTINUATION`), whatever else is in progress.
//! - **write**: a write that stays blocked (the client reads nothing) for
//!   [`ConnTimeouts::write`] fails with `TimedOut` and the server drops the
//!   connection.
//!
//! While an HTTP/1 request is in progress the read side adds nothing:
//! request bodies are covered by the engine's
//! [`Limits::body_timeout`](crate::Limits), and slow filesystem calls must
//! not be cut off. HTTP/2 is recognised by its preface (or declared with
//! [`GuardedIo::http2`] when ALPN chose it); its keep-alive pings are the
//! HTTP/2 stack's (hyper's, or the gateway's own loop).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection timeouts; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// Longest time without a request in progress: after accept, after the
    /// previous response (keep-alive idle time), and for HTTP/2 between
    /// requests whatever else the client sends.
    pub idle: Option<Duration>,
    /// Longest time from the start of a request head to its end.
    pub header: Option<Duration>,
    /// Longest time one write may stay blocked because the client does not
    /// read (the socket buffer is full).
    pub write: Option<Duration>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
struct State {
    in_flight: usize,
    idle_since: Instant,
    header_started: Option<Instant>,
    /// HTTP/2: the header clock follows frames, not requests.
    h2: bool,
    /// Wrapped in a [`GuardedIo`] (past any TLS handshake): only such a
    /// connection may be closed to make room for another.
    guarded: bool,
    /// Closed by the [`ConnLimiter`] to make room: the read side reports
    /// end of file as soon as no request is in progress.
    evicted: bool,
    /// The parked reader (woken when a request ends, so the idle timer
    /// starts, or when the connection is evicted).
    reader: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn new(guarded: bool) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                header_started: None,
                h2: false,
                guarded,
                evicted: false,
                reader: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells a [`GuardedIo`] when requests start and end. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnActivity {
    shared: Arc<Shared>,
}

impl ConnActivity {
    /// A request head has been read: the connection is not idle until the
    /// returned guard is dropped (at the end of the response). HTTP/2:
    /// call it once per stream.
    pub fn request(&self) -> RequestActive {
        let mut st = self.shared.lock();
        st.in_flight += 1;
        if !st.h2 {
            st.header_started = None;
        }
        RequestActive {
            shared: self.shared.clone(),
        }
    }
}

/// A request in progress on a guarded connection; dropping it ends it.
#[derive(Debug)]
pub struct RequestActive {
    shared: Arc<Shared>,
}

impl Drop for RequestActive {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            // A read may be parked without a timer (it started while this
            // request was in progress): wake it to arm the idle timer.
            if let Some(w) = st.reader.take() {
                w.wake();
            }
        }
    }
}

/// Follows the HTTP/2 frames a client sends, far enough to time request
/// heads: each 9-byte frame header gives the frame's length, type and
/// flags; payloads are skipped.
#[derive(Debug)]
struct H2Frames {
    /// Preface bytes still to skip.
    preface: usize,
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current frame ends a header block (`HEADERS` or `CONTINUATION`
    /// with `END_HEADERS`).
    ends_block: bool,
}

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;

impl H2Frames {
    /// Starting `done` bytes into the preface.
    fn new(done: usize) -> H2Frames {
        H2Frames {
            preface: H2_PREFACE.len() - done,
            head: [0; 9],
            have: 0,
            left: 0,
            ends_block: false,
        }
    }

    fn feed(&mut self, mut data: &[u8], st: &mut State) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
            } else if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                if self.left == 0 {
                    self.frame_done(st);
                }
            } else {
                let n = (9 - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = self.head;
                    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                    let (ty, flags) = (h[3], h[4]);
                    let header_frame = ty == FRAME_HEADERS || ty == FRAME_CONTINUATION;
                    if header_frame && st.header_started.is_none() {
                        st.header_started = Some(Instant::now());
                    }
                    self.ends_block = header_frame && flags & FLAG_END_HEADERS != 0;
                    self.left = len;
                    if len == 0 {
                        self.frame_done(st);
                    }
                }
            }
        }
    }

    fn frame_done(&mut self, st: &mut State) {
        if std::mem::take(&mut self.ends_block) {
            st.header_started = None;
            // A complete head counts as activity: the request is about to
            // be taken (the idle clock must not close it first).
            st.idle_since = Instant::now();
        }
    }
}

/// A connection's byte stream with the timeouts of [`ConnTimeouts`] (and,
/// if admitted by a [`ConnLimiter`], its place under the connection cap,
/// given back when this is dropped).
#[derive(Debug)]
pub struct GuardedIo<S> {
    inner: S,
    shared: Arc<Shared>,
    timeouts: ConnTimeouts,
    sleep: Option<Pin<Box<Sleep>>>,
    write_sleep: Option<Pin<Box<Sleep>>>,
    /// A write is blocked (the write timer runs).
    write_blocked: bool,
    /// Preface bytes matched so far while the protocol is not known yet.
    sniff: Option<usize>,
    /// HTTP/2: the client's frames.
    frames: Option<H2Frames>,
    /// Bytes read by [`detect_http2`](GuardedIo::detect_http2), to be
    /// read again (and how many were).
    replay: Option<(Vec<u8>, usize)>,
    /// Lingering close: set once our side is shut down.
    linger: Option<Linger>,
    _admission: Option<Registration>,
}

/// After shutting down our side, the connection reads and discards what
/// the client still sends — for up to [`LINGER_TIME`] or
/// [`LINGER_BYTES`] — before it is closed. Closing a socket with unread
/// data makes the kernel send a reset, which can destroy a response the
/// client has not read yet: typically the 4xx that refused a large request
/// body early. (nginx's `lingering_close` does the same.)
#[derive(Debug)]
struct Linger {
    deadline: Pin<Box<Sleep>>,
    discarded: usize,
}

/// Longest a closing connection lingers to let the client read the answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Most bytes a closing connection discards while lingering.
pub const LINGER_BYTES: usize = 64 << 20;

impl<S> GuardedIo<S> {
    /// Wraps a freshly accepted connection (the idle timer starts now),
    /// outside any connection cap.
    pub fn new(inner: S, timeouts: ConnTimeouts) -> GuardedIo<S> {
        GuardedIo::with_shared(inner, timeouts, Shared::new(true), None)
    }

    /// Wraps a connection admitted by a [`ConnLimiter`] (after its TLS
    /// handshake, if any): the idle timer starts now, and from now on the
    /// limiter may close it when it is idle and room is needed.
    pub fn admitted(inner: S, timeouts: ConnTimeouts, admission: Admission) -> GuardedIo<S> {
        let Admission {
            shared,
            registration,
        } = admission;
        {
            let mut st = shared.lock();
            st.guarded = true;
            st.idle_since = Instant::now();
        }
        GuardedIo::with_shared(inner, timeouts, shared, Some(registration))
    }

    fn with_shared(
        inner: S,
        timeouts: ConnTimeouts,
        shared: Arc<Shared>,
        admission: Option<Registration>,
    ) -> GuardedIo<S> {
        GuardedIo {
            inner,
            shared,
            timeouts,
            sleep: None,
            write_sleep: None,
            write_blocked: false,
            sniff: Some(0),
            frames: None,
            replay: None,
            linger: None,
            _admission: admission,
        }
    }

    /// Declares the connection HTTP/2 (ALPN chose it, or the server
    /// recognised the preface itself); otherwise the preface, as the first
    /// bytes read, decides.
    pub fn http2(mut self) -> GuardedIo<S> {
        if self.frames.is_some() {
            return self; // recognised already
        }
        self.sniff = None;
        self.frames = Some(H2Frames::new(0));
        let mut st = self.shared.lock();
        st.h2 = true;
        st.header_started = None;
        drop(st);
        self
    }

    /// The handle to report requests with.
    pub fn activity(&self) -> ConnActivity {
        ConnActivity {
            shared: self.shared.clone(),
        }
    }

    /// True once the connection is known to speak HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.frames.is_some()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Bytes just read: recognise HTTP/2, follow its frames, or start the
    /// HTTP/1 header clock.
    fn saw(sniff: &mut Option<usize>, frames: &mut Option<H2Frames>, new: &[u8], st: &mut State) {
        if let Some(matched) = *sniff {
            let want = &H2_PREFACE[matched..];
            let n = new.len().min(want.len());
            if new[..n] != want[..n] {
                *sniff = None;
            } else if matched + n == H2_PREFACE.len() {
                *sniff = None;
                st.h2 = true;
                st.header_started = None;
                *frames = Some(H2Frames::new(matched));
            } else {
                *sniff = Some(matched + n);
            }
        }
        match frames {
            Some(f) => f.feed(new, st),
            None => {
                if st.in_flight == 0 && st.header_started.is_none() {
                    st.header_started = Some(Instant::now());
                }
            }
        }
    }

    /// A write's outcome: `Pending` starts (or continues) the write clock;
    /// past [`ConnTimeouts::write`] it becomes `TimedOut`.
    fn write_result<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_blocked = false;
            return r;
        }
        let Some(limit) = self.timeouts.write else {
            return r;
        };
        let sleep = match &mut self.write_sleep {
            Some(s) if self.write_blocked => s,
            slot => {
                let deadline = Instant::now() + limit;
                self.write_blocked = true;
                let s = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                s.as_mut().reset(deadline);
                s
            }
        };
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::debug!(
                    "closing a connection: the client read nothing for the write timeout"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for the write timeout",
                )))
            }
        }
    }
}

impl<S: AsyncRead + Unpin> GuardedIo<S> {
    /// Reads the first bytes — under the connection's timeouts, and
    /// closing if the connection is evicted — until they show whether the
    /// client speaks HTTP/2 (its preface) or not; the following reads
    /// return them again. `Ok(false)` also when the connection ends first.
    /// This is how a server that serves both on one port (cleartext HTTP/2
    /// by prior knowledge) tells them apart without an unguarded peek.
    pub async fn detect_http2(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 1024];
        while self.sniff.is_some() {
            let n = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut chunk);
                std::task::ready!(self.poll_guarded(cx, &mut rb))?;
                Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
            })
            .await?;
            if n == 0 {
                break;
            }
            let (buf, _) = self.replay.get_or_insert_with(|| (Vec::new(), 0));
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(self.frames.is_some())
    }

    /// A read with the timeouts (not from the replay buffer).
    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let mut st = this.shared.lock();
        match r {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    let new = &buf.filled()[before..];
                    Self::saw(&mut this.sniff, &mut this.frames, new, &mut st);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Evicted: end of file once nothing is in progress (a
                // request that came in first is served; its end wakes
                // this reader again).
                if st.evicted && st.in_flight == 0 {
                    tracing::debug!("closing an idle connection to make room for a new one");
                    return Poll::Ready(Ok(()));
                }
                if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.reader = Some(cx.waker().clone());
                }
                let (deadline, header) = match (st.header_started, this.timeouts) {
                    (
                        Some(t),
                        ConnTimeouts {
                            header: Some(d), ..
                        },
                    ) => (t + d, true),
                    (Some(_), _) => return Poll::Pending,
                    (None, ConnTimeouts { idle: Some(d), .. }) if st.in_flight == 0 => {
                        (st.idle_since + d, false)
                    }
                    _ => return Poll::Pending,
                };
                drop(st);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) if header => {
                        tracing::debug!(
                            "closing a connection: request header not complete in time"
                        );
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request header not received in time",
                        )))
                    }
                    Poll::Ready(()) => {
                        tracing::debug!("closing an idle connection");
                        // End of file: the server closes quietly.
                        Poll::Ready(Ok(()))
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((bytes, at)) = &mut this.replay {
            let n = (bytes.len() - *at).min(buf.remaining());
            buf.put_slice(&bytes[*at..*at + n]);
            *at += n;
            if *at == bytes.len() {
                this.replay = None;
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_guarded(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_result(r, cx)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_result(r, cx)
    }
    /// Shuts down our side, then lingers (see [`LINGER_TIME`]): done when
    /// the client closes too, errs, or the time or byte budget runs out.
    /// A connection closed to make room (see [`ConnLimiter`]) does not
    /// linger: it was idle, nothing of it is in flight, and its descriptor
    /// is wanted now.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            let r = Pin::new(&mut this.inner).poll_shutdown(cx);
            std::task::ready!(this.write_result(r, cx))?;
            this.linger = Some(Linger {
                deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                discarded: 0,
            });
        }
        let Some(l) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        {
            let mut st = this.shared.lock();
            if st.evicted {
                return Poll::Ready(Ok(()));
            }
            // Eviction cuts the lingering short: wake this task for it.
            if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.reader = Some(cx.waker().clone());
            }
        }
        let mut scratch = [0u8; 8192];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    l.discarded += rb.filled().len();
                    if l.discarded >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match l.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_result(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// File descriptors [`max_connections_for`] keeps for the server itself:
/// listeners, the event loop, log files, the blocking pool's wake-ups,
/// upstream connections of a proxy.
pub const RESERVED_FDS: u64 = 64;

/// The default connection cap for an open-file limit of `nofile` and a
/// request cap of `max_requests` (`0`: none): of `nofile` minus
/// [`RESERVED_FDS`], the smaller of `max_requests` and half is kept for the
/// files requests open (a request holds one open file or directory at a
/// time — a GET, a READDIR — or two — a whole-file PUT, its temporary and
/// its directory), and the rest is for connections:
///
/// ```text
/// avail = nofile - 64
/// max_connections = avail - min(max_requests, avail / 2)
/// ```
///
/// With a 1024 limit that is 480, with 65536 it is 64448 (at least 1).
pub fn max_connections_for(nofile: u64, max_requests: usize) -> usize {
    let avail = nofile.saturating_sub(RESERVED_FDS);
    let files = match max_requests {
        0 => avail / 2,
        n => (n as u64).min(avail / 2),
    };
    usize::try_from(avail - files).unwrap_or(usize::MAX).max(1)
}

/// [`max_connections_for`] this process's open-file limit (the soft
/// `RLIMIT_NOFILE`); `None` when that is unlimited.
pub fn default_max_connections(max_requests: usize) -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current.map(|n| max_connections_for(n, max_requests))
}

/// Caps the connections open at once, in all and per client address;
/// shared by every listener of a server. Cheap to clone.
///
/// At a cap a new connection never waits: the idlest connection (no
/// request in progress, idle longest) is closed to admit it — its reader
/// is woken and reports end of file, so the server closes it as it would
/// an idle one — and only when none is idle is the new connection refused
/// (closed at once). The per-address cap works the same way within one
/// address: past it, that address's own idlest connection makes room, or
/// its new connection is refused; other clients are never closed for it.
/// A connection still in its TLS handshake is never chosen (the handshake
/// timeout bounds it).
///
/// ```
/// use spockfs_core::conn::{ConnLimiter, ConnTimeouts, GuardedIo};
/// let limiter = ConnLimiter::new(Some(2), None);
/// let timeouts = ConnTimeouts { idle: None, header: None, write: None };
/// let ip = "192.0.2.1".parse().ok();
/// let a = GuardedIo::admitted(tokio::io::empty(), timeouts, limiter.admit(ip).unwrap());
/// let b = GuardedIo::admitted(tokio::io::empty(), timeouts, limiter.admit(ip).unwrap());
/// // Both idle: a third one closes the idlest (`a`) to get in.
/// let c = limiter.admit(ip).unwrap();
/// assert_eq!(limiter.open(), 2);
/// # drop((a, b, c));
/// ```
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    registry: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    max: Option<usize>,
    per_ip: Option<usize>,
    conns: Mutex<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    next_id: u64,
    all: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    ip: Option<IpAddr>,
    shared: Arc<Shared>,
}

impl Conns {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.all.remove(&id)?;
        if let Some(ip) = e.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        Some(e)
    }

    /// The connection idle longest (of `ip`, if given).
    fn idlest(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.all
            .iter()
            .filter(|(_, e)| ip.is_none() || e.ip == ip)
            .filter_map(|(&id, e)| {
                let st = e.shared.lock();
                (st.guarded && !st.evicted && st.in_flight == 0).then_some((st.idle_since, id))
            })
            .min()
            .map(|(_, id)| id)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its client address has as many connections as allowed, none idle.
    PerIp,
    /// The server has as many connections as allowed, none idle.
    Full,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::PerIp => "too many connections from this address, none idle",
            Refused::Full => "too many connections, none idle",
        })
    }
}

impl std::error::Error for Refused {}

/// A connection's place under a [`ConnLimiter`]; hand it to
/// [`GuardedIo::admitted`]. Dropping it gives the place back.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    registration: Registration,
}

#[derive(Debug)]
struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = self.registry.lock().remove(self.id);
        drop(gone);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes `e` (its reader reports end of file once no request is in
/// progress).
fn evict(e: Entry) {
    let waker = {
        let mut st = e.shared.lock();
        st.evicted = true;
        st.reader.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

impl ConnLimiter {
    /// At most `max` connections at once and at most `per_ip` from one
    /// client address; `None` (or `0`) leaves one uncapped.
    pub fn new(max: Option<usize>, per_ip: Option<usize>) -> ConnLimiter {
        ConnLimiter {
            registry: Arc::new(Registry {
                max: max.filter(|&n| n > 0),
                per_ip: per_ip.filter(|&n| n > 0),
                conns: Mutex::new(Conns::default()),
            }),
        }
    }

    /// The cap on all connections.
    pub fn max(&self) -> Option<usize> {
        self.registry.max
    }

    /// The cap per client address.
    pub fn max_per_ip(&self) -> Option<usize> {
        self.registry.per_ip
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.registry.lock().all.len()
    }

    /// Admits a new connection from `peer`, closing the idlest one if a
    /// cap is reached (see [`ConnLimiter`]); `Err` if it must be refused.
    /// Never waits.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Admission, Refused> {
        let reg = &self.registry;
        let mut evicted = Vec::new();
        let mut c = reg.lock();
        if let (Some(ip), Some(cap)) = (peer, reg.per_ip) {
            if c.per_ip.get(&ip).copied().unwrap_or(0) >= cap {
                let id = c.idlest(Some(ip)).ok_or(Refused::PerIp)?;
                evicted.extend(c.remove(id));
            }
        }
        if reg.max.is_some_and(|cap| c.all.len() >= cap) {
            let id = c.idlest(None).ok_or(Refused::Full)?;
            evicted.extend(c.remove(id));
        }
        let shared = Shared::new(false);
        let id = c.next_id;
        c.next_id += 1;
        c.all.insert(
            id,
            Entry {
                ip: peer,
                shared: shared.clone(),
            },
        );
        if let Some(ip) = peer {
            *c.per_ip.entry(ip).or_default() += 1;
        }
        drop(c);
        for e in evicted {
            evict(e);
        }
        Ok(Admission {
            shared,
            registration: Registration {
                registry: reg.clone(),
                id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}
