//! The engine: request head + body stream in, response head + body stream
//! out. Framework adapters hand it an `http::Request` and send back the
//! `http::Response` it returns; nothing else about a request is decided
//! outside this module.
//!
//! The work is split like tower-http's `ServeDir`: [`parse()`] decides what a
//! request means (method, path, headers → an [`Op`] or a 4xx), `execute`
//! runs it against the backend on a blocking thread, and the response
//! builders turn the outcome into status, headers and body.
//!
//! One file per job: this one is the async shell (the [`Engine`], its
//! builder, and the path of one request from head to response);
//! `limits` the [`Limits`] and the shared [`Limiter`]; `parse` the request
//! parser; `policy` what a mount's policy does to a parsed request;
//! `exec` the execution of body-less operations on the blocking pool;
//! `body_in` the reading of request bodies under the body deadline;
//! `body_ops` the operations that carry a body (PUT, SETXATTR); `respond`
//! the responses.

mod body_in;
mod body_ops;
mod exec;
mod limits;
mod parse;
mod policy;
mod respond;

use crate::body::{BodyReaper, SpockBody};
use crate::headers::X_SPOCK_ERRNO;
use crate::identity;
use crate::method::{Method, ALLOW};
use crate::mount::{Mount, MountTable, SelectError, Selected};
use crate::observe::{Observer, PoolStats, RequestRecord};
use crate::pool::BlockingPool;
use crate::sites::{SiteError, SitesDir};
use crate::Errno;
use http::header::{HeaderValue, ALLOW as ALLOW_HDR};
use http::{Request, Response, StatusCode};
use http_body::Body;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub use limits::{Limiter, Limits, READDIR_BATCH};
pub use parse::{is_mutating_request, parse, BodyOp, Call, Op, Reject};
pub use respond::error_response;

use exec::{joined, Cx, Fail, Stats};
use parse::wants_stat;
use policy::{apply_policy, identity_of};
use respond::{busy_response, errno_response, options_response, reject};

