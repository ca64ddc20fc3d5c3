//! Hostile clients against a server running as root (the way these tests
//! run): set-ID programs, privileged xattrs, unlistable names and a nested
//! root swapped for a symlink. Every check runs over real HTTP against both
//! example servers (the axum app and the Pingora gateway), and looks at the
//! disk directly to see what a request really did.

use spockfs_tests::{axum_args, free_port, start_axum, Client, Resp};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Srv {
    Axum,
    Gateway,
}

const BOTH: [Srv; 2] = [Srv::Axum, Srv::Gateway];

/// A mount's opt-ins.
#[derive(Clone, Copy, Default)]
struct Opts {
    allow_setid: bool,
    allow_any_xattr: bool,
}

struct Up {
    client: Client,
    root: PathBuf,
    dir: tempfile::TempDir,
    _server: Box<dyn std::any::Any>,
}

/// A server on a fresh `root`, with `victim.test` served from `root/vh`
/// (created) when `nested` is set.
async fn up(srv: Srv, o: Opts, nested: bool) -> Up {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    if nested {
        std::fs::create_dir(root.join("vh")).unwrap_or_else(|e| panic!("{e}"));
    }
    let (base, server): (String, Box<dyn std::any::Any>) = match srv {
        Srv::Axum => {
            let mut a = axum_args(&root);
            a.allow_setid = o.allow_setid;
            a.allow_any_xattr = o.allow_any_xattr;
            if nested {
                a.vhosts = vec![("victim.test".into(), root.join("vh"))];
            }
            let (addr, running) = start_axum(a).await;
            (format!("http://{addr}/fs"), Box::new(running))
        }
        Srv::Gateway => {
            let port = free_port();
            let keys = format!(
                "allow_setid = {}\nallow_any_xattr = {}\n",
                o.allow_setid, o.allow_any_xattr
            );
            let mut toml = format!(
                "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
                 default_upstream = \"127.0.0.1:1\"\n\
                 [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n{keys}",
                root.display()
            );
            if nested {
                toml.push_str(&format!(
                    "[[vhost]]\nhost = \"victim.test\"\nprefix = \"/fs\"\nroot = \"{}\"\n{keys}",
                    root.join("vh").display()
                ));
            }
            toml.push_str("[server]\nthreads = 2\n");
            let cfg =
                pingora_gateway::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            let running =
                pingora_gateway::run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
            (format!("http://127.0.0.1:{port}/fs"), Box::new(running))
        }
    };
    Up {
        client: Client::new(&base),
        root,
        dir,
        _server: server,
    }
}

