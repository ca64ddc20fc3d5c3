//! What the mount remembers of what the server said (attributes, recent
//! listings, directories known name by name, absent xattr names), and the
//! one rule that drops it: every change goes through [`MountFs::change`].

use super::{split_parent, MountFs};
use spockfs_client::{Changed, DirEntry, Errno, Stat};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the mount remembers of what the server said. Each part is
/// answered from only within its timeout (`MountConfig::attr_timeout`,
/// `entry_timeout`), and every change sent through the mount runs inside
/// [`MountFs::change`], which drops the attributes of what it touches and
/// moves the epoch that listings and fetched attributes are checked against.
#[derive(Default)]
pub(super) struct Cache {
    /// Per-inode xattr names known to be absent, and since when.
    xattr_absent: Mutex<HashMap<u64, HashMap<Vec<u8>, Instant>>>,
    /// Mount-wide probes: `security.*`/`system.*` names no file had when
    /// last asked, and names seen on some file (never answered mount-wide).
    probes: Mutex<Probes>,
    /// Directories known name by name, by path.
    listed: Mutex<HashMap<Vec<u8>, Listed>>,
    /// Recent attributes and listings.
    fresh: Fresh,
}

#[derive(Default)]
struct Probes {
    absent: HashMap<Vec<u8>, Instant>,
    seen: HashSet<Vec<u8>>,
    disabled: bool,
}

/// Bounds on what the mount remembers about xattr names and directories.
const MAX_PROBE_NAMES: usize = 256;
const MAX_LISTED_DIRS: usize = 1024;
const MAX_LISTED_NAMES: usize = 100_000;
const MAX_FRESH_ATTRS: usize = 100_000;
const MAX_RECENT_LISTINGS: usize = 8;

/// A directory's entries as fetched by one READDIR.
pub(super) struct Listing {
    pub(super) entries: Vec<DirEntry>,
    /// When it was fetched.
    pub(super) at: Instant,
    /// The change epoch it is valid for: `None` if a change was in flight
    /// while it was fetched.
    pub(super) epoch: Option<u64>,
}

/// What the server said lately and may be said again while nothing changes
/// (see the module documentation).
#[derive(Default)]
struct Fresh {
    /// Moves when a change is sent and when it is answered.
    epoch: AtomicU64,
    /// Attributes by inode, and when they were fetched.
    attrs: Mutex<HashMap<u64, (Stat, Instant)>>,
    /// The last few listings, by directory path.
    listings: Mutex<VecDeque<(Vec<u8>, Arc<Listing>)>>,
}

/// A directory's names as of `at`, with this mount's changes since.
struct Listed {
    at: Instant,
    names: HashSet<Vec<u8>>,
}

/// Whether an xattr name is one the kernel or `ls` probes on every file.
fn is_probe_name(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"system.")
}

impl MountFs {
    /// True if xattr `name` is known to be absent from inode `ino` (asked
    /// within the attribute timeout, or a probe name no file had).
    pub fn xattr_known_absent(&self, ino: u64, name: &[u8]) -> bool {
        let ttl = self.cfg.attr_timeout;
        if is_probe_name(name) {
            let mut p = lock(&self.cache.probes);
            match p.absent.get(name) {
                Some(t) if t.elapsed() < ttl => return true,
                Some(_) => {
                    p.absent.remove(name);
                }
                None => {}
            }
        }
        let mut c = lock(&self.cache.xattr_absent);
        match c.get_mut(&ino) {
            Some(m) => match m.get(name) {
                Some(t) if t.elapsed() < ttl => true,
                Some(_) => {
                    m.remove(name);
                    false
                }
                None => false,
            },
            None => false,
        }
    }

    /// Records that `name` is absent from (or may exist on) inode `ino`.
    pub(super) fn mark_absent(&self, ino: u64, name: &[u8], absent: bool) {
        if is_probe_name(name) {
            let mut p = lock(&self.cache.probes);
            if absent {
                if !p.disabled && !p.seen.contains(name) && p.absent.len() < MAX_PROBE_NAMES {
                    p.absent.insert(name.to_vec(), Instant::now());
                }
            } else {
                p.absent.remove(name);
                if p.seen.len() < MAX_PROBE_NAMES {
                    p.seen.insert(name.to_vec());
                } else {
                    // No room to remember it: stop answering mount-wide rather
                    // than risk a wrong ENODATA.
                    p.disabled = true;
                    p.absent.clear();
                }
            }
        }
        let mut c = lock(&self.cache.xattr_absent);
        if absent {
            c.entry(ino)
                .or_default()
                .insert(name.to_vec(), Instant::now());
        } else if let Some(m) = c.get_mut(&ino) {
            m.remove(name);
        }
    }

