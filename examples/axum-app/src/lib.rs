//! The example SpockFS server: axum + [`spockfs_tower::SpockFs`], with
//! virtual hosts, read-only mode, basic auth from an htpasswd file (bcrypt)
//! and HTTPS (rustls, HTTP/2 by ALPN).
//!
//! The binary is a thin `main` over [`Args`] and [`serve`], so tests run the
//! very same server in-process on an ephemeral port.

use axum::Router;
use spockfs_core::observe::PrometheusMetrics;
use spockfs_tower::{Mount, SpockFs};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

mod args;
pub mod auth;
mod serve;
mod stall;
pub mod tls;
pub mod users;

pub use args::{Args, DEFAULT_ROOT};
pub use serve::shutdown_signal;
pub use stall::StreamExecutor;

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
    /// The `--metrics` address could not be bound.
    #[error("--metrics {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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
    build_spockfs_observed(args, None)
}

/// [`build_spockfs`], the engine reporting every request to `metrics`.
fn build_spockfs_observed(
    args: &Args,
    metrics: Option<&Arc<PrometheusMetrics>>,
) -> Result<SpockFs, StartError> {
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
    if let Some(m) = metrics {
        b = b.observer(m.clone());
    }
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
    if let Some(m) = metrics {
        let engine = fs.engine().clone();
        m.watch_pool(move || engine.pool_stats());
    }
    if fs.engine().mounts().switches_identity() || args.users_as_unix {
        spockfs_core::identity::check_can_switch().map_err(StartError::Identity)?;
    }
    Ok(fs)
}

/// The axum router: SpockFS under `--prefix`, with tracing and (if
/// configured) basic auth in front of everything.
pub fn build_router(args: &Args) -> Result<Router, StartError> {
    router_observed(args, None)
}

fn router_observed(
    args: &Args,
    metrics: Option<&Arc<PrometheusMetrics>>,
) -> Result<Router, StartError> {
    // Flag combinations first: a mistake there touches nothing on disk
    // (not even the default root).
    let prefix = args.prefix.trim_end_matches('/');
    if !prefix.is_empty() && !prefix.starts_with('/') {
        return Err(StartError::Prefix(args.prefix.clone()));
    }
    if args.user_roots.is_some() && args.htpasswd.is_none() && args.trust_proxy_user.is_none() {
        return Err(StartError::UserRootsWithoutAuth);
    }
    let fs = build_spockfs_observed(args, metrics)?;
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
    /// `--metrics`: the metrics and their listener, bound before serving.
    metrics: Option<(Arc<PrometheusMetrics>, std::net::TcpListener)>,
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
        let metrics = match args.metrics {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| StartError::Metrics { addr, source })?;
                let m = Arc::new(PrometheusMetrics::new(args.metrics_vhosts));
                Some((m, listener))
            }
            None => None,
        };
        let router = router_observed(&args, metrics.as_ref().map(|(m, _)| m))?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(StartError::Tls)?),
            _ => None,
        };
        Ok(App {
            args,
            router,
            tls,
            metrics,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish (up to 10 s) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        serve::serve_app(self, listener, shutdown).await
    }
}
