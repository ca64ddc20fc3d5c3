//! `MemFs` unit tests: each Backend call's semantics, permissions as root
//! and as other users, capacity, xattrs and ACLs, replacements.

use super::perm::*;
use super::tree::*;
use super::xattr::*;
use super::*;
use crate::backend::{mode, Backend, Owner, SetId, SetTime, Stat, XattrFlag};
use crate::LocalFs;

pub(super) const RDONLY: i32 = libc::O_RDONLY;
pub(super) const WRONLY: i32 = libc::O_WRONLY;
pub(super) const RDWR: i32 = libc::O_RDWR;
pub(super) const IFIFO: u32 = mode::S_IFIFO;
pub(super) const IFSOCK: u32 = mode::S_IFSOCK;

pub(super) fn p(s: &str) -> FsPath {
    FsPath::from_bytes(s.as_bytes()).unwrap_or_else(|e| panic!("bad path {s}: {e}"))
}

/// A filesystem seen by root, whoever runs the tests.
pub(super) fn rootfs() -> MemFs {
    MemFs::build(
        DEFAULT_CAPACITY,
        Cred {
            uid: 0,
            gid: 0,
            groups: Arc::from([]),
        },
    )
}

fn small(capacity: u64) -> MemFs {
    MemFs::build(
        capacity,
        Cred {
            uid: 0,
            gid: 0,
            groups: Arc::from([]),
        },
    )
}

fn put(fs: &MemFs, path: &str, data: &[u8]) {
    fs.create(&p(path), 0o644, SetId::Keep).unwrap();
    fs.open_write(&p(path), SetId::Keep)
        .unwrap()
        .write_at(data, 0)
        .unwrap();
}

