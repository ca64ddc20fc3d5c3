//! The differential permission table (issue 15): POSIX calls made through a
//! real FUSE mount of a real HTTP server, each compared with the *same*
//! call on a local directory of the same filesystem. The local disk is the
//! oracle; nothing here states what the answer should be.
//!
//! In the spirit of pjdfstest and of Go's `os/root_test.go`, every case is
//! a small fixture (directories, files, FIFOs and symlinks with owners and
//! modes: sticky and set-group-ID directories, set-ID files, group-writable
//! files) and one operation. Each case runs once per identity, on a fresh
//! copy of its fixture:
//!
//! | identity | uid  | gid  | groups     |
//! |----------|------|------|------------|
//! | owner    | 1000 | 1000 | 1000       |
//! | member   | 1001 | 1001 | 1000, 1001 |
//! | other    | 1002 | 1002 | 1002       |
//! | root     | 0    | 0    | 0          |
//!
//! The test process stays root: each call runs on a thread of its own whose
//! real, effective and saved ids and supplementary groups are switched with
//! the per-thread system calls (that thread ends with the call). The mount
//! is made by root with `allow_other` and the kernel's
//! `default_permissions`, and sends each caller's ids to servers that trust
//! them.
//!
//! What is compared, per case and identity: the call's result (success or
//! errno) and, for every object of the fixture and every name the call
//! touches, in the served root (read from its backing store) and in the
//! local directory: existence, type, permission bits, owner, group, size
//! and link count of non-directories, whether ctime and mtime changed, and
//! the times themselves where the call sets explicit ones (an object that
//! another one replaced under its name counts as new). One relaxation:
//! `chown(path, -1, -1)` updates ctime on Linux, POSIX leaves it open, and
//! FUSE never tells the filesystem about it, so its ctime is not compared.
//! Where the server
//! acts as the caller with no squash (`--no-root-squash`, MemFs), the same
//! attributes read back *through the mount* must match too.
//!
//! The configurations:
//!
//! - `--trust-client-ids --no-root-squash --allow-setid` (axum app, LocalFs)
//!   and a MemFs mount trusting client ids the same way: identical to the
//!   local disk, set-ID cases included.
//! - `--trust-client-ids` (root squashed to `nobody`, default privilege
//!   policy). Root's calls reach the server as `nobody`, after the kernel
//!   checked them for root (`default_permissions`: root passes every check
//!   but exec without any x bit), so the oracle for root is the local disk
//!   as `nobody`, except `access(2)`: the kernel answers it alone under
//!   `default_permissions`, once the server has looked the names up (as
//!   `nobody`), so its oracle is `access(F_OK)` as `nobody`, then root's
//!   local answer. The only other allowed divergence is the documented
//!   nosuid policy: set-user-ID and set-group-ID bits of non-directories
//!   may be missing on the server (stripped from modes, cleared by writes
//!   whoever writes).
//! - `--as 1000`: every call acts as that user whoever makes it; the cases
//!   run as that user, nosuid allowed as above.
//! - `--as nobody` with the server as root: the original suite's case that
//!   needed a non-root server (`chmod 0`, then `access(W_OK)` refused), with
//!   the kernel's checks off so that the server answers.
//!
//! On failure, every divergent row is printed (case, identity, local and
//! mount results, attribute differences), not only the first.
//!
//! Needs root, `/dev/fuse` and `fusermount3`: without them the tests print
//! why and pass, except under `CI=true`, where they fail.

use spockfs_client::Client;
use spockfs_core::{Backend, ClientIds, FsPath, Identity, MemFs, Mount, Owner, SetId};
use spockfs_mount::{spawn_mount, MountConfig, Mounted};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// Identities

const OWNER: u32 = 1000;
const MEMBER: u32 = 1001;
const OTHER: u32 = 1002;

/// Owner and group of a fixture object.
type Ids = (u32, u32);
/// The owner's.
const O: Ids = (OWNER, OWNER);
/// The group member's.
const M: Ids = (MEMBER, MEMBER);
/// The other user's.
const X: Ids = (OTHER, OTHER);
/// Root's.
const R: Ids = (0, 0);
/// The owner's, in the other user's group (the owner is not a member).
const OX: Ids = (OWNER, OTHER);

/// Who runs a row.
#[derive(Clone)]
struct Who {
    name: &'static str,
    /// The mount's caller.
    caller: Identity,
}

fn owner() -> Who {
    Who {
        name: "owner",
        caller: Identity::new(OWNER, OWNER, [OWNER]),
    }
}
fn member() -> Who {
    Who {
        name: "member",
        caller: Identity::new(MEMBER, MEMBER, [OWNER, MEMBER]),
    }
}
fn other() -> Who {
    Who {
        name: "other",
        caller: Identity::new(OTHER, OTHER, [OTHER]),
    }
}
fn root() -> Who {
    Who {
        name: "root",
        caller: Identity::new(0, 0, [0]),
    }
}
/// What root (uid, gid and groups 0) is squashed to: the anonymous user's
/// uid and gid (`--anon-user nobody`).
fn nobody() -> Identity {
    let n = Identity::of_user("nobody").unwrap_or_else(|e| panic!("{e}"));
    Identity::new(n.uid(), n.gid(), [n.gid()])
}

/// How the oracle makes a row's call on the local disk.
#[derive(Clone)]
enum Oracle {
    /// The same call, as this identity.
    As(Identity),
    /// `access(2)` through a mount whose server squashes the caller: the
    /// names are looked up by the server, as `lookup` (an `F_OK` check
    /// locally), then the kernel alone checks the mode, as `check`.
    Access { lookup: Identity, check: Identity },
}

impl Oracle {
    fn run(&self, op: Op, base: &Path) -> Result<(), i32> {
        match self {
            Oracle::As(id) => as_id(id, || op.run(base)),
            Oracle::Access { lookup, check } => {
                let Op::Access(path, _) = op else {
                    panic!("{op:?} is not access(2)")
                };
                as_id(lookup, || Op::Access(path, libc::F_OK).run(base))?;
                as_id(check, || op.run(base))
            }
        }
    }
}

impl std::fmt::Display for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Oracle::As(id) => write!(f, "as {id}"),
            Oracle::Access { lookup, check } => {
                write!(f, "lookup as {lookup}, access as {check}")
            }
        }
    }
}

