//! Differential confinement fuzzing, after cap-std's fuzzer and Go's
//! `os.Root` tests: proptest generates small trees full of symlinks
//! (absolute and relative, out of the root and inside it, dangling, loops,
//! `.`/`..`, trailing slashes) and random sequences of SpockFS requests
//! over paths through them. Each request goes over real HTTP to the axum
//! app serving one copy of the tree; the reference semantics the server
//! promises are applied with direct syscalls to a mirror copy:
//!
//! - a symlink is never followed, in any position: one in a parent
//!   position is `ELOOP`, a final one is acted on itself (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`) or refused;
//! - `path/` names a directory (the engine's trailing-slash precheck);
//! - otherwise the Linux syscall's answer, taken from the kernel on the
//!   mirror, after walking the parents with `lstat` (so the mirror itself
//!   never follows a link either).
//!
//! After every request: same status and `X-Spock-errno`, same read data,
//! same tree inside the root, and nothing outside the roots changed
//! (content, mode, owner, times, entries). Any difference fails and
//! proptest shrinks it to a minimal sequence.
//!
//! `SPOCKFS_DIFF_CASES` (default 3000, about 15 s) sets the number of sequences.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use spockfs_core::Errno;
use spockfs_tests::tree::{rewrite_base, snapshot, Node};
use spockfs_tests::{axum_args, start_axum, Client};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const NAMES: &[&str] = &["a", "b", "l", "m"];

/// Where a generated symlink points.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// `$BASE/outside` (absolute, out of the root).
    AbsOutside,
    /// `$BASE/outside/secret`.
    AbsSecret,
    /// `$BASE/root/a` (absolute, but inside: still never followed).
    AbsInside,
    /// `../outside` from the root, `../../outside` one level down.
    RelOutside,
    /// `../outside/secret`-style, to a file.
    RelSecret,
    /// `a` (relative, inside).
    RelInside,
    /// `nowhere`.
    Dangling,
    /// Points at itself.
    Loop,
    /// `.`
    Dot,
    /// `..`
    DotDot,
    /// `a/` (trailing slash).
    Trailing,
    /// `/` — only as a string: never followed, never created as anything.
    Slash,
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(Link),
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        2 => Just(Entry::Dir),
        2 => prop::collection::vec(b'a'..b'e', 0..6).prop_map(Entry::File),
        4 => prop_oneof![
            Just(Link::AbsOutside),
            Just(Link::AbsSecret),
            Just(Link::AbsInside),
            Just(Link::RelOutside),
            Just(Link::RelSecret),
            Just(Link::RelInside),
            Just(Link::Dangling),
            Just(Link::Loop),
            Just(Link::Dot),
            Just(Link::DotDot),
            Just(Link::Trailing),
            Just(Link::Slash),
        ]
        .prop_map(Entry::Symlink),
    ]
}

