//! The inode table: inode numbers ↔ paths, the kernel's lookup counts,
//! open handles, and the hidden names of files removed while open.

use std::collections::HashMap;

pub(super) struct Node {
    /// Every name the mount knows for this inode (hard links); the first
    /// one is used for requests. The last name stays when it is unlinked
    /// (an open file's is renamed to a hidden name instead, see
    /// [`HIDDEN_PREFIX`]).
    pub(super) paths: Vec<Vec<u8>>,
    lookups: u64,
    /// Open file handles (`open`/`create` not yet released).
    open: u64,
    /// The first path is a hidden name the file was renamed to when its
    /// last name was removed while open: removed on the last release.
    pub(super) hidden: bool,
}

impl Node {
    fn new(path: &[u8], lookups: u64) -> Node {
        Node {
            paths: vec![path.to_vec()],
            lookups,
            open: 0,
            hidden: false,
        }
    }
}

/// The start of the name an open file is renamed to, in its own directory,
/// when its last name is removed through the mount (unlinked, or replaced
/// by a rename) while it is open: `.spockfs-hidden.<mount>.<ino>.<n>`
/// (hexadecimal: a random id of this mount, the mount's inode number, a
/// counter). Reads, writes, `fstat` and `ftruncate` on the open
/// descriptors keep working (the way NFS clients keep `.nfsXXXX` files);
/// the last release removes the hidden name. READDIR through the mount
/// never shows such names. A directory holding only hidden names of files
/// still open is not empty: `rmdir` fails with `ENOTEMPTY` until they are
/// closed (as on NFS). If the mount dies first, the hidden files stay on
/// the server (remove them there, or by exact name through a mount).
pub const HIDDEN_PREFIX: &[u8] = b".spockfs-hidden.";

#[derive(Default)]
pub(super) struct Inodes {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_path: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Inodes {
    pub(super) fn new() -> Self {
        let mut t = Inodes {
            next: 2,
            ..Default::default()
        };
        t.nodes.insert(1, Node::new(b"/", 1));
        t.by_path.insert(b"/".to_vec(), 1);
        t
    }

    pub(super) fn path(&self, ino: u64) -> Option<&[u8]> {
        self.nodes
            .get(&ino)
            .and_then(|n| n.paths.first())
            .map(Vec::as_slice)
    }

