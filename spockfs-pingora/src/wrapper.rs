//! [`WithSpockFs`]: SpockFS in front of any existing `ProxyHttp`, in one line.

use crate::SpockFsModule;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, PurgeAction, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::protocols::Digest;
use pingora::proxy::{
    FailToProxy, ProxyHttp, ProxyWarnLogContext, PurgeStatus, RangeType, Session,
};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use std::any::Any;
use std::time::Duration;
use tokio::sync::mpsc;

/// Wraps a `ProxyHttp` so that SpockFS requests are answered by the module
/// and everything else goes to `inner`, unchanged: every hook delegates.
///
/// The inner proxy's filters run first, for SpockFS requests too:
/// `early_request_filter`, Pingora's downstream modules, then the inner
/// `request_filter` (authentication, rate limits, …). Only if that lets the
/// request through (`Ok(false)`) does the module answer it; if the inner
/// filter answered (`Ok(true)`) or failed, the module never sees it. The
/// inner `request_filter` can also pick the root for this request: a
/// [`spockfs_core::Mount`] it inserts into
/// `session.req_header_mut().extensions_mut()` takes precedence over the
/// engine's vhosts and default mount (see [`SpockFsModule::handle`]).
///
/// ```no_run
/// # use pingora::proxy::{ProxyHttp, Session};
/// # use pingora::upstreams::peer::HttpPeer;
/// # struct MyGateway;
/// # #[async_trait::async_trait]
/// # impl ProxyHttp for MyGateway {
/// #     type CTX = ();
/// #     fn new_ctx(&self) {}
/// #     async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
/// #         Ok(Box::new(HttpPeer::new("127.0.0.1:8080", false, String::new())))
/// #     }
/// # }
/// use spockfs_core::Engine;
/// use spockfs_pingora::{SpockFsModule, WithSpockFs};
///
/// let module = SpockFsModule::builder().prefix("/fs", Engine::new("/srv/files")).build();
/// let gateway = WithSpockFs::new(module, MyGateway);
/// // pingora::proxy::http_proxy_service(&server.configuration, gateway)
/// ```
///
/// A gateway that authenticates every request and serves each user their
/// own directory under `/fs` (the engine has no default mount, so a request
/// without a user's `Mount` would be 404 `ENOENT`; here it never gets
/// that far):
///
/// ```no_run
/// use pingora::proxy::{ProxyHttp, Session};
/// use pingora::upstreams::peer::HttpPeer;
/// use spockfs_core::{Engine, Mount};
/// use spockfs_pingora::{SpockFsModule, WithSpockFs};
///
/// struct MyGateway;
///
/// #[async_trait::async_trait]
/// impl ProxyHttp for MyGateway {
///     type CTX = ();
///     fn new_ctx(&self) {}
///
///     async fn request_filter(&self, session: &mut Session, _: &mut ()) -> pingora::Result<bool> {
///         let user = match session.req_header().headers.get("x-api-key").map(|k| k.as_bytes()) {
///             Some(b"alice-secret") => "alice",
///             Some(b"bob-secret") => "bob",
///             _ => {
///                 session.respond_error(401).await?;
///                 return Ok(true); // answered: neither SpockFS nor the upstream sees it
///             }
///         };
///         // Real code keeps one Mount per user: a LocalFs opens its root on first use.
///         let home = Mount::local(format!("/srv/homes/{user}"));
///         session.req_header_mut().extensions_mut().insert(home);
///         Ok(false)
///     }
///
///     async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
///         Ok(Box::new(HttpPeer::new("127.0.0.1:8080", false, String::new())))
///     }
/// }
///
/// let module = SpockFsModule::builder().prefix("/fs", Engine::builder().build()).build();
/// let gateway = WithSpockFs::new(module, MyGateway);
/// ```
pub struct WithSpockFs<P> {
    module: SpockFsModule,
    inner: P,
}

impl<P> WithSpockFs<P> {
    /// SpockFS (per `module`) in front of `inner`.
    pub fn new(module: SpockFsModule, inner: P) -> Self {
        WithSpockFs { module, inner }
    }

    /// The wrapped proxy.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The module.
    pub fn module(&self) -> &SpockFsModule {
        &self.module
    }
}

