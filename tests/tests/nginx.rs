//! nginx in front of SpockFS: `deploy/nginx.conf` run as is by the system's
//! nginx, only its `${SPOCK_*}` placeholders filled in, against both
//! upstreams (the axum app and the Pingora gateway):
//!
//! - no, wrong or unknown credentials: 401, and no request reaches the
//!   upstream (a counting TCP relay sits between nginx and it);
//! - the conformance suite unchanged, over HTTPS and over plain HTTP;
//! - Host with its port, HTTP/1.0 without Host, `X-Remote-User`, a 4 KiB
//!   path percent-encoded, a 4 KiB raw `X-Spock-target`, 100-continue;
//! - 1 GiB PUT then GET over HTTPS, streamed: nothing in nginx's temp dirs
//!   (neither listed nor open in a worker), and the server's (a separate
//!   process) peak RSS under 64 MiB.
//!
//! Skipped when nginx is not installed, except under `CI=true` where that
//! fails. `SPOCKFS_NGINX_BYTES` overrides the 1 GiB.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use spockfs_tests::harness::{Harness, Served, Started};
use spockfs_tests::{
    axum_args, start_axum, suite, tls_client_config, Client, LocalStore, Store, Target,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// nginx

fn nginx_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The nginx binary, or return from the test (a failure under CI=true).
macro_rules! nginx_or_skip {
    () => {
        match nginx_binary() {
            Some(p) => p,
            None => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "nginx is not installed (CI=true): run scripts/test.sh as root, or apt-get install nginx-light"
                );
                eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
                return;
            }
        }
    };
}

/// Every placeholder of deploy/nginx.conf.
const PLACEHOLDERS: [&str; 9] = [
    "SPOCK_USER",
    "SPOCK_RUNDIR",
    "SPOCK_LISTEN_TLS",
    "SPOCK_LISTEN_PLAIN",
    "SPOCK_SERVER_NAME",
    "SPOCK_CERT",
    "SPOCK_KEY",
    "SPOCK_HTPASSWD",
    "SPOCK_UPSTREAM",
];

/// The temp dirs the config puts under the rundir.
const TEMP_DIRS: [&str; 5] = [
    "client_body_temp",
    "proxy_temp",
    "fastcgi_temp",
    "uwsgi_temp",
    "scgi_temp",
];

/// deploy/nginx.conf with exactly `${NAME}` replaced for each known name,
/// as `envsubst '${SPOCK_...} ...'` does; nginx's own `$variables` stay.
fn render_config(values: &[(&str, String)]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf");
    let mut conf = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(values.len(), PLACEHOLDERS.len());
    for (name, value) in values {
        assert!(PLACEHOLDERS.contains(name), "unknown placeholder {name}");
        let pat = format!("${{{name}}}");
        assert!(conf.contains(&pat), "deploy/nginx.conf does not use {pat}");
        conf = conf.replace(&pat, value);
    }
    assert!(
        !conf.contains("${SPOCK_"),
        "placeholder left in deploy/nginx.conf: {}",
        conf.lines().find(|l| l.contains("${SPOCK_")).unwrap_or("")
    );
    conf
}

/// The user the workers run as: `nobody` when we are root (so the test also
/// proves the file permissions work for an unprivileged worker), else
/// ourselves (nginx ignores `user` then, with a warning).
fn worker_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns null or a
    // pointer to a static record, read at once.
    unsafe {
        let uid = libc::geteuid();
        if uid == 0 {
            return "nobody nogroup".into();
        }
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return "nobody".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

use spockfs_tests::free_port;
// SIGTERM (nginx: fast shutdown; the master stops its workers), SIGKILL after 5 s.
use spockfs_tests::procs::stop_child;

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// TLS material: a self-signed certificate for localhost and 127.0.0.1, and
/// a client config trusting only it.
struct Pki {
    cert_pem: String,
    key_pem: String,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ck.cert.der().clone())
        .unwrap_or_else(|e| panic!("{e}"));
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        client: tls_client_config(roots),
    }
}

