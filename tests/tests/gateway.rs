//! The Pingora gateway: the conformance suite unchanged through it (LocalFs
//! and MemFs), passthrough of everything else, vhosts, HTTP/2, 100-continue.

use pingora_gateway::{run_in_background, run_in_background_with, Config};
use spockfs_core::{Engine, MemFs, Mount};
use spockfs_tests::{suite, Client, LocalStore, MemStore, Target};
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::Duration;

use spockfs_tests::free_port;

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
            tls: None,
            auth: None,
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

/// A plain upstream that echoes what it received, to prove non-SpockFS
/// requests pass through untouched.
async fn echo_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let (p, b) = req.into_parts();
                        let body = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let mut out = format!("{} {}\n", p.method, p.uri);
                        let mut names: Vec<_> = p
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                            .collect();
                        names.sort();
                        out.push_str(&names.join("\n"));
                        out.push_str("\n\n");
                        let mut bytes = out.into_bytes();
                        bytes.extend_from_slice(&body);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(bytes)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_and_vhosts() {
    let (up, _echo) = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&b).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(a.join("who"), "a").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(b.join("who"), "b").unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "127.0.0.1:{up}"
        [[vhost]]
        host = "a.test"
        root = "{}"
        [[vhost]]
        host = "b.test"
        prefix = "/files"
        root = "{}"
        read_only = true
        "#,
        a.display(),
        b.display()
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    // Two vhosts, two roots; b is read-only and only under /files.
    let r = c.with_host("a.test").req("GET", "/who", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"a"[..]));
    let r = c
        .with_host("b.test:8080")
        .req("GET", "/files/who", &[])
        .await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"b"[..]));
    let r = c.with_host("b.test").req("DELETE", "/files/who", &[]).await;
    assert_eq!((r.status.as_u16(), r.errno()), (403, "EROFS"));
    // Everything else reaches the upstream untouched: method, path, query,
    // headers, body — including SpockFS-looking requests outside routes.
    for (host, method, path) in [
        ("b.test", "POST", "/app/submit?x=1&y=%2F"),
        ("other.test", "GETATTR", "/who"),
        ("b.test", "PROPFIND", "/filesystem"),
    ] {
        let r = c
            .with_host(host)
            .send(
                method,
                path,
                &[("X-Custom", b"v1"), ("X-Spock-mode", b"448")],
                "payload",
            )
            .await;
        assert_eq!(r.status, 200, "{method} {path}");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(text.starts_with(&format!("{method} {path}\n")), "{text}");
        assert!(
            text.contains("x-custom: v1") && text.contains("x-spock-mode: 448"),
            "{text}"
        );
        assert!(text.contains(&format!("host: {host}")), "{text}");
        assert!(text.ends_with("\n\npayload"), "{text}");
    }
    assert!(a.join("who").exists() && b.join("who").exists());
}

/// `Expect: 100-continue` is answered at once (no 1 s client stall) and the
/// connection stays usable; then a large body streams through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_and_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let cfg = config(&format!(
        "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n[[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n",
        dir.path().display()
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    s.write_all(
        b"PUT /fs/f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no 100 Continue within 2 s"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(t0.elapsed() < Duration::from_millis(500));
    s.write_all(b"hello")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let resps = read_n(&mut s, 1).await;
    assert!(resps[0].starts_with("HTTP/1.1 201"), "{resps:?}");
    // Same connection: an error with an unread Expect body, then a read.
    s.write_all(b"PUT /fs/missing/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Range: bytes=0-4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = read_n(&mut s, 1).await;
    assert!(
        r[0].starts_with("HTTP/1.1 100") || r[0].starts_with("HTTP/1.1 404"),
        "{r:?}"
    );
    if r[0].starts_with("HTTP/1.1 100") {
        s.write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = read_n(&mut s, 1).await;
        assert!(r[0].starts_with("HTTP/1.1 404"), "{r:?}");
    }
    s.write_all(b"GET /fs/f HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = read_n(&mut s, 1).await;
    assert!(
        r[0].starts_with("HTTP/1.1 200") && r[0].ends_with("hello"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("f")).unwrap_or_default(),
        b"hello"
    );

    // 64 MiB PUT + GET stream through, on a keep-alive client.
    let c = Client::new(&format!("http://127.0.0.1:{port}/fs"));
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 241) as u8).collect();
    let r = c.send("PUT", "/big", &[], big.clone()).await;
    assert_eq!(r.status, 201);
    let r = c.req("GET", "/big", &[]).await;
    assert!(r.body[..] == big[..], "64 MiB GET differs");
}

