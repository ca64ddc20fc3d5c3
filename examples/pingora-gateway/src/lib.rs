//! A Pingora edge gateway with SpockFS built in.
//!
//! - **local vhosts** are answered in-process by [`spockfs_pingora::SpockFsModule`]
//!   (LocalFs or MemFs, read-only or not, whole host or under a prefix);
//! - **pool vhosts** are proxied to upstream SpockFS nodes, round robin,
//!   with active health checks; a request is retried on another node only
//!   if it never reached the first one (connect failure) or if it is a
//!   read that changes nothing (GETATTR, READDIR, GET, …);
//! - **everything else** goes to the default upstream, untouched — except
//!   the identity headers a client may not set ([`Config::strip_request_headers`],
//!   `X-Remote-User` and its kin by default), removed from every request
//!   before anything sees it.
//!
//! Configured by a TOML file ([`Config`]); see `gateway.example.toml`.

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::apps::ServerApp;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::protocols::http::v2::server::{self as h2_server, H2Options};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;
use spockfs_core::conn::{ConnLimiter, ConnTimeouts, GuardedIo, RequestActive};
use spockfs_core::mount::{normalize_host, vhost_matches};
use spockfs_core::path::strip_mount_prefix;
use spockfs_core::{Engine, Limiter, Limits, LocalFs, MemFs, Method, Mount, Policy};
use spockfs_pingora::SpockFsModule;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening sockets.
    #[serde(default = "default_listeners")]
    pub listen: Vec<Listener>,
    /// Where non-SpockFS requests go (`host:port`). None: 502.
    #[serde(default = "default_upstream")]
    pub default_upstream: Option<String>,
    /// Request headers removed from every request as it arrives, before
    /// routing: neither local vhosts, nor pools, nor the default upstream
    /// see them. They name the user in setups where a proxy authenticates
    /// (nginx's `X-Remote-User`, believed by `axum-app --trust-proxy-user`),
    /// so a client must not be able to send its own. Default
    /// `["x-remote-user", "remote-user", "x-forwarded-user"]`; `[]` keeps
    /// them all (only when everything that reaches the gateway is a proxy
    /// that sets them itself).
    #[serde(default = "default_strip_request_headers")]
    pub strip_request_headers: Vec<String>,
    /// Virtual hosts.
    #[serde(default = "default_vhosts", rename = "vhost")]
    pub vhosts: Vec<Vhost>,
    /// Process settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Engine limits for local vhosts.
    #[serde(default)]
    pub limits: LimitSettings,
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `ip:port`.
    pub addr: String,
    /// PEM certificate chain: makes this an HTTPS listener (rustls), with
    /// HTTP/2 by ALPN.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Accept cleartext HTTP/2 (prior knowledge) on a plain listener.
    #[serde(default)]
    pub h2c: bool,
}