/// A tree: entries at one or two levels, created in order when their
/// parent is a directory.
type Tree = Vec<(Vec<&'static str>, Entry)>;

fn tree() -> impl Strategy<Value = Tree> {
    prop::collection::vec(
        (
            prop::collection::vec(prop::sample::select(NAMES), 1..3),
            entry(),
        ),
        1..10,
    )
}

/// A request path: 0 to 3 components (from the tree's names plus `x`,
/// which never exists, and `secret`/`outside`, which exist only outside),
/// maybe a trailing slash.
#[derive(Debug, Clone)]
struct P {
    comps: Vec<&'static str>,
    slash: bool,
}

impl P {
    /// A trailing slash (the root has none: "/" is the root).
    fn trailing(&self) -> bool {
        self.slash && !self.comps.is_empty()
    }

    fn url(&self) -> String {
        let mut s = String::new();
        for c in &self.comps {
            s.push('/');
            s.push_str(c);
        }
        if s.is_empty() || self.slash {
            s.push('/');
        }
        s
    }
}

fn path() -> impl Strategy<Value = P> {
    (
        prop::collection::vec(
            prop::sample::select(&["a", "b", "l", "m", "x", "secret", "outside"][..]),
            0..4,
        ),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(comps, slash)| P { comps, slash })
}

#[derive(Debug, Clone)]
enum Op {
    Getattr(P),
    Readdir(P),
    Get(P, bool),
    PutWhole(P, Vec<u8>),
    PutRange(P),
    Post(P),
    Mkdir(P),
    Rmdir(P),
    Delete(P),
    Symlink(P, &'static str),
    Readlink(P),
    Chmod(P),
    Chown(P),
    Truncate(P),
    Fallocate(P),
    Rename(P, P),
    Link(P, P),
    Setxattr(P),
    Getxattr(P),
    Removexattr(P),
    Utimens(P),
    Open(P, bool),
    Access(P),
    Mkfifo(P),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        path().prop_map(Op::Getattr),
        path().prop_map(Op::Readdir),
        (path(), any::<bool>()).prop_map(|(p, r)| Op::Get(p, r)),
        (path(), prop::collection::vec(b'p'..b't', 0..5)).prop_map(|(p, b)| Op::PutWhole(p, b)),
        path().prop_map(Op::PutRange),
        path().prop_map(Op::Post),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Rmdir),
        path().prop_map(Op::Delete),
        (
            path(),
            prop::sample::select(&["../outside", "/etc", "a", "x/", ".."][..])
        )
            .prop_map(|(p, t)| Op::Symlink(p, t)),
        path().prop_map(Op::Readlink),
        path().prop_map(Op::Chmod),
        path().prop_map(Op::Chown),
        path().prop_map(Op::Truncate),
        path().prop_map(Op::Fallocate),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        path().prop_map(Op::Setxattr),
        path().prop_map(Op::Getxattr),
        path().prop_map(Op::Removexattr),
        path().prop_map(Op::Utimens),
        (path(), any::<bool>()).prop_map(|(p, w)| Op::Open(p, w)),
        path().prop_map(Op::Access),
        path().prop_map(Op::Mkfifo),
    ]
}

// ---------------------------------------------------------------------
// Trees on disk.

