//! `LocalFs`: a directory on the local disk, every access confined to it.
//!
//! Confinement does not rely on string checks. The root is held open as an
//! `O_PATH` directory fd; every path is resolved relative to it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! so the kernel refuses `..` escapes, absolute paths and every symlink along
//! the way, atomically with the lookup (a directory swapped for a symlink
//! mid-request is caught by the kernel, not by us). The final component is
//! then acted on with `*at` calls and `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW`,
//! or through the fd `openat2` returned. Calls with no `*at` or no-follow
//! form (chmod of the object, xattrs) go through an `O_PATH` fd verified not
//! to be a symlink and `/proc/self/fd/N` (the technique cap-std and glibc
//! use), after checking at start that `/proc` is really procfs.
//!
//! If the kernel lacks `openat2` (Linux < 5.6), [`LocalFs::open`] fails and
//! a lazily opened `LocalFs` answers every request with `ENOSYS`: there is
//! no silent fallback to unconfined resolution.

use super::{
    mode, Backend, Devices, DirSink, DirStream, FileHandle, Owner, Replacement, SetId, SetTime,
    Stat, StatFs, XattrFlag, ST_NODEV,
};
use crate::{Errno, FsPath, FsResult};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A local directory served as a SpockFS root.
///
/// ```no_run
/// use spockfs_core::{LocalFs, Mount};
///
/// // Eager: fails now if the directory is missing or confinement is unavailable.
/// let fs = LocalFs::open("/var/www")?;
/// let mount = Mount::new(fs);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct LocalFs {
    path: PathBuf,
    /// `path` resolved when this `LocalFs` was made: absolute, every
    /// symlink that existed then resolved. Every open of the root (the
    /// first, and again after it was removed) uses this path and follows no
    /// symlink, so nothing planted later under or at the path (for example
    /// by a client of an enclosing root) can redirect it.
    resolved: PathBuf,
    root: OnceLock<RootFd>,
    /// Milliseconds after `created` before which the root is not checked
    /// for removal again.
    next_check: AtomicU64,
    /// The root was found removed (and not restored) at the last check.
    gone: std::sync::atomic::AtomicBool,
    created: std::time::Instant,
}

/// The open root directory, and the one that replaced it if it was removed
/// and then restored. A replaced fd stays open (and unused) while the
/// `LocalFs` lives: requests in flight may still hold it, and closing it
/// could let its number be reused under them.
struct RootFd {
    fd: OwnedFd,
    next: OnceLock<Box<RootFd>>,
}

impl RootFd {
    fn new(fd: OwnedFd) -> RootFd {
        RootFd {
            fd,
            next: OnceLock::new(),
        }
    }
}

/// True if `fd` is a directory that has been removed.
fn is_removed(fd: &impl AsFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

impl std::fmt::Debug for LocalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFs").field("path", &self.path).finish()
    }
}

fn io_err(e: rustix::io::Errno) -> Errno {
    Errno::from(e)
}

const O_BASE: OFlags = OFlags::CLOEXEC.union(OFlags::NOCTTY);

impl LocalFs {
    /// Serves `dir`, opening it on first use, so construction cannot fail.
    /// Until the directory can be opened, every request fails with the
    /// reason (`ENOENT`, `ENOTDIR`, or `ENOSYS` where confined resolution is
    /// unavailable) and the open is retried on the next request; once open,
    /// the directory fd is kept (renaming the directory does not change what
    /// is served). If that directory is removed, requests fail with
    /// `ENOENT` until a directory exists at the path again (restored), which
    /// is then served (checked at most once a second). Use
    /// [`LocalFs::open`] to fail at start instead.
    ///
    /// The path is resolved now, once: symlinks in it (an administrator's
    /// `/srv -> /data/srv`) are followed here and never again. Every later
    /// open of the root, including the re-open after a removal, refuses any
    /// symlink in any component and anything but a directory, so a root
    /// nested in another served tree cannot be redirected by that tree's
    /// clients (say, by replacing it with a symlink to `/`).
    pub fn new(dir: impl AsRef<Path>) -> LocalFs {
        LocalFs {
            path: dir.as_ref().to_path_buf(),
            resolved: resolve_at_start(dir.as_ref()),
            root: OnceLock::new(),
            next_check: AtomicU64::new(0),
            gone: Default::default(),
            created: std::time::Instant::now(),
        }
    }