/// Reads `n` responses (Content-Length framed) as text.
async fn read_n(s: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while out.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let len = if head.starts_with("HTTP/1.1 100") {
                0
            } else {
                len
            };
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                out.push(format!("{head}\r\n\r\n{body}"));
                continue;
            }
        }
        let mut tmp = [0u8; 65536];
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .unwrap_or_else(|_| panic!("timed out; got {out:?}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(k > 0, "connection closed; got {out:?}");
        buf.extend_from_slice(&tmp[..k]);
    }
    out
}

/// A node that passes health checks (answers OPTIONS) but drops every other
/// request after reading it: the request *may* have been applied.
async fn flaky_node() -> (
    u16,
    Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d2 = dropped.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let dropped = d2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut tmp = [0u8; 4096];
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        if head.starts_with("OPTIONS ") {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .await;
                        } else {
                            dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return; // close without answering
                        }
                    }
                }
            });
        }
    });
    (port, dropped, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pool_failover_and_no_retry_of_writes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
    let (addr_a, node_a) = spockfs_tests::start_axum(spockfs_tests::axum_args(&shared)).await;
    let (addr_b, _node_b) = spockfs_tests::start_axum(spockfs_tests::axum_args(&shared)).await;
    let (flaky, dropped, _f) = flaky_node().await;
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "127.0.0.1:1"
        [[vhost]]
        host = "pool.test"
        prefix = "/fs"
        upstreams = ["{addr_a}", "{addr_b}"]
        health_check_ms = 100
        health_check_path = "/fs/"
        [[vhost]]
        host = "flaky.test"
        prefix = "/fs"
        upstreams = ["127.0.0.1:{flaky}", "{addr_b}"]
        health_check_ms = 100
        health_check_path = "/fs/"
        [[vhost]]
        host = "127.0.0.1"
        prefix = "/fs"
        upstreams = ["127.0.0.1:{flaky}", "{addr_b}"]
        health_check_ms = 100
        health_check_path = "/fs/"
        "#
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let c = Client::new(&format!("http://127.0.0.1:{port}/fs"));
    let pool = c.with_host("pool.test");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let r = pool
            .req("MKDIR", &format!("/d{i}"), &[("X-Spock-mode", "493")])
            .await;
        assert_eq!(r.status, 201, "both nodes up, request {i}");
    }
    // Kill node A: reads keep working at once (retried on B, whether A
    // refuses the connection or a pooled connection to it turns out dead).
    drop(node_a);
    for i in 0..40 {
        let r = pool.req("GETATTR", &format!("/d{}", i % 10), &[]).await;
        assert_eq!(r.status, 200, "GETATTR {i} after node A died");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Writes too, once the health check has taken A out. (In the first
    // instants a POST may go out on a pooled connection A has just closed:
    // whether A applied it is unknown, so it is answered 502, never
    // replayed — RFC 9112 §9.3.1; that case is tested below.)
    for i in 0..40 {
        let r = pool
            .req("POST", &format!("/f{i}"), &[("X-Spock-mode", "420")])
            .await;
        assert_eq!(r.status, 201, "POST {i} after node A was taken out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A node that reads requests and drops them: reads are retried on B,
    // writes are not (they may have been applied) and fail with 502.
    let flaky_c = c.with_host("flaky.test");
    let mut failed_writes = Vec::new();
    for i in 0..10 {
        let r = flaky_c.req("GETATTR", "/d0", &[]).await;
        assert_eq!(
            r.status, 200,
            "read {i} must be retried on the healthy node"
        );
        let name = format!("w{i}");
        let r = flaky_c
            .req("MKDIR", &format!("/{name}"), &[("X-Spock-mode", "493")])
            .await;
        match r.status.as_u16() {
            201 => assert!(shared.join(&name).is_dir()),
            502 => failed_writes.push(name),
            s => panic!("MKDIR {name}: {s}"),
        }
    }
    assert!(
        !failed_writes.is_empty(),
        "round robin never sent a write to the flaky node"
    );
    for name in &failed_writes {
        assert!(
            !shared.join(name).exists(),
            "{name} was retried on another node"
        );
    }
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst) >= failed_writes.len() as u64);

    // Writes of absolute values give the same result twice: replayed on
    // the healthy node, every one succeeds (round robin sends about half of
    // them to the flaky node first).
    let before = dropped.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..10u8 {
        let body = vec![b'a' + i; 1000];
        let r = flaky_c.send("PUT", "/file", &[], body.clone()).await;
        assert!(r.status.is_success(), "whole PUT {i}: {}", r.status);
        assert_eq!(std::fs::read(shared.join("file")).unwrap_or_default(), body);
        let r = flaky_c
            .send("PUT", "/file", &[("Content-Range", b"bytes=10-12")], "XYZ")
            .await;
        assert!(r.status.is_success(), "ranged PUT {i}: {}", r.status);
        let r = flaky_c
            .req("TRUNCATE", "/file", &[("X-Spock-size", "500")])
            .await;
        assert!(r.status.is_success(), "TRUNCATE {i}: {}", r.status);
        let mode = format!("{}", 0o600 + u32::from(i % 2) * 0o40);
        let r = flaky_c
            .req("CHMOD", "/file", &[("X-Spock-mode", &mode)])
            .await;
        assert!(r.status.is_success(), "CHMOD {i}: {}", r.status);
        let r = flaky_c
            .send(
                "SETXATTR",
                "/file",
                &[("X-Spock-target", b"user.n"), ("X-Spock-flag", b"0")],
                vec![i],
            )
            .await;
        assert!(r.status.is_success(), "SETXATTR {i}: {}", r.status);
        let r = flaky_c
            .req(
                "UTIMENS",
                "/file",
                &[("X-Spock-atime", "1000"), ("X-Spock-mtime", "2000")],
            )
            .await;
        assert!(r.status.is_success(), "UTIMENS {i}: {}", r.status);
        let meta = std::fs::metadata(shared.join("file")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.len(), 500);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600 + u32::from(i % 2) * 0o40
        );
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 2000);
        let content = std::fs::read(shared.join("file")).unwrap_or_default();
        assert_eq!(&content[10..13], b"XYZ");
    }
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst) >= before + 10,
        "the flaky node saw too few of the writes to test their replay"
    );

    // A write larger than Pingora's 64 KiB retry buffer is not replayed by
    // the gateway (502), but spockfs-client sends it again (it holds the
    // data) and the gateway picks the healthy node: no error reaches the
    // caller, as for spockfs-mount.
    let before = dropped.load(std::sync::atomic::Ordering::SeqCst);
    // (The flaky pool again, as the vhost 127.0.0.1.)
    let client = spockfs_client::Client::new(&format!("http://127.0.0.1:{port}/fs"))
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..8u8 {
        let data = bytes::Bytes::from(vec![b'A' + i; 200 * 1024]);
        client
            .put(b"/big", data.clone())
            .await
            .unwrap_or_else(|e| panic!("whole PUT {i}: {e:?}"));
        client
            .write(b"/big", 1000, data.slice(..100 * 1024))
            .await
            .unwrap_or_else(|e| panic!("ranged PUT {i}: {e:?}"));
        let on_disk = std::fs::read(shared.join("big")).unwrap_or_default();
        assert_eq!(on_disk.len(), 200 * 1024);
        assert!(on_disk.iter().all(|b| *b == b'A' + i));
    }
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst) > before,
        "no large write reached the flaky node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_h2c() {
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    let (tls_port, h2c_port) = (free_port(), free_port());
    let cfg = config(&format!(
        r#"
        listen = [
          {{ addr = "127.0.0.1:{tls_port}", tls_cert = "{}", tls_key = "{}" }},
          {{ addr = "127.0.0.1:{h2c_port}", h2c = true }},
        ]
        [[vhost]]
        host = "*"
        prefix = "/fs"
        root = "{}"
        "#,
        cert.display(),
        key.display(),
        root.display()
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ck.cert.der().clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("{e}"))
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls_cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name =
        rustls::pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_cfg))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2c = tokio::net::TcpStream::connect(("127.0.0.1", h2c_port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    for (label, io, scheme, port) in [
        (
            "h2 over TLS",
            Box::new(tls) as Box<dyn IoStream>,
            "https",
            tls_port,
        ),
        ("h2c", Box::new(h2c) as Box<dyn IoStream>, "http", h2c_port),
    ] {
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        tokio::spawn(conn);
        let base = format!("{scheme}://localhost:{port}/fs");
        let mk = |m: &str, p: &str, hs: &[(&str, &str)], body: &'static [u8]| {
            let mut b = http::Request::builder()
                .method(m)
                .uri(format!("{base}{p}"))
                .version(http::Version::HTTP_2);
            for (k, v) in hs {
                b = b.header(*k, *v);
            }
            b.body(Full::new(bytes::Bytes::from_static(body)))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let f = format!("/{}", label.replace(' ', "_"));
        let mut got = Vec::new();
        for req in [
            mk("PUT", &f, &[], b"over h2"),
            mk("GET", &f, &[("Range", "bytes=5-6")], b""),
            mk("GETATTR", &f, &[], b""),
            mk("MKDIR", "/caf%C3%A9", &[("X-Spock-mode", "493")], b""),
            mk("GETATTR", "/nope", &[], b""),
        ] {
            let r = send
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let (p, b) = r.into_parts();
            got.push((
                p.status.as_u16(),
                p.version,
                b.collect()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .to_bytes(),
            ));
            let _ = std::fs::remove_dir(root.join("café"));
        }
        let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
        assert_eq!(statuses, vec![201, 206, 200, 201, 404], "{label}");
        assert!(got.iter().all(|g| g.1 == http::Version::HTTP_2), "{label}");
        assert_eq!(&got[1].2[..], b"h2", "{label}");
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}

/// The same requests to the axum app and to the gateway, on the same
/// directory: identical status, headers (but `date`) and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_for_byte_parity_with_the_tower_service() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("d/f"), b"0123456789").unwrap_or_else(|e| panic!("{e}"));
    let (axum_addr, _axum) = spockfs_tests::start_axum(spockfs_tests::axum_args(&root)).await;
    let port = free_port();
    let cfg = config(&format!(
        "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n[[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n",
        root.display()
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let a = Client::new(&format!("http://{axum_addr}/fs"));
    let g = Client::new(&format!("http://127.0.0.1:{port}/fs"));
    type Req<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let reqs: &[Req] = &[
        ("OPTIONS", "/", &[]),
        ("GETATTR", "/d/f", &[]),
        ("READDIR", "/d", &[]),
        ("GET", "/d/f", &[]),
        ("GET", "/d/f", &[("Range", "bytes=2-4")]),
        ("GET", "/d/f", &[("Range", "bytes=20-30")]),
        ("HEAD", "/d/f", &[]),
        ("GET", "/d", &[]),
        ("GETATTR", "/nope", &[]),
        ("GETATTR", "/a/../b", &[]),
        ("MKDIR", "/d/x", &[]),
        ("FOO", "/d", &[]),
        ("STATFS", "/", &[]),
        ("LISTXATTR", "/d/f", &[("X-Spock-size", "0")]),
        (
            "GETXATTR",
            "/d/f",
            &[("X-Spock-target", "user.none"), ("X-Spock-size", "9")],
        ),
        ("READLINK", "/d/f", &[]),
    ];
    for (m, p, h) in reqs {
        let (ra, rg) = (a.req(m, p, h).await, g.req(m, p, h).await);
        let strip = |hm: &http::HeaderMap| {
            let mut v: Vec<(String, Vec<u8>)> = hm
                .iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "date" | "server" | "connection" | "keep-alive")
                })
                .map(|(k, v)| {
                    // Free space moves while other tests write to the disk.
                    let volatile = matches!(
                        k.as_str(),
                        "x-spock-bfree" | "x-spock-bavail" | "x-spock-ffree" | "x-spock-favail"
                    );
                    let v = if volatile {
                        vec![]
                    } else {
                        v.as_bytes().to_vec()
                    };
                    (k.as_str().to_owned(), v)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(ra.status, rg.status, "{m} {p}");
        assert_eq!(
            strip(&ra.headers),
            strip(&rg.headers),
            "{m} {p}: headers differ"
        );
        assert_eq!(ra.body, rg.body, "{m} {p}: bodies differ");
    }
}

/// Someone's existing gateway, with the module called in one line from its
/// own `request_filter`: SpockFS requests are answered by the module,
/// everything else still goes through the proxy's own hooks (here it tags
/// requests upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spockfs_wraps_an_existing_proxy() {
    use pingora::proxy::{ProxyHttp, Session};
    use pingora::upstreams::peer::HttpPeer;
    struct Existing {
        upstream: String,
        spockfs: spockfs_pingora::SpockFsModule,
    }
    #[async_trait::async_trait]
    impl ProxyHttp for Existing {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn request_filter(&self, s: &mut Session, _c: &mut ()) -> pingora::Result<bool> {
            self.spockfs.handle(s).await
        }
        async fn upstream_peer(
            &self,
            _s: &mut Session,
            _c: &mut (),
        ) -> pingora::Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(
                self.upstream.as_str(),
                false,
                String::new(),
            )))
        }
        async fn upstream_request_filter(
            &self,
            _s: &mut Session,
            req: &mut pingora::http::RequestHeader,
            _c: &mut (),
        ) -> pingora::Result<()> {
            req.insert_header("x-existing-gateway", "saw it")
        }
    }
    let (up, _echo) = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("f"), b"via module").unwrap_or_else(|e| panic!("{e}"));
    let spockfs = spockfs_pingora::SpockFsModule::new(
        spockfs_core::Routes::new().prefix("/fs", Engine::new(dir.path())),
    );
    let port = start_proxy(Existing {
        upstream: format!("127.0.0.1:{up}"),
        spockfs,
    })
    .await;
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    let r = c.req("GET", "/fs/f", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"via module"[..]));
    let r = c.req("READDIR", "/fs", &[]).await;
    assert_eq!(&r.body[..], b".\n..\nf\n");
    let r = c.send("POST", "/app", &[], "x").await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.starts_with("POST /app\n") && text.contains("x-existing-gateway: saw it"),
        "{text}"
    );
}

