//! The FUSE mount's semantics without a kernel mount: `MountFs` driven
//! call by call, the way the kernel adapter drives it, against the axum app
//! in-process over a MemFs and over a LocalFs, checked against the backing
//! store. Covers the namespace calls, the caches and the one rule that
//! drops them (every change through the mount), files removed while open,
//! a created file's pending mode, read-only mounts and the errno mapping.

use bytes::Bytes;
use spockfs_client::{Client, Errno};
use spockfs_mount::{DirItem, Entry, MountConfig, MountFs, SetAttr, HIDDEN_PREFIX};
use spockfs_tests::{axum_mem, Kind, Running, Target};
use std::time::Duration;

const ROOT: u64 = 1;

/// Caches that outlive any test: what is answered from them is decided by
/// the mount's changes only, never by a timeout.
fn config() -> MountConfig {
    MountConfig {
        attr_timeout: Duration::from_secs(600),
        entry_timeout: Duration::from_secs(600),
        ..MountConfig::default()
    }
}

async fn mount(t: &Target, cfg: MountConfig) -> MountFs {
    let client = Client::new(&format!("http://{}/fs", t.addr)).unwrap_or_else(|e| panic!("{e}"));
    // As spockfs-mount does before mounting: learn the extensions.
    client.extensions().await;
    MountFs::new(client, cfg)
}

/// Runs each scenario against the axum app over a MemFs and over a LocalFs.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memfs() {
                super::$name(spockfs_tests::axum_mem().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn localfs() {
                super::$name(spockfs_tests::axum_local().await).await
            }
        }
    )*};
}

on_both_backends!(
    namespace_calls_round_trip,
    a_listing_is_reused_until_a_change,
    a_change_drops_the_attributes_it_touches,
    a_listed_directory_answers_missing_names,
    rename_and_unlink_drop_what_they_replace,
    a_file_removed_while_open_stays_readable,
    a_created_file_gets_its_mode_at_release,
    a_read_only_mount_refuses_every_change,
    errors_map_to_errnos,
    xattr_absence_is_remembered_until_set,
    forget_drops_the_inode,
);

async fn lookup(fs: &MountFs, parent: u64, name: &[u8]) -> Option<Entry> {
    fs.lookup(parent, name)
        .await
        .unwrap_or_else(|e| panic!("lookup {}: {e}", String::from_utf8_lossy(name)))
}

async fn ino(fs: &MountFs, parent: u64, name: &[u8]) -> u64 {
    match lookup(fs, parent, name).await {
        Some(e) => e.ino,
        None => panic!("{} absent", String::from_utf8_lossy(name)),
    }
}

/// The names `readdir` hands the kernel for directory `dir` (a fresh
/// handle), `.` and `..` included, and the offsets continue where a full
/// buffer stopped.
async fn names(fs: &MountFs, dir: u64) -> Vec<Vec<u8>> {
    let fh = fs.opendir(dir).await.unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        // Two entries at a time, as if the kernel's buffer were that small.
        let mut got: Vec<(Vec<u8>, u64)> = Vec::new();
        fs.readdir(dir, fh, offset, |e: DirItem<'_>| {
            if got.len() == 2 {
                return true;
            }
            got.push((e.name.to_vec(), e.offset));
            false
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let Some(&(_, last)) = got.last() else { break };
        offset = last;
        all.extend(got.into_iter().map(|(n, _)| n));
    }
    fs.releasedir(fh);
    all.sort();
    all
}

fn sorted(v: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = v.iter().map(|n| n.to_vec()).collect();
    v.sort();
    v
}