fn read(fs: &MemFs, path: &str) -> FsResult<Vec<u8>> {
    let h = fs.open_read(&p(path))?;
    let mut buf = vec![0; h.size() as usize + 16];
    let n = h.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

fn stat(fs: &MemFs, path: &str) -> Stat {
    fs.getattr(&p(path))
        .unwrap_or_else(|e| panic!("getattr {path}: {e}"))
}

fn perms(fs: &MemFs, path: &str) -> u32 {
    stat(fs, path).mode & mode::PERMS
}

fn names(fs: &MemFs, path: &str) -> FsResult<Vec<String>> {
    let mut out = Vec::new();
    fs.readdir(&p(path), false, &mut |n, st| {
        assert!(st.is_none());
        out.push(String::from_utf8_lossy(n).into_owned());
        Ok(())
    })?;
    Ok(out)
}

fn owner(uid: Option<u32>, gid: Option<u32>) -> Owner {
    Owner { uid, gid }
}

#[test]
fn new_tree_clone_and_debug() {
    let fs = rootfs();
    assert!(!fs.is_blocking());
    let root = stat(&fs, "/");
    assert_eq!(root.ino, ROOT);
    assert_eq!(root.mode, mode::S_IFDIR | 0o755);
    assert_eq!(root.nlink, 2);
    assert_eq!(root.dev, DEV);
    assert_eq!(fs.capacity(), 1 << 30);

    let other = fs.clone();
    fs.mkdir(&p("/d"), 0o750).unwrap();
    put(&fs, "/d/f", b"hello");
    let d = stat(&other, "/d");
    assert_eq!(d.mode, mode::S_IFDIR | 0o750);
    assert_eq!((d.nlink, d.size, d.blocks), (2, 4096, 8));
    assert_eq!(stat(&other, "/").nlink, 3);
    let f = stat(&other, "/d/f");
    assert_eq!(f.mode, mode::S_IFREG | 0o644);
    assert_eq!((f.size, f.blocks, f.nlink, f.uid, f.gid), (5, 1, 1, 0, 0));
    assert!(f.ino > d.ino && d.ino > ROOT);
    assert_eq!(other.used(), 5);
    assert_eq!(read(&other, "/d/f").unwrap(), b"hello");

    let dbg = format!("{fs:?}");
    assert!(dbg.contains("MemFs") && dbg.contains("used: 5"), "{dbg}");
    assert_eq!(MemFs::default().capacity(), MemFs::new().capacity());
    assert_eq!(MemFs::with_capacity(12345).capacity(), 12345);
}

#[test]
fn new_objects_belong_to_the_process() {
    let fs = MemFs::new();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    let st = stat(&fs, "/d");
    assert_eq!(st.uid, rustix::process::geteuid().as_raw());
    assert_eq!(st.gid, rustix::process::getegid().as_raw());
}

#[test]
fn operations_on_the_root_path() {
    let fs = rootfs();
    put(&fs, "/f", b"x");
    let root = FsPath::root();
    assert_eq!(
        fs.mknod(&root, 0o644, 0, Devices::Refuse),
        Err(Errno::EEXIST)
    );
    assert_eq!(fs.symlink(&root, b"x"), Err(Errno::EEXIST));
    assert_eq!(fs.mkdir(&root, 0o755), Err(Errno::EEXIST));
    assert_eq!(fs.link(&root, &p("/f")), Err(Errno::EEXIST));
    assert_eq!(fs.link(&p("/g"), &root), Err(Errno::EPERM));
    assert_eq!(fs.rmdir(&root), Err(Errno::EBUSY));
    assert_eq!(fs.rename(&root, &p("/x")), Err(Errno::EBUSY));
    assert_eq!(fs.rename(&p("/f"), &root), Err(Errno::EBUSY));
    assert_eq!(fs.create(&root, 0o644, SetId::Keep), Err(Errno::EISDIR));
    assert_eq!(fs.unlink(&root), Err(Errno::EISDIR));
    assert_eq!(fs.replace(&root, SetId::Keep).err(), Some(Errno::EISDIR));
    assert_eq!(fs.open_read(&root).err(), Some(Errno::EISDIR));
    assert_eq!(fs.open_write(&root, SetId::Keep).err(), Some(Errno::EISDIR));
    assert_eq!(fs.truncate(&root, 0, SetId::Keep), Err(Errno::EISDIR));
    assert_eq!(fs.readlink(&root), Err(Errno::EINVAL));
    assert_eq!(fs.open(&root, WRONLY), Err(Errno::EISDIR));
    fs.open(&root, RDONLY).unwrap();
    fs.fsync(&root, true).unwrap();
    fs.chmod(&root, 0o711, SetId::Keep).unwrap();
    assert_eq!(perms(&fs, "/"), 0o711);
    fs.chown(&root, owner(Some(5), Some(6))).unwrap();
    fs.utimens(&root, SetTime::secs(10), SetTime::secs(20))
        .unwrap();
    let st = stat(&fs, "/");
    assert_eq!((st.uid, st.gid, st.atime, st.mtime), (5, 6, 10, 20));
    fs.access(&root, 7).unwrap();
    assert_eq!(names(&fs, "/").unwrap(), ["f"]);
    fs.statfs(&root).unwrap();
    fs.setxattr(&root, b"user.a", b"1", XattrFlag::Any).unwrap();
    assert_eq!(fs.getxattr(&root, b"user.a", 10).unwrap(), b"1");
    assert_eq!(fs.listxattr(&root, 10).unwrap(), [b"user.a".to_vec()]);
    fs.removexattr(&root, b"user.a").unwrap();
}

#[test]
fn resolution_never_follows_symlinks() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    put(&fs, "/d/f", b"data");
    put(&fs, "/f", b"data");
    fs.symlink(&p("/l"), b"d").unwrap();
    fs.symlink(&p("/abs"), b"/etc/passwd").unwrap();
    assert_eq!(fs.getattr(&p("/l/f")), Err(Errno::ELOOP));
    assert_eq!(
        fs.create(&p("/l/new"), 0o644, SetId::Keep),
        Err(Errno::ELOOP)
    );
    assert_eq!(fs.mkdir(&p("/l/new"), 0o755), Err(Errno::ELOOP));
    assert_eq!(fs.getattr(&p("/f/x")), Err(Errno::ENOTDIR));
    assert_eq!(
        fs.create(&p("/f/x"), 0o644, SetId::Keep),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(fs.getattr(&p("/missing/x")), Err(Errno::ENOENT));
    assert_eq!(fs.getattr(&p("/missing")), Err(Errno::ENOENT));
    assert_eq!(
        fs.replace(&p("/l/x"), SetId::Keep).err(),
        Some(Errno::ELOOP)
    );
    assert_eq!(fs.rename(&p("/l/f"), &p("/g")), Err(Errno::ELOOP));
    assert_eq!(fs.rename(&p("/f"), &p("/l/g")), Err(Errno::ELOOP));

    // The final component is the symlink itself.
    let st = stat(&fs, "/abs");
    assert!(st.is_symlink());
    assert_eq!((st.size, st.mode & 0o7777), (11, 0o777));
    assert_eq!(fs.readlink(&p("/abs")).unwrap(), b"/etc/passwd");
    for path in ["/l", "/abs"] {
        let l = p(path);
        assert_eq!(fs.open(&l, RDONLY), Err(Errno::ELOOP));
        assert_eq!(fs.open_read(&l).err(), Some(Errno::ELOOP));
        assert_eq!(fs.open_write(&l, SetId::Keep).err(), Some(Errno::ELOOP));
        assert_eq!(fs.truncate(&l, 0, SetId::Keep), Err(Errno::ELOOP));
        assert_eq!(fs.fallocate(&l, 0, 0, 1, SetId::Keep), Err(Errno::ELOOP));
        assert_eq!(fs.fsync(&l, false), Err(Errno::ELOOP));
        assert_eq!(
            fs.readdir(&l, false, &mut |_, _| Ok(())),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(fs.chmod(&l, 0o600, SetId::Keep), Err(Errno::EOPNOTSUPP));
        assert_eq!(fs.listxattr(&l, 100), Ok(vec![]));
        assert_eq!(fs.getxattr(&l, b"user.a", 100), Err(Errno::ENODATA));
        assert_eq!(fs.removexattr(&l, b"user.a"), Err(Errno::ENODATA));
        assert_eq!(
            fs.setxattr(&l, b"user.a", b"", XattrFlag::Any),
            Err(Errno::EPERM)
        );
        assert_eq!(fs.create(&l, 0o644, SetId::Keep), Err(Errno::ELOOP));
        assert_eq!(fs.mknod(&l, 0o644, 0, Devices::Refuse), Err(Errno::EEXIST));
        fs.access(&l, 7).unwrap();
        fs.statfs(&l).unwrap();
    }
    fs.chown(&p("/l"), owner(Some(7), Some(8))).unwrap();
    fs.utimens(&p("/l"), SetTime::secs(100), SetTime::secs(200))
        .unwrap();
    let st = stat(&fs, "/l");
    assert_eq!((st.uid, st.gid, st.atime, st.mtime), (7, 8, 100, 200));
    assert_eq!(stat(&fs, "/d").uid, 0, "the target is untouched");
    fs.link(&p("/l2"), &p("/l")).unwrap();
    assert_eq!(stat(&fs, "/l").nlink, 2);
    assert_eq!(fs.readlink(&p("/l2")).unwrap(), b"d");
    fs.rename(&p("/l2"), &p("/d/l3")).unwrap();
    fs.unlink(&p("/l")).unwrap();
    assert_eq!(stat(&fs, "/d/l3").nlink, 1);
    assert!(stat(&fs, "/d").is_dir());
    // A dangling symlink still occupies its name.
    fs.symlink(&p("/dangling"), b"nowhere").unwrap();
    assert_eq!(
        fs.mknod(&p("/dangling"), 0o644, 0, Devices::Refuse),
        Err(Errno::EEXIST)
    );
    assert_eq!(fs.mkdir(&p("/dangling"), 0o755), Err(Errno::EEXIST));
    assert_eq!(fs.symlink(&p("/dangling"), b"x"), Err(Errno::EEXIST));
    assert_eq!(fs.symlink(&p("/empty"), b""), Err(Errno::ENOENT));
    assert_eq!(fs.symlink(&p("/nul"), b"a\0b"), Err(Errno::EINVAL));
    assert_eq!(
        fs.symlink(&p("/long"), &[b'a'; 4096]),
        Err(Errno::ENAMETOOLONG)
    );
    fs.symlink(&p("/long"), &[b'a'; 4095]).unwrap();
    assert_eq!(fs.readlink(&p("/f")), Err(Errno::EINVAL));
    assert_eq!(fs.readlink(&p("/nope")), Err(Errno::ENOENT));
}

#[test]
fn mknod_types_and_modes() {
    let fs = rootfs();
    fs.mknod(&p("/plain"), 0o4751, 0, Devices::Refuse).unwrap();
    fs.mknod(&p("/reg"), mode::S_IFREG | 0o600, 0, Devices::Refuse)
        .unwrap();
    fs.mknod(&p("/fifo"), IFIFO | 0o640, 0, Devices::Refuse)
        .unwrap();
    fs.mknod(&p("/sock"), IFSOCK | 0o600, 0, Devices::Refuse)
        .unwrap();
    assert_eq!(stat(&fs, "/plain").mode, mode::S_IFREG | 0o4751);
    assert_eq!(stat(&fs, "/reg").mode, mode::S_IFREG | 0o600);
    assert_eq!(stat(&fs, "/fifo").mode, IFIFO | 0o640);
    assert_eq!(stat(&fs, "/sock").mode, IFSOCK | 0o600);
    assert_eq!((stat(&fs, "/fifo").size, stat(&fs, "/fifo").blocks), (0, 0));
    assert_eq!(
        fs.mknod(&p("/c"), mode::S_IFCHR | 0o600, 0x0101, Devices::Refuse),
        Err(Errno::EPERM)
    );
    assert_eq!(
        fs.mknod(&p("/b"), mode::S_IFBLK | 0o600, 0x0101, Devices::Refuse),
        Err(Errno::EPERM)
    );
    assert_eq!(
        fs.mknod(&p("/d"), mode::S_IFDIR | 0o755, 0, Devices::Refuse),
        Err(Errno::EPERM)
    );
    assert_eq!(
        fs.mknod(&p("/l"), mode::S_IFLNK | 0o777, 0, Devices::Refuse),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.mknod(&p("/x"), 0o170000 | 0o644, 0, Devices::Refuse),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.mknod(&p("/fifo"), IFIFO | 0o640, 0, Devices::Refuse),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fs.mknod(&p("/no/x"), 0o644, 0, Devices::Refuse),
        Err(Errno::ENOENT)
    );
    // The root error comes first, then the parent's, then the type's.
    assert_eq!(
        fs.mknod(&FsPath::root(), mode::S_IFCHR, 0, Devices::Refuse),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fs.mknod(&p("/no/x"), mode::S_IFCHR, 0, Devices::Refuse),
        Err(Errno::ENOENT)
    );
    fs.mkdir(&p("/m"), 0o1777).unwrap();
    assert_eq!(stat(&fs, "/m").mode, mode::S_IFDIR | 0o1777);
}

/// Device nodes where the mount allows inert ones (a MemFs is `nodev`).
#[test]
fn inert_devices() {
    let fs = rootfs();
    fs.mknod(&p("/c"), mode::S_IFCHR | 0o620, 0x0501, Devices::Inert)
        .unwrap();
    fs.mknod(&p("/b"), mode::S_IFBLK | 0o600, 0x0801, Devices::Inert)
        .unwrap();
    assert_eq!(stat(&fs, "/c").mode, mode::S_IFCHR | 0o620);
    assert_eq!(stat(&fs, "/b").mode, mode::S_IFBLK | 0o600);
    assert!(fs.statfs(&p("/c")).unwrap().flag & ST_NODEV != 0);
    assert_eq!(
        fs.mknod(&p("/d"), mode::S_IFDIR | 0o755, 0, Devices::Inert),
        Err(Errno::EPERM)
    );
}

/// `UTIME_NOW`, `UTIME_OMIT` and nanoseconds, with `utimensat`'s
/// permission rules; compared with the kernel (LocalFs as uid 1000)
/// when running as root.
#[test]
fn utimens_now_omit_and_nanoseconds() {
    use SetTime::{Now, Omit};
    let at = |sec, nsec| SetTime::At { sec, nsec };
    let fs = rootfs();
    put(&fs, "/f", b"");
    let before = stat(&fs, "/f");
    fs.utimens(&p("/f"), at(5, 123), Omit).unwrap();
    let st = stat(&fs, "/f");
    assert_eq!((st.atime, st.atime_nsec), (5, 123));
    assert_eq!((st.mtime, st.mtime_nsec), (before.mtime, before.mtime_nsec));
    fs.utimens(&p("/f"), Omit, at(-7, 999_999_999)).unwrap();
    let st = stat(&fs, "/f");
    assert_eq!(
        (st.atime, st.atime_nsec, st.mtime, st.mtime_nsec),
        (5, 123, -7, 999_999_999)
    );
    fs.utimens(&p("/f"), Now, Omit).unwrap();
    assert!(stat(&fs, "/f").atime > 5);
    assert_eq!(stat(&fs, "/f").mtime, -7);
    // Nothing to do: the path is not even looked up.
    assert_eq!(fs.utimens(&p("/nope"), Omit, Omit), Ok(()));
    assert_eq!(
        fs.utimens(&p("/f"), at(1, 1_000_000_000), Omit),
        Err(Errno::EINVAL)
    );

    // As a non-owner: "touch" needs write access, anything else
    // ownership. The same calls on the kernel give the same answers.
    let cases = [
        ("/w", Now, Now),
        ("/w", Now, Omit),
        ("/w", at(1, 2), at(3, 4)),
        ("/w", Omit, Omit),
        ("/r", Now, Now),
        ("/r", Omit, Now),
    ];
    let setup = |create: &dyn Fn(&str, u32)| {
        create("/w", 0o666);
        create("/r", 0o644);
    };
    setup(&|f, m| {
        put(&fs, f, b"");
        fs.chmod(&p(f), m, SetId::Keep).unwrap();
    });
    let user = fs.with_identity(1000, 1000);
    let mem: Vec<FsResult<()>> = cases
        .iter()
        .map(|&(f, a, m)| user.utimens(&p(f), a, m))
        .collect();
    assert_eq!(
        mem,
        [
            Ok(()),
            Err(Errno::EPERM),
            Err(Errno::EPERM),
            Ok(()),
            Err(Errno::EACCES),
            Err(Errno::EPERM)
        ]
    );
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("note: not running as root; the comparison with the kernel is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Searchable by uid 1000.
    rustix::fs::chmod(dir.path(), rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
    let local = Arc::new(LocalFs::open(dir.path()).unwrap());
    setup(&|f, m| {
        local.create(&p(f), m, SetId::Keep).unwrap();
        local.chmod(&p(f), m, SetId::Keep).unwrap();
    });
    let l = Arc::clone(&local);
    let kernel = std::thread::spawn(move || {
        use rustix::process::{Gid, Uid};
        let (gid, uid) = (Gid::from_raw(1000), Uid::from_raw(1000));
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        Ok::<_, rustix::io::Errno>(
            cases
                .iter()
                .map(|&(f, a, m)| l.utimens(&p(f), a, m))
                .collect::<Vec<_>>(),
        )
    })
    .join()
    .unwrap();
    match kernel {
        Ok(k) => assert_eq!(mem, k),
        Err(e) => eprintln!("note: cannot switch a thread to uid 1000 ({e}); skipped"),
    }
    local.utimens(&p("/w"), at(1, 234_567_891), Omit).unwrap();
    let st = local.getattr(&p("/w")).unwrap();
    assert_eq!((st.atime, st.atime_nsec), (1, 234_567_891));
}

#[test]
fn create_is_creat() {
    let fs = rootfs();
    fs.create(&p("/f"), 0o4640, SetId::Keep).unwrap();
    assert_eq!(stat(&fs, "/f").mode, mode::S_IFREG | 0o4640);
    fs.open_write(&p("/f"), SetId::Keep)
        .unwrap()
        .write_at(b"content", 0)
        .unwrap();
    let before = fs.used();
    fs.create(&p("/f"), 0o600, SetId::Keep).unwrap();
    let st = stat(&fs, "/f");
    assert_eq!(
        (st.mode & 0o7777, st.size),
        (0o4640, 0),
        "truncated, mode kept"
    );
    assert_eq!(fs.used(), before - 7);
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.symlink(&p("/l"), b"f").unwrap();
    fs.mknod(&p("/fifo"), IFIFO | 0o644, 0, Devices::Refuse)
        .unwrap();
    fs.mknod(&p("/sock"), IFSOCK | 0o644, 0, Devices::Refuse)
        .unwrap();
    assert_eq!(fs.create(&p("/d"), 0o644, SetId::Keep), Err(Errno::EISDIR));
    assert_eq!(fs.create(&p("/l"), 0o644, SetId::Keep), Err(Errno::ELOOP));
    assert_eq!(
        fs.create(&p("/fifo"), 0o644, SetId::Keep),
        Err(Errno::ENXIO)
    );
    assert_eq!(
        fs.create(&p("/sock"), 0o644, SetId::Keep),
        Err(Errno::ENXIO)
    );
    assert_eq!(
        fs.create(&p("/nope/f"), 0o644, SetId::Keep),
        Err(Errno::ENOENT)
    );
}

#[test]
fn open_checks_access_mode_and_type() {
    let fs = rootfs();
    put(&fs, "/f", b"x");
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.mknod(&p("/fifo"), IFIFO | 0o644, 0, Devices::Refuse)
        .unwrap();
    fs.mknod(&p("/sock"), IFSOCK | 0o644, 0, Devices::Refuse)
        .unwrap();
    for flags in [RDONLY, WRONLY, RDWR, RDWR | libc::O_TRUNC | libc::O_CREAT] {
        fs.open(&p("/f"), flags).unwrap();
    }
    assert_eq!(read(&fs, "/f").unwrap(), b"x", "O_TRUNC is ignored");
    assert_eq!(fs.open(&p("/f"), 3), Err(Errno::EINVAL));
    assert_eq!(fs.open(&p("/nope"), 3), Err(Errno::EINVAL));
    assert_eq!(fs.open(&p("/nope"), RDONLY), Err(Errno::ENOENT));
    fs.open(&p("/d"), RDONLY).unwrap();
    assert_eq!(fs.open(&p("/d"), WRONLY), Err(Errno::EISDIR));
    assert_eq!(fs.open(&p("/d"), RDWR), Err(Errno::EISDIR));
    fs.open(&p("/fifo"), RDONLY).unwrap();
    fs.open(&p("/fifo"), RDWR).unwrap();
    assert_eq!(fs.open(&p("/fifo"), WRONLY), Err(Errno::ENXIO));
    assert_eq!(fs.open(&p("/sock"), RDONLY), Err(Errno::ENXIO));
    // GET/PUT-range handles: regular files only.
    assert_eq!(fs.open_read(&p("/d")).err(), Some(Errno::EISDIR));
    assert_eq!(
        fs.open_write(&p("/d"), SetId::Keep).err(),
        Some(Errno::EISDIR)
    );
    assert_eq!(fs.open_read(&p("/fifo")).err(), Some(Errno::EINVAL));
    assert_eq!(
        fs.open_write(&p("/fifo"), SetId::Keep).err(),
        Some(Errno::ENXIO)
    );
    assert_eq!(fs.open_read(&p("/sock")).err(), Some(Errno::ENXIO));
    assert_eq!(fs.truncate(&p("/fifo"), 0, SetId::Keep), Err(Errno::ENXIO));
    assert_eq!(
        fs.fallocate(&p("/sock"), 0, 0, 1, SetId::Keep),
        Err(Errno::ENXIO)
    );
    fs.fsync(&p("/f"), false).unwrap();
    fs.fsync(&p("/d"), true).unwrap();
    assert_eq!(fs.fsync(&p("/fifo"), false), Err(Errno::EINVAL));
    assert_eq!(fs.fsync(&p("/sock"), false), Err(Errno::ENXIO));
    assert_eq!(fs.fsync(&p("/nope"), false), Err(Errno::ENOENT));
    assert_eq!(
        fs.readdir(&p("/f"), false, &mut |_, _| Ok(())),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(
        fs.readdir(&p("/fifo"), true, &mut |_, _| Ok(())),
        Err(Errno::ENOTDIR)
    );
}

#[test]
fn truncate_and_file_handles() {
    let fs = rootfs();
    put(&fs, "/f", b"hello world");
    fs.truncate(&p("/f"), 5, SetId::Keep).unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"hello");
    fs.truncate(&p("/f"), 8, SetId::Keep).unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"hello\0\0\0");
    assert_eq!(stat(&fs, "/f").blocks, 1);
    fs.truncate(&p("/f"), 513, SetId::Keep).unwrap();
    assert_eq!(stat(&fs, "/f").blocks, 2);
    fs.truncate(&p("/f"), 5, SetId::Keep).unwrap();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    assert_eq!(fs.truncate(&p("/d"), 0, SetId::Keep), Err(Errno::EISDIR));
    assert_eq!(fs.truncate(&p("/nope"), 0, SetId::Keep), Err(Errno::ENOENT));
    assert_eq!(
        fs.truncate(&p("/f"), MAX_FILE_SIZE + 1, SetId::Keep),
        Err(Errno::EFBIG)
    );
    assert_eq!(
        fs.truncate(&p("/f"), u64::MAX, SetId::Keep),
        Err(Errno::EINVAL)
    );

    // Handles: size at open, live content.
    let r = fs.open_read(&p("/f")).unwrap();
    let w = fs.open_write(&p("/f"), SetId::Keep).unwrap();
    assert_eq!((r.size(), w.size()), (5, 5));
    w.write_at(b"HELLO, WORLD", 0).unwrap();
    assert_eq!(r.size(), 5);
    let mut buf = [0u8; 32];
    assert_eq!(r.read_at(&mut buf, 0).unwrap(), 12);
    assert_eq!(&buf[..12], b"HELLO, WORLD");
    assert_eq!(r.read_at(&mut buf[..3], 7).unwrap(), 3);
    assert_eq!(&buf[..3], b"WOR");
    assert_eq!(r.read_at(&mut buf, 12).unwrap(), 0);
    assert_eq!(r.read_at(&mut buf, 1000).unwrap(), 0);
    assert_eq!(r.read_at(&mut buf, u64::MAX).err(), Some(Errno::EINVAL));
    // An O_RDONLY/O_WRONLY fd refuses the other direction.
    assert_eq!(r.write_at(b"x", 0).err(), Some(Errno::EBADF));
    r.write_at(b"", 0).unwrap();
    assert_eq!(w.read_at(&mut buf, 0).err(), Some(Errno::EBADF));
    w.write_at(b"!", 14).unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"HELLO, WORLD\0\0!");
    assert_eq!(w.write_at(b"x", MAX_FILE_SIZE).err(), Some(Errno::EFBIG));
    assert_eq!(w.write_at(b"x", u64::MAX).err(), Some(Errno::EINVAL));
    assert_eq!(fs.used(), 15);

    // Unlinked while open: still readable and writable, freed on close.
    fs.unlink(&p("/f")).unwrap();
    assert_eq!(fs.getattr(&p("/f")), Err(Errno::ENOENT));
    w.write_at(b"h", 0).unwrap();
    assert_eq!(r.read_at(&mut buf[..1], 0).unwrap(), 1);
    assert_eq!(buf[0], b'h');
    assert_eq!(fs.used(), 15);
    let inodes = fs.statfs(&FsPath::root()).unwrap().ffree;
    drop(r);
    assert_eq!(fs.used(), 15);
    drop(w);
    assert_eq!(fs.used(), 0);
    assert_eq!(fs.statfs(&FsPath::root()).unwrap().ffree, inodes + 1);
}

#[test]
fn readdir_lists_entries_once() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    put(&fs, "/d/b", b"12");
    fs.mkdir(&p("/d/a"), 0o700).unwrap();
    fs.symlink(&p("/d/c"), b"b").unwrap();
    assert_eq!(names(&fs, "/d").unwrap(), ["a", "b", "c"]);
    let mut seen = Vec::new();
    fs.readdir(&p("/d"), true, &mut |n, st| {
        let st = st.copied().ok_or(Errno::EIO)?;
        seen.push((n.to_vec(), st.mode & mode::S_IFMT, st.size));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            (b"a".to_vec(), mode::S_IFDIR, 4096),
            (b"b".to_vec(), mode::S_IFREG, 2),
            (b"c".to_vec(), mode::S_IFLNK, 1)
        ]
    );
    assert_eq!(names(&fs, "/d/a").unwrap(), Vec::<String>::new());
    // The sink may stop early, and may call back into the filesystem.
    let mut count = 0;
    let r = fs.readdir(&p("/d"), false, &mut |n, _| {
        count += 1;
        fs.getattr(&p(&format!("/d/{}", String::from_utf8_lossy(n))))?;
        Err(Errno::ECANCELED)
    });
    assert_eq!((r, count), (Err(Errno::ECANCELED), 1));
}

#[test]
fn rmdir_and_unlink() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.mkdir(&p("/d/e"), 0o755).unwrap();
    put(&fs, "/f", b"x");
    assert_eq!(stat(&fs, "/d").nlink, 3);
    assert_eq!(fs.rmdir(&p("/d")), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.rmdir(&p("/f")), Err(Errno::ENOTDIR));
    assert_eq!(fs.rmdir(&p("/nope")), Err(Errno::ENOENT));
    assert_eq!(fs.unlink(&p("/d")), Err(Errno::EISDIR));
    assert_eq!(fs.unlink(&p("/nope")), Err(Errno::ENOENT));
    assert_eq!(fs.unlink(&p("/f/x")), Err(Errno::ENOTDIR));
    fs.rmdir(&p("/d/e")).unwrap();
    assert_eq!(stat(&fs, "/d").nlink, 2);
    fs.rmdir(&p("/d")).unwrap();
    assert_eq!(stat(&fs, "/").nlink, 2);
    fs.unlink(&p("/f")).unwrap();
    assert_eq!(names(&fs, "/").unwrap(), Vec::<String>::new());
    assert_eq!(fs.used(), 0);
    assert_eq!(fs.lock().inodes.len(), 1);
}

