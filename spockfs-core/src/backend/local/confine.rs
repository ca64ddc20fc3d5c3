//! Confinement, in one file to review: how a request's path becomes an fd
//! beneath the root and never anything else. The root opened (and
//! re-opened after a removal) with no symlink followed, every lookup under
//! it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, the `/proc` check, and the calls made through
//! `/proc/self/fd/N` (chmod of the object itself, linking an anonymous
//! file).

use super::{fstat, io_err, LocalFs, O_BASE};
use crate::backend::{mode, Stat};
use crate::{Errno, FsPath, FsResult};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// The open root directory, and the one that replaced it if it was removed
/// and then restored. A replaced fd stays open (and unused) while the
/// `LocalFs` lives: requests in flight may still hold it, and closing it
/// could let its number be reused under them.
pub(super) struct RootFd {
    fd: OwnedFd,
    next: OnceLock<Box<RootFd>>,
}

impl RootFd {
    pub(super) fn new(fd: OwnedFd) -> RootFd {
        RootFd {
            fd,
            next: OnceLock::new(),
        }
    }
}

/// True if `fd` is on a filesystem whose `getattr` of an inode in memory
/// never waits on I/O: the local disk filesystems, tmpfs, and overlayfs
/// (which asks the layer below; containers run on it). Not FUSE, NFS,
/// CephFS or anything else that may revalidate over a network.
fn is_local_disk(fd: &impl AsFd) -> bool {
    const LOCAL: [i64; 7] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0xCA45_1A4E, // bcachefs
        0x794C_7630, // overlayfs
    ];
    rustix::fs::fstatfs(fd).is_ok_and(|s| LOCAL.contains(&s.f_type))
}

/// True if `fd` is a directory that has been removed.
fn is_removed(fd: &impl AsFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

impl LocalFs {
    pub(super) fn root(&self) -> FsResult<BorrowedFd<'_>> {
        let mut cur = match self.root.get() {
            Some(r) => r,
            None => {
                let fd = open_root(&self.resolved)?;
                // A concurrent first request may have won; either fd is the root.
                let _ = self.root.set(RootFd::new(fd));
                self.root.get().ok_or(Errno::EIO)?
            }
        };
        while let Some(next) = cur.next.get() {
            cur = next;
        }
        if self.recheck_due() {
            let mut gone = is_removed(&cur.fd);
            if gone {
                // Removed: serve the directory now at the path, if there is one.
                if let Ok(fd) = open_root(&self.resolved) {
                    if !is_removed(&fd) {
                        tracing::warn!(root = %self.path.display(),
                            "the root directory was removed and is back: serving the new one");
                        let _ = cur.next.set(Box::new(RootFd::new(fd)));
                        while let Some(next) = cur.next.get() {
                            cur = next;
                        }
                        gone = false;
                    }
                }
            }
            self.gone.store(gone, Ordering::Relaxed);
        }
        if self.gone.load(Ordering::Relaxed) {
            // Not even the removed directory's own attributes.
            return Err(Errno::ENOENT);
        }
        Ok(cur.fd.as_fd())
    }

    /// The root fd, if using it cannot block or change anything: opened
    /// already, never replaced, not removed, not due for the once-a-second
    /// removal check (which may reopen it), and on a local disk filesystem.
    pub(super) fn root_nowait(&self) -> Option<BorrowedFd<'_>> {
        let cur = self.root.get()?;
        if cur.next.get().is_some() || self.gone.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.created.elapsed().as_millis() as u64;
        if now >= self.next_check.load(Ordering::Relaxed) {
            return None;
        }
        let local = *self.local_disk.get_or_init(|| is_local_disk(&cur.fd));
        local.then(|| cur.fd.as_fd())
    }

    /// True at most once a second (a clock read per call otherwise).
    fn recheck_due(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let next = self.next_check.load(Ordering::Relaxed);
        now >= next
            && self
                .next_check
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Opens `rel` (relative to the root, empty for the root itself)
    /// without following any symlink on the way or at the end.
    pub(super) fn open_rel(&self, rel: &[u8], flags: OFlags) -> FsResult<OwnedFd> {
        let root = self.root()?;
        if rel.is_empty() {
            return rustix::fs::openat(root, c".", flags | O_BASE, Mode::empty()).map_err(io_err);
        }
        resolve_beneath(root, rel, flags | O_BASE | OFlags::NOFOLLOW, Mode::empty())
    }

    /// The parent directory of `path` and its final name; for the root,
    /// the root and `"."` so that `*at` calls act on the root itself.
    pub(super) fn at<'p>(&self, path: &'p FsPath) -> FsResult<(Dir<'_>, &'p [u8])> {
        match path.parent_and_name() {
            None => Ok((Dir::Borrowed(self.root()?), b".")),
            Some((parent, name)) => Ok((self.dir(parent)?, name)),
        }
    }

    /// Like [`at`](Self::at) for operations that need a real name (create,
    /// remove, rename): the root yields `root_err`.
    pub(super) fn at_named<'p>(
        &self,
        path: &'p FsPath,
        root_err: Errno,
    ) -> FsResult<(Dir<'_>, &'p [u8])> {
        match path.parent_and_name() {
            None => Err(root_err),
            Some((parent, name)) => Ok((self.dir(parent)?, name)),
        }
    }

    pub(super) fn dir(&self, rel: &[u8]) -> FsResult<Dir<'_>> {
        let root = self.root()?;
        if rel.is_empty() {
            return Ok(Dir::Borrowed(root));
        }
        resolve_beneath(
            root,
            rel,
            O_BASE | OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map(Dir::Owned)
    }

    /// An `O_PATH` fd on the object itself, refused if it is a symlink.
    pub(super) fn object_path_fd(
        &self,
        path: &FsPath,
        symlink_err: Errno,
    ) -> FsResult<(OwnedFd, Stat)> {
        let fd = self.open_rel(path.relative(), OFlags::PATH)?;
        let st = fstat(&fd)?;
        if st.is_symlink() {
            return Err(symlink_err);
        }
        Ok((fd, st))
    }

    pub(super) fn open_regular(&self, path: &FsPath, flags: OFlags) -> FsResult<(OwnedFd, Stat)> {
        let fd = self.open_rel(path.relative(), flags | OFlags::NONBLOCK)?;
        let st = fstat(&fd)?;
        if st.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !st.is_file() {
            return Err(Errno::EINVAL);
        }
        Ok((fd, st))
    }
}

