//! The storage seam: what the engine asks of a filesystem.
//!
//! Every method is a single synchronous POSIX-like call on a validated
//! [`FsPath`]; the engine runs them on a blocking thread (unless
//! [`Backend::is_blocking`] says otherwise), so an async worker never waits
//! on disk. Implementations decide confinement: [`LocalFs`](crate::LocalFs)
//! resolves every path relative to an open root directory and never follows
//! a symlink; [`MemFs`](crate::MemFs) keeps its tree in memory.
//!
//! Semantics follow Linux: the final component is never followed (GETATTR is
//! `lstat`, CHOWN is `lchown`, UTIMENS uses `AT_SYMLINK_NOFOLLOW`), and
//! neither is any symlink in a parent position: a path through a symlink
//! fails with `ELOOP`. FUSE clients resolve symlinks themselves (the kernel
//! walks paths one lookup at a time), so a server-side follow is never needed
//! and would give a different answer than the mount for absolute targets.

use crate::{FsPath, FsResult};

pub use spockfs_proto::stat::{mode, SetTime, Stat, StatFs, XattrFlag};

pub(crate) mod local;
pub(crate) mod mem;

/// What MKNOD does with character and block devices (the mount's
/// [`allow_devices`](crate::Mount::allow_devices)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Devices {
    /// Never created: `EPERM` (the default).
    #[default]
    Refuse,
    /// Created only in a directory whose filesystem is mounted `nodev`
    /// (`ST_NODEV` in its `statvfs` flags), where a device node is inert:
    /// nothing can open the device through it. `EPERM` elsewhere.
    Inert,
}

/// The start of the names [`LocalFs`](crate::LocalFs) gives the temporary
/// files of whole-file PUTs in progress (in the target's directory, where
/// a filesystem has no `O_TMPFILE`, and briefly at every commit). Names
/// with it are the server's: READDIR never lists them, the engine answers
/// 404 `ENOENT` for them and refuses to create them (400 `EINVAL`).
pub const TEMP_PREFIX: &[u8] = b".spockfs-put.";

/// How long a temporary file may go unwritten before it counts as left
/// behind by a crashed server and is removed (by a listing of its
/// directory or by [`LocalFs::sweep_temporaries`](crate::LocalFs::sweep_temporaries)).
/// Far beyond any body timeout: a live upload writes more often than that.
pub const TEMP_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `name` is one of the server's temporary files ([`TEMP_PREFIX`]).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// `ST_NODEV` of `statvfs`'s `f_flag`: the filesystem is mounted `nodev`.
pub const ST_NODEV: u64 = 4;

/// Change owner: `None` leaves the id unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// New uid, if changing.
    pub uid: Option<u32>,
    /// New gid, if changing.
    pub gid: Option<u32>,
}

/// What a mount does with the set-user-ID and set-group-ID bits of
/// non-directories (the engine passes the mount's choice to every call that
/// sets a mode or changes a file's content).
///
/// Directories are never affected: their set-group-ID bit (group
/// inheritance) is kept as requested under both policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetId {
    /// Like a filesystem mounted `nosuid` (the default): the bits are
    /// stripped from every mode given to a non-directory, and writing,
    /// truncating or replacing a file's content clears them the way the
    /// kernel's write path does for an unprivileged writer (set-user-ID
    /// always, set-group-ID when the group may execute), whatever the
    /// server's own privileges.
    #[default]
    Strip,
    /// Modes are applied exactly as sent and the kernel decides what a
    /// write clears (for a process with `CAP_FSETID`, nothing).
    Keep,
}

impl SetId {
    /// `mode` with the bits this policy forbids on a non-directory removed.
    ///
    /// ```
    /// use spockfs_core::SetId;
    /// assert_eq!(SetId::Strip.file_mode(0o106755), 0o100755);
    /// assert_eq!(SetId::Keep.file_mode(0o106755), 0o106755);
    /// ```
    pub fn file_mode(self, mode: u32) -> u32 {
        match self {
            SetId::Strip => mode & !(mode::S_ISUID | mode::S_ISGID),
            SetId::Keep => mode,
        }
    }

