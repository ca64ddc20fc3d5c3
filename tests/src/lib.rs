//! End-to-end test support: a server under test is a base URL plus a way to
//! look at (and prepare) its backing store. The same conformance suite
//! ([`suite`]) runs against every way of serving SpockFS.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use spockfs_core::{Backend, FsPath, MemFs};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod harness;
pub mod procs;
pub mod raw;
pub mod servers;
pub mod suite;
pub mod tree;

/// A free TCP port on 127.0.0.1 for a server that binds by number (nginx,
/// Pingora). Ports come from below the kernel's ephemeral range, so no
/// `bind(":0")` of another test can be handed the same port between our
/// check and the server's bind, and none is handed out twice per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Start at a per-process offset so concurrent test binaries rarely meet.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = if p >= 32000 { 20000 + p % 12000 } else { p };
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Result of a check: `Err` explains what differed.
pub type CheckResult = Result<(), String>;

/// Fails the check with a message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($fmt)+)));
        }
    };
}

/// Fails the check unless both sides are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($a:expr, $b:expr $(,)?) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}:{}: {} = {:?}, expected {:?}", file!(), line!(), stringify!($a), a, b));
        }
    }};
    ($a:expr, $b:expr, $($fmt:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}:{}: {}: {:?} != {:?}", file!(), line!(), format!($($fmt)+), a, b));
        }
    }};
}

/// Object kinds as seen in the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// FIFO.
    Fifo,
    /// Anything else.
    Other,
}

/// Direct access to the store behind a server, bypassing HTTP: to prepare
/// fixtures and to check what a request really did. Paths are relative to
/// the root, `/`-separated, without leading slash (`""` is the root).
pub trait Store: Send + Sync {
    /// Describes the store in test output.
    fn describe(&self) -> String;
    /// Creates a directory (parents too).
    fn mkdir(&self, rel: &str);
    /// Writes a whole file.
    fn write(&self, rel: &str, data: &[u8]);
    /// Creates a symlink.
    fn symlink(&self, target: &[u8], rel: &str);
    /// Sets permission bits.
    fn chmod(&self, rel: &str, mode: u32);
    /// Reads a whole file.
    fn read(&self, rel: &str) -> Option<Vec<u8>>;
    /// `lstat`: kind, permission bits (with setuid/gid/sticky), size, nlink,
    /// ino, uid, atime, mtime.
    fn stat(&self, rel: &str) -> Option<StoreStat>;
    /// Reads a symlink.
    fn readlink(&self, rel: &str) -> Option<Vec<u8>>;
    /// Directory entries (no `.`/`..`), sorted.
    fn list(&self, rel: &str) -> Option<Vec<Vec<u8>>>;
    /// Reads an xattr.
    fn getxattr(&self, rel: &str, name: &str) -> Option<Vec<u8>>;
    /// True if the store supports `user.` xattrs at all.
    fn xattrs_supported(&self) -> bool;
}

/// What [`Store::stat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStat {
    /// Kind.
    pub kind: Kind,
    /// `mode & 0o7777`.
    pub perm: u32,
    /// Size.
    pub size: u64,
    /// Link count.
    pub nlink: u64,
    /// Inode.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// atime seconds.
    pub atime: i64,
    /// mtime seconds.
    pub mtime: i64,
    /// Nanoseconds of atime.
    pub atime_nsec: u32,
    /// Nanoseconds of mtime.
    pub mtime_nsec: u32,
}

fn kind_of(mode: u32) -> Kind {
    match mode & 0o170000 {
        0o100000 => Kind::File,
        0o040000 => Kind::Dir,
        0o120000 => Kind::Symlink,
        0o010000 => Kind::Fifo,
        _ => Kind::Other,
    }
}

/// A local directory.
pub struct LocalStore {
    /// The served root.
    pub root: PathBuf,
}

