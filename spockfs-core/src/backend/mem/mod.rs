//! `MemFs`: an in-memory filesystem with the observable behaviour of
//! [`LocalFs`](crate::LocalFs) on Linux.
//!
//! The whole tree lives behind one mutex. Every [`Backend`] call takes it
//! once, so each call is atomic with respect to the others: a rename or a
//! replacement commit is never seen half done. No call waits on I/O, hence
//! [`Backend::is_blocking`] is `false`.
//!
//! Each call answers what the Linux syscall named on the trait method would
//! answer for `LocalFs` on the same tree. That includes which errno wins when
//! several apply (for example `EEXIST` before `EACCES` for `mkdir`), and the
//! permission checks of the kernel for the identity that built the `MemFs`.
//! The known differences are listed on [`MemFs`].

mod handles;
mod perm;
mod tree;
mod xattr;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

use super::{
    mode, Backend, Devices, DirSink, FileHandle, Owner, Replacement, SetId, SetTime, Stat, StatFs,
    XattrFlag, ST_NODEV,
};
use crate::{Errno, FsPath, FsResult, Identity};
use handles::MemReplacement;
use perm::{Cred, R, S_ISGID, S_ISUID, S_IXGRP, W, X};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, TryLockError};
use tree::{last, now, zero_range, Data, Shared, Time, MAX_FILE_SIZE, MAX_INODES};

/// `f_fsid` reported by STATFS.
const FSID: u64 = 0x5350_4f43_4b4d_454d;
/// Capacity of [`MemFs::new`]: 1 GiB.
const DEFAULT_CAPACITY: u64 = 1 << 30;

/// Block size reported by STATFS.
const BLOCK_SIZE: u64 = 4096;

/// Longest symlink target (`PATH_MAX` minus the terminating NUL).
const MAX_SYMLINK: usize = 4095;
/// Most hard links to one file (ext4's `EXT4_LINK_MAX`).
const LINK_MAX: u64 = 65000;
/// Longest name (`NAME_MAX`).
const NAME_MAX: u64 = 255;
/// Permission bits of a file installed by a replacement where no regular
/// file stood before (0o666 under the usual umask of 0o022).
const REPLACE_PERMS: u32 = 0o644;

