//! The example SpockFS server: axum + [`spockfs_tower::SpockFs`], with
//! virtual hosts, read-only mode, basic auth from an htpasswd file (bcrypt)
//! and HTTPS (rustls, HTTP/2 by ALPN).
//!
//! The binary is a thin `main` over [`Args`] and [`serve`], so tests run the
//! very same server in-process on an ephemeral port.

use axum::Router;
use clap::Parser;
use spockfs_tower::{Mount, SpockFs};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub mod auth;
pub mod tls;
pub mod users;

/// Command-line flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "axum-app",
    about = "Serve directories over SpockFS (HTTP filesystem)"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory served when no virtual host matches (created if missing).
    #[arg(long, default_value = "./data")]
    pub root: PathBuf,
    /// A virtual host and its root, `HOST=DIR` (repeatable). HOST may carry
    /// a port (`example.com:8080`).
    #[arg(long = "vhost", value_name = "HOST=DIR", value_parser = parse_vhost)]
    pub vhosts: Vec<(String, PathBuf)>,
    /// Refuse every change (403, X-Spock-errno: EROFS).
    #[arg(long)]
    pub read_only: bool,
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
    /// A root directory could not be created or opened.
    #[error("root {path}: {source}")]
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
}

/// Builds the SpockFS service from the flags, opening every root now so a
/// misconfiguration fails at start.
pub fn build_spockfs(args: &Args) -> Result<SpockFs, StartError> {
    let open = |dir: &PathBuf, create: bool| -> Result<Mount, StartError> {
        if create {
            std::fs::create_dir_all(dir).map_err(|e| StartError::Root {
                path: dir.clone(),
                source: e,
            })?;
        }
        let fs = spockfs_tower::LocalFs::open(dir).map_err(|e| StartError::Root {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Mount::new(fs).read_only(args.read_only))
    };
    let mut b = SpockFs::builder().default_mount(open(&args.root, true)?);
    for (host, dir) in &args.vhosts {
        b = b.vhost(host, open(dir, false)?);
    }
    Ok(b.build())
}

/// The axum router: SpockFS under `--prefix`, with tracing and (if
/// configured) basic auth in front of everything.
pub fn build_router(args: &Args) -> Result<Router, StartError> {
    let fs = build_spockfs(args)?;
    let prefix = args.prefix.trim_end_matches('/');
    let mut router = if prefix.is_empty() {
        Router::new().fallback_service(fs)
    } else if prefix.starts_with('/') {
        Router::new().nest_service(prefix, fs)
    } else {
        return Err(StartError::Prefix(args.prefix.clone()));
    };
    if let Some(dir) = &args.user_roots {
        if args.htpasswd.is_none() && args.trust_proxy_user.is_none() {
            return Err(StartError::UserRootsWithoutAuth);
        }
        std::fs::create_dir_all(dir).map_err(|e| StartError::Root {
            path: dir.clone(),
            source: e,
        })?;
        let roots = Arc::new(users::UserRoots::new(
            dir.clone(),
            args.read_only,
            args.trust_proxy_user,
            args.htpasswd.is_some(),
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
/// in flight finish (up to 10 s) and returns.
pub async fn serve(
    args: Args,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let router = build_router(&args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(StartError::Tls)?),
        _ => None,
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
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
        let _ = stream.set_nodelay(true);
        let svc =
            router
                .clone()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
        let svc = TowerToHyperService::new(svc);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let res = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(s), svc);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
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
