//! Snapshots of a directory tree as the tests compare them: everything
//! observable about each object but its times and inode number.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One object of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `st_mode`, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (0 for directories, whose count depends on subdirs).
    pub nlink: u64,
    /// Size of a regular file (0 for anything else).
    pub size: u64,
    /// Content of a regular file.
    pub content: Option<Vec<u8>>,
    /// Target of a symlink (with [`snapshot`]'s `base` rewritten).
    pub link: Option<Vec<u8>>,
    /// `user.*` xattrs (none for symlinks).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The `user.*` xattrs of `p` (not following a symlink).
pub fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf[..]) else {
        return out;
    };
    for name in buf[..n]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let mut v = vec![0u8; 65536];
        if let Ok(m) = rustix::fs::lgetxattr(p, name, &mut v[..]) {
            v.truncate(m);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

/// The tree under `dir` by path relative to it (`""` is `dir` itself);
/// absolute symlink targets starting with `base` are rewritten to start
/// with `$BASE`, so two copies of a tree in different places compare equal.
pub fn snapshot(dir: &Path, base: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = m.file_type();
        let rel = p
            .strip_prefix(dir)
            .unwrap_or(&p)
            .as_os_str()
            .as_bytes()
            .to_vec();
        out.insert(
            rel,
            Node {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: if ft.is_dir() { 0 } else { m.nlink() },
                size: if ft.is_file() { m.size() } else { 0 },
                content: ft.is_file().then(|| std::fs::read(&p).unwrap_or_default()),
                link: ft.is_symlink().then(|| {
                    let t = std::fs::read_link(&p).unwrap_or_default();
                    rewrite_base(t.as_os_str().as_bytes(), base)
                }),
                xattrs: if ft.is_symlink() {
                    BTreeMap::new()
                } else {
                    xattrs_of(&p)
                },
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
                stack.push(e.unwrap_or_else(|e| panic!("{e}")).path());
            }
        }
    }
    out
}

/// `t` with a leading `base` replaced by `$BASE` (symlink targets, READLINK
/// answers), so that two copies of a tree compare equal.
pub fn rewrite_base(t: &[u8], base: &Path) -> Vec<u8> {
    let b = base.as_os_str().as_bytes();
    match t.strip_prefix(b) {
        Some(rest) => [&b"$BASE"[..], rest].concat(),
        None => t.to_vec(),
    }
}
