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

mod confine;
mod handles;
#[cfg(test)]
mod seccomp;

use super::{
    mode, Backend, Devices, DirSink, DirStream, FileHandle, Owner, Replacement, SetId, SetTime,
    Stat, StatFs, XattrFlag, ST_NODEV,
};
use crate::{Errno, FsPath, FsResult};
use confine::{check_procfs, chmod_fd, fix_mode, proc_path, resolve_at_start, Dir, RootFd};
use handles::{tmp_name, LocalDir, LocalFile, LocalReplacement};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

pub(crate) use confine::open_dir_beneath;

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
    /// The root is on a local disk filesystem, where reading the
    /// attributes of a cached inode never waits on I/O (decided on the
    /// first root fd; see [`LocalFs::getattr_nowait`](Backend::getattr_nowait)).
    local_disk: OnceLock<bool>,
}

impl std::fmt::Debug for LocalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFs").field("path", &self.path).finish()
    }
}

/// A tree for path-resolution tests at `root`: directories `d` and `d/e`,
/// a file `d/f`, a symlink `ld -> d` and one out of the root, `up -> ../..`.
#[cfg(test)]
pub(crate) fn resolution_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/e")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("d/f"), b"x").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("d", root.join("ld")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("../..", root.join("up")).unwrap_or_else(|e| panic!("{e}"));
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
            local_disk: OnceLock::new(),
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
            local_disk: OnceLock::new(),
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

    /// Removes the temporary files of whole-file PUTs that a crashed server
    /// left anywhere in the tree: those unwritten for
    /// [`TEMP_STALE_AFTER`](crate::backend::TEMP_STALE_AFTER) (a live upload
    /// writes far more often). Walks the whole tree, confined like every
    /// request and following no symlink; run it on a thread of its own (the
    /// servers do at start and then every hour). A listing of a directory
    /// also removes the stale ones it meets. Returns how many it removed;
    /// directories it cannot read are skipped.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let fs = spockfs_core::LocalFs::open(dir.path())?;
    /// assert_eq!(fs.sweep_temporaries(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn sweep_temporaries(&self) -> usize {
        let mut removed = 0;
        // Relative paths, not open directories: a deep tree costs memory,
        // never descriptors.
        let mut todo: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = todo.pop() {
            // Without touching access times (a sweep is not a reader);
            // O_NOATIME needs the owner or CAP_FOWNER, else a plain open.
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let opened = match self.open_rel(&rel, flags | OFlags::NOATIME) {
                Err(Errno::EPERM) => self.open_rel(&rel, flags),
                r => r,
            };
            let Ok(fd) = opened else {
                continue;
            };
            let Ok(mut dir) = rustix::fs::Dir::new(fd) else {
                continue;
            };
            while let Some(Ok(entry)) = dir.read() {
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let Ok(dirfd) = dir.fd() else { break };
                if crate::backend::is_temp_name(name) {
                    removed += usize::from(handles::remove_if_stale(&dirfd, name));
                    continue;
                }
                let is_dir = match entry.file_type() {
                    rustix::fs::FileType::Directory => true,
                    rustix::fs::FileType::Unknown => {
                        statat(&dirfd, name).is_ok_and(|st| st.mode & mode::S_IFMT == mode::S_IFDIR)
                    }
                    _ => false,
                };
                if is_dir {
                    let mut sub = rel.clone();
                    if !sub.is_empty() {
                        sub.push(b'/');
                    }
                    sub.extend_from_slice(name);
                    todo.push(sub);
                }
            }
        }
        removed
    }

    /// Runs [`sweep_temporaries`](Self::sweep_temporaries) on each of
    /// `roots` now and then every `every`, on a background thread of its
    /// own (`spockfs-sweep`) for the life of the process; logs what it
    /// removes. What the example servers do for every root they serve.
    pub fn sweep_in_background(roots: Vec<PathBuf>, every: std::time::Duration) {
        let spawned = std::thread::Builder::new()
            .name("spockfs-sweep".into())
            .spawn(move || loop {
                for root in &roots {
                    let removed = LocalFs::new(root).sweep_temporaries();
                    if removed > 0 {
                        tracing::info!(
                            root = %root.display(),
                            removed,
                            "removed temporary files left by an interrupted whole-file PUT"
                        );
                    }
                }
                std::thread::sleep(every);
            });
        if let Err(e) = spawned {
            tracing::warn!("no sweeper of temporary files: {e}");
        }
    }
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

/// `(uid_t)-1` means "unchanged" to the kernel; rustix refuses to build it.
fn uid(id: Option<u32>) -> Option<rustix::fs::Uid> {
    id.filter(|&u| u != u32::MAX).map(rustix::fs::Uid::from_raw)
}

fn gid(id: Option<u32>) -> Option<rustix::fs::Gid> {
    id.filter(|&g| g != u32::MAX).map(rustix::fs::Gid::from_raw)
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

    /// The path resolved with `RESOLVE_CACHED` (Linux 5.12+: the lookup
    /// fails with `EAGAIN` rather than read a directory or an inode from
    /// disk) and `RESOLVE_NO_XDEV` (no crossing into another filesystem,
    /// which may not be a local disk), confined as every other lookup; the
    /// `fstat` of the resulting `O_PATH` fd reads an inode already in
    /// memory. Anything but success or `ENOENT` (a cached negative entry)
    /// is left to [`getattr`](Backend::getattr) on the pool, which owns
    /// every error's meaning.
    fn getattr_nowait(&self, path: &FsPath) -> Option<FsResult<Stat>> {
        use rustix::fs::ResolveFlags as R;
        if path.has_trailing_slash() {
            return None;
        }
        let root = self.root_nowait()?;
        let rel = path.relative();
        if rel.is_empty() {
            return Some(fstat(&root));
        }
        let resolve = R::BENEATH | R::NO_SYMLINKS | R::NO_MAGICLINKS | R::NO_XDEV | R::CACHED;
        let flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => Some(fstat(&fd)),
            Err(rustix::io::Errno::NOENT) => Some(Err(Errno::ENOENT)),
            Err(_) => None,
        }
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
        let replacement = |dir, fd, tmp| -> FsResult<Box<dyn Replacement>> {
            Ok(Box::new(LocalReplacement {
                dir,
                name: name.to_vec(),
                fd,
                setid,
                tmp: std::sync::Mutex::new(tmp),
                committed: Default::default(),
            }))
        };
        {
            match rustix::fs::openat(&dir, c".", O_BASE | OFlags::WRONLY | OFlags::TMPFILE, perms) {
                Ok(fd) => return replacement(dir, fd, None),
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
                Ok(fd) => return replacement(dir, fd, Some(n)),
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
