//! The Pingora gateway: the conformance suite unchanged through it (LocalFs
//! and MemFs), passthrough of everything else, vhosts, HTTP/2, 100-continue.

use pingora_gateway::{run_in_background, run_in_background_with, Config};
use spockfs_core::{Engine, MemFs, Mount};
use spockfs_tests::{suite, Client, LocalStore, MemStore, Target};
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn config(toml: &str) -> Config {
    Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_gateway_localfs_and_memfs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "127.0.0.1:1"
        [[vhost]]
        host = "*"
        prefix = "/fs"
        root = "{}"
        [server]
        threads = 2
        "#,
        root.display()
    ));
    let mem = MemFs::new();
    let mem2 = mem.clone();
    let _gw = run_in_background_with(&cfg, move |m| {
        m.prefix(
            "/mem",
            Engine::builder().default_mount(Mount::new(mem2)).build(),
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    for (prefix, store) in [
        (
            "/fs",
            Arc::new(LocalStore { root: root.clone() }) as Arc<dyn spockfs_tests::Store>,
        ),
        ("/mem", Arc::new(MemStore { fs: mem.clone() })),
    ] {
        let target = Target {
            client: Client::new(&format!("http://{addr}{prefix}")),
            store,
            addr,
            prefix: prefix.into(),
            _guards: vec![],
        };
        let failures = suite::run(&target, std::env::var("SPOCKFS_CHECK").ok().as_deref()).await;
        assert!(
            failures.is_empty(),
            "{} failures through the gateway:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
