//! Confinement of LocalFs, over real HTTP: no request may read, write,
//! change or learn about anything outside the root — not through `..` or
//! its encodings, nor symlinks (absolute, relative, in a parent position, as
//! the final component, or swapped in during the request).
//!
//! Differential, in the style of Go's `os.Root` tests: every case is run
//! through the server on one copy of a tree, and its expected effect is
//! applied with direct syscalls to an identical copy (or nothing, for
//! requests that must be refused); the two trees — root *and* outside —
//! must then be identical.

use spockfs_tests::tree::snapshot;
use spockfs_tests::{axum_args, start_axum, Client};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// ctime of everything outside: catches chmod/chown/xattr/utimens that a
/// content snapshot would miss.
fn ctimes(dir: &Path) -> BTreeMap<PathBuf, (i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            out.insert(p.clone(), (m.ctime(), m.ctime_nsec()));
            if m.is_dir() {
                for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// base/{root,outside}: root is served; outside holds what must stay
/// unreachable.
fn layout(base: &Path) {
    let root = base.join("root");
    let out = base.join("outside");
    for d in [root.join("dir/sub"), out.join("odir")] {
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(out.join("secret"), b"SECRET").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out.join("odir/deep"), b"DEEP SECRET").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("dir/file"), b"inside").unwrap_or_else(|e| panic!("{e}"));
    let sl = |t: &Path, l: &str| {
        std::os::unix::fs::symlink(t, root.join(l)).unwrap_or_else(|e| panic!("{e}"))
    };
    sl(&out, "abs");
    sl(Path::new("../outside"), "rel");
    sl(&out.join("secret"), "fabs");
    sl(Path::new("../outside/secret"), "frel");
    sl(Path::new("dir/../../outside"), "twisty");
    sl(Path::new("dir"), "inner");
    sl(Path::new("/"), "slash");
    sl(Path::new("loop"), "loop");
    sl(Path::new("nowhere"), "dangling");
}

/// One request: method, path (after /fs), headers, body.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn r(method: &'static str, path: &str, headers: &[(&'static str, &str)]) -> Req {
    Req {
        method,
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes().to_vec()))
            .collect(),
        body: vec![],
    }
}

/// Every method, aimed at `path` (`t` is a second, valid path for the
/// two-path methods).
fn every_method(path: &str, t: &str) -> Vec<Req> {
    let mut v = vec![
        r("READDIR", path, &[]),
        r("READDIR", path, &[("X-Spock-readdir", "attrs")]),
        r("GETATTR", path, &[]),
        r(
            "MKNOD",
            path,
            &[("X-Spock-mode", "4480"), ("X-Spock-dev", "0")],
        ),
        r("OPEN", path, &[("X-Spock-flag", "0")]),
        r("OPEN", path, &[("X-Spock-flag", "2")]),
        r("CHMOD", path, &[("X-Spock-mode", "511")]),
        r("CHOWN", path, &[("X-Spock-uid", "1"), ("X-Spock-gid", "1")]),
        r("TRUNCATE", path, &[("X-Spock-size", "0")]),
        r("ACCESS", path, &[("X-Spock-mode", "0")]),
        r("SYMLINK", path, &[("X-Spock-target", "x")]),
        r("READLINK", path, &[]),
        r("RMDIR", path, &[]),
        r("MKDIR", path, &[("X-Spock-mode", "511")]),
        r("LINK", path, &[("X-Spock-target", t)]),
        r("LINK", t, &[("X-Spock-target", path)]),
        r("RENAME", path, &[("X-Spock-target", t)]),
        r("RENAME", t, &[("X-Spock-target", path)]),
        r(
            "FALLOCATE",
            path,
            &[("X-Spock-mode", "0"), ("Range", "bytes=0-99")],
        ),
        r("STATFS", path, &[]),
        r("LISTXATTR", path, &[("X-Spock-size", "0")]),
        r(
            "GETXATTR",
            path,
            &[("X-Spock-target", "user.x"), ("X-Spock-size", "100")],
        ),
        r(
            "SETXATTR",
            path,
            &[("X-Spock-target", "user.pwned"), ("X-Spock-flag", "0")],
        ),
        r("REMOVEXATTR", path, &[("X-Spock-target", "user.x")]),
        r(
            "UTIMENS",
            path,
            &[("X-Spock-atime", "1"), ("X-Spock-mtime", "1")],
        ),
        r("GET", path, &[]),
        r("GET", path, &[("Range", "bytes=0-3")]),
        r("HEAD", path, &[]),
        r("POST", path, &[("X-Spock-mode", "438")]),
        r("DELETE", path, &[]),
        r("FSYNC", path, &[]),
    ];
    let mut put = r("PUT", path, &[("Content-Range", "bytes=0-4")]);
    put.body = b"PWNED".to_vec();
    v.push(put);
    let mut put = r("PUT", path, &[]);
    put.body = b"PWNED".to_vec();
    v.push(put);
    v
}