pub(super) enum Dir<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Borrowed(fd) => *fd,
            Dir::Owned(fd) => fd.as_fd(),
        }
    }
}

/// `openat2` rejects `O_PATH` combined with anything but `O_CLOEXEC`,
/// `O_DIRECTORY` and `O_NOFOLLOW`.
fn path_safe(flags: OFlags) -> OFlags {
    if flags.contains(OFlags::PATH) {
        flags & (OFlags::PATH | OFlags::CLOEXEC | OFlags::DIRECTORY | OFlags::NOFOLLOW)
    } else {
        flags
    }
}

fn resolve_beneath(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    mode: Mode,
) -> FsResult<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = path_safe(flags);
    // EAGAIN: the kernel saw a concurrent rename and could not prove the
    // lookup stayed beneath the root; it is safe to retry.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            // Escaping the root (only possible through a symlink, which
            // NO_SYMLINKS already refuses with ELOOP) must never look like a
            // cross-device error.
            Err(rustix::io::Errno::XDEV) => return Err(Errno::EACCES),
            r => return r.map_err(io_err),
        }
    }
}

/// Opens the directory `name` (one component) beneath `dir` as an `O_PATH`
/// fd without following a symlink, with its `fstat`.
pub(crate) fn open_dir_beneath(dir: &impl AsFd, name: &[u8]) -> FsResult<(OwnedFd, Stat)> {
    let fd = resolve_beneath(
        dir.as_fd(),
        name,
        O_BASE | OFlags::PATH | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    let st = fstat(&fd)?;
    Ok((fd, st))
}

/// The configured root path as [`LocalFs::new`] resolves it: absolute,
/// with the longest prefix that exists now canonicalized (symlinks
/// resolved) and the rest, if any, appended as given.
pub(super) fn resolve_at_start(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(d) => d.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut out) = std::fs::canonicalize(existing) {
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Opens the root directory at `resolved` (see [`resolve_at_start`])
/// without following any symlink in any component (`ELOOP`), as a
/// directory (`ENOTDIR` otherwise), and proves that confined resolution
/// works beneath it.
fn open_root(resolved: &Path) -> FsResult<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        resolved,
        path_safe(O_BASE | OFlags::PATH | OFlags::DIRECTORY),
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => {
            tracing::error!(root = %resolved.display(),
                "openat2 unavailable (Linux < 5.6): refusing to serve this root");
            return Err(Errno::ENOSYS);
        }
        Err(rustix::io::Errno::LOOP) => {
            tracing::warn!(root = %resolved.display(),
                "the root path now goes through a symlink: not following it");
            return Err(Errno::ELOOP);
        }
        Err(e) => return Err(io_err(e)),
    };
    // Fail closed: prove openat2 with RESOLVE_BENEATH works here.
    if let Err(e) = rustix::fs::openat2(
        &fd,
        c".",
        OFlags::CLOEXEC | OFlags::PATH,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        tracing::error!(root = %resolved.display(), error = %e,
            "openat2(RESOLVE_BENEATH) unavailable: refusing to serve this root");
        return Err(Errno::ENOSYS);
    }
    check_procfs()?;
    Ok(fd)
}

