//! Every request acts as a Unix identity: `--as USER`, `--vhost-as`,
//! `--as-owner`, `--vhosts-dir`, `--users-as-unix` and trusted client ids
//! (`X-Spock-caller`), over real HTTP against the axum app and (where the
//! gateway has the setting) the Pingora gateway, with the server running as
//! root the way these tests run. The kernel does the checks: files belong
//! to the identity, and what it may not do is refused.

use spockfs_tests::{axum_args, free_port, start_axum, Client, Resp};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const NOBODY: u32 = 65534;

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
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

fn root_only() -> bool {
    if rustix::process::geteuid().as_raw() == 0 {
        return true;
    }
    assert!(
        !spockfs_tests::procs::ci(),
        "identity tests need root (CI runs them as root)"
    );
    eprintln!("note: not root; identity tests skipped");
    false
}

/// A tempdir whose root `nobody` can reach (tempdirs are 0700).
fn world_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    chmod(dir.path(), 0o755);
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    (dir, root)
}

/// The gateway with one local vhost (`*` under `/fs`) and extra keys.
fn gateway(vhost_keys: &str, root_key: &str) -> (pingora_gateway::Running, String) {
    let port = free_port();
    let toml = format!(
        "listen = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
         default_upstream = \"127.0.0.1:1\"\n\
         [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\n{root_key}\n{vhost_keys}\n\
         [server]\nthreads = 2\n"
    );
    let cfg = pingora_gateway::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let running = pingora_gateway::run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
    (running, format!("http://127.0.0.1:{port}/fs"))
}

/// The checks of "act as nobody", on a server rooted at `root`.
async fn acts_as_nobody(c: &Client, root: &Path, what: &str) {
    // Created objects belong to nobody.
    status(
        &c.req("MKDIR", "/d", &[("X-Spock-mode", "493")]).await,
        201,
        "",
        what,
    );
    status(
        &c.req("POST", "/d/f", &[("X-Spock-mode", "420")]).await,
        201,
        "",
        what,
    );
    status(&c.send("PUT", "/d/w", &[], "data").await, 201, "", what);
    for p in ["d", "d/f", "d/w"] {
        assert_eq!(
            owner(&root.join(p)),
            (NOBODY, NOBODY),
            "{what}: owner of {p}"
        );
    }
    // The original suite's case that needs a non-root server: chmod 0,
    // then access(W_OK) and a read are refused.
    status(
        &c.req("CHMOD", "/d/f", &[("X-Spock-mode", "0")]).await,
        200,
        "",
        what,
    );
    let r = c.req("ACCESS", "/d/f", &[("X-Spock-mode", "2")]).await;
    status(
        &r,
        403,
        "EACCES",
        &format!("{what}: ACCESS W_OK of a 0000 file"),
    );
    let r = c.req("GET", "/d/f", &[]).await;
    status(&r, 403, "EACCES", &format!("{what}: GET of a 0000 file"));
    // Root's files: readable if the mode says so, never writable.
    std::fs::write(root.join("rootfile"), b"root").unwrap_or_else(|e| panic!("{e}"));
    chmod(&root.join("rootfile"), 0o644);
    assert_eq!(&c.req("GET", "/rootfile", &[]).await.body[..], b"root");
    let r = c
        .send("PUT", "/rootfile", &[("Content-Range", b"bytes=0-0")], "x")
        .await;
    status(&r, 403, "EACCES", &format!("{what}: write root's file"));
    let r = c
        .req("CHMOD", "/rootfile", &[("X-Spock-mode", "511")])
        .await;
    status(&r, 403, "EPERM", &format!("{what}: chmod root's file"));
    let r = c
        .req(
            "CHOWN",
            "/d/w",
            &[("X-Spock-uid", "0"), ("X-Spock-gid", "0")],
        )
        .await;
    status(&r, 403, "EPERM", &format!("{what}: chown to root"));
    assert_eq!(
        std::fs::read(root.join("rootfile")).ok().as_deref(),
        Some(&b"root"[..])
    );
    // The root directory belongs to root (0755): nobody cannot create there
    // unless the mode lets it.
    let r = c.req("MKDIR", "/no", &[("X-Spock-mode", "493")]).await;
    status(&r, 201, "", what);
    chmod(root, 0o755);
    let r = c.req("MKDIR", "/no2", &[("X-Spock-mode", "493")]).await;
    status(
        &r,
        403,
        "EACCES",
        &format!("{what}: mkdir in root's 0755 dir"),
    );
    chmod(root, 0o777);
}

