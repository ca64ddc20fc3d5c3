//! Directory handles: a listing fetched at `opendir` (or reused), handed to
//! the kernel by `readdir`/`readdirplus` offset by offset.

use super::cache::Listing;
use super::inodes::HIDDEN_PREFIX;
use super::{join, MountFs};
use spockfs_client::{Errno, Stat};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One directory entry handed to the kernel by [`MountFs::readdir`] or
/// [`MountFs::readdirplus`].
#[derive(Debug, Clone, Copy)]
pub struct DirItem<'a> {
    /// The mount's inode number (plain readdir: `u64::MAX` for a name the
    /// mount has no inode for, which the kernel never keeps).
    pub ino: u64,
    /// The offset to continue from after this entry.
    pub offset: u64,
    /// The name.
    pub name: &'a [u8],
    /// Its attributes (plain readdir: only the file type in `mode` counts).
    pub stat: Stat,
    /// How long the kernel may cache the attributes (readdirplus).
    pub ttl: Duration,
}

impl MountFs {
    /// A directory handle on `listing`.
    fn open_dir(&self, listing: Arc<Listing>) -> u64 {
        let fh = self.next_fh();
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, listing);
        fh
    }

    /// What [`opendir`](MountFs::opendir) answers without asking the
    /// server, if anything: an unknown `ino`, or a handle on the listing
    /// fetched just before when nothing changed since (`rm -r` and `fts`
    /// open each directory twice).
    pub fn opendir_cached(&self, ino: u64) -> Option<Result<u64, Errno>> {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let listing = self.recent_listing(&path)?;
        Some(Ok(self.open_dir(listing)))
    }

    /// Opens directory `ino`: fetches its listing (hidden names left out)
    /// and answers a handle to read it with
    /// [`readdir`](MountFs::readdir)/[`readdirplus`](MountFs::readdirplus).
    pub async fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        if let Some(r) = self.opendir_cached(ino) {
            return r;
        }
        let path = self.path(ino)?;
        let (epoch, at) = (self.epoch(), Instant::now());
        let entries = self.client().readdir(&path).await?;
        let names = entries.iter().map(|e| e.name.clone()).collect();
        let listing = Listing {
            // Hidden files are not listed (but exist: the names known to
            // the negative cache keep them).
            entries: entries
                .into_iter()
                .filter(|e| !e.name.starts_with(HIDDEN_PREFIX))
                .collect(),
            at,
            epoch: Some(epoch).filter(|&e| e == self.epoch()),
        };
        self.listed(&path, names);
        let listing = Arc::new(listing);
        self.keep_listing(&path, &listing);
        Ok(self.open_dir(listing))
    }

    fn listing(&self, fh: u64) -> Result<Arc<Listing>, Errno> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Hands the entries of directory handle `fh` (of inode `ino`) from
    /// `offset` on to `add`, until it answers `true` (full). Offsets: 1 is
    /// `.`, 2 `..`, 3 the first name. Plain readdir takes no lookup
    /// reference: names the mount has no inode for get `u64::MAX`.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), Errno> {
        let listing = self.listing(fh)?;
        let list = &listing.entries;
        let dir = self.path(ino)?;
        let mut off = offset;
        while off < list.len() as u64 + 2 {
            let item = match off {
                0 | 1 => DirItem {
                    ino: if off == 0 { ino } else { 1 },
                    offset: off + 1,
                    name: if off == 0 { b"." } else { b".." },
                    stat: Stat {
                        mode: libc::S_IFDIR,
                        ..Stat::default()
                    },
                    ttl: Duration::ZERO,
                },
                _ => {
                    let e = &list[(off - 2) as usize];
                    let mode = e.stat.as_ref().map_or(libc::S_IFREG, |st| st.mode);
                    let known = self
                        .inodes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_path
                        .get(&join(&dir, &e.name))
                        .copied();
                    DirItem {
                        ino: known.unwrap_or(u64::MAX),
                        offset: off + 1,
                        name: &e.name,
                        stat: Stat {
                            mode,
                            ..Stat::default()
                        },
                        ttl: Duration::ZERO,
                    }
                }
            };
            if add(item) {
                break;
            }
            off += 1;
        }
        Ok(())
    }

    /// Like [`readdir`](MountFs::readdir), with attributes and a lookup
    /// reference for each name handed to `add` (given back if `add`
    /// answers `true`: it did not fit). Names the listing has no
    /// attributes for (a server without `readdir-attrs`) are asked one by
    /// one; those gone meanwhile are skipped.
    pub async fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool + Send,
    ) -> Result<(), Errno> {
        let listing = self.listing(fh)?;
        let dir = self.path(ino)?;
        let list = &listing.entries;
        // A reused listing is as old as its fetch.
        let ttl = self.cfg.attr_timeout.saturating_sub(listing.at.elapsed());
        let mut off = offset;
        while off < list.len() as u64 + 2 {
            if off < 2 {
                // "." and "..": the kernel ignores their attributes and
                // takes no reference.
                let item = DirItem {
                    ino: if off == 0 { ino } else { 1 },
                    offset: off + 1,
                    name: if off == 0 { b"." } else { b".." },
                    stat: Stat {
                        mode: libc::S_IFDIR | 0o755,
                        ..Stat::default()
                    },
                    ttl,
                };
                if add(item) {
                    break;
                }
                off += 1;
                continue;
            }
            let e = &list[(off - 2) as usize];
            let path = join(&dir, &e.name);
            let (st, epoch, at) = match &e.stat {
                Some(st) => (*st, listing.epoch, listing.at),
                // A server without readdir-attrs: one GETATTR per name.
                None => {
                    let (epoch, at) = (self.epoch(), Instant::now());
                    match self.client().getattr(&path).await {
                        Ok(st) => (st, Some(epoch), at),
                        Err(_) => {
                            off += 1;
                            continue;
                        }
                    }
                }
            };
            // Take the reference first; give it back if the entry did not
            // fit.
            let i = self
                .inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(&path);
            let item = DirItem {
                ino: i,
                offset: off + 1,
                name: &e.name,
                stat: st,
                ttl,
            };
            if add(item) {
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(i, 1);
                break;
            }
            if let Some(epoch) = epoch {
                self.keep(i, &st, at, epoch);
            }
            off += 1;
        }
        Ok(())
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }
}
