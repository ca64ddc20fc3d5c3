//! The command-line flags ([`Args`]) and what they derive: roots, engine
//! limits, connection timeouts and caps.

use crate::StartError;
use clap::Parser;
use spockfs_core::{PolicySettings, UserSetting};
use spockfs_tower::Policy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory served when `--root` is not given; the only root that is
/// created when missing.
pub const DEFAULT_ROOT: &str = "./data";

/// Command-line flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "axum-app",
    version,
    about = "Serve directories over SpockFS (HTTP filesystem)"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory served when no virtual host matches; it must exist.
    /// Default: `./data`, created if missing.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A virtual host and its root, `HOST=DIR` (repeatable). HOST may carry
    /// a port (`example.com:8080`).
    #[arg(long = "vhost", value_name = "HOST=DIR", value_parser = parse_vhost)]
    pub vhosts: Vec<(String, PathBuf)>,
    /// Refuse every change (403, X-Spock-errno: EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Apply modes exactly as clients send them, setuid and setgid on files
    /// included. By default every root behaves like a filesystem mounted
    /// `nosuid`: the setuid/setgid bits are never set on non-directories and
    /// writes clear them (the setgid bit of directories is kept).
    #[arg(long)]
    pub allow_setid: bool,
    /// Let clients set and remove extended attributes of every namespace
    /// (`security.*`, `trusted.*`, ...). By default only `user.*` and POSIX
    /// ACLs may be changed; other names answer 403 EPERM.
    #[arg(long)]
    pub allow_any_xattr: bool,
    /// Let clients make character and block device nodes (MKNOD) where the
    /// server's filesystem holding them is mounted `nodev`, so that they
    /// are inert; elsewhere still 403 EPERM. By default device nodes are
    /// never made.
    #[arg(long)]
    pub allow_devices: bool,

    /// Every request on the default root, the `--vhost` roots and the
    /// `--vhosts-dir` sites acts as USER (a name from the user database or
    /// a numeric uid; gid and supplementary groups from the user database):
    /// the kernel checks its permissions and new files belong to it. Needs
    /// CAP_SETUID/CAP_SETGID (run as root).
    #[arg(long = "as", value_name = "USER", conflicts_with = "as_owner")]
    pub as_user: Option<String>,
    /// A virtual host's identity, `HOST=USER` (repeatable; HOST as given to
    /// `--vhost`); wins over `--as` and `--as-owner` for that vhost.
    #[arg(long = "vhost-as", value_name = "HOST=USER", value_parser = parse_host_user)]
    pub vhost_as: Vec<(String, String)>,
    /// Each root (the default root, `--vhost` roots, `--vhosts-dir` sites,
    /// `--user-roots` homes) acts as the uid and gid that own its directory,
    /// with that user's supplementary groups (the suexec model). A root
    /// owned by uid 0 is refused unless `--as-owner-allow-root`.
    #[arg(long)]
    pub as_owner: bool,
    /// With `--as-owner`: serve roots owned by uid 0 too, as root.
    #[arg(long, requires = "as_owner")]
    pub as_owner_allow_root: bool,
    /// With `--user-roots`: each authenticated user acts as the Unix
    /// account of the same name (its uid, gid and groups), and their home
    /// is created owned by that account; a user with no account is 403.
    #[arg(long, requires = "user_roots")]
    pub users_as_unix: bool,
    /// Believe the identity clients declare in `X-Spock-caller` (the
    /// `identity` extension, which spockfs-mount speaks) on every root,
    /// like an NFS export with AUTH_SYS: root squashed to `--anon-user`
    /// unless `--no-root-squash`. Only for clients you trust to tell the
    /// truth about their users. Requests without the header act as
    /// `--anon-user`.
    #[arg(long)]
    pub trust_client_ids: bool,
    /// The anonymous identity of `--trust-client-ids` (root squash, and
    /// requests that declare no identity).
    #[arg(long, value_name = "USER", default_value = "nobody")]
    pub anon_user: String,
    /// With `--trust-client-ids`: a client's uid 0 is the server's root.
    #[arg(long, requires = "trust_client_ids")]
    pub no_root_squash: bool,
    /// Serve `Host: example.com` from `DIR/example.com` (host lowercased,
    /// port dropped; one path component, not a symlink), looked up per
    /// request so sites come and go without a restart. A host without a
    /// directory there is 404; `--root` is not served.
    #[arg(long, value_name = "DIR")]
    pub vhosts_dir: Option<PathBuf>,
    /// Most `--vhosts-dir` sites kept open at once.
    #[arg(long, value_name = "N", default_value_t = spockfs_core::sites::DEFAULT_SITES_CACHE)]
    pub sites_cache: usize,
    /// URL path the filesystem is served under.
    #[arg(long, default_value = "/fs")]
    pub prefix: String,
    /// Require HTTP basic auth against this htpasswd file (bcrypt entries,
    /// as made by `htpasswd -B`).
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Give each authenticated user `DIR/<user>` as their root (created,
    /// mode 0700, on first use). The user comes from `--htpasswd`, or from
    /// a trusted proxy's `X-Remote-User` (`--trust-proxy-user`).
    #[arg(long, value_name = "DIR")]
    pub user_roots: Option<PathBuf>,
    /// Trust the `X-Remote-User` header (set by nginx after its own basic
    /// auth) on connections whose peer address is ADDR, and only those.
    #[arg(long, value_name = "ADDR")]
    pub trust_proxy_user: Option<std::net::IpAddr>,
    /// TLS certificate chain (PEM); enables HTTPS with HTTP/2.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most SpockFS requests in progress at once (0: no limit); more wait
    /// up to --max-requests-wait, then get 503 + Retry-After (EAGAIN).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_requests: usize,
    /// How long a request over --max-requests waits for a slot, seconds.
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs)]
    pub max_requests_wait: Duration,
    /// Largest PUT body, bytes (413, EFBIG, nothing written). Default: no
    /// limit.
    #[arg(long, value_name = "BYTES")]
    pub max_put_size: Option<u64>,
    /// Most entries one READDIR lists (a larger directory is 413, E2BIG).
    /// Default: no limit (listings stream with flat memory).
    #[arg(long, value_name = "N")]
    pub readdir_max_entries: Option<u64>,
    /// Largest request head (request line + headers), bytes; larger is 431.
    /// At least 8192.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,
    /// Seconds a client may take to send a request head, from its first
    /// byte (slowloris; HTTP/2: from a HEADERS frame to END_HEADERS), and
    /// to complete a TLS handshake; then the connection is closed. 0: off.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub header_timeout: Duration,
    /// Seconds a connection may stay without a request in progress (after
    /// accept, between requests; for HTTP/2, pings and other frames do not
    /// count); then it is closed. 0: off.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub idle_timeout: Duration,
    /// Seconds a request body may stall (no data at all) before the request
    /// is answered 408 and the connection closed. 0: off.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub body_timeout: Duration,
    /// Seconds a response may make no progress (the client reads nothing,
    /// or keeps an HTTP/2 window at zero) before it is aborted: its request
    /// slot and open file are released, and an HTTP/1 connection whose
    /// write stays blocked that long is closed. 0: off.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub write_timeout: Duration,
    /// Most connections open at once. At the cap a new connection closes
    /// the idlest one (no request in progress, idle longest), or is closed
    /// at once if none is idle; accept never stalls. Default: from the
    /// open-file limit (`ulimit -n`): n - 64 reserved, minus
    /// min(--max-requests, half the rest) kept for the files requests
    /// open. 0: no limit.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one client address; past it
    /// that address's idlest connection is closed, or its new one if none
    /// is idle (other clients are never closed for it). 0: no limit (the
    /// default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Most concurrent streams (requests) per HTTP/2 connection. A request
    /// holds at most one open file at a time (a whole-file PUT two: its
    /// temporary and its directory), so this bounds the files one
    /// connection holds open (--max-requests bounds them all).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,
    /// Seconds between HTTP/2 keep-alive pings; a peer that does not
    /// answer one within --h2-keepalive-timeout is disconnected. 0: no
    /// pings.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub h2_keepalive_interval: Duration,
    /// Seconds to wait for the answer to an HTTP/2 keep-alive ping.
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = parse_secs)]
    pub h2_keepalive_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests by method,
    /// status and vhost, errors by errno, latency per method, bytes,
    /// open connections, blocking-pool load, limit rejections). Off by
    /// default; keep ADDR private (loopback or an internal network).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Most virtual hosts labelled by name in the metrics; the rest count
    /// as `other`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub metrics_vhosts: usize,
}