/// `--as nobody` on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_user_on_both_servers() {
    if !root_only() {
        return;
    }
    {
        let (_dir, root) = world_dir();
        chmod(&root, 0o777);
        let mut a = axum_args(&root);
        a.as_user = Some("nobody".into());
        let (addr, _srv) = start_axum(a).await;
        acts_as_nobody(
            &Client::new(&format!("http://{addr}/fs")),
            &root,
            "axum --as",
        )
        .await;
    }
    {
        let (_dir, root) = world_dir();
        chmod(&root, 0o777);
        let (_gw, base) = gateway(
            "as_user = \"nobody\"",
            &format!("root = \"{}\"", root.display()),
        );
        acts_as_nobody(&Client::new(&base), &root, "gateway as_user").await;
    }
}

/// With `--as nobody`, privileges are refused by the kernel itself even
/// where the mount's policy would let them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_refuses_privileges_to_the_identity() {
    if !root_only() {
        return;
    }
    let (_dir, root) = world_dir();
    chmod(&root, 0o777);
    let mut a = axum_args(&root);
    a.as_user = Some("nobody".into());
    a.allow_setid = true;
    a.allow_any_xattr = true;
    let (addr, _srv) = start_axum(a).await;
    let c = Client::new(&format!("http://{addr}/fs"));
    status(&c.send("PUT", "/f", &[], "x").await, 201, "", "PUT");
    // File capabilities need CAP_SETFCAP; trusted.* needs CAP_SYS_ADMIN.
    for name in ["security.capability", "trusted.x"] {
        let r = c
            .send(
                "SETXATTR",
                "/f",
                &[("X-Spock-target", name.as_bytes()), ("X-Spock-flag", b"0")],
                vec![
                    1u8, 0, 0, 2, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            )
            .await;
        status(&r, 403, "EPERM", name);
    }
    // Setuid on root's program: not the owner.
    std::fs::write(root.join("prog"), b"#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
    chmod(&root.join("prog"), 0o755);
    let r = c.req("CHMOD", "/prog", &[("X-Spock-mode", "2541")]).await;
    status(&r, 403, "EPERM", "chmod 04755 of root's file");
    assert_eq!(
        std::fs::metadata(root.join("prog"))
            .map(|m| m.mode() & 0o7777)
            .ok(),
        Some(0o755)
    );
    // Group ownership: not a member of root's group.
    let r = c
        .req(
            "CHOWN",
            "/f",
            &[("X-Spock-uid", "-1"), ("X-Spock-gid", "0")],
        )
        .await;
    status(&r, 403, "EPERM", "chgrp to a group nobody is not in");
}

/// `--vhost-as` and `--as-owner` give each root its own identity; a root
/// owned by root is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_root_identities() {
    if !root_only() {
        return;
    }
    let (dir, root) = world_dir();
    chmod(&root, 0o777);
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap_or_else(|e| panic!("{e}"));
    chown(&site, 1, 1); // daemon
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap_or_else(|e| panic!("{e}"));
    chmod(&other, 0o777);
    let mut a = axum_args(&root);
    a.vhosts = vec![
        ("site.test".into(), site.clone()),
        ("other.test".into(), other.clone()),
    ];
    a.vhost_as = vec![("other.test".into(), "bin".into())];
    a.as_owner = true;
    // The default root belongs to root: refused.
    let err = axum_app::build_spockfs(&a).err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("uid 0")),
        "root-owned root accepted: {err:?}"
    );
    a.as_owner_allow_root = true;
    let (addr, _srv) = start_axum(a).await;
    let c = Client::new(&format!("http://{addr}/fs"));
    for (host, dir, want) in [
        ("site.test", &site, (1, 1)),
        ("other.test", &other, (2, 2)),
        ("x", &root, (0, 0)),
    ] {
        let r = c
            .with_host(host)
            .req("POST", "/f", &[("X-Spock-mode", "420")])
            .await;
        status(&r, 201, "", host);
        assert_eq!(owner(&dir.join("f")), want, "{host}");
    }
}

