//! spockfs-client against the real server: every method, a plain 0.1
//! server (no extensions), timeouts, restarts, auth and HTTPS.

use bytes::Bytes;
use spockfs_client::{Client, Errno, SetTime, XattrFlag};
use spockfs_tests::{axum_args, axum_local, start_axum};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_round_trips() {
    let (t, _srv) = axum_local().await;
    let c = Client::new(&format!("http://{}/fs", t.addr)).unwrap_or_else(|e| panic!("{e}"));
    let ext = c.extensions().await;
    assert!(ext.errno && ext.readdir_attrs && ext.fsync && ext.stat && ext.nsec);
    let st = c
        .mkdir(b"/d", 0o750)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.stat("d").map(|s| s.perm), Some(0o750));
    assert_eq!(
        st.stat.map(|s| s.mode),
        Some(libc::S_IFDIR | 0o750),
        "stat ext"
    );
    assert_eq!(
        st.parent.map(|s| s.mode & libc::S_IFMT),
        Some(libc::S_IFDIR),
        "parent-stat ext"
    );
    let st = c
        .create(b"/d/f", 0o640)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        st.stat.map(|s| (s.mode, s.size)),
        Some((libc::S_IFREG | 0o640, 0))
    );
    // The directory's attributes, after the create: its mtime moved.
    let d = t.store.stat("d").map(|s| (s.ino, s.mtime));
    assert_eq!(st.parent.map(|s| (s.ino, s.mtime)), d, "parent-stat ext");
    c.write(b"/d/f", 3, Bytes::from_static(b"hello"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        &c.read(b"/d/f", 0, 100).await.unwrap_or_default()[..],
        b"\0\0\0hello"
    );
    assert_eq!(&c.read(b"/d/f", 4, 2).await.unwrap_or_default()[..], b"el");
    assert!(
        c.read(b"/d/f", 1000, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "past EOF"
    );
    let st = c.getattr(b"/d/f").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((st.size, st.mode & 0o7777, st.nlink), (8, 0o640, 1));
    c.symlink(b"/d/l", b"../elsewhere")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.readlink(b"/d/l").await.unwrap_or_default(),
        b"../elsewhere"
    );
    c.link(b"/d/h", b"/d/f")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<_> = c.readdir(b"/d").await.unwrap_or_default();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        names.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"f".to_vec(), b"h".to_vec(), b"l".to_vec()]
    );
    assert_eq!(
        names[0].stat.map(|s| (s.size, s.nlink)),
        Some((8, 2)),
        "readdir-attrs fills stat"
    );
    c.rename(b"/d/h", b"/d/h2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.chmod(b"/d/f", 0o600)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.chown(b"/d/f", None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.truncate(b"/d/f", 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.access(b"/d/f", 6).await.unwrap_or_else(|e| panic!("{e}"));
    c.open(b"/d/f", 2).await.unwrap_or_else(|e| panic!("{e}"));
    c.fallocate(b"/d/f", 0, 0, 4096)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.getattr(b"/d/f").await.map(|s| s.size), Ok(4096));
    assert!(c.statfs(b"/").await.map(|s| s.bsize > 0).unwrap_or(false));
    c.setxattr(
        b"/d/f",
        b"user.k",
        Bytes::from_static(b"v"),
        XattrFlag::Create,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.getxattr(b"/d/f", b"user.k").await.unwrap_or_default(),
        b"v"
    );
    assert!(c
        .listxattr(b"/d/f")
        .await
        .unwrap_or_default()
        .contains(&b"user.k".to_vec()));
    assert_eq!(
        c.setxattr(b"/d/f", b"user.k", Bytes::new(), XattrFlag::Create)
            .await,
        Err(Errno::EEXIST)
    );
    c.removexattr(b"/d/f", b"user.k")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.getxattr(b"/d/f", b"user.k").await, Err(Errno::ENODATA));
    c.utimens(b"/d/f", SetTime::secs(10), SetTime::secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.getattr(b"/d/f").await.map(|s| (s.atime, s.mtime)),
        Ok((10, 20))
    );
    // Extension `nsec`: nanoseconds, UTIME_OMIT and UTIME_NOW.
    let at = |sec, nsec| SetTime::At { sec, nsec };
    let st = c
        .utimens(b"/d/f", at(10, 5), at(-20, 999_999_999))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("stat ext"));
    assert_eq!(
        (st.atime, st.atime_nsec, st.mtime, st.mtime_nsec),
        (10, 5, -20, 999_999_999)
    );
    let ns = |s: spockfs_client::Stat| (s.atime, s.atime_nsec, s.mtime, s.mtime_nsec);
    assert_eq!(
        c.getattr(b"/d/f").await.map(ns),
        Ok((10, 5, -20, 999_999_999))
    );
    let listed = c.readdir(b"/d").await.unwrap_or_else(|e| panic!("{e}"));
    let f = listed.iter().find(|e| e.name == b"f").and_then(|e| e.stat);
    assert_eq!(f.map(ns), Some((10, 5, -20, 999_999_999)), "attrs-nsec");
    c.utimens(b"/d/f", SetTime::Now, SetTime::Omit)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = c.getattr(b"/d/f").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(st.atime > 1_000_000_000, "now: {}", st.atime);
    assert_eq!((st.mtime, st.mtime_nsec), (-20, 999_999_999), "omitted");
    assert_eq!(
        c.utimens(b"/d/f", at(1, 1_000_000_000), SetTime::Omit)
            .await,
        Err(Errno::EINVAL)
    );
    c.mknod(b"/d/fifo", 0o010644, 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.fsync(b"/d/f", true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.put(b"/d/whole", Bytes::from_static(b"all of it"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.read("d/whole"), Some(b"all of it".to_vec()));
    // Exact errnos through the errno extension.
    assert_eq!(c.getattr(b"/nope").await, Err(Errno::ENOENT));
    assert_eq!(c.readdir(b"/d/f").await.map(|_| ()), Err(Errno::ENOTDIR));
    assert_eq!(c.rmdir(b"/d").await, Err(Errno::ENOTEMPTY));
    assert_eq!(c.mkdir(b"/d", 0o755).await, Err(Errno::EEXIST));
    for n in [&b"/d/f"[..], b"/d/h2", b"/d/l", b"/d/fifo", b"/d/whole"] {
        c.unlink(n).await.unwrap_or_else(|e| panic!("{e}"));
    }
    c.rmdir(b"/d").await.unwrap_or_else(|e| panic!("{e}"));
    // Names are bytes.
    c.create(b"/caf\xe9 %?#", 0o644)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.list(""), Some(vec![b"caf\xe9 %?#".to_vec()]));
}

/// A server that advertises nothing (plain SpockFS 0.1): the client must
/// not use extensions, and maps errors by status alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_server_gets_only_the_spec() {
    use axum::extract::Request;
    use axum::middleware::Next;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fs = spockfs_tower::SpockFs::new(dir.path());
    let app = axum::Router::new()
        .nest_service("/fs", fs)
        .layer(axum::middleware::from_fn(
            |req: Request, next: Next| async move {
                let h = req.headers();
                let not_secs = |n: &str| {
                    h.get(n)
                        .is_some_and(|v| v.to_str().map_or(true, |v| v.parse::<i64>().is_err()))
                };
                let is_ext = req.method() == "FSYNC"
                    || h.contains_key("x-spock-readdir")
                    || h.contains_key("x-spock-stat")
                    || h.contains_key("x-spock-atime-nsec")
                    || h.contains_key("x-spock-mtime-nsec")
                    || not_secs("x-spock-atime")
                    || not_secs("x-spock-mtime");
                if is_ext {
                    // A 0.1 server would not know these: fail loudly if used.
                    return http::Response::builder()
                        .status(599)
                        .body(axum::body::Body::empty())
                        .unwrap_or_default();
                }
                let mut resp = next.run(req).await;
                for h in [
                    "x-spock-extensions",
                    "x-spock-errno",
                    "x-spock-atime-nsec",
                    "x-spock-mtime-nsec",
                    "x-spock-ctime-nsec",
                ] {
                    resp.headers_mut().remove(h);
                }
                resp
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let c = Client::new(&format!("http://{addr}/fs")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.extensions().await, spockfs_client::Extensions::default());
    let st = c
        .create(b"/f", 0o644)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        st,
        spockfs_client::Changed::default(),
        "no attributes from a 0.1 server"
    );
    let entries = c.readdir(b"/").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.len(), 1);
    assert!(entries[0].stat.is_none());
    c.fsync(b"/f", false)
        .await
        .unwrap_or_else(|e| panic!("no-op without the extension: {e}"));
    assert_eq!(
        c.readdir(b"/f").await.map(|_| ()),
        Err(Errno::EIO),
        "ENOTDIR is 500 → EIO in 0.1"
    );
    assert_eq!(c.getattr(b"/nope").await, Err(Errno::ENOENT));
    // UTIMENS in whole seconds: UTIME_OMIT read back with a GETATTR,
    // UTIME_NOW this machine's clock, nanoseconds dropped.
    let at = |sec, nsec| SetTime::At { sec, nsec };
    c.utimens(b"/f", at(100, 7), at(200, 8))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = c.getattr(b"/f").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (st.atime, st.atime_nsec, st.mtime, st.mtime_nsec),
        (100, 0, 200, 0)
    );
    c.utimens(b"/f", SetTime::Omit, at(300, 9))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.utimens(b"/f", SetTime::Omit, SetTime::Omit)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = c.getattr(b"/f").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((st.atime, st.mtime), (100, 300));
    c.utimens(b"/f", SetTime::Now, SetTime::Omit)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = c.getattr(b"/f").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(st.atime > 1_000_000_000 && st.mtime == 300, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_restarts() {
    // A server that accepts and never answers: EIO after the timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let saddr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let _hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            keep.push(s);
        }
    });
    let c = Client::builder(&format!("http://{saddr}/fs"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    assert_eq!(c.getattr(b"/").await, Err(Errno::EIO));
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Server restarted on the same port: EIO while down, fine after,
    // with the same client.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let run = |dir: std::path::PathBuf| async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut a = axum_args(&dir);
        a.listen = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            let _ = axum_app::serve(a, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        (tx, task)
    };
    let c = Client::builder(&format!("http://127.0.0.1:{port}/fs"))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (stop, task) = run(dir.path().to_path_buf()).await;
    c.mkdir(b"/before", 0o755)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = stop.send(());
    let _ = task.await;
    assert_eq!(c.getattr(b"/before").await, Err(Errno::EIO), "server down");
    let (_stop2, _task2) = run(dir.path().to_path_buf()).await;
    assert!(
        c.getattr(b"/before").await.is_ok(),
        "works again without a new client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_url_and_https_with_ca_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("{e}"));
    let (cert, key, pw) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("htpasswd"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &pw,
        format!("al ice:{}\n", bcrypt::hash("p:w", 4).unwrap_or_default()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut a = axum_args(&dir.path().join("data"));
    a.tls_cert = Some(cert.clone());
    a.tls_key = Some(key);
    a.htpasswd = Some(pw);
    let (addr, _srv) = start_axum(a).await;
    let url = |auth: &str| format!("https://{auth}localhost:{}/fs", addr.port());
    let ok = Client::builder(&url("al%20ice:p%3Aw@"))
        .ca_file(&cert)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    ok.mkdir(b"/x", 0o755)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let anon = Client::builder(&url(""))
        .ca_file(&cert)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        anon.getattr(b"/x").await,
        Err(Errno::EIO),
        "401 is not in the spec's table"
    );
    let untrusted = Client::new(&url("al%20ice:p%3Aw@")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        untrusted.getattr(b"/x").await,
        Err(Errno::EIO),
        "self-signed cert not trusted without ca_file"
    );
}

/// MKNOD of a regular file never truncates an existing one (POST would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mknod_regular_is_exclusive() {
    let (t, _srv) = axum_local().await;
    let c = Client::new(&format!("http://{}/fs", t.addr)).unwrap_or_else(|e| panic!("{e}"));
    c.mknod(b"/r", 0o100444, 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.stat("r").map(|s| s.perm), Some(0o444));
    t.store.write("r", b"keep me");
    assert_eq!(c.mknod(b"/r", 0o100644, 0).await, Err(Errno::EEXIST));
    assert_eq!(t.store.read("r"), Some(b"keep me".to_vec()));
}

/// A stream of chunks fed by a task (`io::Error`s too), for the streamed
/// uploads.
struct Chan(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_util::Stream for Chan {
    type Item = std::io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// `n` chunks of `size` bytes, chunk `i` filled with a pattern of its own,
/// a pause of `pause` before each; an `io::Error` instead of chunk
/// `fail_at`. Returns the stream and the bytes it sends in full.
fn chunks(n: usize, size: usize, pause: Duration, fail_at: Option<usize>) -> (Chan, Vec<u8>) {
    let all: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            (0..size)
                .map(|j| (i * 7 + j * 13 + j / 251) as u8)
                .collect()
        })
        .collect();
    let whole = all.concat();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        for (i, c) in all.into_iter().enumerate() {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let item = if fail_at == Some(i) {
                Err(std::io::Error::other("disk on fire"))
            } else {
                Ok(Bytes::from(c))
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    (Chan(rx), whole)
}

/// put_stream, put_file and put_reader: multi-chunk bodies arrive whole,
/// over HTTP/1.1 (chunked) and HTTP/2; a body cut by an error leaves the
/// old content (and no temporary file); the timeout does not cut a slow
/// body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_whole_file_uploads() {
    let (t, _srv) = axum_local().await;
    for h2 in [false, true] {
        let c = Client::builder(&format!("http://{}/fs", t.addr))
            .http2_prior_knowledge(h2)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let name = format!("big{}", u8::from(h2));
        let path = format!("/{name}");
        // 64 chunks of 64 KiB, distinct.
        let (s, whole) = chunks(64, 64 * 1024, Duration::ZERO, None);
        c.put_stream(path.as_bytes(), s)
            .await
            .unwrap_or_else(|e| panic!("h2 {h2}: {e}"));
        assert!(t.store.read(&name) == Some(whole.clone()), "h2 {h2}");
        // Replacing it.
        let (s, whole2) = chunks(3, 100_000, Duration::ZERO, None);
        c.put_stream(path.as_bytes(), s)
            .await
            .unwrap_or_else(|e| panic!("h2 {h2}: {e}"));
        assert!(t.store.read(&name) == Some(whole2.clone()), "h2 {h2}");
        // Cut by an io::Error after 5 chunks: EIO, the old content stays.
        let (s, _) = chunks(20, 64 * 1024, Duration::ZERO, Some(5));
        assert_eq!(
            c.put_stream(path.as_bytes(), s).await,
            Err(Errno::EIO),
            "h2 {h2}"
        );
        assert!(t.store.read(&name) == Some(whole2.clone()), "h2 {h2}");
        // The same client goes on.
        let st = c
            .getattr(path.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.size, 300_000);
        // A missing directory: the server's errno.
        let (s, _) = chunks(2, 10, Duration::ZERO, None);
        assert_eq!(c.put_stream(b"/nodir/f", s).await, Err(Errno::ENOENT));
    }
    // No temporary file left by the aborted uploads (removed on the
    // server's blocking pool: give it a moment).
    let mut names = Vec::new();
    for _ in 0..50 {
        names = t.store.list("").unwrap_or_default();
        if names.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(names, vec![b"big0".to_vec(), b"big1".to_vec()]);

    // A slow body (1.2 s) with a 300 ms timeout: the timeout bounds the
    // connection and the answer, not the body.
    let c = Client::builder(&format!("http://{}/fs", t.addr))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (s, whole) = chunks(6, 1000, Duration::from_millis(200), None);
    c.put_stream(b"/slow", s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.store.read("slow") == Some(whole));

    // put_file and put_reader.
    let local = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(local.path(), &data).unwrap_or_else(|e| panic!("{e}"));
    let f = tokio::fs::File::open(local.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.put_file(b"/fromfile", f)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.store.read("fromfile") == Some(data));
    c.put_reader(b"/fromreader", &b"a reader"[..])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.read("fromreader"), Some(b"a reader".to_vec()));
}

/// write_stream: ranged writes of exactly `len` bytes, in place; a stream
/// that yields fewer or more bytes fails with EINVAL (and, for a body the
/// server reads whole first, writes nothing), an io::Error with EIO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_ranged_writes() {
    let (t, _srv) = axum_local().await;
    let orig: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    for h2 in [false, true] {
        let c = Client::builder(&format!("http://{}/fs", t.addr))
            .http2_prior_knowledge(h2)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        // A file of its own per protocol: the server may still be writing
        // the chunks it received of the last iteration's cut-short PUT
        // after the client has seen that call fail.
        let (name, path) = if h2 {
            ("w2", &b"/w2"[..])
        } else {
            ("w1", &b"/w1"[..])
        };
        t.store.write(name, &orig);
        // Small (read whole by the server) and large (streamed to the
        // file), at offsets inside and past the end.
        let mut expect = orig.clone();
        for (offset, n, size) in [
            (1000usize, 3, 10_000),
            (123_457, 60, 10_000),
            (1_990_000, 5, 7),
        ] {
            let (s, data) = chunks(n, size, Duration::ZERO, None);
            c.write_stream(path, offset as u64, data.len() as u64, s)
                .await
                .unwrap_or_else(|e| panic!("h2 {h2} at {offset}: {e}"));
            if expect.len() < offset + data.len() {
                expect.resize(offset + data.len(), 0);
            }
            expect[offset..offset + data.len()].copy_from_slice(&data);
            assert!(
                t.store.read(name) == Some(expect.clone()),
                "h2 {h2} at {offset}"
            );
        }
        // Fewer bytes than announced, then more: EINVAL, nothing written.
        let (s, _) = chunks(5, 10_000, Duration::ZERO, None);
        assert_eq!(c.write_stream(path, 0, 50_001, s).await, Err(Errno::EINVAL));
        let (s, _) = chunks(5, 10_000, Duration::ZERO, None);
        assert_eq!(c.write_stream(path, 0, 49_999, s).await, Err(Errno::EINVAL));
        let (s, _) = chunks(5, 10_000, Duration::ZERO, None);
        assert_eq!(c.write_stream(path, 0, 40_000, s).await, Err(Errno::EINVAL));
        // An io::Error: EIO.
        let (s, _) = chunks(5, 10_000, Duration::ZERO, Some(2));
        assert_eq!(c.write_stream(path, 0, 50_000, s).await, Err(Errno::EIO));
        assert!(
            t.store.read(name) == Some(expect.clone()),
            "h2 {h2}: unchanged"
        );
        // Cut short past one server chunk: the call fails (the server
        // may have written part of it).
        let (s, _) = chunks(10, 64 * 1024, Duration::ZERO, None);
        assert_eq!(
            c.write_stream(path, 0, 11 * 64 * 1024, s).await,
            Err(Errno::EINVAL)
        );
        // Zero bytes: nothing sent; a non-empty stream for it: EINVAL.
        let (s, _) = chunks(0, 1, Duration::ZERO, None);
        assert_eq!(c.write_stream(path, 5, 0, s).await, Ok(()));
        let (s, _) = chunks(1, 1, Duration::ZERO, None);
        assert_eq!(c.write_stream(path, 5, 0, s).await, Err(Errno::EINVAL));
        // A missing file: the server's errno; the client goes on.
        let (s, _) = chunks(1, 10, Duration::ZERO, None);
        assert_eq!(
            c.write_stream(b"/missing", 0, 10, s).await,
            Err(Errno::ENOENT)
        );
        assert!(c.getattr(path).await.is_ok());
    }
}
