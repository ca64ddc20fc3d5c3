//! The configuration file: TOML keys, their defaults, and the engine,
//! connection and timeout settings they make.

use pingora::prelude::*;
use serde::Deserialize;
use spockfs_conn::ConnTimeouts;
use spockfs_core::{Limits, Policy};
use std::path::PathBuf;
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
    /// Prometheus metrics (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: Prometheus metrics of the local vhosts' requests (by
/// method, status and vhost; errors by errno; latency per method; bytes;
/// blocking-pool load; limit rejections) and of the gateway's open
/// downstream connections, at `http://LISTEN/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `ip:port` of the metrics listener. Unset: no metrics. Keep it
    /// private (loopback or an internal network).
    pub listen: Option<String>,
    /// Most virtual hosts labelled by name; the rest count as `other`.
    /// Default 100.
    pub vhost_cap: Option<usize>,
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
    pub(crate) fn policy(&self) -> Result<Policy, ConfigError> {
        if self.as_user.is_some() && self.as_owner {
            return Err(ConfigError::Vhost(
                self.host.clone(),
                "as_user and as_owner exclude each other".into(),
            ));
        }
        let settings = spockfs_core::PolicySettings {
            read_only: self.read_only,
            allow_setid: self.allow_setid,
            allow_any_xattr: self.allow_any_xattr,
            allow_devices: self.allow_devices,
            as_user: self.as_user.clone(),
            trust_client_ids: self.trust_client_ids,
            anon_user: self.anon_user.clone(),
            no_root_squash: self.no_root_squash,
        };
        settings.policy().map_err(|e| {
            let key = match e.setting {
                spockfs_core::UserSetting::AsUser => "as_user",
                spockfs_core::UserSetting::AnonUser => "anon_user",
            };
            ConfigError::Vhost(
                self.host.clone(),
                format!("{key} {:?}: {}", e.user, e.source),
            )
        })
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
    /// limit (`ulimit -n`): n - 64 reserved - 128 for connections Pingora
    /// has accepted and not yet handed over, minus min(max_requests, half
    /// the rest) kept for the files requests open (proxied requests use
    /// upstream connections from that share too): 416 for 1024.
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
pub(crate) fn ms(v: u64) -> Option<Duration> {
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
            metrics: MetricsSettings::default(),
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

    pub(crate) fn limits(&self) -> Limits {
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
    pub fn conn_limiter(&self) -> spockfs_conn::ConnLimiter {
        let max = match self.limits.max_connections {
            Some(n) => Some(n),
            None => spockfs_conn::default_max_connections_unpaced(self.limits().max_requests),
        };
        spockfs_conn::ConnLimiter::new(max, self.limits.max_connections_per_ip)
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
