//! What `MemFs` hands out for the length of a request: open files (which
//! keep an unlinked inode alive) and whole-file replacements.

use super::perm::{S_ISGID, W};
use super::tree::{now, write_end, write_into, Data, MAX_INODES};
use super::{mode, MemFs, REPLACE_PERMS};
use crate::backend::{FileHandle, Replacement, SetId};
use crate::{Errno, FsPath, FsResult};
use std::sync::Mutex;

impl MemFs {
    pub(super) fn open_handle(
        &self,
        path: &FsPath,
        mask: u32,
        setid: SetId,
    ) -> FsResult<Box<dyn FileHandle>> {
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
pub(super) struct MemFile {
    pub(super) fs: MemFs,
    pub(super) ino: u64,
    pub(super) size: u64,
    /// Opened for writing (and then not for reading), like an `O_WRONLY` fd.
    pub(super) writable: bool,
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
pub(super) struct MemReplacement {
    pub(super) fs: MemFs,
    /// The directory, held like `LocalFs` holds its fd: it follows renames.
    pub(super) dir: u64,
    /// What happens to the replaced file's set-ID bits.
    pub(super) setid: SetId,
    pub(super) name: Vec<u8>,
    /// `None` once committed.
    pub(super) data: Mutex<Option<Vec<u8>>>,
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
