//! The READDIR body, written by servers and read by clients; defined once
//! here.
//!
//! Plain (no `X-Spock-readdir`): `.` and `..`, then one name per line.
//! With the `readdir-attrs` extension (`X-Spock-readdir: attrs`): one line
//! per entry, `mode ino nlink uid gid size blocks atime mtime ctime name`,
//! ten decimal fields and the name up to the `\n`; with the `nsec`
//! extension (`X-Spock-readdir: attrs-nsec`), thirteen:
//! `mode ino nlink uid gid size blocks atime mtime ctime atime_nsec
//! mtime_nsec ctime_nsec name`. Names are raw bytes (not percent-encoded);
//! a name containing `\n` cannot be listed.
//!
//! A server writes [`write_head`] then [`write_entry`] per entry; a client
//! reads the whole body with [`parse_body`].

use crate::errno::{Errno, FsResult};
use crate::stat::Stat;

/// Which form of the listing format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The ten fields of `readdir-attrs` (`X-Spock-readdir: attrs`).
    #[default]
    Attrs,
    /// Thirteen fields, the three nanosecond fields after the ten
    /// (`X-Spock-readdir: attrs-nsec`, extension `nsec`).
    AttrsNsec,
}

impl Format {
    /// The `X-Spock-readdir` value that asks for this form: `attrs` or
    /// `attrs-nsec`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Attrs => "attrs",
            Format::AttrsNsec => "attrs-nsec",
        }
    }

    /// Parses an `X-Spock-readdir` value (ASCII case-insensitive); `None`
    /// for anything but `attrs` and `attrs-nsec`.
    ///
    /// ```
    /// use spockfs_proto::readdir::Format;
    /// assert_eq!(Format::from_name(b"ATTRS-nsec"), Some(Format::AttrsNsec));
    /// assert_eq!(Format::from_name(Format::Attrs.name().as_bytes()), Some(Format::Attrs));
    /// assert_eq!(Format::from_name(b"plain"), None);
    /// ```
    pub fn from_name(value: &[u8]) -> Option<Format> {
        [Format::Attrs, Format::AttrsNsec]
            .into_iter()
            .find(|f| value.eq_ignore_ascii_case(f.name().as_bytes()))
    }
}

/// A directory entry as a client reads it from a listing; `stat` is filled
/// when the listing carries attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (bytes, never `.` or `..`).
    pub name: Vec<u8>,
    /// Its `lstat`, if the listing carried it.
    pub stat: Option<Stat>,
}

/// Starts a listing in `format` (`None`: plain names): the plain form
/// begins with the `.` and `..` entries (which a directory's own entries
/// never include); the forms with attributes do not list them.
///
/// ```
/// use spockfs_proto::readdir::{write_head, Format};
/// let mut out = Vec::new();
/// write_head(&mut out, None);
/// assert_eq!(out, b".\n..\n");
/// let mut out = Vec::new();
/// write_head(&mut out, Some(Format::Attrs));
/// assert!(out.is_empty());
/// ```
pub fn write_head(out: &mut Vec<u8>, format: Option<Format>) {
    if format.is_none() {
        out.extend_from_slice(b".\n..\n");
    }
}

/// Appends one entry's line: the name alone (`format` `None`), or its
/// attributes in `format` then the name (an entry the backend gave no
/// attributes for is written as a plain name). Returns `false`, writing nothing, for a name
/// that cannot be listed (it contains `\n`).
///
/// ```
/// use spockfs_proto::readdir::{parse_body, write_entry, write_head, DirEntry, Format};
/// use spockfs_proto::Stat;
/// let st = Stat { mode: 0o100644, size: 3, ..Stat::default() };
/// let mut out = Vec::new();
/// write_head(&mut out, Some(Format::AttrsNsec));
/// assert!(write_entry(&mut out, b"a b", Some(&st), Some(Format::AttrsNsec)));
/// assert!(!write_entry(&mut out, b"bad\nname", Some(&st), Some(Format::AttrsNsec)));
/// let back = parse_body(&out, Some(Format::AttrsNsec)).unwrap();
/// assert_eq!(back, [DirEntry { name: b"a b".to_vec(), stat: Some(st) }]);
/// ```
pub fn write_entry(
    out: &mut Vec<u8>,
    name: &[u8],
    st: Option<&Stat>,
    format: Option<Format>,
) -> bool {
    if name.contains(&b'\n') {
        return false;
    }
    if let (Some(format), Some(st)) = (format, st) {
        write_prefix(out, st, format);
    }
    out.extend_from_slice(name);
    out.push(b'\n');
    true
}

