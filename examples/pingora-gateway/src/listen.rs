//! Downstream connections: admitted under the connection caps, TLS
//! handshakes under the header timeout, the idle/header/write guard, and
//! the HTTP/2 accept loop with keep-alive pings.

use crate::proxy::Gateway;
use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::apps::ServerApp;
use pingora::prelude::*;
use pingora::protocols::http::v2::server::{self as h2_server, H2Options};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use spockfs_conn::{ConnLimiter, ConnTimeouts, GuardedIo};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A downstream connection (HTTP/1 or HTTP/2, cleartext or TLS) under
/// [`GuardedIo`]'s idle, header and write timeouts and its place under the
/// connection caps (Pingora's own timeouts are per read, so a client
/// trickling a header one byte at a time would never hit them, and it has
/// none for HTTP/2 connections).
#[derive(Debug)]
pub struct GuardedStream(pub(crate) GuardedIo<Stream>);

impl tokio::io::AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    /// Through [`GuardedIo`]'s lingering close, so a response is not lost
    /// to a reset when the client is still sending.
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.0).await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.0.get_ref().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.0.get_ref().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.0.get_ref().selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_ref().get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.0.get_ref().get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.0.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.0.get_ref().get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, d: pingora::protocols::raw_connect::ProxyDigest) {
        self.0.get_mut().set_proxy_digest(d)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_ref().get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.0.get_mut().set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.0.get_mut().try_peek(buf).await
    }
}

/// The proxy application behind every downstream connection: admits it
/// under the connection caps ([`ConnLimiter`]), does the TLS handshake
/// (under the header timeout), wraps it in a [`GuardedStream`] (idle,
/// header and write timeouts, HTTP/1 and HTTP/2), and serves HTTP/2 with
/// its own accept loop (Pingora's, plus keep-alive pings that disconnect
/// a peer which stops answering); HTTP/1 goes to Pingora as is.
pub struct GuardedApp {
    pub(crate) inner: Arc<pingora::proxy::HttpProxy<Gateway>>,
    pub(crate) timeouts: ConnTimeouts,
    pub(crate) limiter: ConnLimiter,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) h2: H2Options,
    /// Ping period and answer timeout.
    pub(crate) keepalive: Option<(Duration, Duration)>,
}

/// A listening socket as [`GuardedApp`] sees it.
pub(crate) struct Endpoint {
    pub(crate) addrs: Vec<std::net::SocketAddr>,
    pub(crate) tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    pub(crate) h2c: bool,
}

impl Endpoint {
    fn matches(&self, local: &std::net::SocketAddr) -> bool {
        self.addrs
            .iter()
            .any(|a| a.port() == local.port() && (a.ip() == local.ip() || a.ip().is_unspecified()))
    }
}

/// Malformed streams one HTTP/2 connection may send before it is closed
/// (Pingora's own accept loop allows as many).
const MAX_MALFORMED_STREAMS: usize = 32;

impl GuardedApp {
    fn endpoint(&self, local: Option<std::net::SocketAddr>) -> Option<&Endpoint> {
        let local = local?;
        // An exact address first, then a wildcard one on the same port.
        self.endpoints
            .iter()
            .find(|e| e.addrs.contains(&local))
            .or_else(|| self.endpoints.iter().find(|e| e.matches(&local)))
    }

    /// The TLS handshake, within the header timeout.
    async fn tls_handshake(
        &self,
        acceptor: &pingora::listeners::tls::Acceptor,
        stream: Stream,
    ) -> Option<Stream> {
        let l4 = match stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
        {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::error!("TLS listener: not a TCP stream");
                return None;
            }
        };
        let hs = acceptor.tls_handshake(l4);
        let done = match self.timeouts.header {
            Some(t) => match tokio::time::timeout(t, hs).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!("closing a connection: TLS handshake not complete in time");
                    return None;
                }
            },
            None => hs.await,
        };
        match done {
            Ok(tls) => Some(Box::new(tls)),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    }

    /// Serves an HTTP/2 connection: Pingora's accept loop, with the
    /// connection's requests reported to its guard and keep-alive pings.
    async fn serve_h2(self: &Arc<Self>, io: GuardedIo<Stream>, shutdown: &ShutdownWatch) {
        let activity = io.activity();
        let stream: Stream = Box::new(GuardedStream(io));
        let digest = Arc::new(pingora::protocols::Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut conn = match h2_server::handshake(stream, Some(self.h2.clone())).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        };
        let pings = keepalive(conn.ping_pong(), self.keepalive);
        tokio::pin!(pings);
        let mut shutdown = shutdown.clone();
        let mut draining = false;
        let mut malformed = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed(), if !draining => {
                    // GOAWAY; streams already sent are still served.
                    conn.graceful_shutdown();
                    draining = true;
                }
                () = &mut pings => return,
                next = h2_server::HttpSession::from_h2_conn(&mut conn, digest.clone()) => match next {
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP/2 connection ended");
                        return;
                    }
                    Ok(None) => return,
                    Ok(Some(h2_server::H2Accept::Rejected)) => {
                        malformed += 1;
                        if malformed >= MAX_MALFORMED_STREAMS {
                            tracing::warn!("closing an HTTP/2 connection after {malformed} malformed requests");
                            return;
                        }
                    }
                    Ok(Some(h2_server::H2Accept::Session(session))) => {
                        let active = activity.request();
                        let app = self.inner.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            let _active = active;
                            app.process_new_http(ServerSession::new_http2(session), &shutdown)
                                .await;
                        });
                    }
                },
            }
        }
    }
}