    /// The permission bits a write leaves on a regular file of mode `mode`
    /// under this policy (`None`: unchanged).
    ///
    /// ```
    /// use spockfs_core::SetId;
    /// assert_eq!(SetId::Strip.after_write(0o104755), Some(0o755));
    /// assert_eq!(SetId::Strip.after_write(0o102755), Some(0o755));
    /// assert_eq!(SetId::Strip.after_write(0o102705), None); // no group exec: a lock mark
    /// assert_eq!(SetId::Keep.after_write(0o104755), None);
    /// ```
    pub fn after_write(self, mode: u32) -> Option<u32> {
        if self == SetId::Keep || mode & mode::S_IFMT != mode::S_IFREG {
            return None;
        }
        let mut perms = mode & mode::PERMS;
        perms &= !mode::S_ISUID;
        if perms & mode::S_ISGID != 0 && perms & 0o010 != 0 {
            perms &= !mode::S_ISGID;
        }
        (perms != mode & mode::PERMS).then_some(perms)
    }
}

/// Receives READDIR entries; return an error to stop early.
pub type DirSink<'a> = dyn FnMut(&[u8], Option<&Stat>) -> FsResult<()> + 'a;

/// An open directory being listed in batches (READDIR streams its body from
/// one of these, so a directory of any size is listed with flat memory).
/// Entries are never `.` or `..`; with `attrs`, each comes with its `lstat`
/// (entries that vanish meanwhile are skipped).
pub trait DirStream: Send {
    /// Delivers up to `max` further entries to `sink`; `Ok(true)` once the
    /// directory is exhausted.
    fn next_batch(&mut self, max: usize, sink: &mut DirSink<'_>) -> FsResult<bool>;
    /// Counts the entries from the current position to the end, then
    /// starts over from the first entry (used to enforce an entry limit
    /// before any of the listing is sent).
    fn count_and_rewind(&mut self) -> FsResult<u64>;
}

/// A [`DirStream`] over entries already collected in memory: what
/// [`Backend::open_dir`] returns unless a backend streams for real.
pub struct CollectedDir {
    entries: Vec<(Vec<u8>, Option<Stat>)>,
    pos: usize,
}

impl CollectedDir {
    /// Collects a whole listing with [`Backend::readdir`].
    pub fn collect<B: Backend + ?Sized>(
        b: &B,
        path: &FsPath,
        attrs: bool,
    ) -> FsResult<CollectedDir> {
        let mut entries = Vec::new();
        b.readdir(path, attrs, &mut |name, st| {
            entries.push((name.to_vec(), st.copied()));
            Ok(())
        })?;
        Ok(CollectedDir { entries, pos: 0 })
    }
}

impl DirStream for CollectedDir {
    fn next_batch(&mut self, max: usize, sink: &mut DirSink<'_>) -> FsResult<bool> {
        let end = self.entries.len().min(self.pos.saturating_add(max));
        while self.pos < end {
            let (name, st) = &self.entries[self.pos];
            self.pos += 1;
            sink(name, st.as_ref())?;
        }
        Ok(self.pos >= self.entries.len())
    }
    fn count_and_rewind(&mut self) -> FsResult<u64> {
        let n = (self.entries.len() - self.pos) as u64;
        self.pos = 0;
        Ok(n)
    }
}

/// An open regular file, for ranged reads and writes.
pub trait FileHandle: Send + Sync {
    /// Size when it was opened.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> FsResult<usize>;
    /// Reads up to `len` bytes at `offset`, appended to `buf` (which grows
    /// by the bytes read); 0 at end of file. The default zero-fills the
    /// room and calls [`read_at`](FileHandle::read_at); a backend that can
    /// read into `buf`'s spare capacity directly saves the engine clearing
    /// every chunk it streams before the kernel overwrites it.
    fn read_append(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> FsResult<usize> {
        let start = buf.len();
        buf.resize(start + len, 0);
        let r = self.read_at(&mut buf[start..], offset);
        buf.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()>;
}

/// A whole-file replacement in progress (PUT without `Content-Range`): data
/// goes to a temporary that only becomes visible at [`commit`], atomically.
/// Dropping it uncommitted discards the temporary.
///
/// [`commit`]: Replacement::commit
pub trait Replacement: Send + Sync {
    /// Writes all of `buf` at `offset` of the temporary.
    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()>;
    /// Atomically puts the temporary in place. Returns `true` if the file
    /// did not exist before (201), `false` if it replaced one (200).
    fn commit(&self) -> FsResult<bool>;
}

/// A filesystem the engine can serve.
///
/// Paths are already validated (no `.`/`..`, no empty segment, no NUL); the
/// backend's job is to act on them *inside its root* whatever the tree looks
/// like, including symlinks planted or swapped in by other clients.
///
/// Semantics are those of the Linux syscall named on each method, on the
/// object itself (never following a final symlink). The engine has already
/// handled read-only mounts, trailing slashes and header parsing.
pub trait Backend: Send + Sync + 'static {
    /// True if calls may block on I/O and must run on a blocking thread
    /// (the default). In-memory backends return `false`.
    fn is_blocking(&self) -> bool {
        true
    }

    /// `lstat`.
    fn getattr(&self, path: &FsPath) -> FsResult<Stat>;
    /// [`getattr`](Backend::getattr) if it can be answered without blocking
    /// (for `LocalFs`: every component of the path in the kernel's caches,
    /// on a local disk filesystem), as the calling thread's own identity;
    /// `None` to run `getattr` on a blocking thread instead. The engine
    /// calls this on an async worker, for requests made as the server's
    /// own identity, to spare a metadata read that is already cached the
    /// hop to the blocking pool. The default: `None`.
    fn getattr_nowait(&self, path: &FsPath) -> Option<FsResult<Stat>> {
        let _ = path;
        None
    }
    /// Lists a directory (without `.` and `..`), with each entry's `lstat`
    /// when `attrs` is set (entries that vanish meanwhile are skipped).
    fn readdir(&self, path: &FsPath, attrs: bool, sink: &mut DirSink<'_>) -> FsResult<()>;
    /// Opens a directory for a listing delivered in batches (same entries
    /// and errors as [`readdir`](Backend::readdir)). The default collects
    /// the whole listing with `readdir` ([`CollectedDir`]); backends whose
    /// directories can be large should stream instead, as `LocalFs` does.
    fn open_dir(&self, path: &FsPath, attrs: bool) -> FsResult<Box<dyn DirStream>> {
        Ok(Box::new(CollectedDir::collect(self, path, attrs)?))
    }
    /// `mknod(path, mode, dev)`, with `mode`'s permission bits applied
    /// exactly (no umask). Character and block devices are created only as
    /// `devices` says (decided on the directory that would hold the node);
    /// `EPERM` otherwise.
    fn mknod(&self, path: &FsPath, mode: u32, dev: u64, devices: Devices) -> FsResult<()>;
    /// `open(path, flags)` then `close`: a permission check.
    fn open(&self, path: &FsPath, flags: i32) -> FsResult<()>;
    /// `chmod` of the object itself (`EOPNOTSUPP` on a symlink). With
    /// [`SetId::Strip`], set-user-ID and set-group-ID are removed from
    /// `mode` unless the object is a directory, decided on the object that
    /// is changed (not on an earlier lookup).
    fn chmod(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()>;
    /// `lchown`.
    fn chown(&self, path: &FsPath, owner: Owner) -> FsResult<()>;
    /// `truncate`; with [`SetId::Strip`] it clears the file's set-ID bits
    /// as [`SetId::after_write`] says.
    fn truncate(&self, path: &FsPath, size: u64, setid: SetId) -> FsResult<()>;
    /// `faccessat(path, mask, AT_EACCESS | AT_SYMLINK_NOFOLLOW)`.
    fn access(&self, path: &FsPath, mask: u32) -> FsResult<()>;
    /// `symlink(target, path)`: `target` stored verbatim.
    fn symlink(&self, path: &FsPath, target: &[u8]) -> FsResult<()>;
    /// `readlink`.
    fn readlink(&self, path: &FsPath) -> FsResult<Vec<u8>>;
    /// `rmdir`.
    fn rmdir(&self, path: &FsPath) -> FsResult<()>;
    /// `mkdir`, with `mode` applied exactly (no umask). Under a
    /// set-group-ID directory the new one also gets the set-group-ID bit,
    /// whatever `mode` says, as with `mkdir(2)`.
    fn mkdir(&self, path: &FsPath, mode: u32) -> FsResult<()>;
    /// `link(existing, path)` (never following `existing`).
    fn link(&self, path: &FsPath, existing: &FsPath) -> FsResult<()>;
    /// `rename(from, to)`.
    fn rename(&self, from: &FsPath, to: &FsPath) -> FsResult<()>;
    /// `fallocate(fd, mode, offset, len)` on a regular file; with
    /// [`SetId::Strip`] it clears the file's set-ID bits as
    /// [`SetId::after_write`] says.
    fn fallocate(
        &self,
        path: &FsPath,
        mode: i32,
        offset: u64,
        len: u64,
        setid: SetId,
    ) -> FsResult<()>;
    /// `statvfs`.
    fn statfs(&self, path: &FsPath) -> FsResult<StatFs>;
    /// `llistxattr`: the names, each without terminator. `E2BIG` if the
    /// NUL-separated list would exceed `limit` bytes (the server's limit;
    /// the engine turns a client buffer that is too small into `ERANGE`).
    fn listxattr(&self, path: &FsPath, limit: usize) -> FsResult<Vec<Vec<u8>>>;
    /// `lgetxattr`. `E2BIG` if the value exceeds `limit` bytes.
    fn getxattr(&self, path: &FsPath, name: &[u8], limit: usize) -> FsResult<Vec<u8>>;
    /// `lsetxattr`.
    fn setxattr(&self, path: &FsPath, name: &[u8], value: &[u8], flag: XattrFlag) -> FsResult<()>;
    /// `lremovexattr`.
    fn removexattr(&self, path: &FsPath, name: &[u8]) -> FsResult<()>;
    /// `utimensat(.., AT_SYMLINK_NOFOLLOW)`, with `UTIME_NOW` and
    /// `UTIME_OMIT` and their permission rules (see [`SetTime`]).
    fn utimens(&self, path: &FsPath, atime: SetTime, mtime: SetTime) -> FsResult<()>;
    /// `creat(path, mode)`: creates (mode applied exactly) or truncates an
    /// existing regular file (which, with [`SetId::Strip`], clears its
    /// set-ID bits as [`SetId::after_write`] says). The engine has already
    /// removed from `mode` what the mount's [`SetId`] forbids.
    fn create(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()>;
    /// `unlink`.
    fn unlink(&self, path: &FsPath) -> FsResult<()>;
    /// `fsync` (or `fdatasync`) of a file or directory.
    fn fsync(&self, path: &FsPath, datasync: bool) -> FsResult<()>;
    /// Opens a regular file for reading (`EISDIR` for a directory, `EINVAL`
    /// for other non-regular files).
    fn open_read(&self, path: &FsPath) -> FsResult<Box<dyn FileHandle>>;
    /// Opens an existing regular file for writing in place. With
    /// [`SetId::Strip`], the file's set-ID bits are cleared as
    /// [`SetId::after_write`] says before the handle is returned (every
    /// such open is followed by a write).
    fn open_write(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn FileHandle>>;
    /// Starts an atomic whole-file replacement of `path`. The new file
    /// keeps the permissions (and, where allowed, the owner) of the file it
    /// replaces; with [`SetId::Strip`], without its set-ID bits.
    fn replace(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn Replacement>>;
}
