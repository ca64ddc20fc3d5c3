//! SpockFs inside real tower/axum stacks: virtual hosts, read-only mounts,
//! per-request roots from a host middleware, tower-http layers, the
//! `SpockFsLayer`, and the rule that no syscall runs on an async worker.

use axum::Router;
use bytes::Bytes;
use spockfs_core::{Backend, FsPath, FsResult, LocalFs, MemFs, Mount, Stat};
use spockfs_tests::Client;
use spockfs_tower::{SpockFs, SpockFsLayer};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_default_and_missing() {
    let a = MemFs::new();
    let b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(b.path().join("hello"), b"from b").unwrap_or_else(|e| panic!("{e}"));
    let fs = SpockFs::builder()
        .vhost("a.test", Mount::new(a.clone()))
        .vhost("B.test:8080", Mount::local(b.path()))
        .build();
    let (base, _t) = serve(Router::new().nest_service("/fs", fs)).await;
    let c = Client::new(&format!("{base}/fs"));
    let r = c
        .with_host("a.test")
        .req("MKDIR", "/only-in-a", &[("X-Spock-mode", "493")])
        .await;
    assert_eq!(r.status, 201);
    assert!(a
        .getattr(&FsPath::from_url_path("/only-in-a").unwrap_or_else(|e| panic!("{e}")))
        .is_ok());
    let r = c.with_host("b.test:8080").req("GET", "/hello", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"from b"[..]));
    let r = c
        .with_host("A.TEST:9999")
        .req("GETATTR", "/only-in-a", &[])
        .await;
    assert_eq!(
        r.status, 200,
        "host match is case-insensitive and falls back from host:port to host"
    );
    let r = c.with_host("b.test").req("GET", "/hello", &[]).await;
    assert_eq!(r.status, 404, "b.test:8080 is not b.test");
    let r = c.with_host("other.test").req("GETATTR", "/", &[]).await;
    assert_eq!(r.status, 404, "no vhost and no default root");
    assert!(!b.path().join("only-in-a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mount_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.path().join("d")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("f"), b"data").unwrap_or_else(|e| panic!("{e}"));
    let fs = SpockFs::builder()
        .default_mount(Mount::local(dir.path()).read_only(true))
        .build();
    let (base, _t) = serve(Router::new().nest_service("/fs", fs)).await;
    let c = Client::new(&format!("{base}/fs"));
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let mutating: &[Case] = &[
        (
            "MKNOD",
            "/n",
            &[("X-Spock-mode", "4480"), ("X-Spock-dev", "0")],
        ),
        ("OPEN", "/f", &[("X-Spock-flag", "1")]),
        ("OPEN", "/f", &[("X-Spock-flag", "2")]),
        ("OPEN", "/f", &[("X-Spock-flag", "512")]),
        ("CHMOD", "/f", &[("X-Spock-mode", "511")]),
        ("CHOWN", "/f", &[("X-Spock-uid", "0"), ("X-Spock-gid", "0")]),
        ("TRUNCATE", "/f", &[("X-Spock-size", "0")]),
        ("ACCESS", "/f", &[("X-Spock-mode", "2")]),
        ("SYMLINK", "/s", &[("X-Spock-target", "f")]),
        ("RMDIR", "/d", &[]),
        ("MKDIR", "/m", &[("X-Spock-mode", "493")]),
        ("LINK", "/h", &[("X-Spock-target", "/f")]),
        ("RENAME", "/g", &[("X-Spock-target", "/f")]),
        (
            "FALLOCATE",
            "/f",
            &[("X-Spock-mode", "0"), ("Range", "bytes=0-9999")],
        ),
        (
            "SETXATTR",
            "/f",
            &[("X-Spock-target", "user.a"), ("X-Spock-flag", "0")],
        ),
        ("REMOVEXATTR", "/f", &[("X-Spock-target", "user.a")]),
        (
            "UTIMENS",
            "/f",
            &[("X-Spock-atime", "1"), ("X-Spock-mtime", "1")],
        ),
        ("PUT", "/f", &[("Content-Range", "bytes=0-0")]),
        ("PUT", "/new", &[]),
        ("POST", "/p", &[("X-Spock-mode", "420")]),
        ("DELETE", "/f", &[]),
    ];
    let snapshot = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| {
                let m = std::fs::symlink_metadata(e.path()).unwrap_or_else(|e| panic!("{e}"));
                use std::os::unix::fs::MetadataExt;
                (e.file_name(), m.mode(), m.size(), m.mtime(), m.ctime())
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot();
    for (m, p, h) in mutating {
        let body = if *m == "PUT" {
            Bytes::from_static(b"x")
        } else {
            Bytes::new()
        };
        let hs: Vec<(&str, &[u8])> = h.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let r = c.send(m, p, &hs, body).await;
        assert_eq!(
            (r.status.as_u16(), r.errno()),
            (403, "EROFS"),
            "{m} {p} {h:?}"
        );
    }
    assert_eq!(snapshot(), before, "a read-only mount changed");
    for (m, p, h) in [
        ("GET", "/f", &[][..]),
        ("GETATTR", "/f", &[]),
        ("READDIR", "/", &[]),
        ("OPEN", "/f", &[("X-Spock-flag", "0")]),
        ("ACCESS", "/f", &[("X-Spock-mode", "4")]),
        ("STATFS", "/", &[]),
        ("LISTXATTR", "/f", &[("X-Spock-size", "0")]),
        ("FSYNC", "/f", &[]),
    ] {
        let r = c.req(m, p, h).await;
        assert!(r.status.is_success(), "{m} {p}: {}", r.status);
    }
}

/// An auth layer in front chooses each user's home by inserting a `Mount`
/// into the request extensions; it wins over vhosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_mount_from_host_middleware() {
    let homes = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for u in ["alice", "bob"] {
        std::fs::create_dir(homes.path().join(u)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(homes.path().join(u).join("who"), u).unwrap_or_else(|e| panic!("{e}"));
    }
    let mounts: Arc<Vec<(String, Mount)>> = Arc::new(
        ["alice", "bob"]
            .iter()
            .map(|u| {
                (
                    u.to_string(),
                    Mount::new(
                        LocalFs::open(homes.path().join(u)).unwrap_or_else(|e| panic!("{e}")),
                    ),
                )
            })
            .collect(),
    );
    let fs = SpockFs::builder()
        .vhost("x.test", Mount::new(MemFs::new()))
        .build();
    let app = Router::new()
        .nest_service("/fs", fs)
        .layer(axum::middleware::from_fn(
            move |mut req: axum::extract::Request, next: axum::middleware::Next| {
                let mounts = mounts.clone();
                async move {
                    let user = req
                        .headers()
                        .get("x-test-user")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some((_, m)) = mounts.iter().find(|(u, _)| Some(u) == user.as_ref()) {
                        req.extensions_mut().insert(m.clone());
                    }
                    next.run(req).await
                }
            },
        ));
    let (base, _t) = serve(app).await;
    let c = Client::new(&format!("{base}/fs")).with_host("x.test");
    for u in ["alice", "bob"] {
        let r = c.req("GET", "/who", &[("x-test-user", u)]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, u.as_bytes()));
    }
    let r = c.req("GET", "/who", &[]).await;
    assert_eq!(
        r.status, 404,
        "without the extension the vhost (empty MemFs) serves"
    );
}

/// tower-http layers compose: trace, timeout, body limit, bearer auth; and
/// SpockFsLayer routes by prefix in a router-less stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composes_with_tower_http_layers() {
    use tower_http::validate_request::ValidateRequestHeaderLayer;
    let mem = MemFs::new();
    let fs = SpockFs::builder()
        .default_mount(Mount::new(mem.clone()))
        .build();
    #[allow(deprecated)]
    let app = Router::new()
        .nest_service("/fs", fs)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024))
        .layer(tower_http::timeout::TimeoutLayer::new(Duration::from_secs(
            5,
        )))
        .layer(ValidateRequestHeaderLayer::bearer("t0ken"))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let (base, _t) = serve(app).await;
    let c = Client::new(&format!("{base}/fs"));
    let r = c.req("MKDIR", "/d", &[("X-Spock-mode", "493")]).await;
    assert_eq!(r.status, 401);
    let auth = [("Authorization", "Bearer t0ken")];
    let r = c
        .req("MKDIR", "/d", &[auth[0], ("X-Spock-mode", "493")])
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .send(
            "PUT",
            "/d/f",
            &[("Authorization", b"Bearer t0ken")],
            vec![b'x'; 2000],
        )
        .await;
    assert_eq!(r.status, 413, "body limit layer applies to SpockFS PUTs");
    let r = c
        .send(
            "PUT",
            "/d/f",
            &[("Authorization", b"Bearer t0ken")],
            vec![b'x'; 100],
        )
        .await;
    assert_eq!(r.status, 201);

    // Router-less: hyper + SpockFsLayer in front of an app service.
    let svc = tower::ServiceBuilder::new()
        .layer(SpockFsLayer::new(
            "/files/",
            SpockFs::builder().default_mount(Mount::new(mem)).build(),
        ))
        .service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from(format!("app saw {}", req.uri().path())),
            )))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    let c = Client::new(&format!("http://{addr}"));
    let r = c.req("GET", "/files/d/f", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 100));
    let r = c.req("READDIR", "/files", &[]).await;
    assert_eq!(&r.body[..], b".\n..\nd\n");
    let r = c.req("GET", "/filesystem", &[]).await;
    assert_eq!(&r.body[..], b"app saw /filesystem");
}