/// A virtual host: served locally (`root` or `memory`) or by a pool of
/// upstream SpockFS nodes (`upstreams`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vhost {
    /// `name`, `name:port` or `*` (every host).
    pub host: String,
    /// Requests under this path are SpockFS (`/` for the whole host). For
    /// local vhosts the prefix is stripped; pools receive the path as is.
    #[serde(default = "slash")]
    pub prefix: String,
    /// Local directory served in-process.
    pub root: Option<PathBuf>,
    /// Serve an in-memory filesystem instead of a directory.
    #[serde(default)]
    pub memory: bool,
    /// Refuse every change (403, EROFS). For a pool, the gateway refuses
    /// it and forwards nothing: every request that may change something
    /// (`spockfs_core::engine::is_mutating_request`, and methods that are
    /// not SpockFS).
    #[serde(default)]
    pub read_only: bool,
    /// Local vhosts: apply modes exactly as clients send them, setuid and
    /// setgid on files included. Default: the root behaves like a filesystem
    /// mounted `nosuid` (set-ID bits never set on non-directories, cleared
    /// by writes; the setgid bit of directories is kept).
    #[serde(default)]
    pub allow_setid: bool,
    /// Local vhosts: let clients set and remove extended attributes of every
    /// namespace (`security.*`, `trusted.*`, ...). Default: only `user.*`
    /// and POSIX ACLs; other names answer 403 EPERM.
    #[serde(default)]
    pub allow_any_xattr: bool,
    /// Local vhosts: let clients make character and block device nodes
    /// (MKNOD) where the filesystem holding them is mounted `nodev` on this
    /// host, so that they are inert; elsewhere still 403 EPERM. Default:
    /// device nodes are never made.
    #[serde(default)]
    pub allow_devices: bool,
    /// Local vhosts: every request acts as this user (a name from the user
    /// database or a numeric uid; gid and groups from the database). Needs
    /// CAP_SETUID/CAP_SETGID. Default: the gateway's own identity.
    pub as_user: Option<String>,
    /// Local vhosts: act as the uid/gid that own the root directory (each
    /// site's, with `sites_dir`), with that user's groups. A root owned by
    /// uid 0 is refused unless `as_owner_allow_root`.
    #[serde(default)]
    pub as_owner: bool,
    /// With `as_owner`: serve roots owned by uid 0 too, as root.
    #[serde(default)]
    pub as_owner_allow_root: bool,
    /// Local vhosts: believe the identity clients declare in
    /// `X-Spock-caller` (spockfs-mount sends it), root squashed to
    /// `anon_user` unless `no_root_squash`; only for trusted clients.
    #[serde(default)]
    pub trust_client_ids: bool,
    /// The anonymous identity of `trust_client_ids`. Default `nobody`.
    pub anon_user: Option<String>,
    /// With `trust_client_ids`: a client's uid 0 is root here too.
    #[serde(default)]
    pub no_root_squash: bool,
    /// Serve `Host: example.com` from `DIR/example.com` (host lowercased,
    /// port dropped, one path component, not a symlink), looked up per
    /// request; a host without a directory there is 404. Instead of `root`.
    pub sites_dir: Option<PathBuf>,
    /// Most `sites_dir` sites kept open at once. Default 4096.
    pub sites_cache: Option<usize>,
    /// Upstream SpockFS nodes (`host:port`), load-balanced round robin.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Health-check period for `upstreams`, milliseconds.
    #[serde(default = "default_hc_ms")]
    pub health_check_ms: u64,
    /// Path the health check sends `OPTIONS` to on each node.
    #[serde(default = "default_hc_path")]
    pub health_check_path: String,
}

impl Vhost {
    /// The policy of a local vhost: read-only, set-ID bits, xattr
    /// namespaces, device nodes, `as_user`, `trust_client_ids` (`as_owner`
    /// is per root).
    fn policy(&self) -> Result<Policy, ConfigError> {
        let user = |key: &str, name: &str| {
            spockfs_core::Identity::of_user(name)
                .map_err(|e| ConfigError::Vhost(self.host.clone(), format!("{key} {name:?}: {e}")))
        };
        if self.as_user.is_some() && self.as_owner {
            return Err(ConfigError::Vhost(
                self.host.clone(),
                "as_user and as_owner exclude each other".into(),
            ));
        }
        let act_as = self
            .as_user
            .as_deref()
            .map(|u| user("as_user", u))
            .transpose()?;
        let client_ids = if self.trust_client_ids {
            let anon = user("anon_user", self.anon_user.as_deref().unwrap_or("nobody"))?;
            Some(spockfs_core::ClientIds::new(anon).no_root_squash(self.no_root_squash))
        } else {
            None
        };
        Ok(Policy::default()
            .read_only(self.read_only)
            .allow_setid(self.allow_setid)
            .allow_any_xattr(self.allow_any_xattr)
            .allow_devices(self.allow_devices)
            .act_as(act_as)
            .trust_client_ids(client_ids))
    }
}

/// Process settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// After SIGTERM: seconds to keep accepting while a load balancer
    /// notices (Pingora's default is 300).
    #[serde(default = "one")]
    pub grace_period_seconds: u64,
    /// Then: seconds to let requests in flight finish.
    #[serde(default = "two")]
    pub graceful_shutdown_timeout_seconds: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: default_threads(),
            grace_period_seconds: 1,
            graceful_shutdown_timeout_seconds: 2,
        }
    }
}