/// `fallocate` mode bits.
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// A filesystem kept entirely in memory, for tests, demos and scratch
/// mounts.
///
/// Clones share the same tree (the state is behind an [`Arc`]), so a test
/// can keep a handle and inspect what a server did through the [`Backend`]
/// trait.
///
/// ```
/// use spockfs_core::{Backend, FsPath, MemFs, SetId};
///
/// let fs = MemFs::new();
/// let inspector = fs.clone(); // same tree
///
/// let path = FsPath::from_url_path("/hello.txt")?;
/// fs.create(&path, 0o640, SetId::Strip)?;
/// fs.open_write(&path, SetId::Strip)?.write_at(b"hello", 0)?;
///
/// let st = inspector.getattr(&path)?;
/// assert!(st.is_file());
/// assert_eq!(st.size, 5);
/// assert_eq!(st.mode & 0o7777, 0o640);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Semantics
///
/// Each call does what `LocalFs` does on Linux for the same tree. It never
/// follows a symlink, checks permissions like the kernel, keeps hard link
/// counts (directories count `2 +` their subdirectories), and keeps
/// unlinked files alive while a [`FileHandle`] is open on them. Permission
/// checks are made for the identity the request acts as
/// ([`Identity::current`], set by the engine), or outside of a request for
/// the effective uid and gid of the process *when the `MemFs` was built*
/// (read once, in [`MemFs::with_capacity`]). Uid 0 bypasses read, write and
/// search checks, like a process with `CAP_DAC_OVERRIDE`. Other uids get
/// the owner, group (primary or supplementary) or other bits. New objects
/// belong to that uid and gid, or to the directory's group under a
/// set-group-ID directory (a new directory also inherits the bit). Hard
/// links follow the rules of `fs.protected_hardlinks = 1`, and the sticky
/// bit restricts deletion as on Linux.
///
/// Capacity counts the bytes of file contents plus the names and values of
/// extended attributes. A write, extension, `fallocate`, xattr update or
/// replacement commit that would exceed it fails with `ENOSPC` and changes
/// nothing. At most 1,000,000 inodes may exist at once.
///
/// # Known differences from `LocalFs`
///
/// - There are no sparse files. Extending a file charges its full new size
///   against the capacity. `truncate` to 1 TB on ext4 succeeds, here it
///   fails with `ENOSPC`.
/// - Files are limited to 2^40 bytes (`EFBIG`), ext4 to 16 TiB.
/// - Xattr values may be up to 65536 bytes (`XATTR_SIZE_MAX`). ext4 without
///   `ea_inode` refuses values that do not fit in one block (`ENOSPC`).
/// - POSIX ACLs only as far as they are a mode: setting an access ACL of
///   only the owner, group and other entries sets the permission bits it
///   stands for, as the kernel does (nothing is stored: reading it gives
///   `ENODATA`, removing it succeeds). An access ACL with a mask or named
///   users or groups, or a non-empty default ACL on a directory, gives
///   `EOPNOTSUPP` (after the kernel's checks of the value and of
///   ownership), as does any other use of `system.*`.
///   `security.capability` values are not validated.
/// - `fallocate` supports modes 0, `KEEP_SIZE` (1), `PUNCH_HOLE|KEEP_SIZE`
///   (3) and `ZERO_RANGE` (0x10, 0x11). Collapse and insert range give
///   `EOPNOTSUPP`. Space beyond the end of file that `KEEP_SIZE` would
///   reserve is checked against the capacity but not kept.
/// - A FIFO never has a reader, so opening one write-only gives `ENXIO`, as
///   `LocalFs` does when no other process has it open.
/// - A [`Replacement`] that creates its file, or that replaces something
///   other than a regular file, gives it mode 0o644. `LocalFs` gives
///   0o666 masked by the process umask. When it replaces a regular file, the
///   new file keeps all of the old file's permission bits, including
///   set-user-ID and set-group-ID. Its owner is kept as well, if the caller
///   is root.
/// - Data written to an uncommitted [`Replacement`] is not charged against
///   the capacity. It is charged when the replacement commits. A second
///   `commit`, or a write after the commit, fails with `EBADF`.
/// - Listing a directory needs only read permission, as `getdents` does.
///   `LocalFs` also needs search permission, because it reopens the
///   directory through `"."`.
/// - Reads never update the access time.
#[derive(Clone)]
pub struct MemFs {
    shared: Arc<Shared>,
    cred: Cred,
}

impl Default for MemFs {
    /// Same as [`MemFs::new`].
    fn default() -> MemFs {
        MemFs::new()
    }
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemFs");
        d.field("capacity", &self.shared.capacity)
            .field("uid", &self.cred.uid)
            .field("gid", &self.cred.gid)
            .field("groups", &self.cred.groups);
        let guard = match self.shared.state.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(st) = guard {
            d.field("used", &st.used).field("inodes", &st.inodes.len());
        }
        d.finish()
    }
}

