//! The limits an engine enforces ([`Limits`]) and the concurrency limiter
//! that engines may share ([`Limiter`]).

use std::sync::Arc;
use std::time::Duration;

/// Tunables, each with its default.
///
/// The limits that protect the host (`max_requests`, `max_put_size`,
/// `readdir_max_entries`, `body_timeout`) answer with the usual SpockFS
/// error form: the status, `X-Spock-errno` and a one-line body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest xattr value or list (LISTXATTR/GETXATTR/SETXATTR), bytes;
    /// larger is 413. Default 64 KiB (the Linux limit for one value).
    pub xattr_size: usize,
    /// Bytes per disk read/write when streaming GET and PUT bodies. Default
    /// 256 KiB.
    pub chunk_size: usize,
    /// Most threads running filesystem calls at once (they are created on
    /// demand and exit after 10 s idle). Default 128.
    pub blocking_threads: usize,
    /// Largest ranged PUT accepted without a known body length (chunked
    /// transfer encoding): such bodies are buffered to check their length
    /// before anything is written; larger ones get 411. Default 1 MiB.
    pub max_unsized_range_put: usize,
    /// How much of an unread request body is drained before an error
    /// response so the connection can be kept alive; past it the connection
    /// is closed. Default 1 MiB.
    pub drain: usize,
    /// Most requests in progress at once (from the request head to the end
    /// of the response body, so a streaming GET or READDIR counts until it
    /// is sent). `0`: no limit. Default 1024. A request over the limit waits
    /// up to [`max_requests_wait`](Limits::max_requests_wait) for a slot,
    /// with at most `max_requests` requests waiting; then (or at once when
    /// that many already wait) it is answered 503 with `Retry-After` and
    /// `X-Spock-errno: EAGAIN`, having touched nothing.
    pub max_requests: usize,
    /// How long a request over [`max_requests`](Limits::max_requests) waits
    /// for a slot before its 503. A short wait absorbs bursts (a FUSE
    /// client turns a 503 into `EIO` for the user), and the bounded queue
    /// keeps an overload from piling up. Default 500 ms.
    pub max_requests_wait: Duration,
    /// Largest PUT body, bytes; more is 413 (`X-Spock-errno: EFBIG`) and
    /// nothing is written: a `Content-Length` over it is refused before the
    /// file is opened, a chunked body as soon as it passes the limit (a
    /// whole-file PUT then leaves the previous content intact, a ranged one
    /// is checked before any write). `None`: no limit (the default; the
    /// filesystem's free space is the limit).
    pub max_put_size: Option<u64>,
    /// Most entries one READDIR may list; a larger directory is 413
    /// (`X-Spock-errno: E2BIG`), decided before anything is sent (the
    /// directory is counted first, which costs one extra pass over its
    /// entries, without `stat`). If the directory grows past the limit
    /// between that count and the end of the listing, the body is aborted
    /// (after a 200 head that is the only honest signal). `None`: no limit
    /// (the default: listings stream in batches with flat memory whatever
    /// their size, so a large directory costs time, not memory).
    pub readdir_max_entries: Option<u64>,
    /// Request body deadline (PUT, SETXATTR): each
    /// [`chunk_size`](Limits::chunk_size) bytes of a body (or its rest, if
    /// shorter) must arrive within this time. A body that stalls, or
    /// trickles slower than `chunk_size / body_timeout` on average (8.7 KB/s
    /// with the defaults), is answered 408 (`X-Spock-errno: ETIMEDOUT`) as
    /// soon as a chunk is late; nothing more is written (a whole-file PUT
    /// leaves the previous content intact) and the connection is closed.
    /// Default 30 s.
    pub body_timeout: Duration,
    /// Response deadline: a response body that the transport stops pulling
    /// (a client that reads nothing, an HTTP/2 stream whose flow-control
    /// window stays at zero) for this long is aborted, and its request slot
    /// ([`max_requests`](Limits::max_requests)) and open file or directory
    /// are released at once, whether or not the transport ever polls the
    /// body again (it fails if it does). One background task per engine
    /// checks every in-flight body a few times per timeout, so the abort
    /// comes between 1 and 1.25 times this after the body last moved. A
    /// body pulls a [`chunk_size`](Limits::chunk_size) at a time, so a
    /// client reading slower than `chunk_size / write_timeout` on average
    /// (4.4 KB/s with the defaults) is cut off too. Bodies that hold
    /// nothing (no slot, no file) and empty bodies are not watched.
    /// `None`: off. Default 60 s.
    pub write_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            xattr_size: 64 * 1024,
            chunk_size: 256 * 1024,
            blocking_threads: 128,
            max_unsized_range_put: 1024 * 1024,
            drain: 1024 * 1024,
            max_requests: 1024,
            max_requests_wait: Duration::from_millis(500),
            max_put_size: None,
            readdir_max_entries: None,
            body_timeout: Duration::from_secs(30),
            write_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Entries per READDIR batch: each batch is one job on the blocking pool
/// and one body frame. A listing that fits in the first batch is sent with
/// a `Content-Length`; a longer one is streamed (chunked).
pub const READDIR_BATCH: usize = 256;

/// The concurrency limit ([`Limits::max_requests`]): a semaphore and a
/// bounded count of waiters. Engines built with the same `Limiter` share
/// one limit (the gateway serves several vhosts under one cap).
#[derive(Debug, Clone)]
pub struct Limiter {
    sem: Option<Arc<tokio::sync::Semaphore>>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    max_waiting: usize,
    pub(super) wait: Duration,
}

impl Limiter {
    /// At most `max` requests at once (`0`: no limit), at most `max` more
    /// waiting up to `wait` each.
    pub fn new(max: usize, wait: Duration) -> Limiter {
        Limiter {
            sem: (max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max))),
            waiting: Arc::default(),
            max_waiting: max,
            wait,
        }
    }

    /// From [`Limits::max_requests`] and [`Limits::max_requests_wait`].
    pub fn from_limits(l: &Limits) -> Limiter {
        Limiter::new(l.max_requests, l.max_requests_wait)
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.sem
            .as_ref()
            .map_or(0, |s| self.max_waiting - s.available_permits())
    }

    /// A slot, or `Err` if none freed up in time (or the queue is full).
    pub(super) async fn acquire(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(sem) = &self.sem else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.waiting.fetch_add(1, SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, SeqCst);
            return Err(());
        }
        let r = tokio::time::timeout(self.wait, sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, SeqCst);
        match r {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(()),
        }
    }
}