/// base/{root,outside,above}: the served root, and what must never change.
fn plant_outside(base: &Path) {
    let out = base.join("outside");
    std::fs::create_dir_all(out.join("odir")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(base.join("root")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out.join("secret"), b"SECRET").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out.join("odir/deep"), b"DEEP SECRET").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(base.join("above"), b"ABOVE").unwrap_or_else(|e| panic!("{e}"));
    rustix::fs::setxattr(
        out.join("secret"),
        "user.k",
        b"outside",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn link_target(base: &Path, depth: usize, name: &str, l: Link) -> PathBuf {
    let up = "../".repeat(depth);
    match l {
        Link::AbsOutside => base.join("outside"),
        Link::AbsSecret => base.join("outside/secret"),
        Link::AbsInside => base.join("root/a"),
        Link::RelOutside => format!("{up}../outside").into(),
        Link::RelSecret => format!("{up}../outside/secret").into(),
        Link::RelInside => "a".into(),
        Link::Dangling => "nowhere".into(),
        Link::Loop => name.into(),
        Link::Dot => ".".into(),
        Link::DotDot => "..".into(),
        Link::Trailing => "a/".into(),
        Link::Slash => "/".into(),
    }
}

/// Empties the root (keeping the directory: the server holds it open)
/// and plants `tree` in it.
fn plant(base: &Path, tree: &Tree) {
    use std::os::unix::fs::PermissionsExt;
    let root = base.join("root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{e}")) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{e}"));
        if m.is_dir() {
            std::fs::remove_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        } else {
            std::fs::remove_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    for (comps, e) in tree {
        let (name, parents) = comps.split_last().unwrap_or_else(|| panic!("empty"));
        let parent = parents.iter().fold(root.clone(), |p, c| p.join(c));
        let parent_is_dir = std::fs::symlink_metadata(&parent)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let p = parent.join(name);
        if !parent_is_dir || std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match e {
            Entry::Dir => std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{e}")),
            Entry::File(d) => std::fs::write(&p, d).unwrap_or_else(|e| panic!("{e}")),
            Entry::Symlink(l) => {
                std::os::unix::fs::symlink(link_target(base, parents.len(), name, *l), &p)
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }
}

/// Everything outside the root, times included (ctime catches chmod,
/// chown, xattr and utimens that content would not show).
fn outside_state(base: &Path) -> BTreeMap<PathBuf, (Node, i64, i64, i64, i64)> {
    let mut out = BTreeMap::new();
    let root = base.join("root");
    let mut stack = vec![base.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == root {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let node = snapshot(&p, base)
            .remove(&b""[..])
            .unwrap_or_else(|| panic!("snapshot"));
        out.insert(
            p.clone(),
            (node, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{e}")) {
                stack.push(e.unwrap_or_else(|e| panic!("{e}")).path());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------
// The reference semantics, on the mirror.

/// What a request should answer.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    /// Success with this status, and maybe a body to compare.
    Ok(u16, Option<Vec<u8>>),
    /// Failure with this errno.
    Err(Errno),
}

fn err(e: rustix::io::Errno) -> Errno {
    Errno::from(e)
}

fn io(e: &std::io::Error) -> Errno {
    err(rustix::io::Errno::from_raw_os_error(
        e.raw_os_error().unwrap_or(libc::EIO),
    ))
}

/// Walks the parents of `p` under `root` with lstat: the kernel's answer
/// for a confined lookup that never follows a symlink.
fn parent(root: &Path, p: &P) -> Result<PathBuf, Errno> {
    let mut cur = root.to_path_buf();
    let n = p.comps.len().saturating_sub(1);
    for c in &p.comps[..n] {
        cur = cur.join(c);
        let m = std::fs::symlink_metadata(&cur).map_err(|e| io(&e))?;
        if m.file_type().is_symlink() {
            return Err(Errno::ELOOP);
        }
        if !m.is_dir() {
            return Err(Errno::ENOTDIR);
        }
    }
    Ok(cur)
}

/// The object's path on the mirror (its parents checked), or the root.
fn object(root: &Path, p: &P) -> Result<PathBuf, Errno> {
    let dir = parent(root, p)?;
    Ok(match p.comps.last() {
        Some(name) => dir.join(name),
        None => dir,
    })
}

fn lstat(root: &Path, p: &P) -> Result<std::fs::Metadata, Errno> {
    let f = object(root, p)?;
    std::fs::symlink_metadata(f).map_err(|e| io(&e))
}

/// The engine's trailing-slash rule: `p/` must be a directory; for
/// operations on non-directories a missing one is `ENOTDIR` too.
fn precheck(root: &Path, p: &P, not_dir: bool) -> Result<(), Errno> {
    if !p.slash || p.comps.is_empty() {
        return Ok(());
    }
    match lstat(root, p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Errno::ENOTDIR),
        Err(Errno::ENOENT) if not_dir => Err(Errno::ENOTDIR),
        Err(_) => Ok(()),
    }
}

/// Opens the final object without following it (the mirror's parents are
/// already known to be real directories).
fn open_nofollow(root: &Path, p: &P, flags: OFlags) -> Result<rustix::fd::OwnedFd, Errno> {
    let f = object(root, p)?;
    rustix::fs::open(
        &f,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(err)
}

/// A regular file opened for GET/PUT/TRUNCATE/FALLOCATE: the kernel's
/// answer to a non-blocking `O_NOFOLLOW` open (ELOOP for a symlink, ENXIO
/// for a FIFO without reader, ...), then a directory is EISDIR and
/// anything else but a regular file EINVAL (a FIFO is never read).
fn open_regular(root: &Path, p: &P, flags: OFlags) -> Result<rustix::fd::OwnedFd, Errno> {
    let fd = open_nofollow(root, p, flags)?;
    let m = lstat(root, p)?;
    if m.is_dir() {
        return Err(Errno::EISDIR);
    }
    if !m.is_file() {
        return Err(Errno::EINVAL);
    }
    Ok(fd)
}

fn done(r: Result<(), Errno>, status: u16) -> Want {
    match r {
        Ok(()) => Want::Ok(status, None),
        Err(e) => Want::Err(e),
    }
}

fn named(p: &P, root_err: Errno) -> Result<(), Errno> {
    if p.comps.is_empty() {
        Err(root_err)
    } else {
        Ok(())
    }
}

/// Applies `op` to the mirror rooted at `base/root` and says what the
/// server should answer.
fn reference(base: &Path, op: &Op) -> Want {
    let root = &base.join("root");
    match op {
        Op::Getattr(p) => match precheck(root, p, false).and_then(|_| lstat(root, p)) {
            Ok(m) => Want::Ok(
                200,
                Some(format!("{:o} {}", m.mode(), m.size()).into_bytes()),
            ),
            Err(e) => Want::Err(e),
        },
        Op::Readdir(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| open_nofollow(root, p, OFlags::RDONLY | OFlags::DIRECTORY));
            match r {
                Ok(_) => {
                    let dir = object(root, p).unwrap_or_else(|e| panic!("{e}"));
                    let mut names: Vec<Vec<u8>> = std::fs::read_dir(dir)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .map(|e| {
                            e.unwrap_or_else(|e| panic!("{e}"))
                                .file_name()
                                .as_bytes()
                                .to_vec()
                        })
                        .collect();
                    names.sort();
                    Want::Ok(200, Some(names.join(&b'\n')))
                }
                Err(e) => Want::Err(e),
            }
        }
        Op::Get(p, ranged) => {
            let r = precheck(root, p, true).and_then(|_| open_regular(root, p, OFlags::RDONLY));
            match r {
                Ok(_) => {
                    let data = std::fs::read(object(root, p).unwrap_or_else(|e| panic!("{e}")))
                        .unwrap_or_else(|e| panic!("{e}"));
                    if *ranged {
                        Want::Ok(206, Some(data.into_iter().skip(1).take(2).collect()))
                    } else {
                        Want::Ok(200, Some(data))
                    }
                }
                Err(e) => Want::Err(e),
            }
        }
        Op::PutWhole(p, data) => {
            let r = precheck(root, p, true)
                .and_then(|_| named(p, Errno::EISDIR))
                .and_then(|_| object(root, p));
            let f = match r {
                Ok(f) => f,
                Err(e) => return Want::Err(e),
            };
            let before = std::fs::symlink_metadata(&f).ok();
            if before.as_ref().is_some_and(|m| m.is_dir()) {
                return Want::Err(Errno::EISDIR);
            }
            // Temporary + rename: a symlink or FIFO there is replaced, a
            // regular file keeps its mode...
            let mode = before
                .as_ref()
                .filter(|m| m.is_file())
                .map_or(0o644, |m| m.mode() & 0o7777);
            let tmp = f.with_file_name(".diff-tmp");
            std::fs::write(&tmp, data).unwrap_or_else(|e| panic!("{e}"));
            if let Some(m) = before.as_ref().filter(|m| m.is_file()) {
                // ...and its owner, when allowed (always, as root).
                let _ = rustix::fs::chown(
                    &tmp,
                    Some(rustix::fs::Uid::from_raw(m.uid())),
                    Some(rustix::fs::Gid::from_raw(m.gid())),
                );
            }
            // chown first: it clears setuid/setgid, which chmod restores.
            rustix::fs::chmod(&tmp, Mode::from_raw_mode(mode)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::rename(&tmp, &f).unwrap_or_else(|e| panic!("{e}"));
            Want::Ok(if before.is_some() { 200 } else { 201 }, None)
        }
        Op::PutRange(p) => {
            let r = precheck(root, p, true).and_then(|_| open_regular(root, p, OFlags::WRONLY));
            done(
                r.and_then(|fd| rustix::io::pwrite(&fd, b"XY", 1).map(drop).map_err(err)),
                200,
            )
        }
        Op::Post(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| named(p, Errno::EISDIR))
                .and_then(|_| {
                    let f = object(root, p)?;
                    match rustix::fs::open(
                        &f,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o640),
                    ) {
                        Ok(fd) => rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o640)).map_err(err),
                        Err(rustix::io::Errno::EXIST) => {
                            let fd = open_regular(root, p, OFlags::WRONLY | OFlags::TRUNC)?;
                            drop(fd);
                            Ok(())
                        }
                        Err(e) => Err(err(e)),
                    }
                });
            done(r, 201)
        }
        Op::Mkdir(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| named(p, Errno::EEXIST))
                .and_then(|_| object(root, p))
                .and_then(|f| {
                    rustix::fs::mkdir(&f, Mode::from_raw_mode(0o750)).map_err(err)?;
                    rustix::fs::chmod(&f, Mode::from_raw_mode(0o750)).map_err(err)
                });
            done(r, 201)
        }
        Op::Rmdir(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| named(p, Errno::EBUSY))
                .and_then(|_| object(root, p))
                .and_then(|f| rustix::fs::unlinkat(CWD, &f, AtFlags::REMOVEDIR).map_err(err));
            done(r, 200)
        }
        Op::Delete(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| named(p, Errno::EISDIR))
                .and_then(|_| object(root, p))
                .and_then(|f| rustix::fs::unlinkat(CWD, &f, AtFlags::empty()).map_err(err));
            done(r, 200)
        }
        Op::Symlink(p, t) => {
            let r = precheck(root, p, true)
                .and_then(|_| named(p, Errno::EEXIST))
                .and_then(|_| object(root, p))
                .and_then(|f| rustix::fs::symlink(*t, &f).map_err(err));
            done(r, 201)
        }
        Op::Readlink(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| object(root, p))
                .and_then(|f| {
                    rustix::fs::readlink(&f, Vec::new())
                        .map(|t| rewrite_base(t.as_bytes(), base))
                        .map_err(err)
                });
            match r {
                Ok(t) => Want::Ok(200, Some(t)),
                Err(e) => Want::Err(e),
            }
        }
        Op::Chmod(p) => {
            let r = precheck(root, p, false).and_then(|_| {
                let m = lstat(root, p)?;
                if m.file_type().is_symlink() {
                    return Err(Errno::EOPNOTSUPP);
                }
                rustix::fs::chmod(object(root, p)?, Mode::from_raw_mode(0o700)).map_err(err)
            });
            done(r, 200)
        }
        Op::Chown(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| object(root, p))
                .and_then(|f| {
                    rustix::fs::chownat(
                        CWD,
                        &f,
                        Some(rustix::fs::Uid::from_raw(1)),
                        Some(rustix::fs::Gid::from_raw(2)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(err)
                });
            done(r, 200)
        }
        Op::Truncate(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| open_regular(root, p, OFlags::WRONLY))
                .and_then(|fd| rustix::fs::ftruncate(&fd, 3).map_err(err));
            done(r, 200)
        }
        Op::Fallocate(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| open_regular(root, p, OFlags::WRONLY))
                .and_then(|fd| {
                    rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, 10)
                        .map_err(err)
                });
            done(r, 200)
        }
        Op::Rename(to, from) => {
            let r = (|| {
                if to.trailing() || from.trailing() {
                    let m = lstat(root, from)?;
                    if !m.is_dir() {
                        return Err(Errno::ENOTDIR);
                    }
                    precheck(root, to, false)?;
                }
                named(from, Errno::EBUSY)?;
                let a = object(root, from)?;
                named(to, Errno::EBUSY)?;
                let b = object(root, to)?;
                rustix::fs::rename(&a, &b).map_err(err)
            })();
            done(r, 200)
        }
        Op::Link(to, existing) => {
            let r = (|| {
                precheck(root, to, true)?;
                precheck(root, existing, true)?;
                named(existing, Errno::EPERM)?;
                let a = object(root, existing)?;
                named(to, Errno::EEXIST)?;
                let b = object(root, to)?;
                rustix::fs::linkat(CWD, &a, CWD, &b, AtFlags::empty()).map_err(err)
            })();
            done(r, 201)
        }
        Op::Setxattr(p) => {
            let r = precheck(root, p, false).and_then(|_| {
                let m = lstat(root, p)?;
                if m.file_type().is_symlink() {
                    return Err(Errno::EPERM);
                }
                rustix::fs::lsetxattr(
                    object(root, p)?,
                    "user.k",
                    b"v",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(err)
            });
            done(r, 200)
        }
        Op::Getxattr(p) => {
            let r = precheck(root, p, false).and_then(|_| {
                let mut buf = vec![0u8; 100];
                let n =
                    rustix::fs::lgetxattr(object(root, p)?, "user.k", &mut buf[..]).map_err(err)?;
                buf.truncate(n);
                Ok(buf)
            });
            match r {
                Ok(v) => Want::Ok(200, Some(v)),
                Err(e) => Want::Err(e),
            }
        }
        Op::Removexattr(p) => {
            let r = precheck(root, p, false).and_then(|_| {
                let m = lstat(root, p)?;
                if m.file_type().is_symlink() {
                    return Err(Errno::ENODATA);
                }
                rustix::fs::lremovexattr(object(root, p)?, "user.k").map_err(err)
            });
            done(r, 200)
        }
        Op::Utimens(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| lstat(root, p))
                .map(drop);
            done(r, 200)
        }
        Op::Open(p, write) => {
            let acc = if *write {
                OFlags::WRONLY
            } else {
                OFlags::RDONLY
            };
            let r = precheck(root, p, false).and_then(|_| open_nofollow(root, p, acc).map(drop));
            done(r, 200)
        }
        Op::Access(p) => {
            let r = precheck(root, p, false)
                .and_then(|_| lstat(root, p))
                .map(drop);
            done(r, 200)
        }
        Op::Mkfifo(p) => {
            let r = precheck(root, p, true)
                .and_then(|_| named(p, Errno::EEXIST))
                .and_then(|_| object(root, p))
                .and_then(|f| {
                    rustix::fs::mknodat(
                        CWD,
                        &f,
                        rustix::fs::FileType::Fifo,
                        Mode::from_raw_mode(0o600),
                        0,
                    )
                    .map_err(err)?;
                    rustix::fs::chmod(&f, Mode::from_raw_mode(0o600)).map_err(err)
                });
            done(r, 201)
        }
    }
}

