//! The MemFs-vs-LocalFs differential test: the same operations on a
//! [`MemFs`] and on a [`LocalFs`] must give the same results and leave the
//! same tree, as root and as an unprivileged user.

use super::tests::{p, rootfs, IFIFO, IFSOCK, RDONLY, RDWR, WRONLY};
use super::*;
use crate::backend::{mode, Backend, SetId, SetTime, Stat, XattrFlag};
use crate::LocalFs;
use Op::*;

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Getattr(&'static str),
    Times(&'static str),
    Readdir(&'static str, bool),
    Mknod(&'static str, u32),
    Open(&'static str, i32),
    Chmod(&'static str, u32),
    Chown(&'static str, Option<u32>, Option<u32>),
    Truncate(&'static str, u64),
    Access(&'static str, u32),
    Symlink(&'static str, &'static [u8]),
    Readlink(&'static str),
    Rmdir(&'static str),
    Mkdir(&'static str, u32),
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str),
    Fallocate(&'static str, i32, u64, u64),
    Statfs(&'static str),
    ListX(&'static str, usize),
    GetX(&'static str, &'static [u8], usize),
    SetX(&'static str, &'static [u8], &'static [u8], XattrFlag),
    SetXSized(&'static str, &'static [u8], usize),
    RmX(&'static str, &'static [u8]),
    Utimens(&'static str, i64, i64),
    Create(&'static str, u32),
    Unlink(&'static str),
    Fsync(&'static str),
    Write(&'static str, u64, &'static [u8]),
    Read(&'static str, u64, usize),
    ReadOnWriteHandle(&'static str),
    Put(&'static str, &'static [u8]),
    PutAbandoned(&'static str, &'static [u8]),
    PutThenMkdir(&'static str),
    ReadAfterUnlink(&'static str),
}

impl Op {
    fn is_xattr(&self) -> bool {
        matches!(
            self,
            Op::ListX(..) | Op::GetX(..) | Op::SetX(..) | Op::SetXSized(..) | Op::RmX(..)
        )
    }
}

fn kind(st: &Stat) -> char {
    match st.mode & mode::S_IFMT {
        mode::S_IFREG => 'f',
        mode::S_IFDIR => 'd',
        mode::S_IFLNK => 'l',
        mode::S_IFIFO => 'p',
        mode::S_IFSOCK => 's',
        _ => '?',
    }
}

/// What must match: type, permission bits, size (not for
/// directories), link count and owner.
fn describe(st: &Stat) -> String {
    let size = if st.is_dir() {
        "-".to_string()
    } else {
        st.size.to_string()
    };
    format!(
        "{} {:04o} size={} nlink={} owner={}:{}",
        kind(st),
        st.mode & mode::PERMS,
        size,
        st.nlink,
        st.uid,
        st.gid
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

fn read_all(h: &dyn FileHandle, offset: u64, len: usize) -> FsResult<String> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = h.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(text(&buf))
}

pub(super) fn run(fs: &dyn Backend, op: &Op) -> FsResult<String> {
    let ok = |r: FsResult<()>| r.map(|()| String::new());
    match *op {
        Op::Getattr(a) => fs.getattr(&p(a)).map(|s| describe(&s)),
        Op::Times(a) => fs
            .getattr(&p(a))
            .map(|s| format!("{} {}", s.atime, s.mtime)),
        Op::Readdir(a, attrs) => {
            let mut out = Vec::new();
            fs.readdir(&p(a), attrs, &mut |n, st| {
                out.push(match st {
                    Some(st) => format!("{}:{}", text(n), describe(st)),
                    None => text(n),
                });
                Ok(())
            })?;
            out.sort();
            Ok(out.join(", "))
        }
        Op::Mknod(a, m) => ok(fs.mknod(&p(a), m, 0, Devices::Refuse)),
        Op::Open(a, f) => ok(fs.open(&p(a), f)),
        Op::Chmod(a, m) => ok(fs.chmod(&p(a), m, SetId::Keep)),
        Op::Chown(a, uid, gid) => ok(fs.chown(&p(a), Owner { uid, gid })),
        Op::Truncate(a, s) => ok(fs.truncate(&p(a), s, SetId::Keep)),
        Op::Access(a, m) => ok(fs.access(&p(a), m)),
        Op::Symlink(a, t) => ok(fs.symlink(&p(a), t)),
        Op::Readlink(a) => fs.readlink(&p(a)).map(|t| text(&t)),
        Op::Rmdir(a) => ok(fs.rmdir(&p(a))),
        Op::Mkdir(a, m) => ok(fs.mkdir(&p(a), m)),
        Op::Link(a, b) => ok(fs.link(&p(a), &p(b))),
        Op::Rename(a, b) => ok(fs.rename(&p(a), &p(b))),
        Op::Fallocate(a, m, o, l) => ok(fs.fallocate(&p(a), m, o, l, SetId::Keep)),
        Op::Statfs(a) => fs.statfs(&p(a)).map(|s| format!("namemax={}", s.namemax)),
        Op::ListX(a, limit) => fs.listxattr(&p(a), limit).map(|mut names| {
            names.sort();
            names.iter().map(|n| text(n)).collect::<Vec<_>>().join(",")
        }),
        Op::GetX(a, n, limit) => fs.getxattr(&p(a), n, limit).map(|v| text(&v)),
        Op::SetX(a, n, v, f) => ok(fs.setxattr(&p(a), n, v, f)),
        Op::SetXSized(a, n, len) => ok(fs.setxattr(&p(a), n, &vec![b'v'; len], XattrFlag::Any)),
        Op::RmX(a, n) => ok(fs.removexattr(&p(a), n)),
        Op::Utimens(a, at, mt) => ok(fs.utimens(&p(a), SetTime::secs(at), SetTime::secs(mt))),
        Op::Create(a, m) => ok(fs.create(&p(a), m, SetId::Keep)),
        Op::Unlink(a) => ok(fs.unlink(&p(a))),
        Op::Fsync(a) => ok(fs.fsync(&p(a), false)),
        Op::Write(a, o, d) => {
            let h = fs.open_write(&p(a), SetId::Keep)?;
            h.write_at(d, o)?;
            Ok(format!("size at open {}", h.size()))
        }
        Op::Read(a, o, l) => {
            let h = fs.open_read(&p(a))?;
            Ok(format!("{} (size {})", read_all(&*h, o, l)?, h.size()))
        }
        Op::ReadOnWriteHandle(a) => {
            let h = fs.open_write(&p(a), SetId::Keep)?;
            read_all(&*h, 0, 10)
        }
        Op::Put(a, d) => {
            let r = fs.replace(&p(a), SetId::Keep)?;
            r.write_at(d, 0)?;
            r.commit().map(|created| format!("created={created}"))
        }
        Op::PutAbandoned(a, d) => {
            let r = fs.replace(&p(a), SetId::Keep)?;
            r.write_at(d, 0)?;
            Ok(String::new())
        }
        Op::PutThenMkdir(a) => {
            let r = fs.replace(&p(a), SetId::Keep)?;
            r.write_at(b"data", 0)?;
            fs.mkdir(&p(a), 0o755)?;
            r.commit().map(|created| format!("created={created}"))
        }
        Op::ReadAfterUnlink(a) => {
            let h = fs.open_read(&p(a))?;
            fs.unlink(&p(a))?;
            read_all(&*h, 0, 100)
        }
    }
}

/// Runs `ops` on both, returning a line per disagreement.
pub(super) fn compare(
    ops: &[Op],
    mem: &dyn Backend,
    local: &dyn Backend,
    xattrs: bool,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if !xattrs && op.is_xattr() {
            continue;
        }
        let m = run(mem, op);
        let l = run(local, op);
        if m != l {
            diffs.push(format!("#{i} {op:?}: MemFs {m:?}, LocalFs {l:?}"));
        }
    }
    diffs
}

/// Every object below the root (and the root itself), with its
/// attributes, content, target and xattrs.
pub(super) fn tree(fs: &dyn Backend, xattrs: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let path = if dir.is_empty() {
            "/".to_string()
        } else {
            dir.clone()
        };
        let st = fs
            .getattr(&p(&path))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        out.insert(path.clone(), describe_object(fs, &path, &st, xattrs));
        let mut entries = Vec::new();
        fs.readdir(&p(&path), true, &mut |n, st| {
            entries.push((String::from_utf8_lossy(n).into_owned(), st.copied()));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("readdir {path}: {e}"));
        for (name, st) in entries {
            let child = format!("{dir}/{name}");
            let st = st.unwrap_or_else(|| panic!("{child}: no attributes"));
            if st.is_dir() {
                todo.push(child);
            } else {
                out.insert(child.clone(), describe_object(fs, &child, &st, xattrs));
            }
        }
    }
    out
}

fn describe_object(fs: &dyn Backend, path: &str, st: &Stat, xattrs: bool) -> String {
    let mut d = describe(st);
    if st.is_file() {
        let h = fs
            .open_read(&p(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        d += &format!(" content={:?}", read_all(&*h, 0, st.size as usize));
    }
    if st.is_symlink() {
        d += &format!(" -> {:?}", fs.readlink(&p(path)).map(|t| text(&t)));
    }
    if xattrs && !st.is_symlink() {
        let mut names = fs
            .listxattr(&p(path), 1 << 16)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        names.sort();
        for n in names {
            let v = fs.getxattr(&p(path), &n, 1 << 16);
            d += &format!(" {}={:?}", text(&n), v.map(|v| text(&v)));
        }
    }
    d
}

/// Whether the disk under the temporary directory takes `user.`
/// xattrs (checked on LocalFs's root, then cleaned up).
pub(super) fn xattrs_supported(local: &LocalFs) -> bool {
    let root = FsPath::root();
    match local.setxattr(&root, b"user.spockfs-probe", b"1", XattrFlag::Any) {
        Ok(()) => {
            let _ = local.removexattr(&root, b"user.spockfs-probe");
            true
        }
        Err(e) => {
            eprintln!("note: LocalFs setxattr fails with {e}: xattrs not compared");
            false
        }
    }
}

pub(super) fn assert_same_trees(
    mem: &dyn Backend,
    local: &dyn Backend,
    xattrs: bool,
    diffs: &mut Vec<String>,
) {
    let (m, l) = (tree(mem, xattrs), tree(local, xattrs));
    for path in m
        .keys()
        .chain(l.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (a, b) = (m.get(path), l.get(path));
        if a != b {
            diffs.push(format!("tree {path}: MemFs {a:?}, LocalFs {b:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "MemFs and LocalFs disagree:\n{}",
        diffs.join("\n")
    );
}

/// `user::rw-`, `group::r--`, `other::---` (mode 0640).
const ACL_0640: &[u8] = &[
    2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0, 0, 0, 255,
    255, 255, 255,
];
/// `user::rwx`, `group::r-x`, `other::---` (mode 0750).
const ACL_0750: &[u8] = &[
    2, 0, 0, 0, 1, 0, 7, 0, 255, 255, 255, 255, 4, 0, 5, 0, 255, 255, 255, 255, 32, 0, 0, 0, 255,
    255, 255, 255,
];
/// The group entry before the owner's: not valid.
const ACL_UNORDERED: &[u8] = &[
    2, 0, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 1, 0, 6, 0, 255, 255, 255, 255, 32, 0, 0, 0, 255,
    255, 255, 255,
];
/// Not a whole number of entries.
const ACL_SHORT: &[u8] = &[2, 0, 0, 0, 1, 0, 6, 0, 255, 255];
/// An unknown version.
const ACL_V1: &[u8] = &[
    1, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0, 0, 0, 255,
    255, 255, 255,
];

const AS_ROOT: &[Op] = &[
    Chmod("/", 0o755),
    Getattr("/"),
    // Directories.
    Mkdir("/a", 0o755),
    Mkdir("/a/b", 0o700),
    Mkdir("/a/b/c", 0o750),
    Mkdir("/a/sgid", 0o2775),
    // Inherits the set-group-ID bit whatever the mode.
    Mkdir("/a/sgid/sub", 0o755),
    Getattr("/a/sgid/sub"),
    Mkdir("/a", 0o755),
    Mkdir("/", 0o755),
    Mkdir("/nope/x", 0o755),
    Getattr("/a"),
    Getattr("/a/b"),
    Readdir("/a", true),
    Readdir("/a", false),
    // Regular files.
    Create("/f", 0o640),
    Write("/f", 0, b"hello world"),
    Create("/f", 0o600),
    Getattr("/f"),
    Write("/f", 0, b"hello world"),
    Read("/f", 0, 100),
    Read("/f", 6, 3),
    Read("/f", 100, 5),
    Write("/f", 20, b"gap"),
    Read("/f", 0, 100),
    ReadOnWriteHandle("/f"),
    Truncate("/f", 5),
    Read("/f", 0, 100),
    Truncate("/f", 9),
    Read("/f", 0, 100),
    Truncate("/f", u64::MAX),
    Create("/a", 0o644),
    Create("/", 0o644),
    Create("/nope/f", 0o644),
    Create("/exact", 0o4751),
    Getattr("/exact"),
    Truncate("/a", 0),
    Truncate("/missing", 0),
    Truncate("/", 0),
    // Special files.
    Mknod("/fifo", IFIFO | 0o644),
    Mknod("/sock", IFSOCK | 0o600),
    Mknod("/reg", 0o600),
    Mknod("/reg2", mode::S_IFREG | 0o4755),
    Mknod("/chr", mode::S_IFCHR | 0o600),
    Mknod("/dir", mode::S_IFDIR | 0o755),
    Mknod("/bad", 0o070000 | 0o644),
    Mknod("/fifo", IFIFO | 0o644),
    Mknod("/", IFIFO | 0o644),
    Mknod("/nope/x", mode::S_IFCHR),
    Getattr("/fifo"),
    Getattr("/sock"),
    Getattr("/reg2"),
    Open("/fifo", RDONLY),
    Open("/fifo", WRONLY),
    Open("/fifo", RDWR),
    Open("/sock", RDONLY),
    Open("/a", WRONLY),
    Open("/a", RDONLY),
    Open("/a", 3),
    Open("/f", RDWR | libc::O_TRUNC),
    Read("/fifo", 0, 1),
    Write("/fifo", 0, b"x"),
    Read("/sock", 0, 1),
    Read("/a", 0, 1),
    Write("/a", 0, b"x"),
    Truncate("/fifo", 0),
    Truncate("/sock", 0),
    Fsync("/fifo"),
    Fsync("/sock"),
    Fsync("/a"),
    Fsync("/"),
    Fsync("/f"),
    Create("/fifo", 0o644),
    Create("/sock", 0o644),
    Readdir("/fifo", false),
    Readdir("/f", false),
    // Symlinks.
    Symlink("/ln", b"f"),
    Symlink("/dangling", b"nowhere"),
    Symlink("/abs", b"/etc/passwd"),
    Symlink("/dirln", b"a"),
    Symlink("/ln", b"x"),
    Symlink("/", b"x"),
    Symlink("/empty", b""),
    Getattr("/ln"),
    Getattr("/abs"),
    Mknod("/dangling", IFIFO | 0o644),
    Mkdir("/dangling", 0o755),
    Create("/dangling", 0o644),
    Readlink("/ln"),
    Readlink("/abs"),
    Readlink("/f"),
    Readlink("/"),
    Readlink("/missing"),
    Getattr("/dirln/b"),
    Getattr("/ln/x"),
    Getattr("/f/x"),
    Mkdir("/dirln/z", 0o755),
    Create("/f/x", 0o644),
    Open("/ln", RDONLY),
    Read("/ln", 0, 1),
    Write("/ln", 0, b"x"),
    Truncate("/ln", 0),
    Fallocate("/ln", 0, 0, 1),
    Fsync("/ln"),
    Readdir("/dirln", false),
    Chmod("/ln", 0o600),
    Access("/ln", 7),
    Statfs("/ln"),
    Chown("/ln", Some(0), Some(0)),
    Utimens("/ln", 1000, 2000),
    Times("/ln"),
    Utimens("/", 5, 6),
    Times("/"),
    Utimens("/f", 7, 8),
    Times("/f"),
    // access.
    Access("/f", 1),
    Access("/f", 6),
    Access("/a", 1),
    Access("/f", 8),
    Access("/missing", 8),
    Access("/missing", 0),
    Access("/", 7),
    // Hard links.
    Link("/hl", "/f"),
    Getattr("/f"),
    Link("/hl", "/f"),
    Link("/x", "/a"),
    Link("/x", "/missing"),
    Link("/", "/f"),
    Link("/x", "/"),
    Link("/nope/x", "/f"),
    Link("/lnhl", "/dangling"),
    Readlink("/lnhl"),
    Getattr("/dangling"),
    Link("/a/b/hl2", "/f"),
    Link("/fifohl", "/fifo"),
    Getattr("/f"),
    // Renames.
    Rename("/f", "/g"),
    Getattr("/f"),
    Rename("/g", "/f"),
    Rename("/hl", "/f"),
    Getattr("/hl"),
    Rename("/f", "/f"),
    Rename("/a", "/a"),
    Rename("/missing", "/x"),
    Rename("/", "/x"),
    Rename("/f", "/"),
    Rename("/a", "/a/b/c/d"),
    Rename("/a", "/a/x"),
    Rename("/a/b", "/a"),
    Rename("/a/b/c", "/a"),
    Rename("/f", "/a"),
    Rename("/a", "/f"),
    Rename("/f", "/nope/x"),
    Rename("/nope/x", "/f"),
    Rename("/dirln/b", "/x"),
    Mkdir("/e", 0o755),
    Mkdir("/e2", 0o755),
    Rename("/e", "/a/b"),
    Rename("/e", "/e2"),
    Rename("/a/b/c", "/c2"),
    Getattr("/a/b"),
    Getattr("/"),
    Rename("/c2", "/a/sgid/c3"),
    Rename("/fifo", "/a/fifo2"),
    Rename("/dangling", "/a/dangling"),
    Rename("/reg", "/reg2"),
    Getattr("/reg2"),
    // Removal.
    Rmdir("/a"),
    Rmdir("/f"),
    Rmdir("/"),
    Rmdir("/missing"),
    Rmdir("/ln"),
    Rmdir("/e2"),
    Unlink("/a"),
    Unlink("/"),
    Unlink("/ln"),
    Unlink("/missing"),
    Unlink("/f/x"),
    ReadAfterUnlink("/hl"),
    Getattr("/f"),
    // fallocate.
    Create("/fa", 0o644),
    Write("/fa", 0, b"abcdefgh"),
    Fallocate("/fa", 0, 4, 2),
    Fallocate("/fa", 0, 6, 6),
    Read("/fa", 0, 100),
    Fallocate("/fa", 1, 0, 10000),
    Getattr("/fa"),
    Fallocate("/fa", 3, 2, 3),
    Read("/fa", 0, 100),
    Fallocate("/fa", 0x10, 10, 4),
    Read("/fa", 0, 100),
    Fallocate("/fa", 0x11, 0, 100),
    Read("/fa", 0, 100),
    Fallocate("/fa", 0, 0, 0),
    Fallocate("/fa", 2, 0, 1),
    Fallocate("/fa", 0, u64::MAX, 1),
    Fallocate("/a", 0, 0, 1),
    Fallocate("/a/fifo2", 0, 0, 1),
    Fallocate("/missing", 0, 0, 1),
    // Whole-file replacement.
    Put("/new", b"content"),
    Getattr("/new"),
    Chmod("/new", 0o640),
    Link("/newhl", "/new"),
    Put("/new", b"replaced"),
    Getattr("/new"),
    Read("/new", 0, 100),
    Read("/newhl", 0, 100),
    Put("/a", b"x"),
    Put("/", b"x"),
    Put("/missing/x", b"x"),
    Put("/f/x", b"x"),
    Put("/dirln/x", b"x"),
    Put("/abs", b"over a symlink"),
    Getattr("/abs"),
    Put("/sock", b"over a socket"),
    Getattr("/sock"),
    PutAbandoned("/abandoned", b"data"),
    PutThenMkdir("/later"),
    // Xattrs.
    SetX("/f", b"user.a", b"1", XattrFlag::Any),
    SetX("/f", b"user.a", b"2", XattrFlag::Create),
    SetX("/f", b"user.b", b"x", XattrFlag::Replace),
    SetX("/f", b"user.b", b"x", XattrFlag::Create),
    SetX("/f", b"user.b", b"y", XattrFlag::Replace),
    GetX("/f", b"user.a", 100),
    GetX("/f", b"user.a", 0),
    GetX("/f", b"user.zz", 100),
    ListX("/f", 100),
    ListX("/f", 14),
    ListX("/f", 13),
    SetX("/f", b"foo.bar", b"1", XattrFlag::Any),
    GetX("/f", b"foo.bar", 100),
    SetX("/f", b"user.", b"1", XattrFlag::Any),
    GetX("/f", b"user.", 100),
    GetX("/f", b"", 100),
    SetX("/f", b"", b"", XattrFlag::Any),
    SetXSized("/f", b"user.big", 65537),
    SetXSized("/f", b"user.medium", 1000),
    SetX("/ln2", b"user.a", b"1", XattrFlag::Any),
    SetX("/abs", b"user.a", b"1", XattrFlag::Any),
    GetX("/dirln", b"user.a", 100),
    ListX("/dirln", 100),
    RmX("/dirln", b"user.a"),
    SetX("/a/fifo2", b"user.a", b"1", XattrFlag::Any),
    GetX("/a/fifo2", b"user.a", 100),
    RmX("/a/fifo2", b"user.a"),
    SetX("/a/fifo2", b"trusted.a", b"1", XattrFlag::Any),
    ListX("/a/fifo2", 100),
    SetX("/a", b"user.d", b"dir", XattrFlag::Any),
    SetX("/", b"user.r", b"root", XattrFlag::Any),
    SetX("/f", b"trusted.t", b"t", XattrFlag::Any),
    SetX("/f", b"security.s", b"s", XattrFlag::Any),
    ListX("/f", 100),
    RmX("/f", b"user.b"),
    RmX("/f", b"user.b"),
    RmX("/f", b"foo.bar"),
    RmX("/f", b"user."),
    RmX("/missing", b"user.a"),
    GetX("/f", b"system.posix_acl_access", 100),
    GetX("/a", b"system.posix_acl_default", 100),
    RmX("/f", b"system.posix_acl_access"),
    RmX("/f", b"system.posix_acl_default"),
    RmX("/a", b"system.posix_acl_default"),
    GetX("/f", b"system.foo", 100),
    RmX("/f", b"system.foo"),
    GetX("/f", b"security.", 100),
    SetX("/f", b"trusted.", b"", XattrFlag::Any),
    // POSIX ACLs that a mode stands for set the mode, and are not kept.
    SetX("/f", b"system.posix_acl_access", ACL_0640, XattrFlag::Any),
    Getattr("/f"),
    GetX("/f", b"system.posix_acl_access", 100),
    SetX("/f", b"system.posix_acl_access", ACL_0750, XattrFlag::Any),
    Getattr("/f"),
    SetX("/f", b"system.posix_acl_access", b"", XattrFlag::Any),
    SetX(
        "/f",
        b"system.posix_acl_access",
        ACL_UNORDERED,
        XattrFlag::Any,
    ),
    SetX("/f", b"system.posix_acl_access", ACL_V1, XattrFlag::Any),
    SetX("/f", b"system.posix_acl_access", ACL_SHORT, XattrFlag::Any),
    SetX("/f", b"system.posix_acl_default", b"", XattrFlag::Any),
    SetX("/f", b"system.posix_acl_default", ACL_0640, XattrFlag::Any),
    SetX(
        "/a/fifo2",
        b"system.posix_acl_access",
        ACL_0640,
        XattrFlag::Any,
    ),
    Getattr("/a/fifo2"),
    SetX(
        "/a/sgid",
        b"system.posix_acl_access",
        ACL_0750,
        XattrFlag::Any,
    ),
    Getattr("/a/sgid"),
    Chmod("/a/sgid", 0o2775),
    // Replacing a file owned by someone else keeps its owner (root).
    Create("/owned", 0o640),
    Chown("/owned", Some(123), Some(456)),
    Put("/owned", b"new"),
    Getattr("/owned"),
    // Permission bits for root.
    Chmod("/exact", 0),
    Access("/exact", 4),
    Access("/exact", 2),
    Access("/exact", 1),
    Open("/exact", RDWR),
    Read("/exact", 0, 10),
    Chmod("/exact", 0o010),
    Access("/exact", 1),
    Chmod("/a/b", 0),
    Access("/a/b", 7),
    Readdir("/a/b", true),
    Chmod("/exact", 0o6755),
    Chown("/exact", Some(0), None),
    Getattr("/exact"),
    Chmod("/exact", 0o6745),
    Chown("/exact", None, None),
    Getattr("/exact"),
    Chmod("/a", 0o3755),
    Chown("/a", Some(0), Some(0)),
    Getattr("/a"),
    Chown("/exact", Some(123), Some(456)),
    Getattr("/exact"),
    // Not Chown(Some(u32::MAX)): rustix's Uid::from_raw debug-asserts
    // against -1, so LocalFs panics in debug builds (the engine maps -1
    // to None before calling a backend).
    Chmod("/missing", 0o644),
    Statfs("/"),
    Statfs("/missing"),
];

#[test]
fn differential_as_root() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("note: not running as root; the root differential test is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = LocalFs::open(dir.path()).unwrap();
    let mem = rootfs();
    let xattrs = xattrs_supported(&local);
    let mut diffs = compare(AS_ROOT, &mem, &local, xattrs);
    assert_same_trees(&mem, &local, xattrs, &mut diffs);
}

/// Prepared by root before switching to uid 1000.
const USER_SETUP: &[Op] = &[
    Chmod("/", 0o755),
    Mkdir("/u", 0o755),
    Chown("/u", Some(1000), Some(1000)),
    Create("/other", 0o644),
    Write("/other", 0, b"root data"),
    Mkdir("/rootdir", 0o755),
    Create("/rootdir/x", 0o666),
    Mkdir("/rootdir/priv", 0o700),
    Mkdir("/sticky", 0o1777),
    Create("/sticky/rootfile", 0o666),
    Create("/u/f", 0o644),
    Chown("/u/f", Some(1000), Some(1000)),
    SetX("/u/f", b"trusted.t", b"1", XattrFlag::Any),
    SetX("/u/f", b"user.v", b"2", XattrFlag::Any),
    Create("/u/g", 0o600),
    Mkdir("/u/rootsub", 0o755),
    Mkdir("/u/sgd", 0o2777),
    Chown("/u/sgd", Some(1000), Some(50)),
];

const AS_USER: &[Op] = &[
    Getattr("/other"),
    Read("/other", 0, 100),
    Write("/other", 0, b"x"),
    Open("/other", RDWR),
    Open("/other", RDONLY),
    Truncate("/other", 0),
    Fallocate("/other", 0, 0, 1),
    Access("/other", 4),
    Access("/other", 2),
    Access("/other", 1),
    Access("/u", 7),
    Access("/rootdir", 2),
    Chmod("/other", 0o777),
    Chown("/other", Some(1000), None),
    Chown("/other", None, None),
    Chown("/u/f", Some(1000), Some(1000)),
    Chown("/u/f", Some(0), None),
    Chown("/u/f", None, Some(0)),
    Utimens("/other", 1, 2),
    Utimens("/u/f", 1, 2),
    Times("/u/f"),
    Create("/rootdir/y", 0o644),
    Create("/rootdir/x", 0o644),
    Mkdir("/rootdir/x", 0o755),
    Mkdir("/rootdir/z", 0o755),
    Mknod("/rootdir/z", IFIFO | 0o644),
    Symlink("/rootdir/s", b"t"),
    Unlink("/rootdir/x"),
    Rmdir("/rootdir/priv"),
    Getattr("/rootdir/priv"),
    Getattr("/rootdir/priv/nothing"),
    Getattr("/rootdir/priv/nothing/deeper"),
    Readdir("/rootdir/priv", false),
    Rename("/rootdir/x", "/u/x"),
    Rename("/u/f", "/rootdir/f"),
    Link("/u/hl", "/other"),
    Link("/u/hl", "/rootdir/x"),
    Link("/u/hl2", "/u/g"),
    Link("/rootdir/hl", "/u/f"),
    // Sticky directory.
    Create("/sticky/mine", 0o644),
    Unlink("/sticky/rootfile"),
    Rename("/sticky/rootfile", "/sticky/zz"),
    Rename("/sticky/mine", "/sticky/rootfile"),
    Rename("/sticky/mine", "/sticky/mine2"),
    Put("/sticky/rootfile", b"x"),
    Write("/sticky/rootfile", 0, b"written"),
    Unlink("/sticky/mine2"),
    // Xattrs.
    ListX("/u/f", 100),
    GetX("/u/f", b"trusted.t", 10),
    SetX("/u/f", b"trusted.u", b"1", XattrFlag::Any),
    SetX("/u/f", b"security.x", b"1", XattrFlag::Any),
    RmX("/u/f", b"trusted.t"),
    RmX("/u/f", b"security.x"),
    SetX("/other", b"user.a", b"1", XattrFlag::Any),
    GetX("/other", b"user.a", 10),
    RmX("/other", b"user.v"),
    RmX("/other", b"system.posix_acl_access"),
    RmX("/other", b"system.posix_acl_default"),
    RmX("/u/f", b"system.posix_acl_access"),
    SetX("/u/f", b"user.w", b"3", XattrFlag::Any),
    GetX("/u/f", b"user.w", 10),
    SetX("/sticky", b"user.a", b"1", XattrFlag::Any),
    SetX("/sticky/rootfile", b"user.a", b"1", XattrFlag::Any),
    // A directory of one's own.
    Mkdir("/u/d", 0o755),
    Create("/u/d/f", 0o640),
    Write("/u/d/f", 0, b"mine"),
    Getattr("/u/d/f"),
    Chmod("/u/d", 0o555),
    Create("/u/d/g", 0o644),
    Mkdir("/u/d/f", 0o755),
    Unlink("/u/d/f"),
    Write("/u/d/f", 0, b"ok"),
    Put("/u/d/f", b"x"),
    Chmod("/u/d", 0o300),
    Readdir("/u/d", false),
    Getattr("/u/d/f"),
    Chmod("/u/d", 0o600),
    Getattr("/u/d/f"),
    // Not Readdir("/u/d", false): listing needs only read permission
    // (getdents), but LocalFs also needs search permission because
    // rustix's Dir::read_from reopens "." relative to the fd.
    Readdir("/u/d", true),
    Open("/u/d", RDONLY),
    Chmod("/u/d", 0o755),
    Chmod("/u/d/f", 0),
    Read("/u/d/f", 0, 10),
    Write("/u/d/f", 0, b"x"),
    Open("/u/d/f", RDONLY),
    Truncate("/u/d/f", 0),
    Access("/u/d/f", 4),
    Access("/u/d/f", 0),
    Fsync("/u/d/f"),
    Create("/u/d/f", 0o644),
    GetX("/u/d/f", b"user.a", 10),
    SetX("/u/d/f", b"user.a", b"1", XattrFlag::Any),
    ListX("/u/d/f", 10),
    Chmod("/u/d/f", 0o077),
    Access("/u/d/f", 4),
    Chmod("/u/d/f", 0o644),
    Mkdir("/u/ro", 0o555),
    Mkdir("/u/e", 0o755),
    Rename("/u/ro", "/u/e/ro"),
    Rename("/u/ro", "/u/ro2"),
    Rename("/u/rootsub", "/u/e/rootsub"),
    Rename("/u/rootsub", "/u/rootsub2"),
    // Set-ID bits.
    Chmod("/u/f", 0o2755),
    Getattr("/u/f"),
    Write("/u/f", 0, b"w"),
    Getattr("/u/f"),
    Chmod("/u/f", 0o4755),
    Truncate("/u/f", 0),
    Getattr("/u/f"),
    Chmod("/u/f", 0o2745),
    Write("/u/f", 0, b"w"),
    Getattr("/u/f"),
    Chmod("/u/g", 0o644),
    Create("/u/sgidfile", 0o2755),
    Mkdir("/u/sgiddir", 0o2755),
    Mknod("/u/sgidnode", 0o2755),
    // In a set-group-ID directory of a group the user is not in.
    Create("/u/sgd/f", 0o2755),
    Mkdir("/u/sgd/sub", 0o755),
    Mkdir("/u/sgd/sub2", 0o2755),
    Mknod("/u/sgd/n", 0o2755),
    Getattr("/u/sgd/f"),
    Getattr("/u/sgd/sub"),
    Getattr("/u/sgd/sub2"),
    Getattr("/u/sgd/n"),
    Chmod("/u/sgd/f", 0o2711),
    Getattr("/u/sgd/f"),
    Chown("/u/sgd/f", None, Some(1000)),
    Chown("/u/sgd/f", None, Some(50)),
    Put("/u/sgd/f", b"put"),
    Getattr("/u/sgd/f"),
    Put("/u/sgd/new", b"put"),
    Getattr("/u/sgd/new"),
    // Replacement.
    Put("/u/f", b"new"),
    Getattr("/u/f"),
    Put("/u/new", b"n"),
    Getattr("/u/new"),
    Put("/other", b"x"),
    Put("/u/g", b"x"),
    Getattr("/u/g"),
    Statfs("/"),
    Unlink("/u/hl"),
    ReadAfterUnlink("/u/new"),
];

#[test]
fn differential_as_unprivileged_user() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("note: not running as root; cannot switch to uid 1000, test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalFs::open(dir.path()).unwrap());
    let mem = rootfs();
    let xattrs = xattrs_supported(&local);
    let mut diffs = compare(USER_SETUP, &mem, &*local, xattrs);

    let user = mem.with_identity(1000, 1000);
    let local_user = Arc::clone(&local);
    // Credentials are per thread on Linux (rustix makes the raw
    // syscalls): only this thread becomes uid 1000.
    let result = std::thread::spawn(move || {
        use rustix::process::{Gid, Uid};
        let gid = Gid::from_raw(1000);
        let uid = Uid::from_raw(1000);
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        Ok::<_, rustix::io::Errno>(compare(AS_USER, &user, &*local_user, xattrs))
    })
    .join()
    .unwrap();
    match result {
        Ok(d) => diffs.extend(d),
        Err(e) => {
            eprintln!(
                "note: cannot switch a thread to uid 1000 ({e}); unprivileged comparison skipped"
            );
            return;
        }
    }
    assert_same_trees(&mem, &*local, xattrs, &mut diffs);
}
