//! A SpockFS fleet on GlusterFS, end to end: `deploy/gluster/fleet.sh`
//! brings up a replica-2 volume, two axum-app nodes on two Gluster FUSE
//! mounts of it and pingora-gateway pooling them; then, in order:
//!
//! 1. the conformance suite through the gateway;
//! 2. read-after-write across nodes for every mutating method (written
//!    through node 1, read through node 2 at once);
//! 3. a tree copy through spockfs-mount on the gateway, node 1 killed
//!    (SIGKILL) mid-copy: the copy completes and `diff -r` is clean;
//! 4. the same with a brick killed mid-copy.
//!
//! Needs root and glusterfs-server (scripts/test.sh installs it); skipped
//! without them, except under `CI=true` where that fails.
//! `SPOCKFS_FLEET_CACHE=invalidation` runs it on Gluster's cache-invalidation
//! client options instead of the strict ones.

use spockfs_tests::{suite, Client, LocalStore, Target};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why this machine cannot run the fleet, if it cannot.
fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    for (bin, pkg) in [("glusterd", "glusterfs-server"), ("fusermount3", "fuse3")] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).is_file());
        if !found {
            return Some(format!("{bin} is not installed (apt-get install {pkg})"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("tests/ has a parent"))
        .to_path_buf()
}

/// A fleet brought up by deploy/gluster/fleet.sh; down when dropped.
struct Fleet {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl Fleet {
    fn up(dir: &Path) -> Fleet {
        let bin = spockfs_tests::procs::server_binary("axum-app");
        let bin_dir = bin.parent().unwrap_or_else(|| panic!("{}", bin.display()));
        let t = Instant::now();
        let out = Command::new(repo().join("deploy/gluster/fleet.sh"))
            .arg("up")
            .arg(dir)
            .env("BIN", bin_dir)
            // SPOCKFS_FLEET_CACHE=invalidation: the same checks on Gluster's
            // cache-invalidation mode.
            .env(
                "CACHE",
                std::env::var("SPOCKFS_FLEET_CACHE").unwrap_or_else(|_| "strict".into()),
            )
            .output()
            .unwrap_or_else(|e| panic!("fleet.sh: {e}"));
        let fleet = Fleet {
            dir: dir.to_path_buf(),
            env: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        assert!(
            out.status.success(),
            "fleet.sh up: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("fleet up in {:?}", t.elapsed());
        fleet
    }

    fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("fleet.sh did not say {k}: {:?}", self.env))
    }

    fn kill(&self, pid_key: &str) {
        let pid: i32 = self.get(pid_key).parse().unwrap_or_else(|e| panic!("{e}"));
        let pid = rustix::process::Pid::from_raw(pid).unwrap_or_else(|| panic!("pid {pid}"));
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .unwrap_or_else(|e| panic!("kill {pid_key}: {e}"));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("deploy/gluster/fleet.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// The spockfs-mount binary next to the server binaries.
fn mount_binary() -> PathBuf {
    let bin = spockfs_tests::procs::server_binary("axum-app").with_file_name("spockfs-mount");
    assert!(bin.is_file(), "{} is not built", bin.display());
    bin
}

/// spockfs-mount of `url` at `mnt`, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(url: &str, mnt: &Path) -> Mounted {
        std::fs::create_dir_all(mnt).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(mount_binary())
            .arg(url)
            .arg(mnt)
            .output()
            .unwrap_or_else(|e| panic!("spockfs-mount: {e}"));
        assert!(out.status.success(), "spockfs-mount: {out:?}");
        Mounted(mnt.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

/// A source tree: `dirs` directories of `files` files each, sizes from
/// empty to 300 KiB (past the gateway's 64 KiB retry buffer), and a symlink.
fn make_tree(root: &Path, dirs: usize, files: usize) -> usize {
    let mut n = 0;
    for d in 0..dirs {
        let dir = root.join(format!("dir{d:02}/sub"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for f in 0..files {
            let size = [0, 100, 4096, 70_000, 300_000][(d + f) % 5];
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + d + f) as u8).collect();
            std::fs::write(dir.join(format!("f{f:03}")), data).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        std::os::unix::fs::symlink("f000", dir.join("link")).unwrap_or_else(|e| panic!("{e}"));
    }
    n
}

/// Files under `root` (recursively).
fn count_files(root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

/// `cp -a src dst` while `disrupt` runs once `at` files have arrived (as
/// seen in `seen`); the copy's exit status and stderr, and how long.
fn copy_disrupted(
    src: &Path,
    dst: &Path,
    seen: &Path,
    at: usize,
    disrupt: impl FnOnce(),
) -> (bool, String, Duration) {
    let t = Instant::now();
    let child = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(seen) < at && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    disrupt();
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

fn diff(a: &Path, b: &Path) -> String {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap_or_else(|e| panic!("diff: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Read-after-write across nodes: every mutating method through node 1,
/// its effect read through node 2 at once.
async fn read_after_write(a: &Client, b: &Client) {
    for round in 0..10usize {
        let d = format!("/raw{round}");
        let r = a.req("MKDIR", &d, &[("X-Spock-mode", "493")]).await;
        assert_eq!(r.status, 201, "MKDIR");
        assert_eq!(b.req("GETATTR", &d, &[]).await.status, 200, "MKDIR seen");
        let f = format!("{d}/f");
        let r = a.req("POST", &f, &[("X-Spock-mode", "420")]).await;
        assert_eq!(r.status, 201, "POST");
        assert_eq!(b.req("GETATTR", &f, &[]).await.status, 200, "POST seen");
        for i in 0..5u8 {
            let body = vec![b'a' + i; 1000 + round];
            let r = a.send("PUT", &f, &[], body.clone()).await;
            assert!(r.status.is_success(), "whole PUT: {}", r.status);
            assert_eq!(
                b.req("GET", &f, &[]).await.body,
                body,
                "whole PUT {round}.{i} seen"
            );
            let r = a
                .send(
                    "PUT",
                    &f,
                    &[("Content-Range", b"bytes=3-5")],
                    vec![b'0' + i; 3],
                )
                .await;
            assert!(r.status.is_success(), "ranged PUT");
            let got = b.req("GET", &f, &[("Range", "bytes=3-5")]).await.body;
            assert_eq!(&got[..], &[b'0' + i; 3], "ranged PUT {round}.{i} seen");
        }
        // (method, its headers, the GETATTR header that shows it, its value)
        type Check<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let checks: [Check; 4] = [
            ("TRUNCATE", vec![("X-Spock-size", "7")], "x-spock-size", "7"),
            (
                "CHMOD",
                vec![("X-Spock-mode", "384")],
                "x-spock-mode",
                "33152",
            ),
            (
                "CHOWN",
                vec![("X-Spock-uid", "1234"), ("X-Spock-gid", "5678")],
                "x-spock-uid",
                "1234",
            ),
            (
                "UTIMENS",
                vec![("X-Spock-atime", "100"), ("X-Spock-mtime", "200")],
                "x-spock-mtime",
                "200",
            ),
        ];
        for (m, h, header, want) in checks {
            let r = a.req(m, &f, &h).await;
            assert!(r.status.is_success(), "{m}: {}", r.status);
            let seen = b.req("GETATTR", &f, &[]).await;
            assert_eq!(seen.header(header), want, "{m} seen through the other node");
        }
        let r = a
            .send(
                "SETXATTR",
                &f,
                &[("X-Spock-target", b"user.k"), ("X-Spock-flag", b"0")],
                "v1",
            )
            .await;
        assert!(r.status.is_success(), "SETXATTR");
        let seen = b.req("GETXATTR", &f, &[("X-Spock-target", "user.k")]).await;
        assert_eq!(&seen.body[..], b"v1", "SETXATTR seen");
        let r = a
            .req("REMOVEXATTR", &f, &[("X-Spock-target", "user.k")])
            .await;
        assert!(r.status.is_success(), "REMOVEXATTR");
        let seen = b.req("GETXATTR", &f, &[("X-Spock-target", "user.k")]).await;
        assert_eq!(seen.errno(), "ENODATA", "REMOVEXATTR seen");
        let r = a.req("FALLOCATE", &f, &[("Range", "bytes=0-8191")]).await;
        assert!(r.status.is_success(), "FALLOCATE: {}", r.status);
        assert_eq!(
            b.req("GETATTR", &f, &[]).await.header("x-spock-size"),
            "8192",
            "FALLOCATE seen"
        );
        let l = format!("{d}/l");
        assert_eq!(
            a.req("SYMLINK", &l, &[("X-Spock-target", "f")])
                .await
                .status,
            201
        );
        assert_eq!(
            &b.req("READLINK", &l, &[]).await.body[..],
            b"f",
            "SYMLINK seen"
        );
        let h = format!("{d}/h");
        assert_eq!(
            a.req("LINK", &h, &[("X-Spock-target", &f)]).await.status,
            201
        );
        assert_eq!(
            b.req("GETATTR", &f, &[]).await.header("x-spock-nlink"),
            "2",
            "LINK seen"
        );
        let g = format!("{d}/g");
        assert_eq!(
            a.req("RENAME", &g, &[("X-Spock-target", &h)]).await.status,
            200
        );
        assert_eq!(
            b.req("GETATTR", &h, &[]).await.status,
            404,
            "RENAME seen (old name)"
        );
        assert_eq!(
            b.req("GETATTR", &g, &[]).await.status,
            200,
            "RENAME seen (new name)"
        );
        let n = format!("{d}/fifo");
        assert_eq!(
            a.req(
                "MKNOD",
                &n,
                &[("X-Spock-mode", "4480"), ("X-Spock-dev", "0")]
            )
            .await
            .status,
            201
        );
        assert_eq!(b.req("GETATTR", &n, &[]).await.status, 200, "MKNOD seen");
        for p in [&n, &g, &l, &f] {
            assert_eq!(a.req("DELETE", p, &[]).await.status, 200, "DELETE {p}");
            assert_eq!(
                b.req("GETATTR", p, &[]).await.status,
                404,
                "DELETE {p} seen"
            );
        }
        let listing = b.req("READDIR", &d, &[]).await;
        let names = String::from_utf8_lossy(&listing.body).into_owned();
        assert!(
            names.lines().all(|n| n == "." || n == ".."),
            "READDIR after deletes: {names}"
        );
        assert_eq!(a.req("RMDIR", &d, &[]).await.status, 200);
        assert_eq!(b.req("GETATTR", &d, &[]).await.status, 404, "RMDIR seen");
    }
}

/// A whole-file PUT through `node` (its URL) stalls halfway; meanwhile the
/// other node `b` neither lists its temporary nor answers for it.
async fn upload_in_progress_is_invisible(node: &str, b: &Client, mnt: &Path) {
    use tokio::io::AsyncWriteExt;
    let addr = node.trim_start_matches("http://").trim_end_matches("/fs");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
    let head = format!("PUT /fs/upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 200000\r\n\r\n");
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(&[b'u'; 100_000])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The temporary, as the shared filesystem shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let temp = loop {
        let found = std::fs::read_dir(mnt)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with(".spockfs-put."));
        if let Some(t) = found {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no named temporary appeared on Gluster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listing = b.req("READDIR", "/", &[]).await;
    let names = String::from_utf8_lossy(&listing.body).into_owned();
    assert!(
        !names.contains(".spockfs-put."),
        "the other node lists the upload: {names}"
    );
    assert!(
        !names.lines().any(|n| n == "upload"),
        "listed before it is complete"
    );
    assert_eq!(b.req("GETATTR", &format!("/{temp}"), &[]).await.status, 404);
    assert_eq!(b.req("DELETE", &format!("/{temp}"), &[]).await.status, 404);
    s.write_all(&[b'u'; 100_000])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let resp = spockfs_tests::raw::read_response(
        &mut s,
        &mut buf,
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 201, "the upload");
    assert_eq!(
        b.req("GETATTR", "/upload", &[])
            .await
            .header("x-spock-size"),
        "200000"
    );
    assert!(
        !mnt.join(&temp).exists(),
        "the temporary outlived its upload"
    );
}

#[test]
fn fleet_on_glusterfs() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the fleet test cannot run (CI=true): {why}; scripts/test.sh installs glusterfs-server as root"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fleet = Fleet::up(&work.path().join("fleet"));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mnt1 = PathBuf::from(fleet.get("FLEET_MNT1"));

    // 1. The conformance suite, through the gateway.
    let gateway = fleet.get("FLEET_GATEWAY").to_owned();
    let addr = gateway
        .trim_start_matches("http://")
        .trim_end_matches("/fs")
        .parse()
        .unwrap_or_else(|e| panic!("{gateway}: {e}"));
    let target = Target {
        client: Client::new(&gateway),
        store: Arc::new(LocalStore { root: mnt1.clone() }),
        addr,
        prefix: "/fs".into(),
        tls: None,
        auth: None,
        _guards: vec![],
    };
    let failures = rt.block_on(suite::run(&target, None));
    assert!(
        failures.is_empty(),
        "conformance through the gateway on Gluster:\n{}",
        failures.join("\n")
    );
    eprintln!("conformance done at {:?}", started.elapsed());

    // 2. Read-after-write across nodes.
    let a = Client::new(fleet.get("FLEET_NODE1"));
    let b = Client::new(fleet.get("FLEET_NODE2"));
    rt.block_on(read_after_write(&a, &b));
    rt.block_on(read_after_write(&b, &a));
    eprintln!("read-after-write done at {:?}", started.elapsed());

    // 2b. No O_TMPFILE on Gluster: an upload in progress has a named
    // temporary, which no node shows or lets a client touch.
    rt.block_on(upload_in_progress_is_invisible(
        fleet.get("FLEET_NODE1"),
        &b,
        &mnt1,
    ));

    // 3. A tree copy through spockfs-mount on the gateway; node 1 dies.
    let src = work.path().join("src");
    let files = make_tree(&src, 12, 10);
    let mounted = Mounted::new(&gateway, &work.path().join("mnt"));
    // A disruption mid-copy must not reach `cp`, nor the copied bytes.
    let survives = |what: &str, copy: &str, kill: &str| {
        let (ok, stderr, took) = copy_disrupted(
            &src,
            &mounted.0.join(copy),
            &mnt1.join(copy),
            files / 3,
            || fleet.kill(kill),
        );
        eprintln!("copy with {what} killed: {took:?}, ok={ok}, errors: {stderr:?}");
        assert!(
            ok,
            "cp through the gateway failed when {what} died:\n{stderr}"
        );
        let d = diff(&src, &mnt1.join(copy));
        assert!(d.is_empty(), "copy with {what} killed differs:\n{d}");
    };
    survives("node 1", "copy1", "FLEET_NODE1_PID");
    // 4. A brick dies mid-copy: Gluster's replica carries on, unseen.
    survives("brick 1", "copy2", "FLEET_BRICK1_PID");
    drop(mounted);
    drop(fleet);
    eprintln!(
        "fleet test: {:?} in all (setup and teardown included)",
        started.elapsed()
    );
}