impl MemFs {
    /// An empty filesystem with a capacity of 1 GiB. Its root directory has
    /// mode 0o755 and belongs to the process's effective uid and gid.
    pub fn new() -> MemFs {
        MemFs::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty filesystem holding at most `bytes` of file contents and
    /// extended attributes.
    ///
    /// Permission checks use the process's effective uid and gid as they
    /// are now. Later changes to the process credentials are not seen.
    pub fn with_capacity(bytes: u64) -> MemFs {
        MemFs::build(bytes, Cred::of(&Identity::process()))
    }

    /// The capacity in bytes, as given at construction.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Bytes in use: file contents plus xattr names and values, including
    /// files that are unlinked but still open.
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

impl Backend for MemFs {
    fn is_blocking(&self) -> bool {
        false
    }

    fn getattr(&self, path: &FsPath) -> FsResult<Stat> {
        let st = self.lock();
        let ino = st.object(&self.cred(), path)?;
        Ok(st.get(ino)?.stat(ino))
    }

    fn readdir(&self, path: &FsPath, attrs: bool, sink: &mut DirSink<'_>) -> FsResult<()> {
        let cred = &self.cred();
        // Collected under the lock, delivered without it, so that the sink
        // may call back into this filesystem.
        let entries: Vec<(Vec<u8>, Option<Stat>)> = {
            let st = self.lock();
            let ino = st.object(cred, path)?;
            let node = st.get(ino)?;
            // open(O_DIRECTORY | O_NOFOLLOW) checks O_DIRECTORY first: a
            // symlink is ENOTDIR here, not ELOOP.
            let Data::Dir(entries) = &node.data else {
                return Err(Errno::ENOTDIR);
            };
            cred.check(node, R)?;
            if attrs && !entries.is_empty() {
                // Each entry's lstat needs search permission.
                cred.check(node, X)?;
            }
            entries
                .iter()
                .filter_map(|(name, &child)| {
                    if attrs {
                        let n = st.inodes.get(&child)?;
                        Some((name.clone(), Some(n.stat(child))))
                    } else {
                        Some((name.clone(), None))
                    }
                })
                .collect()
        };
        for (name, stat) in &entries {
            sink(name, stat.as_ref())?;
        }
        Ok(())
    }

    fn mknod(&self, path: &FsPath, mode: u32, _dev: u64, devices: Devices) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EEXIST)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        let kind = match mode & mode::S_IFMT {
            0 | mode::S_IFREG => mode::S_IFREG,
            mode::S_IFIFO => mode::S_IFIFO,
            mode::S_IFSOCK => mode::S_IFSOCK,
            // Device nodes only where the mount allows them: a MemFs node
            // is inert whatever its type (its filesystem is `nodev`).
            k @ (mode::S_IFCHR | mode::S_IFBLK) if devices == Devices::Inert => k,
            mode::S_IFCHR | mode::S_IFBLK | mode::S_IFDIR => return Err(Errno::EPERM),
            _ => return Err(Errno::EINVAL),
        };
        st.search(cred, dir)?;
        if st.entry(dir, name).is_some() {
            return Err(Errno::EEXIST);
        }
        st.may_create(cred, dir)?;
        let data = if kind == mode::S_IFREG {
            Data::File(Vec::new())
        } else {
            Data::Special
        };
        let ino = st.new_inode(cred, dir, kind, mode, data)?;
        st.attach(dir, name, ino, now())
    }