async fn send(c: &Client, q: &Req) -> spockfs_tests::Resp {
    let hs: Vec<(&str, &[u8])> = q.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    c.send(q.method, &q.path, &hs, q.body.clone()).await
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    client: Client,
    _running: spockfs_tests::Running,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = dir.path().to_path_buf();
    layout(&base);
    let (addr, running) = start_axum(axum_args(&base.join("root"))).await;
    Fixture {
        _dir: dir,
        base,
        client: Client::new(&format!("http://{addr}/fs")),
        _running: running,
    }
}

/// Paths that go through a symlink or `..` in a parent position: every
/// method must be refused and change nothing anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_escapes_change_nothing() {
    let f = fixture().await;
    let evil = [
        "/abs/secret",
        "/rel/secret",
        "/twisty/secret",
        "/abs/odir/deep",
        "/rel/odir",
        "/abs/newthing",
        "/rel/odir/newthing",
        "/slash/etc/passwd",
        "/slash/tmp",
        "/loop/x",
        "/dangling/x",
        "/fabs/x",
        "/inner/file",
        "/%2e%2e/outside/secret",
        "/dir/%2e%2e/%2e%2e/outside/secret",
        "/dir/..%2f..%2foutside%2fsecret",
        "/%2E%2E/outside",
        "/../outside/secret",
        "/dir/../../outside/secret",
        "/dir/%2e%2e%2f%2e%2e%2foutside",
    ];
    let before = snapshot(&f.base, &f.base);
    let ct = ctimes(&f.base.join("outside"));
    let mut checked = 0;
    for p in evil {
        for q in every_method(p, "/dir/file") {
            let resp = send(&f.client, &q).await;
            assert!(
                !resp.status.is_success(),
                "{} {} {:?} succeeded: {} {:?}",
                q.method,
                q.path,
                q.headers,
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
            assert!(
                !resp.body.windows(6).any(|w| w == b"SECRET"),
                "{} {} leaked outside content",
                q.method,
                q.path
            );
            let after = snapshot(&f.base, &f.base);
            assert_eq!(
                after, before,
                "{} {} {:?} changed the tree",
                q.method, q.path, q.headers
            );
            checked += 1;
        }
    }
    assert_eq!(
        ctimes(&f.base.join("outside")),
        ct,
        "metadata outside changed"
    );
    eprintln!("parent escapes: {checked} requests refused, tree unchanged");
}