#[async_trait]
impl<P> ProxyHttp for WithSpockFs<P>
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    type CTX = P::CTX;

    fn new_ctx(&self) -> Self::CTX {
        self.inner.new_ctx()
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        self.inner.upstream_peer(session, ctx).await
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        self.inner.init_downstream_modules(modules)
    }

    /// The inner proxy's `request_filter` first (it may refuse, answer or
    /// choose a `Mount`); then, if it let the request through, the module.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if self.inner.request_filter(session, ctx).await? {
            return Ok(true);
        }
        self.module.handle(session).await
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        self.inner.early_request_filter(session, ctx).await
    }

    fn allow_spawning_subrequest(&self, session: &Session, ctx: &Self::CTX) -> bool {
        self.inner.allow_spawning_subrequest(session, ctx)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .request_body_filter(session, body, end_of_stream, ctx)
            .await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        self.inner.request_cache_filter(session, ctx)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        self.inner.cache_key_callback(session, ctx)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Self::CTX) {
        self.inner.cache_miss(session, ctx)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        self.inner
            .cache_hit_filter(session, meta, hit_handler, is_fresh, ctx)
            .await
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        self.inner.proxy_upstream_filter(session, ctx).await
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        self.inner.response_cache_filter(session, resp, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.inner.cache_vary_filter(meta, ctx, req)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        self.inner.cache_not_modified_filter(session, resp, ctx)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> RangeType {
        self.inner.range_header_filter(session, resp, ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .upstream_request_filter(session, upstream_request, ctx)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .upstream_response_filter(session, upstream_response, ctx)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .response_filter(session, upstream_response, ctx)
            .await
    }

    async fn custom_forwarding(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        to_upstream: Option<mpsc::Sender<Bytes>>,
        to_downstream: mpsc::Sender<Bytes>,
    ) -> Result<()> {
        self.inner
            .custom_forwarding(session, ctx, to_upstream, to_downstream)
            .await
    }

    async fn downstream_custom_message_proxy_filter(
        &self,
        session: &mut Session,
        custom_message: Bytes,
        ctx: &mut Self::CTX,
        final_hop: bool,
    ) -> Result<Option<Bytes>> {
        self.inner
            .downstream_custom_message_proxy_filter(session, custom_message, ctx, final_hop)
            .await
    }

    async fn upstream_custom_message_proxy_filter(
        &self,
        session: &mut Session,
        custom_message: Bytes,
        ctx: &mut Self::CTX,
        final_hop: bool,
    ) -> Result<Option<Bytes>> {
        self.inner
            .upstream_custom_message_proxy_filter(session, custom_message, ctx, final_hop)
            .await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.inner
            .upstream_response_body_filter(session, body, end_of_stream, ctx)
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .upstream_response_trailer_filter(session, upstream_trailers, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.inner
            .response_body_filter(session, body, end_of_stream, ctx)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Bytes>> {
        self.inner
            .response_trailer_filter(session, upstream_trailers, ctx)
            .await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        self.inner.logging(session, e, ctx).await
    }

    fn persist_connection_context(
        &self,
        session: &Session,
        ctx: &Self::CTX,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        self.inner.persist_connection_context(session, ctx)
    }

    fn on_connection_reuse(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        prev_ctx: Box<dyn Any + Send + Sync>,
    ) {
        self.inner.on_connection_reuse(session, ctx, prev_ctx)
    }

    fn suppress_error_log(&self, session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        self.inner.suppress_error_log(session, ctx, error)
    }

    fn suppress_proxy_warn_log(
        &self,
        session: &Session,
        ctx: &Self::CTX,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        self.inner
            .suppress_proxy_warn_log(session, ctx, error, context)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        self.inner
            .error_while_proxy(peer, session, e, ctx, client_reused)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        self.inner.fail_to_connect(session, peer, ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        self.inner.fail_to_proxy(session, e, ctx).await
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        self.inner.should_serve_stale(session, ctx, error)
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        #[cfg(unix)]
        return self
            .inner
            .connected_to_upstream(session, reused, peer, fd, digest, ctx)
            .await;
        #[cfg(windows)]
        return self
            .inner
            .connected_to_upstream(session, reused, peer, sock, digest, ctx)
            .await;
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        self.inner.request_summary(session, ctx)
    }

    fn is_purge(&self, session: &Session, ctx: &Self::CTX) -> bool {
        self.inner.is_purge(session, ctx)
    }

    fn purge_action(&self, session: &Session, ctx: &Self::CTX) -> PurgeAction {
        self.inner.purge_action(session, ctx)
    }

    fn purge_response_filter(
        &self,
        session: &Session,
        ctx: &mut Self::CTX,
        purge_status: PurgeStatus,
        purge_response: &mut std::borrow::Cow<'static, ResponseHeader>,
    ) -> Result<()> {
        self.inner
            .purge_response_filter(session, ctx, purge_status, purge_response)
    }
}
