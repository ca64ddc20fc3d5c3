//! Open files: handles, reads and writes, and what a release leaves to
//! do (a hidden name to remove, a created file's pending mode).

use super::caller;
use super::fs::{DataStamp, Entry};
use super::{split_parent, MountFs};
use bytes::Bytes;
use spockfs_client::{Caller, Errno};

/// Most files whose data stamp an open remembers (then they are forgotten
/// at once: the next open of each drops its pages, nothing worse).
const MAX_DATA_STAMPS: usize = 100_000;

/// What the release of a file handle leaves to do on the server (see
/// [`MountFs::release`]).
#[derive(Debug)]
pub struct Released {
    pending: Option<PendingMode>,
    hidden: Option<Vec<u8>>,
}

/// A mode to apply on release (inode, mode), as the file's creator: the
/// release may come from another caller (a squashing server would refuse
/// it theirs).
pub(super) type PendingMode = (u64, u32, Option<Caller>);

impl MountFs {
    pub(super) fn next_fh(&self) -> u64 {
        let mut n = self.next_fh.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        *n
    }

    /// Registers a new open file handle on `ino`.
    fn open_handle(&self, ino: u64) -> u64 {
        let fh = self.next_fh();
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, ino);
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .opened(ino);
        fh
    }

    /// Opens inode `ino` with `open(2)` `flags` (the server checks them);
    /// answers the new file handle, and whether the kernel may keep the
    /// file's cached pages: close-to-open consistency, as NFS gives. The
    /// open asks the server for the file's attributes (extension `stat`,
    /// in the same request); if size, mtime and ctime are to the
    /// nanosecond (extension `nsec`) what the last open saw, and nothing
    /// was changed through this mount since, the file has not changed and
    /// its pages stay; otherwise the kernel drops them. Without both
    /// extensions every open drops them (whole-second times cannot show a
    /// change within the second).
    pub async fn open(&self, ino: u64, flags: i32) -> Result<(u64, bool), Errno> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.writable()?;
        }
        let path = self.path(ino)?;
        let ext = self.client().extensions().await;
        if !(ext.stat && ext.nsec && self.cfg.keep_cache) {
            self.client().open(&path, flags).await?;
            return Ok((self.open_handle(ino), false));
        }
        let epoch = self.epoch();
        let st = self.client().open_stat(&path, flags).await?;
        let fh = self.open_handle(ino);
        let Some(st) = st else {
            return Ok((fh, false));
        };
        let now: DataStamp = (st.size, st.mtime, st.mtime_nsec, st.ctime, st.ctime_nsec);
        let mut stamps = self.data_stamps.lock().unwrap_or_else(|e| e.into_inner());
        let keep = stamps.get(&ino) == Some(&now);
        // A change through this mount since the open was sent: what the
        // server answered may predate it; remember nothing.
        if self.epoch() == epoch {
            if stamps.len() >= MAX_DATA_STAMPS && !stamps.contains_key(&ino) {
                stamps.clear();
            }
            stamps.insert(ino, now);
        } else {
            stamps.remove(&ino);
        }
        Ok((fh, keep))
    }

    /// Creates and opens file `name` in `parent`; answers the entry and the
    /// new file handle. A mode without `S_IWUSR` is applied on release (the
    /// creating descriptor may write), as the creator; the entry shows it
    /// at once.
    pub async fn create(&self, parent: u64, name: &[u8], mode: u32) -> Result<(Entry, u64), Errno> {
        self.writable()?;
        let path = self.child(parent, name)?;
        let perm = mode & 0o7777;
        let mut e = self.make(&path, self.client().create(&path, perm)).await?;
        let fh = self.open_handle(e.ino);
        if perm & 0o200 == 0 {
            self.pending_mode
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(fh, (e.ino, perm, caller::current()));
            e.stat.mode = (e.stat.mode & !0o7777) | perm;
        }
        Ok((e, fh))
    }

    /// Releases file handle `fh`, deciding now (as the request is read)
    /// what that leaves to do: `None` if nothing, else finish it with
    /// [`finish_release`](MountFs::finish_release). An `rmdir` started
    /// after this call waits for a hidden name it removes.
    pub fn release(&self, fh: u64) -> Option<Released> {
        let pending = self
            .pending_mode
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let file = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let hidden = file.and_then(|ino| {
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .closed(ino)
        });
        if let Some(h) = &hidden {
            *self
                .reaping
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(split_parent(h).0.to_vec())
                .or_default() += 1;
        }
        if pending.is_none() && hidden.is_none() {
            return None;
        }
        Some(Released { pending, hidden })
    }

    /// Does what a [`release`](MountFs::release) left to do: removes the
    /// hidden name of a file whose last handle it was, or applies a
    /// created file's pending mode as its creator.
    pub async fn finish_release(&self, released: Released) -> Result<(), Errno> {
        let Released { pending, hidden } = released;
        if let Some(h) = hidden {
            // Removed: its pending mode no longer matters.
            self.change(&[&h], true, self.unhide(&h)).await;
            let dir = split_parent(&h).0;
            let mut reaping = self.reaping.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = reaping.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    reaping.remove(dir);
                }
            }
            drop(reaping);
            self.reaped.notify_waiters();
        } else if let Some((ino, perm, creator)) = pending {
            let path = self
                .inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .path(ino)
                .map(<[u8]>::to_vec);
            if let Some(path) = path {
                // As the creator, whoever closes it last.
                caller::as_caller(creator, async {
                    self.change(&[&path], false, self.client().chmod(&path, perm))
                        .await
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Reads up to `size` bytes of inode `ino` at `offset`.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let path = self.path(ino)?;
        let b = self.client().read(&path, offset, u64::from(size)).await?;
        // The read may have moved the file's atime.
        self.drop_kept(ino);
        Ok(b)
    }

    /// Writes `data` to inode `ino` at `offset`, straight to the server;
    /// answers the bytes written.
    pub async fn write(&self, ino: u64, offset: u64, data: Bytes) -> Result<u32, Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        let n = data.len() as u32;
        self.change(&[&path], false, self.client().write(&path, offset, data))
            .await?;
        Ok(n)
    }

    /// Flushes inode `ino` to stable storage on the server.
    pub async fn fsync(&self, ino: u64, datasync: bool) -> Result<(), Errno> {
        let path = self.path(ino)?;
        self.client().fsync(&path, datasync).await
    }

    /// `fallocate(2)` on inode `ino`.
    pub async fn fallocate(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        self.change(
            &[&path],
            false,
            self.client().fallocate(&path, mode, offset, length),
        )
        .await
    }
}
