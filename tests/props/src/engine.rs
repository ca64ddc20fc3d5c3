//! Whole requests through the [`Engine`]: arbitrary method, path, headers
//! and body, several per input so that state builds up.

use crate::input::{Cursor, NUMBERS};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use spockfs_core::engine::{self, BodyOp, Call, Op};
use spockfs_core::{Engine, Errno, MemFs, Method, Mount};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// One decoded request.
#[derive(Debug, Clone)]
pub struct Req {
    /// Method token.
    pub method: http::Method,
    /// Request path (after the mount prefix), as sent on the wire.
    pub path: String,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

const PATHS: &[&str] = &[
    "/",
    "/dir",
    "/dir/",
    "/dir/file",
    "/dir/sub",
    "/dir/sub/",
    "/dir/new",
    "/new",
    "/new/",
    "/new/x",
    "/abs",
    "/abs/",
    "/abs/secret",
    "/abs/newthing",
    "/rel",
    "/rel/secret",
    "/rel/odir/deep",
    "/fabs",
    "/frel",
    "/loop",
    "/loop/x",
    "/dangling",
    "/dangling/x",
    "/inner",
    "/inner/file",
    "/dir/file/x",
    "/%2e%2e/outside/secret",
    "/dir/..%2f..%2foutside",
    "/caf%C3%A9",
    "/a%0Ab",
    "/%ff",
    "//x",
    "/dir/../dir",
];

const TARGETS: &[&str] = &[
    "/dir/file",
    "/dir/sub",
    "/new",
    "/abs/secret",
    "/fabs",
    "/rel/secret",
    "/inner/file",
    "/dir/",
    "/../outside/secret",
    "user.x",
    "user.k",
    "trusted.x",
    "security.x",
    "x",
    "../outside",
    "/",
];

const HEADERS: &[&str] = &[
    "x-spock-mode",
    "x-spock-uid",
    "x-spock-gid",
    "x-spock-size",
    "x-spock-mtime",
    "x-spock-atime",
    "x-spock-target",
    "x-spock-flag",
    "x-spock-dev",
    "x-spock-readdir",
    "range",
    "content-range",
    "x-spock-target",
    "x-spock-mode",
];

const RANGES: &[&str] = &[
    "bytes=0-4",
    "bytes=5-4",
    "bytes=0-",
    "bytes=-3",
    "bytes=2-3",
    "bytes=100-200",
    "bytes 0-4/*",
    "bytes 0-1/2",
    "bytes=0-18446744073709551615",
    "bytes=9223372036854775807-9223372036854775807",
    "bytes=1-2, 4-5",
    "attrs",
];

/// Decodes up to 12 requests.
pub fn decode_requests(data: &[u8]) -> Vec<Req> {
    let mut c = Cursor::new(data);
    let mut out = Vec::new();
    while !c.is_empty() && out.len() < 12 {
        let m = c.byte();
        let method = if m < 0xf0 {
            let all = Method::ALL;
            match m as usize % (all.len() + 3) {
                i if i < all.len() => all[i].to_http(),
                i if i == all.len() => http::Method::HEAD,
                i if i == all.len() + 1 => http::Method::OPTIONS,
                _ => http::Method::from_bytes(b"BREW").unwrap_or(http::Method::GET),
            }
        } else {
            match http::Method::from_bytes(c.bytes()) {
                Ok(m) => m,
                Err(_) => continue,
            }
        };
        let p = c.byte();
        let path = if p < 0xe0 {
            PATHS[p as usize % PATHS.len()].to_owned()
        } else if p < 0xf0 {
            // Raw bytes, percent-encoded: any decoded path can be reached.
            format!("/{}", spockfs_client::encode_path(c.bytes()))
        } else {
            String::from_utf8_lossy(c.bytes()).into_owned()
        };
        if http::uri::PathAndQuery::try_from(path.as_str()).is_err() || !path.starts_with('/') {
            continue;
        }
        let mut headers = Vec::new();
        for _ in 0..c.byte() % 5 {
            let name = HeaderName::from_static(c.choose(HEADERS));
            let v: &[u8] = match c.byte() % 4 {
                0 => c.choose(NUMBERS).as_bytes(),
                1 => c.choose(TARGETS).as_bytes(),
                2 => c.choose(RANGES).as_bytes(),
                _ => c.bytes(),
            };
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.push((name, v));
            }
        }
        let body = Bytes::copy_from_slice(c.bytes());
        out.push(Req {
            method,
            path,
            headers,
            body,
        });
    }
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Sends one request to `engine` and checks the response is well formed.
pub async fn send(engine: &Engine, q: &Req) -> Resp {
    let mut b = Request::builder()
        .method(q.method.clone())
        .uri(q.path.as_str())
        .header(http::header::HOST, "localhost");
    for (k, v) in &q.headers {
        b = b.header(k, v);
    }
    let req = b
        .body(Full::new(q.body.clone()))
        .unwrap_or_else(|e| panic!("{q:?}: {e}"));
    let resp = engine.handle(req).await;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{q:?}: body error {e}"))
        .to_bytes();
    let r = Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    check_response(q, &r);
    r
}

/// What every response must satisfy, whatever the request.
pub fn check_response(q: &Req, r: &Resp) {
    let s = r.status.as_u16();
    assert!((200..600).contains(&s), "{q:?}: status {s}");
    let hdr = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
    if s >= 400 {
        let errno = hdr("x-spock-errno").unwrap_or_else(|| panic!("{q:?}: {s} without errno"));
        assert!(Errno::from_name(errno).is_some(), "{q:?}: errno {errno}");
        assert!(!r.body.is_empty() && r.body.ends_with(b"\n"), "{q:?}");
        if s == 405 && Method::from_http(&q.method).is_none() {
            assert!(hdr("allow").is_some(), "{q:?}: 405 without Allow");
        }
    }
    // HEAD: no body on success. An error keeps its one-line body: the
    // HTTP layer drops it on the wire, and Content-Length stays that of
    // the GET's answer.
    let head = q.method == http::Method::HEAD;
    if head && r.status.is_success() {
        assert!(r.body.is_empty(), "{q:?}: HEAD with a body");
    } else if let Some(cl) = hdr("content-length").filter(|_| !head) {
        assert_eq!(cl.parse::<usize>().ok(), Some(r.body.len()), "{q:?}");
    }
    if s == 206 {
        let cr = hdr("content-range").unwrap_or_else(|| panic!("{q:?}: 206 without Content-Range"));
        let rest = cr.strip_prefix("bytes ").unwrap_or_else(|| panic!("{cr}"));
        let (span, size) = rest.split_once('/').unwrap_or_else(|| panic!("{cr}"));
        let size: u64 = size.parse().unwrap_or_else(|_| panic!("{cr}"));
        if span == "*" {
            assert!(r.body.is_empty(), "{q:?}: {cr} with a body");
        } else {
            let (a, b) = span.split_once('-').unwrap_or_else(|| panic!("{cr}"));
            let (a, b): (u64, u64) = (
                a.parse().unwrap_or_else(|_| panic!("{cr}")),
                b.parse().unwrap_or_else(|_| panic!("{cr}")),
            );
            assert!(a <= b && b < size, "{q:?}: {cr}");
            if !head {
                assert_eq!(b - a + 1, r.body.len() as u64, "{q:?}: {cr}");
            }
        }
    }
    if q.method == http::Method::OPTIONS && s == 200 {
        assert!(hdr("x-spock-version").is_some());
    }
    if s == 200 && q.method == http::Method::GET {
        let ranged = q.headers.iter().any(|(k, _)| k == "range");
        assert!(ranged || hdr("content-range").is_none(), "{q:?}");
    }
}

/// The fixture tree, as requests (for the MemFs) or direct calls (LocalFs).
async fn mem_fixture(engine: &Engine) {
    type Setup<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [u8]);
    let setup: &[Setup<'_>] = &[
        ("MKDIR", "/dir", &[("x-spock-mode", "493")], b""),
        ("MKDIR", "/dir/sub", &[("x-spock-mode", "493")], b""),
        ("PUT", "/dir/file", &[], b"inside"),
        ("MKDIR", "/outside", &[("x-spock-mode", "493")], b""),
        ("PUT", "/outside/secret", &[], b"SECRET"),
        ("SYMLINK", "/abs", &[("x-spock-target", "/outside")], b""),
        ("SYMLINK", "/rel", &[("x-spock-target", "outside")], b""),
        (
            "SYMLINK",
            "/fabs",
            &[("x-spock-target", "/outside/secret")],
            b"",
        ),
        (
            "SYMLINK",
            "/frel",
            &[("x-spock-target", "outside/secret")],
            b"",
        ),
        ("SYMLINK", "/loop", &[("x-spock-target", "loop")], b""),
        (
            "SYMLINK",
            "/dangling",
            &[("x-spock-target", "nowhere")],
            b"",
        ),
        ("SYMLINK", "/inner", &[("x-spock-target", "dir")], b""),
    ];
    for (m, p, hs, body) in setup {
        let q = Req {
            method: http::Method::from_bytes(m.as_bytes()).unwrap_or(http::Method::GET),
            path: (*p).to_owned(),
            headers: hs
                .iter()
                .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
                .collect(),
            body: Bytes::from_static(body),
        };
        let r = send(engine, &q).await;
        assert!(r.status.is_success(), "fixture {m} {p}: {}", r.status);
    }
}