/// `read_only = true` on a pool vhost is enforced by the gateway itself:
/// every request that may change something is answered 403 `EROFS` (as a
/// local read-only vhost answers it) and never forwarded; reads still
/// reach the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_pool_refuses_changes_at_the_gateway() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(shared.join("f"), b"data").unwrap_or_else(|e| panic!("{e}"));
    let (node, _node) = spockfs_tests::start_axum(spockfs_tests::axum_args(&shared)).await;
    // The echo node answers everything 200 with what it received: whatever
    // reaches it shows in the body.
    let (echo, _echo) = echo_upstream().await;
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "127.0.0.1:1"
        [[vhost]]
        host = "ro.test"
        prefix = "/fs"
        upstreams = ["{node}"]
        read_only = true
        health_check_path = "/fs/"
        [[vhost]]
        host = "echo.test"
        prefix = "/fs"
        upstreams = ["127.0.0.1:{echo}"]
        read_only = true
        [[vhost]]
        host = "rw.test"
        prefix = "/fs"
        upstreams = ["{node}"]
        health_check_path = "/fs/"
        [[vhost]]
        host = "local.test"
        prefix = "/fs"
        root = "{}"
        read_only = true
        "#,
        shared.display()
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let c = Client::new(&format!("http://127.0.0.1:{port}/fs"));
    let ro = c.with_host("ro.test");
    let local = c
        .with_host("local.test")
        .req("MKDIR", "/d", &[("X-Spock-mode", "493")])
        .await;
    assert_eq!((local.status.as_u16(), local.errno()), (403, "EROFS"));
    // Changes: refused, nothing on the node.
    let mode = [("X-Spock-mode", "493")];
    let wronly = [("X-Spock-flag", "1")];
    let creat = [("X-Spock-flag", "64")];
    let w_ok = [("X-Spock-mode", "2")];
    let target = [("X-Spock-target", "/f")];
    for (method, path, headers) in [
        ("MKDIR", "/d", &mode[..]),
        ("POST", "/new", &mode[..]),
        ("DELETE", "/f", &[][..]),
        ("RENAME", "/g", &target[..]),
        ("OPEN", "/f", &wronly[..]),
        ("OPEN", "/created", &creat[..]),
        ("ACCESS", "/f", &w_ok[..]),
        ("TRUNCATE", "/f", &[("X-Spock-size", "0")][..]),
        // Does not parse (no X-Spock-mode): not provably harmless.
        ("MKDIR", "/d2", &[][..]),
        // Not a SpockFS method.
        ("PATCH", "/f", &[][..]),
    ] {
        let r = ro.req(method, path, headers).await;
        assert_eq!(
            (r.status.as_u16(), r.errno()),
            (403, "EROFS"),
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.body, local.body,
            "{method} {path}: as a local read-only vhost"
        );
    }
    // A PUT with a body: refused, body not forwarded.
    let r = ro.send("PUT", "/f", &[], vec![b'x'; 4096]).await;
    assert_eq!((r.status.as_u16(), r.errno()), (403, "EROFS"));
    let names = |d: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.map(|e| e.file_name()).unwrap_or_default())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&shared), ["f"]);
    assert_eq!(std::fs::read(shared.join("f")).unwrap_or_default(), b"data");
    // Reads reach the node.
    let r = ro.req("GET", "/f", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"data"[..]));
    let r = ro.req("READDIR", "/", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b".\n..\nf\n"[..]));
    for (method, headers) in [
        ("OPEN", &[][..]),
        ("ACCESS", &[("X-Spock-mode", "4")][..]),
        ("GETATTR", &[][..]),
        ("STATFS", &[][..]),
    ] {
        let r = ro.req(method, "/f", headers).await;
        assert_eq!(r.status, 200, "{method}");
    }
    // Nothing refused was forwarded: the echo node never saw a change.
    let echo_c = c.with_host("echo.test");
    let r = echo_c.req("MKDIR", "/d", &mode).await;
    assert_eq!((r.status.as_u16(), r.errno()), (403, "EROFS"));
    let r = echo_c.req("GETATTR", "/d", &[]).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        r.status == 200 && text.starts_with("GETATTR /fs/d\n"),
        "{text}"
    );
    // The same nodes through a writable vhost: changes go through.
    let r = c.with_host("rw.test").req("MKDIR", "/d", &mode).await;
    assert_eq!(r.status, 201);
    assert!(shared.join("d").is_dir());
}

