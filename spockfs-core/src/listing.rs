//! The `readdir-attrs` listing format (extension): one line per entry,
//! `mode ino nlink uid gid size blocks atime mtime ctime name`, ten decimal
//! fields and the name up to the `\n`. Written by the engine, read by
//! clients; defined once here.

use crate::Stat;

/// Appends the ten attribute fields and the space before the name.
pub fn write_attrs_prefix(out: &mut Vec<u8>, st: &Stat) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{} {} {} {} {} {} {} {} {} {} ",
        st.mode, st.ino, st.nlink, st.uid, st.gid, st.size, st.blocks, st.atime, st.mtime, st.ctime
    );
}

/// Parses one line (without its `\n`) into the name and its attributes
/// (`dev` and `rdev` are not in the format: 0). `None` if malformed.
///
/// ```
/// use spockfs_core::listing::{parse_attrs_line, write_attrs_prefix};
/// use spockfs_core::Stat;
/// let st = Stat { mode: 0o100644, ino: 7, nlink: 1, size: 5, mtime: 2, ..Stat::default() };
/// let mut line = Vec::new();
/// write_attrs_prefix(&mut line, &st);
/// line.extend_from_slice(b"a name");
/// assert_eq!(parse_attrs_line(&line), Some((&b"a name"[..], st)));
/// assert_eq!(parse_attrs_line(b"1 2 3"), None);
/// ```
pub fn parse_attrs_line(line: &[u8]) -> Option<(&[u8], Stat)> {
    let mut fields = [0i64; 10];
    let mut rest = line;
    for f in &mut fields {
        let sp = rest.iter().position(|&b| b == b' ')?;
        *f = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        rest = &rest[sp + 1..];
    }
    if rest.is_empty() {
        return None;
    }
    let [mode, ino, nlink, uid, gid, size, blocks, atime, mtime, ctime] = fields;
    Some((
        rest,
        Stat {
            mode: mode as u32,
            ino: ino as u64,
            nlink: nlink as u64,
            uid: uid as u32,
            gid: gid as u32,
            size: size as u64,
            blocks: blocks as u64,
            atime,
            mtime,
            ctime,
            dev: 0,
            rdev: 0,
        },
    ))
}
