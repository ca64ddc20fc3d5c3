//! # spockfs-tower
//!
//! [SpockFS](https://github.com/unbit/spockfs) — a POSIX filesystem spoken in
//! plain HTTP — as a [`tower::Service`], for axum, hyper and any tower stack.
//! Auth, TLS, virtual hosts, logging and rate limits stay with the host
//! server; this crate only answers SpockFS requests.
//!
//! ```no_run
//! use axum::Router;
//! use spockfs_tower::SpockFs;
//! use tower_http::trace::TraceLayer;
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new()
//!     .nest_service("/fs", SpockFs::new("/var/www"))
//!     .layer(TraceLayer::new_for_http());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Per-virtual-host roots, read-only and in-memory mounts:
//!
//! ```
//! use spockfs_tower::{Mount, MemFs, SpockFs};
//!
//! let fs = SpockFs::builder()
//!     .root("/srv/default")
//!     .vhost("a.example.com", Mount::local("/srv/a"))
//!     .vhost("scratch.example.com", Mount::new(MemFs::new()))
//!     .vhost("docs.example.com", Mount::local("/srv/docs").read_only(true))
//!     .build();
//! ```
//!
//! A root chosen per request by the host application — say, each user's
//! home after authentication — goes in the request's extensions as a
//! [`Mount`], and takes precedence over virtual hosts. The Unix account the
//! request acts as goes there too, as an [`Identity`]: the engine then runs
//! the request's filesystem calls with that user's credentials (the server
//! needs `CAP_SETUID`/`CAP_SETGID`), so the kernel checks its permissions
//! and what it creates belongs to it.
//!
//! ```no_run
//! use axum::{extract::Request, middleware::Next, response::Response, Router};
//! use spockfs_tower::{Identity, Mount, SpockFs};
//!
//! // After your auth layer: alice gets her home, acting as her account.
//! async fn per_user(mut req: Request, next: Next) -> Response {
//!     if let Ok(alice) = Identity::of_user("alice") {
//!         req.extensions_mut().insert(Mount::local("/srv/homes/alice"));
//!         req.extensions_mut().insert(alice);
//!     }
//!     next.run(req).await
//! }
//!
//! let fs = SpockFs::builder().build(); // no default root: fail closed
//! let app: Router = Router::new()
//!     .nest_service("/fs", fs)
//!     .layer(axum::middleware::from_fn(per_user));
//! ```
//!
//! A complete server doing this — basic auth, one cached `Mount` and
//! `Identity` per user, an unknown account refused, no default root — is
//! `examples/per_user.rs` (`cargo run -p spockfs-tower --example per_user`):
//!
//! ```no_run
#![doc = include_str!("../examples/per_user.rs")]
//! ```
//!
//! A mount can also carry its own identity ([`Mount::act_as`]), trust the
//! identities clients declare ([`Mount::trust_client_ids`]), and a whole
//! directory of sites can be served per `Host`
//! ([`EngineBuilder::sites`], [`spockfs_core::sites::SitesDir`]).
#![warn(missing_docs)]

use bytes::Bytes;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use spockfs_core::{
    Backend, BoxError, ClientIds, Engine, EngineBuilder, Errno, FsPath, Identity, Limits, LocalFs,
    MemFs, Method, Mount, Policy, SpockBody,
};

/// The SpockFS service. Cheap to clone (one `Arc`).
///
/// Implements `Service<Request<B>>` for any body `B: http_body::Body`; the
/// request path is the filesystem path (under axum's `nest_service` the
/// prefix is already stripped, and `/fs` and `/fs/` both mean the root).
#[derive(Clone, Debug)]
pub struct SpockFs {
    engine: Arc<Engine>,
}

impl SpockFs {
    /// Serves one local directory, opened on first use.
    pub fn new(dir: impl AsRef<std::path::Path>) -> SpockFs {
        SpockFs::from_engine(Engine::new(dir))
    }

    /// Configures vhosts, default root, limits: the engine's own builder
    /// ([`EngineBuilder`], where each option's default is stated), whose
    /// `build()` makes the service.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Wraps an engine.
    pub fn from_engine(engine: Engine) -> SpockFs {
        SpockFs {
            engine: Arc::new(engine),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl From<Engine> for SpockFs {
    fn from(engine: Engine) -> SpockFs {
        SpockFs::from_engine(engine)
    }
}

/// Builds a [`SpockFs`]: the engine's builder, so every option and its
/// default is [`EngineBuilder`]'s.
pub type Builder = EngineBuilder<SpockFs>;

/// Response future of [`SpockFs`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<SpockBody>, Infallible>> + Send>>;

impl<B> tower::Service<Request<B>> for SpockFs
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<SpockBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let engine = self.engine.clone();
        Box::pin(async move { Ok(engine.handle(req).await) })
    }
}

/// A [`tower::Layer`] that serves SpockFS under a path prefix and passes
/// every other request to the wrapped service, for stacks without a router.
///
/// ```
/// use spockfs_tower::{SpockFs, SpockFsLayer, MemFs, Mount};
/// use tower::ServiceBuilder;
///
/// let fs = SpockFs::builder().default_mount(Mount::new(MemFs::new())).build();
/// let svc = ServiceBuilder::new()
///     .layer(SpockFsLayer::new("/fs", fs))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("app")))
///     });
/// ```
#[derive(Clone, Debug)]
pub struct SpockFsLayer {
    prefix: Arc<str>,
    fs: SpockFs,
}

impl SpockFsLayer {
    /// Serves `fs` for paths equal to `prefix` or under `prefix/`.
    /// `prefix` is normalized to start with `/` and not end with one
    /// (`"/"` or `""` means every request).
    pub fn new(prefix: &str, fs: SpockFs) -> SpockFsLayer {
        SpockFsLayer {
            prefix: spockfs_core::route::normalize_prefix(prefix).into(),
            fs,
        }
    }
}

impl<S> tower::Layer<S> for SpockFsLayer {
    type Service = WithSpockFs<S>;
    fn layer(&self, inner: S) -> WithSpockFs<S> {
        WithSpockFs {
            prefix: self.prefix.clone(),
            fs: self.fs.clone(),
            inner,
        }
    }
}

/// Service made by [`SpockFsLayer`].
#[derive(Clone, Debug)]
pub struct WithSpockFs<S> {
    prefix: Arc<str>,
    fs: SpockFs,
    inner: S,
}

/// Strips `prefix` from a request path: `Some(rest)` (always starting with
/// `/`) if the path is the prefix or under it.
///
/// ```
/// assert_eq!(spockfs_tower::strip_prefix("/fs", "/fs"), Some("/"));
/// assert_eq!(spockfs_tower::strip_prefix("/fs", "/fs/a/b"), Some("/a/b"));
/// assert_eq!(spockfs_tower::strip_prefix("/fs", "/fsx"), None);
/// assert_eq!(spockfs_tower::strip_prefix("", "/x"), Some("/x"));
/// ```
pub fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    spockfs_core::path::strip_mount_prefix(prefix, path)
}

impl<S, B, RB> tower::Service<Request<B>> for WithSpockFs<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use http_body_util::BodyExt;
        let stripped = strip_prefix(&self.prefix, req.uri().path()).map(str::to_owned);
        match stripped {
            Some(rest) => {
                let mut parts = req.uri().clone().into_parts();
                let pq = match req.uri().query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest,
                };
                parts.path_and_query = pq.parse().ok();
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                let engine = self.fs.engine.clone();
                Box::pin(async move {
                    let resp = engine.handle(req).await;
                    Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
                })
            }
            None => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let resp = fut.await?;
                    Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
                })
            }
        }
    }
}
