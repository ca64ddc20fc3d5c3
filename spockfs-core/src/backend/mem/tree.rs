//! The tree behind the lock: inodes and their data, directory entries,
//! path lookup (never following a symlink), link counts and the capacity
//! accounting.

use super::perm::{Cred, S_ISGID, W};
use super::xattr::xattr_bytes;
use super::{mode, MemFs};
use crate::backend::Stat;
use crate::{Errno, FsPath, FsResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Inode number of the root directory.
pub(super) const ROOT: u64 = 1;
/// `st_dev` of every object.
pub(super) const DEV: u64 = 0x5350_4f43;

/// Largest file size; beyond it writes and extensions fail with `EFBIG`.
pub(super) const MAX_FILE_SIZE: u64 = 1 << 40;
/// `f_files`: the most inodes that may exist at once.
pub(super) const MAX_INODES: u64 = 1_000_000;

/// `st_size` of a directory.
pub(super) const DIR_SIZE: u64 = 4096;

/// What the clones of a [`MemFs`] share: the tree, behind its one mutex,
/// and the capacity.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) capacity: u64,
}

impl MemFs {
    pub(super) fn build(capacity: u64, cred: Cred) -> MemFs {
        let now = now();
        let root = Inode {
            mode: mode::S_IFDIR | 0o755,
            nlink: 2,
            uid: cred.uid,
            gid: cred.gid,
            atime: now,
            mtime: now,
            ctime: now,
            xattrs: BTreeMap::new(),
            open: 0,
            data: Data::Dir(BTreeMap::new()),
        };
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, root);
        MemFs {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    inodes,
                    next_ino: ROOT + 1,
                    used: 0,
                }),
                capacity,
            }),
            cred,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) enum Data {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, u64>),
    Symlink(Vec<u8>),
    /// A FIFO or a socket (the type is in the mode).
    Special,
}

pub(super) struct Inode {
    pub(super) mode: u32,
    pub(super) nlink: u64,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) atime: Time,
    pub(super) mtime: Time,
    pub(super) ctime: Time,
    pub(super) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Open [`FileHandle`](crate::backend::FileHandle)s: an unlinked file lives until they close.
    pub(super) open: u64,
    pub(super) data: Data,
}

impl Inode {
    pub(super) fn kind(&self) -> u32 {
        self.mode & mode::S_IFMT
    }

    pub(super) fn is_dir(&self) -> bool {
        self.kind() == mode::S_IFDIR
    }

    pub(super) fn is_file(&self) -> bool {
        self.kind() == mode::S_IFREG
    }

    pub(super) fn is_symlink(&self) -> bool {
        self.kind() == mode::S_IFLNK
    }

    pub(super) fn size(&self) -> u64 {
        match &self.data {
            Data::File(d) => d.len() as u64,
            Data::Dir(_) => DIR_SIZE,
            Data::Symlink(t) => t.len() as u64,
            Data::Special => 0,
        }
    }

    /// Bytes charged against the capacity.
    pub(super) fn bytes(&self) -> u64 {
        let content = match &self.data {
            Data::File(d) => d.len() as u64,
            _ => 0,
        };
        content
            + self
                .xattrs
                .iter()
                .map(|(n, v)| xattr_bytes(n, v))
                .sum::<u64>()
    }

    pub(super) fn stat(&self, ino: u64) -> Stat {
        let size = self.size();
        Stat {
            dev: DEV,
            ino,
            mode: self.mode,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            size,
            blocks: match &self.data {
                Data::File(_) => size.div_ceil(512),
                Data::Dir(_) => DIR_SIZE / 512,
                _ => 0,
            },
            atime: self.atime.sec,
            mtime: self.mtime.sec,
            ctime: self.ctime.sec,
            atime_nsec: self.atime.nsec,
            mtime_nsec: self.mtime.nsec,
            ctime_nsec: self.ctime.nsec,
        }
    }

    /// Content changed: mtime and ctime.
    pub(super) fn modified(&mut self, now: Time) {
        self.mtime = now;
        self.ctime = now;
    }
}

/// A timestamp, with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Time {
    pub(super) sec: i64,
    pub(super) nsec: u32,
}

pub(super) fn now() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Time {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        })
        .unwrap_or(Time { sec: 0, nsec: 0 })
}

pub(super) fn last(chain: &[u64]) -> u64 {
    chain.last().copied().unwrap_or(ROOT)
}

/// Converts a file offset or size known to be at most [`MAX_FILE_SIZE`].
pub(super) fn to_usize(v: u64) -> FsResult<usize> {
    usize::try_from(v).map_err(|_| Errno::EFBIG)
}

/// Writes `buf` at `offset` of `data`, zero-filling any gap. The caller has
/// checked that the end is within limits.
pub(super) fn write_into(data: &mut Vec<u8>, buf: &[u8], offset: u64) -> FsResult<()> {
    let start = to_usize(offset)?;
    let end = start.checked_add(buf.len()).ok_or(Errno::EFBIG)?;
    if data.len() < end {
        data.resize(end, 0);
    }
    if let Some(dst) = data.get_mut(start..end) {
        dst.copy_from_slice(buf);
    }
    Ok(())
}

