//! What `LocalFs` hands out for the length of a request: open files
//! (reads and ranged writes), whole-file replacements (a temporary file
//! renamed over the target on commit) and directory listings read in
//! batches.

use super::confine::link_proc;
use super::{gid, io_err, statat, uid};
use crate::backend::{
    is_temp_name, mode, DirSink, DirStream, FileHandle, Replacement, SetId, TEMP_STALE_AFTER,
};
use crate::{Errno, FsResult};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode};
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) struct LocalFile {
    pub(super) fd: OwnedFd,
    pub(super) size: u64,
}

impl FileHandle for LocalFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> FsResult<usize> {
        loop {
            match rustix::io::pread(&self.fd, &mut *buf, offset) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(io_err),
            }
        }
    }

    fn read_append(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> FsResult<usize> {
        // Into the spare capacity, uncleared: the kernel writes every byte
        // it reports. `reserve_exact` may leave more room than `len`; what
        // lands beyond it is cut off.
        let start = buf.len();
        buf.reserve_exact(len);
        loop {
            match rustix::io::pread(&self.fd, rustix::buffer::spare_capacity(buf), offset) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_err(e)),
                Ok(n) => {
                    buf.truncate(start + len);
                    return Ok(n.min(len));
                }
            }
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        write_all_at(&self.fd, buf, offset)
    }
}

fn write_all_at(fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> FsResult<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file `name` in `dir` if it went unwritten for
/// [`TEMP_STALE_AFTER`]: left by a server that crashed mid-PUT. Errors
/// (gone already, no permission as this request's identity) change nothing.
/// Whether it was removed.
pub(super) fn remove_if_stale(dir: &impl AsFd, name: &[u8]) -> bool {
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
    let stale = std::time::SystemTime::now()
        .duration_since(mtime)
        .is_ok_and(|age| age >= TEMP_STALE_AFTER);
    if !stale || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return false;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok()
}

pub(super) fn tmp_name() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = crate::backend::TEMP_PREFIX.to_vec();
    name.extend_from_slice(
        format!(
            "{}.{}.{:08x}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        )
        .as_bytes(),
    );
    name
}

/// Atomic whole-file replacement: an anonymous `O_TMPFILE` in the target's
/// directory (nothing visible, nothing left behind on a crash), linked under
/// a temporary name and renamed over the target on commit. Filesystems
/// without `O_TMPFILE` get a named temporary from the start.
pub(super) struct LocalReplacement {
    pub(super) dir: OwnedFd,
    pub(super) name: Vec<u8>,
    pub(super) fd: OwnedFd,
    /// What happens to the replaced file's set-ID bits.
    pub(super) setid: SetId,
    /// Named temporary that exists on disk and must be removed on abort.
    pub(super) tmp: std::sync::Mutex<Option<Vec<u8>>>,
    pub(super) committed: std::sync::atomic::AtomicBool,
}

impl Replacement for LocalReplacement {
    fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<()> {
        write_all_at(&self.fd, buf, offset)
    }

    fn commit(&self) -> FsResult<bool> {
        if self.committed.swap(true, Ordering::AcqRel) {
            return Err(Errno::EINVAL);
        }
        // Keep the permissions (and, when allowed, the owner) of the file
        // being replaced, like an editor's atomic save.
        match statat(&self.dir, &self.name) {
            Ok(st) if st.is_dir() => return Err(Errno::EISDIR),
            Ok(st) if st.is_file() => {
                // chown first: it clears setuid/setgid, which chmod restores
                // (unless replacing content clears them).
                let _ = rustix::fs::fchown(&self.fd, uid(Some(st.uid)), gid(Some(st.gid)));
                let perms = self
                    .setid
                    .after_write(st.mode)
                    .unwrap_or(st.mode & mode::PERMS);
                rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(perms)).map_err(io_err)?;
            }
            _ => {}
        }
        let mut tmp = self.tmp.lock().unwrap_or_else(|p| p.into_inner());
        let tmp_name = match tmp.as_ref() {
            Some(n) => n.clone(),
            None => {
                // Give the anonymous file a (temporary) name.
                let mut last = Errno::EEXIST;
                let mut linked = None;
                for _ in 0..8 {
                    let n = tmp_name();
                    match link_proc(&self.fd, &self.dir, &n) {
                        Ok(()) => {
                            linked = Some(n);
                            break;
                        }
                        Err(Errno::EEXIST) => continue,
                        Err(e) => {
                            last = e;
                            break;
                        }
                    }
                }
                let n = linked.ok_or(last)?;
                *tmp = Some(n.clone());
                n
            }
        };
        let replace = || {
            rustix::fs::renameat(
                &self.dir,
                tmp_name.as_slice(),
                &self.dir,
                self.name.as_slice(),
            )
            .map_err(io_err)
        };
        let created = match rustix::fs::renameat_with(
            &self.dir,
            tmp_name.as_slice(),
            &self.dir,
            self.name.as_slice(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => {
                replace()?;
                false
            }
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                // No RENAME_NOREPLACE on this filesystem: best effort.
                let existed = statat(&self.dir, &self.name).is_ok();
                replace()?;
                !existed
            }
            Err(e) => return Err(io_err(e)),
        };
        *tmp = None;
        Ok(created)
    }
}