async fn namespace_calls_round_trip((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    let d = fs
        .mkdir(ROOT, b"d", 0o750)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.stat.mode, libc::S_IFDIR | 0o750);
    assert_eq!(
        t.store.stat("d").map(|s| (s.kind, s.perm)),
        Some((Kind::Dir, 0o750))
    );

    let (f, fh) = fs
        .create(d.ino, b"f", 0o640)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(f.ino, d.ino);
    assert_eq!(f.stat.mode, libc::S_IFREG | 0o640);
    let n = fs
        .write(f.ino, 2, Bytes::from_static(b"hello"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 5);
    assert_eq!(t.store.read("d/f").as_deref(), Some(&b"\0\0hello"[..]));
    assert_eq!(
        &fs.read(f.ino, 2, 3).await.unwrap_or_else(|e| panic!("{e}"))[..],
        b"hel"
    );
    let (st, _) = fs.getattr(f.ino).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((st.size, st.nlink), (7, 1));
    assert!(fs.release(fh).is_none(), "nothing left to do on release");

    // The same name is the same inode.
    assert_eq!(ino(&fs, d.ino, b"f").await, f.ino);

    let l = fs
        .symlink(d.ino, b"l", b"f")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.readlink(l.ino).await.as_deref(), Ok(&b"f"[..]));
    let h = fs
        .link(f.ino, ROOT, b"h")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.stat.nlink, 2);
    assert_eq!(t.store.stat("h").map(|s| s.nlink), Some(2));

    assert_eq!(names(&fs, d.ino).await, sorted(&[b".", b"..", b"f", b"l"]));

    fs.rename(d.ino, b"f", ROOT, b"g", 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.read("g").as_deref(), Some(&b"\0\0hello"[..]));
    assert!(t.store.stat("d/f").is_none());
    assert_eq!(lookup(&fs, d.ino, b"f").await, None, "old name gone");
    // The inode followed its file.
    assert_eq!(ino(&fs, ROOT, b"g").await, f.ino);
    assert_eq!(fs.path(f.ino), Ok(b"/g".to_vec()));

    fs.unlink(ROOT, b"g")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fs.unlink(ROOT, b"h")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fs.unlink(d.ino, b"l")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&fs, d.ino).await, sorted(&[b".", b".."]));
    fs.rmdir(ROOT, b"d").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.list(""), Some(vec![]));
    assert_eq!(lookup(&fs, ROOT, b"d").await, None);

    // setattr: size and mode in one call, answered as after.
    let (f, fh) = fs
        .create(ROOT, b"s", 0o600)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fs.release(fh).is_none());
    let st = fs
        .setattr(
            f.ino,
            SetAttr {
                mode: Some(0o604),
                size: Some(9),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((st.mode & 0o7777, st.size), (0o604, 9));
    assert_eq!(
        t.store.stat("s").map(|s| (s.perm, s.size)),
        Some((0o604, 9))
    );
    let sfs = fs.statfs(ROOT).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(sfs.namemax >= 255, "{sfs:?}");
}

async fn a_listing_is_reused_until_a_change((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    t.store.mkdir("d");
    t.store.write("d/a", b"");
    let d = ino(&fs, ROOT, b"d").await;
    assert_eq!(names(&fs, d).await, sorted(&[b".", b"..", b"a"]));
    // Behind the mount's back: the listing fetched just before is reused
    // (the staleness the kernel's own caches allow)...
    t.store.write("d/b", b"");
    assert_eq!(names(&fs, d).await, sorted(&[b".", b"..", b"a"]));
    // ...until any change goes through the mount, anywhere.
    fs.mkdir(ROOT, b"elsewhere", 0o755)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&fs, d).await, sorted(&[b".", b"..", b"a", b"b"]));
    // A mount without caches asks every time.
    let fresh = mount(
        &t,
        MountConfig {
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
            ..MountConfig::default()
        },
    )
    .await;
    let d = ino(&fresh, ROOT, b"d").await;
    assert_eq!(names(&fresh, d).await.len(), 4);
    t.store.write("d/c", b"");
    assert_eq!(names(&fresh, d).await.len(), 5);
}