#[test]
fn hard_links() {
    let fs = rootfs();
    put(&fs, "/f", b"shared");
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.link(&p("/d/g"), &p("/f")).unwrap();
    assert_eq!(stat(&fs, "/f").nlink, 2);
    assert_eq!(stat(&fs, "/f").ino, stat(&fs, "/d/g").ino);
    fs.open_write(&p("/d/g"), SetId::Keep)
        .unwrap()
        .write_at(b"S", 0)
        .unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"Shared");
    assert_eq!(fs.used(), 6, "counted once");
    assert_eq!(fs.link(&p("/d/g"), &p("/f")), Err(Errno::EEXIST));
    assert_eq!(fs.link(&p("/x"), &p("/d")), Err(Errno::EPERM));
    assert_eq!(fs.link(&p("/x"), &p("/nope")), Err(Errno::ENOENT));
    assert_eq!(fs.link(&p("/nope/x"), &p("/f")), Err(Errno::ENOENT));
    assert_eq!(fs.link(&p("/f/x"), &p("/f")), Err(Errno::ENOTDIR));
    fs.unlink(&p("/f")).unwrap();
    assert_eq!(stat(&fs, "/d/g").nlink, 1);
    assert_eq!(read(&fs, "/d/g").unwrap(), b"Shared");
    fs.unlink(&p("/d/g")).unwrap();
    assert_eq!(fs.used(), 0);
    fs.mknod(&p("/fifo"), IFIFO | 0o600, 0, Devices::Refuse)
        .unwrap();
    fs.link(&p("/fifo2"), &p("/fifo")).unwrap();
    assert_eq!(stat(&fs, "/fifo2").nlink, 2);
}

