//! The gateway's `ProxyHttp`: what each request goes to (a local vhost
//! through the SpockFS module, a pool, the default upstream), read-only
//! pools, retries, and the per-request connection and body timeouts.

use crate::listen::GuardedStream;
use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use spockfs_conn::RequestActive;
use spockfs_core::{Method, Routes};
use spockfs_pingora::SpockFsModule;
use std::sync::Arc;
use std::time::Duration;

/// A pool vhost's balancer (which requests go to it is in
/// [`Gateway`]'s pool routes).
pub(crate) struct Pool {
    pub(crate) lb: Arc<LoadBalancer<RoundRobin>>,
    pub(crate) size: usize,
    pub(crate) read_only: bool,
}

/// How much later than the body timeout Pingora's own read timeout on the
/// client connection fires. For SpockFS routes the engine's body clock
/// (same timeout) answers 408 `ETIMEDOUT`; with equal timeouts the two
/// raced and Pingora's read error, surfacing in the engine as a failed
/// body read, could win and make it a 400. Pingora's timeout stays the
/// bound for proxied routes, where no engine reads the body.
const READ_BACKSTOP: Duration = Duration::from_millis(500);

/// The gateway's `ProxyHttp`.
pub struct Gateway {
    pub(crate) module: SpockFsModule,
    /// Which requests go to which pool (an index in `pools`): the same
    /// matcher as the module's.
    pub(crate) pool_routes: Routes<usize>,
    pub(crate) pools: Vec<Pool>,
    pub(crate) default_upstream: Option<String>,
    pub(crate) max_header_bytes: usize,
    pub(crate) body_timeout: Option<Duration>,
    pub(crate) strip_request_headers: Vec<http::HeaderName>,
    pub(crate) write_timeout: Option<Duration>,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    pool: Option<usize>,
    tried: Vec<SocketAddr>,
    /// The address the request goes to (`Host` of a request that has none).
    upstream: Option<String>,
    /// Holds the connection guard off while this request is in progress.
    _active: Option<RequestActive>,
}