impl LocalStore {
    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("LocalFs at {}", self.root.display())
    }
    fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.p(rel)).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
    }
    fn write(&self, rel: &str, data: &[u8]) {
        std::fs::write(self.p(rel), data).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }
    fn symlink(&self, target: &[u8], rel: &str) {
        use std::os::unix::ffi::OsStrExt;
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), self.p(rel))
            .unwrap_or_else(|e| panic!("symlink {rel}: {e}"));
    }
    fn chmod(&self, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.p(rel), std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {rel}: {e}"));
    }
    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        let st = std::fs::symlink_metadata(self.p(rel)).ok()?;
        if !st.is_file() {
            return None;
        }
        std::fs::read(self.p(rel)).ok()
    }
    fn stat(&self, rel: &str) -> Option<StoreStat> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(self.p(rel)).ok()?;
        Some(StoreStat {
            kind: kind_of(m.mode()),
            perm: m.mode() & 0o7777,
            size: m.size(),
            nlink: m.nlink(),
            ino: m.ino(),
            uid: m.uid(),
            atime: m.atime(),
            mtime: m.mtime(),
            atime_nsec: m.atime_nsec() as u32,
            mtime_nsec: m.mtime_nsec() as u32,
        })
    }
    fn readlink(&self, rel: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(self.p(rel))
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec())
    }
    fn list(&self, rel: &str) -> Option<Vec<Vec<u8>>> {
        use std::os::unix::ffi::OsStrExt;
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(self.p(rel))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .collect();
        v.sort();
        Some(v)
    }
    fn getxattr(&self, rel: &str, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        let n = rustix::fs::lgetxattr(self.p(rel), name, &mut buf[..]).ok()?;
        buf.truncate(n);
        Some(buf)
    }
    fn xattrs_supported(&self) -> bool {
        let probe = self.root.join(".xattr-probe");
        let _ = std::fs::write(&probe, b"");
        let ok = rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty())
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
}

/// A [`MemFs`], inspected through the [`Backend`] trait.
pub struct MemStore {
    /// The filesystem (clones share the tree).
    pub fs: MemFs,
}

fn fp(rel: &str) -> FsPath {
    FsPath::from_bytes(format!("/{rel}").as_bytes())
        .unwrap_or_else(|e| panic!("bad test path {rel}: {e}"))
}

impl Store for MemStore {
    fn describe(&self) -> String {
        "MemFs".into()
    }
    fn mkdir(&self, rel: &str) {
        let mut cur = String::new();
        for c in rel.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            match self.fs.mkdir(&fp(&cur), 0o755) {
                Ok(()) | Err(spockfs_core::Errno::EEXIST) => {}
                Err(e) => panic!("mkdir {cur}: {e}"),
            }
        }
    }
    fn write(&self, rel: &str, data: &[u8]) {
        let r = self
            .fs
            .replace(&fp(rel), spockfs_core::SetId::Keep)
            .unwrap_or_else(|e| panic!("write {rel}: {e}"));
        r.write_at(data, 0)
            .unwrap_or_else(|e| panic!("write {rel}: {e}"));
        r.commit().unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }
    fn symlink(&self, target: &[u8], rel: &str) {
        self.fs
            .symlink(&fp(rel), target)
            .unwrap_or_else(|e| panic!("symlink {rel}: {e}"));
    }
    fn chmod(&self, rel: &str, mode: u32) {
        self.fs
            .chmod(&fp(rel), mode, spockfs_core::SetId::Keep)
            .unwrap_or_else(|e| panic!("chmod {rel}: {e}"));
    }
    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        let f = self.fs.open_read(&fp(rel)).ok()?;
        let mut buf = vec![0u8; f.size() as usize];
        let n = f.read_at(&mut buf, 0).ok()?;
        buf.truncate(n);
        Some(buf)
    }
    fn stat(&self, rel: &str) -> Option<StoreStat> {
        let path = if rel.is_empty() {
            FsPath::root()
        } else {
            fp(rel)
        };
        let s = self.fs.getattr(&path).ok()?;
        Some(StoreStat {
            kind: kind_of(s.mode),
            perm: s.mode & 0o7777,
            size: s.size,
            nlink: s.nlink,
            ino: s.ino,
            uid: s.uid,
            atime: s.atime,
            mtime: s.mtime,
            atime_nsec: s.atime_nsec,
            mtime_nsec: s.mtime_nsec,
        })
    }
    fn readlink(&self, rel: &str) -> Option<Vec<u8>> {
        self.fs.readlink(&fp(rel)).ok()
    }
    fn list(&self, rel: &str) -> Option<Vec<Vec<u8>>> {
        let path = if rel.is_empty() {
            FsPath::root()
        } else {
            fp(rel)
        };
        let mut v = Vec::new();
        self.fs
            .readdir(&path, false, &mut |n, _| {
                v.push(n.to_vec());
                Ok(())
            })
            .ok()?;
        v.sort();
        Some(v)
    }
    fn getxattr(&self, rel: &str, name: &str) -> Option<Vec<u8>> {
        self.fs.getxattr(&fp(rel), name.as_bytes(), 1 << 20).ok()
    }
    fn xattrs_supported(&self) -> bool {
        true
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// A header as a string ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// A numeric header.
    pub fn num(&self, name: &str) -> Option<i128> {
        self.header(name).parse().ok()
    }
    /// `X-Spock-errno`.
    pub fn errno(&self) -> &str {
        self.header("x-spock-errno")
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP(S) client for the server under test (keep-alive pool).
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<Https, Full<Bytes>>,
    /// `http(s)://host:port/prefix` (no trailing slash).
    pub base: String,
    /// Host header to send (`None`: the URL's).
    pub host: Option<String>,
    /// `Authorization` header sent with every request.
    pub auth: Option<String>,
}

/// A rustls client config trusting `roots` (plus nothing else), ALPN
/// http/1.1.
pub fn tls_client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("{e}"))
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