#[test]
fn rename_cases() {
    let fs = rootfs();
    fs.mkdir(&p("/a"), 0o755).unwrap();
    fs.mkdir(&p("/a/b"), 0o755).unwrap();
    fs.mkdir(&p("/a/b/c"), 0o755).unwrap();
    fs.mkdir(&p("/empty"), 0o755).unwrap();
    fs.mkdir(&p("/full"), 0o755).unwrap();
    put(&fs, "/full/x", b"x");
    put(&fs, "/f", b"file f");
    put(&fs, "/g", b"file g");
    fs.link(&p("/h"), &p("/f")).unwrap();

    assert_eq!(fs.rename(&p("/nope"), &p("/x")), Err(Errno::ENOENT));
    assert_eq!(fs.rename(&p("/a"), &p("/a/b/c/d")), Err(Errno::EINVAL));
    assert_eq!(fs.rename(&p("/a"), &p("/a/x")), Err(Errno::EINVAL));
    assert_eq!(fs.rename(&p("/a/b"), &p("/a")), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.rename(&p("/a/b/c"), &p("/a")), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.rename(&p("/f"), &p("/a")), Err(Errno::EISDIR));
    assert_eq!(fs.rename(&p("/a"), &p("/f")), Err(Errno::ENOTDIR));
    assert_eq!(fs.rename(&p("/empty"), &p("/full")), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.rename(&p("/f"), &p("/nope/x")), Err(Errno::ENOENT));
    // Same inode: nothing happens, both names stay.
    fs.rename(&p("/h"), &p("/f")).unwrap();
    fs.rename(&p("/f"), &p("/f")).unwrap();
    fs.rename(&p("/a"), &p("/a")).unwrap();
    assert_eq!(stat(&fs, "/f").nlink, 2);
    assert!(fs.getattr(&p("/h")).is_ok());
    // File over file.
    fs.rename(&p("/g"), &p("/h")).unwrap();
    assert_eq!(read(&fs, "/h").unwrap(), b"file g");
    assert_eq!(stat(&fs, "/f").nlink, 1);
    assert_eq!(fs.getattr(&p("/g")), Err(Errno::ENOENT));
    // Directory over empty directory, and across parents.
    let root_links = stat(&fs, "/").nlink;
    fs.rename(&p("/a/b/c"), &p("/empty")).unwrap();
    assert_eq!(stat(&fs, "/a/b").nlink, 2);
    assert_eq!(stat(&fs, "/").nlink, root_links);
    fs.rename(&p("/empty"), &p("/a/b/c2")).unwrap();
    assert_eq!(stat(&fs, "/a/b").nlink, 3);
    assert_eq!(stat(&fs, "/").nlink, root_links - 1);
    fs.rename(&p("/a/b"), &p("/a/b2")).unwrap();
    assert_eq!(stat(&fs, "/a").nlink, 3);
    assert_eq!(names(&fs, "/a/b2").unwrap(), ["c2"]);
    // Anything can be renamed, including symlinks and FIFOs.
    fs.symlink(&p("/l"), b"nowhere").unwrap();
    fs.rename(&p("/l"), &p("/a/l")).unwrap();
    assert_eq!(fs.readlink(&p("/a/l")).unwrap(), b"nowhere");
    assert_eq!(fs.used(), 13);
}