/// Runs `f` on a new thread whose credentials are `id`'s (real, effective
/// and saved uid and gid, and supplementary groups: `access(2)` checks the
/// real ids, FUSE sends the effective ones). The thread ends with `f`, so
/// its credentials never need restoring; the test's own are untouched.
fn as_id<T: Send>(id: &Identity, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            use rustix::fs::{Gid, Uid};
            let groups: Vec<Gid> = id.groups().iter().map(|&g| Gid::from_raw(g)).collect();
            let (uid, gid) = (Uid::from_raw(id.uid()), Gid::from_raw(id.gid()));
            rustix::thread::set_thread_groups(&groups)
                .and_then(|()| rustix::thread::set_thread_res_gid(gid, gid, gid))
                .and_then(|()| rustix::thread::set_thread_res_uid(uid, uid, uid))
                .unwrap_or_else(|e| panic!("switch to {id:?}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("a call as {id:?} panicked"))
    })
}

// ---------------------------------------------------------------------------
// Fixtures

#[derive(Clone, Copy, Debug)]
enum Kind {
    Dir,
    /// A regular file holding `abc`.
    File,
    Fifo,
    /// A symlink to this target.
    Link(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Ent {
    path: &'static str,
    kind: Kind,
    mode: u32,
    ids: Ids,
}

fn dir(path: &'static str, mode: u32, ids: Ids) -> Ent {
    Ent {
        path,
        kind: Kind::Dir,
        mode,
        ids,
    }
}
fn file(path: &'static str, mode: u32, ids: Ids) -> Ent {
    Ent {
        path,
        kind: Kind::File,
        mode,
        ids,
    }
}
fn fifo(path: &'static str, mode: u32, ids: Ids) -> Ent {
    Ent {
        path,
        kind: Kind::Fifo,
        mode,
        ids,
    }
}
fn symlink(path: &'static str, target: &'static str, ids: Ids) -> Ent {
    Ent {
        path,
        kind: Kind::Link(target),
        mode: 0o777,
        ids,
    }
}

// ---------------------------------------------------------------------------
// Operations

#[derive(Clone, Copy, Debug)]
enum Times {
    /// Both times explicit (whole seconds).
    Set(i64, i64),
    /// Both `UTIME_NOW`.
    Now,
    /// The mtime explicit, the atime `UTIME_OMIT`.
    MtimeOnly(i64),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// `open(path, flags)`.
    Open(&'static str, i32),
    /// `open(path, O_WRONLY)`, then one byte written at offset 0.
    Write(&'static str),
    /// `open(path, O_CREAT | O_WRONLY | flags, mode)`.
    Creat(&'static str, i32, u32),
    Chmod(&'static str, u32),
    /// `chown(path, uid, gid)`, `None` as -1.
    Chown(&'static str, Option<u32>, Option<u32>),
    Truncate(&'static str, u64),
    Utimes(&'static str, Times),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    Link(&'static str, &'static str),
    Mkdir(&'static str, u32),
    Rmdir(&'static str),
    Mkfifo(&'static str, u32),
    /// `symlink(target, path)`.
    Symlink(&'static str, &'static str),
    Setxattr(&'static str, &'static str, &'static [u8]),
    /// `access(path, mode)`.
    Access(&'static str, i32),
}

impl Op {
    /// Every path the call names.
    fn paths(&self) -> Vec<&'static str> {
        match *self {
            Op::Rename(a, b) | Op::Link(a, b) => vec![a, b],
            Op::Symlink(_, p)
            | Op::Open(p, _)
            | Op::Write(p)
            | Op::Creat(p, ..)
            | Op::Chmod(p, _)
            | Op::Chown(p, ..)
            | Op::Truncate(p, _)
            | Op::Utimes(p, _)
            | Op::Unlink(p)
            | Op::Mkdir(p, _)
            | Op::Rmdir(p)
            | Op::Mkfifo(p, _)
            | Op::Setxattr(p, ..)
            | Op::Access(p, _) => vec![p],
        }
    }

    /// The explicit times this call sets, if any.
    fn sets_times(&self) -> bool {
        matches!(self, Op::Utimes(_, Times::Set(..) | Times::MtimeOnly(_)))
    }

    /// Makes the call, with paths under `base`.
    fn run(&self, base: &Path) -> Result<(), i32> {
        use rustix::fs::{self as rfs, Mode, OFlags, Timespec, Timestamps, CWD};
        let p = |rel: &str| base.join(rel);
        let open = |rel: &str, flags: i32, mode: u32| {
            rfs::open(
                p(rel),
                OFlags::from_bits_retain((flags | libc::O_CLOEXEC | libc::O_NONBLOCK) as _),
                Mode::from_raw_mode(mode),
            )
            .map(drop)
        };
        let r = match *self {
            Op::Open(rel, flags) => open(rel, flags, 0),
            Op::Write(rel) => rfs::open(
                p(rel),
                OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .and_then(|fd| rustix::io::pwrite(&fd, b"x", 0))
            .map(drop),
            Op::Creat(rel, flags, mode) => open(rel, libc::O_CREAT | libc::O_WRONLY | flags, mode),
            Op::Chmod(rel, mode) => rfs::chmod(p(rel), Mode::from_raw_mode(mode)),
            Op::Chown(rel, uid, gid) => rfs::chown(
                p(rel),
                uid.map(rfs::Uid::from_raw),
                gid.map(rfs::Gid::from_raw),
            ),
            Op::Truncate(rel, size) => {
                let c = std::ffi::CString::new(p(rel).into_os_string().into_encoded_bytes())
                    .unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::truncate(c.as_ptr(), size as libc::off_t) } == 0 {
                    Ok(())
                } else {
                    return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
                }
            }
            Op::Utimes(rel, times) => {
                let ts = |tv_sec: i64, tv_nsec: i64| Timespec {
                    tv_sec: tv_sec as _,
                    tv_nsec: tv_nsec as _,
                };
                let (a, m) = match times {
                    Times::Set(a, m) => (ts(a, 0), ts(m, 0)),
                    Times::Now => (ts(0, rfs::UTIME_NOW as _), ts(0, rfs::UTIME_NOW as _)),
                    Times::MtimeOnly(m) => (ts(0, rfs::UTIME_OMIT as _), ts(m, 0)),
                };
                rfs::utimensat(
                    CWD,
                    p(rel),
                    &Timestamps {
                        last_access: a,
                        last_modification: m,
                    },
                    rfs::AtFlags::empty(),
                )
            }
            Op::Unlink(rel) => rfs::unlink(p(rel)),
            Op::Rename(a, b) => rfs::rename(p(a), p(b)),
            Op::Link(a, b) => rfs::link(p(a), p(b)),
            Op::Mkdir(rel, mode) => rfs::mkdir(p(rel), Mode::from_raw_mode(mode)),
            Op::Rmdir(rel) => rfs::rmdir(p(rel)),
            Op::Mkfifo(rel, mode) => rfs::mkfifoat(CWD, p(rel), Mode::from_raw_mode(mode)),
            Op::Symlink(target, rel) => rfs::symlink(target, p(rel)),
            Op::Setxattr(rel, name, value) => {
                rfs::setxattr(p(rel), name, value, rfs::XattrFlags::empty())
            }
            Op::Access(rel, mode) => rfs::access(p(rel), rfs::Access::from_bits_retain(mode as _)),
        };
        r.map_err(|e| e.raw_os_error())
    }
}

/// A minimal POSIX access ACL (`user::rw-`, `group::r--`, `other::---`):
/// the same as mode 0640, in the kernel's xattr form.
const ACL_0640: &[u8] = &[
    2, 0, 0, 0, // version
    1, 0, 6, 0, 255, 255, 255, 255, // ACL_USER_OBJ rw-
    4, 0, 4, 0, 255, 255, 255, 255, // ACL_GROUP_OBJ r--
    32, 0, 0, 0, 255, 255, 255, 255, // ACL_OTHER ---
];

struct Case {
    name: &'static str,
    fixture: Vec<Ent>,
    op: Op,
    /// Why the call's effect on ctime is not compared (POSIX leaves it
    /// unspecified and FUSE cannot carry it); `None`: compared.
    ctime_unspecified: Option<&'static str>,
}

fn case(name: &'static str, fixture: &[Ent], op: Op) -> Case {
    Case {
        name,
        fixture: fixture.to_vec(),
        op,
        ctime_unspecified: None,
    }
}

impl Case {
    fn ctime_unspecified(mut self, why: &'static str) -> Case {
        self.ctime_unspecified = Some(why);
        self
    }
}

const RD: i32 = libc::O_RDONLY;
const WR: i32 = libc::O_WRONLY;
const RW: i32 = libc::O_RDWR;
const TRUNC: i32 = libc::O_TRUNC;
const EXCL: i32 = libc::O_EXCL;

/// The table. Names say what is special about the fixture; every case runs
/// for every identity.
fn cases() -> Vec<Case> {
    let d755 = dir("d", 0o755, O);
    let d775 = dir("d", 0o775, O);
    let d777 = dir("d", 0o777, O);
    let sticky = dir("d", 0o1777, R);
    let sticky_o = dir("d", 0o1777, O);
    let sgid = dir("d", 0o2777, O);
    let f = |mode| file("d/f", mode, O);
    vec![
        // open
        case("open r 0644", &[d755, f(0o644)], Op::Open("d/f", RD)),
        case("open w 0644", &[d755, f(0o644)], Op::Open("d/f", WR)),
        case("open rw 0660", &[d755, f(0o660)], Op::Open("d/f", RW)),
        case("open r 0604", &[d755, f(0o604)], Op::Open("d/f", RD)),
        case("open r 0000", &[d755, f(0)], Op::Open("d/f", RD)),
        case("open w 0444", &[d755, f(0o444)], Op::Open("d/f", WR)),
        case(
            "open r in 0700 dir",
            &[dir("d", 0o700, O), f(0o644)],
            Op::Open("d/f", RD),
        ),
        case(
            "open r in 0710 dir",
            &[dir("d", 0o710, O), f(0o644)],
            Op::Open("d/f", RD),
        ),
        case("open w of a dir", &[d777], Op::Open("d", WR)),
        case(
            "open w|trunc 04777",
            &[d755, f(0o4777)],
            Op::Open("d/f", WR | TRUNC),
        ),
        case(
            "open w|trunc 02777",
            &[d755, f(0o2777)],
            Op::Open("d/f", WR | TRUNC),
        ),
        // write
        case("write 0664", &[d755, f(0o664)], Op::Write("d/f")),
        case("write 04777", &[d755, f(0o4777)], Op::Write("d/f")),
        case("write 02777", &[d755, f(0o2777)], Op::Write("d/f")),
        case("write 02767 no gx", &[d755, f(0o2767)], Op::Write("d/f")),
        case("write 06777 dir 0777", &[d777, f(0o6777)], Op::Write("d/f")),
        // creat
        case("creat in 0755", &[d755], Op::Creat("d/new", 0, 0o644)),
        case("creat in 0775", &[d775], Op::Creat("d/new", 0, 0o640)),
        case("creat in sticky", &[sticky], Op::Creat("d/new", 0, 0o600)),
        case("creat in sgid dir", &[sgid], Op::Creat("d/new", 0, 0o644)),
        case(
            "creat 02755 in sgid dir",
            &[sgid],
            Op::Creat("d/new", 0, 0o2755),
        ),
        case("creat 04755", &[d777], Op::Creat("d/new", 0, 0o4755)),
        case("creat 0444", &[d777], Op::Creat("d/new", 0, 0o444)),
        case(
            "creat excl existing",
            &[d777, f(0o666)],
            Op::Creat("d/f", EXCL, 0o600),
        ),
        case(
            "creat existing 0666",
            &[d777, f(0o666)],
            Op::Creat("d/f", 0, 0o600),
        ),
        case(
            "creat existing 0644",
            &[d777, f(0o644)],
            Op::Creat("d/f", 0, 0o600),
        ),
        // chmod
        case("chmod 0600", &[d755, f(0o644)], Op::Chmod("d/f", 0o600)),
        case("chmod 04755", &[d755, f(0o755)], Op::Chmod("d/f", 0o4755)),
        case(
            "chmod 02755 own group",
            &[d755, f(0o755)],
            Op::Chmod("d/f", 0o2755),
        ),
        case(
            "chmod 02755 foreign group",
            &[d755, file("d/f", 0o755, OX)],
            Op::Chmod("d/f", 0o2755),
        ),
        case(
            "chmod 01644 file",
            &[d755, f(0o644)],
            Op::Chmod("d/f", 0o1644),
        ),
        case(
            "chmod 02755 dir",
            &[d755, dir("d/s", 0o755, O)],
            Op::Chmod("d/s", 0o2755),
        ),
        case(
            "chmod dir sgid foreign group",
            &[d755, dir("d/s", 0o755, OX)],
            Op::Chmod("d/s", 0o2755),
        ),
        case(
            "chmod via symlink",
            &[d755, f(0o644), symlink("d/l", "f", O)],
            Op::Chmod("d/l", 0o600),
        ),
        // chown
        case(
            "chown uid",
            &[d755, f(0o644)],
            Op::Chown("d/f", Some(OTHER), None),
        ),
        case(
            "chown same ids",
            &[d755, f(0o644)],
            Op::Chown("d/f", Some(OWNER), Some(OWNER)),
        ),
        case(
            "chgrp to member's group",
            &[d755, f(0o644)],
            Op::Chown("d/f", None, Some(MEMBER)),
        ),
        case(
            "chgrp to a supplementary group",
            &[d777, file("d/f", 0o644, M)],
            Op::Chown("d/f", None, Some(OWNER)),
        ),
        case(
            "chown -1 -1",
            &[d755, f(0o644)],
            Op::Chown("d/f", None, None),
        )
        .ctime_unspecified(
            "POSIX: 'if both owner and group are -1, the times need not be updated'; \
             Linux updates ctime, but the kernel's FUSE client sends no attribute for it \
             (an empty SETATTR, which the write path's set-ID clearing sends too)",
        ),
        case(
            "chgrp 04755 file",
            &[d755, f(0o4755)],
            Op::Chown("d/f", None, Some(OWNER)),
        ),
        case(
            "chgrp 02755 file",
            &[d755, f(0o2755)],
            Op::Chown("d/f", None, Some(OWNER)),
        ),
        case(
            "chgrp 02745 file",
            &[d755, f(0o2745)],
            Op::Chown("d/f", None, Some(OWNER)),
        ),
        case(
            "chgrp 02755 dir",
            &[d755, dir("d/s", 0o2755, O)],
            Op::Chown("d/s", None, Some(OWNER)),
        ),
        // truncate
        case("truncate 0644", &[d755, f(0o644)], Op::Truncate("d/f", 1)),
        case("truncate 0666", &[d755, f(0o666)], Op::Truncate("d/f", 1)),
        case("truncate 04777", &[d755, f(0o4777)], Op::Truncate("d/f", 0)),
        case("truncate 02767", &[d755, f(0o2767)], Op::Truncate("d/f", 0)),
        case(
            "truncate 02757 no gx",
            &[d755, f(0o2747)],
            Op::Truncate("d/f", 0),
        ),
        case("truncate dir", &[d777], Op::Truncate("d", 0)),
        case(
            "open rw|trunc 0666",
            &[d755, f(0o666)],
            Op::Open("d/f", RW | TRUNC),
        ),
        case(
            "open w via symlink",
            &[d755, f(0o664), symlink("d/l", "f", R)],
            Op::Open("d/l", WR),
        ),
        case(
            "creat existing in 0555",
            &[dir("d", 0o555, O), f(0o666)],
            Op::Creat("d/f", 0, 0o600),
        ),
        case(
            "creat excl over symlink",
            &[d777, symlink("d/l", "nowhere", O)],
            Op::Creat("d/l", EXCL, 0o600),
        ),
        // utimensat
        case(
            "utimes explicit 0666",
            &[d755, f(0o666)],
            Op::Utimes("d/f", Times::Set(1_000_000_000, 1_000_000_001)),
        ),
        case(
            "utimes mtime only 0666",
            &[d755, f(0o666)],
            Op::Utimes("d/f", Times::MtimeOnly(1_000_000_001)),
        ),
        case(
            "utimes now 0666",
            &[d755, f(0o666)],
            Op::Utimes("d/f", Times::Now),
        ),
        case(
            "utimes now 0644",
            &[d755, f(0o644)],
            Op::Utimes("d/f", Times::Now),
        ),
        case(
            "utimes explicit own 0444",
            &[d755, f(0o444)],
            Op::Utimes("d/f", Times::Set(1_000_000_000, 1_000_000_001)),
        ),
        // unlink
        case("unlink in 0755", &[d755, f(0o644)], Op::Unlink("d/f")),
        case("unlink in 0775", &[d775, f(0o644)], Op::Unlink("d/f")),
        case(
            "unlink in 0555",
            &[dir("d", 0o555, O), f(0o666)],
            Op::Unlink("d/f"),
        ),
        case(
            "unlink sticky owner's",
            &[sticky, f(0o666)],
            Op::Unlink("d/f"),
        ),
        case(
            "unlink sticky member's",
            &[sticky, file("d/f", 0o666, M)],
            Op::Unlink("d/f"),
        ),
        case(
            "unlink sticky dir owner",
            &[sticky_o, file("d/f", 0o666, X)],
            Op::Unlink("d/f"),
        ),
        case(
            "unlink a dir",
            &[d777, dir("d/s", 0o777, O)],
            Op::Unlink("d/s"),
        ),
        // rename
        case(
            "rename in 0755",
            &[d755, f(0o644)],
            Op::Rename("d/f", "d/g"),
        ),
        case(
            "rename over other's",
            &[d777, f(0o644), file("d/g", 0o644, X)],
            Op::Rename("d/f", "d/g"),
        ),
        case(
            "rename sticky src",
            &[sticky, f(0o666)],
            Op::Rename("d/f", "d/g"),
        ),
        case(
            "rename sticky over other's",
            &[sticky, file("d/f", 0o666, M), file("d/g", 0o666, X)],
            Op::Rename("d/f", "d/g"),
        ),
        case(
            "rename sticky dir owner",
            &[sticky_o, file("d/f", 0o666, X)],
            Op::Rename("d/f", "d/g"),
        ),
        case(
            "rename dir 0555 across",
            &[
                dir("d", 0o777, R),
                dir("d/s", 0o555, O),
                dir("d/t", 0o777, R),
            ],
            Op::Rename("d/s", "d/t/s"),
        ),
        case(
            "rename dir 0755 across",
            &[
                dir("d", 0o777, R),
                dir("d/s", 0o755, O),
                dir("d/t", 0o777, R),
            ],
            Op::Rename("d/s", "d/t/s"),
        ),
        case(
            "rename from 0755 to 0777",
            &[
                dir("d", 0o777, R),
                dir("d/a", 0o755, O),
                f(0o644),
                file("d/a/f", 0o644, O),
                dir("d/b", 0o777, R),
            ],
            Op::Rename("d/a/f", "d/b/f"),
        ),
        case(
            "rename into 0755",
            &[dir("d", 0o777, R), f(0o666), dir("d/b", 0o755, O)],
            Op::Rename("d/f", "d/b/f"),
        ),
        case(
            "rename dir over empty dir",
            &[d777, dir("d/s", 0o755, O), dir("d/t", 0o755, X)],
            Op::Rename("d/s", "d/t"),
        ),
        case(
            "rename dir over non-empty dir",
            &[
                d777,
                dir("d/s", 0o777, O),
                dir("d/t", 0o777, O),
                file("d/t/f", 0o644, O),
            ],
            Op::Rename("d/s", "d/t"),
        ),
        case(
            "rename sticky dir own subdir",
            &[sticky, dir("d/s", 0o777, M)],
            Op::Rename("d/s", "d/t"),
        ),
        case(
            "unlink sticky owner's symlink",
            &[sticky, symlink("d/l", "f", O)],
            Op::Unlink("d/l"),
        ),
        // link
        case(
            "link 0644 in 0777",
            &[d777, f(0o644)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link 0666 in 0777",
            &[d777, f(0o666)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link 0644 in 0755",
            &[d755, f(0o644)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link 04777 in 0777",
            &[d777, f(0o4777)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link 02777 in 0777",
            &[d777, f(0o2777)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link a fifo 0666",
            &[d777, fifo("d/p", 0o666, O)],
            Op::Link("d/p", "d/g"),
        ),
        case(
            "link 0600 in 0777",
            &[d777, f(0o600)],
            Op::Link("d/f", "d/g"),
        ),
        case(
            "link into 0755",
            &[dir("d", 0o777, R), f(0o666), dir("d/b", 0o755, O)],
            Op::Link("d/f", "d/b/g"),
        ),
        // mkdir
        case("mkdir in 0755", &[d755], Op::Mkdir("d/n", 0o755)),
        case("mkdir in sgid dir", &[sgid], Op::Mkdir("d/n", 0o755)),
        case("mkdir 01777", &[d777], Op::Mkdir("d/n", 0o1777)),
        case("mkdir 02700", &[d777], Op::Mkdir("d/n", 0o2700)),
        case("mkdir existing", &[d755, f(0o644)], Op::Mkdir("d/f", 0o755)),
        case(
            "mkdir in 0700",
            &[dir("d", 0o700, O)],
            Op::Mkdir("d/n", 0o755),
        ),
        // rmdir
        case(
            "rmdir in 0755",
            &[d755, dir("d/s", 0o777, O)],
            Op::Rmdir("d/s"),
        ),
        case(
            "rmdir in 0775",
            &[d775, dir("d/s", 0o755, X)],
            Op::Rmdir("d/s"),
        ),
        case(
            "rmdir sticky",
            &[sticky, dir("d/s", 0o777, O)],
            Op::Rmdir("d/s"),
        ),
        case(
            "rmdir non-empty",
            &[d777, dir("d/s", 0o777, O), file("d/s/f", 0o644, O)],
            Op::Rmdir("d/s"),
        ),
        // mkfifo
        case("mkfifo in 0777", &[d777], Op::Mkfifo("d/p", 0o644)),
        case("mkfifo in 0755", &[d755], Op::Mkfifo("d/p", 0o644)),
        case("mkfifo in sgid dir", &[sgid], Op::Mkfifo("d/p", 0o640)),
        case(
            "mkfifo 02754 in sgid dir",
            &[sgid],
            Op::Mkfifo("d/p", 0o2754),
        ),
        case("mkdir in sticky", &[sticky], Op::Mkdir("d/n", 0o700)),
        // symlink
        case("symlink in 0777", &[d777], Op::Symlink("t", "d/l")),
        case("symlink in 0755", &[d755], Op::Symlink("t", "d/l")),
        case("symlink in sgid dir", &[sgid], Op::Symlink("t", "d/l")),
        case(
            "symlink existing",
            &[d777, f(0o644)],
            Op::Symlink("t", "d/f"),
        ),
        // setxattr
        case(
            "setxattr user 0644",
            &[d755, f(0o644)],
            Op::Setxattr("d/f", "user.x", b"1"),
        ),
        case(
            "setxattr user 0666",
            &[d755, f(0o666)],
            Op::Setxattr("d/f", "user.x", b"1"),
        ),
        case(
            "setxattr user 0777 sticky dir",
            &[sticky_o],
            Op::Setxattr("d", "user.x", b"1"),
        ),
        case(
            "setxattr user 0777 dir",
            &[d777],
            Op::Setxattr("d", "user.x", b"1"),
        ),
        case(
            "setxattr user fifo",
            &[d755, fifo("d/p", 0o666, O)],
            Op::Setxattr("d/p", "user.x", b"1"),
        ),
        case(
            "setxattr acl 0666",
            &[d755, f(0o666)],
            Op::Setxattr("d/f", "system.posix_acl_access", ACL_0640),
        ),
        // access
        case(
            "access r 0640",
            &[d755, f(0o640)],
            Op::Access("d/f", libc::R_OK),
        ),
        case(
            "access w 0640",
            &[d755, f(0o640)],
            Op::Access("d/f", libc::W_OK),
        ),
        case(
            "access w 0000",
            &[d755, f(0)],
            Op::Access("d/f", libc::W_OK),
        ),
        case(
            "access x 0644",
            &[d755, f(0o644)],
            Op::Access("d/f", libc::X_OK),
        ),
        case(
            "access x 0100",
            &[d755, f(0o100)],
            Op::Access("d/f", libc::X_OK),
        ),
        case(
            "access x 0010",
            &[d755, f(0o010)],
            Op::Access("d/f", libc::X_OK),
        ),
        case(
            "access rw 0646",
            &[d755, f(0o646)],
            Op::Access("d/f", libc::R_OK | libc::W_OK),
        ),
        case(
            "access f in 0700",
            &[dir("d", 0o700, O), f(0o644)],
            Op::Access("d/f", libc::F_OK),
        ),
        case("access w dir 0755", &[d755], Op::Access("d", libc::W_OK)),
        case(
            "access x dir 0750",
            &[dir("d", 0o750, O)],
            Op::Access("d", libc::X_OK),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Where fixtures live, and their attributes

#[derive(Clone, Copy, Debug, PartialEq)]
struct Attrs {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// A tree fixtures are built in: a local directory (the oracle's, or the
/// one a LocalFs server serves), or a MemFs.
enum Store {
    Dir(PathBuf),
    Mem(MemFs),
}

fn fs_path(rel: &str) -> FsPath {
    FsPath::from_bytes(format!("/{rel}").as_bytes()).unwrap_or_else(|e| panic!("{rel}: {e:?}"))
}

impl Store {
    fn mkdir_row(&self, row: &str) {
        match self {
            Store::Dir(base) => {
                let p = base.join(row);
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                chmod(&p, 0o755);
            }
            Store::Mem(fs) => fs
                .mkdir(&fs_path(row), 0o755)
                .unwrap_or_else(|e| panic!("{row}: {e:?}")),
        }
    }

    fn build(&self, row: &str, ents: &[Ent]) {
        self.mkdir_row(row);
        for e in ents {
            let rel = format!("{row}/{}", e.path);
            match self {
                Store::Dir(base) => {
                    let p = base.join(&rel);
                    let r = match e.kind {
                        Kind::Dir => std::fs::create_dir(&p),
                        Kind::File => std::fs::write(&p, b"abc"),
                        Kind::Fifo => rustix::fs::mkfifoat(
                            rustix::fs::CWD,
                            &p,
                            rustix::fs::Mode::from_raw_mode(0o600),
                        )
                        .map_err(Into::into),
                        Kind::Link(t) => std::os::unix::fs::symlink(t, &p),
                    };
                    r.unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                    std::os::unix::fs::lchown(&p, Some(e.ids.0), Some(e.ids.1))
                        .unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                    if !matches!(e.kind, Kind::Link(_)) {
                        chmod(&p, e.mode);
                    }
                }
                Store::Mem(fs) => {
                    let p = fs_path(&rel);
                    let r = match e.kind {
                        Kind::Dir => fs.mkdir(&p, 0o700),
                        Kind::File => fs
                            .create(&p, 0o600, SetId::Keep)
                            .and_then(|()| fs.open_write(&p, SetId::Keep)?.write_at(b"abc", 0)),
                        Kind::Fifo => {
                            fs.mknod(&p, libc::S_IFIFO | 0o600, 0, spockfs_core::Devices::Refuse)
                        }
                        Kind::Link(t) => fs.symlink(&p, t.as_bytes()),
                    };
                    r.and_then(|()| {
                        fs.chown(
                            &p,
                            Owner {
                                uid: Some(e.ids.0),
                                gid: Some(e.ids.1),
                            },
                        )
                    })
                    .and_then(|()| match e.kind {
                        Kind::Link(_) => Ok(()),
                        _ => fs.chmod(&p, e.mode, SetId::Keep),
                    })
                    .unwrap_or_else(|err| panic!("{rel}: {err:?}"));
                }
            }
        }
    }

    /// `lstat`, as root (`None`: does not exist).
    fn attrs(&self, rel: &str) -> Option<Attrs> {
        match self {
            Store::Dir(base) => lstat(&base.join(rel)),
            Store::Mem(fs) => match fs.getattr(&fs_path(rel)) {
                Ok(s) => Some(Attrs {
                    ino: s.ino,
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                    size: s.size,
                    nlink: s.nlink,
                    atime: (s.atime, 0),
                    mtime: (s.mtime, 0),
                    ctime: (s.ctime, 0),
                }),
                Err(e) if e == spockfs_core::Errno::ENOENT => None,
                Err(e) => panic!("{rel}: {e:?}"),
            },
        }
    }
}

fn lstat(p: &Path) -> Option<Attrs> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Some(Attrs {
            ino: m.ino(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            nlink: m.nlink(),
            atime: (m.atime(), m.atime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", p.display()),
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

// ---------------------------------------------------------------------------
// Comparison

/// What a call left behind on one object, as compared.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    /// Regular files only.
    size: Option<u64>,
    /// Non-directories only.
    nlink: Option<u64>,
    ctime: Change,
    mtime: Change,
    /// Whole seconds, for calls that set explicit times.
    times: Option<(i64, i64)>,
}

const S_IFMT: u32 = libc::S_IFMT;
const S_IFDIR: u32 = libc::S_IFDIR;
const S_IFREG: u32 = libc::S_IFREG;
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

/// What happened to a timestamp.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    /// The object is new (or another object now has its name).
    New,
    Changed,
    Same,
    /// Not compared (see [`Case::ctime_unspecified`]).
    Unspecified,
}

impl Change {
    fn of(before: Option<(i64, i64)>, after: (i64, i64)) -> Change {
        match before {
            None => Change::New,
            Some(b) if b != after => Change::Changed,
            Some(_) => Change::Same,
        }
    }
}

impl Seen {
    fn of(case: &Case, before: Option<Attrs>, after: Attrs) -> Seen {
        let kind = after.mode & S_IFMT;
        let before = before.filter(|b| b.ino == after.ino);
        Seen {
            mode: after.mode,
            uid: after.uid,
            gid: after.gid,
            size: (kind == S_IFREG).then_some(after.size),
            nlink: (kind != S_IFDIR).then_some(after.nlink),
            ctime: match case.ctime_unspecified {
                Some(_) => Change::Unspecified,
                None => Change::of(before.map(|b| b.ctime), after.ctime),
            },
            mtime: Change::of(before.map(|b| b.mtime), after.mtime),
            times: case
                .op
                .sets_times()
                .then_some((after.atime.0, after.mtime.0)),
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.mode & S_IFMT {
            S_IFDIR => "dir",
            S_IFREG => "file",
            libc::S_IFLNK => "link",
            libc::S_IFIFO => "fifo",
            _ => "?",
        };
        write!(
            f,
            "{kind} {:04o} {}:{}",
            self.mode & 0o7777,
            self.uid,
            self.gid
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        let ch = |c: Change| match c {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Same => "same",
            Change::Unspecified => "-",
        };
        write!(f, " ctime {} mtime {}", ch(self.ctime), ch(self.mtime))?;
        if let Some((a, m)) = self.times {
            write!(f, " times={a},{m}")?;
        }
        Ok(())
    }
}

fn show(s: &Option<Seen>) -> String {
    s.as_ref().map_or("absent".into(), Seen::to_string)
}

fn errno_name(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => spockfs_core::Errno::from_raw(e).name().to_string(),
    }
}

/// True if `mount` differs from `local` only as the nosuid policy allows:
/// a non-directory missing some of its set-user-ID and set-group-ID bits.
fn nosuid_only(local: &Seen, mount: &Seen) -> bool {
    let removed = local.mode & !mount.mode;
    local.mode & S_IFMT != S_IFDIR
        && removed != 0
        && removed & !SETID == 0
        && mount.mode & !local.mode == 0
        && Seen {
            mode: local.mode,
            ..mount.clone()
        } == *local
}

// ---------------------------------------------------------------------------
// Running a configuration

/// One configuration of the table.
struct Config<'a> {
    name: &'a str,
    /// The served tree's backing store.
    served: Store,
    /// The local directory the oracle runs in.
    local: PathBuf,
    /// The mount point.
    mnt: PathBuf,
    /// Who runs the cases.
    whos: Vec<Who>,
    /// How the oracle runs a case run by `who`.
    oracle: &'a dyn Fn(&Op, &Who) -> Oracle,
    /// The nosuid policy applies (set-ID bits may be missing on the server).
    nosuid: bool,
    /// Also compare the attributes read back through the mount (by root).
    through_mount: bool,
}

struct Row<'a> {
    case: &'a Case,
    who: &'a Who,
    oracle: Oracle,
    dir: String,
}

/// Runs every case for every identity of `cfg`; returns the report of the
/// divergent rows (empty if none).
fn run_table(cfg: &Config<'_>) -> String {
    let cases = cases();
    let mut rows = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for (j, who) in cfg.whos.iter().enumerate() {
            rows.push(Row {
                case: c,
                who,
                oracle: (cfg.oracle)(&c.op, who),
                dir: format!("r{i:03}{j}"),
            });
        }
    }
    let local = Store::Dir(cfg.local.clone());
    let watched = |row: &Row<'_>| -> Vec<String> {
        let mut v: Vec<&str> = row.case.fixture.iter().map(|e| e.path).collect();
        v.extend(row.case.op.paths());
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(|p| format!("{}/{p}", row.dir)).collect()
    };
    for row in &rows {
        local.build(&row.dir, &row.case.fixture);
        cfg.served.build(&row.dir, &row.case.fixture);
    }
    let snapshot = |store: &Store| -> Vec<Vec<Option<Attrs>>> {
        rows.iter()
            .map(|r| watched(r).iter().map(|p| store.attrs(p)).collect())
            .collect()
    };
    let (local_before, served_before) = (snapshot(&local), snapshot(&cfg.served));
    // A MemFs keeps whole seconds: every call runs in a later second than
    // the fixtures were made in, so that "ctime changed" is seen there too.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 20_000_000,
    ));
    let results: Vec<(Result<(), i32>, Result<(), i32>)> = rows
        .iter()
        .map(|row| {
            let (local, mnt) = (cfg.local.join(&row.dir), cfg.mnt.join(&row.dir));
            let op = row.case.op;
            let l = row.oracle.run(op, &local);
            let m = as_id(&row.who.caller, || op.run(&mnt));
            (l, m)
        })
        .collect();
    let (local_after, served_after) = (snapshot(&local), snapshot(&cfg.served));
    let mut report = String::new();
    let (mut diverged, mut policy) = (0, 0);
    for (k, row) in rows.iter().enumerate() {
        let (lr, mr) = results[k];
        let mut diffs = Vec::new();
        let mut allowed = Vec::new();
        for (n, path) in watched(row).iter().enumerate() {
            let l = local_after[k][n].map(|a| Seen::of(row.case, local_before[k][n], a));
            let s = served_after[k][n].map(|a| Seen::of(row.case, served_before[k][n], a));
            if l != s {
                let line = format!("    {path}: local {} | server {}", show(&l), show(&s));
                match (&l, &s) {
                    (Some(l), Some(s)) if cfg.nosuid && nosuid_only(l, s) => allowed.push(line),
                    _ => diffs.push(line),
                }
            }
            if cfg.through_mount {
                let rel = path.as_str();
                let via = lstat(&cfg.mnt.join(rel));
                let la = local_after[k][n];
                let strip = |a: Option<Attrs>| {
                    a.map(|a| {
                        (
                            a.mode,
                            a.uid,
                            a.gid,
                            (a.mode & S_IFMT == S_IFREG).then_some(a.size),
                        )
                    })
                };
                if strip(via) != strip(la) {
                    diffs.push(format!(
                        "    {path} through the mount: local {:?} | mount {:?}",
                        strip(la),
                        strip(via)
                    ));
                }
            }
        }
        if lr != mr {
            diffs.insert(
                0,
                format!(
                    "    result: local {} | mount {}",
                    errno_name(lr),
                    errno_name(mr)
                ),
            );
        }
        if !diffs.is_empty() {
            diverged += 1;
            let _ = writeln!(
                report,
                "  {:<34} {:<7} (oracle {}, local {}, mount {})",
                row.case.name,
                row.who.name,
                row.oracle,
                errno_name(lr),
                errno_name(mr)
            );
            for d in diffs.iter().chain(&allowed) {
                let _ = writeln!(report, "{d}");
            }
        } else if !allowed.is_empty() {
            policy += 1;
        }
    }
    eprintln!(
        "{}: {} rows ({} cases), {} divergent, {} differing only by the nosuid policy",
        cfg.name,
        rows.len(),
        cases.len(),
        diverged,
        policy
    );
    if diverged > 0 {
        format!(
            "{}: {diverged} of {} rows diverge from the local disk:\n{report}",
            cfg.name,
            rows.len()
        )
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------
// Servers and mounts

fn ready() -> bool {
    let mut why = Vec::new();
    if !rustix::process::geteuid().is_root() {
        why.push("root");
    }
    if !Path::new("/dev/fuse").exists() {
        why.push("/dev/fuse");
    }
    if !std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
    {
        why.push("fusermount3 (Debian package fuse3)");
    }
    if why.is_empty() {
        return true;
    }
    let msg = format!("the permission table needs {}", why.join(", "));
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// A tempdir every identity can traverse, with `local/` (the oracle's),
/// `root/` (served) and `mnt/`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        chmod(dir.path(), 0o755);
        for d in ["local", "root", "mnt"] {
            let p = dir.path().join(d);
            std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{e}"));
            chmod(&p, 0o755);
        }
        Work { dir }
    }
    fn local(&self) -> PathBuf {
        self.dir.path().join("local")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

/// A server (in this process, on 127.0.0.1) and a mount of it.
struct Served {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    mount: Option<Mounted>,
}

impl Served {
    /// The axum app with `args` (its root already set).
    fn axum(args: axum_app::Args, mnt: &Path, default_permissions: bool) -> Served {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut args = args;
        args.listen = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}/fs", args.listen);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(async move {
            axum_app::serve(args, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap_or_else(|e| panic!("server: {e}"));
        });
        Served::mount(rt, tx, task, &url, mnt, default_permissions)
    }

    /// `mount` served by `SpockFs` in an axum router.
    fn router(mount: Mount, mnt: &Path) -> Served {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let svc = spockfs_tower::SpockFs::builder()
            .default_mount(mount)
            .build();
        let app = axum::Router::new().nest_service("/fs", svc);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Served::mount(rt, tx, task, &format!("http://{addr}/fs"), mnt, true)
    }

    fn mount(
        rt: tokio::runtime::Runtime,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
        url: &str,
        mnt: &Path,
        default_permissions: bool,
    ) -> Served {
        let client = {
            let _g = rt.enter();
            Client::builder(url)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_else(|e| panic!("client: {e}"))
        };
        let cfg = MountConfig {
            fsname: url.to_string(),
            allow_other: true,
            default_permissions,
            ..MountConfig::default()
        };
        let mount = spawn_mount(client, mnt, cfg).unwrap_or_else(|e| panic!("mount: {e}"));
        Served {
            rt,
            stop: Some(stop),
            task: Some(task),
            mount: Some(mount),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if let Err(e) = m.unmount() {
                eprintln!("unmount: {e}");
            }
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn all() -> Vec<Who> {
    vec![owner(), member(), other(), root()]
}

fn check(report: String) {
    assert!(report.is_empty(), "{report}");
}

// ---------------------------------------------------------------------------
// The configurations

/// `--trust-client-ids --no-root-squash --allow-setid`: every identity,
/// root included, is itself on the server; no divergence at all.
#[test]
fn trusted_ids_no_root_squash_allow_setid() {
    if !ready() {
        return;
    }
    let w = Work::new();
    let mut a = spockfs_tests::axum_args(&w.root());
    a.trust_client_ids = true;
    a.no_root_squash = true;
    a.allow_setid = true;
    let _s = Served::axum(a, &w.mnt(), true);
    check(run_table(&Config {
        name: "--trust-client-ids --no-root-squash --allow-setid",
        served: Store::Dir(w.root()),
        local: w.local(),
        mnt: w.mnt(),
        whos: all(),
        oracle: &|_, who| Oracle::As(who.caller.clone()),
        nosuid: false,
        through_mount: true,
    }));
}

/// `--trust-client-ids`: root squashed to nobody, the default privilege
/// policy (nosuid).
#[test]
fn trusted_ids_root_squashed() {
    if !ready() {
        return;
    }
    let w = Work::new();
    let mut a = spockfs_tests::axum_args(&w.root());
    a.trust_client_ids = true;
    let _s = Served::axum(a, &w.mnt(), true);
    check(run_table(&Config {
        name: "--trust-client-ids (root squashed)",
        served: Store::Dir(w.root()),
        local: w.local(),
        mnt: w.mnt(),
        whos: all(),
        // Root reaches the server as nobody, except for access(2), which
        // the kernel answers alone under default_permissions once the
        // server (as nobody) has looked the names up.
        oracle: &|op, who| match op {
            _ if !who.caller.is_root() => Oracle::As(who.caller.clone()),
            Op::Access(..) => Oracle::Access {
                lookup: nobody(),
                check: who.caller.clone(),
            },
            _ => Oracle::As(nobody()),
        },
        nosuid: true,
        through_mount: false,
    }));
}

/// `--as 1000`: the server acts as that user for every call; the cases run
/// as that user.
#[test]
fn as_user() {
    if !ready() {
        return;
    }
    let w = Work::new();
    let user = Identity::of_user("1000").unwrap_or_else(|e| panic!("{e}"));
    let mut a = spockfs_tests::axum_args(&w.root());
    a.as_user = Some("1000".into());
    let _s = Served::axum(a, &w.mnt(), true);
    check(run_table(&Config {
        name: "--as 1000",
        served: Store::Dir(w.root()),
        local: w.local(),
        mnt: w.mnt(),
        whos: vec![Who {
            name: "user",
            caller: user,
        }],
        oracle: &|_, who| Oracle::As(who.caller.clone()),
        nosuid: true,
        through_mount: false,
    }));
}

/// A MemFs mount trusting client ids without root squash and allowing
/// set-ID bits: the in-memory permission model against the kernel's.
/// MemFs links as with `fs.protected_hardlinks = 1` (most distributions'
/// setting): the local oracle must too.
#[test]
fn memfs_trusted_ids_no_root_squash_allow_setid() {
    if !ready() {
        return;
    }
    let hardlinks = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks");
    assert_eq!(
        hardlinks.as_deref().map(str::trim).ok(),
        Some("1"),
        "MemFs models fs.protected_hardlinks = 1; this host's setting differs"
    );
    let w = Work::new();
    let fs = MemFs::new();
    let mount = Mount::new(fs.clone())
        .trust_client_ids(ClientIds::new(nobody()).no_root_squash(true))
        .allow_setid(true);
    let _s = Served::router(mount, &w.mnt());
    check(run_table(&Config {
        name: "MemFs, trusted ids, no root squash, allow setid",
        served: Store::Mem(fs),
        local: w.local(),
        mnt: w.mnt(),
        whos: all(),
        oracle: &|_, who| Oracle::As(who.caller.clone()),
        nosuid: false,
        through_mount: true,
    }));
}

/// The original suite's case that needed a non-root server, with the server
/// as root and `--as nobody`: after `chmod 0`, `access(W_OK)` is refused
/// (and every mode's access and open answers are the local disk's for
/// nobody). The mount runs without `default_permissions`, so that the
/// server, not the kernel, answers.
#[test]
fn as_nobody_chmod_then_access() {
    if !ready() {
        return;
    }
    let w = Work::new();
    let nobody = Identity::of_user("nobody").unwrap_or_else(|e| panic!("{e}"));
    for d in [w.root(), w.local()] {
        std::os::unix::fs::chown(&d, Some(nobody.uid()), Some(nobody.gid()))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut a = spockfs_tests::axum_args(&w.root());
    a.as_user = Some("nobody".into());
    let _s = Served::axum(a, &w.mnt(), false);
    // The same sequence on both sides: create, chmod MODE, then access and
    // open with each mode; locally as nobody, through the mount as root.
    let seq = |base: &Path, mode: u32| -> Vec<String> {
        let f = base.join(format!("f{mode:o}"));
        let mut out = Vec::new();
        std::fs::write(&f, b"data").unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        chmod(&f, mode);
        let md = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{e}"));
        out.push(format!(
            "mode {:o} owner {}:{}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        ));
        for (name, m) in [
            ("F_OK", libc::F_OK),
            ("R_OK", libc::R_OK),
            ("W_OK", libc::W_OK),
            ("X_OK", libc::X_OK),
        ] {
            let r = rustix::fs::access(&f, rustix::fs::Access::from_bits_retain(m as _))
                .map_err(|e| e.raw_os_error());
            out.push(format!("access {name}: {}", errno_name(r)));
        }
        for (name, fl) in [("O_RDONLY", RD), ("O_WRONLY", WR), ("O_RDWR", RW)] {
            let r = rustix::fs::open(
                &f,
                rustix::fs::OFlags::from_bits_retain((fl | libc::O_CLOEXEC) as _),
                rustix::fs::Mode::empty(),
            )
            .map(drop)
            .map_err(|e| e.raw_os_error());
            out.push(format!("open {name}: {}", errno_name(r)));
        }
        out
    };
    let mut report = String::new();
    for mode in [0, 0o400, 0o200, 0o100, 0o700] {
        let local = as_id(&nobody, || seq(&w.local(), mode));
        let mount = seq(&w.mnt(), mode);
        if mode == 0 {
            assert!(
                mount.iter().any(|l| l == "access W_OK: EACCES"),
                "chmod 0 then access(W_OK) through the mount of a server acting as nobody: {mount:?}"
            );
        }
        if local != mount {
            let _ = writeln!(
                report,
                "  chmod {mode:o}:\n    local {local:?}\n    mount {mount:?}"
            );
        }
    }
    check(if report.is_empty() {
        report
    } else {
        format!("--as nobody diverges from the local disk as nobody:\n{report}")
    });
}