/// Engine limits (defaults as in `spockfs_core::Limits`) and connection
/// limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest xattr value or list, bytes.
    pub xattr_size: Option<usize>,
    /// Streaming chunk, bytes.
    pub chunk_size: Option<usize>,
    /// Most concurrent filesystem calls.
    pub blocking_threads: Option<usize>,
    /// Most SpockFS requests in progress at once, all local vhosts
    /// together (0: no limit). Default 1024.
    pub max_requests: Option<usize>,
    /// How long a request over `max_requests` waits for a slot before its
    /// 503, milliseconds. Default 500.
    pub max_requests_wait_ms: Option<u64>,
    /// Largest PUT body, bytes (413, EFBIG). Default: no limit.
    pub max_put_size: Option<u64>,
    /// Most entries one READDIR lists (413, E2BIG). Default: no limit.
    pub readdir_max_entries: Option<u64>,
    /// Largest request head (request line + headers), bytes; larger is
    /// 431 (Pingora itself refuses heads over 1 MiB with 400). Default
    /// 65536.
    pub max_header_bytes: Option<usize>,
    /// Longest time from the first byte of a request head to its end
    /// (HTTP/2: from a HEADERS frame to END_HEADERS), and longest TLS
    /// handshake, milliseconds (0: off). Default 10000.
    pub header_timeout_ms: Option<u64>,
    /// Longest time a connection may stay without a request in progress
    /// (after accept, between requests; for HTTP/2, pings and other frames
    /// do not count), milliseconds (0: off). Default 60000.
    pub idle_timeout_ms: Option<u64>,
    /// Longest stall of a request body, milliseconds (0: off): a SpockFS
    /// request is answered 408, a proxied one fails (Pingora's downstream
    /// read timeout). Default 30000.
    pub body_timeout_ms: Option<u64>,
    /// Longest time a response may make no progress, milliseconds (0:
    /// off): the client reads nothing, or keeps an HTTP/2 window at zero.
    /// A SpockFS response is aborted and its request slot and open file
    /// released (the engine's write timeout); every response, SpockFS or
    /// proxied, fails its next write (Pingora's downstream write timeout:
    /// an HTTP/1 connection is closed, an HTTP/2 stream reset). Default
    /// 60000.
    pub write_timeout_ms: Option<u64>,
    /// Most downstream connections open at once, all listeners together
    /// (0: no limit). At the cap a new connection closes the idlest one
    /// (no request in progress, idle longest), or is closed at once if
    /// none is idle; accepting never stalls. Default: from the open-file
    /// limit (`ulimit -n`): n - 64 reserved, minus min(max_requests, half
    /// the rest) kept for the files requests open (proxied requests use
    /// upstream connections from that share too).
    pub max_connections: Option<usize>,
    /// Most downstream connections from one client address (0: no limit,
    /// the default). Past it that address's idlest connection is closed,
    /// or its new one if none is idle; other clients are never closed for
    /// it.
    pub max_connections_per_ip: Option<usize>,
    /// Most concurrent streams (requests) per HTTP/2 connection. A SpockFS
    /// request holds at most one open file at a time (a whole-file PUT two:
    /// its temporary and its directory), so this bounds the files one
    /// connection holds open (`max_requests` bounds them all). Default 100.
    pub h2_max_concurrent_streams: Option<u32>,
    /// Period of HTTP/2 keep-alive pings, milliseconds (0: no pings); a
    /// peer that does not answer one within `h2_keepalive_timeout_ms` is
    /// disconnected. Default 30000.
    pub h2_keepalive_interval_ms: Option<u64>,
    /// How long to wait for the answer to a keep-alive ping, milliseconds.
    /// Default 20000.
    pub h2_keepalive_timeout_ms: Option<u64>,
}

/// `0` means off.
fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        addr: "127.0.0.1:8081".into(),
        tls_cert: None,
        tls_key: None,
        h2c: false,
    }]
}
fn default_upstream() -> Option<String> {
    Some("127.0.0.1:8080".into())
}
fn default_strip_request_headers() -> Vec<String> {
    ["x-remote-user", "remote-user", "x-forwarded-user"]
        .map(String::from)
        .into()
}
fn default_vhosts() -> Vec<Vhost> {
    vec![Vhost {
        host: "*".into(),
        prefix: "/fs".into(),
        root: Some(PathBuf::from("./data")),
        memory: false,
        read_only: false,
        allow_setid: false,
        allow_any_xattr: false,
        allow_devices: false,
        as_user: None,
        as_owner: false,
        as_owner_allow_root: false,
        trust_client_ids: false,
        anon_user: None,
        no_root_squash: false,
        sites_dir: None,
        sites_cache: None,
        upstreams: vec![],
        health_check_ms: default_hc_ms(),
        health_check_path: default_hc_path(),
    }]
}
fn slash() -> String {
    "/".into()
}
fn default_hc_ms() -> u64 {
    1000
}
fn default_hc_path() -> String {
    "/".into()
}
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
fn one() -> u64 {
    1
}
fn two() -> u64 {
    2
}