/// Seconds, possibly fractional (`0.5`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected seconds (e.g. 10 or 0.5), got {s:?}")),
    }
}

/// `0` means off.
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Args {
    /// The directory served when no virtual host matches: `--root`, or
    /// [`DEFAULT_ROOT`].
    pub fn root_dir(&self) -> &Path {
        self.root
            .as_deref()
            .unwrap_or_else(|| Path::new(DEFAULT_ROOT))
    }

    /// The policy these flags set for every root (read-only, set-ID bits,
    /// xattr namespaces, device nodes, `--as`, `--trust-client-ids`); per-root identities
    /// (`--vhost-as`, `--as-owner`) are added by [`build_spockfs`](crate::build_spockfs).
    pub fn policy(&self) -> Result<Policy, StartError> {
        let settings = PolicySettings {
            read_only: self.read_only,
            allow_setid: self.allow_setid,
            allow_any_xattr: self.allow_any_xattr,
            allow_devices: self.allow_devices,
            as_user: self.as_user.clone(),
            trust_client_ids: self.trust_client_ids,
            anon_user: Some(self.anon_user.clone()),
            no_root_squash: self.no_root_squash,
        };
        settings.policy().map_err(|e| StartError::User {
            flag: match e.setting {
                UserSetting::AsUser => "--as",
                UserSetting::AnonUser => "--anon-user",
            },
            user: e.user,
            source: e.source,
        })
    }

    /// The identity a root's directory gives it under `--as-owner`.
    pub fn owner_identity(
        &self,
        dir: &std::path::Path,
    ) -> Result<spockfs_core::Identity, StartError> {
        let id = spockfs_core::Identity::of_owner(dir).map_err(|e| StartError::Root {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if id.is_root() && !self.as_owner_allow_root {
            return Err(StartError::RootOwned(dir.to_path_buf()));
        }
        Ok(id)
    }

    /// The engine limits these flags set.
    pub fn limits(&self) -> spockfs_tower::Limits {
        spockfs_tower::Limits {
            max_requests: self.max_requests,
            max_requests_wait: self.max_requests_wait,
            max_put_size: self.max_put_size,
            readdir_max_entries: self.readdir_max_entries,
            // "Off": a day.
            body_timeout: nonzero(self.body_timeout).unwrap_or(Duration::from_secs(86400)),
            write_timeout: nonzero(self.write_timeout),
            ..spockfs_tower::Limits::default()
        }
    }

    /// The connection timeouts these flags set.
    pub fn conn_timeouts(&self) -> spockfs_conn::ConnTimeouts {
        spockfs_conn::ConnTimeouts {
            idle: nonzero(self.idle_timeout),
            header: nonzero(self.header_timeout),
            write: nonzero(self.write_timeout),
        }
    }

    /// The connection caps these flags set.
    pub fn conn_limiter(&self) -> spockfs_conn::ConnLimiter {
        let max = match self.max_connections {
            Some(n) => Some(n),
            None => spockfs_conn::default_max_connections(self.max_requests),
        };
        spockfs_conn::ConnLimiter::new(max, Some(self.max_connections_per_ip))
    }
}

fn parse_host_user(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((h, u)) if !h.is_empty() && !u.is_empty() => Ok((h.to_owned(), u.to_owned())),
        _ => Err(format!("expected HOST=USER, got {s:?}")),
    }
}

fn parse_vhost(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((h, d)) if !h.is_empty() && !d.is_empty() => Ok((h.to_owned(), PathBuf::from(d))),
        _ => Err(format!("expected HOST=DIR, got {s:?}")),
    }
}