impl Drop for LocalReplacement {
    fn drop(&mut self) {
        let tmp = self.tmp.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = tmp.take() {
            let _ = rustix::fs::unlinkat(&self.dir, n.as_slice(), AtFlags::empty());
        }
    }
}

/// A directory listed in batches: the open directory (its fd and getdents
/// buffer) is all that is kept between batches.
pub(super) struct LocalDir {
    pub(super) dir: rustix::fs::Dir,
    pub(super) attrs: bool,
}

impl DirStream for LocalDir {
    fn next_batch(&mut self, max: usize, sink: &mut DirSink<'_>) -> FsResult<bool> {
        let mut n = 0;
        while n < max {
            let Some(entry) = self.dir.read() else {
                return Ok(true);
            };
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if is_temp_name(name) {
                // The server's own; one a crashed server left goes now.
                remove_if_stale(&self.dir.fd().map_err(io_err)?, name);
                continue;
            }
            n += 1;
            if self.attrs {
                match statat(&self.dir.fd().map_err(io_err)?, name) {
                    Ok(st) => sink(name, Some(&st))?,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                sink(name, None)?;
            }
        }
        // Full batch; the end shows on the next call.
        Ok(false)
    }

    fn count_and_rewind(&mut self) -> FsResult<u64> {
        let mut n = 0u64;
        while let Some(entry) = self.dir.read() {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." && !is_temp_name(name) {
                n += 1;
            }
        }
        self.dir.rewind();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::seccomp::{on_thread_denying, Deny, When};
    use crate::backend::{Backend, SetId};
    use crate::{Errno, FsPath, LocalFs};
    use std::path::Path;

    /// Temporary files of replacements in `dir`.
    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".spockfs-put."))
            .collect()
    }

    /// On a filesystem without `O_TMPFILE` and `RENAME_NOREPLACE` (a
    /// seccomp filter refuses both, as such a filesystem does), a
    /// replacement writes a named temporary file, says whether it created
    /// the file, and leaves no temporary behind, committed or abandoned.
    #[test]
    fn replacement_without_tmpfile_or_noreplace() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().to_path_buf();
        let deny = [
            Deny {
                nr: libc::SYS_openat,
                when: When::ArgHas(2, (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32),
                errno: libc::EOPNOTSUPP,
            },
            Deny {
                nr: libc::SYS_renameat2,
                when: When::ArgHas(4, libc::RENAME_NOREPLACE),
                errno: libc::EINVAL,
            },
        ];
        let seen = on_thread_denying(&deny, move || {
            let fs = LocalFs::open(&root).unwrap_or_else(|e| panic!("{e}"));
            let f = FsPath::from_url_path("/f").unwrap_or_else(|e| panic!("{e}"));
            let replace = |data: &[u8]| -> Result<(bool, Vec<String>), Errno> {
                let r = fs.replace(&f, SetId::Keep)?;
                r.write_at(data, 0)?;
                // The named temporary, there until the commit.
                let during = temporaries(&root);
                Ok((r.commit()?, during))
            };
            let created = replace(b"first");
            let replaced = replace(b"second");
            let abandoned = fs.replace(&f, SetId::Keep).map(|r| {
                let _ = r.write_at(b"third", 0);
                temporaries(&root).len()
            });
            (created, replaced, abandoned)
        });
        let (created, replaced, abandoned) = seen;
        let (created, during) = created.unwrap_or_else(|e| panic!("{e}"));
        assert!(created);
        assert_eq!(during.len(), 1, "{during:?}");
        let (created, _) = replaced.unwrap_or_else(|e| panic!("{e}"));
        assert!(!created);
        assert_eq!(abandoned, Ok(1));
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
        let content = std::fs::read(dir.path().join("f")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(content, b"second");
    }
}
