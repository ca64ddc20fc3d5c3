//! Extended attributes: the namespaces, the kernel's checks in its order,
//! POSIX ACLs as far as they are a mode, and the four xattr calls.

use super::perm::{Cred, R, S_ISGID, S_ISVTX, W};
use super::tree::{now, Inode, State};
use super::MemFs;
use crate::backend::XattrFlag;
use crate::{Errno, FsPath, FsResult};

/// Longest xattr name (`XATTR_NAME_MAX`).
pub(super) const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value (`XATTR_SIZE_MAX`).
pub(super) const MAX_XATTR_VALUE: usize = 65536;

pub(super) fn xattr_bytes(name: &[u8], value: &[u8]) -> u64 {
    (name.len() + value.len()) as u64
}

/// The xattr namespaces the kernel knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ns {
    User,
    Trusted,
    Security,
    System,
    Other,
}

pub(super) fn namespace(name: &[u8]) -> (Ns, &[u8]) {
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
pub(super) fn posix_acl(name: &[u8]) -> Option<bool> {
    match name {
        b"system.posix_acl_access" => Some(false),
        b"system.posix_acl_default" => Some(true),
        _ => None,
    }
}

/// What the syscall checks of an xattr name before anything else.
pub(super) fn check_xattr_name(name: &[u8]) -> FsResult<()> {
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
pub(super) fn xattr_access(cred: &Cred, node: &Inode, name: &[u8], write: bool) -> FsResult<()> {
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
pub(super) const ACL_VERSION: u32 = 2;
pub(super) const ACL_USER_OBJ: u16 = 0x01;
pub(super) const ACL_USER: u16 = 0x02;
pub(super) const ACL_GROUP_OBJ: u16 = 0x04;
pub(super) const ACL_GROUP: u16 = 0x08;
pub(super) const ACL_MASK: u16 = 0x10;
pub(super) const ACL_OTHER: u16 = 0x20;

/// A POSIX ACL's entries (tag, permissions), as `posix_acl_from_xattr`
/// reads them from an xattr value (none for an empty value: the ACL is
/// removed): `EOPNOTSUPP` for another version,
/// `EINVAL` for a malformed value, an unknown tag or an unmappable id.
pub(super) fn acl_entries(value: &[u8]) -> FsResult<Vec<(u16, u32)>> {
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
pub(super) fn acl_mode(entries: &[(u16, u32)]) -> FsResult<u32> {
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

impl State {
    /// `vfs_set_acl` as ext4 does it, for the ACLs a mode can stand for:
    /// an access ACL sets the permission bits (set-group-ID cleared for a
    /// caller outside the file's group) and nothing is stored.
    pub(super) fn set_acl(
        &mut self,
        cred: &Cred,
        ino: u64,
        default: bool,
        value: &[u8],
    ) -> FsResult<()> {
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
}

impl MemFs {
    pub(super) fn xattr_list(&self, path: &FsPath, limit: usize) -> FsResult<Vec<Vec<u8>>> {
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

    pub(super) fn xattr_get(&self, path: &FsPath, name: &[u8], limit: usize) -> FsResult<Vec<u8>> {
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

    pub(super) fn xattr_set(
        &self,
        path: &FsPath,
        name: &[u8],
        value: &[u8],
        flag: XattrFlag,
    ) -> FsResult<()> {
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

    pub(super) fn xattr_remove(&self, path: &FsPath, name: &[u8]) -> FsResult<()> {
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
}