impl Default for Config {
    /// No file: serve `./data` at `/fs` on `127.0.0.1:8081`, proxy the rest
    /// to `127.0.0.1:8080`.
    fn default() -> Self {
        Config {
            listen: default_listeners(),
            default_upstream: default_upstream(),
            strip_request_headers: default_strip_request_headers(),
            vhosts: default_vhosts(),
            server: ServerSettings::default(),
            limits: LimitSettings::default(),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable or invalid TOML.
    #[error("config: {0}")]
    Parse(String),
    /// A vhost is neither local nor a pool, or both.
    #[error("vhost {0:?}: {1}")]
    Vhost(String, String),
    /// A root could not be opened.
    #[error("vhost {0:?}: root {1}: {2}")]
    Root(String, PathBuf, std::io::Error),
    /// Listener or TLS problem.
    #[error("listener {0}: {1}")]
    Listener(String, String),
    /// An entry of `strip_request_headers` is not a header name.
    #[error("strip_request_headers: {0:?} is not a header name")]
    HeaderName(String),
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
        Config::from_toml(&text)
    }

    fn limits(&self) -> Limits {
        let mut l = Limits::default();
        if let Some(v) = self.limits.xattr_size {
            l.xattr_size = v;
        }
        if let Some(v) = self.limits.chunk_size {
            l.chunk_size = v.max(4096);
        }
        if let Some(v) = self.limits.blocking_threads {
            l.blocking_threads = v;
        }
        if let Some(v) = self.limits.max_requests {
            l.max_requests = v;
        }
        if let Some(v) = self.limits.max_requests_wait_ms {
            l.max_requests_wait = Duration::from_millis(v);
        }
        l.max_put_size = self.limits.max_put_size;
        l.readdir_max_entries = self.limits.readdir_max_entries;
        if let Some(v) = self.limits.body_timeout_ms {
            // "Off": a day.
            l.body_timeout = ms(v).unwrap_or(Duration::from_secs(86400));
        }
        l.write_timeout = self.write_timeout();
        l
    }

    /// The response write timeout (`None`: off).
    pub fn write_timeout(&self) -> Option<Duration> {
        ms(self.limits.write_timeout_ms.unwrap_or(60_000))
    }

    /// The downstream connection caps.
    pub fn conn_limiter(&self) -> spockfs_core::conn::ConnLimiter {
        let max = match self.limits.max_connections {
            Some(n) => Some(n),
            None => spockfs_core::conn::default_max_connections(self.limits().max_requests),
        };
        spockfs_core::conn::ConnLimiter::new(max, self.limits.max_connections_per_ip)
    }

    /// Largest request head, bytes.
    pub fn max_header_bytes(&self) -> usize {
        self.limits.max_header_bytes.unwrap_or(64 * 1024)
    }

    /// Idle, header and write timeouts of downstream connections (HTTP/1
    /// and HTTP/2; the header timeout bounds TLS handshakes too).
    pub fn conn_timeouts(&self) -> ConnTimeouts {
        ConnTimeouts {
            idle: ms(self.limits.idle_timeout_ms.unwrap_or(60_000)),
            header: ms(self.limits.header_timeout_ms.unwrap_or(10_000)),
            write: self.write_timeout(),
        }
    }
}

/// A pool vhost: which requests, and the balancer.
struct Pool {
    host: Option<String>,
    prefix: String,
    lb: Arc<LoadBalancer<RoundRobin>>,
    size: usize,
    read_only: bool,
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
    module: SpockFsModule,
    pools: Vec<Pool>,
    default_upstream: Option<String>,
    max_header_bytes: usize,
    body_timeout: Option<Duration>,
    strip_request_headers: Vec<http::HeaderName>,
    write_timeout: Option<Duration>,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    pool: Option<usize>,
    tried: Vec<SocketAddr>,
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

/// A downstream connection (HTTP/1 or HTTP/2, cleartext or TLS) under
/// [`GuardedIo`]'s idle, header and write timeouts and its place under the
/// connection caps (Pingora's own timeouts are per read, so a client
/// trickling a header one byte at a time would never hit them, and it has
/// none for HTTP/2 connections).
#[derive(Debug)]
pub struct GuardedStream(GuardedIo<Stream>);

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
    inner: Arc<pingora::proxy::HttpProxy<Gateway>>,
    timeouts: ConnTimeouts,
    limiter: ConnLimiter,
    endpoints: Vec<Endpoint>,
    h2: H2Options,
    /// Ping period and answer timeout.
    keepalive: Option<(Duration, Duration)>,
}

/// A listening socket as [`GuardedApp`] sees it.
struct Endpoint {
    addrs: Vec<std::net::SocketAddr>,
    tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    h2c: bool,
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

fn host_of(session: &Session) -> Option<String> {
    spockfs_pingora::request_host(session.req_header()).map(|h| normalize_host(h).into_owned())
}

fn host_matches(want: &Option<String>, host: Option<&str>) -> bool {
    match (want, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(w), Some(h)) => vhost_matches(w, h),
    }
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
        if self.pools.is_empty() {
            return None;
        }
        let host = host_of(session);
        let path = session.req_header().uri.path();
        self.pools.iter().position(|p| {
            host_matches(&p.host, host.as_deref()) && strip_mount_prefix(&p.prefix, path).is_some()
        })
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
            return Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())));
        }
        match &self.default_upstream {
            Some(addr) => Ok(Box::new(HttpPeer::new(addr.as_str(), false, String::new()))),
            None => Err(Error::explain(
                HTTPStatus(502),
                "no default upstream configured",
            )),
        }
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
        // The request may have reached the node: retry only what changes
        // nothing (SpockFS reads), and only while untried nodes remain.
        let method = Method::from_http(&session.req_header().method);
        let safe = method.is_some_and(|m| m.is_idempotent_read())
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

