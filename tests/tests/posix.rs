//! POSIX behaviour that needs more than one request per call (issue 15):
//! through a real FUSE mount of the axum app, and over real HTTP against
//! both example servers.
//!
//! - a file unlinked (or replaced by a rename) while open keeps working for
//!   its descriptors: the mount hides it under `.spockfs-hidden.*` and
//!   removes it on the last close;
//! - nanosecond times (extension `nsec`), `UTIME_NOW` and `UTIME_OMIT`,
//!   and `touch` by a non-owner with write access;
//! - names over 255 bytes are `ENAMETOOLONG` through the mount, whatever
//!   its caches know;
//! - device nodes: only where a mount allows them *and* the server's
//!   filesystem is mounted `nodev`.
//!
//! The FUSE tests need `/dev/fuse` and `fusermount3`, the device tests root
//! (to mount tmpfs): without them they print why and pass, except under
//! `CI=true`, where they fail.

use spockfs_mount::{spawn_mount, MountConfig, Mounted};
use spockfs_tests::procs::{ci, Tmpfs};
use spockfs_tests::{axum_args, free_port, start_axum, Running};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HIDDEN: &str = ".spockfs-hidden.";

fn skip(why: &str) -> bool {
    assert!(!ci(), "{why}: required under CI=true");
    eprintln!("SKIPPED: {why}");
    true
}

fn fuse_missing() -> bool {
    let bin = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    if Path::new("/dev/fuse").exists() && bin {
        return false;
    }
    skip("needs /dev/fuse and fusermount3 (Debian package fuse3)")
}

fn not_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    skip("needs root")
}

/// A tempdir (searchable by anyone) with `root/` (served) and `mnt/`.
fn workdir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let (root, mnt) = (dir.path().join("root"), dir.path().join("mnt"));
    for d in [&root, &mnt] {
        fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    (dir, root, mnt)
}

/// The axum app with `args` on `rt`, and a mount of it with `cfg`.
fn serve_and_mount(
    rt: &tokio::runtime::Runtime,
    args: axum_app::Args,
    mnt: &Path,
    cfg: MountConfig,
) -> (Running, Mounted) {
    let (addr, running) = rt.block_on(start_axum(args));
    let url = format!("http://{addr}/fs");
    let client = {
        let _g = rt.enter();
        spockfs_client::Client::builder(&url)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"))
    };
    let cfg = MountConfig { fsname: url, ..cfg };
    let m = spawn_mount(client, mnt, cfg).unwrap_or_else(|e| panic!("mount: {e}"));
    (running, m)
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The hidden names in a directory of the server's disk.
fn hidden_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(HIDDEN))
        .collect();
    v.sort();
    v
}

/// Names listed through the mount.
fn listed(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    v.sort();
    v
}