/// `--vhosts-dir`: one directory per site, looked up per request, as each
/// site's owner with `--as-owner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_dir_serves_each_site_as_its_owner() {
    if !root_only() {
        return;
    }
    let (dir, _root) = world_dir();
    let sites = dir.path().join("sites");
    std::fs::create_dir(&sites).unwrap_or_else(|e| panic!("{e}"));
    for (name, uid) in [("a.test", 1), ("b.test", 2), ("root.test", 0)] {
        let p = sites.join(name);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(p.join("index"), name).unwrap_or_else(|e| panic!("{e}"));
        chown(&p, uid, uid);
    }
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&outside, sites.join("link.test")).unwrap_or_else(|e| panic!("{e}"));
    for srv in ["axum", "gateway"] {
        let (base, _guard): (String, Box<dyn std::any::Any>) = if srv == "axum" {
            let mut a = axum_args(&dir.path().join("unused"));
            a.vhosts_dir = Some(sites.clone());
            a.as_owner = true;
            let (addr, s) = start_axum(a).await;
            (format!("http://{addr}/fs"), Box::new(s))
        } else {
            let (g, base) = gateway(
                "as_owner = true",
                &format!("sites_dir = \"{}\"", sites.display()),
            );
            (base, Box::new(g))
        };
        let c = Client::new(&base);
        for (host, uid) in [("a.test", 1), ("B.Test:8080", 2)] {
            let h = c.with_host(host);
            let r = h.req("GET", "/index", &[]).await;
            assert_eq!(
                &r.body[..],
                host.to_ascii_lowercase()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .as_bytes(),
                "{srv}"
            );
            let name = format!("new-{srv}");
            status(
                &h.req("POST", &format!("/{name}"), &[("X-Spock-mode", "420")])
                    .await,
                201,
                "",
                host,
            );
            let site = host.to_ascii_lowercase();
            let site = site.split(':').next().unwrap_or_default();
            assert_eq!(
                owner(&sites.join(site).join(&name)),
                (uid, uid),
                "{srv} {host}"
            );
        }
        for (host, want, errno) in [
            ("nosuch.test", 404, "ENOENT"),
            ("link.test", 404, "ENOENT"),
            ("..", 404, "ENOENT"),
            ("root.test", 403, "EPERM"),
        ] {
            let r = c.with_host(host).req("GETATTR", "/", &[]).await;
            status(&r, want, errno, &format!("{srv} {host}"));
        }
        // A site added while running is served at once; a removed one is
        // 404 from then on.
        let late = sites.join(format!("late-{srv}.test"));
        std::fs::create_dir(&late).unwrap_or_else(|e| panic!("{e}"));
        chown(&late, 1, 1);
        let h = c.with_host(&format!("late-{srv}.test"));
        status(&h.req("GETATTR", "/", &[]).await, 200, "", "late site");
        std::fs::remove_dir(&late).unwrap_or_else(|e| panic!("{e}"));
        // A root is checked for removal at most once a second.
        let t = std::time::Instant::now();
        loop {
            let r = h.req("GETATTR", "/", &[]).await;
            if r.status == 404 {
                status(&r, 404, "ENOENT", "removed site");
                break;
            }
            assert!(
                t.elapsed().as_secs_f32() < 2.5,
                "{srv}: removed site still served"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `--trust-client-ids`: the caller's ids from `X-Spock-caller`, root
/// squashed unless `--no-root-squash`; advertised by OPTIONS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_client_ids() {
    if !root_only() {
        return;
    }
    for (srv, squash) in [("axum", true), ("axum", false), ("gateway", true)] {
        let (_dir, root) = world_dir();
        chmod(&root, 0o777);
        let (base, _guard): (String, Box<dyn std::any::Any>) = if srv == "axum" {
            let mut a = axum_args(&root);
            a.trust_client_ids = true;
            a.no_root_squash = !squash;
            let (addr, s) = start_axum(a).await;
            (format!("http://{addr}/fs"), Box::new(s))
        } else {
            let (g, base) = gateway(
                "trust_client_ids = true",
                &format!("root = \"{}\"", root.display()),
            );
            (base, Box::new(g))
        };
        let c = Client::new(&base);
        let what = format!("{srv} squash={squash}");
        let r = c.req("OPTIONS", "/", &[]).await;
        assert!(
            r.header("x-spock-extensions").contains("identity"),
            "{what}"
        );
        let mk = |name: &'static str, caller: &'static str| {
            let c = c.clone();
            async move {
                c.req(
                    "POST",
                    &format!("/{name}"),
                    &[("X-Spock-mode", "420"), ("X-Spock-caller", caller)],
                )
                .await
            }
        };
        status(&mk("u1000", "1000 1000 100,1000").await, 201, "", &what);
        assert_eq!(owner(&root.join("u1000")), (1000, 1000), "{what}");
        status(&mk("root", "0 0 ").await, 201, "", &what);
        let want = if squash { (NOBODY, NOBODY) } else { (0, 0) };
        assert_eq!(owner(&root.join("root")), want, "{what}");
        // No header: anonymous.
        status(
            &c.req("POST", "/anon", &[("X-Spock-mode", "420")]).await,
            201,
            "",
            &what,
        );
        assert_eq!(owner(&root.join("anon")), (NOBODY, NOBODY), "{what}");
        // Supplementary groups count: 1000 in group 100 may write a 0660
        // file of group 100; without it, not.
        std::fs::write(root.join("g"), b"").unwrap_or_else(|e| panic!("{e}"));
        chown(&root.join("g"), 0, 100);
        chmod(&root.join("g"), 0o660);
        let put = |caller: &'static str| {
            let c = c.clone();
            async move {
                c.send(
                    "PUT",
                    "/g",
                    &[
                        ("Content-Range", b"bytes=0-0"),
                        ("X-Spock-caller", caller.as_bytes()),
                    ],
                    "x",
                )
                .await
            }
        };
        status(
            &put("1000 1000 100").await,
            200,
            "",
            &format!("{what}: member"),
        );
        status(
            &put("1000 1000 ").await,
            403,
            "EACCES",
            &format!("{what}: not a member"),
        );
        let r = c.req("GETATTR", "/", &[("X-Spock-caller", "1000 x")]).await;
        status(&r, 400, "EINVAL", &format!("{what}: malformed caller"));
    }
    // Without the flag the header is ignored and not advertised.
    let (_dir, root) = world_dir();
    let (addr, _s) = start_axum(axum_args(&root)).await;
    let c = Client::new(&format!("http://{addr}/fs"));
    assert!(!c
        .req("OPTIONS", "/", &[])
        .await
        .header("x-spock-extensions")
        .contains("identity"));
    let r = c
        .req(
            "POST",
            "/f",
            &[("X-Spock-mode", "420"), ("X-Spock-caller", "1000 1000 ")],
        )
        .await;
    status(&r, 201, "", "untrusted caller header");
    assert_eq!(owner(&root.join("f")), (0, 0));
}

/// `--users-as-unix`: each authenticated user acts as their Unix account;
/// their home is created owned by it; a user with no account is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_as_unix_accounts() {
    if !root_only() {
        return;
    }
    let (dir, root) = world_dir();
    let homes = dir.path().join("homes");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &htpasswd,
        format!("daemon:{hash}\nbin:{hash}\nghost-user-x:{hash}\n0:{hash}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut a = axum_args(&root);
    a.htpasswd = Some(htpasswd);
    a.user_roots = Some(homes.clone());
    a.users_as_unix = true;
    let (addr, _srv) = start_axum(a).await;
    let c = Client::new(&format!("http://{addr}/fs"));
    use base64::Engine as _;
    let auth = |u: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:pw"))
        )
    };
    for (user, id) in [("daemon", 1), ("bin", 2)] {
        let u = c.with_auth(&auth(user));
        let r = u.req("MKDIR", "/d", &[("X-Spock-mode", "493")]).await;
        status(&r, 201, "", user);
        assert_eq!(owner(&homes.join(user)), (id, id), "{user}'s home");
        assert_eq!(owner(&homes.join(user).join("d")), (id, id), "{user}'s dir");
    }
    let r = c
        .with_auth(&auth("ghost-user-x"))
        .req("GETATTR", "/", &[])
        .await;
    assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!homes.join("ghost-user-x").exists());
    // A login named "0" is the account called "0" (there is none), not root.
    let r = c.with_auth(&auth("0")).req("GETATTR", "/", &[]).await;
    assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
}

