//! The temporary files of whole-file PUTs (`.spockfs-put.*`, named where a
//! filesystem has no `O_TMPFILE`, and for an instant at every commit) are
//! the server's alone: never listed, not addressable, not creatable by a
//! client, and those a crashed server left behind are removed — at start,
//! and by a listing of their directory. Both example binaries, over HTTP.

use spockfs_tests::procs::{Opts, ServerKind, ServerProcess};
use spockfs_tests::Client;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

const STALE: &str = ".spockfs-put.4242.0.deadbeef";
const FRESH: &str = ".spockfs-put.4242.1.cafebabe";

/// A temporary file with `content`, last written `age` ago.
fn temp(path: &Path, content: &[u8], age: Duration) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{e}"));
    f.set_modified(SystemTime::now() - age)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits (up to 10 s) for `path` to be gone.
async fn gone(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporaries_are_the_servers_alone() {
    for kind in ServerKind::ALL {
        let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = work.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("d/visible"), b"v").unwrap_or_else(|e| panic!("{e}"));
        // Left by a crashed server two hours ago (nested), and one in
        // progress on another node right now.
        temp(
            &root.join("d/e").join(STALE),
            b"orphan",
            Duration::from_secs(7200),
        );
        temp(&root.join("d").join(FRESH), b"upload", Duration::ZERO);

        let server = ServerProcess::start(kind, work.path(), &root, &Opts::default());
        let c = Client::new(&server.base());

        // The start-up sweep removes the stale one, keeps the live one.
        assert!(
            gone(&root.join("d/e").join(STALE)).await,
            "{kind:?}: stale temporary kept after start\n{}",
            server.log_text()
        );
        assert!(
            root.join("d").join(FRESH).exists(),
            "{kind:?}: live upload removed"
        );

        // Not listed (plain and with attributes), not counted.
        for h in [&[][..], &[("X-Spock-readdir", "attrs")][..]] {
            let r = c.req("READDIR", "/d", h).await;
            assert_eq!(r.status, 200, "{kind:?}");
            let body = String::from_utf8_lossy(&r.body).into_owned();
            assert!(body.contains("visible"), "{kind:?}: {body}");
            assert!(!body.contains(".spockfs-put."), "{kind:?}: listed: {body}");
        }

        // Not addressable: 404 ENOENT for every method that names it.
        let fresh = format!("/d/{FRESH}");
        for m in [
            "GETATTR",
            "GET",
            "HEAD",
            "DELETE",
            "READLINK",
            "LISTXATTR",
            "OPEN",
        ] {
            let r = c.req(m, &fresh, &[("X-Spock-flag", "0")]).await;
            assert_eq!(r.status, 404, "{kind:?} {m}: {:?}", r.headers);
            if m != "HEAD" {
                assert_eq!(r.errno(), "ENOENT", "{kind:?} {m}");
            }
        }
        let r = c
            .send("PUT", &fresh, &[("Content-Range", b"bytes 0-0/*")], "X")
            .await;
        assert_eq!(r.status, 404, "{kind:?} ranged PUT into an upload");
        let r = c.req("CHMOD", &fresh, &[("X-Spock-mode", "777")]).await;
        assert_eq!(r.status, 404, "{kind:?} CHMOD");
        // As the source of a RENAME or LINK.
        for m in ["RENAME", "LINK"] {
            let r = c.req(m, "/stolen", &[("X-Spock-target", &fresh)]).await;
            assert_eq!(r.status, 404, "{kind:?} {m} from it");
        }
        assert!(!root.join("stolen").exists());
        assert_eq!(
            std::fs::read(root.join("d").join(FRESH)).unwrap_or_default(),
            b"upload",
            "{kind:?}: the upload in progress was changed"
        );

        // Not creatable under any method that makes a name: 400 EINVAL.
        let new = "/.spockfs-put.1.2.3";
        let creators: [(&str, &[(&str, &str)]); 6] = [
            ("POST", &[("X-Spock-mode", "644")]),
            ("MKDIR", &[("X-Spock-mode", "755")]),
            ("MKNOD", &[("X-Spock-mode", "10644"), ("X-Spock-dev", "0")]),
            ("SYMLINK", &[("X-Spock-target", "visible")]),
            ("LINK", &[("X-Spock-target", "/d/visible")]),
            ("RENAME", &[("X-Spock-target", "/d/visible")]),
        ];
        for (m, h) in creators {
            let r = c.req(m, new, h).await;
            assert_eq!(r.status, 400, "{kind:?} {m}");
            assert_eq!(r.errno(), "EINVAL", "{kind:?} {m}");
        }
        let r = c.send("PUT", new, &[], "data").await;
        assert_eq!(r.status, 400, "{kind:?} whole-file PUT");
        // Nor a symlink pointing at one (it would reach the upload).
        let r = c
            .req("SYMLINK", "/d/link", &[("X-Spock-target", FRESH)])
            .await;
        assert_eq!(r.status, 400, "{kind:?} symlink at a temporary");
        assert!(!root.join(".spockfs-put.1.2.3").exists());
        assert!(
            root.join("d/visible").exists(),
            "{kind:?}: a refused RENAME moved"
        );

        // A stale one appearing later (another node crashed) goes at the
        // next listing of its directory.
        temp(
            &root.join("d/e").join(STALE),
            b"orphan",
            Duration::from_secs(7200),
        );
        let r = c.req("READDIR", "/d/e", &[]).await;
        assert_eq!(r.status, 200);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            body.lines().all(|n| n == "." || n == ".."),
            "{kind:?}: {body}"
        );
        assert!(
            !root.join("d/e").join(STALE).exists(),
            "{kind:?}: a listing left the stale temporary"
        );
        // An ordinary whole-file PUT still works and leaves nothing behind.
        let r = c.send("PUT", "/d/e/new", &[], "content").await;
        assert!(r.status.is_success(), "{kind:?} PUT: {}", r.status);
        let names: Vec<_> = std::fs::read_dir(root.join("d/e"))
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(names, ["new"], "{kind:?}");
    }
}
