//! The example SpockFS server: axum + [`spockfs_tower::SpockFs`], with
//! virtual hosts, read-only mode, basic auth from an htpasswd file (bcrypt)
//! and HTTPS (rustls, HTTP/2 by ALPN).
//!
//! The binary is a thin `main` over [`Args`] and [`serve`], so tests run the
//! very same server in-process on an ephemeral port.

use axum::Router;
use clap::Parser;
use spockfs_tower::{Mount, Policy, SpockFs};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub mod auth;
mod stall;
pub mod tls;
pub mod users;

pub use stall::StreamExecutor;

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
}

/// Seconds, possibly fractional (`0.5`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected seconds (e.g. 10 or 0.5), got {s:?}")),
    }
}

/// `0` means off.
fn nonzero(d: Duration) -> Option<Duration> {
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
    /// (`--vhost-as`, `--as-owner`) are added by [`build_spockfs`].
    pub fn policy(&self) -> Result<Policy, StartError> {
        let user = |flag: &'static str, name: &str| {
            spockfs_core::Identity::of_user(name).map_err(|source| StartError::User {
                flag,
                user: name.to_owned(),
                source,
            })
        };
        let act_as = self
            .as_user
            .as_deref()
            .map(|u| user("--as", u))
            .transpose()?;
        let client_ids = if self.trust_client_ids {
            let anon = user("--anon-user", &self.anon_user)?;
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

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A directory named by a flag does not exist or is not a directory.
    #[error("{flag} {}: {problem}", path.display())]
    Dir {
        /// The flag (`--root`, `--vhost`).
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A root directory could not be created or opened.
    #[error("root {}: {source}", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The htpasswd file is unreadable or malformed.
    #[error("htpasswd: {0}")]
    Htpasswd(String),
    /// TLS material is unreadable or invalid.
    #[error("tls: {0}")]
    Tls(String),
    /// Bad `--prefix`.
    #[error("--prefix must start with '/': {0:?}")]
    Prefix(String),
    /// `--user-roots` without a way to know the user.
    #[error("--user-roots needs --htpasswd or --trust-proxy-user")]
    UserRootsWithoutAuth,
    /// A user named by `--as`, `--vhost-as` or `--anon-user` is unknown.
    #[error("{flag} {user}: {source}")]
    User {
        /// The flag.
        flag: &'static str,
        /// The user as given.
        user: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--vhost-as` names a host that no `--vhost` serves.
    #[error("--vhost-as {0}: no --vhost {0}=DIR")]
    VhostAsWithoutVhost(String),
    /// `--as-owner` on a root owned by root.
    #[error("root {0}: owned by uid 0; --as-owner refuses to act as root (--as-owner-allow-root)")]
    RootOwned(PathBuf),
    /// Acting as other users is configured but the process cannot switch.
    #[error("{0}")]
    Identity(std::io::Error),
}

/// Checks that `dir`, given to `flag`, is an existing directory.
fn existing_dir(flag: &'static str, dir: &Path) -> Result<(), StartError> {
    let problem = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if flag == "--root" {
                "no such directory (create it first: only the default ./data is created)"
            } else {
                "no such directory"
            }
        }
        Err(e) => {
            return Err(StartError::Root {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    Err(StartError::Dir {
        flag,
        path: dir.to_path_buf(),
        problem,
    })
}

/// Builds the SpockFS service from the flags, opening every root now so a
/// misconfiguration fails at start. An explicit `--root` and the
/// `--vhost` directories must exist; only the default root
/// ([`DEFAULT_ROOT`]) is created when missing.
pub fn build_spockfs(args: &Args) -> Result<SpockFs, StartError> {
    let policy = args.policy()?;
    let open = |dir: &PathBuf, as_user: Option<&str>| -> Result<Mount, StartError> {
        let fs = spockfs_tower::LocalFs::open(dir).map_err(|e| StartError::Root {
            path: dir.clone(),
            source: e,
        })?;
        let mut policy = policy.clone();
        if let Some(u) = as_user {
            let id = spockfs_core::Identity::of_user(u).map_err(|source| StartError::User {
                flag: "--vhost-as",
                user: u.to_owned(),
                source,
            })?;
            policy = policy.act_as(Some(id));
        } else if args.as_owner {
            policy = policy.act_as(Some(args.owner_identity(dir)?));
        }
        Ok(Mount::new(fs).with_policy(policy))
    };
    for (host, _) in &args.vhost_as {
        if !args
            .vhosts
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case(host))
        {
            return Err(StartError::VhostAsWithoutVhost(host.clone()));
        }
    }
    let mut b = SpockFs::builder().limits(args.limits());
    match &args.vhosts_dir {
        Some(dir) => {
            let sites = spockfs_core::sites::SitesDir::open(dir)
                .map_err(|e| StartError::Root {
                    path: dir.clone(),
                    source: e,
                })?
                .policy(policy.clone())
                .as_owner(args.as_owner)
                .allow_root_owner(args.as_owner_allow_root)
                .cache_size(args.sites_cache);
            b = b.sites(sites);
        }
        None => {
            let root = match &args.root {
                Some(dir) => {
                    existing_dir("--root", dir)?;
                    dir.clone()
                }
                None => {
                    let dir = PathBuf::from(DEFAULT_ROOT);
                    std::fs::create_dir_all(&dir).map_err(|e| StartError::Root {
                        path: dir.clone(),
                        source: e,
                    })?;
                    dir
                }
            };
            b = b.default_mount(open(&root, None)?);
        }
    }
    for (host, dir) in &args.vhosts {
        let as_user = args
            .vhost_as
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, u)| u.as_str());
        existing_dir("--vhost", dir)?;
        b = b.vhost(host, open(dir, as_user)?);
    }
    let fs = b.build();
    if fs.engine().mounts().switches_identity() || args.users_as_unix {
        spockfs_core::identity::check_can_switch().map_err(StartError::Identity)?;
    }
    Ok(fs)
}

/// The axum router: SpockFS under `--prefix`, with tracing and (if
/// configured) basic auth in front of everything.
pub fn build_router(args: &Args) -> Result<Router, StartError> {
    // Flag combinations first: a mistake there touches nothing on disk
    // (not even the default root).
    let prefix = args.prefix.trim_end_matches('/');
    if !prefix.is_empty() && !prefix.starts_with('/') {
        return Err(StartError::Prefix(args.prefix.clone()));
    }
    if args.user_roots.is_some() && args.htpasswd.is_none() && args.trust_proxy_user.is_none() {
        return Err(StartError::UserRootsWithoutAuth);
    }
    let fs = build_spockfs(args)?;
    let mut router = if prefix.is_empty() {
        Router::new().fallback_service(fs)
    } else {
        Router::new().nest_service(prefix, fs)
    };
    if let Some(dir) = &args.user_roots {
        std::fs::create_dir_all(dir).map_err(|e| StartError::Root {
            path: dir.clone(),
            source: e,
        })?;
        let roots = Arc::new(users::UserRoots::new(
            dir.clone(),
            args.policy()?,
            args.trust_proxy_user,
            args.htpasswd.is_some(),
            users::Accounts {
                users_as_unix: args.users_as_unix,
                as_owner: args.as_owner,
                allow_root_owner: args.as_owner_allow_root,
            },
        ));
        router = router.layer(axum::middleware::from_fn_with_state(
            roots,
            users::choose_root,
        ));
    }
    if let Some(path) = &args.htpasswd {
        let users = auth::Htpasswd::load(path).map_err(StartError::Htpasswd)?;
        router = router.layer(tower_http::auth::AsyncRequireAuthorizationLayer::new(
            auth::BasicAuth::new(Arc::new(users), "spockfs"),
        ));
    }
    Ok(router.layer(TraceLayer::new_for_http()))
}

/// The URL a client mounts, for the start-up banner.
pub fn mount_url(args: &Args, addr: SocketAddr) -> String {
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let prefix = args.prefix.trim_end_matches('/');
    format!("{scheme}://{addr}{prefix}")
}

/// Serves until `shutdown` completes, then stops accepting, lets requests
/// in flight finish (up to 10 s) and returns: [`App::new`], then
/// [`App::serve`].
pub async fn serve(
    args: Args,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    App::new(args)?.serve(listener, shutdown).await
}

/// The server with every setting checked: roots opened, users looked up,
/// the htpasswd file and TLS material loaded. The binary builds it before
/// it announces anything, so a bad setting is a one-line error and never
/// follows the banner.
pub struct App {
    args: Args,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("args", &self.args)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Checks every setting and prepares the service. Touches the disk
    /// (opens and may create roots, reads files): call it before serving,
    /// or from `tokio::task::spawn_blocking`, inside a Tokio runtime.
    pub fn new(args: Args) -> Result<App, StartError> {
        let router = build_router(&args)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(StartError::Tls)?),
            _ => None,
        };
        Ok(App { args, router, tls })
    }

    /// Serves on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish (up to 10 s) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        serve_app(self, listener, shutdown).await
    }
}

async fn serve_app(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use spockfs_conn::GuardedIo;
    use tower::ServiceExt;

    let App { args, router, tls } = app;
    let mut builder = Builder::new(StreamExecutor::new(nonzero(args.write_timeout)));
    let timeouts = args.conn_timeouts();
    // Idle and header timeouts are enforced precisely by GuardedIo (below);
    // hyper's own header timer starts when it begins waiting for a head
    // (idle time included), so it stays as a backstop at idle + header.
    let backstop = match (timeouts.idle, timeouts.header) {
        (Some(i), Some(h)) => Some(i + h),
        _ => None,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(backstop)
        .max_buf_size(args.max_header_bytes as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(args.max_header_bytes)
        .max_concurrent_streams(args.h2_max_streams)
        .keep_alive_interval(nonzero(args.h2_keepalive_interval))
        .keep_alive_timeout(args.h2_keepalive_timeout);
    let limiter = args.conn_limiter();
    tracing::debug!(
        max_connections = ?limiter.max(),
        max_connections_per_ip = ?limiter.max_per_ip(),
        "connection caps"
    );
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, connections closed to make room release their
        // descriptors when their tasks run: let them (briefly) before
        // accepting more, so a burst of connects cannot exhaust them.
        let next = async {
            let _ = tokio::time::timeout(Duration::from_secs(1), limiter.settled()).await;
            listener.accept().await
        };
        let (stream, peer) = tokio::select! {
            r = next => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At a cap the idlest connection makes room, or this one is
        // closed at once: the loop never waits for a place.
        let admission = match limiter.admit(Some(peer.ip())) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(%peer, "connection refused: {why}");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A plain connection is guarded (and may be closed to make room)
        // from now on; a TLS one once its handshake is done.
        let accepted = match &tls {
            Some(acceptor) => Accepted::Tls(acceptor.clone(), stream, admission),
            None => Accepted::Plain(GuardedIo::admitted(stream, timeouts, admission)),
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let router = router.clone();
        tokio::spawn(async move {
            // The service reports each request to the connection guard; the
            // guard's hold ends with the response body.
            let svc = |activity: spockfs_conn::ConnActivity| {
                TowerToHyperService::new(tower::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let active = activity.request();
                        let router = router.clone();
                        async move {
                            let resp = router.oneshot(req).await?;
                            // HTTP/2: this task is the stream's; its
                            // watchdog follows the body from here on.
                            let watch = stall::StreamWatch::current();
                            if let Some(w) = &watch {
                                w.start();
                            }
                            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                                axum::body::Body::new(ActiveBody {
                                    inner: b,
                                    watch,
                                    _active: active,
                                })
                            }))
                        }
                    },
                ))
            };
            let res = match accepted {
                Accepted::Tls(acceptor, stream, admission) => {
                    // The TLS handshake gets the header timeout too.
                    let hs = acceptor.accept(stream);
                    let hs = match timeouts.header {
                        Some(t) => tokio::time::timeout(t, hs).await.map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout")
                        }),
                        None => Ok(hs.await),
                    };
                    match hs {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            let io = GuardedIo::admitted(s, timeouts, admission);
                            let io = if h2 { io.http2() } else { io };
                            let svc = svc(io.activity());
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) | Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                }
                Accepted::Plain(io) => {
                    let svc = svc(io.activity());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; exiting anyway");
        }
    }
    Ok(())
}

/// A connection just accepted.
enum Accepted {
    Plain(spockfs_conn::GuardedIo<tokio::net::TcpStream>),
    Tls(
        tokio_rustls::TlsAcceptor,
        tokio::net::TcpStream,
        spockfs_conn::Admission,
    ),
}

/// A response body that keeps its request "in progress" for the
/// connection guard until it has been sent or dropped.
struct ActiveBody {
    inner: axum::body::Body,
    /// HTTP/2: the stream's progress, for its write-timeout watchdog.
    watch: Option<Arc<stall::StreamWatch>>,
    _active: spockfs_conn::RequestActive,
}

impl http_body::Body for ActiveBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        if let Some(w) = &self.watch {
            w.moved();
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives
/// right after start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