/// RENAME/LINK whose X-Spock-target goes outside, or that would move an
/// inside object out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_path_escapes() {
    let f = fixture().await;
    let before = snapshot(&f.base, &f.base);
    let cases = [
        ("RENAME", "/dir/stolen", "/abs/secret"),
        ("RENAME", "/dir/stolen", "/rel/secret"),
        ("RENAME", "/dir/stolen", "/%2e%2e/outside/secret"),
        ("RENAME", "/dir/stolen", "/../outside/secret"),
        ("RENAME", "/abs/planted", "/dir/file"),
        ("RENAME", "/rel/planted", "/dir/file"),
        ("LINK", "/dir/stolen", "/abs/secret"),
        ("LINK", "/dir/stolen", "/twisty/secret"),
        ("LINK", "/abs/planted", "/dir/file"),
        ("LINK", "/dir/stolen", "/fabs/"),
        ("RENAME", "/dir/stolen", "/fabs/"),
        ("RENAME", "/dir/stolen", "/dir/file/../../fabs"),
    ];
    for (m, path, target) in cases {
        let resp = f.client.req(m, path, &[("X-Spock-target", target)]).await;
        assert!(
            !resp.status.is_success(),
            "{m} {path} <- {target}: {}",
            resp.status
        );
        assert_eq!(
            snapshot(&f.base, &f.base),
            before,
            "{m} {path} <- {target} changed the tree"
        );
    }
}

