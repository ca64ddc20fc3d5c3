//! The example server end to end: flags, basic auth, HTTPS with HTTP/2,
//! graceful shutdown of the real binary, and flat memory while streaming
//! 2 GiB each way.

use axum_app::{serve, Args};
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Flags serving `root`, which is created here (an explicit `--root` must
/// exist).
fn args(root: &Path, extra: &[&str]) -> Args {
    std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("{e}"));
    let mut v = vec!["axum-app", "--root"];
    let r = root.to_str().unwrap_or_else(|| panic!("non-UTF-8 tempdir"));
    v.push(r);
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

async fn start(
    a: Args,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        serve(a, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
    (addr, tx, task)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn call(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(
            b.body(Full::new(Bytes::from_static(body)))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (p, body) = resp.into_parts();
    (
        p.status,
        p.headers,
        body.collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes(),
    )
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_htpasswd() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("data");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("s3cret", 5).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap_or_else(|e| panic!("{e}"));
    let (addr, _stop, _t) = start(args(
        &root,
        &["--htpasswd", htpasswd.to_str().unwrap_or_default()],
    ))
    .await;
    let c = client();
    let url = format!("http://{addr}/fs/d");
    let mode = ("X-Spock-mode", "493");
    let (s, h, _) = call(&c, "MKDIR", &url, &[mode], b"").await;
    assert_eq!(s, 401);
    assert!(h
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic realm=")));
    for (u, p) in [("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")] {
        let (s, _, _) = call(
            &c,
            "MKDIR",
            &url,
            &[mode, ("Authorization", &basic(u, p))],
            b"",
        )
        .await;
        assert_eq!(s, 401, "{u}:{p}");
    }
    let (s, _, _) = call(
        &c,
        "MKDIR",
        &url,
        &[mode, ("Authorization", "Basic !!notbase64")],
        b"",
    )
    .await;
    assert_eq!(s, 401);
    assert!(
        !root.join("d").exists(),
        "an unauthenticated request reached the filesystem"
    );
    let good = basic("alice", "s3cret");
    let (s, _, _) = call(&c, "MKDIR", &url, &[mode, ("Authorization", &good)], b"").await;
    assert_eq!(s, 201);
    // Cached credentials: many requests, all fast.
    let t0 = Instant::now();
    for _ in 0..50 {
        let (s, _, _) = call(&c, "GETATTR", &url, &[("Authorization", &good)], b"").await;
        assert_eq!(s, 200);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bcrypt on every request?"
    );
    assert!(root.join("d").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_vhost_read_only_prefix() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (root, other) = (dir.path().join("data"), dir.path().join("other"));
    std::fs::create_dir(&other).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(other.join("x"), b"other").unwrap_or_else(|e| panic!("{e}"));
    let vh = format!("files.test={}", other.display());
    let (addr, _stop, _t) = start(args(
        &root,
        &["--vhost", &vh, "--read-only", "--prefix", "/"],
    ))
    .await;
    let c = client();
    let (s, _, b) = call(
        &c,
        "GET",
        &format!("http://{addr}/x"),
        &[("Host", "files.test")],
        b"",
    )
    .await;
    assert_eq!((s.as_u16(), &b[..]), (200, &b"other"[..]));
    let (s, h, _) = call(
        &c,
        "DELETE",
        &format!("http://{addr}/x"),
        &[("Host", "files.test")],
        b"",
    )
    .await;
    assert_eq!(
        (
            s.as_u16(),
            h.get("x-spock-errno").and_then(|v| v.to_str().ok())
        ),
        (403, Some("EROFS"))
    );
    let (s, _, _) = call(&c, "GET", &format!("http://{addr}/x"), &[], b"").await;
    assert_eq!(s, 404, "default root does not have x");
    assert!(other.join("x").exists());
    // A missing vhost root is a start-up error, not a runtime surprise.
    let bad = format!("nope.test={}", dir.path().join("missing").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = serve(args(&root, &["--vhost", &bad]), listener, async {}).await;
    assert!(r.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http11() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("data");
    let (addr, _stop, _t) = start(args(
        &root,
        &[
            "--tls-cert",
            cert.to_str().unwrap_or_default(),
            "--tls-key",
            key.to_str().unwrap_or_default(),
        ],
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ck.cert.der().clone())
        .unwrap_or_else(|e| panic!("{e}"));
    for (alpn, want) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name =
            rustls::pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = hyper_util::rt::TokioIo::new(tls);
        let path = format!("https://localhost:{}/fs/f{}", addr.port(), alpn.len());
        let mk = |m: &str, hs: &[(&str, &str)], body: &'static [u8]| {
            let mut b = Request::builder().method(m).uri(&path);
            if want == http::Version::HTTP_11 {
                b = b.header("host", "localhost");
            }
            for (k, v) in hs {
                b = b.header(*k, *v);
            }
            b.version(want)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let reqs = [
            mk("PUT", &[], b"over tls"),
            mk("GET", &[("Range", "bytes=5-7")], b""),
            mk("GETATTR", &[], b""),
        ];
        let mut got = Vec::new();
        if want == http::Version::HTTP_2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(conn);
            for req in reqs {
                let r = send
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let (p, b) = r.into_parts();
                got.push((
                    p.status.as_u16(),
                    p.version,
                    b.collect()
                        .await
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_bytes(),
                ));
            }
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(conn);
            for req in reqs {
                send.ready().await.unwrap_or_else(|e| panic!("{e}"));
                let r = send
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let (p, b) = r.into_parts();
                got.push((
                    p.status.as_u16(),
                    p.version,
                    b.collect()
                        .await
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_bytes(),
                ));
            }
        }
        let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
        assert_eq!(statuses, vec![201, 206, 200], "{want:?}");
        assert!(got.iter().all(|r| r.1 == want));
        assert_eq!(&got[1].2[..], b"tls");
        assert_eq!(
            std::fs::read(root.join(format!("f{}", alpn.len()))).unwrap_or_default(),
            b"over tls"
        );
    }
}

/// The real binary: prints the mount URL and how to mount it, and exits
/// cleanly on SIGTERM.
#[test]
fn binary_prints_url_and_stops_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    std::fs::create_dir(dir.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_axum-app"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("stdout")));
    let mut line = String::new();
    out.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/fs")),
        "banner: {line}"
    );
    // How to mount it: this project's client, then the original one.
    for client in ["spockfs-mount", "the original C client: spockfs"] {
        line.clear();
        out.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            line.contains(&format!("{client} http://127.0.0.1:{port}/fs /mnt/spockfs")),
            "banner: {line}"
        );
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A request body of `len` bytes made on the fly: byte i is a function of
/// i, so the GET can be checked without keeping anything in memory.
struct Pattern {
    sent: u64,
    len: u64,
}

const BLOCK: usize = 1 << 20;

fn pattern_byte(i: u64) -> u8 {
    ((i / 4096) as u8) ^ (i as u8).wrapping_mul(31)
}

fn pattern_chunk(off: u64, n: usize) -> Bytes {
    Bytes::from(
        (0..n as u64)
            .map(|k| pattern_byte(off + k))
            .collect::<Vec<u8>>(),
    )
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(BLOCK as u64) as usize;
        let chunk = pattern_chunk(self.sent, n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len - self.sent)
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// 2 GiB PUT then 2 GiB GET through the real binary: peak RSS stays under
/// 64 MiB (SPOCKFS_MEM_BYTES overrides the size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_2gib_keeps_memory_flat() {
    let len: u64 = std::env::var("SPOCKFS_MEM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let child = spawn_app(
        env!("CARGO_BIN_EXE_axum-app"),
        port,
        &dir.path().join("data"),
    );
    let pid = child.0.id();
    let url = format!("http://127.0.0.1:{port}/fs/big");
    let c: hyper_util::client::legacy::Client<_, Pattern> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let t0 = Instant::now();
    let resp = loop {
        let req = Request::builder()
            .method("PUT")
            .uri(&url)
            .body(Pattern { sent: 0, len })
            .unwrap_or_else(|e| panic!("{e}"));
        match c.request(req).await {
            Ok(r) => break r,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("PUT: {e}"),
        }
    };
    assert_eq!(resp.status(), 201);
    let put_secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        std::fs::metadata(dir.path().join("data/big"))
            .map(|m| m.len())
            .unwrap_or(0),
        len
    );
    let hwm_after_put = vm_hwm_kib(pid);

    let g: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let t1 = Instant::now();
    let resp = g
        .request(
            Request::builder()
                .uri(&url)
                .body(Empty::new())
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("GET: {e}"));
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut off = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("GET body: {e}"));
        if let Ok(data) = frame.into_data() {
            let want = pattern_chunk(off, data.len());
            assert!(data == want, "GET content differs near offset {off}");
            off += data.len() as u64;
        }
    }
    assert_eq!(off, len);
    let get_secs = t1.elapsed().as_secs_f64();
    let hwm = vm_hwm_kib(pid);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "memory: {:.0} MiB PUT in {put_secs:.1} s ({:.0} MB/s), GET in {get_secs:.1} s ({:.0} MB/s); server peak RSS {:.1} MiB after PUT, {:.1} MiB after GET",
        mib(len),
        len as f64 / put_secs / 1e6,
        len as f64 / get_secs / 1e6,
        hwm_after_put as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    assert!(hwm < 64 * 1024, "server peak RSS {hwm} KiB >= 64 MiB");
}

/// READDIR of a directory of 200,000 names (SPOCKFS_READDIR_NAMES
/// overrides), plain and readdir-attrs, through the real binary: the
/// listing streams in batches, so the server's peak RSS stays flat: less
/// than 24 MiB above what it was before the listings (measured: ~+6 MiB
/// plain, ~+12 MiB attrs, the same for 100k or 400k names; the buffering
/// server before streaming went +24 and +55 MiB at 200k names).
/// SPOCKFS_AXUM_BIN runs another build of the server (e.g. one from before
/// streaming, to compare).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_200k_names_keeps_memory_flat() {
    let n: usize = std::env::var("SPOCKFS_READDIR_NAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let bin = std::env::var("SPOCKFS_AXUM_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_axum-app").to_owned());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let big = dir.path().join("data/big");
    std::fs::create_dir_all(&big).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    for i in 0..n {
        std::fs::File::create(big.join(format!("a-fairly-ordinary-file-name-{i:08}.txt")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("created {n} files in {:.1} s", t.elapsed().as_secs_f64());
    let port = free_port();
    let child = spawn_app(&bin, port, &dir.path().join("data"));
    let pid = child.0.id();
    let c: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = |method: &str, attrs: bool| {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}/fs/big"));
        if attrs {
            b = b.header("x-spock-readdir", "attrs");
        }
        b.body(Empty::new()).unwrap_or_else(|e| panic!("{e}"))
    };
    let t0 = Instant::now();
    loop {
        match c.request(req("GETATTR", false)).await {
            Ok(r) if r.status() == 200 => break,
            _ if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => panic!("server did not start: {r:?}"),
        }
    }
    let baseline = vm_hwm_kib(pid);
    let mut report = Vec::new();
    for attrs in [false, true] {
        let t = Instant::now();
        let resp = c
            .request(req("READDIR", attrs))
            .await
            .unwrap_or_else(|e| panic!("READDIR: {e}"));
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut lines, mut bytes) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("READDIR body: {e}"));
            if let Ok(data) = frame.into_data() {
                lines += data.iter().filter(|&&b| b == b'\n').count();
                bytes += data.len();
            }
        }
        assert_eq!(lines, if attrs { n } else { n + 2 }, "attrs: {attrs}");
        report.push(format!(
            "{} {:.1} MiB in {:.2} s, peak RSS then {:.1} MiB",
            if attrs { "attrs" } else { "plain" },
            bytes as f64 / (1 << 20) as f64,
            t.elapsed().as_secs_f64(),
            vm_hwm_kib(pid) as f64 / 1024.0
        ));
    }
    let hwm = vm_hwm_kib(pid);
    eprintln!(
        "READDIR of {n} names: server peak RSS {:.1} MiB before, {}",
        baseline as f64 / 1024.0,
        report.join("; ")
    );
    assert!(
        hwm < baseline + 24 * 1024,
        "server peak RSS {hwm} KiB, {} KiB over its {baseline} KiB before the listings",
        hwm - baseline
    );
}

/// The server binary, quiet, killed (SIGKILL, by PID) and reaped on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_app(bin: &str, port: u16, root: &std::path::Path) -> Kill {
    std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("{e}"));
    let child = std::process::Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    Kill(child)
}

/// Runs the binary with `args`, expecting it to exit on its own within
/// 10 s (it is killed, by PID, and the test fails otherwise); returns the
/// exit code, stdout and stderr.
fn run_to_exit(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_axum-app"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("axum-app {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap_or_else(|e| panic!("{e}"));
    }
    (status.code(), out, err)
}

/// The real binary as a tool: `--version`; every setting checked before
/// the banner (a bad one is one line on stderr, exit status 1, nothing on
/// stdout); an explicit `--root` is never created; the banner names
/// spockfs-mount.
#[test]
fn binary_checks_every_setting_before_its_banner() {
    use std::ffi::OsStr;
    let (code, out, _) = run_to_exit(&[OsStr::new("--version")]);
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("axum-app {}\n", env!("CARGO_PKG_VERSION")));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.path().join("missing");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
    let listen = format!("127.0.0.1:{}", free_port());
    let failing: [(Vec<&OsStr>, String); 3] = [
        (
            vec![OsStr::new("--root"), missing.as_os_str()],
            format!(
                "axum-app: --root {}: no such directory (create it first: only the \
                 default ./data is created)\n",
                missing.display()
            ),
        ),
        (
            vec![OsStr::new("--root"), file.as_os_str()],
            format!("axum-app: --root {}: not a directory\n", file.display()),
        ),
        // A setting checked only once the server was built (the old binary
        // announced itself first).
        (
            vec![
                OsStr::new("--root"),
                dir.path().as_os_str(),
                OsStr::new("--htpasswd"),
                missing.as_os_str(),
            ],
            format!("axum-app: htpasswd: {}: ", missing.display()),
        ),
    ];
    for (extra, want) in failing {
        let mut a = vec![OsStr::new("--listen"), OsStr::new(&listen)];
        a.extend(extra);
        let (code, out, err) = run_to_exit(&a);
        assert_eq!(code, Some(1), "{a:?}: {err}");
        assert_eq!(out, "", "{a:?}: no banner");
        assert!(err.starts_with(&want), "{a:?}: {err:?}, want {want:?}");
        assert_eq!(err.lines().count(), 1, "{a:?}: one line: {err:?}");
    }
    assert!(!missing.exists(), "an explicit --root is not created");
}
