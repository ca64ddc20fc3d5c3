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

/// The ten attribute fields alone, space separated: the value of the
/// `X-Spock-parent` response header (extension `parent-stat`).
///
/// ```
/// use spockfs_core::listing::{format_attrs, parse_attrs};
/// use spockfs_core::Stat;
/// let st = Stat { mode: 0o40755, ino: 2, nlink: 3, mtime: 9, ..Stat::default() };
/// assert_eq!(format_attrs(&st), "16877 2 3 0 0 0 0 0 9 0");
/// assert_eq!(parse_attrs(format_attrs(&st).as_bytes()), Some(st));
/// assert_eq!(parse_attrs(b"1 2 3"), None);
/// ```
pub fn format_attrs(st: &Stat) -> String {
    let mut out = Vec::with_capacity(64);
    write_attrs_prefix(&mut out, st);
    out.pop();
    String::from_utf8(out).unwrap_or_default()
}

/// Parses [`format_attrs`]' ten fields; `None` if malformed.
pub fn parse_attrs(fields: &[u8]) -> Option<Stat> {
    let mut line = Vec::with_capacity(fields.len() + 2);
    line.extend_from_slice(fields);
    line.extend_from_slice(b" .");
    parse_attrs_line(&line).map(|(_, st)| st)
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
    let mut fields = [0i128; 10];
    let mut rest = line;
    for f in &mut fields {
        let sp = rest.iter().position(|&b| b == b' ')?;
        *f = crate::headers::parse_decimal_i128(&rest[..sp])?;
        rest = &rest[sp + 1..];
    }
    if rest.is_empty() {
        return None;
    }
    // Each field in the range of its own type: unsigned fields up to
    // u64::MAX (inode numbers above i64::MAX exist), no negative sizes.
    let [mode, ino, nlink, uid, gid, size, blocks, atime, mtime, ctime] = fields;
    Some((
        rest,
        Stat {
            mode: mode.try_into().ok()?,
            ino: ino.try_into().ok()?,
            nlink: nlink.try_into().ok()?,
            uid: uid.try_into().ok()?,
            gid: gid.try_into().ok()?,
            size: size.try_into().ok()?,
            blocks: blocks.try_into().ok()?,
            atime: atime.try_into().ok()?,
            mtime: mtime.try_into().ok()?,
            ctime: ctime.try_into().ok()?,
            dev: 0,
            rdev: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `listing` fuzz target: unsigned fields above i64::MAX
    /// (a 64-bit inode number) did not parse back, so one such entry made
    /// the client's whole READDIR fail; negative values were wrapped into
    /// unsigned fields instead of being refused.
    #[test]
    fn full_range_fields_round_trip_and_negatives_are_refused() {
        let st = Stat {
            mode: u32::MAX,
            ino: u64::MAX,
            nlink: 1 << 63,
            uid: u32::MAX,
            gid: 0,
            size: i64::MAX as u64,
            blocks: u64::MAX,
            atime: i64::MIN,
            mtime: -1,
            ctime: i64::MAX,
            dev: 0,
            rdev: 0,
        };
        let mut line = Vec::new();
        write_attrs_prefix(&mut line, &st);
        line.extend_from_slice(b"n");
        assert_eq!(parse_attrs_line(&line), Some((&b"n"[..], st)));
        assert_eq!(parse_attrs_line(b"-1 2 3 4 5 6 7 8 9 10 n"), None);
        assert_eq!(parse_attrs_line(b"1 -2 3 4 5 6 7 8 9 10 n"), None);
        assert_eq!(parse_attrs_line(b"4294967296 2 3 4 5 6 7 8 9 10 n"), None);
        assert_eq!(parse_attrs_line(b"+1 2 3 4 5 6 7 8 9 10 n"), None);
        assert_eq!(
            parse_attrs_line(b"1 2 3 4 5 6 7 -8 9 10 n").map(|(_, s)| s.atime),
            Some(-8)
        );
    }
}
