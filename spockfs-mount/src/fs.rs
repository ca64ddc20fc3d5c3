//! [`MountFs`]: what the mount means, one async method per filesystem
//! call, answered with an [`Errno`] on failure — inodes, open handles,
//! hidden files, pending create modes and the caches, over a [`Client`].
//! No FUSE here: the kernel adapter (`kernel.rs`) decodes a request, awaits
//! one of these methods and replies, and tests call them directly.

use super::cache::{Cache, Listing};
use super::caller::{self, CallerGroups};
use super::handles::PendingMode;
use super::inodes::Inodes;
use super::{join, MountConfig};
use spockfs_client::{Client, Errno, Extensions, SetTime, Stat, StatFs};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest name of a path component (Linux's `NAME_MAX`, and the
/// servers').
const NAME_MAX: usize = 255;

thread_local! {
    /// The connection pool of this FUSE thread (see
    /// [`MountFs::use_own_pool`]).
    static POOL: std::cell::OnceCell<Client> = const { std::cell::OnceCell::new() };
}

/// The mounted filesystem's semantics (see the [module
/// documentation](super)): inode numbers for paths, open handles, files
/// removed while open, and what the server said lately, over a [`Client`].
/// Each method is one FUSE call; inode numbers are the kernel's (root is
/// 1), and a method that answers an [`Entry`] takes one lookup reference
/// the kernel gives back with [`forget`](MountFs::forget).
pub struct MountFs {
    /// Every thread's pool is taken from this one (`Client::with_own_pool`).
    pub(super) client: Client,
    pub(super) cfg: MountConfig,
    pub(super) inodes: Mutex<Inodes>,
    /// What the server said lately (see [`Cache`]).
    pub(super) cache: Cache,
    /// Files created without `S_IWUSR`: the server creates them writable
    /// (so the creating descriptor can write) and the requested mode is
    /// applied on release, by handle.
    pub(super) pending_mode: Mutex<HashMap<u64, PendingMode>>,
    /// Open directory listings, by handle.
    pub(super) dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// The inode of each open file handle.
    pub(super) files: Mutex<HashMap<u64, u64>>,
    /// Hidden names being removed after their last release, counted by
    /// directory: `rmdir` of that directory waits for them.
    pub(super) reaping: Mutex<HashMap<Vec<u8>, usize>>,
    /// Signalled when a removal of `reaping` ends.
    pub(super) reaped: tokio::sync::Notify,
    /// This mount's part of hidden names, and their counter.
    pub(super) hidden_id: u64,
    pub(super) hidden_seq: AtomicU64,
    pub(super) next_fh: Mutex<u64>,
    /// Callers' supplementary groups, by pid, and when they were read.
    pub(super) groups: Mutex<HashMap<u32, CallerGroups>>,
    /// Close-to-open: each file's size, mtime and ctime (to the
    /// nanosecond) as of its last open, while nothing was changed through
    /// this mount since. An open that finds them unchanged keeps the
    /// kernel's cached pages of the file (see `open`).
    pub(super) data_stamps: Mutex<HashMap<u64, DataStamp>>,
}

/// What an open compares to decide whether cached file data is current.
pub(super) type DataStamp = (u64, i64, u32, i64, u32);

impl std::fmt::Debug for MountFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountFs").finish_non_exhaustive()
    }
}

/// A name the kernel may keep: its inode (with one more lookup reference)
/// and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The mount's inode number.
    pub ino: u64,
    /// The attributes, as the kernel is to see them.
    pub stat: Stat,
}

/// The changes of a `setattr`, each `None` left alone; applied in this
/// order: mode, owner, size, times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`chmod`; the file type bits are ignored).
    pub mode: Option<u32>,
    /// New owner (`chown`).
    pub uid: Option<u32>,
    /// New group (`chown`).
    pub gid: Option<u32>,
    /// New size (`truncate`).
    pub size: Option<u64>,
    /// New access time (`utimensat`; the other time is then `UTIME_OMIT`
    /// unless set too).
    pub atime: Option<SetTime>,
    /// New modification time (`utimensat`).
    pub mtime: Option<SetTime>,
}