/// Pings the peer every `every`; completes when one is not answered
/// within `wait` (or the connection failed). Never completes without a
/// period.
async fn keepalive(pings: Option<h2::PingPong>, every: Option<(Duration, Duration)>) {
    let (Some(mut pings), Some((every, wait))) = (pings, every) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(wait, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 keep-alive ping failed");
                return;
            }
            Err(_) => {
                tracing::debug!(
                    "closing an HTTP/2 connection: keep-alive ping not answered in time"
                );
                return;
            }
        }
    }
}

#[async_trait]
impl ServerApp for GuardedApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let socket = stream.get_socket_digest();
        let inet = |a: Option<&SocketAddr>| a.and_then(|a| a.as_inet()).copied();
        let peer = socket.as_ref().and_then(|d| inet(d.peer_addr()));
        let local = socket.as_ref().and_then(|d| inet(d.local_addr()));
        // At a cap the idlest connection makes room, or this one is closed
        // at once: nothing waits for a place.
        let admission = match self.limiter.admit(peer.map(|p| p.ip())) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(?peer, "connection refused: {why}");
                return None;
            }
        };
        let Some(endpoint) = self.endpoint(local) else {
            // Every listener is known: this would be a TLS one served as
            // plain text, or the reverse.
            tracing::warn!(?local, "connection on an unknown listener; closing it");
            return None;
        };
        let (stream, alpn_h2) = match &endpoint.tls {
            Some(acceptor) => {
                let s = self.tls_handshake(acceptor, stream).await?;
                let h2 = matches!(s.selected_alpn_proto(), Some(ALPN::H2));
                (s, h2)
            }
            None => (stream, false),
        };
        let mut io = GuardedIo::admitted(stream, self.timeouts, admission);
        // Cleartext HTTP/2 (prior knowledge): the preface, read under the
        // connection's timeouts (and replayed to whichever stack serves it).
        let h2 = alpn_h2 || (endpoint.h2c && io.detect_http2().await.ok()?);
        if h2 {
            self.serve_h2(io.http2(), shutdown).await;
            return None;
        }
        ServerApp::process_new(&self.inner, Box::new(GuardedStream(io)), shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await
    }
}

/// Pingora's rustls acceptor for a certificate chain and key (PEM): TLS
/// 1.2 and 1.3, HTTP/2 preferred by ALPN, as Pingora's own
/// `TlsSettings::intermediate` + `enable_h2` builds it, but with a
/// configuration error instead of a panic.
pub(crate) fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<pingora::listeners::tls::Acceptor, String> {
    use pingora::tls::{load_certs_and_key_files, version, ServerConfig};
    pingora::tls::install_default_crypto_provider();
    let (certs, key) =
        match load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy()) {
            Ok(Some(ck)) => ck,
            Ok(None) => return Err("no certificate or no private key in the PEM files".into()),
            Err(e) => return Err(e.to_string()),
        };
    let mut cfg = ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(pingora::listeners::tls::Acceptor::from_server_config(
        Arc::new(cfg),
    ))
}

/// Checks that a listener for `addr` (resolved to `resolved`; Pingora binds
/// the first address) can be bound now, as Pingora will bind it: with
/// `SO_REUSEADDR`, without `SO_REUSEPORT`. The probe socket is closed at
/// once. Pingora retries a taken address for a long while instead of
/// failing, so this turns it into a start-up error.
pub(crate) fn check_can_listen(
    addr: &str,
    resolved: &[std::net::SocketAddr],
) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    let Some(first) = resolved.first() else {
        return Err(ConfigError::Listener(
            addr.to_owned(),
            "resolves to no address".into(),
        ));
    };
    // std's TcpListener sets SO_REUSEADDR on Unix, as Pingora does.
    match std::net::TcpListener::bind(first) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ConfigError::Listener(
            addr.to_owned(),
            "address in use (another process is listening there)".into(),
        )),
        Err(e) => Err(ConfigError::Listener(addr.to_owned(), e.to_string())),
    }
}
