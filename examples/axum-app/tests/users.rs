//! Per-user roots: from the app's own basic auth, and from a trusted
//! proxy's X-Remote-User (only from that peer address).

use axum_app::{serve, Args};
use clap::Parser;
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(extra: &[&str], root: &Path) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("{e}"));
    let mut v = vec!["axum-app", "--root", root.to_str().unwrap_or_default()];
    v.extend_from_slice(extra);
    let args = Args::parse_from(v);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(args, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
    (addr, tx)
}

/// One raw HTTP/1.1 request from a chosen local address; returns status and body.
async fn raw(from: &str, to: SocketAddr, req: &str) -> (u16, String) {
    raw_bytes(from, to, req.as_bytes()).await
}

/// [`raw`] with a request that need not be UTF-8.
async fn raw_bytes(from: &str, to: SocketAddr, req: &[u8]) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    sock.bind(
        format!("{from}:0")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = sock.connect(to).await.unwrap_or_else(|e| panic!("{e}"));
    s.write_all(req).await.unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_get_their_own_roots() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let homes = dir.path().join("homes");
    let pw = dir.path().join("htpasswd");
    let (ha, hb) = (
        bcrypt::hash("pa", 4).unwrap_or_default(),
        bcrypt::hash("pb", 4).unwrap_or_default(),
    );
    std::fs::write(&pw, format!("alice:{ha}\nbob:{hb}\n")).unwrap_or_else(|e| panic!("{e}"));
    let (addr, _stop) = start(
        &[
            "--htpasswd",
            pw.to_str().unwrap_or_default(),
            "--user-roots",
            homes.to_str().unwrap_or_default(),
        ],
        &dir.path().join("data"),
    )
    .await;
    let put = |auth: String, name: &str, body: &str| {
        format!("PUT /fs/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    let readdir = |auth: String| {
        format!("READDIR /fs/ HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
    };
    assert_eq!(
        raw(
            "127.0.0.1",
            addr,
            &put(basic("alice", "pa"), "a.txt", "alice's")
        )
        .await
        .0,
        201
    );
    assert_eq!(
        raw(
            "127.0.0.1",
            addr,
            &put(basic("bob", "pb"), "b.txt", "bob's")
        )
        .await
        .0,
        201
    );
    assert_eq!(
        std::fs::read_to_string(homes.join("alice/a.txt")).unwrap_or_default(),
        "alice's"
    );
    assert_eq!(
        std::fs::read_to_string(homes.join("bob/b.txt")).unwrap_or_default(),
        "bob's"
    );
    let (s, body) = raw("127.0.0.1", addr, &readdir(basic("bob", "pb"))).await;
    assert_eq!(
        (s, body.as_str()),
        (200, ".\n..\nb.txt\n"),
        "bob sees only his root"
    );
    let (s, _) = raw(
        "127.0.0.1",
        addr,
        "READDIR /fs/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = raw("127.0.0.1", addr, &readdir(basic("alice", "pb"))).await;
    assert_eq!(s, 401);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(homes.join("alice"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_remote_user_only_from_the_trusted_peer() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let homes = dir.path().join("homes");
    // Trust 127.0.0.2; clients from 127.0.0.1 are not the proxy.
    let (addr, _stop) = start(
        &[
            "--trust-proxy-user",
            "127.0.0.2",
            "--user-roots",
            homes.to_str().unwrap_or_default(),
        ],
        &dir.path().join("data"),
    )
    .await;
    let mkdir = |user: &str| {
        format!("MKDIR /fs/made HTTP/1.1\r\nHost: x\r\nX-Remote-User: {user}\r\nX-Spock-mode: 493\r\nConnection: close\r\n\r\n")
    };
    // Spoofed from an untrusted peer: ignored, nothing created anywhere.
    let (s, _) = raw("127.0.0.1", addr, &mkdir("alice")).await;
    assert_eq!(s, 403);
    assert!(!homes.join("alice").exists());
    assert!(!dir.path().join("data/made").exists());
    // From the trusted peer: alice's root.
    let (s, _) = raw("127.0.0.2", addr, &mkdir("alice")).await;
    assert_eq!(s, 201);
    assert!(homes.join("alice/made").is_dir());
    // From the trusted peer without the header, or with a name that is
    // not a directory name: refused.
    let (s, _) = raw(
        "127.0.0.2",
        addr,
        "GETATTR /fs/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(s, 403);
    for bad in ["..", "a/b", "."] {
        let (s, _) = raw("127.0.0.2", addr, &mkdir(bad)).await;
        assert_eq!(s, 403, "user {bad:?}");
    }
    assert_eq!(
        std::fs::read_dir(&homes).map(|d| d.count()).unwrap_or(0),
        1,
        "only alice's root exists"
    );
}

#[tokio::test]
async fn user_roots_need_a_source_of_users() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let args = Args::parse_from([
        "axum-app",
        "--user-roots",
        dir.path().to_str().unwrap_or_default(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(serve(args, listener, async {}).await.is_err());
    assert!(
        !std::path::Path::new(axum_app::DEFAULT_ROOT).exists(),
        "a flag mistake creates no default root (in the test's working directory)"
    );
}

/// A user name is the header's bytes decoded as UTF-8 (nginx passes a
/// basic-auth name through as is), not just visible ASCII; invalid UTF-8
/// and names the user-name rule refuses are still 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_remote_user_in_utf8() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let homes = dir.path().join("homes");
    let (addr, _stop) = start(
        &[
            "--trust-proxy-user",
            "127.0.0.2",
            "--user-roots",
            homes.to_str().unwrap_or_default(),
        ],
        &dir.path().join("data"),
    )
    .await;
    let mkdir = |user: &[u8]| {
        let mut r = b"MKDIR /fs/made HTTP/1.1\r\nHost: x\r\nX-Remote-User: ".to_vec();
        r.extend_from_slice(user);
        r.extend_from_slice(b"\r\nX-Spock-mode: 493\r\nConnection: close\r\n\r\n");
        r
    };
    for user in ["jürgen", "Łukasz", "李"] {
        let (s, body) = raw_bytes("127.0.0.2", addr, &mkdir(user.as_bytes())).await;
        assert_eq!(s, 201, "user {user:?}: {body}");
        assert!(homes.join(user).join("made").is_dir(), "{user}");
    }
    // Latin-1 "jürgen" (0xFC alone is not UTF-8), a lone continuation
    // byte, and a UTF-8 name the rule refuses (it has a `/`).
    for bad in [&b"j\xfcrgen"[..], b"\x80", "ü/..".as_bytes()] {
        let (s, _) = raw_bytes("127.0.0.2", addr, &mkdir(bad)).await;
        assert_eq!(s, 403, "user {:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(
        std::fs::read_dir(&homes).map(|d| d.count()).unwrap_or(0),
        3,
        "only the three valid users' roots exist"
    );
}