fn sh(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// 1. open files that lose their last name

/// Unlinked while open: reads, writes, `fstat` (link count 0) and
/// `ftruncate` keep working on the descriptor, the name is gone, listings
/// through the mount do not show the hidden file, the directory is not
/// empty until the last close and can be removed right after it.
#[test]
fn an_unlinked_open_file_keeps_working() {
    if fuse_missing() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    fs::create_dir(root.join("d")).unwrap_or_else(|e| panic!("{e}"));
    fs::write(root.join("d/f"), b"hello").unwrap_or_else(|e| panic!("{e}"));
    let (_srv, m) = serve_and_mount(&rt, axum_args(&root), &mnt, MountConfig::default());

    let mut fd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("d/f"))
        .unwrap_or_else(|e| panic!("open: {e}"));
    fs::remove_file(mnt.join("d/f")).unwrap_or_else(|e| panic!("unlink: {e}"));
    assert_eq!(errno(fs::metadata(mnt.join("d/f"))), libc::ENOENT);
    assert!(!root.join("d/f").exists());
    let hidden = hidden_in(&root.join("d"));
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    // Neither listing path shows it (readdir(3), and `ls -la`'s stats).
    assert_eq!(listed(&mnt.join("d")), Vec::<String>::new());
    assert!(!sh(&mnt, "ls -la d").contains(HIDDEN));

    let mut s = String::new();
    fd.read_to_string(&mut s)
        .unwrap_or_else(|e| panic!("read after unlink: {e}"));
    assert_eq!(s, "hello");
    fd.seek(SeekFrom::Start(0))
        .unwrap_or_else(|e| panic!("{e}"));
    fd.write_all(b"HELLO, world")
        .unwrap_or_else(|e| panic!("write after unlink: {e}"));
    let st = fd.metadata().unwrap_or_else(|e| panic!("fstat: {e}"));
    assert_eq!((st.len(), st.nlink()), (12, 0));
    fd.set_len(5).unwrap_or_else(|e| panic!("ftruncate: {e}"));
    assert_eq!(fd.metadata().map(|m| m.len()).ok(), Some(5));
    let mut back = Vec::new();
    fd.seek(SeekFrom::Start(0))
        .unwrap_or_else(|e| panic!("{e}"));
    fd.read_to_end(&mut back).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, b"HELLO");
    assert_eq!(
        fs::read(root.join("d").join(&hidden[0])).ok(),
        Some(b"HELLO".to_vec())
    );

    // Like NFS: not empty while the hidden file is open.
    assert_eq!(errno(fs::remove_dir(mnt.join("d"))), libc::ENOTEMPTY);
    // A new file under the old name is another file.
    fs::write(mnt.join("d/f"), b"new").unwrap_or_else(|e| panic!("{e}"));
    fs::remove_file(mnt.join("d/f")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hidden_in(&root.join("d")), hidden);

    // The last close removes it: the directory can go at once.
    drop(fd);
    fs::remove_dir(mnt.join("d")).unwrap_or_else(|e| panic!("rmdir after the last close: {e}"));
    assert!(!root.join("d").exists());
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

/// Several descriptors: the hidden file lives until the last one closes.
/// A rename over an open file hides the replaced one: its descriptors
/// still read the old content, the name has the new.
#[test]
fn replaced_and_shared_open_files() {
    if fuse_missing() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    fs::write(root.join("a"), b"new").unwrap_or_else(|e| panic!("{e}"));
    fs::write(root.join("b"), b"old").unwrap_or_else(|e| panic!("{e}"));
    fs::write(root.join("c"), b"shared").unwrap_or_else(|e| panic!("{e}"));
    let (_srv, m) = serve_and_mount(&rt, axum_args(&root), &mnt, MountConfig::default());

    let mut old = fs::File::open(mnt.join("b")).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(mnt.join("a"), mnt.join("b")).unwrap_or_else(|e| panic!("rename: {e}"));
    assert_eq!(fs::read(mnt.join("b")).ok(), Some(b"new".to_vec()));
    assert_eq!(errno(fs::metadata(mnt.join("a"))), libc::ENOENT);
    let mut s = String::new();
    old.read_to_string(&mut s)
        .unwrap_or_else(|e| panic!("read of the replaced file: {e}"));
    assert_eq!(s, "old");
    assert_eq!(hidden_in(&root).len(), 1);
    assert_eq!(listed(&mnt), ["b", "c"]);
    drop(old);
    wait_for("the replaced file's hidden name removed", || {
        hidden_in(&root).is_empty()
    });

    let mut one = fs::File::open(mnt.join("c")).unwrap_or_else(|e| panic!("{e}"));
    let mut two = fs::File::open(mnt.join("c")).unwrap_or_else(|e| panic!("{e}"));
    fs::remove_file(mnt.join("c")).unwrap_or_else(|e| panic!("{e}"));
    let mut s = String::new();
    one.read_to_string(&mut s).unwrap_or_else(|e| panic!("{e}"));
    drop(one);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hidden_in(&root).len(), 1, "one descriptor is still open");
    let mut s2 = String::new();
    two.read_to_string(&mut s2)
        .unwrap_or_else(|e| panic!("read through the second descriptor: {e}"));
    assert_eq!((s.as_str(), s2.as_str()), ("shared", "shared"));
    drop(two);
    wait_for("hidden name removed after the last close", || {
        hidden_in(&root).is_empty()
    });
    assert_eq!(listed(&mnt), ["b"]);
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