// ---------------------------------------------------------------------
// The same request, over HTTP.

async fn serve(c: &Client, base: &Path, op: &Op) -> Want {
    let (m, p, hs, body): (&str, &P, Vec<(&str, String)>, Vec<u8>) = match op {
        Op::Getattr(p) => ("GETATTR", p, vec![], vec![]),
        Op::Readdir(p) => ("READDIR", p, vec![], vec![]),
        Op::Get(p, r) => (
            "GET",
            p,
            if *r {
                vec![("range", "bytes=1-2".into())]
            } else {
                vec![]
            },
            vec![],
        ),
        Op::PutWhole(p, d) => ("PUT", p, vec![], d.clone()),
        Op::PutRange(p) => (
            "PUT",
            p,
            vec![("content-range", "bytes=1-2".into())],
            b"XY".to_vec(),
        ),
        Op::Post(p) => ("POST", p, vec![("x-spock-mode", "416".into())], vec![]),
        Op::Mkdir(p) => ("MKDIR", p, vec![("x-spock-mode", "488".into())], vec![]),
        Op::Rmdir(p) => ("RMDIR", p, vec![], vec![]),
        Op::Delete(p) => ("DELETE", p, vec![], vec![]),
        Op::Symlink(p, t) => ("SYMLINK", p, vec![("x-spock-target", (*t).into())], vec![]),
        Op::Readlink(p) => ("READLINK", p, vec![], vec![]),
        Op::Chmod(p) => ("CHMOD", p, vec![("x-spock-mode", "448".into())], vec![]),
        Op::Chown(p) => (
            "CHOWN",
            p,
            vec![("x-spock-uid", "1".into()), ("x-spock-gid", "2".into())],
            vec![],
        ),
        Op::Truncate(p) => ("TRUNCATE", p, vec![("x-spock-size", "3".into())], vec![]),
        Op::Fallocate(p) => (
            "FALLOCATE",
            p,
            vec![("x-spock-mode", "0".into()), ("range", "bytes=0-9".into())],
            vec![],
        ),
        Op::Rename(to, from) => ("RENAME", to, vec![("x-spock-target", from.url())], vec![]),
        Op::Link(to, ex) => ("LINK", to, vec![("x-spock-target", ex.url())], vec![]),
        Op::Setxattr(p) => (
            "SETXATTR",
            p,
            vec![
                ("x-spock-target", "user.k".into()),
                ("x-spock-flag", "0".into()),
            ],
            b"v".to_vec(),
        ),
        Op::Getxattr(p) => (
            "GETXATTR",
            p,
            vec![
                ("x-spock-target", "user.k".into()),
                ("x-spock-size", "100".into()),
            ],
            vec![],
        ),
        Op::Removexattr(p) => (
            "REMOVEXATTR",
            p,
            vec![("x-spock-target", "user.k".into())],
            vec![],
        ),
        Op::Utimens(p) => (
            "UTIMENS",
            p,
            vec![
                ("x-spock-atime", "1000".into()),
                ("x-spock-mtime", "2000".into()),
            ],
            vec![],
        ),
        Op::Open(p, w) => (
            "OPEN",
            p,
            vec![("x-spock-flag", if *w { "1" } else { "0" }.into())],
            vec![],
        ),
        Op::Access(p) => ("ACCESS", p, vec![("x-spock-mode", "0".into())], vec![]),
        Op::Mkfifo(p) => (
            "MKNOD",
            p,
            vec![("x-spock-mode", "4480".into()), ("x-spock-dev", "0".into())],
            vec![],
        ),
    };
    let hv: Vec<(&str, &[u8])> = hs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let r = c.send(m, &p.url(), &hv, body).await;
    for leak in [&b"SECRET"[..], b"ABOVE"] {
        assert!(
            !r.body.windows(leak.len()).any(|w| w == leak),
            "{op:?} leaked outside content"
        );
    }
    if !r.status.is_success() {
        let e = Errno::from_name(r.errno()).unwrap_or_else(|| panic!("{op:?}: {r:?}"));
        assert_eq!(r.status, e.status(), "{op:?}: status vs errno");
        return Want::Err(e);
    }
    let body = match op {
        Op::Getattr(_) => Some(
            format!(
                "{:o} {}",
                r.num("x-spock-mode").unwrap_or(-1),
                r.num("x-spock-size").unwrap_or(-1)
            )
            .into_bytes(),
        ),
        Op::Readdir(_) => {
            let mut names: Vec<&[u8]> = r
                .body
                .split(|&b| b == b'\n')
                .filter(|n| !n.is_empty() && *n != b"." && *n != b"..")
                .collect();
            names.sort();
            Some(names.join(&b'\n'))
        }
        Op::Get(..) | Op::Getxattr(_) => Some(r.body.to_vec()),
        Op::Readlink(_) => Some(rewrite_base(&r.body, base)),
        _ => None,
    };
    Want::Ok(r.status.as_u16(), body)
}

