//! # spockfs-pingora
//!
//! SpockFS inside a [Pingora](https://github.com/cloudflare/pingora) gateway.
//!
//! A Pingora `HttpModule` can only filter, and `ServeHttp` buffers whole
//! bodies, so SpockFS plugs in where a gateway can answer by itself:
//! [`ProxyHttp::request_filter`], after the gateway's own checks.
//! [`SpockFsModule::handle`] answers
//! the SpockFS requests it is configured for — streaming both bodies through
//! the same [`spockfs_core::Engine`] as the tower service, so behaviour is
//! identical — and returns `Ok(false)` for everything else, which then
//! proxies as usual.
//!
//! ```no_run
//! use spockfs_core::{Engine, Mount};
//! use spockfs_pingora::SpockFsModule;
//!
//! let module = SpockFsModule::builder()
//!     // every request to files.example.com (any port) is SpockFS
//!     .vhost("files.example.com", Engine::new("/srv/files"))
//!     // on any host, /fs/... is SpockFS with /fs stripped
//!     .prefix("/fs", Engine::builder().default_mount(Mount::local("/srv/www").read_only(true)).build())
//!     .build();
//! // In your ProxyHttp::request_filter, after authentication:
//! //     if module.handle(session).await? { return Ok(true); }
//! ```
//!
//! Or wrap an existing `ProxyHttp` in one line with [`WithSpockFs`], which
//! runs your proxy's own `request_filter` first. A [`spockfs_core::Mount`]
//! in the request's extensions chooses the root per request (see
//! [`SpockFsModule::handle`] and the example on [`WithSpockFs`]).
#![warn(missing_docs)]

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT, HOST};
use http::{Request, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use spockfs_core::mount::{normalize_host, vhost_matches};
use spockfs_core::path::strip_mount_prefix;
use spockfs_core::{Engine, SpockBody};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

mod wrapper;
pub use wrapper::WithSpockFs;

/// Where a route applies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// One virtual host (`name` or `name:port`, lowercase).
    Host(String),
    /// Every host.
    Any,
}

#[derive(Clone)]
struct Route {
    host: HostMatch,
    /// `""` for the whole host, else `/x` (no trailing slash), stripped.
    prefix: String,
    engine: Arc<Engine>,
}

/// Which requests are SpockFS, and the engine that answers them.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct SpockFsModule {
    routes: Arc<Vec<Route>>,
}

impl std::fmt::Debug for SpockFsModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for r in self.routes.iter() {
            l.entry(&(&r.host, &r.prefix));
        }
        l.finish()
    }
}

/// Builds a [`SpockFsModule`].
#[derive(Default)]
pub struct ModuleBuilder {
    routes: Vec<Route>,
}

fn norm_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() || p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    }
}

impl ModuleBuilder {
    /// Every request to `host` (`name` or `name:port`, case-insensitive;
    /// `name` matches any port) is SpockFS, answered by `engine`.
    pub fn vhost(self, host: &str, engine: Engine) -> Self {
        self.route(Some(host), "", engine)
    }

    /// On every host, requests under `prefix` are SpockFS, with the prefix
    /// stripped like axum's `nest_service` (`/fs` and `/fs/` are the root).
    pub fn prefix(self, prefix: &str, engine: Engine) -> Self {
        self.route(None, prefix, engine)
    }

    /// The general form: `host` (`None` for every host) and `prefix` (`""`
    /// or `"/"` for the whole host).
    pub fn route(mut self, host: Option<&str>, prefix: &str, engine: Engine) -> Self {
        self.routes.push(Route {
            host: match host {
                Some(h) => HostMatch::Host(h.to_ascii_lowercase()),
                None => HostMatch::Any,
            },
            prefix: norm_prefix(prefix),
            engine: Arc::new(engine),
        });
        self
    }

    /// The module.
    pub fn build(mut self) -> SpockFsModule {
        // Most specific first: a host before any host, longer prefixes first.
        self.routes.sort_by(|a, b| {
            let ha = matches!(a.host, HostMatch::Any);
            let hb = matches!(b.host, HostMatch::Any);
            ha.cmp(&hb).then(b.prefix.len().cmp(&a.prefix.len()))
        });
        SpockFsModule {
            routes: Arc::new(self.routes),
        }
    }
}

/// The authority a request names: `:authority` for HTTP/2 (and absolute
/// URIs), else the `Host` header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

/// Does a route apply to this (normalized) request host?
fn host_matches(route: &HostMatch, host: Option<&str>) -> bool {
    match (route, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Host(_), None) => false,
        (HostMatch::Host(want), Some(h)) => vhost_matches(want, h),
    }
}

impl SpockFsModule {
    /// Configures routes.
    pub fn builder() -> ModuleBuilder {
        ModuleBuilder::default()
    }

    /// The engine and the stripped path for a request, if it is SpockFS.
    pub fn route_for(&self, req: &RequestHeader) -> Option<(Arc<Engine>, String)> {
        // Normalized once per request, not once per route.
        let host = request_host(req).map(normalize_host);
        let path = req.uri.path();
        self.routes
            .iter()
            .filter(|r| host_matches(&r.host, host.as_deref()))
            .find_map(|r| {
                strip_mount_prefix(&r.prefix, path).map(|p| (r.engine.clone(), p.to_owned()))
            })
    }