impl MountFs {
    /// A filesystem over `client` (each FUSE thread takes a connection pool
    /// of its own from it, see [`use_own_pool`](MountFs::use_own_pool)).
    pub fn new(client: Client, cfg: MountConfig) -> Self {
        MountFs {
            client,
            cfg,
            inodes: Mutex::new(Inodes::new()),
            cache: Cache::default(),
            pending_mode: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            reaping: Mutex::new(HashMap::new()),
            reaped: tokio::sync::Notify::new(),
            hidden_id: super::hidden::mount_id(),
            hidden_seq: AtomicU64::new(0),
            next_fh: Mutex::new(1),
            groups: Mutex::new(HashMap::new()),
            data_stamps: Mutex::new(HashMap::new()),
        }
    }

    /// How the mount behaves.
    pub fn config(&self) -> &MountConfig {
        &self.cfg
    }

    /// Makes the calls this thread makes from now on use a connection pool
    /// of their own (the FUSE event loops call it at their start); other
    /// threads share the client's.
    pub fn use_own_pool(&self) {
        POOL.with(|p| {
            let _ = p.get_or_init(|| self.client.with_own_pool());
        });
    }

    /// The server's extensions: as already learnt, else asked now on a
    /// runtime of this call's own (at `init`, before the event loops run).
    /// None if the server cannot be reached.
    pub fn server_extensions(&self) -> Extensions {
        if let Some(e) = self.client.known_extensions() {
            return e;
        }
        let client = self.client.with_own_pool();
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(client.extensions()),
            Err(e) => {
                tracing::warn!("no runtime to ask the server's extensions: {e}");
                Extensions::default()
            }
        }
    }

    /// `EROFS` on a read-only mount: every call that changes something
    /// asks this first.
    pub(super) fn writable(&self) -> Result<(), Errno> {
        if self.cfg.read_only {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// The path inode `ino` stands for (`ENOENT` if the mount has none).
    pub fn path(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        t.path(ino).map(<[u8]>::to_vec).ok_or(Errno::ENOENT)
    }

    /// The path of `name` in `parent`. Every call that takes a name comes
    /// through here, before any cache is asked: a name longer than a
    /// component may be is `ENAMETOOLONG` (the kernel lets FUSE names of
    /// up to 1024 bytes through), never a cached "no such entry".
    pub fn child(&self, parent: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(join(&self.path(parent)?, name))
    }

    /// This thread's client (its own pool), or the shared one off the
    /// FUSE threads, as the current caller (see [`caller::as_caller`]).
    pub(super) fn client(&self) -> Client {
        let c = POOL
            .try_with(|p| p.get().cloned())
            .ok()
            .flatten()
            .unwrap_or_else(|| self.client.clone());
        match caller::current() {
            Some(caller) => c.with_caller(Some(&caller)),
            None => c,
        }
    }

    /// The attributes the kernel sees for inode `ino`: those of a hidden
    /// file (its last name removed while open) count one link fewer, the
    /// hidden name, as after an unlink on a local disk.
    fn seen(&self, ino: u64, mut st: Stat) -> Stat {
        if self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_hidden(ino)
        {
            st.nlink = st.nlink.saturating_sub(1);
        }
        st
    }

    /// After a successful create-like call: stat `path` (unless the server
    /// already answered with its attributes) and register it.
    /// `epoch` is the change epoch the call (or the change that answered
    /// `known`) started in: the attributes are kept if it has not moved.
    async fn entry(&self, path: &[u8], known: Option<Stat>, epoch: u64) -> Result<Entry, Errno> {
        let at = Instant::now();
        let st = match known {
            Some(st) => st,
            None => self.client().getattr(path).await?,
        };
        let ino = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(path);
        self.keep(ino, &st, at, epoch);
        Ok(Entry { ino, stat: st })
    }

    /// What [`lookup`](MountFs::lookup) answers without asking the server,
    /// if anything: an invalid name or unknown `parent`, or `Ok(None)` for
    /// a name known to be absent.
    pub fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Result<Option<Entry>, Errno>> {
        match self.child(parent, name) {
            Err(e) => Some(Err(e)),
            Ok(path) if self.known_missing(&path) => Some(Ok(None)),
            Ok(_) => None,
        }
    }

    /// `name` in `parent`. `Ok(None)` is a negative entry: the name is
    /// absent and the kernel may remember that for the entry timeout
    /// (creating it through the mount replaces it at once); with a zero
    /// entry timeout an absent name is `ENOENT`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Entry>, Errno> {
        if let Some(r) = self.lookup_cached(parent, name) {
            return r;
        }
        let path = self.child(parent, name)?;
        let epoch = self.epoch();
        match self.entry(&path, None, epoch).await {
            Ok(e) => Ok(Some(e)),
            Err(e) if e == Errno::ENOENT && !self.cfg.entry_timeout.is_zero() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kernel dropped `n` lookup references to `ino`: the inode, and
    /// what is cached of it, go with the last one.
    pub fn forget(&self, ino: u64, n: u64) {
        let gone = {
            let mut t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            t.forget(ino, n);
            !t.nodes.contains_key(&ino)
        };
        if gone {
            self.forget_cached(ino);
        }
    }

    /// Inode `ino`'s attributes if the mount still holds fresh ones, and
    /// how much longer they may be cached.
    pub fn getattr_cached(&self, ino: u64) -> Option<(Stat, Duration)> {
        self.kept(ino).map(|(st, ttl)| (self.seen(ino, st), ttl))
    }

    /// Inode `ino`'s attributes and how long the kernel may cache them.
    pub async fn getattr(&self, ino: u64) -> Result<(Stat, Duration), Errno> {
        if let Some(r) = self.getattr_cached(ino) {
            return Ok(r);
        }
        let path = self.path(ino)?;
        let (epoch, at) = (self.epoch(), Instant::now());
        let st = self.client().getattr(&path).await?;
        self.keep(ino, &st, at, epoch);
        Ok((self.seen(ino, st), self.cfg.attr_timeout))
    }

    /// Changes inode `ino`'s attributes; answers them as they are after.
    pub async fn setattr(&self, ino: u64, set: SetAttr) -> Result<Stat, Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        let st = self
            .change(&[&path], false, async {
                let (epoch, at) = (self.epoch(), Instant::now());
                // The attributes after the last change, when the server
                // answers with them (`stat` extension).
                let mut last = None;
                if let Some(m) = set.mode {
                    last = self.client().chmod(&path, m & 0o7777).await?;
                }
                if set.uid.is_some() || set.gid.is_some() {
                    last = self.client().chown(&path, set.uid, set.gid).await?;
                }
                if let Some(sz) = set.size {
                    last = self.client().truncate(&path, sz).await?;
                }
                if set.atime.is_some() || set.mtime.is_some() {
                    let omit = |t: Option<SetTime>| t.unwrap_or(SetTime::Omit);
                    last = self
                        .client()
                        .utimens(&path, omit(set.atime), omit(set.mtime))
                        .await?;
                }
                let st = match last {
                    Some(st) => st,
                    None => self.client().getattr(&path).await?,
                };
                self.keep(ino, &st, at, epoch);
                Ok::<_, Errno>(st)
            })
            .await?;
        Ok(self.seen(ino, st))
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        self.client().readlink(&path).await
    }

    /// Runs `make`, a call that creates `path`, as a change of it and its
    /// directory, and answers the new entry; keeps the directory's
    /// attributes if the server answered with them.
    pub(super) async fn make<F>(&self, path: &[u8], make: F) -> Result<Entry, Errno>
    where
        F: std::future::Future<Output = Result<spockfs_client::Changed, Errno>>,
    {
        let before = self.before();
        let (e, parent) = self
            .change(&[path], true, async {
                let epoch = self.epoch();
                let ch = self.made(path, make.await)?;
                Ok::<_, Errno>((self.entry(path, ch.stat, epoch).await?, ch.parent))
            })
            .await?;
        self.keep_parent(path, parent, before);
        Ok(e)
    }

    /// Creates `name` in `parent` with `mode` (type and permissions) and
    /// device number `rdev`.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<Entry, Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        // MKNOD, also for S_IFREG: exact mode and EEXIST, where POST would
        // be creat() and truncate a file created meanwhile.
        self.make(&path, self.client().mknod(&path, mode, u64::from(rdev)))
            .await
    }

    /// Creates directory `name` in `parent`.
    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<Entry, Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        let e = self
            .make(&path, self.client().mkdir(&path, mode & 0o7777))
            .await?;
        // Just created: empty, whatever a stale listing said.
        self.unlist_tree(&path);
        self.listed(&path, HashSet::new());
        Ok(e)
    }

    /// Creates symlink `name` in `parent`, pointing to `target`.
    pub async fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry, Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        self.make(&path, self.client().symlink(&path, target)).await
    }

    /// Removes file `name` from `parent`. If it is the last name of a file
    /// open through the mount, it is renamed to a hidden name instead and
    /// removed on the last release (see [`HIDDEN_PREFIX`](super::HIDDEN_PREFIX)).
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, false).await
    }

    /// Removes directory `name` from `parent` (after hidden files in it
    /// that were just released are gone).
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, true).await
    }

    async fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<(), Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        if dir {
            // Hidden files closed just before are being removed.
            self.reaped(&path).await;
        }
        // An open file losing its last name is hidden instead.
        let open = (!dir)
            .then(|| {
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .open_last_name(&path)
            })
            .flatten();
        let before = self.before();
        let ch = self
            .change(&[&path], true, async {
                match open {
                    Some(ino) => self.hide(&path, ino).await.map(|(ch, _)| ch),
                    None if dir => self.client().rmdir(&path).await,
                    None => self.client().unlink(&path).await,
                }
            })
            .await?;
        self.keep_parent(&path, ch.parent, before);
        self.listed_name(&path, false);
        if dir {
            self.unlist_tree(&path);
        }
        if open.is_none() {
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .detach(&path);
        }
        Ok(())
    }

    /// Renames `name` in `parent` to `newname` in `newparent`. `flags` are
    /// `renameat2`'s: `RENAME_NOREPLACE` is honoured (best effort: checked
    /// first), any other is `EINVAL`. Replacing the last name of a file
    /// open through the mount hides that file first (see
    /// [`unlink`](MountFs::unlink)).
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        self.writable()?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            // RENAME_EXCHANGE / WHITEOUT have no SpockFS equivalent.
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        // Replacing the last name of an open file (not another name of
        // the moved one): hide it first.
        let open = (!noreplace)
            .then(|| {
                let t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
                t.open_last_name(&to)
                    .filter(|&i| t.by_path.get(&from) != Some(&i))
            })
            .flatten();
        self.change(&[&from, &to], true, async {
            if noreplace {
                // Best effort: SpockFS has no atomic no-replace rename.
                match self.client().getattr(&to).await {
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(e) if e == Errno::ENOENT => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(ino) = open else {
                return self.client().rename(&from, &to).await;
            };
            let (_, hidden) = self.hide(&to, ino).await?;
            let r = self.client().rename(&from, &to).await;
            if r.is_err() {
                self.restore(&hidden, &to, ino).await;
            }
            r
        })
        .await?;
        self.unlist_tree(&from);
        self.unlist_tree(&to);
        self.listed_name(&from, false);
        self.listed_name(&to, true);
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rename(&from, &to);
        Ok(())
    }

    /// A new hard link `newname` in `newparent` to inode `ino`.
    pub async fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Entry, Errno> {
        self.writable()?;
        let existing = self.path(ino)?;
        let path = self.child(newparent, newname)?;
        self.change(&[&existing, &path], true, async {
            let (epoch, at) = (self.epoch(), Instant::now());
            let st = self
                .made(&path, self.client().link(&path, &existing).await)?
                .stat;
            let st = match st {
                Some(st) => st,
                None => self.client().getattr(&path).await?,
            };
            let i = self
                .inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .link(ino, &path);
            self.keep(i, &st, at, epoch);
            Ok(Entry { ino: i, stat: st })
        })
        .await
    }

    /// The statistics of the filesystem holding inode `ino` (the root's if
    /// the mount no longer knows `ino`).
    pub async fn statfs(&self, ino: u64) -> Result<StatFs, Errno> {
        let path = self.path(ino).unwrap_or_else(|_| b"/".to_vec());
        self.client().statfs(&path).await
    }

    /// Whether the caller may access inode `ino` as `access(2)`'s `mask`
    /// says (`W_OK` on a read-only mount is `EROFS`).
    pub async fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        if mask & libc::W_OK != 0 {
            self.writable()?;
        }
        let path = self.path(ino)?;
        self.client().access(&path, mask as u32).await
    }
}
