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

use super::{
    mode, Backend, Devices, DirSink, FileHandle, Owner, Replacement, SetId, SetTime, Stat, StatFs,
    XattrFlag, ST_NODEV,
};
use crate::{Errno, FsPath, FsResult, Identity};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Inode number of the root directory.
const ROOT: u64 = 1;
/// `st_dev` of every object.
const DEV: u64 = 0x5350_4f43;
/// `f_fsid` reported by STATFS.
const FSID: u64 = 0x5350_4f43_4b4d_454d;
/// Capacity of [`MemFs::new`]: 1 GiB.
const DEFAULT_CAPACITY: u64 = 1 << 30;
/// Largest file size; beyond it writes and extensions fail with `EFBIG`.
const MAX_FILE_SIZE: u64 = 1 << 40;
/// `f_files`: the most inodes that may exist at once.
const MAX_INODES: u64 = 1_000_000;
/// Block size reported by STATFS.
const BLOCK_SIZE: u64 = 4096;
/// `st_size` of a directory.
const DIR_SIZE: u64 = 4096;
/// Longest xattr name (`XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value (`XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 65536;
/// Longest symlink target (`PATH_MAX` minus the terminating NUL).
const MAX_SYMLINK: usize = 4095;
/// Most hard links to one file (ext4's `EXT4_LINK_MAX`).
const LINK_MAX: u64 = 65000;
/// Longest name (`NAME_MAX`).
const NAME_MAX: u64 = 255;
/// Permission bits of a file installed by a replacement where no regular
/// file stood before (0o666 under the usual umask of 0o022).
const REPLACE_PERMS: u32 = 0o644;

/// Permission request bits, as in `access(2)` and the kernel's `MAY_*`.
const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;
const S_IXGRP: u32 = 0o0010;
const S_IXUGO: u32 = 0o0111;

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

struct Shared {
    state: Mutex<State>,
    capacity: u64,
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

    fn build(capacity: u64, cred: Cred) -> MemFs {
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

    /// The same tree seen by another identity: a test hook standing in for a
    /// process with another effective uid and gid.
    #[cfg(test)]
    fn with_identity(&self, uid: u32, gid: u32) -> MemFs {
        MemFs {
            shared: Arc::clone(&self.shared),
            cred: Cred {
                uid,
                gid,
                groups: Arc::from([]),
            },
        }
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whom this call's permission checks are for: the identity the engine
    /// set for the request ([`Identity::current`]), else this `MemFs`'s own.
    fn cred(&self) -> Cred {
        match Identity::current() {
            Some(id) => Cred::of(&id),
            None => self.cred.clone(),
        }
    }
}

/// The identity permission checks are made for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cred {
    uid: u32,
    gid: u32,
    /// Supplementary groups, sorted.
    groups: Arc<[u32]>,
}

impl Cred {
    fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `generic_permission`: may this identity `mask` (R/W/X bits) `node`?
    fn permits(&self, node: &Inode, mask: u32) -> bool {
        if self.is_root() {
            // CAP_DAC_OVERRIDE: everything but executing a file with no x bit.
            return mask & X == 0 || node.is_dir() || node.mode & S_IXUGO != 0;
        }
        let bits = if node.uid == self.uid {
            node.mode >> 6
        } else if self.member(node.gid) {
            node.mode >> 3
        } else {
            node.mode
        } & 7;
        bits & mask == mask
    }

    fn check(&self, node: &Inode, mask: u32) -> FsResult<()> {
        if self.permits(node, mask) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// `inode_owner_or_capable`.
    fn owns(&self, node: &Inode) -> bool {
        self.is_root() || node.uid == self.uid
    }

    /// `in_group_or_capable`.
    fn in_group(&self, gid: u32) -> bool {
        self.is_root() || self.member(gid)
    }

    /// `in_group_p`: the primary group or a supplementary one.
    fn member(&self, gid: u32) -> bool {
        gid == self.gid || self.groups.binary_search(&gid).is_ok()
    }

    fn of(id: &Identity) -> Cred {
        Cred {
            uid: id.uid(),
            gid: id.gid(),
            groups: id.groups_arc(),
        }
    }
}

enum Data {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, u64>),
    Symlink(Vec<u8>),
    /// A FIFO or a socket (the type is in the mode).
    Special,
}

struct Inode {
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    atime: Time,
    mtime: Time,
    ctime: Time,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Open [`FileHandle`]s: an unlinked file lives until they close.
    open: u64,
    data: Data,
}

impl Inode {
    fn kind(&self) -> u32 {
        self.mode & mode::S_IFMT
    }