    /// Serves `resolved`, a path known to be absolute and free of
    /// symlinks (nothing is resolved again).
    pub(crate) fn with_resolved(resolved: PathBuf) -> LocalFs {
        LocalFs {
            path: resolved.clone(),
            resolved,
            root: OnceLock::new(),
            next_check: AtomicU64::new(0),
            gone: Default::default(),
            created: std::time::Instant::now(),
        }
    }

    /// Opens `dir` now, verifying that confined resolution works on this
    /// kernel.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<LocalFs> {
        let fs = LocalFs::new(dir);
        fs.root().map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("cannot serve {}: {}", fs.path.display(), e),
            )
        })?;
        Ok(fs)
    }

    /// The directory this serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn root(&self) -> FsResult<BorrowedFd<'_>> {
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
    fn open_rel(&self, rel: &[u8], flags: OFlags) -> FsResult<OwnedFd> {
        let root = self.root()?;
        if rel.is_empty() {
            return rustix::fs::openat(root, c".", flags | O_BASE, Mode::empty()).map_err(io_err);
        }
        resolve_beneath(root, rel, flags | O_BASE | OFlags::NOFOLLOW, Mode::empty())
    }

    /// The parent directory of `path` and its final name; for the root,
    /// the root and `"."` so that `*at` calls act on the root itself.
    fn at<'p>(&self, path: &'p FsPath) -> FsResult<(Dir<'_>, &'p [u8])> {
        match path.parent_and_name() {
            None => Ok((Dir::Borrowed(self.root()?), b".")),
            Some((parent, name)) => Ok((self.dir(parent)?, name)),
        }
    }

    /// Like [`at`](Self::at) for operations that need a real name (create,
    /// remove, rename): the root yields `root_err`.
    fn at_named<'p>(&self, path: &'p FsPath, root_err: Errno) -> FsResult<(Dir<'_>, &'p [u8])> {
        match path.parent_and_name() {
            None => Err(root_err),
            Some((parent, name)) => Ok((self.dir(parent)?, name)),
        }
    }

    fn dir(&self, rel: &[u8]) -> FsResult<Dir<'_>> {
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
    fn object_path_fd(&self, path: &FsPath, symlink_err: Errno) -> FsResult<(OwnedFd, Stat)> {
        let fd = self.open_rel(path.relative(), OFlags::PATH)?;
        let st = fstat(&fd)?;
        if st.is_symlink() {
            return Err(symlink_err);
        }
        Ok((fd, st))
    }

    fn open_regular(&self, path: &FsPath, flags: OFlags) -> FsResult<(OwnedFd, Stat)> {
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

enum Dir<'a> {
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
fn resolve_at_start(path: &Path) -> PathBuf {
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

fn check_procfs() -> FsResult<()> {
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
fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn to_stat(st: &rustix::fs::Stat) -> Stat {
    #[allow(clippy::unnecessary_cast)]
    Stat {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        mode: st.st_mode as u32,
        nlink: st.st_nlink as u64,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        rdev: st.st_rdev as u64,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as i64,
        mtime: st.st_mtime as i64,
        ctime: st.st_ctime as i64,
        atime_nsec: st.st_atime_nsec as u32,
        mtime_nsec: st.st_mtime_nsec as u32,
        ctime_nsec: st.st_ctime_nsec as u32,
    }
}

fn fstat(fd: &impl AsFd) -> FsResult<Stat> {
    rustix::fs::fstat(fd).map(|s| to_stat(&s)).map_err(io_err)
}

fn statat(dir: &impl AsFd, name: &[u8]) -> FsResult<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|s| to_stat(&s))
        .map_err(io_err)
}

/// Sets the exact permission bits on an object named `name` in `dir` that we
/// just created (the process umask masked them), refusing to touch it if it
/// has meanwhile been replaced by a symlink. Of the bits the kernel gave
/// it, those in `inherited` stay even if `mode` lacks them (a directory's
/// set-group-ID bit, inherited from a set-group-ID parent as `mkdir(2)`
/// does whatever the mode).
fn fix_mode(dir: &impl AsFd, name: &[u8], mode: u32, inherited: u32) -> FsResult<()> {
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

fn chmod_fd(fd: &OwnedFd, mode: u32) -> FsResult<()> {
    check_procfs()?;
    rustix::fs::chmod(proc_path(fd), Mode::from_raw_mode(mode & mode::PERMS)).map_err(io_err)
}

struct LocalFile {
    fd: OwnedFd,
    size: u64,
}

/// What the kernel's write path does for an unprivileged writer, on the
/// file about to be written (`st` is its `fstat`): clears set-user-ID, and
/// set-group-ID if the group may execute, when `setid` says so.
///
/// Only the owner (or a holder of `CAP_FOWNER`) may `fchmod`: for any other
/// writer (`EPERM`) the kernel's own write and truncate paths clear the
/// same bits, as that writer has no `CAP_FSETID` either, so the write goes
/// ahead, exactly as on a local disk.
fn remove_privs(fd: &OwnedFd, st: &Stat, setid: SetId) -> FsResult<()> {
    match setid.after_write(st.mode) {
        Some(perms) => match rustix::fs::fchmod(fd, Mode::from_raw_mode(perms)) {
            Err(rustix::io::Errno::PERM) => Ok(()),
            r => r.map_err(io_err),
        },
        None => Ok(()),
    }
}

impl FileHandle for LocalFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> FsResult<usize> {
        loop {
            match rustix::io::pread(&self.fd, &mut *buf, offset) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(io_err),
            }
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        write_all_at(&self.fd, buf, offset)
    }
}

/// `(uid_t)-1` means "unchanged" to the kernel; rustix refuses to build it.
fn uid(id: Option<u32>) -> Option<rustix::fs::Uid> {
    id.filter(|&u| u != u32::MAX).map(rustix::fs::Uid::from_raw)
}

fn gid(id: Option<u32>) -> Option<rustix::fs::Gid> {
    id.filter(|&g| g != u32::MAX).map(rustix::fs::Gid::from_raw)
}

fn write_all_at(fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> FsResult<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".spockfs-put.{}.{}.{:08x}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
    .into_bytes()
}

/// Atomic whole-file replacement: an anonymous `O_TMPFILE` in the target's
/// directory (nothing visible, nothing left behind on a crash), linked under
/// a temporary name and renamed over the target on commit. Filesystems
/// without `O_TMPFILE` get a named temporary from the start.
struct LocalReplacement {
    dir: OwnedFd,
    name: Vec<u8>,
    fd: OwnedFd,
    /// What happens to the replaced file's set-ID bits.
    setid: SetId,
    /// Named temporary that exists on disk and must be removed on abort.
    tmp: std::sync::Mutex<Option<Vec<u8>>>,
    committed: std::sync::atomic::AtomicBool,
}

impl Replacement for LocalReplacement {
    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        write_all_at(&self.fd, buf, offset)
    }

    fn commit(&self) -> FsResult<bool> {
        if self.committed.swap(true, Ordering::AcqRel) {
            return Err(Errno::EINVAL);
        }
        // Keep the permissions (and, when allowed, the owner) of the file
        // being replaced, like an editor's atomic save.
        match statat(&self.dir, &self.name) {
            Ok(st) if st.is_dir() => return Err(Errno::EISDIR),
            Ok(st) if st.is_file() => {
                // chown first: it clears setuid/setgid, which chmod restores
                // (unless replacing content clears them).
                let _ = rustix::fs::fchown(&self.fd, uid(Some(st.uid)), gid(Some(st.gid)));
                let perms = self
                    .setid
                    .after_write(st.mode)
                    .unwrap_or(st.mode & mode::PERMS);
                rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(perms)).map_err(io_err)?;
            }
            _ => {}
        }
        let mut tmp = self.tmp.lock().unwrap_or_else(|p| p.into_inner());
        let tmp_name = match tmp.as_ref() {
            Some(n) => n.clone(),
            None => {
                // Give the anonymous file a (temporary) name.
                let mut last = Errno::EEXIST;
                let mut linked = None;
                for _ in 0..8 {
                    let n = tmp_name();
                    match link_proc(&self.fd, &self.dir, &n) {
                        Ok(()) => {
                            linked = Some(n);
                            break;
                        }
                        Err(Errno::EEXIST) => continue,
                        Err(e) => {
                            last = e;
                            break;
                        }
                    }
                }
                let n = linked.ok_or(last)?;
                *tmp = Some(n.clone());
                n
            }
        };
        let created = match rustix::fs::renameat_with(
            &self.dir,
            tmp_name.as_slice(),
            &self.dir,
            self.name.as_slice(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::renameat(
                    &self.dir,
                    tmp_name.as_slice(),
                    &self.dir,
                    self.name.as_slice(),
                )
                .map_err(io_err)?;
                false
            }
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                // No RENAME_NOREPLACE on this filesystem: best effort.
                let existed = statat(&self.dir, &self.name).is_ok();
                rustix::fs::renameat(
                    &self.dir,
                    tmp_name.as_slice(),
                    &self.dir,
                    self.name.as_slice(),
                )
                .map_err(io_err)?;
                !existed
            }
            Err(e) => return Err(io_err(e)),
        };
        *tmp = None;
        Ok(created)
    }
}

