//! [`GuardedIo`]: a connection's byte stream under the idle, header and
//! write timeouts, with a lingering close.

use crate::h2::{H2Frames, H2_PREFACE};
use crate::limit::{Admission, Registration};
use crate::state::{ConnActivity, Shared, State};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

/// A connection's byte stream with the timeouts of [`ConnTimeouts`] (and,
/// if admitted by a [`ConnLimiter`](crate::ConnLimiter), its place under the connection cap,
/// given back when this is dropped).
#[derive(Debug)]
pub struct GuardedIo<S> {
    inner: S,
    pub(crate) shared: Arc<Shared>,
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

    /// Wraps a connection admitted by a [`ConnLimiter`](crate::ConnLimiter) (after its TLS
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
    /// A connection closed to make room (see [`ConnLimiter`](crate::ConnLimiter)) does not
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