    fn is_dir(&self) -> bool {
        self.kind() == mode::S_IFDIR
    }

    fn is_file(&self) -> bool {
        self.kind() == mode::S_IFREG
    }

    fn is_symlink(&self) -> bool {
        self.kind() == mode::S_IFLNK
    }

    fn size(&self) -> u64 {
        match &self.data {
            Data::File(d) => d.len() as u64,
            Data::Dir(_) => DIR_SIZE,
            Data::Symlink(t) => t.len() as u64,
            Data::Special => 0,
        }
    }

    /// Bytes charged against the capacity.
    fn bytes(&self) -> u64 {
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

    fn stat(&self, ino: u64) -> Stat {
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
    fn modified(&mut self, now: Time) {
        self.mtime = now;
        self.ctime = now;
    }

    /// `file_remove_privs`: a write or truncate by an unprivileged caller
    /// clears set-user-ID, and set-group-ID when it means "execute as group";
    /// under [`SetId::Strip`] whoever the caller is.
    fn remove_privs(&mut self, cred: &Cred, setid: SetId) {
        if let Some(perms) = setid.after_write(self.mode) {
            self.mode = self.kind() | perms;
            return;
        }
        if cred.is_root() || !self.is_file() {
            return;
        }
        self.mode &= !S_ISUID;
        if self.mode & S_ISGID != 0 && (self.mode & S_IXGRP != 0 || !cred.in_group(self.gid)) {
            self.mode &= !S_ISGID;
        }
    }
}

fn xattr_bytes(name: &[u8], value: &[u8]) -> u64 {
    (name.len() + value.len()) as u64
}

/// A timestamp, with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Time {
    sec: i64,
    nsec: u32,
}

fn now() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Time {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        })
        .unwrap_or(Time { sec: 0, nsec: 0 })
}

fn last(chain: &[u64]) -> u64 {
    chain.last().copied().unwrap_or(ROOT)
}

/// Converts a file offset or size known to be at most [`MAX_FILE_SIZE`].
fn to_usize(v: u64) -> FsResult<usize> {
    usize::try_from(v).map_err(|_| Errno::EFBIG)
}

/// Writes `buf` at `offset` of `data`, zero-filling any gap. The caller has
/// checked that the end is within limits.
fn write_into(data: &mut Vec<u8>, buf: &[u8], offset: u64) -> FsResult<()> {
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
fn zero_range(data: &mut [u8], start: u64, end: u64) {
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
fn write_end(offset: u64, len: usize) -> FsResult<u64> {
    if offset > i64::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    let end = offset.checked_add(len as u64).ok_or(Errno::EFBIG)?;
    if end > MAX_FILE_SIZE {
        return Err(Errno::EFBIG);
    }
    Ok(end)
}

/// The xattr namespaces the kernel knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    User,
    Trusted,
    Security,
    System,
    Other,
}

fn namespace(name: &[u8]) -> (Ns, &[u8]) {
    const PREFIXES: [(&[u8], Ns); 4] = [
        (b"user.", Ns::User),
        (b"trusted.", Ns::Trusted),
        (b"security.", Ns::Security),
        (b"system.", Ns::System),
    ];
    for (prefix, ns) in PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (ns, rest);
        }
    }
    (Ns::Other, name)
}

/// For a POSIX ACL name, whether it is the default ACL; `None` otherwise.
fn posix_acl(name: &[u8]) -> Option<bool> {
    match name {
        b"system.posix_acl_access" => Some(false),
        b"system.posix_acl_default" => Some(true),
        _ => None,
    }
}

/// What the syscall checks of an xattr name before anything else.
fn check_xattr_name(name: &[u8]) -> FsResult<()> {
    if name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return Err(Errno::ERANGE);
    }
    Ok(())
}