/// Reads a whole READDIR body: one name per line (`.` and `..` skipped),
/// or with `format` lines with attributes; a malformed line with
/// attributes is `EIO`.
pub fn parse_body(body: &[u8], format: Option<Format>) -> FsResult<Vec<DirEntry>> {
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() || line == b"." || line == b".." {
            continue;
        }
        if let Some(format) = format {
            match parse_line(line, format) {
                Some((name, st)) => out.push(DirEntry {
                    name: name.to_vec(),
                    stat: Some(st),
                }),
                None => return Err(Errno::EIO),
            }
        } else {
            out.push(DirEntry {
                name: line.to_vec(),
                stat: None,
            });
        }
    }
    Ok(out)
}

/// Appends the fields of `format` and the space before the name.
///
/// ```
/// use spockfs_proto::readdir::{parse_line, write_prefix, Format};
/// use spockfs_proto::Stat;
/// let st = Stat { mode: 0o100644, mtime: 2, mtime_nsec: 5, ..Stat::default() };
/// let mut line = Vec::new();
/// write_prefix(&mut line, &st, Format::AttrsNsec);
/// assert_eq!(line, b"33188 0 0 0 0 0 0 0 2 0 0 5 0 ");
/// line.extend_from_slice(b"f");
/// assert_eq!(parse_line(&line, Format::AttrsNsec), Some((&b"f"[..], st)));
/// // The ten-field form has no nanoseconds: the 13 fields read as ten and
/// // a name that starts with digits.
/// assert_eq!(parse_line(&line, Format::Attrs).map(|(n, _)| n), Some(&b"0 5 0 f"[..]));
/// ```
pub fn write_prefix(out: &mut Vec<u8>, st: &Stat, format: Format) {
    use std::io::Write;
    write_attrs_prefix(out, st);
    if format == Format::AttrsNsec {
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{} {} {} ",
            st.atime_nsec, st.mtime_nsec, st.ctime_nsec
        );
    }
}

/// Parses one line of `format` (without its `\n`) into the name and its
/// attributes (`dev` and `rdev` are not in the format: 0; nor, in the
/// ten-field form, nanoseconds). `None` if malformed, including
/// nanoseconds of 10⁹ or more.
pub fn parse_line(line: &[u8], format: Format) -> Option<(&[u8], Stat)> {
    match format {
        Format::Attrs => parse_attrs_line(line),
        Format::AttrsNsec => {
            let (name, mut st) = parse_attrs_line(line)?;
            let (nsec, rest) = fields::<3>(name)?;
            let ns = |v: i128| u32::try_from(v).ok().filter(|&n| n < 1_000_000_000);
            st.atime_nsec = ns(nsec[0])?;
            st.mtime_nsec = ns(nsec[1])?;
            st.ctime_nsec = ns(nsec[2])?;
            Some((rest, st))
        }
    }
}

/// The three nanosecond fields alone, `atime_nsec mtime_nsec ctime_nsec`:
/// the value of `X-Spock-parent-nsec` (extensions `parent-stat` and
/// `nsec`).
///
/// ```
/// use spockfs_proto::readdir::{format_nsec, parse_nsec};
/// use spockfs_proto::Stat;
/// let st = Stat { atime_nsec: 1, mtime_nsec: 999_999_999, ..Stat::default() };
/// assert_eq!(format_nsec(&st), "1 999999999 0");
/// let mut back = Stat::default();
/// assert_eq!(parse_nsec(b"1 999999999 0", &mut back), Some(()));
/// assert_eq!(back, st);
/// assert_eq!(parse_nsec(b"1 1000000000 0", &mut back), None);
/// ```
pub fn format_nsec(st: &Stat) -> String {
    format!("{} {} {}", st.atime_nsec, st.mtime_nsec, st.ctime_nsec)
}

/// Parses [`format_nsec`]'s three fields into `st`; `None` (and `st`
/// unchanged) if malformed.
pub fn parse_nsec(fields: &[u8], st: &mut Stat) -> Option<()> {
    let mut line = Vec::with_capacity(fields.len() + 2);
    line.extend_from_slice(fields);
    line.extend_from_slice(b" .");
    let (v, rest) = self::fields::<3>(&line)?;
    if rest != b"." {
        return None;
    }
    let ns = |v: i128| u32::try_from(v).ok().filter(|&n| n < 1_000_000_000);
    let (a, m, c) = (ns(v[0])?, ns(v[1])?, ns(v[2])?);
    st.atime_nsec = a;
    st.mtime_nsec = m;
    st.ctime_nsec = c;
    Some(())
}

