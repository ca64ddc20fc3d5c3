//! The transport: one pooled set of keep-alive connections (HTTP/1.1, or
//! HTTP/2 by ALPN or prior knowledge), and the single request path every
//! call takes (auth, caller identity, timeout, status to errno, failures
//! classified into [`Error`]s, a debug line per call).

use crate::upload::{ChunkStream, Phase, ReqBody, Upload};
use crate::{errno_of, Client, Error, Extensions, FsResult};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use spockfs_proto::path::encode_path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connection pool. Idle connections are dropped after 30 s, before the
/// usual server idle timeouts (60 s here, 75 s in nginx) close them under a
/// request.
pub(crate) fn pool(connector: Connector, http2_only: bool) -> HyperClient<Connector, ReqBody> {
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .http2_only(http2_only)
        .build(connector)
}

/// What clones of a [`Client`] share.
pub(crate) struct Inner {
    pub(crate) http: HyperClient<Connector, ReqBody>,
    pub(crate) connector: Connector,
    pub(crate) http2_only: bool,
    pub(crate) base: String,
    pub(crate) auth: Option<HeaderValue>,
    pub(crate) timeout: Duration,
    pub(crate) extensions: Arc<OnceCell<Extensions>>,
}

/// A decimal header value.
pub(crate) fn hv(n: impl std::fmt::Display) -> HeaderValue {
    // Decimal numbers are always valid header values.
    HeaderValue::from_str(&n.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `resp` if its status is one of `ok`, else the error it answers
/// (refined by `X-Spock-errno` when the server has the `errno` extension).
fn expect_status(
    resp: Response<Bytes>,
    ok: &[u16],
    ext: Extensions,
) -> Result<Response<Bytes>, Error> {
    if ok.contains(&resp.status().as_u16()) {
        return Ok(resp);
    }
    Err(Error::from_status(resp.status(), resp.headers(), ext.errno))
}

/// Pause before a request lost in transit is sent again.
const REPLAY_DELAY: Duration = Duration::from_millis(50);

/// Did the request die on the way (502 from a proxy whose node died, or
/// the connection broke before the answer), so that it may have been
/// applied or not?
fn lost_in_transit(r: &Result<Response<Bytes>, Error>) -> bool {
    match r {
        Ok(resp) => resp.status() == http::StatusCode::BAD_GATEWAY,
        Err(e) => lost_in_transit_error(e),
    }
}

/// [`lost_in_transit`] for a call's error (a 502 is an error there).
pub(crate) fn lost_in_transit_error(e: &Error) -> bool {
    e.status() == Some(http::StatusCode::BAD_GATEWAY) || e.kind() == crate::ErrorKind::Connection
}

/// [`spockfs_proto::Method::is_replay_safe`] for a request of this client.
fn replay_safe(method: &str, headers: &[(&'static str, HeaderValue)]) -> bool {
    let Some(m) = Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| spockfs_proto::Method::from_http(&m))
    else {
        return false;
    };
    let map: http::HeaderMap = headers
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), v.clone()))
        .collect();
    m.is_replay_safe(&map)
}