/// What [`build`] produced: the Pingora server, ready to run.
pub struct Built {
    /// The server.
    pub server: Server,
    /// The URLs it serves SpockFS at (for the start-up banner).
    pub urls: Vec<String>,
}

/// Builds the Pingora server for `config`: proxy service with listeners,
/// and one health-check service per pool.
pub fn build(config: &Config) -> Result<Built, ConfigError> {
    build_with(config, |m| m)
}

/// Like [`build`], with extra SpockFS routes added by `routes` (e.g. an
/// engine whose backend the caller keeps a handle on).
pub fn build_with(
    config: &Config,
    routes: impl FnOnce(spockfs_pingora::ModuleBuilder) -> spockfs_pingora::ModuleBuilder,
) -> Result<Built, ConfigError> {
    let conf = ServerConf {
        threads: config.server.threads.max(1),
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let limits = config.limits();
    // One concurrency budget for every local vhost.
    let limiter = Limiter::from_limits(&limits);
    let mut module = SpockFsModule::builder();
    let mut pools = Vec::new();
    let mut urls = Vec::new();
    let scheme = |l: &Listener| {
        if l.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    };
    for v in &config.vhosts {
        let host = (v.host != "*").then(|| v.host.to_ascii_lowercase());
        let prefix = v.prefix.trim_end_matches('/').to_owned();
        let local = v.root.is_some() || v.memory || v.sites_dir.is_some();
        if [v.root.is_some(), v.memory, v.sites_dir.is_some()]
            .iter()
            .filter(|&&x| x)
            .count()
            > 1
        {
            return Err(ConfigError::Vhost(
                v.host.clone(),
                "`root`, `memory` and `sites_dir` exclude each other".into(),
            ));
        }
        match (local, v.upstreams.is_empty()) {
            (true, true) => {
                let policy = v.policy()?;
                let builder = Engine::builder().limits(limits).limiter(limiter.clone());
                let builder = if let Some(dir) = &v.sites_dir {
                    let sites = spockfs_core::sites::SitesDir::open(dir)
                        .map_err(|e| ConfigError::Root(v.host.clone(), dir.clone(), e))?
                        .policy(policy)
                        .as_owner(v.as_owner)
                        .allow_root_owner(v.as_owner_allow_root)
                        .cache_size(
                            v.sites_cache
                                .unwrap_or(spockfs_core::sites::DEFAULT_SITES_CACHE),
                        );
                    builder.sites(sites)
                } else if v.memory {
                    builder.default_mount(Mount::new(MemFs::new()).with_policy(policy))
                } else {
                    let root = v.root.clone().unwrap_or_default();
                    std::fs::create_dir_all(&root)
                        .map_err(|e| ConfigError::Root(v.host.clone(), root.clone(), e))?;
                    let fs = LocalFs::open(&root)
                        .map_err(|e| ConfigError::Root(v.host.clone(), root.clone(), e))?;
                    let policy = if v.as_owner && policy.identity().is_none() {
                        let id = spockfs_core::Identity::of_owner(&root)
                            .map_err(|e| ConfigError::Root(v.host.clone(), root.clone(), e))?;
                        if id.is_root() && !v.as_owner_allow_root {
                            return Err(ConfigError::Vhost(
                                v.host.clone(),
                                format!(
                                    "root {} is owned by uid 0; as_owner refuses to act as \
                                     root (as_owner_allow_root)",
                                    root.display()
                                ),
                            ));
                        }
                        policy.act_as(Some(id))
                    } else {
                        policy
                    };
                    builder.default_mount(Mount::new(fs).with_policy(policy))
                };
                let engine = builder.build();
                if engine.mounts().switches_identity() {
                    spockfs_core::identity::check_can_switch()
                        .map_err(|e| ConfigError::Vhost(v.host.clone(), e.to_string()))?;
                }
                module = module.route(host.as_deref(), &prefix, engine);
                for l in &config.listen {
                    let h = host.clone().unwrap_or_else(|| l.addr.clone());
                    urls.push(format!("{}://{h}{prefix}", scheme(l)));
                }
            }
            (false, false) => {
                if v.allow_setid
                    || v.allow_any_xattr
                    || v.allow_devices
                    || v.as_user.is_some()
                    || v.as_owner
                    || v.trust_client_ids
                {
                    // The nodes apply their own policy; never ignore a key.
                    return Err(ConfigError::Vhost(
                        v.host.clone(),
                        "allow_setid, allow_any_xattr, allow_devices, as_user, as_owner and \
                         trust_client_ids apply to local roots; set them on the upstream nodes"
                            .into(),
                    ));
                }
                let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(
                    v.upstreams.iter().map(String::as_str),
                )
                .map_err(|e| ConfigError::Vhost(v.host.clone(), format!("upstreams: {e}")))?;
                let mut hc = HttpHealthCheck::new(host.as_deref().unwrap_or("localhost"), false);
                let mut req = RequestHeader::build("OPTIONS", v.health_check_path.as_bytes(), None)
                    .map_err(|e| {
                        ConfigError::Vhost(v.host.clone(), format!("health_check_path: {e}"))
                    })?;
                let _ = req.insert_header("Host", host.as_deref().unwrap_or("localhost"));
                hc.req = req;
                hc.peer_template.options.connection_timeout = Some(Duration::from_millis(500));
                hc.peer_template.options.read_timeout = Some(Duration::from_millis(500));
                lb.set_health_check(Box::new(hc));
                lb.health_check_frequency = Some(Duration::from_millis(v.health_check_ms.max(50)));
                let bg = background_service(&format!("health check {}", v.host), lb);
                pools.push(Pool {
                    host,
                    prefix,
                    lb: bg.task(),
                    size: v.upstreams.len(),
                    read_only: v.read_only,
                });
                server.add_service(bg);
            }
            (true, false) => {
                return Err(ConfigError::Vhost(
                    v.host.clone(),
                    "both a local root and upstreams".into(),
                ))
            }
            (false, true) => {
                return Err(ConfigError::Vhost(
                    v.host.clone(),
                    "needs `root`, `memory = true`, `sites_dir` or `upstreams`".into(),
                ))
            }
        }
    }
    let strip_request_headers = config
        .strip_request_headers
        .iter()
        .map(|h| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ConfigError::HeaderName(h.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gateway = Gateway {
        module: routes(module).build(),
        strip_request_headers,
        pools,
        default_upstream: config.default_upstream.clone(),
        max_header_bytes: config.max_header_bytes(),
        body_timeout: ms(config.limits.body_timeout_ms.unwrap_or(30_000)),
        write_timeout: config.write_timeout(),
    };
    // HTTP/2 (prior knowledge or ALPN) is recognised and served by
    // GuardedApp, not by Pingora's own detection.
    let options = pingora::apps::HttpServerOptions::default();
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    proxy.server_options = Some(options);
    let mut h2 = h2_server::default_h2_options();
    h2.max_header_list_size(config.max_header_bytes().min(u32::MAX as usize) as u32);
    h2.max_concurrent_streams(
        config
            .limits
            .h2_max_concurrent_streams
            .unwrap_or(100)
            .max(1),
    );
    proxy.h2_options = Some(h2.clone());
    let keepalive = ms(config.limits.h2_keepalive_interval_ms.unwrap_or(30_000)).map(|every| {
        let wait = config
            .limits
            .h2_keepalive_timeout_ms
            .unwrap_or(20_000)
            .max(1);
        (every, Duration::from_millis(wait))
    });
    let mut endpoints = Vec::new();
    for l in &config.listen {
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&l.addr)
            .map_err(|e| ConfigError::Listener(l.addr.clone(), e.to_string()))?
            .collect();
        let tls = match (&l.tls_cert, &l.tls_key) {
            (Some(c), Some(k)) => Some(Arc::new(
                tls_acceptor(c, k).map_err(|e| ConfigError::Listener(l.addr.clone(), e))?,
            )),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Listener(
                    l.addr.clone(),
                    "tls_cert and tls_key go together".into(),
                ))
            }
        };
        endpoints.push(Endpoint {
            addrs,
            tls,
            h2c: l.h2c,
        });
    }
    let app = GuardedApp {
        inner: Arc::new(proxy),
        timeouts: config.conn_timeouts(),
        limiter: config.conn_limiter(),
        endpoints,
        h2,
        keepalive,
    };
    let mut service = pingora::services::listening::Service::new("spockfs gateway".into(), app);
    // Pingora's default L4 write buffer is one MSS (1460 bytes), so a
    // response header and a small body (a 4 KiB read) leave in two
    // syscalls; 16 KiB per connection sends them together. Bodies larger
    // than the buffer still go straight to the socket.
    let l4 = pingora::protocols::l4::stream::L4BufferSettings {
        read: None,
        write: Some(16 * 1024),
    };
    // Every listener is plain TCP to Pingora: TLS is done by GuardedApp,
    // after the connection is admitted and under the header timeout
    // (Pingora's own handshake has a fixed 60 s limit).
    for l in &config.listen {
        service.add_listener(pingora::listeners::ListenerConfig::tcp(l.addr.clone()).l4_buffer(l4));
    }
    server.add_service(service);
    Ok(Built { server, urls })
}

