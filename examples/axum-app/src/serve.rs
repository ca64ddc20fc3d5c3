//! The accept loop: connections admitted under the caps, TLS handshakes
//! under the header timeout, each connection guarded and served by hyper
//! (HTTP/1 and HTTP/2), and graceful shutdown.

use crate::args::nonzero;
use crate::{stall, App, StartError, StreamExecutor};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub(crate) async fn serve_app(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use spockfs_conn::GuardedIo;
    use tower::ServiceExt;

    let App {
        args,
        router,
        tls,
        metrics,
    } = app;
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
    // Temporary files of whole-file PUTs a crash left behind: now and hourly.
    let roots = std::iter::once(args.root_dir().to_path_buf())
        .chain(args.vhosts.iter().map(|(_, dir)| dir.clone()))
        .chain(args.vhosts_dir.clone())
        .collect();
    spockfs_core::LocalFs::sweep_in_background(roots, spockfs_core::backend::TEMP_STALE_AFTER);
    let limiter = args.conn_limiter();
    tracing::debug!(
        max_connections = ?limiter.max(),
        max_connections_per_ip = ?limiter.max_per_ip(),
        "connection caps"
    );
    // `--metrics`: /metrics on its own listener, for as long as we serve.
    let metrics_task = match metrics {
        Some((m, listener)) => {
            let l = limiter.clone();
            m.watch_connections(move || l.open());
            let listener =
                TcpListener::from_std(listener).map_err(|source| StartError::Metrics {
                    addr: args.metrics.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                    source,
                })?;
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let m = m.clone();
                    async move {
                        (
                            [(
                                http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            m.render(),
                        )
                    }
                }),
            );
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
        None => None,
    };
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
    if let Some(t) = metrics_task {
        t.abort();
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
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<Signal>| async move {
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
}