#[test]
fn fallocate_modes() {
    let fs = small(1 << 20);
    put(&fs, "/f", b"abcdefgh");
    fs.fallocate(&p("/f"), 0, 4, 2, SetId::Keep).unwrap();
    assert_eq!(stat(&fs, "/f").size, 8, "inside: nothing changes");
    fs.fallocate(&p("/f"), 0, 6, 6, SetId::Keep).unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"abcdefgh\0\0\0\0");
    fs.fallocate(&p("/f"), FALLOC_FL_KEEP_SIZE, 0, 1000, SetId::Keep)
        .unwrap();
    assert_eq!(stat(&fs, "/f").size, 12);
    fs.fallocate(
        &p("/f"),
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        2,
        3,
        SetId::Keep,
    )
    .unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"ab\0\0\0fgh\0\0\0\0");
    fs.fallocate(
        &p("/f"),
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        10,
        100,
        SetId::Keep,
    )
    .unwrap();
    assert_eq!(stat(&fs, "/f").size, 12);
    put(&fs, "/z", b"abcdef");
    fs.fallocate(&p("/z"), FALLOC_FL_ZERO_RANGE, 4, 4, SetId::Keep)
        .unwrap();
    assert_eq!(read(&fs, "/z").unwrap(), b"abcd\0\0\0\0");
    fs.fallocate(
        &p("/z"),
        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
        0,
        100,
        SetId::Keep,
    )
    .unwrap();
    assert_eq!(read(&fs, "/z").unwrap(), b"\0\0\0\0\0\0\0\0");
    assert_eq!(
        fs.fallocate(&p("/f"), 0, 0, 0, SetId::Keep),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), 0, u64::MAX, 1, SetId::Keep),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), FALLOC_FL_PUNCH_HOLE, 0, 1, SetId::Keep),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), 0x08, 0, 4096, SetId::Keep),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), -1, 0, 1, SetId::Keep),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), 0, MAX_FILE_SIZE, 1, SetId::Keep),
        Err(Errno::EFBIG)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), 0, 0, 2 << 20, SetId::Keep),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        fs.fallocate(&p("/f"), FALLOC_FL_KEEP_SIZE, 0, 2 << 20, SetId::Keep),
        Err(Errno::ENOSPC)
    );
    assert_eq!(stat(&fs, "/f").size, 12);
    fs.mkdir(&p("/d"), 0o755).unwrap();
    assert_eq!(
        fs.fallocate(&p("/d"), 0, 0, 1, SetId::Keep),
        Err(Errno::EISDIR)
    );
    assert_eq!(fs.used(), 20);
}

#[test]
fn capacity_is_enforced_and_reported() {
    let fs = small(10 * 4096);
    let sf = fs.statfs(&FsPath::root()).unwrap();
    assert_eq!(
        (sf.bsize, sf.frsize, sf.blocks, sf.bfree, sf.bavail),
        (4096, 4096, 10, 10, 10)
    );
    assert_eq!(
        (sf.files, sf.ffree, sf.favail),
        (MAX_INODES, MAX_INODES - 1, MAX_INODES - 1)
    );
    assert_eq!((sf.fsid, sf.flag, sf.namemax), (FSID, ST_NODEV, 255));
    put(&fs, "/f", &[1; 8192]);
    let sf = fs.statfs(&p("/f")).unwrap();
    assert_eq!((sf.bfree, sf.ffree), (8, MAX_INODES - 2));
    assert_eq!(fs.statfs(&p("/nope")).err(), Some(Errno::ENOENT));

    let w = fs.open_write(&p("/f"), SetId::Keep).unwrap();
    assert_eq!(w.write_at(b"x", 40960).err(), Some(Errno::ENOSPC));
    w.write_at(b"x", 40959).unwrap();
    assert_eq!(fs.used(), 40960);
    assert_eq!(w.write_at(b"x", 40960).err(), Some(Errno::ENOSPC));
    w.write_at(b"y", 0).unwrap();
    assert_eq!(
        fs.truncate(&p("/f"), 40961, SetId::Keep),
        Err(Errno::ENOSPC)
    );
    assert_eq!(stat(&fs, "/f").size, 40960, "unchanged");
    assert_eq!(
        fs.setxattr(&p("/f"), b"user.a", b"", XattrFlag::Any),
        Err(Errno::ENOSPC)
    );
    assert_eq!(fs.statfs(&FsPath::root()).unwrap().bfree, 0);
    fs.truncate(&p("/f"), 100, SetId::Keep).unwrap();
    fs.setxattr(&p("/f"), b"user.a", b"12345", XattrFlag::Any)
        .unwrap();
    assert_eq!(fs.used(), 111);
    fs.setxattr(&p("/f"), b"user.a", b"1", XattrFlag::Any)
        .unwrap();
    assert_eq!(fs.used(), 107);
    fs.removexattr(&p("/f"), b"user.a").unwrap();
    assert_eq!(fs.used(), 100);
    drop(w);
    fs.unlink(&p("/f")).unwrap();
    assert_eq!(fs.used(), 0);

    // A replacement commit must fit once the old file is gone.
    put(&fs, "/g", &[0; 30000]);
    let r = fs.replace(&p("/g"), SetId::Keep).unwrap();
    r.write_at(&[1; 40000], 0).unwrap();
    assert_eq!(r.write_at(b"x", 40960).err(), Some(Errno::ENOSPC));
    assert_eq!(fs.used(), 30000, "uncommitted data is not charged");
    fs.link(&p("/g2"), &p("/g")).unwrap();
    assert_eq!(
        r.commit(),
        Err(Errno::ENOSPC),
        "old file kept alive by a link"
    );
    assert_eq!(stat(&fs, "/g").size, 30000);
    fs.unlink(&p("/g2")).unwrap();
    assert_eq!(r.commit(), Ok(false));
    assert_eq!(fs.used(), 40000);
    assert_eq!(stat(&fs, "/g").size, 40000);
}

#[test]
fn huge_offsets_are_refused_without_allocating() {
    let fs = rootfs();
    put(&fs, "/f", b"");
    let w = fs.open_write(&p("/f"), SetId::Keep).unwrap();
    assert_eq!(w.write_at(b"x", (1 << 40) - 1).err(), Some(Errno::ENOSPC));
    assert_eq!(w.write_at(b"xx", (1 << 40) - 1).err(), Some(Errno::EFBIG));
    assert_eq!(
        fs.truncate(&p("/f"), 1 << 40, SetId::Keep),
        Err(Errno::ENOSPC)
    );
    let r = fs.replace(&p("/f"), SetId::Keep).unwrap();
    assert_eq!(r.write_at(b"x", 1 << 39).err(), Some(Errno::ENOSPC));
    assert_eq!(r.write_at(b"x", 1 << 40).err(), Some(Errno::EFBIG));
    assert_eq!(r.write_at(b"x", u64::MAX).err(), Some(Errno::EINVAL));
    assert_eq!(fs.used(), 0);
}