/// A symlink as the final component is acted on itself, never followed:
/// nothing outside may change, and nothing outside may be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_symlinks_are_not_followed() {
    let f = fixture().await;
    let outside = f.base.join("outside");
    let out_before = snapshot(&outside, &outside);
    let ct = ctimes(&outside);
    for link in [
        "/fabs",
        "/frel",
        "/abs",
        "/rel",
        "/slash",
        "/dangling",
        "/loop",
    ] {
        for q in every_method(link, "/dir/other") {
            let resp = send(&f.client, &q).await;
            assert!(
                !resp.body.windows(6).any(|w| w == b"SECRET"),
                "{} {link} read outside content",
                q.method
            );
            if q.method == "GETATTR" && resp.status.is_success() {
                let mode: u32 = resp.header("x-spock-mode").parse().unwrap_or(0);
                assert_eq!(
                    mode & 0o170000,
                    0o120000,
                    "GETATTR {link} followed the link"
                );
            }
            if [
                "GET",
                "HEAD",
                "TRUNCATE",
                "FALLOCATE",
                "READDIR",
                "OPEN",
                "CHMOD",
                "SETXATTR",
            ]
            .contains(&q.method)
                || (q.method == "PUT" && !q.headers.is_empty())
            {
                assert!(
                    !resp.status.is_success(),
                    "{} {link} succeeded through a symlink",
                    q.method
                );
            }
            assert_eq!(
                snapshot(&outside, &outside),
                out_before,
                "{} {link} changed the outside",
                q.method
            );
            assert_eq!(
                ctimes(&outside),
                ct,
                "{} {link} changed outside metadata",
                q.method
            );
            // Put the link back if the request legitimately replaced or
            // removed it (DELETE, RENAME, whole-file PUT act on the link).
            let _ = std::fs::remove_file(f.base.join("root/dir/other"));
            let root = f.base.join("root");
            let lp = root.join(&link[1..]);
            if std::fs::symlink_metadata(&lp)
                .map(|m| !m.file_type().is_symlink())
                .unwrap_or(true)
            {
                let _ = std::fs::remove_file(&lp);
                let _ = std::fs::remove_dir(&lp);
                let target: PathBuf = match link {
                    "/fabs" => outside.join("secret"),
                    "/frel" => "../outside/secret".into(),
                    "/abs" => outside.clone(),
                    "/rel" => "../outside".into(),
                    "/slash" => "/".into(),
                    "/dangling" => "nowhere".into(),
                    _ => "loop".into(),
                };
                std::os::unix::fs::symlink(target, &lp).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// The differential table: ordinary requests against the same syscalls done
/// directly in a twin tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_direct_syscalls() {
    type Direct = fn(&Path);
    let cases: Vec<(Req, Option<Direct>)> = vec![
        (
            r("MKDIR", "/dir/new", &[("X-Spock-mode", "493")]),
            Some(|b| mkdir_exact(&b.join("root/dir/new"), 0o755)),
        ),
        (r("MKDIR", "/dir/sub", &[("X-Spock-mode", "493")]), None),
        (r("MKDIR", "/inner/new", &[("X-Spock-mode", "493")]), None),
        (
            r("POST", "/dir/p", &[("X-Spock-mode", "256")]),
            Some(|b| create_exact(&b.join("root/dir/p"), 0o600)),
        ),
        (r("POST", "/fabs", &[("X-Spock-mode", "256")]), None),
        (
            r("TRUNCATE", "/dir/file", &[("X-Spock-size", "2")]),
            Some(|b| truncate(&b.join("root/dir/file"), 2)),
        ),
        (r("TRUNCATE", "/frel", &[("X-Spock-size", "2")]), None),
        (
            r("CHMOD", "/dir/file", &[("X-Spock-mode", "384")]),
            Some(|b| chmod(&b.join("root/dir/file"), 0o600)),
        ),
        (
            r("CHMOD", "/dir", &[("X-Spock-mode", "448")]),
            Some(|b| chmod(&b.join("root/dir"), 0o700)),
        ),
        (r("CHMOD", "/fabs", &[("X-Spock-mode", "511")]), None),
        (
            r("SYMLINK", "/dir/l", &[("X-Spock-target", "/etc/shadow")]),
            Some(|b| symlink("/etc/shadow", &b.join("root/dir/l"))),
        ),
        (r("SYMLINK", "/abs/l", &[("X-Spock-target", "x")]), None),
        (
            r("LINK", "/dir/h", &[("X-Spock-target", "/dir/file")]),
            Some(|b| hardlink(&b.join("root/dir/file"), &b.join("root/dir/h"))),
        ),
        (
            r("LINK", "/dir/h", &[("X-Spock-target", "/fabs")]),
            Some(|b| hardlink_nofollow(&b.join("root/fabs"), &b.join("root/dir/h"))),
        ),
        (
            r(
                "RENAME",
                "/dir/sub/moved",
                &[("X-Spock-target", "/dir/file")],
            ),
            Some(|b| rename(&b.join("root/dir/file"), &b.join("root/dir/sub/moved"))),
        ),
        (
            r("RENAME", "/dir/moved", &[("X-Spock-target", "/fabs")]),
            Some(|b| rename(&b.join("root/fabs"), &b.join("root/dir/moved"))),
        ),
        (
            r("RENAME", "/dir/moved", &[("X-Spock-target", "/rel/secret")]),
            None,
        ),
        (
            r("DELETE", "/dir/file", &[]),
            Some(|b| unlink(&b.join("root/dir/file"))),
        ),
        (
            r("DELETE", "/fabs", &[]),
            Some(|b| unlink(&b.join("root/fabs"))),
        ),
        (r("DELETE", "/abs/secret", &[]), None),
        (
            r("RMDIR", "/dir/sub", &[]),
            Some(|b| rmdir(&b.join("root/dir/sub"))),
        ),
        (r("RMDIR", "/abs/odir", &[]), None),
        (
            r(
                "MKNOD",
                "/dir/fifo",
                &[("X-Spock-mode", "4534"), ("X-Spock-dev", "0")],
            ),
            Some(|b| mkfifo_exact(&b.join("root/dir/fifo"), 0o666)),
        ),
        (
            r(
                "MKNOD",
                "/dir/blk",
                &[("X-Spock-mode", "24960"), ("X-Spock-dev", "2049")],
            ),
            None,
        ),
        (
            r(
                "SETXATTR",
                "/dir/file",
                &[("X-Spock-target", "user.k"), ("X-Spock-flag", "0")],
            ),
            Some(|b| setxattr(&b.join("root/dir/file"), "user.k", b"")),
        ),
        (
            r(
                "SETXATTR",
                "/fabs",
                &[("X-Spock-target", "user.k"), ("X-Spock-flag", "0")],
            ),
            None,
        ),
        (
            r(
                "FALLOCATE",
                "/dir/file",
                &[("X-Spock-mode", "0"), ("Range", "bytes=0-99")],
            ),
            Some(|b| truncate(&b.join("root/dir/file"), 100)),
        ),
        (
            Req {
                body: b"XY".to_vec(),
                ..r("PUT", "/dir/file", &[("Content-Range", "bytes=2-3")])
            },
            Some(|b| pwrite(&b.join("root/dir/file"), 2, b"XY")),
        ),
        (
            Req {
                body: b"XY".to_vec(),
                ..r("PUT", "/dir/whole", &[])
            },
            Some(|b| {
                std::fs::write(b.join("root/dir/whole"), b"XY").unwrap_or_else(|e| panic!("{e}"))
            }),
        ),
        (
            Req {
                body: b"XY".to_vec(),
                ..r("PUT", "/rel/whole", &[])
            },
            None,
        ),
        (
            Req {
                body: b"XY".to_vec(),
                ..r("PUT", "/frel", &[("Content-Range", "bytes=0-1")])
            },
            None,
        ),
    ];
    let mut compared = 0;
    for (q, direct) in cases {
        let twin = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        layout(twin.path());
        // Make the twin's absolute symlinks point at the same relative
        // places (they name each tree's own outside dir).
        let f = fixture().await;
        let resp = send(&f.client, &q).await;
        match direct {
            Some(op) => {
                assert!(
                    resp.status.is_success(),
                    "{} {}: {} {:?}",
                    q.method,
                    q.path,
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
                op(twin.path());
            }
            None => assert!(
                !resp.status.is_success(),
                "{} {} succeeded",
                q.method,
                q.path
            ),
        }
        let a = snapshot(&f.base, &f.base);
        let b = snapshot(twin.path(), twin.path());
        assert_eq!(
            a, b,
            "{} {} {:?}: server effect differs from the direct syscall",
            q.method, q.path, q.headers
        );
        compared += 1;
    }
    eprintln!("differential: {compared} cases identical");
}

fn mkdir_exact(p: &Path, mode: u32) {
    std::fs::create_dir(p).unwrap_or_else(|e| panic!("{e}"));
    chmod(p, mode);
}
fn create_exact(p: &Path, mode: u32) {
    std::fs::write(p, b"").unwrap_or_else(|e| panic!("{e}"));
    chmod(p, mode);
}
fn mkfifo_exact(p: &Path, mode: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(mode),
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    chmod(p, mode);
}
fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{e}"));
}
fn truncate(p: &Path, n: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|f| f.set_len(n))
        .unwrap_or_else(|e| panic!("{e}"));
}
fn pwrite(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|f| f.write_all_at(data, off))
        .unwrap_or_else(|e| panic!("{e}"));
}
fn symlink(t: &str, p: &Path) {
    std::os::unix::fs::symlink(t, p).unwrap_or_else(|e| panic!("{e}"));
}
fn hardlink(a: &Path, b: &Path) {
    std::fs::hard_link(a, b).unwrap_or_else(|e| panic!("{e}"));
}
fn hardlink_nofollow(a: &Path, b: &Path) {
    rustix::fs::linkat(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
fn rename(a: &Path, b: &Path) {
    std::fs::rename(a, b).unwrap_or_else(|e| panic!("{e}"));
}
fn unlink(p: &Path) {
    std::fs::remove_file(p).unwrap_or_else(|e| panic!("{e}"));
}
fn rmdir(p: &Path) {
    std::fs::remove_dir(p).unwrap_or_else(|e| panic!("{e}"));
}
fn setxattr(p: &Path, n: &str, v: &[u8]) {
    rustix::fs::setxattr(p, n, v, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("{e}"));
}

fn creates(q: &Req) -> bool {
    matches!(q.method, "MKNOD" | "SYMLINK" | "MKDIR" | "POST")
        || (q.method == "PUT" && q.headers.is_empty())
}

/// Removes `made` from whichever of `swap`/`alt` is currently the real
/// directory, through an fd opened with `O_NOFOLLOW` so the test itself can
/// never reach outside.
fn remove_made(race: &Path) {
    use rustix::fs::{AtFlags, Mode, OFlags};
    for name in ["swap", "alt"] {
        let Ok(dir) = rustix::fs::open(
            race.join(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        ) else {
            continue;
        };
        let _ = rustix::fs::unlinkat(&dir, "made", AtFlags::empty());
        let _ = rustix::fs::unlinkat(&dir, "made", AtFlags::REMOVEDIR);
    }
}

/// The rename-exchange race (after Linux's
/// `selftests/openat2/rename_attack_test.c`): one thread keeps swapping a
/// directory with a symlink to the outside while clients hammer paths
/// through it. `secret` exists only outside, so any success on it is an
/// escape; the outside tree must be untouched at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_exchange_race_never_escapes() {
    let secs: u64 = std::env::var("SPOCKFS_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let f = fixture().await;
    let race = f.base.join("root/race");
    std::fs::create_dir_all(race.join("swap")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(race.join("swap/f"), b"inside").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(f.base.join("outside"), race.join("alt"))
        .unwrap_or_else(|e| panic!("{e}"));
    let outside = f.base.join("outside");
    let out_before = snapshot(&outside, &outside);
    let ct = ctimes(&outside);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, race) = (stop.clone(), swaps.clone(), race.clone());
        std::thread::spawn(move || {
            let dir = rustix::fs::open(
                &race,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    &dir,
                    "swap",
                    &dir,
                    "alt",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap_or_else(|e| panic!("exchange: {e}"));
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(secs);
    let escapes = Arc::new(AtomicU64::new(0));
    let inside_ok = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (c, escapes, inside_ok, total) = (
            f.client.clone(),
            escapes.clone(),
            inside_ok.clone(),
            total.clone(),
        );
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            // Probes name `secret`, which exists only outside: any success
            // means the request resolved through the symlink.
            let probes: Vec<Req> = every_method("/race/swap/secret", "/race/stolen")
                .into_iter()
                .filter(|q| !creates(q))
                .collect();
            // Creations name `made`: success inside the real directory is
            // legitimate; an escape would show up outside at the end.
            let creators: Vec<Req> = every_method("/race/swap/made", "/race/stolen")
                .into_iter()
                .filter(creates)
                .collect();
            let mut i = worker;
            while Instant::now() < deadline {
                let q = &probes[i % probes.len()];
                let resp = send(&c, q).await;
                total.fetch_add(1, Ordering::Relaxed);
                if resp.status.is_success() {
                    escapes.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "ESCAPE: {} {} {:?} -> {}",
                        q.method, q.path, q.headers, resp.status
                    );
                }
                if resp.body.windows(6).any(|w| w == b"SECRET") {
                    escapes.fetch_add(1, Ordering::Relaxed);
                    eprintln!("LEAK: {} {}", q.method, q.path);
                }
                let q = &creators[i % creators.len()];
                let _ = send(&c, q).await;
                total.fetch_add(1, Ordering::Relaxed);
                remove_made(&race);
                let g = c.req("GET", "/race/swap/f", &[]).await;
                total.fetch_add(1, Ordering::Relaxed);
                if g.status.is_success() {
                    assert_eq!(&g.body[..], b"inside");
                    inside_ok.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper
        .join()
        .unwrap_or_else(|_| panic!("swapper panicked"));
    let (escapes, inside_ok, total, swaps) = (
        escapes.load(Ordering::Relaxed),
        inside_ok.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed),
        swaps.load(Ordering::Relaxed),
    );
    eprintln!("race: {secs}s, {swaps} swaps, {total} requests, {inside_ok} inside reads ok, {escapes} escapes");
    assert_eq!(escapes, 0, "requests escaped the root");
    assert!(inside_ok > 0, "the race never exercised the inside path");
    assert!(swaps > 1000, "swapper too slow to test anything");
    assert_eq!(
        snapshot(&outside, &outside),
        out_before,
        "outside changed during the race"
    );
    assert_eq!(
        ctimes(&outside),
        ct,
        "outside metadata changed during the race"
    );
}