pub(super) fn check_procfs() -> FsResult<()> {
    static CHECK: OnceLock<Result<(), Errno>> = OnceLock::new();
    *CHECK.get_or_init(|| {
        const PROC_SUPER_MAGIC: i64 = 0x9fa0;
        let fd = rustix::fs::open(
            "/proc/self/fd",
            O_BASE | OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let sfs = rustix::fs::fstatfs(&fd).map_err(io_err)?;
        if sfs.f_type as i64 != PROC_SUPER_MAGIC {
            tracing::error!("/proc is not procfs: refusing to serve");
            return Err(Errno::ENOSYS);
        }
        Ok(())
    })
}

/// The `/proc/self/fd/N` path of an fd: a magic link to the object itself.
pub(super) fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Sets the exact permission bits on an object named `name` in `dir` that we
/// just created (the process umask masked them), refusing to touch it if it
/// has meanwhile been replaced by a symlink. Of the bits the kernel gave
/// it, those in `inherited` stay even if `mode` lacks them (a directory's
/// set-group-ID bit, inherited from a set-group-ID parent as `mkdir(2)`
/// does whatever the mode).
pub(super) fn fix_mode(dir: &impl AsFd, name: &[u8], mode: u32, inherited: u32) -> FsResult<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        O_BASE | OFlags::PATH | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let st = fstat(&fd)?;
    if st.is_symlink() {
        return Err(Errno::EEXIST);
    }
    let mode = (mode & mode::PERMS) | (st.mode & inherited);
    if st.mode & mode::PERMS == mode {
        return Ok(());
    }
    chmod_fd(&fd, mode)
}

pub(super) fn chmod_fd(fd: &OwnedFd, mode: u32) -> FsResult<()> {
    check_procfs()?;
    rustix::fs::chmod(proc_path(fd), Mode::from_raw_mode(mode & mode::PERMS)).map_err(io_err)
}

pub(super) fn link_proc(fd: &OwnedFd, dir: &OwnedFd, name: &[u8]) -> FsResult<()> {
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path(fd),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::super::seccomp::{on_thread_denying, Deny, When};
    use super::*;
    use crate::Backend;

    /// Runs `f` on a thread of its own on which `openat2` fails with
    /// `ENOSYS`, as on a kernel without it (Linux < 5.6): every call, or
    /// (`only_beneath`) only calls relative to a directory fd, not to
    /// `AT_FDCWD`.
    fn without_openat2<T: Send + 'static>(
        only_beneath: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let when = if only_beneath {
            When::ArgNot(0, libc::AT_FDCWD as u32)
        } else {
            When::Always
        };
        let deny = Deny {
            nr: libc::SYS_openat2,
            when,
            errno: libc::ENOSYS,
        };
        on_thread_denying(&[deny], f)
    }
    /// Without `openat2` the root is refused (`ENOSYS`), eagerly by
    /// `LocalFs::open` and on every request of a lazily opened `LocalFs`:
    /// nothing falls back to unconfined resolution.
    #[test]
    fn no_openat2_no_root() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().to_path_buf();
        let (open, lazy) = without_openat2(false, move || {
            let open = LocalFs::open(&path).map(drop).map_err(|e| e.kind());
            let lazy = LocalFs::new(&path).getattr(&FsPath::root());
            (open, lazy.map(drop))
        });
        assert_eq!(open, Err(std::io::ErrorKind::Unsupported));
        assert_eq!(lazy, Err(Errno::ENOSYS));
        // The same directory, with openat2.
        assert!(LocalFs::open(dir.path()).is_ok());
    }

    /// A root that opens but beneath which `openat2` does not work is
    /// refused too (`ENOSYS`): confinement is proved before anything is
    /// served.
    #[test]
    fn root_refused_unless_resolve_beneath_works() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let resolved = resolve_at_start(dir.path());
        let r = without_openat2(true, move || open_root(&resolved).map(drop));
        assert_eq!(r, Err(Errno::ENOSYS));
        assert!(open_root(&resolve_at_start(dir.path())).is_ok());
    }

    /// The non-blocking GETATTR answers exactly what `getattr` answers, or
    /// nothing: never through a symlink, never outside the root, never
    /// across a mount, never a different error.
    #[test]
    fn getattr_nowait_is_getattr_or_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().join("root");
        super::super::resolution_tree(&root);
        let fs = LocalFs::open(&root).unwrap_or_else(|e| panic!("{e}"));
        let p = |s: &str| FsPath::from_url_path(s).unwrap_or_else(|e| panic!("{e:?}"));
        // Within the second after the root's check: the fast path is open.
        let _ = fs.root();
        let on_local_disk = is_local_disk(&fs.root().unwrap_or_else(|e| panic!("{e:?}")));
        for (path, fast) in [
            ("/", true),
            ("/d", true),
            ("/d/e", true),
            ("/d/f", true),
            ("/ld", true),        // the symlink itself, not followed
            ("/d/missing", true), // a cached negative entry, after getattr
            ("/missing/x", true),
            ("/ld/f", false),   // through a symlink: left to getattr
            ("/up/etc", false), // out of the root: left to getattr
            ("/d/f/x", false),  // ENOTDIR: left to getattr
            ("/d/", false),     // trailing slash: left to getattr
        ] {
            let path = p(path);
            let slow = fs.getattr(&path);
            let quick = fs.getattr_nowait(&path);
            if let Some(q) = &quick {
                assert_eq!(
                    q.as_ref().map(|s| (s.ino, s.mode, s.size)),
                    slow.as_ref().map(|s| (s.ino, s.mode, s.size)),
                    "{path:?}"
                );
            }
            if on_local_disk {
                assert_eq!(quick.is_some(), fast, "{path:?}: {quick:?} vs {slow:?}");
            }
        }
    }
}