#[test]
fn xattr_rules() {
    let fs = rootfs();
    put(&fs, "/f", b"");
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.mknod(&p("/fifo"), IFIFO | 0o644, 0, Devices::Refuse)
        .unwrap();
    let f = p("/f");
    let any = XattrFlag::Any;
    fs.setxattr(&f, b"user.b", b"2", any).unwrap();
    fs.setxattr(&f, b"user.a", b"1", any).unwrap();
    fs.setxattr(&f, b"trusted.t", b"", any).unwrap();
    fs.setxattr(&f, b"security.s", b"sec", any).unwrap();
    assert_eq!(
        fs.listxattr(&f, 100).unwrap(),
        [&b"security.s"[..], b"trusted.t", b"user.a", b"user.b"]
    );
    // "security.s\0trusted.t\0user.a\0user.b\0" is 35 bytes.
    assert_eq!(fs.listxattr(&f, 35).unwrap().len(), 4);
    assert_eq!(fs.listxattr(&f, 34), Err(Errno::E2BIG));
    assert_eq!(fs.listxattr(&p("/d"), 0), Ok(vec![]));
    assert_eq!(fs.getxattr(&f, b"user.a", 1).unwrap(), b"1");
    assert_eq!(fs.getxattr(&f, b"user.a", 0), Err(Errno::E2BIG));
    assert_eq!(fs.getxattr(&f, b"trusted.t", 0).unwrap(), b"");
    assert_eq!(fs.getxattr(&f, b"user.zz", 10), Err(Errno::ENODATA));
    assert_eq!(
        fs.setxattr(&f, b"user.a", b"x", XattrFlag::Create),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fs.setxattr(&f, b"user.c", b"x", XattrFlag::Replace),
        Err(Errno::ENODATA)
    );
    fs.setxattr(&f, b"user.a", b"11", XattrFlag::Replace)
        .unwrap();
    fs.setxattr(&f, b"user.c", b"3", XattrFlag::Create).unwrap();
    assert_eq!(fs.getxattr(&f, b"user.a", 10).unwrap(), b"11");
    // Names.
    assert_eq!(
        fs.setxattr(&f, b"foo.bar", b"", any),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(fs.getxattr(&f, b"foo.bar", 10), Err(Errno::EOPNOTSUPP));
    assert_eq!(fs.removexattr(&f, b"foo.bar"), Err(Errno::EOPNOTSUPP));
    assert_eq!(fs.setxattr(&f, b"user.", b"", any), Err(Errno::EINVAL));
    assert_eq!(fs.getxattr(&f, b"trusted.", 10), Err(Errno::EINVAL));
    assert_eq!(fs.setxattr(&f, b"", b"", any), Err(Errno::ERANGE));
    assert_eq!(fs.getxattr(&f, b"", 10), Err(Errno::ERANGE));
    let long = [b"user.".as_slice(), &[b'n'; 251]].concat();
    assert_eq!(fs.setxattr(&f, &long, b"", any), Err(Errno::ERANGE));
    fs.setxattr(&f, &long[..255], b"", any).unwrap();
    assert_eq!(fs.setxattr(&f, b"user.a\0b", b"", any), Err(Errno::EINVAL));
    // An empty ACL value removes the (absent) ACL.
    fs.setxattr(&f, b"system.posix_acl_access", b"", any)
        .unwrap();
    assert_eq!(
        fs.setxattr(&f, b"system.posix_acl_access", b"\x01\0\0\0", any),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fs.setxattr(&f, b"system.posix_acl_access", b"\x02\0\0\0\x01", any),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fs.getxattr(&f, b"system.posix_acl_access", 10),
        Err(Errno::ENODATA)
    );
    assert_eq!(fs.getxattr(&f, b"system.foo", 10), Err(Errno::EOPNOTSUPP));
    fs.removexattr(&f, b"system.posix_acl_access").unwrap();
    fs.removexattr(&f, b"system.posix_acl_default").unwrap();
    assert_eq!(fs.removexattr(&f, b"system.foo"), Err(Errno::EOPNOTSUPP));
    // Values.
    let big = vec![7u8; MAX_XATTR_VALUE + 1];
    assert_eq!(fs.setxattr(&f, b"user.big", &big, any), Err(Errno::E2BIG));
    fs.setxattr(&f, b"user.big", &big[1..], any).unwrap();
    assert_eq!(
        fs.getxattr(&f, b"user.big", MAX_XATTR_VALUE).unwrap().len(),
        MAX_XATTR_VALUE
    );
    // user.* only on regular files and directories.
    fs.setxattr(&p("/d"), b"user.x", b"1", any).unwrap();
    assert_eq!(
        fs.setxattr(&p("/fifo"), b"user.x", b"1", any),
        Err(Errno::EPERM)
    );
    assert_eq!(fs.getxattr(&p("/fifo"), b"user.x", 10), Err(Errno::ENODATA));
    assert_eq!(fs.removexattr(&p("/fifo"), b"user.x"), Err(Errno::EPERM));
    fs.setxattr(&p("/fifo"), b"trusted.x", b"1", any).unwrap();
    assert_eq!(
        fs.listxattr(&p("/fifo"), 100).unwrap(),
        [b"trusted.x".to_vec()]
    );
    // Removal.
    fs.removexattr(&f, b"user.b").unwrap();
    assert_eq!(fs.removexattr(&f, b"user.b"), Err(Errno::ENODATA));
    assert_eq!(fs.getxattr(&f, b"user.b", 10), Err(Errno::ENODATA));
    assert_eq!(fs.getxattr(&p("/nope"), b"user.b", 10), Err(Errno::ENOENT));
    // Freed with the file.
    fs.unlink(&f).unwrap();
    fs.rmdir(&p("/d")).unwrap();
    fs.unlink(&p("/fifo")).unwrap();
    assert_eq!(fs.used(), 0);
}

#[test]
fn replacement() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    // New file: created, 0o644, visible only at commit.
    let r = fs.replace(&p("/d/new"), SetId::Keep).unwrap();
    r.write_at(b"world", 6).unwrap();
    r.write_at(b"hello ", 0).unwrap();
    assert_eq!(fs.getattr(&p("/d/new")), Err(Errno::ENOENT));
    assert_eq!(r.commit(), Ok(true));
    assert_eq!(read(&fs, "/d/new").unwrap(), b"hello world");
    assert_eq!(perms(&fs, "/d/new"), REPLACE_PERMS);
    assert_eq!(r.commit(), Err(Errno::EBADF));
    assert_eq!(r.write_at(b"x", 0).err(), Some(Errno::EBADF));
    // Existing file: new inode, same permission bits and owner; links and
    // open handles keep the old content.
    fs.chmod(&p("/d/new"), 0o6750, SetId::Keep).unwrap();
    fs.chown(&p("/d/new"), owner(Some(42), Some(43))).unwrap();
    fs.chmod(&p("/d/new"), 0o6750, SetId::Keep).unwrap();
    fs.link(&p("/d/old"), &p("/d/new")).unwrap();
    let handle = fs.open_read(&p("/d/new")).unwrap();
    let old_ino = stat(&fs, "/d/new").ino;
    let r = fs.replace(&p("/d/new"), SetId::Keep).unwrap();
    r.write_at(b"v2", 0).unwrap();
    assert_eq!(r.commit(), Ok(false));
    let st = stat(&fs, "/d/new");
    assert_ne!(st.ino, old_ino);
    assert_eq!(
        (st.mode, st.uid, st.gid, st.nlink),
        (mode::S_IFREG | 0o6750, 42, 43, 1)
    );
    assert_eq!(read(&fs, "/d/new").unwrap(), b"v2");
    assert_eq!(read(&fs, "/d/old").unwrap(), b"hello world");
    let mut buf = [0; 5];
    assert_eq!(handle.read_at(&mut buf, 0).unwrap(), 5);
    // Dropping without commit discards.
    let r = fs.replace(&p("/d/gone"), SetId::Keep).unwrap();
    r.write_at(b"data", 0).unwrap();
    drop(r);
    assert_eq!(fs.getattr(&p("/d/gone")), Err(Errno::ENOENT));
    // Over a symlink or a FIFO: replaced by a 0o644 file.
    fs.symlink(&p("/d/l"), b"new").unwrap();
    let r = fs.replace(&p("/d/l"), SetId::Keep).unwrap();
    assert_eq!(r.commit(), Ok(false));
    assert_eq!(stat(&fs, "/d/l").mode, mode::S_IFREG | REPLACE_PERMS);
    assert_eq!(read(&fs, "/d/new").unwrap(), b"v2");
    // Directories refused at start and at commit.
    assert_eq!(fs.replace(&p("/d"), SetId::Keep).err(), Some(Errno::EISDIR));
    let r = fs.replace(&p("/d/later"), SetId::Keep).unwrap();
    fs.mkdir(&p("/d/later"), 0o755).unwrap();
    assert_eq!(r.commit(), Err(Errno::EISDIR));
    // Errors of the parent.
    assert_eq!(
        fs.replace(&p("/nope/x"), SetId::Keep).err(),
        Some(Errno::ENOENT)
    );
    assert_eq!(
        fs.replace(&p("/d/new/x"), SetId::Keep).err(),
        Some(Errno::ENOTDIR)
    );
    // The directory is held, not its path: it follows a rename, and a
    // removed directory gets nothing.
    let r = fs.replace(&p("/d/later/x"), SetId::Keep).unwrap();
    fs.rename(&p("/d/later"), &p("/moved")).unwrap();
    assert_eq!(r.commit(), Ok(true));
    assert!(stat(&fs, "/moved/x").is_file());
    let r = fs.replace(&p("/moved/y"), SetId::Keep).unwrap();
    fs.unlink(&p("/moved/x")).unwrap();
    fs.rmdir(&p("/moved")).unwrap();
    assert_eq!(r.commit(), Err(Errno::ENOENT));
}