/// The htpasswd users (bcrypt, cost 5 as `htpasswd -B`).
const USERS: [(&str, &str); 2] = [("alice", "correct horse"), ("bob", "hunter2:x")];

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn alice() -> String {
    basic(USERS[0].0, USERS[0].1)
}

/// nginx running deploy/nginx.conf in its own directory; stopped (by PID)
/// on drop.
struct Nginx {
    child: Child,
    rundir: PathBuf,
    tls: SocketAddr,
    plain: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// On two free ports (retried if a port was taken meanwhile).
    fn start(bin: &Path, upstream: SocketAddr, pki: &Pki) -> Nginx {
        let mut last = String::new();
        for _ in 0..3 {
            match Nginx::try_start(bin, upstream, pki, free_port(), free_port()) {
                Ok(n) => return n,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start:\n{last}");
    }

    fn start_on(bin: &Path, upstream: SocketAddr, pki: &Pki, tls: u16, plain: u16) -> Nginx {
        Nginx::try_start(bin, upstream, pki, tls, plain)
            .unwrap_or_else(|e| panic!("nginx did not start:\n{e}"))
    }

    fn try_start(
        bin: &Path,
        upstream: SocketAddr,
        pki: &Pki,
        tls_port: u16,
        plain_port: u16,
    ) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Workers running as nobody must reach the htpasswd file.
        chmod(dir.path(), 0o755);
        let base = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let rundir = base.join("run");
        std::fs::create_dir(&rundir).unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, htpasswd) = (
            base.join("cert.pem"),
            base.join("key.pem"),
            base.join("htpasswd"),
        );
        std::fs::write(&cert, &pki.cert_pem).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, &pki.key_pem).unwrap_or_else(|e| panic!("{e}"));
        chmod(&key, 0o600); // read by the master only
        let lines: String = USERS
            .iter()
            .map(|(u, p)| {
                let h = bcrypt::hash(p, 5).unwrap_or_else(|e| panic!("{e}"));
                format!("{u}:{h}\n")
            })
            .collect();
        std::fs::write(&htpasswd, lines).unwrap_or_else(|e| panic!("{e}"));
        chmod(&htpasswd, 0o644);
        let s = |p: &Path| {
            p.to_str()
                .unwrap_or_else(|| panic!("non-UTF-8 path"))
                .to_owned()
        };
        let conf = render_config(&[
            ("SPOCK_USER", worker_user()),
            ("SPOCK_RUNDIR", s(&rundir)),
            ("SPOCK_LISTEN_TLS", format!("127.0.0.1:{tls_port}")),
            ("SPOCK_LISTEN_PLAIN", format!("127.0.0.1:{plain_port}")),
            ("SPOCK_SERVER_NAME", "localhost".into()),
            ("SPOCK_CERT", s(&cert)),
            ("SPOCK_KEY", s(&key)),
            ("SPOCK_HTPASSWD", s(&htpasswd)),
            ("SPOCK_UPSTREAM", upstream.to_string()),
        ]);
        let conf_path = base.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("{e}"));
        let out = std::fs::File::create(base.join("nginx.out")).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&rundir)
            .arg("-e")
            .arg(rundir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut n = Nginx {
            child,
            rundir,
            tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            plain: SocketAddr::from(([127, 0, 0, 1], plain_port)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = n.child.try_wait() {
                return Err(format!(
                    "exited with {st}:\n{}{}",
                    std::fs::read_to_string(base.join("nginx.out")).unwrap_or_default(),
                    n.error_log()
                ));
            }
            let up = [n.tls, n.plain]
                .iter()
                .all(|a| std::net::TcpStream::connect(a).is_ok());
            if up && !n.workers().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("not listening after 10 s\n{}", n.error_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in TEMP_DIRS {
            assert!(
                n.rundir.join(d).is_dir(),
                "nginx did not create {d} in the rundir"
            );
        }
        Ok(n)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn workers(&self) -> Vec<u32> {
        workers_of(self.pid())
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.rundir.join("error.log")).unwrap_or_default()
    }

    fn url(&self, https: bool) -> String {
        if https {
            format!("https://{}/fs", self.tls)
        } else {
            format!("http://{}/fs", self.plain)
        }
    }

    /// A client for the HTTPS (or plain) server, sending `auth`.
    fn client(&self, pki: &Pki, https: bool, auth: Option<&str>) -> Client {
        let c = Client::with_tls(&self.url(https), pki.client.clone());
        match auth {
            Some(a) => c.with_auth(a),
            None => c,
        }
    }

    /// The conformance suite's view: the store behind the upstream, reached
    /// through this nginx as alice.
    fn target(&self, pki: &Pki, https: bool, store: Arc<dyn Store>) -> Target {
        Target {
            client: self.client(pki, https, Some(&alice())),
            store,
            addr: if https { self.tls } else { self.plain },
            prefix: "/fs".into(),
            tls: https.then(|| (pki.client.clone(), "localhost".to_owned())),
            auth: Some(alice()),
            _guards: vec![],
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn workers_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Anything nginx has put in its temp dirs: files listed there, and files
/// under them open in a worker (nginx unlinks non-persistent temp files
/// right after creating them, so a listing alone would miss those). Empty
/// means "checked, nothing there".
fn temp_findings(rundir: &Path, master: u32) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(format!("file {}", path.display()));
            }
        }
    }
    for d in TEMP_DIRS {
        walk(&rundir.join(d), &mut out);
    }
    let workers = workers_of(master);
    if workers.is_empty() {
        out.push(format!("no workers found for nginx {master}"));
    }
    for w in workers {
        // An unreadable fd table would hide temp files: that fails too.
        let fds = match std::fs::read_dir(format!("/proc/{w}/fd")) {
            Ok(d) => d,
            Err(e) => {
                out.push(format!("cannot read /proc/{w}/fd: {e}"));
                continue;
            }
        };
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                let in_temp = TEMP_DIRS.iter().any(|d| t.starts_with(rundir.join(d)));
                if in_temp {
                    out.push(format!("worker {w} has {} open", t.display()));
                }
            }
        }
    }
    out
}