    /// Answers `session` if it is a SpockFS request (`Ok(true)`: the
    /// response has been written), or leaves it untouched (`Ok(false)`).
    /// Call it in `ProxyHttp::request_filter`, after your own checks
    /// (authentication, rate limits): whatever it is not called for, it
    /// does not answer.
    ///
    /// The request's extensions (`session.req_header_mut().extensions_mut()`)
    /// go to the engine with it, all of them, as the tower service passes
    /// an `http::Request`'s. So a [`spockfs_core::Mount`] inserted there
    /// (say, the authenticated user's home) is the root for this request,
    /// taking precedence over the engine's vhosts and default mount; the
    /// route (host, prefix) still decides whether the request is SpockFS.
    pub async fn handle(&self, session: &mut Session) -> Result<bool> {
        let Some((engine, path)) = self.route_for(session.req_header()) else {
            return Ok(false);
        };
        serve(&engine, &path, session).await?;
        Ok(true)
    }
}

/// Builds the engine's request from Pingora's header: same method, version,
/// headers and extensions (a per-request `Mount`, and whatever else the
/// host attached); the URI keeps the authority (HTTP/2 vhost selection)
/// with the stripped path.
fn engine_request(rh: &RequestHeader, path: &str, body: PumpBody) -> Option<Request<PumpBody>> {
    let pq = match rh.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri = match rh.uri.authority() {
        Some(a) => Uri::builder()
            .scheme(rh.uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(a.clone())
            .path_and_query(pq)
            .build()
            .ok()?,
        None => pq.parse().ok()?,
    };
    let mut req = Request::new(body);
    *req.method_mut() = rh.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = rh.version;
    *req.headers_mut() = rh.headers.clone();
    // Cloned, not taken: the host's later hooks (logging) still see them.
    // Empty extensions clone without allocating.
    *req.extensions_mut() = rh.extensions.clone();
    Some(req)
}

/// Serves one SpockFS request on `session` with `engine`.
pub async fn serve(engine: &Engine, path: &str, session: &mut Session) -> Result<()> {
    let no_body = session.as_downstream_mut().is_body_empty();
    let content_length = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expect_continue = session
        .req_header()
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if no_body {
        // Most SpockFS requests (GETATTR, READDIR, GET…) carry no body:
        // no pump, no channel.
        let Some(req) = engine_request(session.req_header(), path, PumpBody::empty()) else {
            session.respond_error(400).await?;
            return Ok(());
        };
        let resp = engine.handle(req).await;
        let r = write_response(session, resp).await;
        return finish(session, r);
    }
    let (tx, rx) = mpsc::channel(2);
    let (demand_tx, demand_rx) = oneshot::channel();
    let body = PumpBody {
        rx: Some(rx),
        demand: Some(demand_tx),
        remaining: content_length,
        done: false,
    };
    let Some(req) = engine_request(session.req_header(), path, body) else {
        session.respond_error(400).await?;
        return Ok(());
    };

    // Run the engine and the request-body pump together: the engine pulls
    // the body only when it needs it (PUT, SETXATTR, draining before an
    // error), and only then is `100 Continue` sent and the body read.
    let mut body_complete = false;
    let resp = {
        let handle = engine.handle(req);
        tokio::pin!(handle);
        let pump = pump(session, tx, demand_rx, expect_continue);
        tokio::pin!(pump);
        let mut pump_done = false;
        loop {
            tokio::select! {
                resp = &mut handle => break resp,
                done = &mut pump, if !pump_done => {
                    pump_done = true;
                    body_complete = done;
                }
            }
        }
    };
    if !body_complete {
        // Part of the request body is still on the wire: the connection
        // cannot be reused.
        session.as_downstream_mut().set_keepalive(None);
    }
    let r = write_response(session, resp).await;
    finish(session, r)
}

/// A client that went away mid-response is not a server error: close the
/// connection quietly instead of letting Pingora log an ERROR for it.
fn finish(session: &mut Session, r: Result<()>) -> Result<()> {
    match r {
        Err(e)
            if matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ConnectionClosed
            ) =>
        {
            tracing::debug!(error = %e, "client went away during a SpockFS response");
            session.as_downstream_mut().set_keepalive(None);
            Ok(())
        }
        r => r,
    }
}

/// Reads the request body into the engine's channel once the engine first
/// asks for it. Returns true if the body was read to its end.
async fn pump(
    session: &mut Session,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    demand: oneshot::Receiver<()>,
    expect_continue: bool,
) -> bool {
    if demand.await.is_err() {
        return false;
    }
    if expect_continue {
        // Pingora disables keep-alive on an interim response unless told
        // that answering before the body is fine.
        session
            .as_mut()
            .set_close_on_response_before_downstream_finish(false);
        if let Err(e) = session.as_downstream_mut().write_continue_response().await {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return false;
        }
    }
    loop {
        match session.as_downstream_mut().read_request_body().await {
            Ok(Some(b)) => {
                if tx.send(Ok(b)).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return false;
            }
        }
    }
}