#[test]
fn times() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o755).unwrap();
    fs.utimens(&p("/d"), SetTime::secs(1), SetTime::secs(2))
        .unwrap();
    put(&fs, "/d/f", b"x");
    let d = stat(&fs, "/d");
    assert!(
        d.mtime > 2 && d.ctime > 2 && d.atime == 1,
        "entries changed: {d:?}"
    );
    fs.utimens(&p("/d/f"), SetTime::secs(-5), SetTime::secs(7))
        .unwrap();
    let f = stat(&fs, "/d/f");
    assert_eq!((f.atime, f.mtime), (-5, 7));
    assert!(f.ctime > 7);
    fs.utimens(&p("/d/f"), SetTime::secs(1), SetTime::secs(1))
        .unwrap();
    fs.chmod(&p("/d/f"), 0o600, SetId::Keep).unwrap();
    assert_eq!(stat(&fs, "/d/f").mtime, 1, "chmod changes only ctime");
    fs.open_write(&p("/d/f"), SetId::Keep)
        .unwrap()
        .write_at(b"y", 0)
        .unwrap();
    assert!(stat(&fs, "/d/f").mtime > 1);
    assert_eq!(
        fs.utimens(&p("/nope"), SetTime::secs(1), SetTime::secs(1)),
        Err(Errno::ENOENT)
    );
}

#[test]
fn root_permissions() {
    let fs = rootfs();
    put(&fs, "/f", b"x");
    fs.chmod(&p("/f"), 0, SetId::Keep).unwrap();
    fs.access(&p("/f"), 6).unwrap();
    assert_eq!(fs.access(&p("/f"), 1), Err(Errno::EACCES));
    assert_eq!(fs.access(&p("/f"), 8), Err(Errno::EINVAL));
    assert_eq!(fs.access(&p("/nope"), 8), Err(Errno::EINVAL));
    assert_eq!(fs.access(&p("/nope"), 0), Err(Errno::ENOENT));
    fs.open(&p("/f"), RDWR).unwrap();
    assert_eq!(read(&fs, "/f").unwrap(), b"x");
    fs.chmod(&p("/f"), 0o001, SetId::Keep).unwrap();
    fs.access(&p("/f"), 7).unwrap();
    fs.mkdir(&p("/d"), 0).unwrap();
    fs.access(&p("/d"), 7).unwrap();
    put(&fs, "/d/g", b"");
    // chown by root clears set-ID bits of non-directories.
    fs.chmod(&p("/f"), 0o6755, SetId::Keep).unwrap();
    fs.chown(&p("/f"), owner(None, None)).unwrap();
    assert_eq!(perms(&fs, "/f"), 0o755);
    fs.chmod(&p("/f"), 0o6745, SetId::Keep).unwrap();
    fs.chown(&p("/f"), owner(Some(0), None)).unwrap();
    assert_eq!(
        perms(&fs, "/f"),
        0o2745,
        "set-group-ID without group x stays"
    );
    fs.chmod(&p("/d"), 0o3755, SetId::Keep).unwrap();
    fs.chown(&p("/d"), owner(Some(9), Some(9))).unwrap();
    assert_eq!(stat(&fs, "/d").mode & 0o7777, 0o3755);
    fs.chown(&p("/d"), owner(Some(u32::MAX), Some(u32::MAX)))
        .unwrap();
    assert_eq!((stat(&fs, "/d").uid, stat(&fs, "/d").gid), (9, 9));
    // Files created in a set-group-ID directory get its group.
    put(&fs, "/d/h", b"");
    fs.mkdir(&p("/d/sub"), 0o755).unwrap();
    assert_eq!((stat(&fs, "/d/h").gid, stat(&fs, "/d/h").uid), (9, 0));
    assert_eq!(stat(&fs, "/d/sub").gid, 9);
}

/// The request's identity counts with its supplementary groups: its
/// owner may give a file to any group it is in, and a directory made
/// under a set-group-ID one inherits the bit.
#[test]
fn supplementary_groups_and_inherited_setgid() {
    let fs = rootfs();
    fs.mkdir(&p("/d"), 0o2777).unwrap();
    fs.chown(&p("/d"), owner(Some(0), Some(50))).unwrap();
    let id = Identity::new(1001, 1001, [1000, 1001]);
    crate::identity::acting_as(Some(&id), || {
        fs.create(&p("/d/f"), 0o644, SetId::Keep).unwrap();
        assert_eq!(stat(&fs, "/d/f").gid, 50);
        fs.chown(&p("/d/f"), owner(None, Some(1000))).unwrap();
        assert_eq!(stat(&fs, "/d/f").gid, 1000);
        assert_eq!(
            fs.chown(&p("/d/f"), owner(None, Some(1002))),
            Err(Errno::EPERM)
        );
        fs.mkdir(&p("/d/sub"), 0o755).unwrap();
        assert_eq!(perms(&fs, "/d/sub"), 0o2755);
        assert_eq!(stat(&fs, "/d/sub").gid, 50);
        // An access ACL that is a mode: the owner's call sets the mode
        // (not in group 50: no set-group-ID), nothing is stored.
        let acl_0640 = [
            2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0, 0,
            0, 255, 255, 255, 255,
        ];
        fs.chmod(&p("/d/sub"), 0o2755, SetId::Keep).unwrap();
        fs.setxattr(
            &p("/d/sub"),
            b"system.posix_acl_access",
            &acl_0640,
            XattrFlag::Any,
        )
        .unwrap();
        assert_eq!(perms(&fs, "/d/sub"), 0o640);
        assert_eq!(
            fs.getxattr(&p("/d/sub"), b"system.posix_acl_access", 100),
            Err(Errno::ENODATA)
        );
        assert_eq!(
            fs.setxattr(
                &p("/d"),
                b"system.posix_acl_access",
                &acl_0640,
                XattrFlag::Any
            ),
            Err(Errno::EPERM)
        );
    });
}