/// Whole requests on a MemFs: no panic, well-formed responses, the
/// capacity respected.
pub fn check_engine_mem(data: &[u8]) {
    let reqs = decode_requests(data);
    let fs = MemFs::with_capacity(4 << 20);
    let engine = Engine::builder()
        .default_mount(Mount::new(fs.clone()))
        .build();
    runtime().block_on(async {
        mem_fixture(&engine).await;
        for q in &reqs {
            send(&engine, q).await;
            assert!(fs.used() <= fs.capacity(), "{q:?}: over capacity");
        }
    });
}

/// Requests the LocalFs target does not send, so that a fuzz run cannot
/// fill the disk or touch a device: sizes and offsets past 1 MiB (sparse
/// files GET would stream for ever, fallocate would really allocate), and
/// device nodes.
fn too_costly_for_disk(q: &Req) -> bool {
    let Some(m) = Method::from_http(&q.method) else {
        return false;
    };
    let mut hm = http::HeaderMap::new();
    for (k, v) in &q.headers {
        hm.append(k, v.clone());
    }
    const MB: u64 = 1 << 20;
    match engine::parse(m, &q.path, &hm) {
        Ok((Call::Op(Op::Truncate { size }), _)) => size > MB,
        Ok((Call::Op(Op::Fallocate { offset, len, .. }), _)) => offset.saturating_add(len) > MB,
        Ok((
            Call::Body(BodyOp::Put {
                range: Some((o, l)),
            }),
            _,
        )) => o.saturating_add(l) > MB,
        Ok((Call::Op(Op::Mknod { mode, .. }), _)) => {
            let t = mode & 0o170000;
            t != 0o010000 && t != 0o100000 && t != 0o140000 && t != 0
        }
        _ => false,
    }
}