/// Samples [`temp_findings`] every 20 ms on a thread until stopped.
struct TempWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, u64)>,
}

impl TempWatch {
    fn start(n: &Nginx) -> TempWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (rundir, pid, flag) = (n.rundir.clone(), n.pid(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut found, mut samples) = (Vec::new(), 0u64);
            while !flag.load(Ordering::Relaxed) {
                for f in temp_findings(&rundir, pid) {
                    if !found.contains(&f) {
                        found.push(f);
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (found, samples)
        });
        TempWatch { stop, thread }
    }

    /// What was seen, and how many samples were taken.
    fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("watcher panicked"))
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

// ---------------------------------------------------------------------------
// upstreams

#[derive(Clone, Copy, Debug)]
enum Upstream {
    Axum,
    Gateway,
}

/// An upstream in this process serving `root` at `/fs` (and `vhost`'s root
/// at `/fs` for that Host, port included).
async fn upstream_in_process(
    kind: Upstream,
    root: &Path,
    vhost: Option<(&str, &Path)>,
) -> (SocketAddr, Box<dyn std::any::Any + Send>) {
    match kind {
        Upstream::Axum => {
            let mut args = axum_args(root);
            if let Some((host, dir)) = vhost {
                args.vhosts.push((host.to_owned(), dir.to_path_buf()));
            }
            let (addr, running) = start_axum(args).await;
            (addr, Box::new(running))
        }
        Upstream::Gateway => {
            let port = free_port();
            let mut toml = format!(
                "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n[server]\nthreads = 2\n\
                 [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n",
                root.display()
            );
            if let Some((host, dir)) = vhost {
                toml.push_str(&format!(
                    "[[vhost]]\nhost = \"{host}\"\nprefix = \"/fs\"\nroot = \"{}\"\n",
                    dir.display()
                ));
            }
            let cfg =
                pingora_gateway::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            let running =
                pingora_gateway::run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
            (SocketAddr::from(([127, 0, 0, 1], port)), Box::new(running))
        }
    }
}

/// A TCP relay to `upstream` counting the connections it accepts.
async fn counting_relay(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, count)
}