impl Drop for LocalReplacement {
    fn drop(&mut self) {
        let tmp = self.tmp.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = tmp.take() {
            let _ = rustix::fs::unlinkat(&self.dir, n.as_slice(), AtFlags::empty());
        }
    }
}

fn link_proc(fd: &OwnedFd, dir: &OwnedFd, name: &[u8]) -> FsResult<()> {
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path(fd),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io_err)
}

/// A directory listed in batches: the open directory (its fd and getdents
/// buffer) is all that is kept between batches.
struct LocalDir {
    dir: rustix::fs::Dir,
    attrs: bool,
}

impl DirStream for LocalDir {
    fn next_batch(&mut self, max: usize, sink: &mut DirSink<'_>) -> FsResult<bool> {
        let mut n = 0;
        while n < max {
            let Some(entry) = self.dir.read() else {
                return Ok(true);
            };
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            n += 1;
            if self.attrs {
                match statat(&self.dir.fd().map_err(io_err)?, name) {
                    Ok(st) => sink(name, Some(&st))?,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                sink(name, None)?;
            }
        }
        // Full batch; the end shows on the next call.
        Ok(false)
    }

    fn count_and_rewind(&mut self) -> FsResult<u64> {
        let mut n = 0u64;
        while let Some(entry) = self.dir.read() {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                n += 1;
            }
        }
        self.dir.rewind();
        Ok(n)
    }
}

