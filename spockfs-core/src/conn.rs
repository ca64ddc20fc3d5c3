//! Slow-client protection for HTTP/1 connections, shared by the example
//! servers: a transparent wrapper around a connection's byte stream that
//! closes it when a client is idle too long between requests, or takes too
//! long to send a request header (slowloris).
//!
//! The wrapper cannot parse HTTP; the server tells it when a request head
//! has been read and when its response is done ([`ConnActivity::request`],
//! whose guard ends the request when dropped). Between two requests:
//!
//! - no byte for [`ConnTimeouts::idle`] (from the end of the previous
//!   response, or from accept): the read side reports end of file and the
//!   server closes the connection quietly;
//! - a request head started but not complete within
//!   [`ConnTimeouts::header`] (counted from its first byte): the read side
//!   fails with `TimedOut` and the server drops the connection.
//!
//! While a request is in progress the wrapper adds nothing: request bodies
//! are covered by the engine's [`Limits::body_timeout`](crate::Limits),
//! and slow filesystem calls must not be cut off. An HTTP/2 connection (its
//! preface seen as the first bytes) is passed through untouched.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection timeouts; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// Longest wait for the first byte of a request, after accept or after
    /// the previous response (keep-alive idle time).
    pub idle: Option<Duration>,
    /// Longest time from the first byte of a request head to its end.
    pub header: Option<Duration>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
struct State {
    in_flight: usize,
    idle_since: Instant,
    header_started: Option<Instant>,
    /// HTTP/2: not guarded.
    passthrough: bool,
    /// The reader to wake when a request ends (so the idle timer starts).
    reader: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
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
    /// A request head has been read: no timeout applies until the returned
    /// guard is dropped (at the end of the response).
    pub fn request(&self) -> RequestActive {
        let mut st = self.shared.lock();
        st.in_flight += 1;
        st.header_started = None;
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

/// A connection's byte stream with the idle and header timeouts of
/// [`ConnTimeouts`].
#[derive(Debug)]
pub struct GuardedIo<S> {
    inner: S,
    shared: Arc<Shared>,
    timeouts: ConnTimeouts,
    sleep: Option<Pin<Box<Sleep>>>,
    first_read: bool,
    /// Lingering close: set once our side is shut down.
    linger: Option<Linger>,
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
    /// Wraps a freshly accepted connection (the idle timer starts now).
    pub fn new(inner: S, timeouts: ConnTimeouts) -> GuardedIo<S> {
        GuardedIo {
            inner,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    in_flight: 0,
                    idle_since: Instant::now(),
                    header_started: None,
                    passthrough: false,
                    reader: None,
                }),
            }),
            timeouts,
            sleep: None,
            first_read: true,
            linger: None,
        }
    }

    /// The handle to report requests with.
    pub fn activity(&self) -> ConnActivity {
        ConnActivity {
            shared: self.shared.clone(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let mut st = this.shared.lock();
        match r {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if this.first_read {
                        this.first_read = false;
                        let n = new.len().min(H2_PREFACE.len());
                        if n >= 3 && new[..n] == H2_PREFACE[..n] {
                            st.passthrough = true;
                        }
                    }
                    if st.in_flight == 0 && st.header_started.is_none() {
                        st.header_started = Some(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if st.passthrough || st.in_flight > 0 {
                    st.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let (deadline, header) = match (st.header_started, this.timeouts) {
                    (
                        Some(t),
                        ConnTimeouts {
                            header: Some(d), ..
                        },
                    ) => (t + d, true),
                    (None, ConnTimeouts { idle: Some(d), .. }) => (st.idle_since + d, false),
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

use std::future::Future;

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    /// Shuts down our side, then lingers (see [`LINGER_TIME`]): done when
    /// the client closes too, errs, or the time or byte budget runs out.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Linger {
                deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                discarded: 0,
            });
        }
        let Some(l) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn t(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn idle_connection_reads_eof() {
        let (a, _b) = tokio::io::duplex(64);
        let mut g = GuardedIo::new(
            a,
            ConnTimeouts {
                idle: t(100),
                header: t(50),
            },
        );
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.ok(), Some(0));
    }

    #[tokio::test]
    async fn trickled_header_times_out_and_requests_do_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = GuardedIo::new(
            a,
            ConnTimeouts {
                idle: t(1000),
                header: t(50),
            },
        );
        let act = g.activity();
        let mut buf = [0u8; 8];
        b.write_all(b"GET").await.ok();
        assert_eq!(g.read(&mut buf).await.ok(), Some(3));
        let e = g.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::TimedOut));
        // During a request nothing times out.
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = GuardedIo::new(
            a,
            ConnTimeouts {
                idle: t(100),
                header: t(50),
            },
        );
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

    #[tokio::test]
    async fn http2_is_passed_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = GuardedIo::new(
            a,
            ConnTimeouts {
                idle: t(100),
                header: t(50),
            },
        );
        b.write_all(b"PRI * HTTP/2.0\r\n").await.ok();
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.ok(), Some(16));
        let r = tokio::time::timeout(Duration::from_millis(400), g.read(&mut buf)).await;
        assert!(r.is_err(), "an HTTP/2 connection was timed out");
    }
}