/// A hidden file left on the server by a mount that died is not listed
/// through another mount, keeps its directory non-empty, and can be
/// removed by its exact name.
#[test]
fn hidden_leftovers_are_not_listed() {
    if fuse_missing() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    fs::create_dir(root.join("d")).unwrap_or_else(|e| panic!("{e}"));
    let left = format!("{HIDDEN}0123456789abcdef.2a.0");
    fs::write(root.join("d").join(&left), b"orphan").unwrap_or_else(|e| panic!("{e}"));
    fs::write(root.join("d/visible"), b"v").unwrap_or_else(|e| panic!("{e}"));
    let (_srv, m) = serve_and_mount(&rt, axum_args(&root), &mnt, MountConfig::default());
    assert_eq!(listed(&mnt.join("d")), ["visible"]);
    assert!(!sh(&mnt, "ls -la d").contains(HIDDEN));
    fs::remove_file(mnt.join("d/visible")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(errno(fs::remove_dir(mnt.join("d"))), libc::ENOTEMPTY);
    assert_eq!(
        fs::read(mnt.join("d").join(&left)).ok(),
        Some(b"orphan".to_vec())
    );
    fs::remove_file(mnt.join("d").join(&left)).unwrap_or_else(|e| panic!("{e}"));
    fs::remove_dir(mnt.join("d")).unwrap_or_else(|e| panic!("{e}"));
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

// ---------------------------------------------------------------------------
// 2. nanosecond times, UTIME_NOW and UTIME_OMIT

fn ts(sec: i64, nsec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

fn utimensat(p: &Path, atime: rustix::fs::Timespec, mtime: rustix::fs::Timespec) -> i32 {
    let t = rustix::fs::Timestamps {
        last_access: atime,
        last_modification: mtime,
    };
    match rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::empty()) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    }
}

fn times(p: &Path) -> (i64, i64, i64, i64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
}

/// Times to the nanosecond both ways: set through the mount (the kernel
/// passes them on), set on the server and seen through the mount, by
/// `stat` and by a listing (readdirplus); `UTIME_OMIT` keeps a time to the
/// nanosecond, `UTIME_NOW` is the server's clock.
#[test]
fn nanosecond_times_through_the_mount() {
    if fuse_missing() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    fs::create_dir(root.join("d")).unwrap_or_else(|e| panic!("{e}"));
    for f in ["d/a", "d/b"] {
        fs::write(root.join(f), b"x").unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        utimensat(
            &root.join("d/b"),
            ts(1_000_000_000, 1),
            ts(1_500_000_000, 987_654_321)
        ),
        0
    );
    let (_srv, m) = serve_and_mount(&rt, axum_args(&root), &mnt, MountConfig::default());

    // Seen first through a listing, then by stat.
    let via_ls = sh(&mnt, "stat -c '%n %x %y' d/*");
    assert!(
        via_ls.contains(".000000001 ") && via_ls.contains(".987654321 "),
        "{via_ls}"
    );
    assert_eq!(
        times(&mnt.join("d/b")),
        (1_000_000_000, 1, 1_500_000_000, 987_654_321)
    );

    assert_eq!(
        utimensat(
            &mnt.join("d/a"),
            ts(1_234_567_890, 123_456_789),
            ts(-5, 999_999_999)
        ),
        0
    );
    assert_eq!(
        times(&root.join("d/a")),
        (1_234_567_890, 123_456_789, -5, 999_999_999)
    );
    assert_eq!(
        times(&mnt.join("d/a")),
        (1_234_567_890, 123_456_789, -5, 999_999_999)
    );

    // UTIME_OMIT: the atime stays exactly; UTIME_NOW: the clock.
    let omit = ts(0, rustix::fs::UTIME_OMIT);
    let now = ts(0, rustix::fs::UTIME_NOW);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    assert_eq!(utimensat(&mnt.join("d/a"), omit, now), 0);
    let (a, an, m_, _) = times(&root.join("d/a"));
    assert_eq!((a, an), (1_234_567_890, 123_456_789));
    assert!(m_ >= before && m_ < before + 60, "mtime {m_}, now {before}");
    assert_eq!(times(&mnt.join("d/a")), times(&root.join("d/a")));
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

/// `touch` (utimensat with `UTIME_NOW` for both) by a user who may write a
/// file but does not own it: allowed, as on a local disk; explicit times
/// are not. The server trusts the mount's caller ids, so it is the
/// kernel's rule on the server's side that decides.
#[test]
fn touch_by_a_writer_who_is_not_the_owner() {
    if fuse_missing() || not_root() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    for (f, mode) in [("shared", 0o666), ("readonly", 0o644)] {
        fs::write(root.join(f), b"x").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(root.join(f), fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(utimensat(&root.join(f), ts(5, 0), ts(5, 0)), 0);
    }
    let mut args = axum_args(&root);
    args.trust_client_ids = true;
    let cfg = MountConfig {
        allow_other: true,
        ..MountConfig::default()
    };
    let (_srv, m) = serve_and_mount(&rt, args, &mnt, cfg);
    let (shared, readonly) = (mnt.join("shared"), mnt.join("readonly"));
    // As uid 1000, on a thread of its own (credentials are per thread).
    let r = std::thread::spawn(move || {
        use rustix::process::{Gid, Uid};
        let (gid, uid) = (Gid::from_raw(1000), Uid::from_raw(1000));
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        let now = ts(0, rustix::fs::UTIME_NOW);
        let omit = ts(0, rustix::fs::UTIME_OMIT);
        Ok::<_, rustix::io::Errno>([
            utimensat(&shared, now, now),
            utimensat(&shared, ts(7, 0), ts(7, 0)),
            utimensat(&shared, now, omit),
            utimensat(&readonly, now, now),
        ])
    })
    .join()
    .unwrap_or_else(|_| panic!("thread panicked"));
    let got = r.unwrap_or_else(|e| panic!("cannot become uid 1000: {e}"));
    assert_eq!(got, [0, libc::EPERM, libc::EPERM, libc::EACCES]);
    let (_, _, mtime, _) = times(&root.join("shared"));
    assert!(mtime > 5, "touched: mtime {mtime}");
    assert_eq!(times(&root.join("readonly")).2, 5);
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

// ---------------------------------------------------------------------------
// 3. names longer than NAME_MAX

/// Every call that takes a name answers `ENAMETOOLONG` for a name over 255
/// bytes, also right after a listing told the mount which names exist
/// (its negative cache used to answer `ENOENT` first).
#[test]
fn long_names_are_enametoolong() {
    if fuse_missing() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (_dir, root, mnt) = workdir();
    fs::create_dir(root.join("d")).unwrap_or_else(|e| panic!("{e}"));
    fs::write(root.join("d/f"), b"x").unwrap_or_else(|e| panic!("{e}"));
    let (_srv, m) = serve_and_mount(&rt, axum_args(&root), &mnt, MountConfig::default());
    let d = mnt.join("d");
    let f = d.join("f");
    let max = "n".repeat(255);
    fs::write(d.join(&max), b"255 is fine").unwrap_or_else(|e| panic!("255 bytes: {e}"));
    for len in [256, 1000] {
        // Listed: the mount knows every name of d.
        assert_eq!(listed(&d).len(), 2);
        let long = d.join("n".repeat(len));
        let e = |r: std::io::Result<()>| errno(r);
        let calls: [(&str, i32); 10] = [
            ("stat", e(fs::symlink_metadata(&long).map(drop))),
            ("create", e(fs::File::create(&long).map(drop))),
            ("mkdir", e(fs::create_dir(&long))),
            (
                "mknod",
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &long,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| e.raw_os_error())
                .err()
                .unwrap_or(0),
            ),
            ("symlink", e(std::os::unix::fs::symlink("f", &long))),
            ("link", e(fs::hard_link(&f, &long))),
            ("rename to", e(fs::rename(&f, &long))),
            ("rename from", e(fs::rename(&long, d.join("g")))),
            ("unlink", e(fs::remove_file(&long))),
            ("rmdir", e(fs::remove_dir(&long))),
        ];
        for (what, got) in calls {
            assert_eq!(got, libc::ENAMETOOLONG, "{what} of a {len}-byte name");
        }
    }
    assert_eq!(fs::read(&f).ok(), Some(b"x".to_vec()));
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

// ---------------------------------------------------------------------------
// 4. device nodes

/// `S_IFCHR | 0600`, and `makedev(1, 3)` (`/dev/null`'s numbers).
const CHR: u32 = 0o020600;
const BLK: u32 = 0o060600;
const DEV: u64 = 0x103;

/// Two tmpfs, one mounted `nodev`, one not, each with a `root/` inside,
/// and in the nodev one a `dev` tmpfs mounted on `root/sub`.
struct Filesystems {
    _dir: tempfile::TempDir,
    nodev: PathBuf,
    dev: PathBuf,
    _mounts: Vec<Tmpfs>,
}

fn filesystems() -> Option<Filesystems> {
    if not_root() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut mounts = Vec::new();
    for (name, opt) in [("nodev", "nodev"), ("dev", "dev")] {
        match Tmpfs::mount_with(&dir.path().join(name), 4096, &[opt]) {
            Ok(t) => mounts.push(t),
            Err(e) => {
                skip(&format!("cannot mount tmpfs: {e}"));
                return None;
            }
        }
        fs::create_dir(dir.path().join(name).join("root")).unwrap_or_else(|e| panic!("{e}"));
    }
    let sub = dir.path().join("nodev/root/sub");
    // First in the list: unmounted first.
    mounts.insert(
        0,
        Tmpfs::mount_with(&sub, 1024, &["dev"]).unwrap_or_else(|e| panic!("tmpfs on sub: {e}")),
    );
    Some(Filesystems {
        nodev: dir.path().join("nodev/root"),
        dev: dir.path().join("dev/root"),
        _dir: dir,
        _mounts: mounts,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Srv {
    Axum,
    Gateway,
}

/// `srv` serving `root` with or without `allow_devices`.
async fn serve(
    srv: Srv,
    root: &Path,
    allow: bool,
) -> (spockfs_tests::Client, Box<dyn std::any::Any>) {
    match srv {
        Srv::Axum => {
            let mut a = axum_args(root);
            a.allow_devices = allow;
            let (addr, running) = start_axum(a).await;
            (
                spockfs_tests::Client::new(&format!("http://{addr}/fs")),
                Box::new(running),
            )
        }
        Srv::Gateway => {
            let port = free_port();
            let toml = format!(
                "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
                 default_upstream = \"127.0.0.1:1\"\n\
                 [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\nallow_devices = {allow}\n\
                 [server]\nthreads = 2\n",
                root.display()
            );
            let cfg =
                pingora_gateway::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            let running =
                pingora_gateway::run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
            (
                spockfs_tests::Client::new(&format!("http://127.0.0.1:{port}/fs")),
                Box::new(running),
            )
        }
    }
}

/// Over HTTP on both servers: refused by default (and `nodev` in the
/// OPTIONS policy); with `allow_devices`, made on the nodev filesystem
/// (character and block, with their numbers), refused with a reason on the
/// other one and on a filesystem without nodev mounted under the nodev
/// root (decided on the directory, not the root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_only_where_inert_and_allowed() {
    let Some(fss) = filesystems() else { return };
    for srv in [Srv::Axum, Srv::Gateway] {
        for allow in [false, true] {
            for (root, nodev) in [(&fss.nodev, true), (&fss.dev, false)] {
                let what = format!("{srv:?} allow_devices={allow} nodev={nodev}");
                let (c, _server) = serve(srv, root, allow).await;
                let policy = c.req("OPTIONS", "/", &[]).await;
                assert_eq!(
                    policy.header("x-spock-policy").contains("nodev"),
                    !allow,
                    "{what}: {:?}",
                    policy.header("x-spock-policy")
                );
                let mknod = |name: &'static str, mode: u32| {
                    let c = c.clone();
                    async move {
                        c.req(
                            "MKNOD",
                            &format!("/{name}"),
                            &[
                                ("X-Spock-mode", &mode.to_string()),
                                ("X-Spock-dev", &DEV.to_string()),
                            ],
                        )
                        .await
                    }
                };
                let r = mknod("c", CHR).await;
                let made = allow && nodev;
                if made {
                    assert_eq!(
                        r.status,
                        201,
                        "{what}: {:?}",
                        String::from_utf8_lossy(&r.body)
                    );
                    assert_eq!(mknod("b", BLK).await.status, 201, "{what}");
                    let c = fs::symlink_metadata(root.join("c")).unwrap_or_else(|e| panic!("{e}"));
                    let b = fs::symlink_metadata(root.join("b")).unwrap_or_else(|e| panic!("{e}"));
                    assert!(c.file_type().is_char_device(), "{what}");
                    assert!(b.file_type().is_block_device(), "{what}");
                    assert_eq!((c.rdev(), c.mode() & 0o7777), (DEV, 0o600), "{what}");
                    // Inert: the server's kernel will not open it.
                    assert_eq!(
                        errno(fs::File::open(root.join("c"))),
                        libc::EACCES,
                        "{what}"
                    );
                    // A filesystem without nodev mounted inside the root.
                    let r = mknod("sub/c", CHR).await;
                    assert_eq!(
                        (r.status.as_u16(), r.errno()),
                        (403, "EPERM"),
                        "{what}: sub"
                    );
                    assert!(String::from_utf8_lossy(&r.body).contains("nodev"), "{what}");
                    assert!(!root.join("sub/c").exists());
                    for n in ["c", "b"] {
                        fs::remove_file(root.join(n)).unwrap_or_else(|e| panic!("{e}"));
                    }
                } else {
                    assert_eq!((r.status.as_u16(), r.errno()), (403, "EPERM"), "{what}");
                    let body = String::from_utf8_lossy(&r.body).into_owned();
                    if allow {
                        assert!(body.contains("nodev"), "{what}: {body}");
                    }
                    assert!(!root.join("c").exists(), "{what}");
                    assert_eq!(mknod("b", BLK).await.status, 403, "{what}");
                }
                // FIFOs are not devices: made everywhere.
                assert_eq!(mknod("p", 0o010600).await.status, 201, "{what}");
                fs::remove_file(root.join("p")).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// Through the FUSE mount (itself mounted nodev): `mknod c` works against a
/// server with `--allow-devices` on a nodev filesystem, and is `EPERM`
/// without the flag or without nodev on the server.
#[test]
fn mknod_of_a_device_through_the_mount() {
    if fuse_missing() {
        return;
    }
    let Some(fss) = filesystems() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mnt = fss._dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap_or_else(|e| panic!("{e}"));
    for (root, allow, ok) in [
        (&fss.nodev, true, true),
        (&fss.nodev, false, false),
        (&fss.dev, true, false),
    ] {
        let mut a = axum_args(root);
        a.allow_devices = allow;
        let (_srv, m) = serve_and_mount(&rt, a, &mnt, MountConfig::default());
        let r = rustix::fs::mknodat(
            rustix::fs::CWD,
            mnt.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o640),
            DEV as _,
        );
        let what = format!("allow={allow} root={}", root.display());
        if ok {
            r.unwrap_or_else(|e| panic!("{what}: mknod: {e}"));
            let through = fs::symlink_metadata(mnt.join("null")).unwrap_or_else(|e| panic!("{e}"));
            assert!(through.file_type().is_char_device(), "{what}");
            let there = fs::symlink_metadata(root.join("null")).unwrap_or_else(|e| panic!("{e}"));
            assert!(there.file_type().is_char_device(), "{what}");
            assert_eq!(
                (there.rdev(), there.mode() & 0o7777),
                (DEV, 0o640),
                "{what}"
            );
            fs::remove_file(mnt.join("null")).unwrap_or_else(|e| panic!("{e}"));
        } else {
            assert_eq!(r.map_err(|e| e.raw_os_error()), Err(libc::EPERM), "{what}");
            assert!(!root.join("null").exists(), "{what}");
        }
        m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
    }
}