fn fix_getattr_size(w: Want) -> Want {
    // Directory and symlink sizes are filesystem details (and a symlink's
    // size is its target's length, which differs between the two bases).
    match w {
        Want::Ok(s, Some(b)) if b.starts_with(b"4") || b.starts_with(b"12") => {
            let t = String::from_utf8_lossy(&b);
            let mode = t.split(' ').next().unwrap_or("").to_owned();
            Want::Ok(s, Some(mode.into_bytes()))
        }
        w => w,
    }
}

#[test]
fn random_sequences_match_the_reference_and_never_escape() {
    let cases: u32 = std::env::var("SPOCKFS_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let server_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mirror_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (sb, mb) = (
        server_dir.path().to_path_buf(),
        mirror_dir.path().to_path_buf(),
    );
    plant_outside(&sb);
    plant_outside(&mb);
    let (addr, running) = rt.block_on(start_axum(axum_args(&sb.join("root"))));
    let client = Client::new(&format!("http://{addr}/fs"));
    let outside_before = outside_state(&sb);
    let (seqs, ops, diverged) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let oks = AtomicU64::new(0);
    let start = std::time::Instant::now();

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    });
    let result = runner.run(
        &(tree(), prop::collection::vec(op(), 1..12)),
        |(tree, ops_seq)| {
            plant(&sb, &tree);
            plant(&mb, &tree);
            seqs.fetch_add(1, Ordering::Relaxed);
            for (i, op) in ops_seq.iter().enumerate() {
                ops.fetch_add(1, Ordering::Relaxed);
                let got = rt.block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        serve(&client, &sb, op),
                    )
                    .await
                });
                let Ok(got) = got else {
                    diverged.fetch_add(1, Ordering::Relaxed);
                    return Err(TestCaseError::fail(format!(
                        "step {i} {op:?}: no answer in 10 s\n  tree: {tree:?}\n  ops: {ops_seq:?}"
                    )));
                };
                let got = fix_getattr_size(got);
                let want = fix_getattr_size(reference(&mb, op));
                let fail = |what: String| {
                    diverged.fetch_add(1, Ordering::Relaxed);
                    Err(TestCaseError::fail(format!(
                        "step {i} {op:?}: {what}\n  tree: {tree:?}\n  ops: {ops_seq:?}"
                    )))
                };
                if matches!(got, Want::Ok(..)) {
                    oks.fetch_add(1, Ordering::Relaxed);
                }
                if got != want {
                    return fail(format!("server {got:?}, reference {want:?}"));
                }
                let (a, b) = (
                    snapshot(&sb.join("root"), &sb),
                    snapshot(&mb.join("root"), &mb),
                );
                if a != b {
                    let diff: Vec<_> = a
                        .iter()
                        .filter(|(k, v)| b.get(*k) != Some(*v))
                        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v, b.get(k)))
                        .collect();
                    let missing: Vec<_> = b
                        .keys()
                        .filter(|k| !a.contains_key(*k))
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    return fail(format!(
                        "trees differ: {diff:?}, only in mirror {missing:?}"
                    ));
                }
                if outside_state(&sb) != outside_before {
                    return fail("ESCAPE: the outside of the server's root changed".into());
                }
            }
            Ok(())
        },
    );
    drop(running);
    let (seqs, ops, diverged) = (
        seqs.load(Ordering::Relaxed),
        ops.load(Ordering::Relaxed),
        diverged.load(Ordering::Relaxed),
    );
    eprintln!(
        "confinement differential: {seqs} sequences, {ops} operations in {:.1?} \
         (shrinking included), {} succeeded, {diverged} divergent steps, outside unchanged: {}",
        start.elapsed(),
        oks.load(Ordering::Relaxed),
        outside_state(&sb) == outside_before
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(outside_state(&sb), outside_before, "ESCAPE");
    assert!(ops >= u64::from(cases), "too few operations ran");
}