    /// The inode of `path`, created if new; one more kernel reference.
    pub(super) fn get_or_insert(&mut self, path: &[u8]) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups += 1;
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node::new(path, 1));
        self.by_path.insert(path.to_vec(), ino);
        ino
    }

    /// A new hard link `path` to `ino`; one more kernel reference. Falls
    /// back to a fresh inode if `ino` is gone.
    pub(super) fn link(&mut self, ino: u64, path: &[u8]) -> u64 {
        self.detach(path);
        match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.lookups += 1;
                n.paths.push(path.to_vec());
                self.by_path.insert(path.to_vec(), ino);
                ino
            }
            None => self.get_or_insert(path),
        }
    }

    pub(super) fn forget(&mut self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.nodes.remove(&ino) {
                for p in node.paths {
                    if self.by_path.get(&p) == Some(&ino) {
                        self.by_path.remove(&p);
                    }
                }
            }
        }
    }

    /// `path` no longer names its inode (unlinked, or replaced by a rename).
    pub(super) fn detach(&mut self, path: &[u8]) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if n.paths.len() > 1 {
                    n.paths.retain(|p| p != path);
                }
            }
        }
    }

    /// One more open handle on `ino`.
    pub(super) fn opened(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.open += 1;
        }
    }

    /// One handle on `ino` released: the hidden path to remove if that was
    /// the last one of a hidden file (which is then no longer hidden).
    pub(super) fn closed(&mut self, ino: u64) -> Option<Vec<u8>> {
        let n = self.nodes.get_mut(&ino)?;
        n.open = n.open.saturating_sub(1);
        if n.open > 0 || !n.hidden {
            return None;
        }
        n.hidden = false;
        n.paths.first().cloned()
    }

    /// The inode that removing `path` would leave without a name while
    /// it is open: `path` is the only name the mount knows for it.
    pub(super) fn open_last_name(&self, path: &[u8]) -> Option<u64> {
        let ino = *self.by_path.get(path)?;
        let n = self.nodes.get(&ino)?;
        (n.open > 0 && n.paths.len() == 1).then_some(ino)
    }

    /// `ino`, open, was renamed from `from` to the hidden name `to`.
    /// Returns true if its handles were all released meanwhile: the
    /// caller removes `to` now.
    pub(super) fn hid(&mut self, ino: u64, from: &[u8], to: &[u8]) -> bool {
        self.rename(from, to);
        match self.nodes.get_mut(&ino) {
            Some(n) if n.open > 0 => {
                n.hidden = true;
                false
            }
            _ => true,
        }
    }

    /// True if `ino` is an open file whose last name was removed.
    pub(super) fn is_hidden(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.hidden)
    }

    /// Renames `from` (and everything below it) to `to`.
    pub(super) fn rename(&mut self, from: &[u8], to: &[u8]) {
        if from == to {
            return;
        }
        let mut prefix = from.to_vec();
        prefix.push(b'/');
        let moved: Vec<(Vec<u8>, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_slice() == from || p.starts_with(&prefix))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        // Whatever `to` (and below it, an empty directory) named is gone.
        let mut to_prefix = to.to_vec();
        to_prefix.push(b'/');
        let stale: Vec<Vec<u8>> = self
            .by_path
            .keys()
            .filter(|p| p.as_slice() == to || p.starts_with(&to_prefix))
            .cloned()
            .collect();
        for p in stale {
            self.detach(&p);
        }
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            if let Some(n) = self.nodes.get_mut(&ino) {
                for p in n.paths.iter_mut() {
                    if *p == old {
                        *p = new.clone();
                    }
                }
            }
            self.by_path.insert(new, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_descendants() {
        let mut t = Inodes::new();
        let a = t.get_or_insert(b"/a");
        let ab = t.get_or_insert(b"/a/b");
        let abc = t.get_or_insert(b"/a/b/c");
        let ax = t.get_or_insert(b"/ax");
        let old = t.get_or_insert(b"/z/b");
        t.rename(b"/a", b"/z");
        assert_eq!(t.path(a), Some(&b"/z"[..]));
        assert_eq!(t.path(ab), Some(&b"/z/b"[..]));
        assert_eq!(t.path(abc), Some(&b"/z/b/c"[..]));
        assert_eq!(t.path(ax), Some(&b"/ax"[..]));
        assert_eq!(t.by_path.get(b"/z/b/c".as_slice()), Some(&abc));
        assert_eq!(t.by_path.get(b"/z/b".as_slice()), Some(&ab));
        assert!(!t.by_path.contains_key(b"/a".as_slice()));
        // The replaced node keeps its (stale) path but is unreachable.
        assert!(t.nodes.contains_key(&old));
        t.forget(old, 1);
        assert!(!t.nodes.contains_key(&old));
        assert_eq!(t.by_path.get(b"/z/b".as_slice()), Some(&ab));
    }

    #[test]
    fn forget_drops_after_all_lookups() {
        let mut t = Inodes::new();
        let a = t.get_or_insert(b"/a");
        assert_eq!(t.get_or_insert(b"/a"), a);
        t.forget(a, 1);
        assert!(t.nodes.contains_key(&a));
        t.forget(a, 1);
        assert!(!t.nodes.contains_key(&a));
        assert!(!t.by_path.contains_key(b"/a".as_slice()));
        t.forget(1, 100);
        assert!(t.nodes.contains_key(&1));
    }

    #[test]
    fn hard_links_share_an_inode() {
        let mut t = Inodes::new();
        let a = t.get_or_insert(b"/d/a");
        assert_eq!(t.link(a, b"/e/b"), a);
        t.detach(b"/d/a");
        assert_eq!(t.path(a), Some(&b"/e/b"[..]));
        t.detach(b"/e/b");
        // The last name stays for calls on still-open files.
        assert_eq!(t.path(a), Some(&b"/e/b"[..]));
        assert!(!t.by_path.contains_key(b"/e/b".as_slice()));
        t.forget(a, 2);
        assert!(!t.nodes.contains_key(&a));
    }
}