    fn open(&self, path: &FsPath, flags: i32) -> FsResult<()> {
        let mask = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => R,
            libc::O_WRONLY => W,
            libc::O_RDWR => R | W,
            _ => return Err(Errno::EINVAL),
        };
        self.lock().open_node(&self.cred(), path, mask).map(drop)
    }

    fn chmod(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()> {
        let cred = &self.cred();
        let mut st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get_mut(ino)?;
        if node.is_symlink() {
            return Err(Errno::EOPNOTSUPP);
        }
        if !cred.owns(node) {
            return Err(Errno::EPERM);
        }
        let mut perms = mode & mode::PERMS;
        if !node.is_dir() {
            perms = setid.file_mode(perms);
        }
        if !cred.in_group(node.gid) {
            perms &= !S_ISGID;
        }
        node.mode = node.kind() | perms;
        node.ctime = now();
        Ok(())
    }

    fn chown(&self, path: &FsPath, owner: Owner) -> FsResult<()> {
        let cred = &self.cred();
        // -1 means "unchanged" to the syscall.
        let uid = owner.uid.filter(|&u| u != u32::MAX);
        let gid = owner.gid.filter(|&g| g != u32::MAX);
        let mut st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get_mut(ino)?;
        let is_owner = node.uid == cred.uid;
        if let Some(u) = uid {
            let allowed = cred.is_root() || (is_owner && u == node.uid);
            if !allowed {
                return Err(Errno::EPERM);
            }
        }
        if let Some(g) = gid {
            let allowed = cred.is_root() || (is_owner && (g == node.gid || cred.member(g)));
            if !allowed {
                return Err(Errno::EPERM);
            }
        }
        // chown of anything but a directory clears set-user-ID, and
        // set-group-ID when it means "execute as group" (even for root).
        let mut new_mode = node.mode;
        if !node.is_dir() {
            new_mode &= !S_ISUID;
            if new_mode & S_ISGID != 0 && (new_mode & S_IXGRP != 0 || !cred.in_group(node.gid)) {
                new_mode &= !S_ISGID;
            }
        }
        if new_mode != node.mode && !cred.owns(node) {
            return Err(Errno::EPERM);
        }
        node.mode = new_mode;
        if let Some(u) = uid {
            node.uid = u;
        }
        if let Some(g) = gid {
            node.gid = g;
        }
        node.ctime = now();
        Ok(())
    }

    fn truncate(&self, path: &FsPath, size: u64, setid: SetId) -> FsResult<()> {
        let cred = &self.cred();
        let mut st = self.lock();
        let ino = st.open_regular(cred, path, W)?;
        if size > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        st.resize(self.shared.capacity, ino, size)?;
        let node = st.get_mut(ino)?;
        node.modified(now());
        node.remove_privs(cred, setid);
        Ok(())
    }

    fn access(&self, path: &FsPath, mask: u32) -> FsResult<()> {
        if mask & !7 != 0 {
            return Err(Errno::EINVAL);
        }
        let st = self.lock();
        let ino = st.object(&self.cred(), path)?;
        if mask == 0 {
            return Ok(());
        }
        self.cred().check(st.get(ino)?, mask)
    }

    fn symlink(&self, path: &FsPath, target: &[u8]) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EEXIST)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        if target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() > MAX_SYMLINK {
            return Err(Errno::ENAMETOOLONG);
        }
        st.search(cred, dir)?;
        if st.entry(dir, name).is_some() {
            return Err(Errno::EEXIST);
        }
        st.may_create(cred, dir)?;
        let data = Data::Symlink(target.to_vec());
        let ino = st.new_inode(cred, dir, mode::S_IFLNK, 0o777, data)?;
        st.attach(dir, name, ino, now())
    }

    fn readlink(&self, path: &FsPath) -> FsResult<Vec<u8>> {
        let st = self.lock();
        let ino = st.object(&self.cred(), path)?;
        match &st.get(ino)?.data {
            Data::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn rmdir(&self, path: &FsPath) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EBUSY)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        let ino = st.lookup(cred, dir, name)?;
        st.may_delete(cred, dir, ino, true)?;
        if !st.is_empty_dir(ino) {
            return Err(Errno::ENOTEMPTY);
        }
        let now = now();
        st.detach(dir, name, now)?;
        st.drop_link(ino, now);
        Ok(())
    }

    fn mkdir(&self, path: &FsPath, mode: u32) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EEXIST)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        st.search(cred, dir)?;
        if st.entry(dir, name).is_some() {
            return Err(Errno::EEXIST);
        }
        st.may_create(cred, dir)?;
        let ino = st.new_inode(cred, dir, mode::S_IFDIR, mode, Data::Dir(BTreeMap::new()))?;
        st.attach(dir, name, ino, now())
    }

    fn link(&self, path: &FsPath, existing: &FsPath) -> FsResult<()> {
        let cred = &self.cred();
        let (src_parent, src_name) = existing.parent_and_name().ok_or(Errno::EPERM)?;
        let (dst_parent, dst_name) = path.parent_and_name().ok_or(Errno::EEXIST)?;
        let mut st = self.lock();
        let src_dir = st.dir(cred, src_parent)?;
        let dst_dir = st.dir(cred, dst_parent)?;
        let src = st.lookup(cred, src_dir, src_name)?;
        st.search(cred, dst_dir)?;
        if st.entry(dst_dir, dst_name).is_some() {
            return Err(Errno::EEXIST);
        }
        let node = st.get(src)?;
        // fs.protected_hardlinks: someone else's file only if it is a plain
        // regular file the caller may read and write.
        if !cred.owns(node) {
            let safe = node.is_file()
                && node.mode & S_ISUID == 0
                && node.mode & (S_ISGID | S_IXGRP) != (S_ISGID | S_IXGRP)
                && cred.permits(node, R | W);
            if !safe {
                return Err(Errno::EPERM);
            }
        }
        st.may_create(cred, dst_dir)?;
        let node = st.get(src)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        if node.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        let now = now();
        let node = st.get_mut(src)?;
        node.nlink += 1;
        node.ctime = now;
        st.attach(dst_dir, dst_name, src, now)
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> FsResult<()> {
        let cred = &self.cred();
        let (from_parent, from_name) = from.parent_and_name().ok_or(Errno::EBUSY)?;
        let mut st = self.lock();
        let from_chain = st.walk_dir(cred, from_parent)?;
        let (to_parent, to_name) = to.parent_and_name().ok_or(Errno::EBUSY)?;
        let to_chain = st.walk_dir(cred, to_parent)?;
        let (from_dir, to_dir) = (last(&from_chain), last(&to_chain));
        st.search(cred, from_dir)?;
        st.search(cred, to_dir)?;
        let src = st.entry(from_dir, from_name).ok_or(Errno::ENOENT)?;
        let dst = st.entry(to_dir, to_name);
        let is_dir = st.get(src)?.is_dir();
        // The source may not be an ancestor of the target...
        if to_chain.contains(&src) {
            return Err(Errno::EINVAL);
        }
        // ...nor the target an ancestor of the source.
        if dst.is_some_and(|d| from_chain.contains(&d)) {
            return Err(Errno::ENOTEMPTY);
        }
        if dst == Some(src) {
            // Two names of one inode: POSIX says do nothing.
            return Ok(());
        }
        st.may_delete(cred, from_dir, src, is_dir)?;
        match dst {
            None => st.may_create(cred, to_dir)?,
            Some(d) => st.may_delete(cred, to_dir, d, is_dir)?,
        }
        if is_dir && from_dir != to_dir {
            // Its ".." entry changes.
            cred.check(st.get(src)?, W)?;
        }
        if let Some(d) = dst {
            if st.get(d)?.is_dir() && !st.is_empty_dir(d) {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let now = now();
        if let Some(d) = dst {
            st.detach(to_dir, to_name, now)?;
            st.drop_link(d, now);
        }
        st.detach(from_dir, from_name, now)?;
        st.attach(to_dir, to_name, src, now)?;
        st.get_mut(src)?.ctime = now;
        Ok(())
    }

    fn fallocate(
        &self,
        path: &FsPath,
        mode: i32,
        offset: u64,
        len: u64,
        setid: SetId,
    ) -> FsResult<()> {
        let cred = &self.cred();
        let capacity = self.shared.capacity;
        let mut st = self.lock();
        let ino = st.open_regular(cred, path, W)?;
        if offset > i64::MAX as u64 || len == 0 || len > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !FALLOC_FL_KEEP_SIZE {
            0 => false,
            FALLOC_FL_ZERO_RANGE => true,
            FALLOC_FL_PUNCH_HOLE if keep_size => true,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let size = st.get(ino)?.size();
        let punch = mode & !FALLOC_FL_KEEP_SIZE == FALLOC_FL_PUNCH_HOLE;
        if keep_size {
            // Blocks past the end would be reserved: they must fit.
            if end > size && !punch {
                st.fits(capacity, end - size)?;
            }
        } else if end > size {
            st.resize(capacity, ino, end)?;
        }
        let node = st.get_mut(ino)?;
        // `file_modified`, as the kernel's fallocate does.
        node.remove_privs(cred, setid);
        if zero {
            if let Data::File(d) = &mut node.data {
                zero_range(d, offset, end);
            }
        }
        if zero || (!keep_size && end > size) {
            node.modified(now());
        }
        Ok(())
    }

    fn statfs(&self, path: &FsPath) -> FsResult<StatFs> {
        let capacity = self.shared.capacity;
        let st = self.lock();
        st.object(&self.cred(), path)?;
        let free = capacity.saturating_sub(st.used) / BLOCK_SIZE;
        let ffree = MAX_INODES.saturating_sub(st.inodes.len() as u64);
        Ok(StatFs {
            bsize: BLOCK_SIZE,
            frsize: BLOCK_SIZE,
            blocks: capacity / BLOCK_SIZE,
            bfree: free,
            bavail: free,
            files: MAX_INODES,
            ffree,
            favail: ffree,
            fsid: FSID,
            // Nothing here is ever a device to the host.
            flag: ST_NODEV,
            namemax: NAME_MAX,
        })
    }

    fn listxattr(&self, path: &FsPath, limit: usize) -> FsResult<Vec<Vec<u8>>> {
        self.xattr_list(path, limit)
    }

    fn getxattr(&self, path: &FsPath, name: &[u8], limit: usize) -> FsResult<Vec<u8>> {
        self.xattr_get(path, name, limit)
    }

    fn setxattr(&self, path: &FsPath, name: &[u8], value: &[u8], flag: XattrFlag) -> FsResult<()> {
        self.xattr_set(path, name, value, flag)
    }

    fn removexattr(&self, path: &FsPath, name: &[u8]) -> FsResult<()> {
        self.xattr_remove(path, name)
    }

    fn utimens(&self, path: &FsPath, atime: SetTime, mtime: SetTime) -> FsResult<()> {
        if !atime.is_valid() || !mtime.is_valid() {
            return Err(Errno::EINVAL);
        }
        if (atime, mtime) == (SetTime::Omit, SetTime::Omit) {
            // utimensat(2): nothing to do, the path is not even looked up.
            return Ok(());
        }
        let cred = &self.cred();
        let mut st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get_mut(ino)?;
        if !cred.owns(node) {
            // `may_setattr`: "touch" (both times now) needs write access,
            // any other change ownership.
            if (atime, mtime) != (SetTime::Now, SetTime::Now) {
                return Err(Errno::EPERM);
            }
            cred.check(node, W)?;
        }
        let now = now();
        let time = |t: SetTime, old: Time| match t {
            SetTime::Now => now,
            SetTime::Omit => old,
            SetTime::At { sec, nsec } => Time { sec, nsec },
        };
        node.atime = time(atime, node.atime);
        node.mtime = time(mtime, node.mtime);
        node.ctime = now;
        Ok(())
    }

    fn create(&self, path: &FsPath, mode: u32, setid: SetId) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EISDIR)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        let Some(ino) = st.lookup(cred, dir, name).ok() else {
            // open(O_CREAT | O_EXCL), then fchmod to the exact mode.
            st.search(cred, dir)?;
            st.may_create(cred, dir)?;
            let ino = st.new_inode(cred, dir, mode::S_IFREG, mode, Data::File(Vec::new()))?;
            return st.attach(dir, name, ino, now());
        };
        // It exists: open(O_WRONLY | O_NOFOLLOW | O_NONBLOCK) and ftruncate.
        let node = st.get(ino)?;
        match node.kind() {
            mode::S_IFLNK => return Err(Errno::ELOOP),
            mode::S_IFDIR => return Err(Errno::EISDIR),
            _ => {}
        }
        cred.check(node, W)?;
        if !node.is_file() {
            return Err(Errno::ENXIO);
        }
        st.resize(self.shared.capacity, ino, 0)?;
        let node = st.get_mut(ino)?;
        node.modified(now());
        node.remove_privs(cred, setid);
        Ok(())
    }

    fn unlink(&self, path: &FsPath) -> FsResult<()> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EISDIR)?;
        let mut st = self.lock();
        let dir = st.dir(cred, parent)?;
        let ino = st.lookup(cred, dir, name)?;
        st.may_delete(cred, dir, ino, false)?;
        let now = now();
        st.detach(dir, name, now)?;
        st.drop_link(ino, now);
        Ok(())
    }

    fn fsync(&self, path: &FsPath, _datasync: bool) -> FsResult<()> {
        let st = self.lock();
        let ino = st.open_node(&self.cred(), path, R)?;
        if st.get(ino)?.kind() == mode::S_IFIFO {
            // A pipe has nothing to synchronize.
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn open_read(&self, path: &FsPath) -> FsResult<Box<dyn FileHandle>> {
        self.open_handle(path, R, SetId::Keep)
    }

    fn open_write(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn FileHandle>> {
        self.open_handle(path, W, setid)
    }

    fn replace(&self, path: &FsPath, setid: SetId) -> FsResult<Box<dyn Replacement>> {
        let cred = &self.cred();
        let (parent, name) = path.parent_and_name().ok_or(Errno::EISDIR)?;
        let st = self.lock();
        let dir = st.dir(cred, parent)?;
        // Refuse early what the commit would refuse: replacing a directory.
        if let Ok(ino) = st.lookup(cred, dir, name) {
            if st.get(ino)?.is_dir() {
                return Err(Errno::EISDIR);
            }
        }
        // Creating the (anonymous) temporary needs write access to the
        // directory.
        st.search(cred, dir)?;
        st.may_create(cred, dir)?;
        Ok(Box::new(MemReplacement {
            fs: self.clone(),
            dir,
            setid,
            name: name.to_vec(),
            data: Mutex::new(Some(Vec::new())),
        }))
    }
}