/// Wraps LocalFs and records the threads its calls run on.
struct Spy {
    inner: LocalFs,
    threads: Arc<Mutex<HashSet<std::thread::ThreadId>>>,
}

impl Spy {
    fn note(&self) {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(std::thread::current().id());
    }
}

macro_rules! spy {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.note(); self.inner.$name($($arg),*) })*
    };
}

impl Backend for Spy {
    spy! {
        getattr(p: &FsPath) -> FsResult<Stat>;
        readdir(p: &FsPath, a: bool, s: &mut spockfs_core::backend::DirSink<'_>) -> FsResult<()>;
        mknod(p: &FsPath, m: u32, d: u64, v: spockfs_core::Devices) -> FsResult<()>;
        open(p: &FsPath, f: i32) -> FsResult<()>;
        chmod(p: &FsPath, m: u32, s: spockfs_core::SetId) -> FsResult<()>;
        chown(p: &FsPath, o: spockfs_core::Owner) -> FsResult<()>;
        truncate(p: &FsPath, s: u64, i: spockfs_core::SetId) -> FsResult<()>;
        access(p: &FsPath, m: u32) -> FsResult<()>;
        symlink(p: &FsPath, t: &[u8]) -> FsResult<()>;
        readlink(p: &FsPath) -> FsResult<Vec<u8>>;
        rmdir(p: &FsPath) -> FsResult<()>;
        mkdir(p: &FsPath, m: u32) -> FsResult<()>;
        link(p: &FsPath, e: &FsPath) -> FsResult<()>;
        rename(f: &FsPath, t: &FsPath) -> FsResult<()>;
        fallocate(p: &FsPath, m: i32, o: u64, l: u64, s: spockfs_core::SetId) -> FsResult<()>;
        statfs(p: &FsPath) -> FsResult<spockfs_core::StatFs>;
        listxattr(p: &FsPath, l: usize) -> FsResult<Vec<Vec<u8>>>;
        getxattr(p: &FsPath, n: &[u8], l: usize) -> FsResult<Vec<u8>>;
        setxattr(p: &FsPath, n: &[u8], v: &[u8], f: spockfs_core::XattrFlag) -> FsResult<()>;
        removexattr(p: &FsPath, n: &[u8]) -> FsResult<()>;
        utimens(p: &FsPath, a: spockfs_core::SetTime, m: spockfs_core::SetTime) -> FsResult<()>;
        create(p: &FsPath, m: u32, s: spockfs_core::SetId) -> FsResult<()>;
        unlink(p: &FsPath) -> FsResult<()>;
        fsync(p: &FsPath, d: bool) -> FsResult<()>;
        open_read(p: &FsPath) -> FsResult<Box<dyn spockfs_core::FileHandle>>;
        open_write(p: &FsPath, s: spockfs_core::SetId) -> FsResult<Box<dyn spockfs_core::FileHandle>>;
        replace(p: &FsPath, s: spockfs_core::SetId) -> FsResult<Box<dyn spockfs_core::Replacement>>;
    }
}

/// Worker threads park when idle; blocking-pool threads never call the
/// park hook. No backend call may land on a thread that ever parked.
#[test]
fn no_syscall_on_async_workers() {
    let workers: Arc<Mutex<HashSet<std::thread::ThreadId>>> = Arc::default();
    let w2 = workers.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_park(move || {
            w2.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(std::thread::current().id());
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let used: Arc<Mutex<HashSet<std::thread::ThreadId>>> = Arc::default();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spy = Spy {
        inner: LocalFs::open(dir.path()).unwrap_or_else(|e| panic!("{e}")),
        threads: used.clone(),
    };
    rt.block_on(async {
        let fs = SpockFs::builder().default_mount(Mount::new(spy)).build();
        let (base, _t) = serve(Router::new().nest_service("/fs", fs)).await;
        let c = Client::new(&format!("{base}/fs"));
        tokio::time::sleep(Duration::from_millis(50)).await; // let workers park
        for _ in 0..20 {
            assert!(!c
                .req("MKDIR", "/d", &[("X-Spock-mode", "493")])
                .await
                .status
                .is_client_error());
            c.send("PUT", "/d/f", &[], vec![7u8; 600_000]).await;
            c.send("PUT", "/d/f", &[("Content-Range", b"bytes=0-2")], "abc")
                .await;
            assert_eq!(c.req("GET", "/d/f", &[]).await.body.len(), 600_000);
            c.req("GETATTR", "/d/f", &[]).await;
            c.req("READDIR", "/d", &[("X-Spock-readdir", "attrs")])
                .await;
            c.req(
                "SETXATTR",
                "/d/f",
                &[("X-Spock-target", "user.a"), ("X-Spock-flag", "0")],
            )
            .await;
            c.req("DELETE", "/d/f", &[]).await;
            c.req("RMDIR", "/d", &[]).await;
        }
    });
    let workers = workers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let used = used.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!workers.is_empty() && !used.is_empty());
    let overlap: Vec<_> = used.intersection(&workers).collect();
    assert!(
        overlap.is_empty(),
        "backend calls ran on async worker threads: {overlap:?}"
    );
}

/// The engine tells an observer about every request answered over HTTP:
/// method, host, status, errno, body sizes; and its pool's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_every_request() {
    use spockfs_core::observe::{Observer, RequestRecord};
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        method: String,
        host: Option<String>,
        status: u16,
        errno: Option<String>,
        bytes_in: Option<u64>,
        bytes_out: Option<u64>,
    }
    #[derive(Default)]
    struct Log(Mutex<Vec<Seen>>);
    impl Observer for Log {
        fn request(&self, r: &RequestRecord<'_>) {
            assert!(r.duration < Duration::from_secs(10));
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                method: r.method.to_string(),
                host: r.host.map(str::to_owned),
                status: r.status.as_u16(),
                errno: r.errno.map(|e| e.name().to_owned()),
                bytes_in: r.bytes_in,
                bytes_out: r.bytes_out,
            });
        }
    }
    let log = Arc::new(Log::default());
    let fs = SpockFs::builder()
        .default_mount(Mount::new(MemFs::new()))
        .observer(log.clone())
        .build();
    let engine_stats = fs.engine().pool_stats();
    assert_eq!(engine_stats.queued, 0);
    assert!(engine_stats.max_threads >= 1);
    let (base, _t) = serve(Router::new().nest_service("/fs", fs)).await;
    let c = Client::new(&format!("{base}/fs")).with_host("files.test");
    assert_eq!(c.send("PUT", "/f", &[], &b"hello"[..]).await.status, 201);
    assert_eq!(c.req("GET", "/f", &[]).await.status, 200);
    assert_eq!(c.req("GETATTR", "/missing", &[]).await.status, 404);
    let seen = log.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let s = |m: &str, st: u16, errno: Option<&str>, bi: Option<u64>, bo: Option<u64>| Seen {
        method: m.into(),
        host: Some("files.test".into()),
        status: st,
        errno: errno.map(str::to_owned),
        bytes_in: bi,
        bytes_out: bo,
    };
    assert_eq!(
        seen,
        vec![
            s("PUT", 201, None, Some(5), Some(0)),
            s("GET", 200, None, None, Some(5)),
            s("GETATTR", 404, Some("ENOENT"), None, seen[2].bytes_out),
        ]
    );
}