/// Bytes of a request head as sent: request line and header lines.
fn head_size(req: &RequestHeader) -> usize {
    req.method.as_str().len()
        + req.raw_path().len()
        + 12
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Would this request change something? Not SpockFS methods count too: a
/// read-only pool forwards only what is known to change nothing.
fn is_mutating(req: &RequestHeader) -> bool {
    Method::from_http(&req.method)
        .is_none_or(|m| spockfs_core::engine::is_mutating_request(m, &req.headers))
}

impl Gateway {
    /// The pool vhost a request goes to, if any.
    fn pool_for(&self, session: &Session) -> Option<usize> {
        let req = session.req_header();
        self.pool_routes
            .find_request(&req.uri, &req.headers)
            .map(|(&i, _)| i)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No downstream modules: Pingora's default adds a response-compression
    /// module (at level 0, i.e. off) to every request; SpockFS bodies must
    /// never be compressed (it would break Content-Length and ranges), and
    /// proxied responses pass through as the upstream sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // The head is in: the connection guard stands down until this
        // request is done (`ctx` is dropped at its end).
        let guarded = session
            .as_downstream()
            .stream()
            .and_then(|s| (**s).as_any().downcast_ref::<GuardedStream>());
        if let Some(g) = guarded {
            ctx._active = Some(g.0.activity().request());
        }
        session
            .as_downstream_mut()
            .set_read_timeout(self.body_timeout.map(|t| t + READ_BACKSTOP));
        // A response the client does not take (HTTP/1 socket full, HTTP/2
        // window at zero): the write fails, the connection is closed or
        // the stream reset, and the request ends (SpockFS or proxied).
        session
            .as_downstream_mut()
            .set_write_timeout(self.write_timeout);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let size = head_size(session.req_header());
        if size > self.max_header_bytes {
            let resp = spockfs_core::error_response(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                spockfs_core::Errno::E2BIG,
                &format!(
                    "request head of {size} bytes; this server accepts at most {}",
                    self.max_header_bytes
                ),
            );
            session.as_downstream_mut().set_keepalive(None);
            spockfs_pingora::respond(session, resp).await?;
            return Ok(true);
        }
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, for a
        // pool or the default upstream as for a local vhost (the engine's
        // answer); HTTP/1.0 may omit it.
        let req = session.req_header();
        if spockfs_core::route::missing_host(req.version, &req.uri, &req.headers) {
            let resp = spockfs_core::error_response(
                http::StatusCode::BAD_REQUEST,
                spockfs_core::Errno::EINVAL,
                "HTTP/1.1 request without Host header",
            );
            session.as_downstream_mut().set_keepalive(None);
            spockfs_pingora::respond(session, resp).await?;
            return Ok(true);
        }
        // Identity headers are the gateway's (or a proxy in front of it)
        // to set, never a client's.
        for name in &self.strip_request_headers {
            session.req_header_mut().remove_header(name);
        }
        if self.module.handle(session).await? {
            return Ok(true);
        }
        ctx.pool = self.pool_for(session);
        if let Some(i) = ctx.pool {
            if self.pools[i].read_only && is_mutating(session.req_header()) {
                // As a local read-only vhost answers.
                let e = spockfs_core::Errno::EROFS;
                let msg = format!("{} (read-only mount)", e.description());
                let resp = spockfs_core::error_response(e.status(), e, &msg);
                if !session.as_downstream_mut().is_body_empty() {
                    // Not read: the connection cannot be reused.
                    session.as_downstream_mut().set_keepalive(None);
                }
                spockfs_pingora::respond(session, resp).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // `ctx.pool` was chosen in `request_filter`.
        if let Some(i) = ctx.pool {
            let pool = &self.pools[i];
            let tried = &ctx.tried;
            let backend = pool
                .lb
                .select_with(b"", 256, |b, healthy| healthy && !tried.contains(&b.addr))
                // Every healthy node failed already: try one not yet tried.
                .or_else(|| {
                    pool.lb
                        .select_with(b"", 256, |b, _| !tried.contains(&b.addr))
                })
                .ok_or_else(|| {
                    Error::explain(HTTPStatus(502), "no upstream SpockFS node available")
                })?;
            ctx.tried.push(backend.addr.clone());
            ctx.upstream = Some(backend.addr.to_string());
            return Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())));
        }
        match &self.default_upstream {
            Some(addr) => {
                ctx.upstream = Some(addr.clone());
                Ok(Box::new(HttpPeer::new(addr.as_str(), false, String::new())))
            }
            None => Err(Error::explain(
                HTTPStatus(502),
                "no default upstream configured",
            )),
        }
    }

    /// An HTTP/1.0 request may come without `Host` (SpockFS serves it the
    /// default root); forwarded as HTTP/1.1, which requires one, it names
    /// the node it goes to (no vhost of the node matches that: its default
    /// root, the same answer).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if upstream_request.uri.authority().is_none()
            && !upstream_request.headers.contains_key(http::header::HOST)
        {
            if let Some(addr) = &ctx.upstream {
                upstream_request.insert_header(http::header::HOST, addr.as_str())?;
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the node: any method may go to another one.
        if let Some(i) = ctx.pool {
            if ctx.tried.len() < self.pools[i].size {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The request may have reached the node: retry only what gives the
        // same result when done twice (reads, and writes of absolute values:
        // PUT, CHMOD, TRUNCATE, ...), with its whole body still in Pingora's
        // retry buffer (64 KiB), and only while untried nodes remain.
        let req = session.req_header();
        let safe = Method::from_http(&req.method).is_some_and(|m| m.is_replay_safe(&req.headers))
            && !session.as_downstream().retry_buffer_truncated();
        match ctx.pool {
            Some(i) if safe && ctx.tried.len() < self.pools[i].size => e.set_retry(true),
            Some(_) => e.set_retry(false),
            None if safe || session.req_header().method.is_idempotent() => {
                e.retry.decide_reuse(client_reused)
            }
            None => e.set_retry(false),
        }
        e
    }
}