/// Under the default nosuid policy, a trusted caller who may write a
/// set-ID file but does not own it writes and truncates it like on a local
/// disk: the write succeeds and the bits are cleared (by the kernel's write
/// path, as the server cannot chmod a file it does not own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_owner_writes_clear_set_id_bits() {
    if !root_only() {
        return;
    }
    for srv in ["axum", "gateway"] {
        let (_dir, root) = world_dir();
        chmod(&root, 0o777);
        let (base, _guard): (String, Box<dyn std::any::Any>) = if srv == "axum" {
            let mut a = axum_args(&root);
            a.trust_client_ids = true;
            let (addr, s) = start_axum(a).await;
            (format!("http://{addr}/fs"), Box::new(s))
        } else {
            let (g, base) = gateway(
                "trust_client_ids = true",
                &format!("root = \"{}\"", root.display()),
            );
            (base, Box::new(g))
        };
        let c = Client::new(&base);
        for (name, mode, want) in [("suid", 0o4777, 0o777), ("sgid", 0o2777, 0o777)] {
            for (how, header, body) in [
                ("PUT", ("Content-Range", &b"bytes=0-0"[..]), "x"),
                ("TRUNCATE", ("X-Spock-size", &b"0"[..]), ""),
            ] {
                let p = root.join(format!("{name}-{how}"));
                std::fs::write(&p, b"abc").unwrap_or_else(|e| panic!("{e}"));
                chown(&p, 1000, 1000);
                chmod(&p, mode);
                let h = [header, ("X-Spock-caller", b"1002 1002 1002")];
                let r = c.send(how, &format!("/{name}-{how}"), &h, body).await;
                let what = format!("{srv}: {how} of a {mode:o} file by another user");
                status(&r, 200, "", &what);
                let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(m.mode() & 0o7777, want, "{what}");
            }
        }
    }
}

/// Acting as other users needs CAP_SETUID/CAP_SETGID: a server without them
/// refuses to start, and says why (the binary, run as nobody).
#[test]
fn without_setuid_capability_the_server_refuses_to_start() {
    if !root_only() {
        return;
    }
    let (_dir, root) = world_dir();
    chmod(&root, 0o777);
    let bin = spockfs_tests::procs::server_binary("axum-app");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--listen", "127.0.0.1:0", "--as", "daemon", "--root"])
        .arg(&root)
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without the capability: {err}"
    );
    assert!(
        err.contains("CAP_SETUID") && err.contains("CAP_SETGID"),
        "no reason given: {err}"
    );
}