#[test]
fn unprivileged_permissions() {
    let base = rootfs();
    let user = base.with_identity(1000, 1000);
    base.mkdir(&p("/u"), 0o755).unwrap();
    base.chown(&p("/u"), owner(Some(1000), Some(1000))).unwrap();
    put(&base, "/other", b"root's");
    base.mkdir(&p("/priv"), 0o700).unwrap();
    put(&base, "/priv/f", b"");
    base.mkdir(&p("/sticky"), 0o1777).unwrap();
    put(&base, "/sticky/rootfile", b"");
    base.chmod(&p("/sticky/rootfile"), 0o666, SetId::Keep)
        .unwrap();

    // Search permission on every directory traversed.
    assert_eq!(user.getattr(&p("/priv/f")), Err(Errno::EACCES));
    assert_eq!(user.getattr(&p("/priv/nope")), Err(Errno::EACCES));
    assert_eq!(user.getattr(&p("/priv/nope/x")), Err(Errno::EACCES));
    assert!(user.getattr(&p("/priv")).is_ok());
    assert_eq!(
        user.readdir(&p("/priv"), false, &mut |_, _| Ok(())),
        Err(Errno::EACCES)
    );
    // Write permission on the parent to create or remove.
    assert_eq!(
        user.create(&p("/x"), 0o644, SetId::Keep),
        Err(Errno::EACCES)
    );
    assert_eq!(user.mkdir(&p("/x"), 0o755), Err(Errno::EACCES));
    assert_eq!(
        user.mkdir(&p("/u"), 0o755),
        Err(Errno::EEXIST),
        "EEXIST wins"
    );
    assert_eq!(
        user.mknod(&p("/x"), 0o644, 0, Devices::Refuse),
        Err(Errno::EACCES)
    );
    assert_eq!(user.symlink(&p("/x"), b"t"), Err(Errno::EACCES));
    assert_eq!(user.unlink(&p("/other")), Err(Errno::EACCES));
    assert_eq!(user.rmdir(&p("/priv")), Err(Errno::EACCES));
    assert_eq!(user.rename(&p("/other"), &p("/u/o")), Err(Errno::EACCES));
    assert_eq!(
        user.replace(&p("/other"), SetId::Keep).err(),
        Some(Errno::EACCES)
    );
    // Reading and writing someone else's file.
    assert_eq!(read(&user, "/other").unwrap(), b"root's");
    assert_eq!(
        user.open_write(&p("/other"), SetId::Keep).err(),
        Some(Errno::EACCES)
    );
    assert_eq!(user.open(&p("/other"), RDWR), Err(Errno::EACCES));
    assert_eq!(
        user.truncate(&p("/other"), 0, SetId::Keep),
        Err(Errno::EACCES)
    );
    assert_eq!(
        user.fallocate(&p("/other"), 0, 0, 1, SetId::Keep),
        Err(Errno::EACCES)
    );
    assert_eq!(user.access(&p("/other"), 2), Err(Errno::EACCES));
    assert_eq!(user.access(&p("/other"), 1), Err(Errno::EACCES));
    user.access(&p("/other"), 4).unwrap();
    // Owner-only operations.
    assert_eq!(
        user.chmod(&p("/other"), 0o777, SetId::Keep),
        Err(Errno::EPERM)
    );
    assert_eq!(
        user.utimens(&p("/other"), SetTime::secs(1), SetTime::secs(1)),
        Err(Errno::EPERM)
    );
    assert_eq!(
        user.chown(&p("/other"), owner(Some(1000), None)),
        Err(Errno::EPERM)
    );
    assert_eq!(
        user.chown(&p("/other"), owner(Some(0), None)),
        Err(Errno::EPERM)
    );
    user.chown(&p("/other"), owner(None, None)).unwrap();
    // Protected hardlinks.
    assert_eq!(user.link(&p("/u/l"), &p("/other")), Err(Errno::EPERM));
    user.link(&p("/u/l"), &p("/sticky/rootfile")).unwrap();

    // In a directory of one's own.
    user.mkdir(&p("/u/d"), 0o755).unwrap();
    user.create(&p("/u/d/f"), 0o644, SetId::Keep).unwrap();
    let st = stat(&user, "/u/d/f");
    assert_eq!((st.uid, st.gid), (1000, 1000));
    user.chown(&p("/u/d/f"), owner(Some(1000), Some(1000)))
        .unwrap();
    assert_eq!(
        user.chown(&p("/u/d/f"), owner(None, Some(0))),
        Err(Errno::EPERM)
    );
    assert_eq!(
        user.chown(&p("/u/d/f"), owner(Some(0), None)),
        Err(Errno::EPERM)
    );
    user.utimens(&p("/u/d/f"), SetTime::secs(3), SetTime::secs(4))
        .unwrap();
    user.chmod(&p("/u/d"), 0o555, SetId::Keep).unwrap();
    assert_eq!(
        user.create(&p("/u/d/g"), 0o644, SetId::Keep),
        Err(Errno::EACCES)
    );
    assert_eq!(user.unlink(&p("/u/d/f")), Err(Errno::EACCES));
    user.open_write(&p("/u/d/f"), SetId::Keep)
        .unwrap()
        .write_at(b"ok", 0)
        .unwrap();
    user.chmod(&p("/u/d"), 0o300, SetId::Keep).unwrap();
    assert_eq!(names(&user, "/u/d"), Err(Errno::EACCES));
    assert!(user.getattr(&p("/u/d/f")).is_ok());
    user.chmod(&p("/u/d"), 0o600, SetId::Keep).unwrap();
    assert_eq!(user.getattr(&p("/u/d/f")), Err(Errno::EACCES));
    assert_eq!(names(&user, "/u/d").unwrap(), ["f"]);
    assert_eq!(
        user.readdir(&p("/u/d"), true, &mut |_, _| Ok(())),
        Err(Errno::EACCES)
    );
    user.chmod(&p("/u/d"), 0o755, SetId::Keep).unwrap();
    user.chmod(&p("/u/d/f"), 0, SetId::Keep).unwrap();
    assert_eq!(user.open_read(&p("/u/d/f")).err(), Some(Errno::EACCES));
    assert_eq!(user.open(&p("/u/d/f"), RDONLY), Err(Errno::EACCES));
    assert_eq!(user.fsync(&p("/u/d/f"), false), Err(Errno::EACCES));
    assert_eq!(
        user.create(&p("/u/d/f"), 0o644, SetId::Keep),
        Err(Errno::EACCES)
    );
    assert_eq!(user.access(&p("/u/d/f"), 4), Err(Errno::EACCES));
    user.access(&p("/u/d/f"), 0).unwrap();
    assert_eq!(
        user.getxattr(&p("/u/d/f"), b"user.a", 10),
        Err(Errno::EACCES)
    );
    assert_eq!(
        user.setxattr(&p("/u/d/f"), b"user.a", b"", XattrFlag::Any),
        Err(Errno::EACCES)
    );
    assert_eq!(user.listxattr(&p("/u/d/f"), 10), Ok(vec![]));
    // Owner class first: no fallback to the group or other bits.
    user.chmod(&p("/u/d/f"), 0o077, SetId::Keep).unwrap();
    assert_eq!(user.access(&p("/u/d/f"), 4), Err(Errno::EACCES));
    user.chmod(&p("/u/d/f"), 0o644, SetId::Keep).unwrap();
    // Moving a directory to another parent needs write access to it.
    user.mkdir(&p("/u/ro"), 0o555).unwrap();
    assert_eq!(user.rename(&p("/u/ro"), &p("/u/d/ro")), Err(Errno::EACCES));
    user.rename(&p("/u/ro"), &p("/u/ro2")).unwrap();
    // Writes and chmod by non-root clear set-ID bits.
    user.chmod(&p("/u/d/f"), 0o6755, SetId::Keep).unwrap();
    assert_eq!(perms(&user, "/u/d/f"), 0o6755);
    user.open_write(&p("/u/d/f"), SetId::Keep)
        .unwrap()
        .write_at(b"w", 0)
        .unwrap();
    assert_eq!(perms(&user, "/u/d/f"), 0o755);
    base.chown(&p("/u/d/f"), owner(None, Some(50))).unwrap();
    user.chmod(&p("/u/d/f"), 0o2755, SetId::Keep).unwrap();
    assert_eq!(perms(&user, "/u/d/f"), 0o755, "not in group 50");
    // Sticky directory.
    user.create(&p("/sticky/mine"), 0o644, SetId::Keep).unwrap();
    assert_eq!(user.unlink(&p("/sticky/rootfile")), Err(Errno::EPERM));
    assert_eq!(
        user.rename(&p("/sticky/rootfile"), &p("/sticky/z")),
        Err(Errno::EPERM)
    );
    assert_eq!(
        user.rename(&p("/sticky/mine"), &p("/sticky/rootfile")),
        Err(Errno::EPERM)
    );
    let r = user.replace(&p("/sticky/rootfile"), SetId::Keep).unwrap();
    assert_eq!(r.commit(), Err(Errno::EPERM));
    user.open_write(&p("/sticky/rootfile"), SetId::Keep)
        .unwrap()
        .write_at(b"mine now", 0)
        .unwrap();
    user.unlink(&p("/sticky/mine")).unwrap();
    // Xattr namespaces.
    let f = p("/u/d/f");
    base.setxattr(&f, b"trusted.t", b"1", XattrFlag::Any)
        .unwrap();
    user.setxattr(&f, b"user.v", b"2", XattrFlag::Any).unwrap();
    assert_eq!(user.listxattr(&f, 100).unwrap(), [b"user.v".to_vec()]);
    assert_eq!(base.listxattr(&f, 100).unwrap().len(), 2);
    assert_eq!(user.getxattr(&f, b"trusted.t", 10), Err(Errno::ENODATA));
    assert_eq!(
        user.setxattr(&f, b"trusted.u", b"", XattrFlag::Any),
        Err(Errno::EPERM)
    );
    assert_eq!(user.removexattr(&f, b"trusted.t"), Err(Errno::EPERM));
    assert_eq!(
        user.setxattr(&f, b"security.x", b"", XattrFlag::Any),
        Err(Errno::EPERM)
    );
    assert_eq!(user.getxattr(&f, b"security.x", 10), Err(Errno::ENODATA));
    assert_eq!(
        user.setxattr(&p("/other"), b"user.a", b"", XattrFlag::Any),
        Err(Errno::EACCES)
    );
    assert_eq!(
        user.getxattr(&p("/other"), b"user.a", 10),
        Err(Errno::ENODATA)
    );
    user.setxattr(&p("/sticky/rootfile"), b"user.a", b"", XattrFlag::Any)
        .unwrap();
    assert_eq!(
        user.setxattr(&p("/sticky"), b"user.a", b"", XattrFlag::Any),
        Err(Errno::EPERM)
    );
    // Replacement as non-root: permissions kept, owner becomes the caller.
    let r = user.replace(&p("/u/d/f"), SetId::Keep).unwrap();
    assert_eq!(r.commit(), Ok(false));
    let st = stat(&user, "/u/d/f");
    assert_eq!((st.mode & 0o7777, st.uid, st.gid), (0o755, 1000, 1000));
    // Root bypasses everything.
    base.chmod(&p("/u/d"), 0, SetId::Keep).unwrap();
    assert!(base.getattr(&p("/u/d/f")).is_ok());
    assert_eq!(user.getattr(&p("/u/d/f")), Err(Errno::EACCES));
}

#[test]
fn poisoned_lock_is_recovered() {
    let fs = rootfs();
    put(&fs, "/f", b"x");
    let other = fs.clone();
    let r = std::thread::spawn(move || {
        let _guard = other.shared.state.lock();
        panic!("poisoning the lock on purpose");
    })
    .join();
    assert!(r.is_err());
    assert!(fs.shared.state.is_poisoned());
    assert_eq!(read(&fs, "/f").unwrap(), b"x");
    put(&fs, "/g", b"y");
    assert!(format!("{fs:?}").contains("inodes: 3"));
}