/// The server binary next to this test's (`target/<profile>/`).
fn server_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("odd test path {}", exe.display()));
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p axum-app -p pingora-gateway` (with the same profile) first",
        bin.display()
    );
    bin
}

/// A server process, killed (by PID) on drop.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        stop_child(&mut self.0);
    }
}

/// The upstream as a separate process (for its memory figures), serving
/// `root` at `/fs`.
fn upstream_process(kind: Upstream, dir: &Path, root: &Path) -> (SocketAddr, ServerProcess) {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.join("server.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = match kind {
        Upstream::Axum => {
            let mut c = Command::new(server_binary("axum-app"));
            c.arg("--listen")
                .arg(addr.to_string())
                .arg("--root")
                .arg(root);
            c
        }
        Upstream::Gateway => {
            let conf = dir.join("gateway.toml");
            std::fs::write(
                &conf,
                format!(
                    "listen = [{{ addr = \"{addr}\" }}]\n[server]\nthreads = 2\n\
                     [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n",
                    root.display()
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut c = Command::new(server_binary("pingora-gateway"));
            c.arg("--config").arg(conf);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let mut p = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(st)) = p.0.try_wait() {
            panic!(
                "{kind:?} exited with {st}:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?} not listening after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (addr, p)
}

// ---------------------------------------------------------------------------
// raw HTTP/1.1 on a socket (for what a client library hides)

async fn raw_read_head(s: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return head;
        }
        let mut tmp = [0u8; 16384];
        let n = tokio::time::timeout_at(deadline, s.read(&mut tmp))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no response head within 10 s: {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

// ---------------------------------------------------------------------------
// 1. authentication

async fn auth_is_enforced(kind: Upstream) {
    let bin = nginx_or_skip!();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let (up, _up) = upstream_in_process(kind, &root, None).await;
    let (relay, reached) = counting_relay(up).await;
    let ng = Nginx::start(&bin, relay, &pki);

    let wrong = [
        None,
        Some(basic("alice", "wrong")),
        Some(basic("alice", "")),
        Some(basic("mallory", "correct horse")),
        Some(basic("bob", "hunter2")), // the password is "hunter2:x"
        Some("Basic !!!not-base64".to_owned()),
        Some("Bearer correct horse".to_owned()),
    ];
    for https in [true, false] {
        for auth in &wrong {
            let c = ng.client(&pki, https, auth.as_deref());
            for (m, path, hs, body) in [
                ("MKDIR", "/made", &[("X-Spock-mode", &b"448"[..])][..], ""),
                ("PUT", "/put", &[][..], "data"),
                ("POST", "/posted", &[("X-Spock-mode", &b"420"[..])][..], ""),
                ("GETATTR", "/", &[][..], ""),
                ("OPTIONS", "/", &[][..], ""),
                ("GET", "/", &[][..], ""),
            ] {
                let r = c.send(m, path, hs, body).await;
                assert_eq!(r.status, 401, "{m} {path} with {auth:?} (https: {https})");
                assert!(
                    r.header("www-authenticate")
                        .starts_with("Basic realm=\"SpockFS\""),
                    "{:?}",
                    r.headers
                );
                assert_eq!(&r.body[..], b"401 Unauthorized\n");
            }
        }
    }
    // Expect: 100-continue without credentials: 401 at once, no 100 Continue.
    let mut s = tokio::net::TcpStream::connect(ng.plain)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(
        b"PUT /fs/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let head = raw_read_head(&mut s, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "unauthenticated requests reached the upstream"
    );
    assert_eq!(LocalStore { root: root.clone() }.list(""), Some(vec![]));
    assert!(
        ng.error_log().contains("password mismatch"),
        "{}",
        ng.error_log()
    );

    // The same requests with credentials do reach it (the relay counts).
    for (user, pw) in USERS {
        let c = ng.client(&pki, true, Some(&basic(user, pw)));
        let r = c
            .req("MKDIR", &format!("/{user}"), &[("X-Spock-mode", "448")])
            .await;
        assert_eq!(r.status, 201, "{user}: {r:?}");
    }
    assert!(reached.load(Ordering::SeqCst) > 0);
    assert_eq!(
        LocalStore { root }.list(""),
        Some(vec![b"alice".to_vec(), b"bob".to_vec()])
    );
}

// ---------------------------------------------------------------------------
// 2. the conformance suite, unchanged

/// `kind` behind nginx with `deploy/nginx.conf`, reached over HTTPS or
/// plain HTTP: a server for the suite's checks (`harness`).
async fn behind_nginx(kind: Upstream, https: bool) -> Started {
    let bin = nginx_binary().unwrap_or_else(|| panic!("nginx is not installed"));
    let pki = pki();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let (up, up_guard) = upstream_in_process(kind, &root, None).await;
    let ng = Nginx::start(&bin, up, &pki);
    let target = ng.target(&pki, https, Arc::new(LocalStore { root }));
    // Dropped in this order: nginx, the upstream, the directory.
    (target, Box::new((ng, up_guard, dir)))
}

// ---------------------------------------------------------------------------
// 3. what nginx passes on: Host with port, long paths and headers, 100-continue

/// Percent-encodes every byte (the longest form of a path).
fn encode_all(path: &[u8]) -> String {
    path.iter()
        .map(|b| {
            if *b == b'/' {
                "/".to_owned()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An HTTP/2-only HTTPS client (ALPN h2).
fn h2_client(pki: &Pki) -> hyper_util::client::legacy::Client<Https, http_body_util::Full<Bytes>> {
    let mut cfg = (*pki.client).clone();
    cfg.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http2()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(https)
}

async fn passes_through(kind: Upstream) {
    let bin = nginx_or_skip!();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (root, vroot) = (dir.path().join("root"), dir.path().join("vhost"));
    for (d, who) in [(&root, "default"), (&vroot, "vhost")] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("who"), who).unwrap_or_else(|e| panic!("{e}"));
    }
    let (tls_port, plain_port) = (free_port(), free_port());
    // The vhost is "127.0.0.1:<nginx's HTTPS port>": chosen only if the Host
    // reaches the upstream with its port.
    let vhost = format!("127.0.0.1:{tls_port}");
    let (up, _up) = upstream_in_process(kind, &root, Some((&vhost, &vroot))).await;
    let ng = Nginx::start_on(&bin, up, &pki, tls_port, plain_port);
    let https = ng.client(&pki, true, Some(&alice()));
    let plain = ng.client(&pki, false, Some(&alice()));
    let r = https.req("GET", "/who", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"vhost"[..]));
    let r = plain.req("GET", "/who", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"default"[..]));
    let r = https.with_host("127.0.0.1").req("GET", "/who", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"default"[..]));
    let r = plain.with_host(&vhost).req("GET", "/who", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"vhost"[..]));

    // HTTP/1.0 without Host: the upstream gets nginx's server name (default
    // root); HTTP/1.1 without Host: 400 in SpockFS form.
    for https in [true, false] {
        let t = ng.target(&pki, https, Arc::new(LocalStore { root: root.clone() }));
        let r = suite::raw_exchange(&t, &[b"GET /fs/who HTTP/1.0\r\n\r\n".to_vec()])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r[0].0, &r[0].1[..]), (200, &b"default"[..]), "{}", r[0].2);
        let r = suite::raw_exchange(&t, &[b"GETATTR /fs/who HTTP/1.1\r\n\r\n".to_vec()])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r[0].0, 400, "{}", r[0].2);
        assert!(
            r[0].2
                .to_ascii_lowercase()
                .contains("x-spock-errno: einval"),
            "{}",
            r[0].2
        );
        assert_eq!(
            String::from_utf8_lossy(&r[0].1),
            "400 Bad Request: EINVAL: invalid path or request (rejected by nginx)\n"
        );
    }

    // Over HTTPS everything below lands in the vhost's root.
    // A path of ~4 KiB (16 names of 250 bytes), every byte percent-encoded:
    // a ~12 KiB request line.
    let mut path = Vec::new();
    for i in 0..16u8 {
        path.push(b'/');
        path.extend(std::iter::repeat_n(b'a' + i, 250));
        let r = https
            .req("MKDIR", &encode_all(&path), &[("X-Spock-mode", "448")])
            .await;
        assert_eq!(r.status, 201, "MKDIR at {} bytes: {r:?}", path.len());
    }
    path.extend(b"/\xe9t\xe9 \xff");
    path.extend(std::iter::repeat_n(b'z', 4090 - path.len()));
    let enc = encode_all(&path);
    assert!(enc.len() > 12_000, "{}", enc.len());
    let r = https.req("POST", &enc, &[("X-Spock-mode", "420")]).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = https.req("GETATTR", &enc, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.num("x-spock-mode").map(|m| m & 0o170000), Some(0o100000));

    // A 4095-byte symlink target (Linux's longest), raw non-ASCII bytes, in
    // X-Spock-target; and a 4096-byte one reaches the server (its answer,
    // not nginx's).
    let target: Vec<u8> = (0..4095u32)
        .map(|i| match i % 7 {
            0 => b'/',
            1 => 0xe9,
            2 => 0xff,
            3 => 0x80,
            _ => b'a' + (i % 26) as u8,
        })
        .collect();
    let r = https
        .send("SYMLINK", "/ln", &[("X-Spock-target", &target)], "")
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let stored = LocalStore {
        root: vroot.clone(),
    }
    .readlink("ln");
    assert!(
        stored.as_ref() == Some(&target),
        "stored target differs: {stored:?}"
    );
    let r = https.req("READLINK", "/ln", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body[..] == target[..],
        "READLINK body differs: {:?}",
        r.body
    );
    let mut longer = target.clone();
    longer.push(b'x');
    let r = https
        .send("SYMLINK", "/ln2", &[("X-Spock-target", &longer)], "")
        .await;
    assert!(
        !r.errno().is_empty() && !r.body.ends_with(b"(rejected by nginx)\n"),
        "not the server's answer: {r:?}"
    );

    // HTTP/2 (ALPN h2) to nginx, HTTP/1.1 upstream: :authority is the Host
    // (the vhost), raw header bytes, custom methods, ranges, errno.
    let h2 = h2_client(&pki);
    let h2req = |m: &str, path: &str, hs: &[(&str, &[u8])], body: &'static [u8]| {
        let mut b = Request::builder()
            .method(m)
            .uri(format!("{}{path}", ng.url(true)))
            .header("authorization", alice());
        for (k, v) in hs {
            b = b.header(*k, *v);
        }
        let req = b
            .body(http_body_util::Full::new(Bytes::from_static(body)))
            .unwrap_or_else(|e| panic!("{e}"));
        let f = h2.request(req);
        async move {
            let r = f.await.unwrap_or_else(|e| panic!("h2: {e:?}"));
            assert_eq!(r.version(), http::Version::HTTP_2);
            let (p, b) = r.into_parts();
            let body = b
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .to_bytes();
            (p.status.as_u16(), p.headers, body)
        }
    };
    let (st, _, body) = h2req("GET", "/who", &[], b"").await;
    assert_eq!((st, &body[..]), (200, &b"vhost"[..]));
    let (st, _, _) = h2req(
        "SYMLINK",
        "/h2ln",
        &[("x-spock-target", b"\xe9t\xe9/\xff")],
        b"",
    )
    .await;
    assert_eq!(st, 201);
    let (st, _, body) = h2req("READLINK", "/h2ln", &[], b"").await;
    assert_eq!((st, &body[..]), (200, &b"\xe9t\xe9/\xff"[..]));
    let (st, _, _) = h2req("PUT", "/h2file", &[], b"hello world").await;
    assert_eq!(st, 201);
    let (st, h, body) = h2req("GET", "/h2file", &[("range", b"bytes=6-")], b"").await;
    assert_eq!((st, &body[..]), (206, &b"world"[..]));
    assert_eq!(
        h.get("content-range").map(|v| v.as_bytes()),
        Some(&b"bytes 6-10/11"[..])
    );
    let (st, h, _) = h2req("GETATTR", "/none", &[], b"").await;
    assert_eq!(
        (st, h.get("x-spock-errno").map(|v| v.as_bytes())),
        (404, Some(&b"ENOENT"[..]))
    );

    // Expect: 100-continue with credentials: nginx answers 100 itself, then
    // streams the body; the connection stays usable.
    let mut s = tokio::net::TcpStream::connect(ng.plain)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    s.write_all(
        format!(
            "PUT /fs/expect HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            alice()
        )
        .as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let head = raw_read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 100 "), "{head}");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "100 Continue after {:?}",
        t0.elapsed()
    );
    s.write_all(b"hello")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = raw_read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(
        std::fs::read(root.join("expect")).ok(),
        Some(b"hello".to_vec())
    );
}

/// `X-Remote-User` carries nginx's authenticated user to the axum app
/// (`--user-roots` + `--trust-proxy-user`); a client's own is replaced.
async fn remote_user_reaches_axum_app() {
    let bin = nginx_or_skip!();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let users = dir.path().join("users");
    let mut args = axum_args(&dir.path().join("root"));
    args.user_roots = Some(users.clone());
    args.trust_proxy_user = Some([127, 0, 0, 1].into());
    let (up, _running) = start_axum(args).await;
    let ng = Nginx::start(&bin, up, &pki);
    for (user, pw) in USERS {
        let c = ng.client(&pki, true, Some(&basic(user, pw)));
        let r = c
            .send(
                "PUT",
                "/note",
                &[("X-Remote-User", b"mallory")],
                user.to_owned(),
            )
            .await;
        assert_eq!(r.status, 201, "{user}: {r:?}");
        assert_eq!(
            std::fs::read(users.join(user).join("note")).ok(),
            Some(user.as_bytes().to_vec())
        );
    }
    assert!(!users.join("mallory").exists());
}

// ---------------------------------------------------------------------------
// 4. 1 GiB each way, streamed

const BLOCK: usize = 1 << 20;

/// 1 MiB of pseudo-random bytes; block `i` of the stream is this with its
/// first 8 bytes replaced by `i` (so shifts, reorderings and corruption are
/// all caught by a plain comparison, cheap even in a debug build).
fn base_block() -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(BLOCK);
    while v.len() < BLOCK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// The request body: `len` bytes of the pattern, 1 MiB at a time.
struct Pattern {
    base: Bytes,
    sent: u64,
    len: u64,
}

impl hyper::body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(BLOCK as u64) as usize;
        let mut block = self.base[..n].to_vec();
        let stamp = (self.sent / BLOCK as u64).to_le_bytes();
        let k = n.min(8);
        block[..k].copy_from_slice(&stamp[..k]);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(block)))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len - self.sent)
    }
}

/// Checks a received chunk at `off` against the pattern; returns the offset
/// of the first difference.
fn check_chunk(base: &[u8], off: u64, data: &[u8]) -> Result<(), u64> {
    let (mut off, mut rest) = (off, data);
    while !rest.is_empty() {
        let within = (off % BLOCK as u64) as usize;
        let n = rest.len().min(BLOCK - within);
        let stamp = (off / BLOCK as u64).to_le_bytes();
        for i in 0..n {
            let at = within + i;
            if at >= 8 {
                if rest[i..n] != base[at..within + n] {
                    let d = (i..n).find(|&j| rest[j] != base[within + j]).unwrap_or(i);
                    return Err(off + d as u64);
                }
                break;
            }
            if rest[i] != stamp[at] {
                return Err(off + i as u64);
            }
        }
        off += n as u64;
        rest = &rest[n..];
    }
    Ok(())
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn https_client<B>(pki: &Pki) -> hyper_util::client::legacy::Client<Https, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut cfg = (*pki.client).clone();
    cfg.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

async fn streaming(kind: Upstream) {
    let bin = nginx_or_skip!();
    let len: u64 = std::env::var("SPOCKFS_NGINX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let pki = pki();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let (up, server) = upstream_process(kind, dir.path(), &root);
    let ng = Nginx::start(&bin, up, &pki);
    let url = format!("{}/big", ng.url(true));
    let base = base_block();
    let watch = TempWatch::start(&ng);

    let t0 = Instant::now();
    let put = Request::builder()
        .method("PUT")
        .uri(&url)
        .header("authorization", alice())
        .body(Pattern {
            base: base.clone(),
            sent: 0,
            len,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = tokio::time::timeout(Duration::from_secs(600), https_client(&pki).request(put))
        .await
        .unwrap_or_else(|_| panic!("PUT took over 600 s"))
        .unwrap_or_else(|e| panic!("PUT: {e:?}"));
    assert_eq!(resp.status(), 201);
    let put_s = t0.elapsed().as_secs_f64();
    let on_disk = std::fs::metadata(root.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(on_disk, len);

    let t1 = Instant::now();
    let get = Request::builder()
        .uri(&url)
        .header("authorization", alice())
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = https_client(&pki)
        .request(get)
        .await
        .unwrap_or_else(|e| panic!("GET: {e:?}"));
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(len.to_string().as_str())
    );
    let mut body = resp.into_body();
    let mut off = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("GET body at {off}: {e}"));
            if let Ok(data) = frame.into_data() {
                if let Err(at) = check_chunk(&base, off, &data) {
                    panic!("GET content differs at offset {at}");
                }
                off += data.len() as u64;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read)
        .await
        .unwrap_or_else(|_| panic!("GET took over 600 s"));
    assert_eq!(off, len, "GET length");
    let get_s = t1.elapsed().as_secs_f64();

    let (seen, samples) = watch.finish();
    let hwm = vm_hwm_kib(server.0.id());
    let nginx_hwm: Vec<u64> = ng.workers().into_iter().map(vm_hwm_kib).collect();
    let mib = len as f64 / (1 << 20) as f64;
    eprintln!(
        "{kind:?} behind nginx (HTTPS): PUT {mib:.0} MiB in {put_s:.1} s ({:.0} MiB/s), GET in {get_s:.1} s ({:.0} MiB/s); \
         server VmHWM {:.1} MiB; nginx workers VmHWM {:?} KiB; {samples} temp-dir samples",
        mib / put_s,
        mib / get_s,
        hwm as f64 / 1024.0,
        nginx_hwm
    );
    assert!(
        samples >= 2,
        "the temp dirs were hardly sampled ({samples})"
    );
    assert!(
        seen.is_empty(),
        "nginx buffered to disk during the transfer:\n{}",
        seen.join("\n")
    );
    let now = temp_findings(&ng.rundir, ng.pid());
    assert!(
        now.is_empty(),
        "nginx temp files after the transfer:\n{}",
        now.join("\n")
    );
    let log = ng.error_log();
    assert!(
        !log.contains("temporary file"),
        "nginx buffered to disk:\n{log}"
    );
    for level in ["[error]", "[crit]", "[alert]", "[emerg]"] {
        assert!(!log.contains(level), "nginx logged an error:\n{log}");
    }
    assert!(hwm < 64 * 1024, "{kind:?} peak RSS {hwm} KiB (over 64 MiB)");
}

// ---------------------------------------------------------------------------
// the test target's trials (harness = false): one per test and per
// conformance check, `cargo test --test nginx -- --list`

fn main() -> ExitCode {
    let missing = nginx_binary().is_none();
    assert!(
        !missing || std::env::var("CI").as_deref() != Ok("true"),
        "nginx is not installed (CI=true): run scripts/test.sh as root, or apt-get install nginx-light"
    );
    if missing {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
    }
    let ignored = missing.then_some("nginx is not installed");
    let mut h = Harness::new();
    for (name, kind) in [("axum", Upstream::Axum), ("gateway", Upstream::Gateway)] {
        h.test(&format!("auth_is_enforced_{name}"), move || {
            auth_is_enforced(kind)
        });
        for (scheme, https) in [("https", true), ("http", false)] {
            let served = Served::new(&format!("{name}_behind_nginx_{scheme}"), move || {
                behind_nginx(kind, https)
            });
            h.conformance(served, ignored);
        }
        h.test(&format!("passes_through_{name}"), move || {
            passes_through(kind)
        });
        h.test(&format!("streaming_1gib_{name}"), move || streaming(kind));
    }
    h.test("remote_user_reaches_axum_app", remote_user_reaches_axum_app);
    h.run()
}
