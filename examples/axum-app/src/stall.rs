//! The write timeout for hyper's HTTP/2 streams.
//!
//! hyper serves each HTTP/2 stream on a task of its own. When the client
//! keeps the stream's flow-control window at zero, that task parks on the
//! window with the response's next chunk (up to a `chunk_size`) buffered,
//! and never polls the body again: the engine's write timeout
//! ([`Limits::write_timeout`](spockfs_tower::Limits)) gives back the
//! request slot and the open file, but the stream itself, its buffered
//! chunk and its hold on the connection would stay until the client
//! leaves. [`StreamExecutor`] spawns those tasks under a watchdog: once
//! the response has started, a stream whose body has not been polled for
//! the write timeout is dropped, which resets it (`RST_STREAM`, `CANCEL`)
//! and frees all of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    static STREAM: Arc<StreamWatch>;
}

/// The progress of one stream's response, reported by its body.
#[derive(Debug, Default)]
pub(crate) struct StreamWatch {
    /// The response has started (its body exists).
    started: AtomicBool,
    /// The body was polled since the watchdog last looked.
    moved: AtomicBool,
}

impl StreamWatch {
    /// The watch of the HTTP/2 stream served by the current task, if this
    /// task is one (HTTP/1 responses are covered by the connection's
    /// write timeout instead).
    pub(crate) fn current() -> Option<Arc<StreamWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// The response body exists: the clock starts.
    pub(crate) fn start(&self) {
        self.moved.store(true, Relaxed);
        self.started.store(true, Relaxed);
    }

    /// The body was polled.
    #[inline]
    pub(crate) fn moved(&self) {
        self.moved.store(true, Relaxed);
    }
}

/// hyper's executor (tokio), with the HTTP/2 stream watchdog when a write
/// timeout is set.
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    write_timeout: Option<Duration>,
}

impl StreamExecutor {
    /// Streams whose response makes no progress for `write_timeout` are
    /// reset; `None`: never.
    pub fn new(write_timeout: Option<Duration>) -> StreamExecutor {
        StreamExecutor { write_timeout }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match self.write_timeout {
            Some(limit) => {
                let watch = Arc::new(StreamWatch::default());
                tokio::spawn(Watchdog {
                    fut: Box::pin(STREAM.scope(watch.clone(), fut)),
                    watch,
                    limit,
                    sleep: None,
                });
            }
            None => {
                tokio::spawn(fut);
            }
        }
    }
}

/// Runs `fut` until it completes, or until its response stops moving for
/// `limit`.
struct Watchdog<F> {
    fut: Pin<Box<F>>,
    watch: Arc<StreamWatch>,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Future for Watchdog<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !this.watch.started.load(Relaxed) {
            return Poll::Pending;
        }
        if this.watch.moved.swap(false, Relaxed) {
            let deadline = Instant::now() + this.limit;
            match &mut this.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(sleep) = this.sleep.as_mut() else {
            return Poll::Pending;
        };
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::debug!(
                    "resetting an HTTP/2 stream: its response made no progress for the write timeout"
                );
                Poll::Ready(())
            }
        }
    }
}