/// Everything observable about one object outside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

fn seen(p: &Path, m: &std::fs::Metadata) -> Seen {
    let ft = m.file_type();
    Seen {
        mode: m.mode(),
        uid: m.uid(),
        size: if ft.is_dir() { 0 } else { m.size() },
        nlink: if ft.is_dir() { 0 } else { m.nlink() },
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        content: ft.is_file().then(|| std::fs::read(p).unwrap_or_default()),
        link: ft.is_symlink().then(|| {
            std::fs::read_link(p)
                .map(|t| t.as_os_str().as_bytes().to_vec())
                .unwrap_or_default()
        }),
    }
}

/// Snapshot of `base` and everything under it except `base/root`.
fn outside_snapshot(base: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    let root = base.join("root");
    while let Some(p) = stack.pop() {
        if p == root {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.insert(p.clone(), seen(&p, &m));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
                stack.push(e.unwrap_or_else(|e| panic!("{e}")).path());
            }
        }
    }
    out
}

struct Local {
    base: PathBuf,
    engine: Engine,
    before: BTreeMap<PathBuf, Seen>,
}

fn local() -> &'static Mutex<Local> {
    static L: OnceLock<Mutex<Local>> = OnceLock::new();
    L.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("spockfs-fuzz-local-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let out = base.join("outside");
        std::fs::create_dir_all(out.join("odir")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(base.join("root")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(out.join("secret"), b"SECRET").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(out.join("odir/deep"), b"DEEP").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(base.join("above"), b"ABOVE").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(base.join("root"), out.join("back"))
            .unwrap_or_else(|e| panic!("{e}"));
        // Sentinels are left alone from now on: give their times a moment
        // to settle so the snapshot is stable.
        let before = outside_snapshot(&base);
        let engine = Engine::builder().root(base.join("root")).build();
        Mutex::new(Local {
            base,
            engine,
            before,
        })
    })
}