/// Permission bits (with set-ID and sticky) on disk.
fn perms(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_perms(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn status(r: &Resp, want: u16, errno: &str, what: &str) {
    assert_eq!(
        (r.status.as_u16(), r.errno()),
        (want, errno),
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
}

fn mode_hdr(mode: u32) -> String {
    mode.to_string()
}

/// By default no request can leave a set-user-ID or set-group-ID bit on a
/// non-directory, and writes clear the bits a file already had; the
/// set-group-ID bit of directories stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setid_bits_never_land_on_files() {
    for srv in BOTH {
        let s = up(srv, Opts::default(), false).await;
        let c = &s.client;
        let id = std::fs::read("/usr/bin/id").unwrap_or_else(|e| panic!("/usr/bin/id: {e}"));

        // The reported attack: upload a program, then chmod 04755.
        status(
            &c.send("PUT", "/suid", &[], id.clone()).await,
            201,
            "",
            "PUT",
        );
        let r = c
            .req("CHMOD", "/suid", &[("X-Spock-mode", &mode_hdr(0o4755))])
            .await;
        status(&r, 200, "", "CHMOD 04755");
        assert_eq!(perms(&s.root.join("suid")), 0o755, "{srv:?}: CHMOD 04755");
        // And it does not run as root for anybody else.
        set_perms(s.dir.path(), 0o755);
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(s.root.join("suid"))
            .arg("-u")
            .output()
            .unwrap_or_else(|e| panic!("setpriv: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "65534",
            "{srv:?}: the uploaded program ran with euid {:?} ({})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (mode, want) in [(0o2755, 0o755), (0o6711, 0o711), (0o7755, 0o1755)] {
            let r = c
                .req("CHMOD", "/suid", &[("X-Spock-mode", &mode_hdr(mode))])
                .await;
            status(&r, 200, "", "CHMOD");
            assert_eq!(perms(&s.root.join("suid")), want, "{srv:?}: CHMOD {mode:o}");
        }

        // Creating with the bits: POST and MKNOD (regular file, FIFO).
        let r = c
            .req("POST", "/p", &[("X-Spock-mode", &mode_hdr(0o106755))])
            .await;
        status(&r, 201, "", "POST");
        assert_eq!(perms(&s.root.join("p")), 0o755, "{srv:?}: POST 0106755");
        for (name, mode) in [("n", 0o104755), ("n0", 0o6644), ("fifo", 0o016644)] {
            let r = c
                .req(
                    "MKNOD",
                    &format!("/{name}"),
                    &[("X-Spock-mode", &mode_hdr(mode))],
                )
                .await;
            status(&r, 201, "", "MKNOD");
            assert_eq!(
                perms(&s.root.join(name)),
                mode & 0o777,
                "{srv:?}: MKNOD {mode:o}"
            );
        }

        // Directories keep set-group-ID (group inheritance), on MKDIR and
        // CHMOD.
        let r = c
            .req("MKDIR", "/d", &[("X-Spock-mode", &mode_hdr(0o2775))])
            .await;
        status(&r, 201, "", "MKDIR");
        assert_eq!(perms(&s.root.join("d")), 0o2775, "{srv:?}: MKDIR 02775");
        let r = c
            .req("CHMOD", "/d", &[("X-Spock-mode", &mode_hdr(0o2750))])
            .await;
        status(&r, 200, "", "CHMOD dir");
        assert_eq!(perms(&s.root.join("d")), 0o2750, "{srv:?}: CHMOD dir 02750");

        // Files that already have the bits (put there on the server) lose
        // them to every kind of write, as the kernel's write path does for
        // an unprivileged writer.
        let fresh = |name: &str, mode: u32| {
            let p = s.root.join(name);
            std::fs::write(&p, b"0123456789").unwrap_or_else(|e| panic!("{e}"));
            set_perms(&p, mode);
            p
        };
        let p = fresh("w", 0o4755);
        let r = c
            .send("PUT", "/w", &[("Content-Range", b"bytes=0-2")], "abc")
            .await;
        status(&r, 200, "", "ranged PUT");
        assert_eq!(perms(&p), 0o755, "{srv:?}: ranged PUT over 04755");
        let p = fresh("big", 0o6755);
        let body = vec![b'x'; 700 * 1024];
        let r = c
            .send("PUT", "/big", &[("Content-Range", b"bytes=0-716799")], body)
            .await;
        status(&r, 200, "", "streamed ranged PUT");
        assert_eq!(perms(&p), 0o755, "{srv:?}: streamed PUT over 06755");
        let p = fresh("r", 0o6755);
        status(&c.send("PUT", "/r", &[], "new").await, 200, "", "whole PUT");
        assert_eq!(perms(&p), 0o755, "{srv:?}: whole-file PUT over 06755");
        let p = fresh("t", 0o4711);
        let r = c.req("TRUNCATE", "/t", &[("X-Spock-size", "3")]).await;
        status(&r, 200, "", "TRUNCATE");
        assert_eq!(perms(&p), 0o711, "{srv:?}: TRUNCATE of 04711");
        let p = fresh("a", 0o4755);
        let r = c.req("FALLOCATE", "/a", &[("Range", "bytes=0-8191")]).await;
        status(&r, 200, "", "FALLOCATE");
        assert_eq!(perms(&p), 0o755, "{srv:?}: FALLOCATE of 04755");
        let p = fresh("c", 0o4755);
        let r = c.req("POST", "/c", &[("X-Spock-mode", "420")]).await;
        status(&r, 201, "", "POST over an existing file");
        assert_eq!(perms(&p), 0o755, "{srv:?}: POST (truncate) of 04755");
        // Set-group-ID without group execute is a locking mark, not a
        // privilege: the kernel leaves it, and so does the server.
        let p = fresh("lock", 0o2644);
        let r = c
            .send("PUT", "/lock", &[("Content-Range", b"bytes=0-0")], "z")
            .await;
        status(&r, 200, "", "ranged PUT");
        assert_eq!(perms(&p), 0o2644, "{srv:?}: ranged PUT over 02644");

        let r = c.req("OPTIONS", "/", &[]).await;
        status(&r, 200, "", "OPTIONS");
        assert!(
            r.header("x-spock-policy").contains("nosuid"),
            "{srv:?}: OPTIONS policy {:?}",
            r.header("x-spock-policy")
        );
    }
}

/// `allow_setid` restores exact modes (and the kernel's own rules for a
/// root writer, which keep the bits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_setid_keeps_exact_modes() {
    let o = Opts {
        allow_setid: true,
        ..Opts::default()
    };
    for srv in BOTH {
        let s = up(srv, o, false).await;
        let c = &s.client;
        status(&c.send("PUT", "/f", &[], "x").await, 201, "", "PUT");
        let r = c
            .req("CHMOD", "/f", &[("X-Spock-mode", &mode_hdr(0o4755))])
            .await;
        status(&r, 200, "", "CHMOD");
        assert_eq!(perms(&s.root.join("f")), 0o4755, "{srv:?}: CHMOD");
        let r = c
            .req("POST", "/p", &[("X-Spock-mode", &mode_hdr(0o106755))])
            .await;
        status(&r, 201, "", "POST");
        assert_eq!(perms(&s.root.join("p")), 0o6755, "{srv:?}: POST");
        let r = c
            .send("PUT", "/f", &[("Content-Range", b"bytes=0-0")], "y")
            .await;
        status(&r, 200, "", "ranged PUT");
        assert_eq!(perms(&s.root.join("f")), 0o4755, "{srv:?}: write as root");
        let r = c.req("OPTIONS", "/", &[]).await;
        assert!(
            !r.header("x-spock-policy").contains("nosuid"),
            "{srv:?}: {:?}",
            r.header("x-spock-policy")
        );
    }
}

/// `security.capability` granting `cap_setuid=ep`: a `vfs_cap_data`
/// (revision 2, effective).
fn cap_setuid_ep() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // VFS_CAP_REVISION_2 | effective
    v.extend_from_slice(&(1u32 << 7).to_le_bytes()); // permitted: CAP_SETUID
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted (high)
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable (high)
    v
}

/// A minimal POSIX access ACL (user::rw-, group::r--, other::r--).
fn acl_644() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 6u16), (0x04, 4), (0x20, 4)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