impl Backend for LocalFs {
    fn open_dir(&self, path: &FsPath, attrs: bool) -> FsResult<Box<dyn DirStream>> {
        let fd = self.open_rel(path.relative(), OFlags::RDONLY | OFlags::DIRECTORY)?;
        // Dir::new keeps this fd; Dir::read_from would reopen "." and need
        // search permission that listing a directory does not need.
        let dir = rustix::fs::Dir::new(fd).map_err(io_err)?;
        Ok(Box::new(LocalDir { dir, attrs }))
    }

    fn getattr(&self, path: &FsPath) -> FsResult<Stat> {
        let (dir, name) = self.at(path)?;
        statat(&dir, name)
    }

    fn readdir(&self, path: &FsPath, attrs: bool, sink: &mut DirSink<'_>) -> FsResult<()> {
        // The same reading as the streamed listing, in one go.
        let mut dir = self.open_dir(path, attrs)?;
        while !dir.next_batch(usize::MAX, sink)? {}
        Ok(())
    }

    fn mknod(&self, path: &FsPath, mode: u32, dev: u64, devices: Devices) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EEXIST)?;
        let kind = match mode & mode::S_IFMT {
            0 | mode::S_IFREG => rustix::fs::FileType::RegularFile,
            mode::S_IFIFO => rustix::fs::FileType::Fifo,
            mode::S_IFSOCK => rustix::fs::FileType::Socket,
            // A working device node would let a client read or write any
            // disk the server can reach: only inert ones, on a filesystem
            // mounted nodev, decided on the very directory that holds it
            // (a filesystem mounted under the root may differ from it).
            k @ (mode::S_IFCHR | mode::S_IFBLK) => match devices {
                Devices::Refuse => return Err(Errno::EPERM),
                Devices::Inert => {
                    let vfs = rustix::fs::fstatvfs(&dir).map_err(io_err)?;
                    if vfs.f_flag.bits() as u64 & ST_NODEV == 0 {
                        return Err(Errno::EPERM);
                    }
                    if k == mode::S_IFCHR {
                        rustix::fs::FileType::CharacterDevice
                    } else {
                        rustix::fs::FileType::BlockDevice
                    }
                }
            },
            mode::S_IFDIR => return Err(Errno::EPERM),
            _ => return Err(Errno::EINVAL),
        };
        rustix::fs::mknodat(
            &dir,
            name,
            kind,
            Mode::from_raw_mode(mode & mode::PERMS),
            dev as _,
        )
        .map_err(io_err)?;
        fix_mode(&dir, name, mode, 0)
    }

    fn open(&self, path: &FsPath, flags: i32) -> FsResult<()> {
        let acc = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => OFlags::RDONLY,
            libc::O_WRONLY => OFlags::WRONLY,
            libc::O_RDWR => OFlags::RDWR,
            _ => return Err(Errno::EINVAL),
        };
        let fd = self.open_rel(path.relative(), acc | OFlags::NONBLOCK)?;
        drop(fd);
        Ok(())
    }

    fn chmod(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()> {
        // The type is that of the object the fd is on: the one changed.
        let (fd, st) = self.object_path_fd(path, Errno::EOPNOTSUPP)?;
        let mode = if st.is_dir() {
            mode
        } else {
            setid.file_mode(mode)
        };
        chmod_fd(&fd, mode)
    }

    fn chown(&self, path: &FsPath, owner: Owner) -> FsResult<()> {
        let (dir, name) = self.at(path)?;
        rustix::fs::chownat(
            &dir,
            name,
            uid(owner.uid),
            gid(owner.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
    }

    fn truncate(&self, path: &FsPath, size: u64, setid: SetId) -> FsResult<()> {
        let (fd, st) = self.open_regular(path, OFlags::WRONLY)?;
        remove_privs(&fd, &st, setid)?;
        rustix::fs::ftruncate(&fd, size).map_err(io_err)
    }

    fn access(&self, path: &FsPath, mask: u32) -> FsResult<()> {
        if mask & !7 != 0 {
            return Err(Errno::EINVAL);
        }
        let (dir, name) = self.at(path)?;
        rustix::fs::accessat(
            &dir,
            name,
            rustix::fs::Access::from_bits_retain(mask as _),
            AtFlags::EACCESS | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
    }

    fn symlink(&self, path: &FsPath, target: &[u8]) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EEXIST)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(io_err)
    }

    fn readlink(&self, path: &FsPath) -> FsResult<Vec<u8>> {
        let (dir, name) = self.at(path)?;
        rustix::fs::readlinkat(&dir, name, Vec::new())
            .map(|c| c.into_bytes())
            .map_err(io_err)
    }

    fn rmdir(&self, path: &FsPath) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EBUSY)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(io_err)
    }

    fn mkdir(&self, path: &FsPath, mode: u32) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EEXIST)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & mode::PERMS)).map_err(io_err)?;
        fix_mode(&dir, name, mode, mode::S_ISGID)
    }

    fn link(&self, path: &FsPath, existing: &FsPath) -> FsResult<()> {
        let (src_dir, src_name) = self.at_named(existing, Errno::EPERM)?;
        let (dst_dir, dst_name) = self.at_named(path, Errno::EEXIST)?;
        rustix::fs::linkat(&src_dir, src_name, &dst_dir, dst_name, AtFlags::empty()).map_err(io_err)
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> FsResult<()> {
        let (src_dir, src_name) = self.at_named(from, Errno::EBUSY)?;
        let (dst_dir, dst_name) = self.at_named(to, Errno::EBUSY)?;
        rustix::fs::renameat(&src_dir, src_name, &dst_dir, dst_name).map_err(io_err)
    }

    fn fallocate(
        &self,
        path: &FsPath,
        mode: i32,
        offset: u64,
        len: u64,
        setid: SetId,
    ) -> FsResult<()> {
        let (fd, st) = self.open_regular(path, OFlags::WRONLY)?;
        remove_privs(&fd, &st, setid)?;
        rustix::fs::fallocate(
            &fd,
            rustix::fs::FallocateFlags::from_bits_retain(mode as _),
            offset,
            len,
        )
        .map_err(io_err)
    }

    fn statfs(&self, path: &FsPath) -> FsResult<StatFs> {
        let fd = self.open_rel(path.relative(), OFlags::PATH)?;
        let s = rustix::fs::fstatvfs(&fd).map_err(io_err)?;
        #[allow(clippy::unnecessary_cast)]
        Ok(StatFs {
            bsize: s.f_bsize as u64,
            frsize: s.f_frsize as u64,
            blocks: s.f_blocks as u64,
            bfree: s.f_bfree as u64,
            bavail: s.f_bavail as u64,
            files: s.f_files as u64,
            ffree: s.f_ffree as u64,
            favail: s.f_favail as u64,
            fsid: s.f_fsid as u64,
            flag: s.f_flag.bits() as u64,
            namemax: s.f_namemax as u64,
        })
    }

    fn listxattr(&self, path: &FsPath, limit: usize) -> FsResult<Vec<Vec<u8>>> {
        // A symlink's own `user.` list is empty (Linux forbids them there).
        // Only the fd's type says the *final* component is a symlink: ELOOP
        // from resolution means a parent is one, and must stay an error.
        let fd = self.open_rel(path.relative(), OFlags::PATH)?;
        if fstat(&fd)?.is_symlink() {
            return Ok(Vec::new());
        }
        check_procfs()?;
        let p = proc_path(&fd);
        let raw = xattr_read(limit, |buf| match buf {
            None => rustix::fs::listxattr_query(&p),
            Some(b) => rustix::fs::listxattr(&p, b),
        })?;
        Ok(raw
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    fn getxattr(&self, path: &FsPath, name: &[u8], limit: usize) -> FsResult<Vec<u8>> {
        let (fd, _) = self.object_path_fd(path, Errno::ENODATA)?;
        check_procfs()?;
        let p = proc_path(&fd);
        xattr_read(limit, |buf| match buf {
            None => rustix::fs::getxattr_query(&p, name),
            Some(b) => rustix::fs::getxattr(&p, name, b),
        })
    }

    fn setxattr(&self, path: &FsPath, name: &[u8], value: &[u8], flag: XattrFlag) -> FsResult<()> {
        let (fd, _) = self.object_path_fd(path, Errno::EPERM)?;
        check_procfs()?;
        let flags = match flag {
            XattrFlag::Any => rustix::fs::XattrFlags::empty(),
            XattrFlag::Create => rustix::fs::XattrFlags::CREATE,
            XattrFlag::Replace => rustix::fs::XattrFlags::REPLACE,
        };
        rustix::fs::setxattr(proc_path(&fd), name, value, flags).map_err(io_err)
    }

    fn removexattr(&self, path: &FsPath, name: &[u8]) -> FsResult<()> {
        let (fd, _) = self.object_path_fd(path, Errno::ENODATA)?;
        check_procfs()?;
        rustix::fs::removexattr(proc_path(&fd), name).map_err(io_err)
    }

    fn utimens(&self, path: &FsPath, atime: SetTime, mtime: SetTime) -> FsResult<()> {
        // Checked here: the kernel reads two out-of-range values as
        // UTIME_NOW and UTIME_OMIT.
        if !atime.is_valid() || !mtime.is_valid() {
            return Err(Errno::EINVAL);
        }
        if (atime, mtime) == (SetTime::Omit, SetTime::Omit) {
            // utimensat(2) returns at once, without even looking the path up.
            return Ok(());
        }
        let (dir, name) = self.at(path)?;
        let ts = |t: SetTime| match t {
            SetTime::Now => rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW as _,
            },
            SetTime::Omit => rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT as _,
            },
            SetTime::At { sec, nsec } => rustix::fs::Timespec {
                tv_sec: sec as _,
                tv_nsec: nsec as _,
            },
        };
        rustix::fs::utimensat(
            &dir,
            name,
            &rustix::fs::Timestamps {
                last_access: ts(atime),
                last_modification: ts(mtime),
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
    }

    fn create(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EISDIR)?;
        let perms = Mode::from_raw_mode(mode & mode::PERMS);
        match rustix::fs::openat(
            &dir,
            name,
            O_BASE | OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            perms,
        ) {
            Ok(fd) => rustix::fs::fchmod(&fd, perms).map_err(io_err),
            Err(rustix::io::Errno::EXIST) => {
                // creat(2) on an existing file truncates it (its mode stays).
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    O_BASE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(io_err)?;
                let st = fstat(&fd)?;
                if !st.is_file() {
                    return Err(if st.is_dir() {
                        Errno::EISDIR
                    } else {
                        Errno::EEXIST
                    });
                }
                remove_privs(&fd, &st, setid)?;
                rustix::fs::ftruncate(&fd, 0).map_err(io_err)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn unlink(&self, path: &FsPath) -> FsResult<()> {
        let (dir, name) = self.at_named(path, Errno::EISDIR)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(io_err)
    }

    fn fsync(&self, path: &FsPath, datasync: bool) -> FsResult<()> {
        let fd = self.open_rel(path.relative(), OFlags::RDONLY | OFlags::NONBLOCK)?;
        if datasync {
            rustix::fs::fdatasync(&fd).map_err(io_err)
        } else {
            rustix::fs::fsync(&fd).map_err(io_err)
        }
    }

    fn open_read(&self, path: &FsPath) -> FsResult<Box<dyn FileHandle>> {
        let (fd, st) = self.open_regular(path, OFlags::RDONLY)?;
        Ok(Box::new(LocalFile { fd, size: st.size }))
    }

    fn open_write(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn FileHandle>> {
        let (fd, st) = self.open_regular(path, OFlags::WRONLY)?;
        remove_privs(&fd, &st, setid)?;
        Ok(Box::new(LocalFile { fd, size: st.size }))
    }

    fn replace(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn Replacement>> {
        let (parent, name) = path.parent_and_name().ok_or(Errno::EISDIR)?;
        let dir = match self.dir(parent)? {
            Dir::Owned(fd) => fd,
            Dir::Borrowed(root) => rustix::fs::openat(
                root,
                c".",
                O_BASE | OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(io_err)?,
        };
        // Refuse early what commit would refuse: replacing a directory.
        if let Ok(st) = statat(&dir, name) {
            if st.is_dir() {
                return Err(Errno::EISDIR);
            }
        }
        let perms = Mode::from_raw_mode(0o666);
        {
            match rustix::fs::openat(&dir, c".", O_BASE | OFlags::WRONLY | OFlags::TMPFILE, perms) {
                Ok(fd) => {
                    return Ok(Box::new(LocalReplacement {
                        dir,
                        name: name.to_vec(),
                        fd,
                        setid,
                        tmp: std::sync::Mutex::new(None),
                        committed: Default::default(),
                    }))
                }
                // EPERM: what O_TMPFILE says in a removed directory, where
                // the named temporary below gets the right error (ENOENT).
                Err(e)
                    if e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::ISDIR
                        || e == rustix::io::Errno::INVAL
                        || e == rustix::io::Errno::PERM => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        for _ in 0..8 {
            let n = tmp_name();
            match rustix::fs::openat(
                &dir,
                n.as_slice(),
                O_BASE | OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                perms,
            ) {
                Ok(fd) => {
                    return Ok(Box::new(LocalReplacement {
                        dir,
                        name: name.to_vec(),
                        fd,
                        setid,
                        tmp: std::sync::Mutex::new(Some(n)),
                        committed: Default::default(),
                    }))
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(Errno::EEXIST)
    }
}

/// Reads an xattr value or list of at most `limit` bytes: query the size,
/// read into a buffer of that size, retry if it grew meanwhile.
fn xattr_read(
    limit: usize,
    mut call: impl FnMut(Option<&mut [u8]>) -> rustix::io::Result<usize>,
) -> FsResult<Vec<u8>> {
    for _ in 0..4 {
        let size = call(None).map_err(io_err)?;
        if size > limit {
            return Err(Errno::E2BIG);
        }
        let mut buf = vec![0u8; size];
        match call(Some(&mut buf)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    Err(Errno::EAGAIN)
}