/// Pingora's rustls acceptor for a certificate chain and key (PEM): TLS
/// 1.2 and 1.3, HTTP/2 preferred by ALPN, as Pingora's own
/// `TlsSettings::intermediate` + `enable_h2` builds it, but with a
/// configuration error instead of a panic.
fn tls_acceptor(
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

/// A shutdown trigger for [`run_in_background`].
struct Trigger(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for Trigger {
    async fn recv(&self) -> ShutdownSignal {
        if let Some(rx) = self.0.lock().await.take() {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running on its own threads; stops when dropped.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the gateway and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs the gateway in this process on background threads (for tests and
/// embedding); returns once the listeners accept connections.
pub fn run_in_background(config: &Config) -> Result<Running, ConfigError> {
    run_in_background_with(config, |m| m)
}

/// [`run_in_background`] with extra routes, as in [`build_with`].
pub fn run_in_background_with(
    config: &Config,
    routes: impl FnOnce(spockfs_pingora::ModuleBuilder) -> spockfs_pingora::ModuleBuilder,
) -> Result<Running, ConfigError> {
    let built = build_with(config, routes)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("pingora-gateway".into())
        .spawn(move || {
            built.server.run(RunArgs {
                shutdown_signal: Box::new(Trigger(tokio::sync::Mutex::new(Some(rx)))),
            })
        })
        .map_err(|e| ConfigError::Listener("*".into(), e.to_string()))?;
    for l in &config.listen {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&l.addr).is_err() {
            if thread.is_finished() {
                return Err(ConfigError::Listener(
                    l.addr.clone(),
                    "the gateway exited (port in use?)".into(),
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(ConfigError::Listener(
                    l.addr.clone(),
                    "did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Running {
        stop: Some(tx),
        thread: Some(thread),
    })
}
