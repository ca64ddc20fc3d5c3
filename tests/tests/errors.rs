//! Errors that say what happened, over real HTTP: `Client::check` fails
//! with an `Error` whose kind, one-line message, errno and source chain
//! name the cause (a closed port, `https://` to a plain HTTP server, a
//! certificate not trusted, 401, a proxy's 502, no SpockFS server at the
//! URL, no answer in time), and the `spockfs-mount` binary prints that
//! cause in one line, never the URL's password.
//!
//! The binary fails before mounting here, but it checks that it could
//! mount (`/dev/fuse`, `fusermount3`) before any network round trip: the
//! binary tests need that much, and print why and pass without it, except
//! under `CI=true`, where they fail. They need `target/<profile>/spockfs-mount`
//! (`cargo build --release -p spockfs-mount`).

use spockfs_client::{Client, Errno, ErrorKind};
use spockfs_tests::procs::ci;
use spockfs_tests::{axum_args, start_axum, Running};
use std::error::Error as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
}

/// An HTTP server answering every request with `answer` (then closing the
/// connection); `None`: accepting connections and never answering.
async fn canned(answer: Option<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let Some(answer) = answer else {
                held.push(s);
                continue;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

const BAD_GATEWAY: &str =
    "HTTP/1.1 502 Bad Gateway\r\nServer: nginx\r\nContent-Type: text/html\r\n\
                           Content-Length: 11\r\nConnection: close\r\n\r\nBad Gateway";
const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\
                         Content-Length: 9\r\nConnection: close\r\n\r\nNot Found";
const WEB_PAGE: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nAllow: GET, HEAD\r\n\
                        Content-Length: 6\r\nConnection: close\r\n\r\n<html>";

/// A self-signed certificate for `localhost` whose subject (and issuer) is
/// `CN=name`: (cert PEM path, key PEM path).
fn cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&k, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    (c, k)
}

/// The axum app serving `dir/data` at `/fs`, over TLS with `tls`, with
/// basic auth for `alice:right` if `auth`.
async fn axum(dir: &Path, tls: Option<(PathBuf, PathBuf)>, auth: bool) -> (SocketAddr, Running) {
    let mut a = axum_args(&dir.join("data"));
    if let Some((c, k)) = tls {
        a.tls_cert = Some(c);
        a.tls_key = Some(k);
    }
    if auth {
        let pw = dir.join("htpasswd");
        std::fs::write(
            &pw,
            format!("alice:{}\n", bcrypt::hash("right", 4).unwrap_or_default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        a.htpasswd = Some(pw);
    }
    start_axum(a).await
}

fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn check_err(c: &Client) -> spockfs_client::Error {
    match c.check().await {
        Ok(st) => panic!("check passed: {st:?}"),
        Err(e) => e,
    }
}

/// The error's sources, outermost first, as `Display` strings.
fn sources(e: &spockfs_client::Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_server_passes_the_check_and_its_extensions_are_learnt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (addr, _srv) = axum(dir.path(), None, false).await;
    let c = client(&format!("http://{addr}/fs"));
    assert_eq!(c.known_extensions(), None);
    let root = c.check().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(root.mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(c.known_extensions().is_some_and(|e| e.errno && e.stat));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_connection_refused() {
    let c = client(&format!("http://127.0.0.1:{}/fs", closed_port()));
    let e = check_err(&c).await;
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(e.to_string(), "connection refused (is the server running?)");
    assert_eq!(e.errno(), Errno::EIO);
    assert_eq!(e.status(), None);
    // The cause, through source(): hyper's connect error, down to the
    // io::Error.
    let hyper = e
        .source()
        .and_then(|s| s.downcast_ref::<hyper_util::client::legacy::Error>())
        .unwrap_or_else(|| panic!("no hyper error in {e:?}"));
    assert!(hyper.is_connect(), "{hyper:?}");
    let mut io_kinds = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kinds.push(io.kind());
        }
        cur = s.source();
    }
    assert_eq!(io_kinds, [std::io::ErrorKind::ConnectionRefused]);
    assert_eq!(
        e.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    // The per-operation calls still report an errno.
    assert_eq!(c.getattr(b"/").await, Err(Errno::EIO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_server_is_a_tls_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (addr, _srv) = axum(dir.path(), None, false).await;
    let e = check_err(&client(&format!("https://{addr}/fs"))).await;
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert_eq!(
        e.to_string(),
        "TLS handshake failed: received corrupt message of type InvalidContentType \
         (is it a plain http:// server?)"
    );
    assert!(
        matches!(e.tls_error(), Some(rustls::Error::InvalidMessage(_))),
        "{e:?}"
    );
    assert_eq!(e.errno(), Errno::EIO);
    let chain = sources(&e);
    assert!(
        chain.iter().any(|s| s.contains("InvalidContentType")),
        "rustls' reason in the source chain: {chain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_signed_by_a_trusted_ca_is_untrusted() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let served = cert(dir.path(), "served");
    let (other, _) = cert(dir.path(), "other");
    let (addr, _srv) = axum(dir.path(), Some(served.clone()), false).await;
    let url = format!("https://localhost:{}/fs", addr.port());
    let wrong_ca = Client::builder(&url)
        .ca_file(&other)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let e = check_err(&wrong_ca).await;
    assert_eq!(e.kind(), ErrorKind::UntrustedCertificate, "{e}");
    assert_eq!(
        e.to_string(),
        "TLS: server certificate not trusted: invalid peer certificate: UnknownIssuer \
         (not signed by a trusted CA)"
    );
    assert!(
        matches!(
            e.tls_error(),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{e:?}"
    );
    assert_eq!(e.errno(), Errno::EIO);
    // Another CA of the same name: webpki finds it as the issuer, and the
    // signature does not match.
    let twin_dir = dir.path().join("twin");
    std::fs::create_dir(&twin_dir).unwrap_or_else(|e| panic!("{e}"));
    let (twin, _) = cert(&twin_dir, "served");
    let twin_ca = Client::builder(&url)
        .ca_file(&twin)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let e = check_err(&twin_ca).await;
    assert_eq!(e.kind(), ErrorKind::UntrustedCertificate, "{e}");
    assert_eq!(
        e.to_string(),
        "TLS: server certificate not trusted: invalid peer certificate: BadSignature \
         (not signed by a trusted CA)"
    );
    // The same server with its own certificate trusted.
    let right_ca = Client::builder(&url)
        .ca_file(&served.0)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    right_ca.check().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_401() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (addr, _srv) = axum(dir.path(), None, true).await;
    for auth in ["alice:wrong@", ""] {
        let e = check_err(&client(&format!("http://{auth}{addr}/fs"))).await;
        assert_eq!(e.kind(), ErrorKind::Status, "{e}");
        assert_eq!(
            e.to_string(),
            "HTTP 401 Unauthorized: wrong or missing credentials"
        );
        assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
        assert_eq!(e.errno(), Errno::EIO);
    }
    client(&format!("http://alice:right@{addr}/fs"))
        .check()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_502_says_the_server_behind_it_is_down() {
    let (addr, _task) = canned(Some(BAD_GATEWAY)).await;
    let e = check_err(&client(&format!("http://{addr}/fs"))).await;
    assert_eq!(e.kind(), ErrorKind::Status, "{e}");
    assert_eq!(
        e.to_string(),
        "HTTP 502 Bad Gateway from a proxy: the SpockFS server behind it is down?"
    );
    assert_eq!(e.status().map(|s| s.as_u16()), Some(502));
    assert_eq!(e.errno(), Errno::EIO);
    assert!(e.source().is_none(), "no X-Spock-errno, no source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_a_spockfs_server_says_so() {
    let (addr, _task) = canned(Some(NOT_FOUND)).await;
    let e = check_err(&client(&format!("http://{addr}/fs"))).await;
    assert_eq!(e.kind(), ErrorKind::NotSpockFs, "{e}");
    assert_eq!(
        e.to_string(),
        "no SpockFS server at this URL (GETATTR / answered HTTP 404 Not Found; \
         is the path prefix right, e.g. /fs?)"
    );
    assert_eq!(e.errno(), Errno::ENOENT);
    // The axum app, with a wrong prefix.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (addr, _srv) = axum(dir.path(), None, false).await;
    let e = check_err(&client(&format!("http://{addr}/wrong"))).await;
    assert_eq!(e.kind(), ErrorKind::NotSpockFs, "{e}");
    assert_eq!(
        e.to_string(),
        "no SpockFS server at this URL (GETATTR / answered HTTP 404 Not Found; \
         is the path prefix right, e.g. /fs?)"
    );
    // A web server answering 200 to everything.
    let (addr, _task) = canned(Some(WEB_PAGE)).await;
    let e = check_err(&client(&format!("http://{addr}/fs"))).await;
    assert_eq!(e.kind(), ErrorKind::NotSpockFs, "{e}");
    assert_eq!(
        e.to_string(),
        "no SpockFS server at this URL (GETATTR / answered HTTP 200 without X-Spock-mode; \
         is the path prefix right, e.g. /fs?)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out() {
    let (addr, _task) = canned(None).await;
    let c = Client::builder(&format!("http://{addr}/fs"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let e = check_err(&c).await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(e.to_string(), "no answer within 300ms (timed out)");
    assert_eq!(e.errno(), Errno::EIO);
}

// ---- The spockfs-mount binary ----------------------------------------

/// `target/<profile>/spockfs-mount`, next to this test's executable.
fn mount_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("spockfs-mount"))
        .unwrap_or_else(|| panic!("odd test path {}", exe.display()));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p spockfs-mount` (same profile and \
         target dir as the tests) first",
        bin.display()
    );
    bin
}

/// A mount point in `dir`, if this machine lets spockfs-mount get as far
/// as its server check (it checks /dev/fuse and fusermount3 first).
fn mount_point(dir: &Path) -> Option<PathBuf> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap_or_else(|e| panic!("{e}"));
    let mnt = mnt.canonicalize().unwrap_or_else(|e| panic!("{e}"));
    match spockfs_mount::check_can_mount(&mnt) {
        Ok(()) => Some(mnt),
        Err(e) => {
            assert!(
                !ci(),
                "spockfs-mount cannot mount here ({e}): required under CI=true"
            );
            eprintln!("SKIPPED: spockfs-mount cannot mount here: {e}");
            None
        }
    }
}

/// Runs spockfs-mount (`extra` flags, `url`, `mnt`), in the foreground and
/// in background mode (where the waiting parent prints the child's
/// error): both must fail with status 1, nothing on stdout, exactly `want`
/// on stderr, and never the password `s3cret`.
async fn mount_fails_with(extra: &[&str], url: &str, mnt: &Path, want: &str) {
    for fg in [true, false] {
        let mut cmd = Command::new(mount_binary());
        cmd.env_remove("RUST_LOG").args(extra);
        if fg {
            cmd.arg("--foreground");
        }
        cmd.arg(url).arg(mnt);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("spockfs-mount: {e}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "foreground {fg}: {stderr}");
        assert_eq!(stderr, format!("{want}\n"), "foreground {fg}");
        assert_eq!(stdout, "", "foreground {fg}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "password shown: {stdout}{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_connection_refused_without_the_password() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(mnt) = mount_point(dir.path()) else {
        return;
    };
    let port = closed_port();
    mount_fails_with(
        &[],
        &format!("http://alice:s3cret@127.0.0.1:{port}/fs"),
        &mnt,
        &format!(
            "spockfs-mount: cannot mount http://alice:***@127.0.0.1:{port}/fs: \
             connection refused (is the server running?)"
        ),
    )
    .await;
    // A URL that does not parse is shown without its password either.
    mount_fails_with(
        &[],
        "ftp://alice:s3cret@127.0.0.1/fs",
        &mnt,
        "spockfs-mount: bad SpockFS URL \"ftp://alice:***@127.0.0.1/fs\": \
         scheme must be http or https",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_401_without_the_password() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(mnt) = mount_point(dir.path()) else {
        return;
    };
    let (addr, _srv) = axum(dir.path(), None, true).await;
    mount_fails_with(
        &[],
        &format!("http://alice:s3cret@{addr}/fs"),
        &mnt,
        &format!(
            "spockfs-mount: cannot mount http://alice:***@{addr}/fs: \
             HTTP 401 Unauthorized: wrong or missing credentials"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_what_went_wrong_with_tls() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(mnt) = mount_point(dir.path()) else {
        return;
    };
    let (plain, _srv) = axum(dir.path(), None, false).await;
    mount_fails_with(
        &[],
        &format!("https://alice:s3cret@{plain}/fs"),
        &mnt,
        &format!(
            "spockfs-mount: cannot mount https://alice:***@{plain}/fs: TLS handshake failed: \
             received corrupt message of type InvalidContentType (is it a plain http:// server?)"
        ),
    )
    .await;
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap_or_else(|e| panic!("{e}"));
    let served = cert(&tls_dir, "served");
    let (other, _) = cert(&tls_dir, "other");
    let (addr, _tls) = axum(&tls_dir, Some(served), false).await;
    let url = format!("https://localhost:{}/fs", addr.port());
    let other = other.to_string_lossy().into_owned();
    mount_fails_with(
        &["--ca-file", &other],
        &url,
        &mnt,
        &format!(
            "spockfs-mount: cannot mount {url}: TLS: server certificate not trusted: \
             invalid peer certificate: UnknownIssuer (not signed by a trusted CA); \
             trust its CA with --ca-file"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_502_and_not_spockfs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(mnt) = mount_point(dir.path()) else {
        return;
    };
    let (proxy, _p) = canned(Some(BAD_GATEWAY)).await;
    mount_fails_with(
        &[],
        &format!("http://{proxy}/fs"),
        &mnt,
        &format!(
            "spockfs-mount: cannot mount http://{proxy}/fs: HTTP 502 Bad Gateway from a \
             proxy: the SpockFS server behind it is down?"
        ),
    )
    .await;
    let (srv, _s) = axum(dir.path(), None, false).await;
    mount_fails_with(
        &[],
        &format!("http://{srv}/"),
        &mnt,
        &format!(
            "spockfs-mount: cannot mount http://{srv}/: no SpockFS server at this URL \
             (GETATTR / answered HTTP 404 Not Found; is the path prefix right, e.g. /fs?)"
        ),
    )
    .await;
}

/// `--debug` logs each SpockFS call (method, path, status, errno,
/// duration), without colours when stderr is not a terminal, and without
/// the password; the last line is still the one-line cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_each_call_with_debug() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(mnt) = mount_point(dir.path()) else {
        return;
    };
    let (addr, _srv) = axum(dir.path(), None, true).await;
    let url = format!("http://alice:s3cret@{addr}/fs");
    let mut cmd = Command::new(mount_binary());
    cmd.env_remove("RUST_LOG")
        .arg("--debug")
        .arg(&url)
        .arg(&mnt);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("spockfs-mount: {e}"));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("s3cret"), "password shown: {all}");
    assert!(
        !all.contains('\x1b'),
        "ANSI escapes off a terminal: {all:?}"
    );
    let call = all
        .lines()
        .find(|l| l.contains("SpockFS call") && l.contains("method=\"OPTIONS\""))
        .unwrap_or_else(|| panic!("no OPTIONS call logged: {all}"));
    for field in ["DEBUG", "path=/", "status=401", "errno=EIO", "ms="] {
        assert!(call.contains(field), "{field} missing: {call}");
    }
    assert_eq!(
        all.lines().last(),
        Some(
            format!(
                "spockfs-mount: cannot mount http://alice:***@{addr}/fs: \
                 HTTP 401 Unauthorized: wrong or missing credentials"
            )
            .as_str()
        ),
        "{all}"
    );
    // A failed connection is logged with its cause.
    let url = format!("http://alice:s3cret@127.0.0.1:{}/fs", closed_port());
    let mut cmd = Command::new(mount_binary());
    cmd.env_remove("RUST_LOG")
        .arg("--debug")
        .arg(&url)
        .arg(&mnt);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("spockfs-mount: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("s3cret"), "password shown: {err}");
    assert!(
        err.lines().any(|l| l.contains("SpockFS call failed")
            && l.contains("errno=EIO")
            && l.contains("connection refused")),
        "{err}"
    );
}