/// Writes a response made by the engine (or by [`spockfs_core::error_response`])
/// on `session`: header, then the body streamed frame by frame. A client
/// that went away is not an error (the connection is just not reused).
pub async fn respond(session: &mut Session, resp: http::Response<SpockBody>) -> Result<()> {
    let r = write_response(session, resp).await;
    finish(session, r)
}

/// Writes the engine's response: header (with an exact Content-Length, or
/// chunked for a streamed READDIR), then the body streamed frame by frame.
async fn write_response(session: &mut Session, resp: http::Response<SpockBody>) -> Result<()> {
    let (parts, body) = resp.into_parts();
    let (mut parts, mut body) = (parts, body);
    if !parts.headers.contains_key(CONTENT_LENGTH) && !no_body_status(parts.status) {
        match body.size_hint().exact() {
            Some(n) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, http::HeaderValue::from(n));
            }
            None if session.req_header().version == http::Version::HTTP_11 => {
                parts.headers.insert(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static("chunked"),
                );
            }
            // HTTP/1.0: the end of the connection ends the body; HTTP/2
            // frames it by itself.
            None => {}
        }
    }
    // The engine's response head moves in whole (no case map: names go out
    // lowercase, exactly as hyper sends them).
    let header = ResponseHeader::from(parts);
    let mut end = body.is_end_stream();
    session.write_response_header(Box::new(header), end).await?;
    let mut body = Pin::new(&mut body);
    while !end {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                session.write_response_body(None, true).await?;
                end = true;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    end = body.is_end_stream();
                    session.write_response_body(Some(data), end).await?;
                }
            }
            Some(Err(e)) => {
                // Content-Length was promised; abort the connection.
                // (InternalError, not WriteError: `finish` treats write
                // errors as a client that went away.)
                return Err(Error::because(
                    ErrorType::InternalError,
                    "SpockFS response body",
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn no_body_status(s: StatusCode) -> bool {
    s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED
}

/// The request body as the engine sees it: frames pushed by [`pump`],
/// pulled on demand.
struct PumpBody {
    rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    demand: Option<oneshot::Sender<()>>,
    remaining: Option<u64>,
    done: bool,
}

impl PumpBody {
    fn empty() -> PumpBody {
        PumpBody {
            rx: None,
            demand: None,
            remaining: Some(0),
            done: true,
        }
    }
}

impl Body for PumpBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(d) = self.demand.take() {
            let _ = d.send(());
        }
        let Some(rx) = self.rx.as_mut() else {
            self.done = true;
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> RequestHeader {
        let mut r =
            RequestHeader::build("GET", uri.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
        if let Some(h) = host {
            r.insert_header("host", h).unwrap_or_else(|e| panic!("{e}"));
        }
        r
    }

    #[test]
    fn routing() {
        let m = SpockFsModule::builder()
            .prefix("/fs/", Engine::builder().build())
            .vhost("Files.Test", Engine::builder().build())
            .route(Some("a.test:8080"), "/data", Engine::builder().build())
            .build();
        let p = |h: Option<&str>, u: &str| m.route_for(&req(h, u)).map(|(_, p)| p);
        assert_eq!(p(Some("x"), "/fs"), Some("/".into()));
        assert_eq!(p(Some("x"), "/fs/"), Some("/".into()));
        assert_eq!(p(Some("x"), "/fs/a/b"), Some("/a/b".into()));
        assert_eq!(p(Some("x"), "/fsx"), None);
        assert_eq!(p(Some("x"), "/other"), None);
        assert_eq!(p(Some("files.test:443"), "/other"), Some("/other".into()));
        assert_eq!(p(Some("a.test:8080"), "/data/x"), Some("/x".into()));
        assert_eq!(p(Some("a.test:8081"), "/data/x"), None);
        // HTTP/2: no Host header, the authority is in the URI.
        let mut h2 = req(None, "/z");
        h2.set_uri(
            "https://files.test/z"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(m.route_for(&h2).map(|(_, p)| p), Some("/z".into()));
        assert_eq!(p(None, "/fs/q"), Some("/q".into()));
    }

    /// Whatever the host attached to the request (a per-request `Mount`,
    /// any other type) reaches the engine, and stays on the session.
    #[test]
    fn extensions_go_to_the_engine() {
        #[derive(Clone, Debug, PartialEq)]
        struct Identity(&'static str);
        let mut rh = req(Some("x"), "/fs/a?q=1");
        let mount = spockfs_core::Mount::new(spockfs_core::MemFs::new()).read_only(true);
        rh.extensions_mut().insert(mount);
        rh.extensions_mut().insert(Identity("alice"));
        let r = engine_request(&rh, "/a", PumpBody::empty()).unwrap_or_else(|| panic!());
        assert_eq!(r.uri(), "/a?q=1");
        assert!(r
            .extensions()
            .get::<spockfs_core::Mount>()
            .is_some_and(|m| m.is_read_only()));
        assert_eq!(r.extensions().get::<Identity>(), Some(&Identity("alice")));
        assert!(rh.extensions.get::<Identity>().is_some());
    }
}