/// `N` space-terminated decimal fields, and the rest of the line (not
/// empty).
fn fields<const N: usize>(line: &[u8]) -> Option<([i128; N], &[u8])> {
    let mut out = [0i128; N];
    let mut rest = line;
    for f in &mut out {
        let sp = rest.iter().position(|&b| b == b' ')?;
        *f = crate::headers::parse_decimal_i128(&rest[..sp])?;
        rest = &rest[sp + 1..];
    }
    if rest.is_empty() {
        return None;
    }
    Some((out, rest))
}

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
/// use spockfs_proto::readdir::{format_attrs, parse_attrs};
/// use spockfs_proto::Stat;
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
/// use spockfs_proto::readdir::{parse_attrs_line, write_attrs_prefix};
/// use spockfs_proto::Stat;
/// let st = Stat { mode: 0o100644, ino: 7, nlink: 1, size: 5, mtime: 2, ..Stat::default() };
/// let mut line = Vec::new();
/// write_attrs_prefix(&mut line, &st);
/// line.extend_from_slice(b"a name");
/// assert_eq!(parse_attrs_line(&line), Some((&b"a name"[..], st)));
/// assert_eq!(parse_attrs_line(b"1 2 3"), None);
/// ```
pub fn parse_attrs_line(line: &[u8]) -> Option<(&[u8], Stat)> {
    let (fields, rest) = fields::<10>(line)?;
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
            ..Stat::default()
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
            ..Stat::default()
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

    #[test]
    fn nsec_form_round_trips_and_refuses_out_of_range() {
        let st = Stat {
            mode: 0o40755,
            ino: u64::MAX,
            atime: -1,
            atime_nsec: 999_999_999,
            mtime_nsec: 1,
            ctime_nsec: 0,
            ..Stat::default()
        };
        let mut line = Vec::new();
        write_prefix(&mut line, &st, Format::AttrsNsec);
        line.extend_from_slice(b"a b");
        assert_eq!(
            parse_line(&line, Format::AttrsNsec),
            Some((&b"a b"[..], st))
        );
        let ten = |extra: &str| format!("1 2 3 4 5 6 7 8 9 10 {extra}");
        for bad in ["1000000000 0 0 n", "-1 0 0 n", "0 0 n", "0 0 0 ", "x 0 0 n"] {
            assert_eq!(
                parse_line(ten(bad).as_bytes(), Format::AttrsNsec),
                None,
                "{bad:?}"
            );
        }
        // The ten-field form is unchanged by the nanoseconds of a Stat.
        let mut old = Vec::new();
        write_prefix(&mut old, &st, Format::Attrs);
        let mut plain = Vec::new();
        write_attrs_prefix(&mut plain, &st);
        assert_eq!(old, plain);
        assert_eq!(old.iter().filter(|&&b| b == b' ').count(), 10);
    }

    /// A ten-field line reads back; short or non-numeric ones do not.
    #[test]
    fn attrs_lines() {
        let (name, st) =
            parse_attrs_line(b"33188 7 1 0 0 5 8 1 2 3 a name").unwrap_or_else(|| panic!());
        assert_eq!(name, b"a name");
        assert_eq!((st.mode, st.size, st.mtime), (33188, 5, 2));
        assert!(parse_attrs_line(b"1 2 3").is_none());
        assert!(parse_attrs_line(b"x 7 1 0 0 5 8 1 2 3 n").is_none());
    }

    /// Names are raw bytes on the wire (no percent-encoding): spaces, `%`,
    /// non-UTF-8 bytes, leading digits and a name that looks like fields
    /// all come back as written, in every form; `.`/`..` are the plain
    /// form's head only; a name with a newline is refused.
    #[test]
    fn bodies_round_trip_in_every_form() {
        let names: [&[u8]; 6] = [
            b"plain",
            b"with space",
            b"100%25 sure",
            b"caf\xc3\xa9 \xff\xfe",
            b"1 2 3",
            b"...",
        ];
        let st = |i: usize| Stat {
            mode: 0o100644,
            ino: u64::MAX - i as u64,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: i as u64,
            blocks: 8,
            atime: -1,
            mtime: 1_700_000_000,
            ctime: 2,
            atime_nsec: 999_999_999,
            mtime_nsec: i as u32,
            ctime_nsec: 0,
            ..Stat::default()
        };
        for format in [None, Some(Format::Attrs), Some(Format::AttrsNsec)] {
            let mut body = Vec::new();
            write_head(&mut body, format);
            for (i, n) in names.iter().enumerate() {
                assert!(write_entry(&mut body, n, Some(&st(i)), format));
            }
            assert!(!write_entry(&mut body, b"new\nline", Some(&st(0)), format));
            let back = parse_body(&body, format).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            let want: Vec<DirEntry> = names
                .iter()
                .enumerate()
                .map(|(i, n)| DirEntry {
                    name: n.to_vec(),
                    stat: format.map(|f| {
                        let mut s = st(i);
                        if f == Format::Attrs {
                            (s.atime_nsec, s.mtime_nsec, s.ctime_nsec) = (0, 0, 0);
                        }
                        s
                    }),
                })
                .collect();
            assert_eq!(back, want, "{format:?}");
            assert_eq!(body.starts_with(b".\n..\n"), format.is_none());
        }
        // A listing with attributes and a line without them is malformed.
        assert_eq!(parse_body(b"plain\n", Some(Format::Attrs)), Err(Errno::EIO));
    }
}
