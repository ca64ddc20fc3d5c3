//! Prometheus metrics on both servers: `--metrics ADDR` (axum-app) and
//! `[metrics] listen` (the gateway) serve `/metrics`, whose counters follow
//! the requests made over HTTP.

use spockfs_tests::procs::{Opts, ServerKind, ServerProcess};
use spockfs_tests::{free_port, Client};
use std::time::Duration;

/// `GET http://addr/metrics`, the body as text.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let c = Client::new(&format!("http://{addr}"));
    for _ in 0..50 {
        let r = c.req("GET", "/metrics", &[]).await;
        if r.status == 200 {
            let ct = r
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
            return String::from_utf8_lossy(&r.body).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no /metrics at {addr}");
}

/// The value of the sample `name{labels}` (labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_servers_count_requests_errors_latency_and_load() {
    for kind in ServerKind::ALL {
        let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = work.path().join("root");
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
        let maddr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let opts = match kind {
            ServerKind::Axum => Opts {
                axum_args: vec!["--metrics".into(), maddr.to_string()],
                ..Opts::default()
            },
            ServerKind::Gateway => Opts {
                gateway_extra: format!("[metrics]\nlisten = \"{maddr}\"\n"),
                ..Opts::default()
            },
        };
        let srv = ServerProcess::start(kind, work.path(), &root, &opts);
        let before = scrape(maddr).await;
        let c = Client::new(&srv.base()).with_host("files.test");
        assert_eq!(c.send("PUT", "/f", &[], &b"hello"[..]).await.status, 201);
        for _ in 0..3 {
            assert_eq!(c.req("GET", "/f", &[]).await.status, 200);
        }
        assert_eq!(c.req("GETATTR", "/missing", &[]).await.status, 404);
        assert_eq!(c.req("RMDIR", "/no-such-dir", &[]).await.status, 404);
        assert_eq!(c.req("FROBNICATE", "/f", &[]).await.status, 405);
        let text = scrape(maddr).await;
        let n = |series: &str| {
            sample(&text, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0)
        };
        let req = |m: &str, st: u16| {
            n(&format!(
                "spockfs_requests_total{{method=\"{m}\",status=\"{st}\",vhost=\"files.test\"}}"
            ))
        };
        assert_eq!(req("PUT", 201), 1.0, "{kind:?}:\n{text}");
        assert_eq!(req("GET", 200), 3.0, "{kind:?}:\n{text}");
        assert_eq!(req("GETATTR", 404), 1.0, "{kind:?}:\n{text}");
        assert_eq!(
            req("other", 405),
            1.0,
            "{kind:?}: an unknown method is `other`:\n{text}"
        );
        assert!(
            n("spockfs_errors_total{errno=\"ENOENT\"}") >= 1.0,
            "{kind:?}:\n{text}"
        );
        assert!(
            n("spockfs_errors_total{errno=\"ENOSYS\"}") >= 1.0,
            "{kind:?}:\n{text}"
        );
        assert_eq!(
            n("spockfs_request_duration_seconds_count{method=\"GET\"}"),
            3.0,
            "{kind:?}:\n{text}"
        );
        assert_eq!(n("spockfs_request_bytes_total"), 5.0, "{kind:?}:\n{text}");
        assert!(
            n("spockfs_response_bytes_total") >= 15.0,
            "{kind:?}:\n{text}"
        );
        assert!(
            sample(&text, "spockfs_pool_threads").is_some_and(|v| v >= 1.0),
            "{kind:?}: the pool ran the calls:\n{text}"
        );
        assert!(sample(&text, "spockfs_pool_queued").is_some(), "{kind:?}");
        assert!(
            sample(&text, "spockfs_open_connections").is_some_and(|v| v >= 1.0),
            "{kind:?}: the client's keep-alive connection is open:\n{text}"
        );
        println!("{kind:?}: /metrics follows the requests");
    }
}

/// Past the cap, more hosts count as `other`: clients cannot grow the
/// label set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_labels_are_capped() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let maddr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let opts = Opts {
        axum_args: vec![
            "--metrics".into(),
            maddr.to_string(),
            "--metrics-vhosts".into(),
            "2".into(),
        ],
        ..Opts::default()
    };
    let srv = ServerProcess::start(ServerKind::Axum, work.path(), &root, &opts);
    for i in 0..20 {
        let c = Client::new(&srv.base()).with_host(&format!("h{i}.test"));
        assert_eq!(c.req("GETATTR", "/", &[]).await.status, 200);
    }
    let text = scrape(maddr).await;
    let vhosts: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("spockfs_requests_total{"))
        .filter_map(|l| l.split("vhost=\"").nth(1)?.split('"').next())
        .collect();
    assert!(vhosts.len() <= 3, "at most 2 names + other: {vhosts:?}");
    assert_eq!(
        sample(
            &text,
            "spockfs_requests_total{method=\"GETATTR\",status=\"200\",vhost=\"other\"}"
        ),
        Some(18.0),
        "{text}"
    );
}
