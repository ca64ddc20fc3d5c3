//! What one connection is doing (requests in progress, idle since,
//! evicted), shared by its [`GuardedIo`](crate::GuardedIo) and the
//! [`ConnLimiter`](crate::ConnLimiter) that admitted it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) in_flight: usize,
    pub(crate) idle_since: Instant,
    pub(crate) header_started: Option<Instant>,
    /// HTTP/2: the header clock follows frames, not requests.
    pub(crate) h2: bool,
    /// Wrapped in a [`GuardedIo`] (past any TLS handshake): only such a
    /// connection may be closed to make room for another.
    pub(crate) guarded: bool,
    /// Closed by the [`ConnLimiter`] to make room: the read side reports
    /// end of file as soon as no request is in progress.
    pub(crate) evicted: bool,
    /// The parked reader (woken when a request ends, so the idle timer
    /// starts, or when the connection is evicted).
    pub(crate) reader: Option<Waker>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(guarded: bool) -> Arc<Shared> {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells a [`GuardedIo`](crate::GuardedIo) when requests start and end. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnActivity {
    pub(crate) shared: Arc<Shared>,
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
    pub(crate) shared: Arc<Shared>,
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