async fn a_change_drops_the_attributes_it_touches((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    t.store.write("f", b"12345");
    t.store.write("other", b"");
    let f = ino(&fs, ROOT, b"f").await;
    let other = ino(&fs, ROOT, b"other").await;
    assert_eq!(fs.getattr_cached(f).map(|(st, _)| st.size), Some(5));
    // Changed behind the mount's back: the attributes it fetched stand.
    t.store.write("f", b"1234567");
    assert_eq!(fs.getattr(f).await.map(|(st, _)| st.size), Ok(5));
    // A change of another file leaves them.
    fs.write(other, 0, Bytes::from_static(b"x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.getattr(f).await.map(|(st, _)| st.size), Ok(5));
    // A change of this one drops them (and what the server answered is
    // kept, or fetched again).
    fs.write(f, 7, Bytes::from_static(b"8"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.getattr(f).await.map(|(st, _)| st.size), Ok(8));
    // Reading drops them too (the atime may have moved).
    assert!(fs.getattr_cached(f).is_some());
    fs.read(f, 0, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fs.getattr_cached(f).is_none(),
        "read drops cached attributes"
    );
    // A failed change drops them as well: its effect is unknown.
    fs.getattr(other).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(fs.getattr_cached(other).is_some());
    assert!(
        fs.fallocate(other, 0, 10, -1).await.is_err(),
        "fallocate with an invalid mode fails"
    );
    assert!(fs.getattr_cached(other).is_none());
}

async fn a_listed_directory_answers_missing_names((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    let d = fs
        .mkdir(ROOT, b"d", 0o755)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Just created, so known to be empty: a lookup needs no request, and
    // a name created behind the mount's back stays unseen.
    t.store.write("d/ghost", b"");
    assert_eq!(fs.lookup_cached(d.ino, b"ghost"), Some(Ok(None)));
    assert_eq!(lookup(&fs, d.ino, b"ghost").await, None);
    // The mount's own changes are applied to what it knows.
    let (e, fh) = fs
        .create(d.ino, b"mine", 0o644)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fs.release(fh).is_none());
    assert_eq!(fs.lookup_cached(d.ino, b"mine"), None, "exists: ask");
    assert_eq!(
        lookup(&fs, d.ino, b"mine").await.map(|x| x.ino),
        Some(e.ino)
    );
    // A directory it has not listed is asked.
    t.store.mkdir("u");
    t.store.write("u/x", b"");
    let u = ino(&fs, ROOT, b"u").await;
    assert_eq!(fs.lookup_cached(u, b"x"), None);
    assert!(lookup(&fs, u, b"x").await.is_some());
    // Without an entry timeout there are no negative entries at all.
    let nocache = mount(
        &t,
        MountConfig {
            entry_timeout: Duration::ZERO,
            ..config()
        },
    )
    .await;
    assert_eq!(nocache.lookup(ROOT, b"nothing").await, Err(Errno::ENOENT));
    assert_eq!(fs.lookup(ROOT, b"nothing").await, Ok(None));
}

async fn rename_and_unlink_drop_what_they_replace((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    t.store.mkdir("a");
    t.store.mkdir("a/sub");
    t.store.write("a/sub/f", b"f");
    t.store.write("b", b"b");
    let a = ino(&fs, ROOT, b"a").await;
    let sub = ino(&fs, a, b"sub").await;
    let f = ino(&fs, sub, b"f").await;
    let b = ino(&fs, ROOT, b"b").await;
    assert_eq!(names(&fs, sub).await.len(), 3);
    // A directory renamed: everything below follows.
    fs.rename(ROOT, b"a", ROOT, b"z", 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.path(f), Ok(b"/z/sub/f".to_vec()));
    assert_eq!(fs.path(sub), Ok(b"/z/sub".to_vec()));
    assert_eq!(&fs.read(f, 0, 10).await.unwrap_or_default()[..], b"f");
    // What was listed under the old name is forgotten: a new `a` is asked
    // for, not answered from the old listing.
    assert_eq!(fs.lookup(ROOT, b"a").await, Ok(None));
    t.store.mkdir("a");
    t.store.mkdir("a/sub");
    t.store.write("a/sub/new", b"");
    let a2 = ino(&fs, ROOT, b"a").await;
    let sub2 = ino(&fs, a2, b"sub").await;
    assert_ne!(sub2, sub);
    assert!(lookup(&fs, sub2, b"new").await.is_some());
    // A file replaced by a rename: its inode no longer has the name, and
    // the replaced attributes are not answered for the new file.
    fs.getattr(b).await.unwrap_or_else(|e| panic!("{e}"));
    fs.rename(sub, b"f", ROOT, b"b", 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ino(&fs, ROOT, b"b").await, f);
    assert_eq!(fs.getattr(f).await.map(|(st, _)| st.size), Ok(1));
    assert_eq!(t.store.read("b").as_deref(), Some(&b"f"[..]));
    // Unlink: the name is gone for lookups at once, and the directory's
    // listing is not reused.
    assert_eq!(
        names(&fs, ROOT).await,
        sorted(&[b".", b"..", b"a", b"b", b"z"])
    );
    fs.unlink(ROOT, b"b")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.lookup(ROOT, b"b").await, Ok(None));
    assert_eq!(names(&fs, ROOT).await, sorted(&[b".", b"..", b"a", b"z"]));
    // RENAME_NOREPLACE onto an existing name.
    assert_eq!(
        fs.rename(ROOT, b"a", ROOT, b"z", libc::RENAME_NOREPLACE)
            .await,
        Err(Errno::EEXIST)
    );
    assert!(t.store.stat("a/sub/new").is_some());
}

async fn a_file_removed_while_open_stays_readable((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    let d = fs
        .mkdir(ROOT, b"d", 0o755)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (f, fh) = fs
        .create(d.ino, b"f", 0o644)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fs.write(f.ino, 0, Bytes::from_static(b"still here"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fh2 = fs
        .open(f.ino, libc::O_RDONLY)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    fs.unlink(d.ino, b"f")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Gone by name, through the mount and on the server...
    assert_eq!(fs.lookup(d.ino, b"f").await, Ok(None));
    assert_eq!(names(&fs, d.ino).await, sorted(&[b".", b".."]));
    let listed = t.store.list("d").unwrap_or_default();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with(HIDDEN_PREFIX), "{listed:?}");
    // ...but the open descriptors still read, write and stat it, with one
    // link fewer (the hidden name), as after an unlink on a local disk.
    assert_eq!(
        &fs.read(f.ino, 0, 100).await.unwrap_or_default()[..],
        b"still here"
    );
    fs.write(f.ino, 10, Bytes::from_static(b"!"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (st, _) = fs.getattr(f.ino).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((st.size, st.nlink), (11, 0));
    // Its directory is not empty while it is open.
    assert_eq!(fs.rmdir(ROOT, b"d").await, Err(Errno::ENOTEMPTY));
    // The last release removes the hidden name.
    assert!(fs.release(fh).is_none(), "another handle is open");
    assert_eq!(t.store.list("d").map(|l| l.len()), Some(1));
    let last = fs
        .release(fh2)
        .unwrap_or_else(|| panic!("last release: work to do"));
    fs.finish_release(last)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.list("d"), Some(vec![]));
    fs.rmdir(ROOT, b"d").await.unwrap_or_else(|e| panic!("{e}"));

    // Replaced by a rename while open: the same.
    t.store.write("new", b"new");
    t.store.write("old", b"old");
    let old = ino(&fs, ROOT, b"old").await;
    let fh = fs
        .open(old, libc::O_RDONLY)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    fs.rename(ROOT, b"new", ROOT, b"old", 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.read("old").as_deref(), Some(&b"new"[..]));
    assert_eq!(&fs.read(old, 0, 10).await.unwrap_or_default()[..], b"old");
    let last = fs
        .release(fh)
        .unwrap_or_else(|| panic!("last release: work to do"));
    fs.finish_release(last)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.store.list(""), Some(vec![b"old".to_vec()]));
}

async fn a_created_file_gets_its_mode_at_release((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    let (f, fh) = fs
        .create(ROOT, b"ro", 0o444)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The kernel is shown the mode asked for at once...
    assert_eq!(f.stat.mode, libc::S_IFREG | 0o444);
    // ...while the creating descriptor may still write.
    fs.write(f.ino, 0, Bytes::from_static(b"data"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pending = fs.release(fh).unwrap_or_else(|| panic!("a mode to apply"));
    fs.finish_release(pending)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        t.store.stat("ro").map(|s| (s.perm, s.size)),
        Some((0o444, 4))
    );
    // A writable mode needs nothing at release.
    let (_, fh) = fs
        .create(ROOT, b"rw", 0o640)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fs.release(fh).is_none());
    assert_eq!(t.store.stat("rw").map(|s| s.perm), Some(0o640));
}

async fn a_read_only_mount_refuses_every_change((t, _srv): (Target, Running)) {
    t.store.mkdir("d");
    t.store.write("d/f", b"data");
    let fs = mount(
        &t,
        MountConfig {
            read_only: true,
            ..config()
        },
    )
    .await;
    let d = ino(&fs, ROOT, b"d").await;
    let f = ino(&fs, d, b"f").await;
    let erofs = Err(Errno::EROFS);
    assert_eq!(fs.mkdir(ROOT, b"x", 0o755).await.map(drop), erofs);
    assert_eq!(
        fs.mknod(ROOT, b"x", libc::S_IFREG | 0o644, 0)
            .await
            .map(drop),
        erofs
    );
    assert_eq!(fs.create(ROOT, b"x", 0o644).await.map(drop), erofs);
    assert_eq!(fs.symlink(ROOT, b"x", b"d").await.map(drop), erofs);
    assert_eq!(fs.link(f, ROOT, b"x").await.map(drop), erofs);
    assert_eq!(fs.unlink(d, b"f").await, erofs);
    assert_eq!(fs.rmdir(ROOT, b"d").await, erofs);
    assert_eq!(fs.rename(d, b"f", ROOT, b"g", 0).await, erofs);
    assert_eq!(
        fs.write(f, 0, Bytes::from_static(b"x")).await.map(drop),
        erofs
    );
    assert_eq!(
        fs.setattr(
            f,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        )
        .await
        .map(drop),
        erofs
    );
    assert_eq!(fs.setxattr(f, b"user.a", Bytes::new(), 0).await, erofs);
    assert_eq!(fs.removexattr(f, b"user.a").await, erofs);
    assert_eq!(fs.fallocate(f, 0, 1, 0).await, erofs);
    assert_eq!(fs.open(f, libc::O_WRONLY).await.map(drop), erofs);
    assert_eq!(fs.open(f, libc::O_RDWR).await.map(drop), erofs);
    assert_eq!(fs.access(f, libc::W_OK).await, erofs);
    // Refused before the name is looked at: a read-only mount answers
    // EROFS even for names that could not exist.
    assert_eq!(fs.mkdir(ROOT, &[b'n'; 300], 0o755).await.map(drop), erofs);
    // Reading works.
    let fh = fs
        .open(f, libc::O_RDONLY)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    assert_eq!(&fs.read(f, 0, 10).await.unwrap_or_default()[..], b"data");
    assert!(fs.release(fh).is_none());
    assert_eq!(fs.access(f, libc::R_OK).await, Ok(()));
    // Nothing changed on the server.
    assert_eq!(t.store.list(""), Some(vec![b"d".to_vec()]));
    assert_eq!(t.store.read("d/f").as_deref(), Some(&b"data"[..]));
}

async fn errors_map_to_errnos((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    t.store.mkdir("d");
    t.store.write("d/f", b"");
    let d = ino(&fs, ROOT, b"d").await;
    let f = ino(&fs, d, b"f").await;
    // Names are checked before any cache or request.
    let long = [b'n'; 256];
    assert_eq!(fs.lookup(ROOT, &long).await, Err(Errno::ENAMETOOLONG));
    assert_eq!(
        fs.lookup_cached(ROOT, &long),
        Some(Err(Errno::ENAMETOOLONG))
    );
    assert!(
        fs.lookup(ROOT, &long[..255]).await.is_ok(),
        "255 bytes is a name"
    );
    assert_eq!(fs.lookup(ROOT, b"a/b").await, Err(Errno::EINVAL));
    assert_eq!(
        fs.mkdir(ROOT, &long, 0o755).await.map(drop),
        Err(Errno::ENAMETOOLONG)
    );
    // Inodes the mount does not know.
    assert_eq!(fs.getattr(999).await.map(drop), Err(Errno::ENOENT));
    assert_eq!(fs.lookup(999, b"x").await, Err(Errno::ENOENT));
    assert_eq!(fs.read(999, 0, 1).await.map(drop), Err(Errno::ENOENT));
    // What the server answers, as its errno.
    assert_eq!(
        fs.mkdir(ROOT, b"d", 0o755).await.map(drop),
        Err(Errno::EEXIST)
    );
    assert_eq!(fs.rmdir(ROOT, b"d").await, Err(Errno::ENOTEMPTY));
    assert_eq!(fs.unlink(ROOT, b"missing").await, Err(Errno::ENOENT));
    assert_eq!(fs.unlink(ROOT, b"d").await, Err(Errno::EISDIR));
    assert_eq!(fs.rmdir(d, b"f").await, Err(Errno::ENOTDIR));
    assert_eq!(fs.readlink(f).await.map(drop), Err(Errno::EINVAL));
    assert_eq!(fs.opendir(f).await.map(drop), Err(Errno::ENOTDIR));
    // Requests the mount cannot map.
    assert_eq!(
        fs.rename(d, b"f", ROOT, b"g", libc::RENAME_EXCHANGE).await,
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.setxattr(f, b"user.a", Bytes::new(), 99).await,
        Err(Errno::EINVAL)
    );
    assert_eq!(fs.readdir(d, 12345, 0, |_| false), Err(Errno::EBADF));
    assert_eq!(
        fs.readdirplus(d, 12345, 0, |_| false).await,
        Err(Errno::EBADF)
    );
    // The store saw none of it.
    assert_eq!(t.store.list(""), Some(vec![b"d".to_vec()]));
    assert_eq!(t.store.list("d"), Some(vec![b"f".to_vec()]));
}

async fn xattr_absence_is_remembered_until_set((t, _srv): (Target, Running)) {
    if !t.store.xattrs_supported() {
        eprintln!("{}: no user xattrs here", t.store.describe());
        return;
    }
    let fs = mount(&t, config()).await;
    t.store.write("f", b"");
    t.store.write("g", b"");
    let f = ino(&fs, ROOT, b"f").await;
    let g = ino(&fs, ROOT, b"g").await;
    assert_eq!(fs.getxattr(f, b"user.k").await, Err(Errno::ENODATA));
    assert!(fs.xattr_known_absent(f, b"user.k"));
    assert!(!fs.xattr_known_absent(g, b"user.k"), "per inode");
    // Set behind the mount's back: still absent for it.
    let other = Client::new(&format!("http://{}/fs", t.addr)).unwrap_or_else(|e| panic!("{e}"));
    other
        .setxattr(
            b"/f",
            b"user.k",
            Bytes::from_static(b"v"),
            spockfs_client::XattrFlag::Any,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.getxattr(f, b"user.k").await, Err(Errno::ENODATA));
    // Set through the mount: known at once.
    fs.setxattr(f, b"user.k", Bytes::from_static(b"w"), 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.getxattr(f, b"user.k").await, Ok(b"w".to_vec()));
    assert_eq!(t.store.getxattr("f", "user.k"), Some(b"w".to_vec()));
    assert_eq!(
        fs.setxattr(f, b"user.k", Bytes::new(), libc::XATTR_CREATE)
            .await,
        Err(Errno::EEXIST)
    );
    assert_eq!(fs.listxattr(f).await, Ok(vec![b"user.k".to_vec()]));
    // Removed through the mount: absent without asking.
    fs.removexattr(f, b"user.k")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fs.xattr_known_absent(f, b"user.k"));
    assert_eq!(fs.getxattr(f, b"user.k").await, Err(Errno::ENODATA));
    // A probe name (security.*) no file has is answered mount-wide...
    assert_eq!(
        fs.getxattr(f, b"security.capability").await,
        Err(Errno::ENODATA)
    );
    assert!(fs.xattr_known_absent(g, b"security.capability"));
}

async fn forget_drops_the_inode((t, _srv): (Target, Running)) {
    let fs = mount(&t, config()).await;
    t.store.write("f", b"x");
    let f = ino(&fs, ROOT, b"f").await;
    assert_eq!(ino(&fs, ROOT, b"f").await, f, "two references");
    fs.getattr(f).await.unwrap_or_else(|e| panic!("{e}"));
    fs.forget(f, 1);
    assert_eq!(fs.path(f), Ok(b"/f".to_vec()));
    fs.forget(f, 1);
    assert_eq!(fs.path(f), Err(Errno::ENOENT));
    assert!(fs.getattr_cached(f).is_none(), "its attributes went too");
    // The root is never forgotten; a new lookup is a new inode.
    fs.forget(ROOT, 100);
    assert_eq!(fs.path(ROOT), Ok(b"/".to_vec()));
    let again = ino(&fs, ROOT, b"f").await;
    assert_ne!(again, f);
    // readdirplus takes one reference per name it hands out, and gives
    // back the one that did not fit: after it, one forget drops `f` again.
    let f = again;
    let fh = fs.opendir(ROOT).await.unwrap_or_else(|e| panic!("{e}"));
    let mut refused = false;
    fs.readdirplus(ROOT, fh, 0, |e| {
        refused = e.name == b"f";
        if !refused {
            assert!(e.name == b"." || e.name == b"..", "{:?}", e.name);
        }
        refused
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(refused);
    fs.forget(f, 1);
    assert_eq!(fs.path(f), Err(Errno::ENOENT));
    // Handed out: a reference, and the attributes of the listing.
    let fh = fs.opendir(ROOT).await.unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    fs.readdirplus(ROOT, fh, 0, |e| {
        seen.push((e.name.to_vec(), e.ino, e.stat.size));
        false
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    fs.releasedir(fh);
    let Some(&(_, f, size)) = seen.iter().find(|(n, _, _)| n == b"f") else {
        panic!("{seen:?}")
    };
    assert_eq!(size, 1);
    assert_eq!(fs.path(f), Ok(b"/f".to_vec()));
    assert_eq!(fs.getattr_cached(f).map(|(st, _)| st.size), Some(1));
}

#[tokio::test]
async fn callers_are_sent_only_when_asked() {
    let (t, _srv) = axum_mem().await;
    let pid = std::process::id();
    let fs = mount(&t, config()).await;
    let me = fs
        .caller(1234, 5678, pid)
        .unwrap_or_else(|| panic!("send_ids is on"));
    assert_eq!((me.uid, me.gid), (1234, 5678));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let groups: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(me.groups, groups);
    let quiet = mount(
        &t,
        MountConfig {
            send_ids: false,
            ..config()
        },
    )
    .await;
    assert_eq!(quiet.caller(1234, 5678, pid), None);
}