    /// Forgets what is known of inode `ino` (the kernel forgot it).
    pub(super) fn forget_cached(&self, ino: u64) {
        lock(&self.cache.xattr_absent).remove(&ino);
        self.drop_kept(ino);
    }

    /// True if `path` is known not to exist: its directory was created or
    /// listed by this mount within the entry timeout and lacks the name.
    pub(super) fn known_missing(&self, path: &[u8]) -> bool {
        let (dir, name) = split_parent(path);
        let mut l = lock(&self.cache.listed);
        match l.get(dir) {
            Some(d) if d.at.elapsed() < self.cfg.entry_timeout => !d.names.contains(name),
            Some(_) => {
                l.remove(dir);
                false
            }
            None => false,
        }
    }

    /// Remembers `dir`'s complete list of names, as of now.
    pub(super) fn listed(&self, dir: &[u8], names: HashSet<Vec<u8>>) {
        if self.cfg.entry_timeout.is_zero() || names.len() > MAX_LISTED_NAMES {
            return;
        }
        let mut l = lock(&self.cache.listed);
        if l.len() >= MAX_LISTED_DIRS {
            let ttl = self.cfg.entry_timeout;
            l.retain(|_, d| d.at.elapsed() < ttl);
            if l.len() >= MAX_LISTED_DIRS {
                return;
            }
        }
        l.insert(
            dir.to_vec(),
            Listed {
                at: Instant::now(),
                names,
            },
        );
    }

    /// After a call that creates `path`: the name exists if it succeeded
    /// or was refused with `EEXIST`.
    pub(super) fn made(&self, path: &[u8], r: Result<Changed, Errno>) -> Result<Changed, Errno> {
        self.listed_name(path, r.is_ok() || r == Err(Errno::EEXIST));
        r
    }

    /// The epoch and time before a change of `path`'s directory starts, for
    /// [`keep_parent`](MountFs::keep_parent).
    pub(super) fn before(&self) -> (u64, Instant) {
        (self.epoch(), Instant::now())
    }

    /// After [`change`](MountFs::change) of a name in `path`'s directory,
    /// answered with the directory's attributes (`parent-stat`): keeps
    /// them, so the kernel's next permission check in that directory (it
    /// drops a directory's attributes whenever an entry changes) is
    /// answered without a round trip. Only if no other change ran
    /// meanwhile (the change itself moves the epoch by two).
    pub(super) fn keep_parent(&self, path: &[u8], parent: Option<Stat>, before: (u64, Instant)) {
        let Some(st) = parent else { return };
        let epoch = self.epoch();
        if epoch != before.0 + 2 {
            return;
        }
        let ino = {
            let t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            t.by_path.get(split_parent(path).0).copied()
        };
        if let Some(ino) = ino {
            self.keep(ino, &st, before.1, epoch);
        }
    }

    /// `path` exists now (or, with `false`, no longer does).
    pub(super) fn listed_name(&self, path: &[u8], exists: bool) {
        let (dir, name) = split_parent(path);
        let mut l = lock(&self.cache.listed);
        if let Some(d) = l.get_mut(dir) {
            if exists {
                d.names.insert(name.to_vec());
            } else {
                d.names.remove(name);
            }
        }
    }

    /// Forgets what is known of `path` as a directory and of everything
    /// below it (it was renamed or replaced).
    pub(super) fn unlist_tree(&self, path: &[u8]) {
        let mut l = lock(&self.cache.listed);
        l.retain(|k, _| !(k.starts_with(path) && (k.len() == path.len() || k[path.len()] == b'/')));
    }

    /// The change epoch: read before fetching something, and the result is
    /// kept only if it has not moved by the time the answer is in.
    pub(super) fn epoch(&self) -> u64 {
        self.cache.fresh.epoch.load(Ordering::SeqCst)
    }

