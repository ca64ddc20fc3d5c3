//! Files removed while open: their last name is renamed to a hidden one
//! on the server, removed on the last release.

use super::{split_parent, MountFs, HIDDEN_PREFIX};
use spockfs_client::{Changed, Errno};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

/// A random id for this mount's hidden names (see [`HIDDEN_PREFIX`]), so
/// that two mounts of one server never pick the same name.
pub(super) fn mount_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl MountFs {
    /// A new hidden name for inode `ino` in `path`'s directory.
    fn hidden_name(&self, path: &[u8], ino: u64) -> Vec<u8> {
        let (dir, _) = split_parent(path);
        let n = self.hidden_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{:016x}.{ino:x}.{n:x}", self.hidden_id);
        let mut p = dir.to_vec();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(HIDDEN_PREFIX);
        p.extend_from_slice(name.as_bytes());
        p
    }

    /// Renames `path`, the last name of open inode `ino`, to a hidden name
    /// (on the server, then in the mount's tables); removes that at once if
    /// the file was closed meanwhile. Runs as a change of `path`'s
    /// directory; the caller holds it in [`change`](MountFs::change).
    pub(super) async fn hide(&self, path: &[u8], ino: u64) -> Result<(Changed, Vec<u8>), Errno> {
        let hidden = self.hidden_name(path, ino);
        let ch = self.client().rename(path, &hidden).await?;
        self.listed_name(path, false);
        self.listed_name(&hidden, true);
        let closed = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hid(ino, path, &hidden);
        tracing::debug!(path = %String::from_utf8_lossy(path), "open file hidden");
        if closed {
            self.unhide(&hidden).await;
        }
        Ok((ch, hidden))
    }

    /// Gives `path` back to open inode `ino`, hidden as `hidden` by a
    /// rename that then failed (best effort: it stays hidden otherwise).
    pub(super) async fn restore(&self, hidden: &[u8], path: &[u8], ino: u64) {
        if self.client().rename(hidden, path).await.is_ok() {
            self.listed_name(hidden, false);
            self.listed_name(path, true);
            let mut t = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            t.rename(hidden, path);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.hidden = false;
            }
        }
    }

    /// Removes a hidden name (its file's last handle is released).
    pub(super) async fn unhide(&self, hidden: &[u8]) {
        match self.client().unlink(hidden).await {
            Ok(_) => self.listed_name(hidden, false),
            Err(e) => tracing::warn!(
                path = %String::from_utf8_lossy(hidden),
                errno = %e,
                "cannot remove a hidden file after its last close: it stays on the server"
            ),
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .detach(hidden);
    }

    /// Waits until no hidden name in `dir` is being removed.
    pub(super) async fn reaped(&self, dir: &[u8]) {
        loop {
            let notified = self.reaped.notified();
            let busy = self
                .reaping
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(dir);
            if !busy {
                return;
            }
            notified.await;
        }
    }
}