/// Zeroes `data[start..end]`, clipped to its length.
pub(super) fn zero_range(data: &mut [u8], start: u64, end: u64) {
    let len = data.len() as u64;
    let (start, end) = (start.min(len), end.min(len));
    if let (Ok(s), Ok(e)) = (usize::try_from(start), usize::try_from(end)) {
        if let Some(r) = data.get_mut(s..e) {
            r.fill(0);
        }
    }
}

/// The end of a write of `len` bytes at `offset`, as `pwrite` checks it:
/// `EINVAL` for a negative offset, `EFBIG` past the largest file size.
pub(super) fn write_end(offset: u64, len: usize) -> FsResult<u64> {
    if offset > i64::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    let end = offset.checked_add(len as u64).ok_or(Errno::EFBIG)?;
    if end > MAX_FILE_SIZE {
        return Err(Errno::EFBIG);
    }
    Ok(end)
}

pub(super) struct State {
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) next_ino: u64,
    /// Bytes charged against the capacity.
    pub(super) used: u64,
}

impl State {
    pub(super) fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn entry(&self, dir: u64, name: &[u8]) -> Option<u64> {
        match &self.inodes.get(&dir)?.data {
            Data::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// Looks `name` up in `dir` (which must be searchable).
    pub(super) fn lookup(&self, cred: &Cred, dir: u64, name: &[u8]) -> FsResult<u64> {
        self.search(cred, dir)?;
        self.entry(dir, name).ok_or(Errno::ENOENT)
    }

    /// Resolves the directory `rel` (relative to the root, empty for the
    /// root) like `openat2(root, rel, O_PATH | O_DIRECTORY,
    /// RESOLVE_NO_SYMLINKS)`: every directory traversed to reach it must be
    /// searchable (but not the result itself), a symlink anywhere is
    /// `ELOOP` and a non-directory `ENOTDIR`. Returns the chain of
    /// directories from the root to the result.
    pub(super) fn walk_dir(&self, cred: &Cred, rel: &[u8]) -> FsResult<Vec<u64>> {
        let mut chain = vec![ROOT];
        let mut cur = ROOT;
        for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let next = self.lookup(cred, cur, comp)?;
            match self.get(next)?.kind() {
                mode::S_IFDIR => {}
                mode::S_IFLNK => return Err(Errno::ELOOP),
                _ => return Err(Errno::ENOTDIR),
            }
            chain.push(next);
            cur = next;
        }
        Ok(chain)
    }

    pub(super) fn dir(&self, cred: &Cred, rel: &[u8]) -> FsResult<u64> {
        Ok(last(&self.walk_dir(cred, rel)?))
    }

    /// The object at `path` itself, never following a final symlink (the
    /// root for the root path, which still needs search permission, as
    /// `"."` does).
    pub(super) fn object(&self, cred: &Cred, path: &FsPath) -> FsResult<u64> {
        match path.parent_and_name() {
            None => {
                self.search(cred, ROOT)?;
                Ok(ROOT)
            }
            Some((parent, name)) => {
                let dir = self.dir(cred, parent)?;
                self.lookup(cred, dir, name)
            }
        }
    }

    /// What `open(path, acc | O_NOFOLLOW | O_NONBLOCK)` checks, where
    /// `mask` is R (`O_RDONLY`), W (`O_WRONLY`) or R|W (`O_RDWR`).
    pub(super) fn open_node(&self, cred: &Cred, path: &FsPath, mask: u32) -> FsResult<u64> {
        let ino = self.object(cred, path)?;
        let node = self.get(ino)?;
        match node.kind() {
            mode::S_IFLNK => return Err(Errno::ELOOP),
            mode::S_IFDIR if mask & W != 0 => return Err(Errno::EISDIR),
            _ => {}
        }
        cred.check(node, mask)?;
        match node.kind() {
            // Sockets cannot be opened; a FIFO without a reader cannot be
            // opened write-only without blocking.
            mode::S_IFSOCK => Err(Errno::ENXIO),
            mode::S_IFIFO if mask == W => Err(Errno::ENXIO),
            _ => Ok(ino),
        }
    }

    /// [`open_node`](Self::open_node), then refuses anything but a regular
    /// file (`EISDIR` for a directory, `EINVAL` otherwise).
    pub(super) fn open_regular(&self, cred: &Cred, path: &FsPath, mask: u32) -> FsResult<u64> {
        let ino = self.open_node(cred, path, mask)?;
        match self.get(ino)?.kind() {
            mode::S_IFREG => Ok(ino),
            mode::S_IFDIR => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Charges the change of an object's bytes from `old` to `new` against
    /// the capacity (`ENOSPC`, changing nothing, if it would not fit).
    pub(super) fn charge(&mut self, capacity: u64, old: u64, new: u64) -> FsResult<()> {
        if new > old {
            let total = self.used.checked_add(new - old).ok_or(Errno::ENOSPC)?;
            if total > capacity {
                return Err(Errno::ENOSPC);
            }
            self.used = total;
        } else {
            self.used = self.used.saturating_sub(old - new);
        }
        Ok(())
    }

    /// Would `extra` more bytes fit?
    pub(super) fn fits(&self, capacity: u64, extra: u64) -> FsResult<()> {
        match self.used.checked_add(extra) {
            Some(t) if t <= capacity => Ok(()),
            _ => Err(Errno::ENOSPC),
        }
    }

    /// Allocates an unlinked inode for a new object to be attached in `dir`
    /// (whose set-group-ID bit decides its group). Its bytes must have been
    /// charged by the caller.
    pub(super) fn new_inode(
        &mut self,
        cred: &Cred,
        dir: u64,
        kind: u32,
        perms: u32,
        data: Data,
    ) -> FsResult<u64> {
        if self.inodes.len() as u64 >= MAX_INODES {
            return Err(Errno::ENOSPC);
        }
        let parent = self.get(dir)?;
        let sgid_dir = parent.mode & S_ISGID != 0;
        let gid = if sgid_dir { parent.gid } else { cred.gid };
        let mut perms = perms & mode::PERMS;
        // The chmod to the exact mode cannot set set-group-ID for a group
        // the caller is not in (a directory inherits it from its parent).
        if perms & S_ISGID != 0 && !cred.in_group(gid) && !(kind == mode::S_IFDIR && sgid_dir) {
            perms &= !S_ISGID;
        }
        // A directory inherits the bit, whatever the mode asked (mkdir(2)).
        if kind == mode::S_IFDIR && sgid_dir {
            perms |= S_ISGID;
        }
        let now = now();
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                mode: kind | perms,
                nlink: if kind == mode::S_IFDIR { 2 } else { 1 },
                uid: cred.uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                xattrs: BTreeMap::new(),
                open: 0,
                data,
            },
        );
        Ok(ino)
    }

    /// Adds the entry `name` → `ino` to `dir`.
    pub(super) fn attach(&mut self, dir: u64, name: &[u8], ino: u64, now: Time) -> FsResult<()> {
        let is_dir = self.get(ino)?.is_dir();
        let d = self.get_mut(dir)?;
        match &mut d.data {
            Data::Dir(entries) => {
                entries.insert(name.to_vec(), ino);
            }
            _ => return Err(Errno::ENOTDIR),
        }
        if is_dir {
            d.nlink += 1;
        }
        d.modified(now);
        Ok(())
    }

    /// Removes the entry `name` from `dir`, returning its inode (whose link
    /// count is left to the caller).
    pub(super) fn detach(&mut self, dir: u64, name: &[u8], now: Time) -> FsResult<u64> {
        let d = self.get_mut(dir)?;
        let ino = match &mut d.data {
            Data::Dir(entries) => entries.remove(name).ok_or(Errno::ENOENT)?,
            _ => return Err(Errno::ENOTDIR),
        };
        d.modified(now);
        if self.inodes.get(&ino).is_some_and(Inode::is_dir) {
            let d = self.get_mut(dir)?;
            d.nlink = d.nlink.saturating_sub(1);
        }
        Ok(ino)
    }

    /// One name fewer for `ino`: frees it when none is left and it is not
    /// open.
    pub(super) fn drop_link(&mut self, ino: u64, now: Time) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.nlink = if n.is_dir() {
                0
            } else {
                n.nlink.saturating_sub(1)
            };
            n.ctime = now;
        }
        self.release(ino);
    }

    pub(super) fn release(&mut self, ino: u64) {
        if self
            .inodes
            .get(&ino)
            .is_some_and(|n| n.nlink == 0 && n.open == 0)
        {
            if let Some(n) = self.inodes.remove(&ino) {
                self.used = self.used.saturating_sub(n.bytes());
            }
        }
    }

    /// The bytes freed if `ino` lost one name now.
    pub(super) fn freed_by_unlink(&self, ino: u64) -> u64 {
        match self.inodes.get(&ino) {
            Some(n) if (n.nlink <= 1 || n.is_dir()) && n.open == 0 => n.bytes(),
            _ => 0,
        }
    }

    pub(super) fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(&ino).map(|n| &n.data), Some(Data::Dir(e)) if e.is_empty())
    }

    /// Sets the size of the regular file `ino` (charging the capacity).
    pub(super) fn resize(&mut self, capacity: u64, ino: u64, size: u64) -> FsResult<()> {
        let old = self.get(ino)?.size();
        let new_len = to_usize(size)?;
        self.charge(capacity, old, size)?;
        if let Data::File(d) = &mut self.get_mut(ino)?.data {
            d.resize(new_len, 0);
        }
        Ok(())
    }
}