    /// Runs `change`, a call that may change `paths` (and, with `parents`,
    /// their directories) on the server: nothing fetched meanwhile is kept,
    /// and what was known of those entries is dropped once it is answered,
    /// whatever the outcome. `change` gets the epoch it runs in, to keep
    /// the attributes the server answered with (see [`MountFs::keep`]).
    pub(super) async fn change<T>(
        &self,
        paths: &[&[u8]],
        parents: bool,
        change: impl std::future::Future<Output = T>,
    ) -> T {
        let touched: Vec<u64> = {
            let t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = Vec::with_capacity(paths.len() * 2);
            for p in paths {
                v.extend(t.by_path.get(*p).copied());
                if parents {
                    v.extend(t.by_path.get(split_parent(p).0).copied());
                }
            }
            v
        };
        self.cache.fresh.epoch.fetch_add(1, Ordering::SeqCst);
        let r = change.await;
        {
            let mut a = lock(&self.cache.fresh.attrs);
            let mut stamps = lock(&self.data_stamps);
            for ino in touched {
                a.remove(&ino);
                // Its data may differ now: the next open drops its pages.
                stamps.remove(&ino);
            }
        }
        self.cache.fresh.epoch.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// Keeps `st` as inode `ino`'s attributes as of `at`, if no change was
    /// sent or answered since `epoch`.
    pub(super) fn keep(&self, ino: u64, st: &Stat, at: Instant, epoch: u64) {
        if self.cfg.attr_timeout.is_zero() || ino == 0 {
            return;
        }
        let mut a = lock(&self.cache.fresh.attrs);
        // Checked under the lock: a change drops entries under it too.
        if self.epoch() != epoch {
            return;
        }
        if a.len() >= MAX_FRESH_ATTRS && !a.contains_key(&ino) {
            let ttl = self.cfg.attr_timeout;
            a.retain(|_, (_, t)| t.elapsed() < ttl);
            if a.len() >= MAX_FRESH_ATTRS {
                return;
            }
        }
        a.insert(ino, (*st, at));
    }

    /// Inode `ino`'s attributes, if fetched within the attribute timeout
    /// and untouched by any change through the mount since, and how much
    /// longer they may be cached.
    pub(super) fn kept(&self, ino: u64) -> Option<(Stat, Duration)> {
        let mut a = lock(&self.cache.fresh.attrs);
        match a.get(&ino) {
            Some((st, t)) if t.elapsed() < self.cfg.attr_timeout => {
                Some((*st, self.cfg.attr_timeout - t.elapsed()))
            }
            Some(_) => {
                a.remove(&ino);
                None
            }
            None => None,
        }
    }

    /// Forgets inode `ino`'s attributes (read: its atime may move).
    pub(super) fn drop_kept(&self, ino: u64) {
        lock(&self.cache.fresh.attrs).remove(&ino);
    }

    /// `dir`'s listing, if one was fetched within both timeouts and no
    /// change at all went through the mount since.
    pub(super) fn recent_listing(&self, dir: &[u8]) -> Option<Arc<Listing>> {
        let ttl = self.cfg.attr_timeout.min(self.cfg.entry_timeout);
        let epoch = self.epoch();
        let l = lock(&self.cache.fresh.listings);
        l.iter()
            .rev()
            .find(|(p, _)| p == dir)
            .map(|(_, l)| l)
            .filter(|l| l.epoch == Some(epoch) && l.at.elapsed() < ttl)
            .cloned()
    }

    /// Remembers `listing` as `dir`'s most recent one.
    pub(super) fn keep_listing(&self, dir: &[u8], listing: &Arc<Listing>) {
        if listing.epoch.is_none()
            || listing.entries.len() > MAX_LISTED_NAMES
            || self.cfg.attr_timeout.min(self.cfg.entry_timeout).is_zero()
        {
            return;
        }
        let mut l = lock(&self.cache.fresh.listings);
        l.retain(|(p, _)| p != dir);
        if l.len() >= MAX_RECENT_LISTINGS {
            l.pop_front();
        }
        l.push_back((dir.to_vec(), listing.clone()));
    }
}

/// Locks `m`, through a poisoned lock (the data is caches: a panic
/// elsewhere leaves them consistent enough to keep serving).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
