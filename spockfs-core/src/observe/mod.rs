//! Hooks for a host's metrics: the engine tells an [`Observer`] about every
//! request it answers, and [`Engine::pool_stats`](crate::Engine::pool_stats)
//! tells how busy its blocking pool is. The engine keeps no counters of its
//! own and depends on no metrics library: feed Prometheus, StatsD or your
//! logs from here.

use crate::Errno;
use http::{Method, StatusCode};
use std::time::Duration;

/// One request the engine answered, as an [`Observer`] sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestRecord<'a> {
    /// The request method (`GETATTR`, `PUT`, …, or whatever the client sent).
    pub method: &'a Method,
    /// The host the request named (`:authority` or `Host`), if any.
    pub host: Option<&'a str>,
    /// The response status.
    pub status: StatusCode,
    /// The errno the response carries (`X-Spock-errno`), on errors.
    pub errno: Option<Errno>,
    /// From the start of the request to its response head (the body, if
    /// any, streams afterwards).
    pub duration: Duration,
    /// The request body's declared length (`Content-Length`), if any.
    pub bytes_in: Option<u64>,
    /// The response body's length when it is known up front (every body
    /// but a streamed READDIR listing).
    pub bytes_out: Option<u64>,
}

/// Receives a [`RequestRecord`] for every request an engine answers, on the
/// task that answered it (keep it quick: increment counters, do not block).
///
/// ```
/// use spockfs_core::observe::{Observer, RequestRecord};
/// use spockfs_core::{Engine, Mount, MemFs};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Default)]
/// struct Errors(AtomicU64);
/// impl Observer for Errors {
///     fn request(&self, r: &RequestRecord<'_>) {
///         if r.status.is_client_error() || r.status.is_server_error() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let errors = Arc::new(Errors::default());
/// let engine = Engine::builder()
///     .default_mount(Mount::new(MemFs::new()))
///     .observer(errors.clone())
///     .build();
/// let req = http::Request::builder()
///     .method("GETATTR")
///     .uri("/missing")
///     .header("host", "example.com")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())
///     .unwrap();
/// assert_eq!(engine.handle(req).await.status(), 404);
/// assert_eq!(errors.0.load(Ordering::Relaxed), 1);
/// # }
/// ```
pub trait Observer: Send + Sync + 'static {
    /// Called once per request, when its response head is ready.
    fn request(&self, record: &RequestRecord<'_>);
}

/// How busy an engine's blocking pool is, right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Filesystem calls waiting for a thread.
    pub queued: usize,
    /// Threads running a call.
    pub busy: usize,
    /// Threads alive (busy, spinning or parked).
    pub threads: usize,
    /// The most threads the pool starts.
    pub max_threads: usize,
}

#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "prometheus")]
pub use self::prometheus::PrometheusMetrics;