/// The kernel's xattr checks in order: `xattr_permission`, then the
/// capability LSM, then finding a handler for the name.
fn xattr_access(cred: &Cred, node: &Inode, name: &[u8], write: bool) -> FsResult<()> {
    let (ns, suffix) = namespace(name);
    let mask = if write { W } else { R };
    match ns {
        Ns::Security | Ns::System => {}
        Ns::Trusted => {
            if !cred.is_root() {
                return Err(if write { Errno::EPERM } else { Errno::ENODATA });
            }
        }
        Ns::User => {
            if !node.is_file() && !node.is_dir() {
                return Err(if write { Errno::EPERM } else { Errno::ENODATA });
            }
            if write && node.is_dir() && node.mode & S_ISVTX != 0 && !cred.owns(node) {
                return Err(Errno::EPERM);
            }
            cred.check(node, mask)?;
        }
        Ns::Other => cred.check(node, mask)?,
    }
    if write && ns == Ns::Security && !cred.is_root() {
        return Err(Errno::EPERM);
    }
    match ns {
        Ns::Other => Err(Errno::EOPNOTSUPP),
        Ns::System if !write && posix_acl(name).is_some() => Err(Errno::ENODATA),
        Ns::System => Err(Errno::EOPNOTSUPP),
        _ if suffix.is_empty() => Err(Errno::EINVAL),
        _ => Ok(()),
    }
}

/// `POSIX_ACL_XATTR_VERSION`.
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// A POSIX ACL's entries (tag, permissions), as `posix_acl_from_xattr`
/// reads them from an xattr value (none for an empty value: the ACL is
/// removed): `EOPNOTSUPP` for another version,
/// `EINVAL` for a malformed value, an unknown tag or an unmappable id.
fn acl_entries(value: &[u8]) -> FsResult<Vec<(u16, u32)>> {
    // setxattr(2) passes no value at all for an empty one: no ACL.
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let (head, body) = value.split_at_checked(4).ok_or(Errno::EINVAL)?;
    if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != ACL_VERSION {
        return Err(Errno::EOPNOTSUPP);
    }
    if body.len() % 8 != 0 {
        return Err(Errno::EINVAL);
    }
    body.chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u32::from(u16::from_le_bytes([e[2], e[3]]));
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            match tag {
                ACL_USER | ACL_GROUP if id == u32::MAX => Err(Errno::EINVAL),
                ACL_USER_OBJ | ACL_USER | ACL_GROUP_OBJ | ACL_GROUP | ACL_MASK | ACL_OTHER => {
                    Ok((tag, perm))
                }
                _ => Err(Errno::EINVAL),
            }
        })
        .collect()
}