/// A client's own identity headers never get past the gateway: with the
/// README's setup (axum-app trusting `X-Remote-User` from 127.0.0.1, the
/// gateway's default upstream), a client of the gateway cannot act as
/// another user. The list is configurable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_clients_are_removed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let homes = dir.path().join("homes");
    let data = dir.path().join("data");
    let mut args = spockfs_tests::axum_args(&data);
    args.user_roots = Some(homes.clone());
    args.trust_proxy_user = Some([127, 0, 0, 1].into());
    let (app, _app) = spockfs_tests::start_axum(args).await;
    let (echo, _echo) = echo_upstream().await;
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "{app}"
        [[vhost]]
        host = "pool.test"
        prefix = "/fs"
        upstreams = ["127.0.0.1:{echo}"]
        "#
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    // The attack: MKDIR as bob, through the gateway to axum-app.
    let r = c
        .req(
            "MKDIR",
            "/fs/made",
            &[("X-Remote-User", "bob"), ("X-Spock-mode", "493")],
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!homes.join("bob").exists(), "the client acted as bob");
    // Proof the app does believe the header from 127.0.0.1 when sent
    // directly (so the 403 above is the gateway's doing).
    let direct = Client::new(&format!("http://{app}"));
    let r = direct
        .req(
            "MKDIR",
            "/fs/made",
            &[("X-Remote-User", "carol"), ("X-Spock-mode", "493")],
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(homes.join("carol/made").is_dir());
    // To a pool: the default list, every spelling and every copy, is gone;
    // other headers pass.
    let r = c
        .with_host("pool.test")
        .send(
            "GETATTR",
            "/fs/x",
            &[
                ("X-Remote-User", b"bob"),
                ("x-remote-user", b"eve"),
                ("Remote-User", b"bob"),
                ("X-Forwarded-User", b"bob"),
                ("X-Custom", b"kept"),
            ],
            "",
        )
        .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.starts_with("GETATTR /fs/x\n"), "{text}");
    assert!(!text.contains("user:"), "{text}");
    assert!(text.contains("x-custom: kept"), "{text}");
    drop(_gw);

    // A list of one's own replaces the default.
    let port = free_port();
    let cfg = config(&format!(
        r#"
        listen = [{{ addr = "127.0.0.1:{port}" }}]
        default_upstream = "127.0.0.1:{echo}"
        strip_request_headers = ["X-Auth-Subject"]
        vhost = []
        "#
    ));
    let _gw = run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    let r = c
        .req(
            "GET",
            "/x",
            &[("X-Auth-Subject", "bob"), ("X-Remote-User", "kept")],
        )
        .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!text.contains("x-auth-subject"), "{text}");
    assert!(text.contains("x-remote-user: kept"), "{text}");
    // Not a header name: the gateway does not start.
    let bad = config(&format!(
        "listen = [{{ addr = \"127.0.0.1:{}\" }}]\nstrip_request_headers = [\"bad name\"]\nvhost = []\n",
        free_port()
    ));
    assert!(pingora_gateway::build(&bad).is_err());
}

