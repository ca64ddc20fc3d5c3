//! The permission model: whom a call is checked for ([`Cred`]) and the
//! kernel's checks made for it (`generic_permission`, `may_create`,
//! `may_delete`, `file_remove_privs`).

use super::tree::{Inode, State};
use super::MemFs;
use crate::backend::SetId;
use crate::{Errno, FsResult, Identity};
use std::sync::Arc;

/// Permission request bits, as in `access(2)` and the kernel's `MAY_*`.
pub(super) const R: u32 = 4;
pub(super) const W: u32 = 2;
pub(super) const X: u32 = 1;

pub(super) const S_ISUID: u32 = 0o4000;
pub(super) const S_ISGID: u32 = 0o2000;
pub(super) const S_ISVTX: u32 = 0o1000;
pub(super) const S_IXGRP: u32 = 0o0010;
pub(super) const S_IXUGO: u32 = 0o0111;

impl MemFs {
    /// The same tree seen by another identity: a test hook standing in for a
    /// process with another effective uid and gid.
    #[cfg(test)]
    pub(super) fn with_identity(&self, uid: u32, gid: u32) -> MemFs {
        MemFs {
            shared: Arc::clone(&self.shared),
            cred: Cred {
                uid,
                gid,
                groups: Arc::from([]),
            },
        }
    }

    /// Whom this call's permission checks are for: the identity the engine
    /// set for the request ([`Identity::current`]), else this `MemFs`'s own.
    pub(super) fn cred(&self) -> Cred {
        match Identity::current() {
            Some(id) => Cred::of(&id),
            None => self.cred.clone(),
        }
    }
}

/// The identity permission checks are made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cred {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Supplementary groups, sorted.
    pub(super) groups: Arc<[u32]>,
}

impl Cred {
    pub(super) fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `generic_permission`: may this identity `mask` (R/W/X bits) `node`?
    pub(super) fn permits(&self, node: &Inode, mask: u32) -> bool {
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

    pub(super) fn check(&self, node: &Inode, mask: u32) -> FsResult<()> {
        if self.permits(node, mask) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// `inode_owner_or_capable`.
    pub(super) fn owns(&self, node: &Inode) -> bool {
        self.is_root() || node.uid == self.uid
    }

    /// `in_group_or_capable`.
    pub(super) fn in_group(&self, gid: u32) -> bool {
        self.is_root() || self.member(gid)
    }

    /// `in_group_p`: the primary group or a supplementary one.
    pub(super) fn member(&self, gid: u32) -> bool {
        gid == self.gid || self.groups.binary_search(&gid).is_ok()
    }

    pub(super) fn of(id: &Identity) -> Cred {
        Cred {
            uid: id.uid(),
            gid: id.gid(),
            groups: id.groups_arc(),
        }
    }
}

impl Inode {
    /// `file_remove_privs`: a write or truncate by an unprivileged caller
    /// clears set-user-ID, and set-group-ID when it means "execute as group";
    /// under [`SetId::Strip`] whoever the caller is.
    pub(super) fn remove_privs(&mut self, cred: &Cred, setid: SetId) {
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

impl State {
    /// `may_lookup`: search permission on `dir`.
    pub(super) fn search(&self, cred: &Cred, dir: u64) -> FsResult<()> {
        cred.check(self.get(dir)?, X)
    }

    /// `may_create`: write and search permission on the directory.
    pub(super) fn may_create(&self, cred: &Cred, dir: u64) -> FsResult<()> {
        cred.check(self.get(dir)?, W | X)
    }

    /// `may_delete`: removing `victim` from `dir`, where `isdir` says
    /// whether a directory is expected.
    pub(super) fn may_delete(
        &self,
        cred: &Cred,
        dir: u64,
        victim: u64,
        isdir: bool,
    ) -> FsResult<()> {
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
}