/// The permission bits a valid ACL stands for (`posix_acl_valid`, then
/// `posix_acl_equiv_mode`): `EINVAL` if it is not valid, `EOPNOTSUPP` if
/// it has a mask or names users or groups (more than a mode can say).
fn acl_mode(entries: &[(u16, u32)]) -> FsResult<u32> {
    #[derive(PartialEq)]
    enum State {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    let mut state = State::UserObj;
    let (mut named, mut mask, mut bits) = (false, false, 0);
    for &(tag, perm) in entries {
        if perm & !7 != 0 {
            return Err(Errno::EINVAL);
        }
        match tag {
            ACL_USER_OBJ if state == State::UserObj => {
                state = State::User;
                bits |= perm << 6;
            }
            ACL_USER if state == State::User => named = true,
            ACL_GROUP_OBJ if state == State::User => {
                state = State::Group;
                bits |= perm << 3;
            }
            ACL_GROUP if state == State::Group => named = true,
            ACL_MASK if state == State::Group => {
                state = State::Other;
                mask = true;
            }
            ACL_OTHER if state == State::Other || (state == State::Group && !named) => {
                state = State::Done;
                bits |= perm;
            }
            _ => return Err(Errno::EINVAL),
        }
    }
    if state != State::Done {
        return Err(Errno::EINVAL);
    }
    // A mask or named entries: a real ACL, more than a mode can say.
    if named || mask {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(bits)
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Bytes charged against the capacity.
    used: u64,
}

impl State {
    fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entry(&self, dir: u64, name: &[u8]) -> Option<u64> {
        match &self.inodes.get(&dir)?.data {
            Data::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// `may_lookup`: search permission on `dir`.
    fn search(&self, cred: &Cred, dir: u64) -> FsResult<()> {
        cred.check(self.get(dir)?, X)
    }

    /// Looks `name` up in `dir` (which must be searchable).
    fn lookup(&self, cred: &Cred, dir: u64, name: &[u8]) -> FsResult<u64> {
        self.search(cred, dir)?;
        self.entry(dir, name).ok_or(Errno::ENOENT)
    }

    /// Resolves the directory `rel` (relative to the root, empty for the
    /// root) like `openat2(root, rel, O_PATH | O_DIRECTORY,
    /// RESOLVE_NO_SYMLINKS)`: every directory traversed to reach it must be
    /// searchable (but not the result itself), a symlink anywhere is
    /// `ELOOP` and a non-directory `ENOTDIR`. Returns the chain of
    /// directories from the root to the result.
    fn walk_dir(&self, cred: &Cred, rel: &[u8]) -> FsResult<Vec<u64>> {
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

    fn dir(&self, cred: &Cred, rel: &[u8]) -> FsResult<u64> {
        Ok(last(&self.walk_dir(cred, rel)?))
    }

    /// The object at `path` itself, never following a final symlink (the
    /// root for the root path, which still needs search permission, as
    /// `"."` does).
    fn object(&self, cred: &Cred, path: &FsPath) -> FsResult<u64> {
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
    fn open_node(&self, cred: &Cred, path: &FsPath, mask: u32) -> FsResult<u64> {
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
    fn open_regular(&self, cred: &Cred, path: &FsPath, mask: u32) -> FsResult<u64> {
        let ino = self.open_node(cred, path, mask)?;
        match self.get(ino)?.kind() {
            mode::S_IFREG => Ok(ino),
            mode::S_IFDIR => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `may_create`: write and search permission on the directory.
    fn may_create(&self, cred: &Cred, dir: u64) -> FsResult<()> {
        cred.check(self.get(dir)?, W | X)
    }

    /// `may_delete`: removing `victim` from `dir`, where `isdir` says
    /// whether a directory is expected.
    fn may_delete(&self, cred: &Cred, dir: u64, victim: u64, isdir: bool) -> FsResult<()> {
        let d = self.get(dir)?;
        cred.check(d, W | X)?;
        let v = self.get(victim)?;
        if d.mode & S_ISVTX != 0 && !cred.is_root() && d.uid != cred.uid && v.uid != cred.uid {
            return Err(Errno::EPERM);
        }
        if isdir && !v.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !isdir && v.is_dir() {
            return Err(Errno::EISDIR);
        }
        Ok(())
    }

    /// Charges the change of an object's bytes from `old` to `new` against
    /// the capacity (`ENOSPC`, changing nothing, if it would not fit).
    fn charge(&mut self, capacity: u64, old: u64, new: u64) -> FsResult<()> {
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
    fn fits(&self, capacity: u64, extra: u64) -> FsResult<()> {
        match self.used.checked_add(extra) {
            Some(t) if t <= capacity => Ok(()),
            _ => Err(Errno::ENOSPC),
        }
    }

    /// Allocates an unlinked inode for a new object to be attached in `dir`
    /// (whose set-group-ID bit decides its group). Its bytes must have been
    /// charged by the caller.
    fn new_inode(
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

    /// `vfs_set_acl` as ext4 does it, for the ACLs a mode can stand for:
    /// an access ACL sets the permission bits (set-group-ID cleared for a
    /// caller outside the file's group) and nothing is stored.
    fn set_acl(&mut self, cred: &Cred, ino: u64, default: bool, value: &[u8]) -> FsResult<()> {
        let entries = acl_entries(value)?;
        let node = self.get_mut(ino)?;
        if default && !node.is_dir() {
            return if entries.is_empty() {
                Ok(())
            } else {
                Err(Errno::EACCES)
            };
        }
        if !cred.owns(node) {
            return Err(Errno::EPERM);
        }
        if entries.is_empty() {
            // No ACL: there is none to remove.
            return Ok(());
        }
        let bits = acl_mode(&entries)?;
        if default {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut mode = (node.mode & !0o777) | bits;
        if !cred.in_group(node.gid) {
            mode &= !S_ISGID;
        }
        node.mode = mode;
        node.ctime = now();
        Ok(())
    }

    /// Adds the entry `name` → `ino` to `dir`.
    fn attach(&mut self, dir: u64, name: &[u8], ino: u64, now: Time) -> FsResult<()> {
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
    fn detach(&mut self, dir: u64, name: &[u8], now: Time) -> FsResult<u64> {
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
    fn drop_link(&mut self, ino: u64, now: Time) {
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

    fn release(&mut self, ino: u64) {
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
    fn freed_by_unlink(&self, ino: u64) -> u64 {
        match self.inodes.get(&ino) {
            Some(n) if (n.nlink <= 1 || n.is_dir()) && n.open == 0 => n.bytes(),
            _ => 0,
        }
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(&ino).map(|n| &n.data), Some(Data::Dir(e)) if e.is_empty())
    }

    /// Sets the size of the regular file `ino` (charging the capacity).
    fn resize(&mut self, capacity: u64, ino: u64, size: u64) -> FsResult<()> {
        let old = self.get(ino)?.size();
        let new_len = to_usize(size)?;
        self.charge(capacity, old, size)?;
        if let Data::File(d) = &mut self.get_mut(ino)?.data {
            d.resize(new_len, 0);
        }
        Ok(())
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
        let cred = &self.cred();
        let st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get(ino)?;
        if node.is_symlink() {
            return Ok(Vec::new());
        }
        let names: Vec<Vec<u8>> = node
            .xattrs
            .keys()
            .filter(|n| cred.is_root() || namespace(n).0 != Ns::Trusted)
            .cloned()
            .collect();
        let size: usize = names.iter().map(|n| n.len() + 1).sum();
        if size > limit {
            return Err(Errno::E2BIG);
        }
        Ok(names)
    }

    fn getxattr(&self, path: &FsPath, name: &[u8], limit: usize) -> FsResult<Vec<u8>> {
        let cred = &self.cred();
        let st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get(ino)?;
        if node.is_symlink() {
            return Err(Errno::ENODATA);
        }
        check_xattr_name(name)?;
        xattr_access(cred, node, name, false)?;
        let value = node.xattrs.get(name).ok_or(Errno::ENODATA)?;
        if value.len() > limit {
            return Err(Errno::E2BIG);
        }
        Ok(value.clone())
    }

    fn setxattr(&self, path: &FsPath, name: &[u8], value: &[u8], flag: XattrFlag) -> FsResult<()> {
        let cred = &self.cred();
        let mut st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get(ino)?;
        if node.is_symlink() {
            return Err(Errno::EPERM);
        }
        check_xattr_name(name)?;
        if value.len() > MAX_XATTR_VALUE {
            return Err(Errno::E2BIG);
        }
        if let Some(default) = posix_acl(name) {
            return st.set_acl(cred, ino, default, value);
        }
        xattr_access(cred, node, name, true)?;
        let old = node.xattrs.get(name).map(|v| xattr_bytes(name, v));
        match (flag, old) {
            (XattrFlag::Create, Some(_)) => return Err(Errno::EEXIST),
            (XattrFlag::Replace, None) => return Err(Errno::ENODATA),
            _ => {}
        }
        st.charge(
            self.shared.capacity,
            old.unwrap_or(0),
            xattr_bytes(name, value),
        )?;
        let node = st.get_mut(ino)?;
        node.xattrs.insert(name.to_vec(), value.to_vec());
        node.ctime = now();
        Ok(())
    }

    fn removexattr(&self, path: &FsPath, name: &[u8]) -> FsResult<()> {
        let cred = &self.cred();
        let mut st = self.lock();
        let ino = st.object(cred, path)?;
        let node = st.get_mut(ino)?;
        if node.is_symlink() {
            return Err(Errno::ENODATA);
        }
        check_xattr_name(name)?;
        if let Some(default) = posix_acl(name) {
            // vfs_remove_acl: there is never an ACL to remove, so this only
            // checks that the caller could have (a default ACL exists only
            // on a directory).
            if default && !node.is_dir() {
                return Ok(());
            }
            return if cred.owns(node) {
                Ok(())
            } else {
                Err(Errno::EPERM)
            };
        }
        xattr_access(cred, node, name, true)?;
        let value = node.xattrs.remove(name).ok_or(Errno::ENODATA)?;
        node.ctime = now();
        st.used = st.used.saturating_sub(xattr_bytes(name, &value));
        Ok(())
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

impl MemFs {
    fn open_handle(&self, path: &FsPath, mask: u32, setid: SetId) -> FsResult<Box<dyn FileHandle>> {
        let mut st = self.lock();
        let ino = st.open_regular(&self.cred(), path, mask)?;
        let node = st.get_mut(ino)?;
        // Like LocalFs: a file opened to be written loses what the mount's
        // policy says a write clears, before the first write.
        if let Some(perms) = setid.after_write(node.mode) {
            node.mode = node.kind() | perms;
        }
        node.open += 1;
        let size = node.size();
        Ok(Box::new(MemFile {
            fs: self.clone(),
            ino,
            size,
            writable: mask & W != 0,
        }))
    }
}

/// An open regular file. It reads and writes the live content, and keeps
/// the inode alive after an unlink until it is dropped.
struct MemFile {
    fs: MemFs,
    ino: u64,
    size: u64,
    /// Opened for writing (and then not for reading), like an `O_WRONLY` fd.
    writable: bool,
}

impl FileHandle for MemFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> FsResult<usize> {
        if self.writable {
            return Err(Errno::EBADF);
        }
        if offset > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        let st = self.fs.lock();
        let Data::File(data) = &st.inodes.get(&self.ino).ok_or(Errno::EBADF)?.data else {
            return Err(Errno::EBADF);
        };
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(avail) = data.get(start..) else {
            return Ok(0);
        };
        let n = avail.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if !self.writable {
            return Err(Errno::EBADF);
        }
        let end = write_end(offset, buf.len())?;
        let capacity = self.fs.shared.capacity;
        let cred = &self.fs.cred();
        let mut st = self.fs.lock();
        let node = st.inodes.get(&self.ino).ok_or(Errno::EBADF)?;
        let size = node.size();
        st.charge(capacity, size, size.max(end))?;
        let node = st.inodes.get_mut(&self.ino).ok_or(Errno::EBADF)?;
        if let Data::File(data) = &mut node.data {
            write_into(data, buf, offset)?;
        }
        node.modified(now());
        node.remove_privs(cred, SetId::Keep);
        Ok(())
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let mut st = self.fs.lock();
        if let Some(n) = st.inodes.get_mut(&self.ino) {
            n.open = n.open.saturating_sub(1);
        }
        st.release(self.ino);
    }
}

/// A whole-file replacement: the data goes to a private buffer, charged
/// against the capacity only when [`commit`](Replacement::commit) installs
/// it as a new inode.
struct MemReplacement {
    fs: MemFs,
    /// The directory, held like `LocalFs` holds its fd: it follows renames.
    dir: u64,
    /// What happens to the replaced file's set-ID bits.
    setid: SetId,
    name: Vec<u8>,
    /// `None` once committed.
    data: Mutex<Option<Vec<u8>>>,
}

impl Replacement for MemReplacement {
    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = write_end(offset, buf.len())?;
        // Could never be committed; refusing now bounds the memory used.
        if end > self.fs.shared.capacity {
            return Err(Errno::ENOSPC);
        }
        let mut guard = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let data = guard.as_mut().ok_or(Errno::EBADF)?;
        write_into(data, buf, offset)
    }

    fn commit(&self) -> FsResult<bool> {
        let cred = &self.fs.cred();
        let capacity = self.fs.shared.capacity;
        let mut guard = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let new_len = guard.as_ref().ok_or(Errno::EBADF)?.len() as u64;
        let mut st = self.fs.lock();
        let dir = self.dir;
        // A directory removed meanwhile cannot get new entries.
        let parent = match st.inodes.get(&dir) {
            Some(p) if p.is_dir() => p,
            _ => return Err(Errno::ENOENT),
        };
        let tmp_gid = if parent.mode & S_ISGID != 0 {
            parent.gid
        } else {
            cred.gid
        };
        // Like LocalFs: keep the permissions and (where allowed) the owner
        // of the regular file being replaced.
        let old = st.lookup(cred, dir, &self.name).ok();
        let (mut perms, mut uid, mut gid) = (REPLACE_PERMS, cred.uid, None);
        if let Some(o) = old {
            let node = st.get(o)?;
            if node.is_dir() {
                return Err(Errno::EISDIR);
            }
            if node.is_file() {
                perms = self
                    .setid
                    .after_write(node.mode)
                    .unwrap_or(node.mode & mode::PERMS);
                if cred.is_root() {
                    uid = node.uid;
                    gid = Some(node.gid);
                } else if node.uid == cred.uid && (node.gid == tmp_gid || node.gid == cred.gid) {
                    gid = Some(node.gid);
                }
            }
        }
        st.search(cred, dir)?;
        st.may_create(cred, dir)?;
        if let Some(o) = old {
            st.may_delete(cred, dir, o, false)?;
        }
        let frees_inode = old.is_some_and(|o| {
            st.inodes
                .get(&o)
                .is_some_and(|n| n.nlink <= 1 && n.open == 0)
        });
        if !frees_inode && st.inodes.len() as u64 >= MAX_INODES {
            return Err(Errno::ENOSPC);
        }
        let freed = old.map_or(0, |o| st.freed_by_unlink(o));
        st.fits(capacity.saturating_add(freed), new_len)?;
        let data = guard.take().ok_or(Errno::EBADF)?;
        let now = now();
        if let Some(o) = old {
            st.detach(dir, &self.name, now)?;
            st.drop_link(o, now);
        }
        st.used = st.used.saturating_add(new_len);
        let ino = st.new_inode(cred, dir, mode::S_IFREG, perms, Data::File(data))?;
        let node = st.get_mut(ino)?;
        node.uid = uid;
        if let Some(g) = gid {
            node.gid = g;
        }
        st.attach(dir, &self.name, ino, now)?;
        Ok(old.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalFs;

    const RDONLY: i32 = libc::O_RDONLY;
    const WRONLY: i32 = libc::O_WRONLY;
    const RDWR: i32 = libc::O_RDWR;
    const IFIFO: u32 = mode::S_IFIFO;
    const IFSOCK: u32 = mode::S_IFSOCK;

    fn p(s: &str) -> FsPath {
        FsPath::from_bytes(s.as_bytes()).unwrap_or_else(|e| panic!("bad path {s}: {e}"))
    }

    /// A filesystem seen by root, whoever runs the tests.
    fn rootfs() -> MemFs {
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
                2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0,
                0, 0, 255, 255, 255, 255,
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

    /// The same operations on a [`MemFs`] and on a [`LocalFs`] must give the
    /// same results and leave the same tree.
    mod differential {
        use super::*;

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
                Op::SetXSized(a, n, len) => {
                    ok(fs.setxattr(&p(a), n, &vec![b'v'; len], XattrFlag::Any))
                }
                Op::RmX(a, n) => ok(fs.removexattr(&p(a), n)),
                Op::Utimens(a, at, mt) => {
                    ok(fs.utimens(&p(a), SetTime::secs(at), SetTime::secs(mt)))
                }
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
    }

    use differential::Op::{self, *};

    /// `user::rw-`, `group::r--`, `other::---` (mode 0640).
    const ACL_0640: &[u8] = &[
        2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0, 0, 0,
        255, 255, 255, 255,
    ];
    /// `user::rwx`, `group::r-x`, `other::---` (mode 0750).
    const ACL_0750: &[u8] = &[
        2, 0, 0, 0, 1, 0, 7, 0, 255, 255, 255, 255, 4, 0, 5, 0, 255, 255, 255, 255, 32, 0, 0, 0,
        255, 255, 255, 255,
    ];
    /// The group entry before the owner's: not valid.
    const ACL_UNORDERED: &[u8] = &[
        2, 0, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 1, 0, 6, 0, 255, 255, 255, 255, 32, 0, 0, 0,
        255, 255, 255, 255,
    ];
    /// Not a whole number of entries.
    const ACL_SHORT: &[u8] = &[2, 0, 0, 0, 1, 0, 6, 0, 255, 255];
    /// An unknown version.
    const ACL_V1: &[u8] = &[
        1, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 32, 0, 0, 0,
        255, 255, 255, 255,
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
        let xattrs = differential::xattrs_supported(&local);
        let mut diffs = differential::compare(AS_ROOT, &mem, &local, xattrs);
        differential::assert_same_trees(&mem, &local, xattrs, &mut diffs);
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
        let xattrs = differential::xattrs_supported(&local);
        let mut diffs = differential::compare(USER_SETUP, &mem, &*local, xattrs);

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
            Ok::<_, rustix::io::Errno>(differential::compare(AS_USER, &user, &*local_user, xattrs))
        })
        .join()
        .unwrap();
        match result {
            Ok(d) => diffs.extend(d),
            Err(e) => {
                eprintln!("note: cannot switch a thread to uid 1000 ({e}); unprivileged comparison skipped");
                return;
            }
        }
        differential::assert_same_trees(&mem, &*local, xattrs, &mut diffs);
    }
}