/// Runs a proxy on a Pingora server in this process (until the test
/// process exits); returns its port once it listens.
async fn start_proxy<P>(proxy: P) -> u16
where
    P: pingora::proxy::ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let port = free_port();
    let mut server = pingora::server::Server::new(None).unwrap_or_else(|e| panic!("{e}"));
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    svc.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(svc);
    std::thread::spawn(move || {
        server.run(pingora::server::RunArgs::default());
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "proxy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    port
}

/// An existing gateway that checks an API key in its `request_filter` and
/// picks each user's root, then calls the module: its check runs for
/// SpockFS requests too (nothing unauthenticated reaches the filesystem),
/// and the `Mount` it inserts is the root the request is served from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spockfs_runs_the_inner_request_filter_first() {
    use pingora::proxy::{ProxyHttp, Session};
    use pingora::upstreams::peer::HttpPeer;
    struct KeyChecked {
        upstream: String,
        homes: std::collections::HashMap<&'static str, Mount>,
        spockfs: spockfs_pingora::SpockFsModule,
    }
    #[async_trait::async_trait]
    impl ProxyHttp for KeyChecked {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn request_filter(&self, s: &mut Session, _c: &mut ()) -> pingora::Result<bool> {
            let key = s
                .req_header()
                .headers
                .get("x-api-key")
                .map(|k| k.as_bytes());
            let user = match key {
                Some(b"alice-key") => "alice",
                Some(b"bob-key") => "bob",
                Some(b"shared-key") => return self.spockfs.handle(s).await,
                _ => {
                    s.respond_error(401).await?;
                    return Ok(true);
                }
            };
            if let Some(m) = self.homes.get(user) {
                s.req_header_mut().extensions_mut().insert(m.clone());
            }
            self.spockfs.handle(s).await
        }
        async fn upstream_peer(
            &self,
            _s: &mut Session,
            _c: &mut (),
        ) -> pingora::Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(
                self.upstream.as_str(),
                false,
                String::new(),
            )))
        }
    }
    let (up, _echo) = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
    let (alice, bob) = (MemFs::new(), MemFs::new());
    let homes = [
        ("alice", Mount::new(alice.clone())),
        ("bob", Mount::new(bob.clone()).read_only(true)),
    ]
    .into_iter()
    .collect();
    let spockfs = spockfs_pingora::SpockFsModule::new(
        spockfs_core::Routes::new().prefix(
            "/fs",
            Engine::builder()
                .default_mount(Mount::local(&shared))
                .build(),
        ),
    );
    let port = start_proxy(KeyChecked {
        upstream: format!("127.0.0.1:{up}"),
        homes,
        spockfs,
    })
    .await;
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    let mode = ("X-Spock-mode", "493");
    // No key, or a wrong one: the host's filter answers, SpockFS never runs.
    for key in [None, Some("wrong")] {
        let mut h = vec![mode];
        h.extend(key.map(|k| ("X-Api-Key", k)));
        let r = c.req("MKDIR", "/fs/d", &h).await;
        assert_eq!(r.status, 401, "key {key:?}");
        let r = c.req("GET", "/app", &h).await;
        assert_eq!(r.status, 401, "key {key:?}, proxied");
    }
    assert!(!shared.join("d").exists(), "unauthenticated MKDIR applied");
    // Each user in their own root, chosen per request by the host's filter.
    let r = c
        .req("MKDIR", "/fs/mine", &[mode, ("X-Api-Key", "alice-key")])
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .req("READDIR", "/fs/", &[("X-Api-Key", "alice-key")])
        .await;
    assert_eq!(&r.body[..], b".\n..\nmine\n");
    let r = c.req("READDIR", "/fs/", &[("X-Api-Key", "bob-key")]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b".\n..\n"[..]));
    // The mount's own settings apply (bob's is read-only).
    let r = c
        .req("MKDIR", "/fs/x", &[mode, ("X-Api-Key", "bob-key")])
        .await;
    assert_eq!((r.status.as_u16(), r.errno()), (403, "EROFS"));
    // Without a per-request mount, the engine's default.
    let r = c
        .req("MKDIR", "/fs/common", &[mode, ("X-Api-Key", "shared-key")])
        .await;
    assert_eq!(r.status, 201);
    assert!(shared.join("common").is_dir() && !shared.join("mine").exists());
    // Authenticated, not SpockFS: still proxied.
    let r = c
        .send("POST", "/app", &[("X-Api-Key", b"bob-key")], "x")
        .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.starts_with("POST /app\n"), "{text}");
}