fn disk_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Only `user.*` and POSIX ACLs can be set or removed by default; every
/// other namespace is 403 EPERM and changes nothing, but stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_xattrs_are_refused() {
    for srv in BOTH {
        let s = up(srv, Opts::default(), false).await;
        let c = &s.client;
        let f = s.root.join("f");
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("{e}"));
        let set = |name: &'static str, value: Vec<u8>| {
            let c = c.clone();
            async move {
                c.send(
                    "SETXATTR",
                    "/f",
                    &[("X-Spock-target", name.as_bytes()), ("X-Spock-flag", b"0")],
                    value,
                )
                .await
            }
        };
        for name in [
            "security.capability",
            "security.selinux",
            "trusted.glusterfs.dht",
            "system.nfs4_acl",
            "user",
        ] {
            let r = set(name, cap_setuid_ep()).await;
            status(&r, 403, "EPERM", name);
            assert_eq!(disk_xattr(&f, name), None, "{srv:?}: {name} was set");
        }
        let r = set("user.mime", b"text/plain".to_vec()).await;
        status(&r, 200, "", "user.mime");
        assert_eq!(
            disk_xattr(&f, "user.mime").as_deref(),
            Some(&b"text/plain"[..])
        );
        let r = set("system.posix_acl_access", acl_644()).await;
        status(&r, 200, "", "system.posix_acl_access");

        // Set on the server: readable, not removable.
        rustix::fs::lsetxattr(&f, "trusted.keep", b"v", rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("lsetxattr trusted.keep (tests run as root): {e}"));
        let r = c
            .req("REMOVEXATTR", "/f", &[("X-Spock-target", "trusted.keep")])
            .await;
        status(&r, 403, "EPERM", "REMOVEXATTR trusted.keep");
        assert_eq!(disk_xattr(&f, "trusted.keep").as_deref(), Some(&b"v"[..]));
        let r = c
            .req("GETXATTR", "/f", &[("X-Spock-target", "trusted.keep")])
            .await;
        status(&r, 200, "", "GETXATTR trusted.keep");
        assert_eq!(&r.body[..], b"v");
        let r = c.req("OPTIONS", "/", &[]).await;
        assert!(r.header("x-spock-policy").contains("xattr-user-acl"));
    }
    // The opt-in.
    let o = Opts {
        allow_any_xattr: true,
        ..Opts::default()
    };
    for srv in BOTH {
        let s = up(srv, o, false).await;
        let f = s.root.join("f");
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("{e}"));
        let r = s
            .client
            .send(
                "SETXATTR",
                "/f",
                &[("X-Spock-target", b"trusted.x"), ("X-Spock-flag", b"0")],
                "1",
            )
            .await;
        status(&r, 200, "", "trusted.x with allow_any_xattr");
        assert_eq!(disk_xattr(&f, "trusted.x").as_deref(), Some(&b"1"[..]));
    }
}

