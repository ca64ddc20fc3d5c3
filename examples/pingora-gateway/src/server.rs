//! Assembling the Pingora server from a [`Config`]: the local vhosts'
//! engines and the pools' health checks, the proxy service and its
//! listeners; and running it in the background.

use crate::config::{ms, Config, ConfigError, Listener};
use crate::listen::{check_can_listen, tls_acceptor, Endpoint, GuardedApp};
use crate::metrics::MetricsApp;
use crate::proxy::{Gateway, Pool};
use async_trait::async_trait;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::protocols::http::v2::server::{self as h2_server};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use spockfs_core::observe::PrometheusMetrics;
use spockfs_core::{Engine, Limiter, LocalFs, MemFs, Mount, Routes};
use spockfs_pingora::SpockFsModule;
use std::sync::Arc;
use std::time::Duration;

/// What [`build`] produced: the Pingora server, ready to run.
pub struct Built {
    /// The server.
    pub server: Server,
    /// The URLs it serves SpockFS at (for the start-up banner).
    pub urls: Vec<String>,
}

/// Builds the Pingora server for `config`: proxy service with listeners,
/// and one health-check service per pool. Fails if a listener's address
/// is taken (Pingora itself would retry for a long while), so nothing is
/// announced for a server that cannot serve.
pub fn build(config: &Config) -> Result<Built, ConfigError> {
    build_with(config, |m| m)
}

/// Like [`build`], with extra SpockFS routes added by `routes` (e.g. an
/// engine whose backend the caller keeps a handle on).
pub fn build_with(
    config: &Config,
    routes: impl FnOnce(Routes<Engine>) -> Routes<Engine>,
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
    let metrics = match &config.metrics.listen {
        Some(addr) => {
            let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .map_err(|e| ConfigError::Listener(addr.clone(), e.to_string()))?
                .collect();
            check_can_listen(addr, &addrs)?;
            Some(Arc::new(PrometheusMetrics::new(
                config.metrics.vhost_cap.unwrap_or(100),
            )))
        }
        None => None,
    };
    // One concurrency budget for every local vhost.
    let limiter = Limiter::from_limits(&limits);
    let mut module = Routes::new();
    let mut pools = Vec::new();
    let mut pool_routes = Routes::new();
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
        let prefix = spockfs_core::route::normalize_prefix(&v.prefix);
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
                let mut builder = Engine::builder().limits(limits).limiter(limiter.clone());
                if let Some(m) = &metrics {
                    builder = builder.observer(m.clone());
                }
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
                if let Some(m) = &metrics {
                    let e = engine.clone();
                    m.watch_pool(move || e.pool_stats());
                }
                if engine.mounts().switches_identity() {
                    spockfs_core::identity::check_can_switch()
                        .map_err(|e| ConfigError::Vhost(v.host.clone(), e.to_string()))?;
                }
                module.insert(host.as_deref(), &prefix, engine);
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
                pool_routes.insert(host.as_deref(), &prefix, pools.len());
                pools.push(Pool {
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
        module: SpockFsModule::new(routes(module)),
        strip_request_headers,
        pool_routes,
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
        check_can_listen(&l.addr, &addrs)?;
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
    let conn_limiter = config.conn_limiter();
    if let (Some(m), Some(addr)) = (&metrics, &config.metrics.listen) {
        let l = conn_limiter.clone();
        m.watch_connections(move || l.open());
        let mut service = pingora::services::listening::Service::new(
            "spockfs metrics".into(),
            MetricsApp(m.clone()),
        );
        service.add_tcp(addr);
        server.add_service(service);
    }
    let app = GuardedApp {
        inner: Arc::new(proxy),
        timeouts: config.conn_timeouts(),
        limiter: conn_limiter,
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
    routes: impl FnOnce(Routes<Engine>) -> Routes<Engine>,
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