/// A boxed error, as request bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The SpockFS request engine. Cheap to share (`Arc` it); stateless
/// between requests.
///
/// ```
/// use spockfs_core::{Engine, Mount, MemFs};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = Engine::builder().default_mount(Mount::new(MemFs::new())).build();
/// let req = http::Request::builder()
///     .method("MKDIR")
///     .uri("/docs")
///     .header("host", "example.com")
///     .header("x-spock-mode", "493")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())
///     .unwrap();
/// let resp = engine.handle(req).await;
/// assert_eq!(resp.status(), 201);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    mounts: MountTable,
    limits: Limits,
    pool: BlockingPool,
    limiter: Limiter,
    /// Aborts response bodies past [`Limits::write_timeout`].
    reaper: Option<BodyReaper>,
    /// Told about every request answered.
    observer: Option<ObserverSlot>,
    /// Requests being answered now (up to their response head), by every
    /// clone of this engine.
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a request in [`Engine::active`] while it lives.
struct Active<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Active<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An [`Observer`] in an engine (which is `Debug`).
#[derive(Clone)]
struct ObserverSlot(Arc<dyn Observer>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Builds an [`Engine`], or anything made from one (`T`: an adapter's
/// service, so that adapters share these options instead of copying them).
#[derive(Debug)]
pub struct EngineBuilder<T = Engine> {
    mounts: MountTable,
    limits: Limits,
    limiter: Option<Limiter>,
    observer: Option<ObserverSlot>,
    output: std::marker::PhantomData<fn() -> T>,
}

impl<T> Default for EngineBuilder<T> {
    fn default() -> Self {
        EngineBuilder {
            mounts: MountTable::default(),
            limits: Limits::default(),
            limiter: None,
            observer: None,
            output: std::marker::PhantomData,
        }
    }
}

impl<T: From<Engine>> EngineBuilder<T> {
    /// Serves `dir` (a [`LocalFs`](crate::LocalFs)) when no vhost matches.
    pub fn root(self, dir: impl AsRef<Path>) -> Self {
        self.default_mount(Mount::local(dir))
    }

    /// Serves `mount` when no vhost matches. Default: none (404).
    pub fn default_mount(mut self, mount: Mount) -> Self {
        self.mounts.set_default(mount);
        self
    }

    /// Serves `mount` for requests to `host` (`"example.com"` or
    /// `"example.com:8080"`; case-insensitive; `host:port` is tried before
    /// `host`).
    pub fn vhost(mut self, host: &str, mount: Mount) -> Self {
        self.mounts.insert_vhost(host, mount);
        self
    }

    /// Serves hosts that no vhost names from the sites directory `sites`
    /// (`DIR/<host>`, looked up per request); a host without a site is
    /// 404, never the default root. Default: none.
    pub fn sites(mut self, sites: SitesDir) -> Self {
        self.mounts.set_sites(sites);
        self
    }

    /// Replaces all limits. Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Largest xattr value or list. Default 64 KiB.
    pub fn xattr_limit(mut self, bytes: usize) -> Self {
        self.limits.xattr_size = bytes;
        self
    }

    /// Bytes per streamed read/write. Default 256 KiB.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.limits.chunk_size = bytes.max(4096);
        self
    }

    /// Shares `limiter` (and so one [`Limits::max_requests`] budget) with
    /// other engines. Default: a limiter of this engine's own, from its
    /// limits.
    pub fn limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Tells `observer` about every request answered (method, host,
    /// status, errno, time to the response head, body sizes): the hook
    /// for a host's metrics. Default: none.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(ObserverSlot(observer));
        self
    }

    /// The engine (or what `T` makes of it).
    pub fn build(self) -> T {
        T::from(Engine {
            pool: BlockingPool::new(self.limits.blocking_threads),
            reaper: self.limits.write_timeout.map(BodyReaper::new),
            limiter: self
                .limiter
                .unwrap_or_else(|| Limiter::from_limits(&self.limits)),
            observer: self.observer,
            mounts: self.mounts,
            limits: self.limits,
            active: Arc::default(),
        })
    }
}

impl Engine {
    /// An engine with no mounts yet.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine serving one local directory.
    pub fn new(dir: impl AsRef<Path>) -> Engine {
        Engine::builder().root(dir).build()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The mounts this engine serves.
    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    /// How busy the blocking pool that runs this engine's filesystem calls
    /// is (queue depth, busy threads): for a host's metrics.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Answers one request. Never fails: every error is a response (4xx/5xx
    /// with `X-Spock-errno` and a one-line text body). The request path is
    /// `req.uri().path()`, already stripped of any mount prefix.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<SpockBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let span = tracing::debug_span!(
            "spockfs",
            method = %req.method(),
            path = %req.uri().path(),
        );
        async move {
            let start = Instant::now();
            // What the observer needs of the request, taken only if there is one.
            let seen = self.observer.as_ref().map(|_| {
                // Cheap copies (no allocation): both share the request's buffer.
                let host = match req.uri().authority() {
                    Some(a) => Some(Ok(a.clone())),
                    None => req.headers().get(http::header::HOST).cloned().map(Err),
                };
                let bytes_in = req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                (req.method().clone(), host, bytes_in)
            });
            let resp = {
                let _active = Active::new(&self.active);
                self.handle_inner(req).await
            };
            let status = resp.status();
            let errno = resp
                .headers()
                .get(&X_SPOCK_ERRNO)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let (Some(observer), Some((method, host, bytes_in))) = (&self.observer, seen) {
                observer.0.request(&RequestRecord {
                    method: &method,
                    host: match &host {
                        Some(Ok(authority)) => Some(authority.as_str()),
                        Some(Err(header)) => header.to_str().ok(),
                        None => None,
                    },
                    status,
                    errno: Errno::from_name(errno),
                    duration: start.elapsed(),
                    bytes_in,
                    bytes_out: resp.body().size_hint().exact(),
                });
            }
            let elapsed_us = start.elapsed().as_micros() as u64;
            if status.is_server_error() {
                tracing::warn!(
                    status = status.as_u16(),
                    errno,
                    elapsed_us,
                    "request failed"
                );
            } else {
                tracing::debug!(status = status.as_u16(), errno, elapsed_us, "request done");
            }
            resp
        }
        .instrument(span)
        .await
    }

    async fn handle_inner<B>(&self, req: Request<B>) -> Response<SpockBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let mut body = std::pin::pin!(body);
        let resp = match self.limiter.acquire().await {
            Ok(permit) => {
                let resp = self.answer(&parts, body.as_mut()).await;
                match permit {
                    Some(p) => resp.map(|b| b.with_permit(p)),
                    None => resp,
                }
            }
            Err(()) => busy_response(self.limiter.wait),
        };
        let resp = self.finish(parts.version, resp, body.as_mut()).await;
        match &self.reaper {
            Some(r) => resp.map(|b| b.watched(r)),
            None => resp,
        }
    }

    /// The response to a request; its body may be left partly unread.
    async fn answer<B>(
        &self,
        parts: &http::request::Parts,
        body: Pin<&mut B>,
    ) -> Response<SpockBody>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let Some(method) = Method::from_http(&parts.method) else {
            let mut r = reject(Reject {
                status: StatusCode::METHOD_NOT_ALLOWED,
                errno: Errno::ENOSYS,
                message: format!("method {} is not a SpockFS method", parts.method),
            });
            r.headers_mut()
                .insert(ALLOW_HDR, HeaderValue::from_static(ALLOW));
            return r;
        };
        let mount = self.select(parts).await;
        if method == Method::Options {
            return options_response(mount.as_ref().ok());
        }
        let mount = match mount {
            Ok(m) => m,
            Err(rej) => return reject(rej),
        };
        let (call, path) = match parse(method, parts.uri.path(), &parts.headers) {
            Ok(x) => x,
            Err(rej) => return reject(rej),
        };
        if mount.is_read_only() && call.is_mutating() {
            return errno_response(Errno::EROFS, "read-only mount");
        }
        let call = match apply_policy(&mount, call) {
            Ok(call) => call,
            Err(rej) => return reject(rej),
        };
        let who = match identity_of(parts, &mount) {
            Ok(who) => who,
            Err(rej) => return reject(rej),
        };
        let cx = Cx {
            backend: mount.backend(),
            who: &who,
        };
        let result = match call {
            Call::Body(BodyOp::Put { range }) => self.put(&mount, cx, path, range, body).await,
            Call::Body(BodyOp::Setxattr { name, flag }) => {
                self.setxattr(cx, path, name, flag, body).await
            }
            Call::Op(op) => {
                let wants = wants_stat(&parts.headers);
                let stat = Stats {
                    entry: wants && op.can_stat(),
                    parent: wants && op.changes_parent(),
                };
                self.execute(&mount, cx, path, op, stat).await
            }
        };
        match result {
            Ok(outcome) => self.respond(outcome, cx),
            Err(Fail::Errno(e)) => errno_response(e, ""),
            Err(Fail::Reject(rej)) => reject(rej),
        }
    }

    /// The mount a request is for; a site of the sites directory that is
    /// not open yet is opened on the blocking pool, as the server itself.
    async fn select(&self, parts: &http::request::Parts) -> Result<Mount, Reject> {
        let lookup = match self.mounts.select(parts) {
            Ok(Selected::Mount(m)) => return Ok(m),
            Ok(Selected::Lookup(l)) => l,
            Err(SelectError::MissingHost) => {
                return Err(Reject::bad("HTTP/1.1 request without Host header"))
            }
            Err(SelectError::NoMount) => {
                return Err(Reject {
                    status: StatusCode::NOT_FOUND,
                    errno: Errno::ENOENT,
                    message: "no SpockFS root for this host".into(),
                })
            }
        };
        let opened = joined(
            self.pool
                .run(move || identity::run_as(None, || lookup.open())),
        )
        .await
        .and_then(|r| r);
        match opened {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(SiteError::NotFound)) => Err(Reject {
                status: StatusCode::NOT_FOUND,
                errno: Errno::ENOENT,
                message: "no SpockFS site for this host".into(),
            }),
            Ok(Err(e @ SiteError::RootOwned)) => Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: e.to_string(),
            }),
            Ok(Err(e @ SiteError::Io(_))) => {
                tracing::error!(error = %e, "cannot open a site");
                Err(Reject {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    errno: Errno::EIO,
                    message: "cannot open the site".into(),
                })
            }
            Err(e) => Err(Reject {
                status: e.status(),
                errno: e,
                message: "cannot open the site".into(),
            }),
        }
    }
}