/// Removes the temporary tree of the LocalFs target (call at the end of a
/// test run; fuzz processes leave it in the temp dir).
pub fn cleanup_local() {
    let l = local().lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_dir_all(&l.base);
}

/// Empties `root` (whatever modes the fuzzer left) and plants the fixture.
fn reset_root(base: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let root = base.join("root");
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    for e in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{e}")) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{e}"));
        if m.is_dir() {
            std::fs::remove_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        } else {
            std::fs::remove_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    let out = base.join("outside");
    std::fs::create_dir_all(root.join("dir/sub")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("dir/file"), b"inside").unwrap_or_else(|e| panic!("{e}"));
    let sl = |t: &Path, l: &str| symlink(t, root.join(l)).unwrap_or_else(|e| panic!("{e}"));
    sl(&out, "abs");
    sl(Path::new("../outside"), "rel");
    sl(&out.join("secret"), "fabs");
    sl(Path::new("../outside/secret"), "frel");
    sl(Path::new("loop"), "loop");
    sl(Path::new("nowhere"), "dangling");
    sl(Path::new("dir"), "inner");
    sl(base, "up");
}

/// Whole requests on a LocalFs rooted in a temp dir, with sentinels beside
/// and above the root (reachable through symlinks planted inside it): no
/// panic, well-formed responses, no outside content in any response, and
/// nothing outside the root changed (content, mode, owner, times, entries).
pub fn check_engine_local(data: &[u8]) {
    let reqs: Vec<Req> = decode_requests(data)
        .into_iter()
        .filter(|q| !too_costly_for_disk(q))
        .collect();
    let l = local().lock().unwrap_or_else(|p| p.into_inner());
    reset_root(&l.base);
    runtime().block_on(async {
        for q in &reqs {
            let r = send(&l.engine, q).await;
            assert!(
                !r.body
                    .windows(4)
                    .any(|w| w == b"SECR" || w == b"DEEP" || w == b"ABOV"),
                "{q:?}: outside content in the response"
            );
        }
    });
    let after = outside_snapshot(&l.base);
    if after != l.before {
        let diff: Vec<_> = after
            .iter()
            .filter(|(k, v)| l.before.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(l.before.keys().filter(|k| !after.contains_key(*k)).cloned())
            .collect();
        panic!("requests {reqs:?} changed the outside: {diff:?}");
    }
}