impl Client {
    /// One request; `Ok` only for one of the `ok` statuses.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
        ok: &[u16],
    ) -> FsResult<Response<Bytes>> {
        self.request(method, path, headers, body, ok)
            .await
            .map_err(|e| e.errno())
    }

    /// [`call`](Client::call), failing with the cause.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
        ok: &[u16],
    ) -> Result<Response<Bytes>, Error> {
        let ext = if method == "OPTIONS" {
            Extensions::default()
        } else {
            self.extensions().await
        };
        let resp = self.send(method, path, headers, body).await?;
        expect_status(resp, ok, ext)
    }

    /// One request, whatever the status; failing with `Errno::EIO` (or
    /// `EINVAL` for a request that cannot be built).
    pub(crate) async fn raw(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
    ) -> FsResult<Response<Bytes>> {
        self.send(method, path, headers, body)
            .await
            .map_err(|e| e.errno())
    }

    /// One request, whatever the status, failing with the cause; logged at
    /// debug level (method, path, status, errno, duration).
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Bytes>, Error> {
        let start = Instant::now();
        let r = self
            .send_unlogged(method, path, headers, body.clone())
            .await;
        self.log(method, path, start, &r);
        if !lost_in_transit(&r) || !replay_safe(method, headers) {
            return r;
        }
        // A proxy's node (or the connection) died with the request in
        // flight; it gives the same result twice, so it is sent once more
        // (the proxy picks another node).
        tokio::time::sleep(REPLAY_DELAY).await;
        let start = Instant::now();
        let r = self.send_unlogged(method, path, headers, body).await;
        self.log(method, path, start, &r);
        r
    }

    /// [`request`](Client::request) with a streamed body: `len`, the exact
    /// number of bytes `body` must yield (sent as `Content-Length`), or
    /// `None` (chunked on HTTP/1.1).
    pub(crate) async fn request_stream(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: ChunkStream,
        len: Option<u64>,
        ok: &[u16],
    ) -> Result<Response<Bytes>, Error> {
        let ext = self.extensions().await;
        let resp = self.send_stream(method, path, headers, body, len).await?;
        expect_status(resp, ok, ext)
    }

    /// [`send`](Client::send) with a streamed body. The client's timeout
    /// bounds the wait for a connection (until the body is first polled)
    /// and the wait for the answer once the body is sent; not the sending
    /// of the body, however long. A failure of the body (its stream's
    /// error, a wrong length) is the call's error, whatever the server
    /// answered.
    pub(crate) async fn send_stream(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: ChunkStream,
        len: Option<u64>,
    ) -> Result<Response<Bytes>, Error> {
        let start = Instant::now();
        let r = self
            .send_stream_unlogged(method, path, headers, body, len)
            .await;
        self.log(method, path, start, &r);
        r
    }

    /// A debug line for a call.
    fn log(&self, method: &str, path: &[u8], start: Instant, r: &Result<Response<Bytes>, Error>) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let path = String::from_utf8_lossy(path);
            match r {
                Ok(resp) if resp.status().is_success() => {
                    tracing::debug!(
                        method,
                        %path,
                        status = resp.status().as_u16(),
                        ms = format_args!("{ms:.1}"),
                        "SpockFS call"
                    );
                }
                Ok(resp) => {
                    let use_header = self.inner.extensions.get().is_some_and(|e| e.errno);
                    let errno = errno_of(resp.status(), resp.headers(), use_header);
                    tracing::debug!(
                        method,
                        %path,
                        status = resp.status().as_u16(),
                        errno = ?errno,
                        ms = format_args!("{ms:.1}"),
                        "SpockFS call"
                    );
                }
                Err(e) => {
                    tracing::debug!(
                        method,
                        %path,
                        errno = ?e.errno(),
                        error = %e,
                        ms = format_args!("{ms:.1}"),
                        "SpockFS call failed"
                    );
                }
            }
        }
    }

    /// The request: URI, credentials, caller identity, headers, body.
    fn build(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: ReqBody,
    ) -> Result<Request<ReqBody>, Error> {
        let m = Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::invalid_request("invalid method"))?;
        let uri = format!("{}{}", self.inner.base, encode_path(path));
        let mut req = Request::builder().method(m).uri(uri);
        if let Some(a) = &self.inner.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        if let Some(c) = &self.caller {
            // Only to a server that says it uses it.
            if self.inner.extensions.get().is_some_and(|e| e.identity) {
                req = req.header("x-spock-caller", c.clone());
            }
        }
        for (k, v) in headers {
            req = req.header(HeaderName::from_static(k), v.clone());
        }
        req.body(body)
            .map_err(|e| Error::invalid_request(&format!("invalid request: {e}")))
    }

    /// Sends `req`, reads the whole answer.
    async fn exchange(&self, req: Request<ReqBody>) -> Result<Response<Bytes>, Error> {
        let https = self.inner.base.starts_with("https:");
        let resp = self
            .inner
            .http
            .request(req)
            .await
            .map_err(|e| Error::from_transport(e, https))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(Error::body)?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    async fn send_unlogged(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Bytes>, Error> {
        let req = self.build(method, path, headers, ReqBody::Full(Full::new(body)))?;
        match tokio::time::timeout(self.inner.timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(self.inner.timeout)),
        }
    }

    async fn send_stream_unlogged(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        body: ChunkStream,
        len: Option<u64>,
    ) -> Result<Response<Bytes>, Error> {
        let start = tokio::time::Instant::now();
        let (upload, mut watch) = Upload::new(body, len);
        let req = self.build(method, path, headers, ReqBody::Stream(upload))?;
        let t = self.inner.timeout;
        let fut = self.exchange(req);
        tokio::pin!(fut);
        // Set when the body is dropped (sent, or abandoned by hyper).
        let mut closed: Option<tokio::time::Instant> = None;
        let r = loop {
            // The deadline for where the body is: none while it is being
            // sent.
            let phase = *watch.phase.borrow_and_update();
            let deadline = match (phase, closed) {
                (Phase::Over(at), _) => Some(tokio::time::Instant::from_std(at) + t),
                (_, Some(c)) => Some(c + t),
                (Phase::Waiting, None) => Some(start + t),
                (Phase::Sending, None) => None,
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut fut => break r,
                changed = watch.phase.changed(), if closed.is_none() => {
                    if changed.is_err() {
                        closed = Some(tokio::time::Instant::now());
                    }
                }
                () = sleep => break Err(Error::timeout(t)),
            }
        };
        match watch.take_failure() {
            Some(e) => Err(Error::upload(e)),
            None => r,
        }
    }

    /// The same client (server, credentials, TLS roots, timeout, the
    /// extensions learnt so far) with a connection pool of its own.
    ///
    /// Connections run on the runtime that opened them: a thread that
    /// drives its own single-threaded runtime (as `spockfs-mount`'s FUSE
    /// threads do) takes its own pool, so no call ever waits on a
    /// connection whose runtime is not running.
    ///
    /// ```
    /// let shared = spockfs_client::Client::new("http://127.0.0.1:8080/fs")?;
    /// let mine = shared.with_own_pool();
    /// # drop(mine);
    /// # Ok::<(), spockfs_client::BuildError>(())
    /// ```
    pub fn with_own_pool(&self) -> Client {
        let i = &self.inner;
        Client {
            caller: self.caller.clone(),
            inner: Arc::new(Inner {
                http: pool(i.connector.clone(), i.http2_only),
                connector: i.connector.clone(),
                http2_only: i.http2_only,
                base: i.base.clone(),
                auth: i.auth.clone(),
                timeout: i.timeout,
                extensions: i.extensions.clone(),
            }),
        }
    }
}