/// A name with a newline could never be listed (READDIR is one name per
/// line): every method that names an entry refuses it with 400 EINVAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newline_names_are_refused() {
    for srv in BOTH {
        let s = up(srv, Opts::default(), false).await;
        let c = &s.client;
        std::fs::write(s.root.join("f"), b"x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(s.root.join("d")).unwrap_or_else(|e| panic!("{e}"));
        let bad = "/d/a%0Aevil";
        type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, &'a str);
        let reqs: Vec<Case> = vec![
            ("POST", vec![("X-Spock-mode", b"420")], ""),
            ("MKDIR", vec![("X-Spock-mode", b"493")], ""),
            ("MKNOD", vec![("X-Spock-mode", b"33188")], ""),
            ("SYMLINK", vec![("X-Spock-target", b"f")], ""),
            ("LINK", vec![("X-Spock-target", b"/f")], ""),
            ("RENAME", vec![("X-Spock-target", b"/f")], ""),
            ("PUT", vec![], "data"),
        ];
        for (method, headers, body) in reqs {
            let r = c.send(method, bad, &headers, body).await;
            status(&r, 400, "EINVAL", method);
        }
        let entries: Vec<_> = std::fs::read_dir(s.root.join("d"))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect();
        assert!(entries.is_empty(), "{srv:?}: created {entries:?}");
        assert!(
            s.root.join("f").exists(),
            "{srv:?}: RENAME moved the source"
        );
        // A newline elsewhere than in the new name is not the concern here:
        // a parent with one simply does not exist.
        let r = c.req("MKDIR", "/a%0Ab/c", &[("X-Spock-mode", "493")]).await;
        status(&r, 404, "ENOENT", "MKDIR under a missing parent");
    }
}

/// A root nested in another served tree (`--vhost victim.test=R/vh` beside
/// `--root R`): a client of R removes `vh` and plants a symlink to a
/// directory outside; the vhost must never serve it (it used to re-open
/// the root by path, following the link, within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_root_swapped_for_a_symlink_is_not_followed() {
    for srv in BOTH {
        let s = up(srv, Opts::default(), true).await;
        let outside = s.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(outside.join("secret"), b"SECRET").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(s.root.join("vh/page"), b"victim").unwrap_or_else(|e| panic!("{e}"));
        let victim = s.client.with_host("victim.test");
        assert_eq!(&victim.req("GET", "/page", &[]).await.body[..], b"victim");

        let outer = &s.client;
        status(
            &outer.req("DELETE", "/vh/page", &[]).await,
            200,
            "",
            "DELETE",
        );
        status(&outer.req("RMDIR", "/vh", &[]).await, 200, "", "RMDIR");
        for target in [outside.display().to_string(), "/".to_owned()] {
            let _ = outer.req("DELETE", "/vh", &[]).await;
            let r = outer
                .req("SYMLINK", "/vh", &[("X-Spock-target", &target)])
                .await;
            status(&r, 201, "", "SYMLINK");
            // The root is checked for removal at most once a second.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(2500) {
                let r = victim.req("GET", "/secret", &[]).await;
                assert_ne!(&r.body[..], b"SECRET", "{srv:?}: escaped to {target}");
                assert_eq!(r.status, 404, "{srv:?}: GET /secret via {target}");
                let r = victim.req("GETATTR", "/etc/passwd", &[]).await;
                assert_eq!(r.status, 404, "{srv:?}: /etc/passwd via {target}");
                // The removed directory still answers, empty.
                let r = victim.req("READDIR", "/", &[]).await;
                assert!(
                    !r.body.windows(6).any(|w| w == b"secret")
                        && !r.body.split(|&b| b == b'\n').any(|l| l == b"etc"),
                    "{srv:?}: listed {:?} via {target}",
                    String::from_utf8_lossy(&r.body)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A real directory put back is served again.
        status(
            &outer.req("DELETE", "/vh", &[]).await,
            200,
            "",
            "DELETE link",
        );
        let r = outer.req("MKDIR", "/vh", &[("X-Spock-mode", "493")]).await;
        status(&r, 201, "", "MKDIR");
        std::fs::write(s.root.join("vh/back"), b"back").unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        loop {
            let r = victim.req("GET", "/back", &[]).await;
            if r.status == 200 {
                assert_eq!(&r.body[..], b"back");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{srv:?}: restored root not served: {}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
