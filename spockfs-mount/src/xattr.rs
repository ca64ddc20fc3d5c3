//! Extended attributes, with the negative cache of absent names.

use super::MountFs;
use bytes::Bytes;
use spockfs_client::{Errno, XattrFlag};

impl MountFs {
    /// Sets xattr `name` of inode `ino`; `flags` are `setxattr(2)`'s (0,
    /// `XATTR_CREATE`, `XATTR_REPLACE`; others are `EINVAL`).
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: Bytes,
        flags: i32,
    ) -> Result<(), Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        let flag = match flags {
            0 => XattrFlag::Any,
            libc::XATTR_CREATE => XattrFlag::Create,
            libc::XATTR_REPLACE => XattrFlag::Replace,
            _ => return Err(Errno::EINVAL),
        };
        let r = self
            .change(
                &[&path],
                false,
                self.client().setxattr(&path, name, value, flag),
            )
            .await;
        // Whatever happened, the name may exist now.
        self.mark_absent(ino, name, false);
        r
    }

    /// The value of xattr `name` of inode `ino` (`ENODATA` if absent,
    /// answered from the negative cache when known).
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if self.xattr_known_absent(ino, name) {
            return Err(Errno::ENODATA);
        }
        let path = self.path(ino)?;
        match self.client().getxattr(&path, name).await {
            Ok(v) => {
                self.mark_absent(ino, name, false);
                Ok(v)
            }
            Err(e) => {
                if e == Errno::ENODATA {
                    self.mark_absent(ino, name, true);
                }
                Err(e)
            }
        }
    }

    /// The xattr names of inode `ino`.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, Errno> {
        let path = self.path(ino)?;
        let names = self.client().listxattr(&path).await?;
        for n in &names {
            self.mark_absent(ino, n, false);
        }
        Ok(names)
    }

    /// Removes xattr `name` of inode `ino`.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), Errno> {
        self.writable()?;
        let path = self.path(ino)?;
        match self
            .change(&[&path], false, self.client().removexattr(&path, name))
            .await
        {
            Ok(()) => {
                // It existed (seen: never absent mount-wide); now it is
                // absent from this inode.
                self.mark_absent(ino, name, false);
                self.mark_absent(ino, name, true);
                Ok(())
            }
            Err(e) => {
                self.mark_absent(ino, name, false);
                Err(e)
            }
        }
    }
}