impl Client {
    /// A client for `base` (plain HTTP).
    pub fn new(base: &str) -> Client {
        Client::with_tls(base, tls_client_config(rustls::RootCertStore::empty()))
    }

    /// A client for `base`, `https://` URLs verified against `tls`.
    pub fn with_tls(base: &str, tls: Arc<rustls::ClientConfig>) -> Client {
        let mut cfg = (*tls).clone();
        cfg.alpn_protocols.clear(); // the connector sets ALPN itself
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .build();
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build(https),
            base: base.trim_end_matches('/').to_owned(),
            host: None,
            auth: None,
        }
    }

    /// Same client, sending `Authorization: value` on every request.
    pub fn with_auth(&self, value: &str) -> Client {
        Client {
            auth: Some(value.to_owned()),
            ..self.clone()
        }
    }

    /// Same client, another Host header.
    pub fn with_host(&self, host: &str) -> Client {
        Client {
            host: Some(host.to_owned()),
            ..self.clone()
        }
    }

    /// Sends `method path` (path appended verbatim to the base URL) with
    /// headers (raw bytes allowed) and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(
                Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{method}: {e}")),
            )
            .uri(format!("{}{}", self.base, path));
        if let Some(h) = &self.host {
            b = b.header(http::header::HOST, h);
        }
        if let Some(a) = &self.auth {
            b = b.header(http::header::AUTHORIZATION, a);
        }
        for (k, v) in headers {
            b = b.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{k}: {e}")),
                HeaderValue::from_bytes(v).unwrap_or_else(|e| panic!("{k}: {e}")),
            );
        }
        let req = b
            .body(Full::new(body.into()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self
            .inner
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} body: {e}"))
            .to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `send` with string headers and no body.
    pub async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.send(method, path, &h, Bytes::new()).await
    }
}

/// A server under test.
pub struct Target {
    /// Client pointed at the SpockFS base URL.
    pub client: Client,
    /// The backing store.
    pub store: Arc<dyn Store>,
    /// Address of the listening socket (for raw-socket checks).
    pub addr: SocketAddr,
    /// URL path prefix (`/fs`).
    pub prefix: String,
    /// TLS for raw-socket checks (`None`: plain TCP).
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// `Authorization` header for raw-socket checks.
    pub auth: Option<String>,
    /// Keeps temporary directories alive.
    pub _guards: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// Handle on a server running in the test's runtime; stops it on drop.
pub struct Running {
    /// Sends the shutdown signal.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server task.
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// Starts the axum example app in-process on `127.0.0.1:0` with `args`
/// (`--listen` is overridden).
pub async fn start_axum(mut args: axum_app::Args) -> (SocketAddr, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    args.listen = addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum_app::serve(args, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    });
    (
        addr,
        Running {
            stop: Some(tx),
            task,
        },
    )
}

/// Default flags for an in-process axum app serving `root`, which is
/// created here if missing (the app creates only its default `./data`).
pub fn axum_args(root: &Path) -> axum_app::Args {
    use clap::Parser as _;
    std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    let mut a = axum_app::Args::parse_from(["axum-app"]);
    a.root = Some(root.to_path_buf());
    a
}

/// The axum app on a LocalFs tempdir.
pub async fn axum_local() -> (Target, Running) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let (addr, running) = start_axum(axum_args(&root)).await;
    let target = Target {
        client: Client::new(&format!("http://{addr}/fs")),
        store: Arc::new(LocalStore { root }),
        addr,
        prefix: "/fs".into(),
        tls: None,
        auth: None,
        _guards: vec![Box::new(dir)],
    };
    (target, running)
}

/// An axum router with `SpockFs` over a MemFs, served by axum on
/// `127.0.0.1:0`.
pub async fn axum_mem() -> (Target, Running) {
    let fs = MemFs::new();
    let svc = spockfs_tower::SpockFs::builder()
        .default_mount(spockfs_core::Mount::new(fs.clone()))
        .build();
    let app = axum::Router::new().nest_service("/fs", svc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    let target = Target {
        client: Client::new(&format!("http://{addr}/fs")),
        store: Arc::new(MemStore { fs }),
        addr,
        prefix: "/fs".into(),
        tls: None,
        auth: None,
        _guards: vec![],
    };
    (
        target,
        Running {
            stop: Some(tx),
            task,
        },
    )
}
