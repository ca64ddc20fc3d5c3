//! Typed `X-Spock-*` headers (via the [`headers`] crate), the one
//! encode/decode pair for each set of attributes a response carries
//! ([`put_stat`]/[`get_stat`], [`put_statfs`]/[`get_statfs`],
//! [`put_parent`]/[`get_parent`]). The standard headers SpockFS gives its
//! own meaning to (`Range`, `Content-Range`) are parsed in
//! [`range`](crate::range) and re-exported here.
//!
//! Numbers are plain decimal (an optional `-` for signed fields). A header
//! sent twice is malformed.

use headers::{Error as HeaderError, Header, HeaderMapExt};
use http::{HeaderMap, HeaderName, HeaderValue};

pub use crate::range::{parse_content_range, parse_range, ByteRange};

/// Parses a plain decimal integer: optional `-`, then ASCII digits, nothing
/// else (no `+`, no spaces, no hex).
pub fn parse_decimal_i128(bytes: &[u8]) -> Option<i128> {
    let (neg, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 39 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as i128)?;
    }
    Some(if neg { -v } else { v })
}

fn decode_one<'i, I: Iterator<Item = &'i HeaderValue>>(
    values: &mut I,
) -> Result<&'i HeaderValue, HeaderError> {
    let v = values.next().ok_or_else(HeaderError::invalid)?;
    if values.next().is_some() {
        return Err(HeaderError::invalid());
    }
    Ok(v)
}

macro_rules! numeric_headers {
    ($($(#[$doc:meta])* $ty:ident($inner:ty) = $name:literal;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $ty(pub $inner);

            impl Header for $ty {
                fn name() -> &'static HeaderName {
                    static NAME: HeaderName = HeaderName::from_static($name);
                    &NAME
                }

                fn decode<'i, I: Iterator<Item = &'i HeaderValue>>(
                    values: &mut I,
                ) -> Result<Self, HeaderError> {
                    let v = decode_one(values)?;
                    parse_decimal_i128(v.as_bytes())
                        .and_then(|n| <$inner>::try_from(n).ok())
                        .map($ty)
                        .ok_or_else(HeaderError::invalid)
                }

                fn encode<E: Extend<HeaderValue>>(&self, values: &mut E) {
                    values.extend(std::iter::once(HeaderValue::from(self.0)));
                }
            }
        )*
    };
}

numeric_headers! {
    /// `X-Spock-mode`: a `st_mode` value (MKDIR, POST, MKNOD, CHMOD,
    /// GETATTR), the `R_OK|W_OK|X_OK` mask (ACCESS) or the fallocate mode
    /// (FALLOCATE).
    XSpockMode(u32) = "x-spock-mode";
    /// `X-Spock-uid` (`-1` or `4294967295`: leave unchanged).
    XSpockUid(i64) = "x-spock-uid";
    /// `X-Spock-gid` (`-1` or `4294967295`: leave unchanged).
    XSpockGid(i64) = "x-spock-gid";
    /// `X-Spock-size`: file size, or the buffer size of a LISTXATTR/GETXATTR.
    XSpockSize(u64) = "x-spock-size";
    /// `X-Spock-mtime`, unix seconds.
    XSpockMtime(i64) = "x-spock-mtime";
    /// `X-Spock-atime`, unix seconds.
    XSpockAtime(i64) = "x-spock-atime";
    /// `X-Spock-ctime`, unix seconds.
    XSpockCtime(i64) = "x-spock-ctime";
    /// `X-Spock-nlink`.
    XSpockNlink(u64) = "x-spock-nlink";
    /// `X-Spock-blocks`: 512-byte blocks (GETATTR) or `f_blocks` (STATFS).
    XSpockBlocks(u64) = "x-spock-blocks";
    /// `X-Spock-dev`: `st_dev` (GETATTR) or the device number (MKNOD). The
    /// original client sends it as a signed 64-bit number.
    XSpockDev(i64) = "x-spock-dev";
    /// `X-Spock-ino`.
    XSpockIno(u64) = "x-spock-ino";
    /// `X-Spock-flag`: open flags (OPEN), xattr flags (SETXATTR), `f_flag`
    /// (STATFS), `1` for fdatasync (FSYNC extension).
    XSpockFlag(i64) = "x-spock-flag";
    /// `X-Spock-bsize` (STATFS).
    XSpockBsize(u64) = "x-spock-bsize";
    /// `X-Spock-frsize` (STATFS).
    XSpockFrsize(u64) = "x-spock-frsize";
    /// `X-Spock-bfree` (STATFS).
    XSpockBfree(u64) = "x-spock-bfree";
    /// `X-Spock-bavail` (STATFS).
    XSpockBavail(u64) = "x-spock-bavail";
    /// `X-Spock-files` (STATFS).
    XSpockFiles(u64) = "x-spock-files";
    /// `X-Spock-ffree` (STATFS).
    XSpockFfree(u64) = "x-spock-ffree";
    /// `X-Spock-favail` (STATFS).
    XSpockFavail(u64) = "x-spock-favail";
    /// `X-Spock-fsid` (STATFS).
    XSpockFsid(u64) = "x-spock-fsid";
    /// `X-Spock-namemax` (STATFS).
    XSpockNamemax(u64) = "x-spock-namemax";
    /// `X-Spock-atime-nsec` (extension `nsec`): the nanoseconds of
    /// `X-Spock-atime`, 0 to 999 999 999 (GETATTR, UTIMENS).
    XSpockAtimeNsec(u32) = "x-spock-atime-nsec";
    /// `X-Spock-mtime-nsec` (extension `nsec`): the nanoseconds of
    /// `X-Spock-mtime`, 0 to 999 999 999 (GETATTR, UTIMENS).
    XSpockMtimeNsec(u32) = "x-spock-mtime-nsec";
    /// `X-Spock-ctime-nsec` (extension `nsec`): the nanoseconds of
    /// `X-Spock-ctime`, 0 to 999 999 999 (GETATTR).
    XSpockCtimeNsec(u32) = "x-spock-ctime-nsec";
}

/// Which of UTIMENS's two times [`set_time`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeField {
    /// `X-Spock-atime`, `X-Spock-atime-nsec`.
    Atime,
    /// `X-Spock-mtime`, `X-Spock-mtime-nsec`.
    Mtime,
}

/// Reads one of UTIMENS's times: `X-Spock-atime` (or `-mtime`), required,
/// unix seconds or (extension `nsec`) `now` (`UTIME_NOW`) or `omit`
/// (`UTIME_OMIT`); with seconds, an optional `X-Spock-atime-nsec` (or
/// `-mtime-nsec`) adds nanoseconds (0 to 999 999 999). Nanoseconds with
/// `now` or `omit` are malformed.
///
/// ```
/// use spockfs_proto::headers::{set_time, TimeField};
/// use spockfs_proto::SetTime;
/// let mut h = http::HeaderMap::new();
/// h.insert("x-spock-atime", "now".parse().unwrap());
/// h.insert("x-spock-mtime", "-5".parse().unwrap());
/// h.insert("x-spock-mtime-nsec", "250".parse().unwrap());
/// assert_eq!(set_time(&h, TimeField::Atime), Ok(SetTime::Now));
/// assert_eq!(set_time(&h, TimeField::Mtime), Ok(SetTime::At { sec: -5, nsec: 250 }));
/// h.insert("x-spock-atime-nsec", "1".parse().unwrap());
/// assert!(set_time(&h, TimeField::Atime).is_err());
/// ```
pub fn set_time(headers: &HeaderMap, field: TimeField) -> Result<crate::stat::SetTime, BadHeader> {
    use crate::stat::SetTime;
    let (secs_name, display, nsec) = match field {
        TimeField::Atime => (
            XSpockAtime::name(),
            "X-Spock-atime",
            optional::<XSpockAtimeNsec>(headers, "X-Spock-atime-nsec")?.map(|n| n.0),
        ),
        TimeField::Mtime => (
            XSpockMtime::name(),
            "X-Spock-mtime",
            optional::<XSpockMtimeNsec>(headers, "X-Spock-mtime-nsec")?.map(|n| n.0),
        ),
    };
    let malformed = |why| BadHeader::Malformed { name: display, why };
    let mut values = headers.get_all(secs_name).iter();
    let v = match (values.next(), values.next()) {
        (None, _) => return Err(BadHeader::Missing(display)),
        (Some(v), None) => v.as_bytes(),
        (Some(_), Some(_)) => return Err(malformed("sent more than once")),
    };
    let special = if v.eq_ignore_ascii_case(b"now") {
        Some(SetTime::Now)
    } else if v.eq_ignore_ascii_case(b"omit") {
        Some(SetTime::Omit)
    } else {
        None
    };
    match (special, nsec) {
        (Some(_), Some(_)) => Err(malformed("nanoseconds go with seconds, not now or omit")),
        (Some(t), None) => Ok(t),
        (None, nsec) => {
            let sec = parse_decimal_i128(v)
                .and_then(|n| i64::try_from(n).ok())
                .ok_or(malformed("expected unix seconds, 'now' or 'omit'"))?;
            let nsec = nsec.unwrap_or(0);
            if nsec > 999_999_999 {
                return Err(malformed("nanoseconds must be 0 to 999999999"));
            }
            Ok(SetTime::At { sec, nsec })
        }
    }
}

/// `X-Spock-target`: raw bytes (not percent-decoded): a symlink target, a
/// RENAME/LINK source path, or an xattr name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XSpockTarget(pub Vec<u8>);

impl Header for XSpockTarget {
    fn name() -> &'static HeaderName {
        static NAME: HeaderName = HeaderName::from_static("x-spock-target");
        &NAME
    }

    fn decode<'i, I: Iterator<Item = &'i HeaderValue>>(
        values: &mut I,
    ) -> Result<Self, HeaderError> {
        Ok(XSpockTarget(decode_one(values)?.as_bytes().to_vec()))
    }

    fn encode<E: Extend<HeaderValue>>(&self, values: &mut E) {
        if let Ok(v) = HeaderValue::from_bytes(&self.0) {
            values.extend(std::iter::once(v));
        }
    }
}

/// `X-Spock-errno` (extension `errno`): the exact errno of an error response.
pub static X_SPOCK_ERRNO: HeaderName = HeaderName::from_static("x-spock-errno");
/// `X-Spock-version`, sent by OPTIONS.
pub static X_SPOCK_VERSION: HeaderName = HeaderName::from_static("x-spock-version");
/// `X-Spock-extensions`, sent by OPTIONS: the extensions this server speaks.
pub static X_SPOCK_EXTENSIONS: HeaderName = HeaderName::from_static("x-spock-extensions");
/// `X-Spock-readdir` request header; `attrs` selects the `readdir-attrs`
/// listing format.
pub static X_SPOCK_READDIR: HeaderName = HeaderName::from_static("x-spock-readdir");
/// `X-Spock-stat: 1` on a request that creates or changes an entry (the
/// `stat` extension): the success response carries the entry's GETATTR
/// headers, saving the client a GETATTR round trip.
pub static X_SPOCK_STAT: HeaderName = HeaderName::from_static("x-spock-stat");

/// `X-Spock-parent` (extension `parent-stat`): on the answer to a request
/// that carried `X-Spock-stat: 1` and added or removed a name, the
/// attributes of the directory holding it, after the change, in the
/// `readdir-attrs` field format ([`format_attrs`](crate::readdir::format_attrs)).
pub static X_SPOCK_PARENT: HeaderName = HeaderName::from_static("x-spock-parent");

/// `X-Spock-parent-nsec` (extensions `parent-stat` and `nsec`): sent with
/// `X-Spock-parent`, the nanoseconds of its three times,
/// `atime_nsec mtime_nsec ctime_nsec`
/// ([`format_nsec`](crate::readdir::format_nsec)).
pub static X_SPOCK_PARENT_NSEC: HeaderName = HeaderName::from_static("x-spock-parent-nsec");

/// `X-Spock-caller: UID GID G1,G2,...` (extension `identity`): who the
/// client's caller is, honoured only on mounts that trust their clients.
pub static X_SPOCK_CALLER: HeaderName = HeaderName::from_static("x-spock-caller");

/// `X-Spock-policy` (OPTIONS): the restrictions of the mount the request
/// reaches (`spockfs_core::Mount::policy_tokens`).
pub static X_SPOCK_POLICY: HeaderName = HeaderName::from_static("x-spock-policy");

/// A request header that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// Required and absent.
    #[error("missing required header {0}")]
    Missing(&'static str),
    /// Present but not parseable.
    #[error("malformed header {name}: {why}")]
    Malformed {
        /// Header name as the spec spells it.
        name: &'static str,
        /// What was expected.
        why: &'static str,
    },
}

/// Writes `st` as GETATTR's response headers (`X-Spock-mode`, `-uid`,
/// `-gid`, `-size`, `-mtime`, `-atime`, `-ctime`, `-nlink`, `-blocks`,
/// `-dev`, `-ino`, and the `nsec` extension's `-atime-nsec`,
/// `-mtime-nsec`, `-ctime-nsec`, which clients that do not know it
/// ignore): the one place the set is defined; [`get_stat`] reads it back.
///
/// ```
/// use spockfs_proto::headers::{get_stat, put_stat};
/// use spockfs_proto::Stat;
/// let st = Stat { mode: 0o100644, uid: u32::MAX, size: 5, mtime: -3, mtime_nsec: 7, ..Stat::default() };
/// let mut h = http::HeaderMap::new();
/// put_stat(&mut h, &st);
/// assert_eq!(get_stat(&h), st);
/// ```
pub fn put_stat(hm: &mut HeaderMap, st: &crate::stat::Stat) {
    // The 14 values are written into one buffer and each header value is a
    // slice of it: one allocation per response instead of one per header
    // (the typed headers' encoding, which `get_stat` decodes, is the same
    // decimal text).
    use std::fmt::Write as _;
    let fields: [(&'static HeaderName, i128); 14] = [
        (XSpockMode::name(), st.mode.into()),
        (XSpockUid::name(), (st.uid as i64).into()),
        (XSpockGid::name(), (st.gid as i64).into()),
        (XSpockSize::name(), st.size.into()),
        (XSpockMtime::name(), st.mtime.into()),
        (XSpockAtime::name(), st.atime.into()),
        (XSpockCtime::name(), st.ctime.into()),
        (XSpockNlink::name(), st.nlink.into()),
        (XSpockBlocks::name(), st.blocks.into()),
        (XSpockDev::name(), (st.dev as i64).into()),
        (XSpockIno::name(), st.ino.into()),
        (XSpockAtimeNsec::name(), st.atime_nsec.into()),
        (XSpockMtimeNsec::name(), st.mtime_nsec.into()),
        (XSpockCtimeNsec::name(), st.ctime_nsec.into()),
    ];
    let mut text = String::with_capacity(14 * 12);
    let mut ends = [0usize; 14];
    for (end, (_, v)) in ends.iter_mut().zip(&fields) {
        let _ = write!(text, "{v}");
        *end = text.len();
    }
    let buf = bytes::Bytes::from(text);
    hm.reserve(fields.len());
    let mut start = 0;
    for ((name, _), end) in fields.iter().zip(ends) {
        // Decimal digits and '-': always a valid header value.
        if let Ok(v) = HeaderValue::from_maybe_shared(buf.slice(start..end)) {
            hm.insert(*name, v);
        }
        start = end;
    }
}

/// A typed response header; missing or malformed reads as 0, as the
/// original client does.
fn lenient<H: Header, T: Default>(h: &HeaderMap, get: impl FnOnce(H) -> T) -> T {
    h.typed_get::<H>().map(get).unwrap_or_default()
}

/// Nanoseconds from a `X-Spock-*time-nsec` header: 0 if absent, malformed
/// or out of range.
fn lenient_nsec<H: Header>(h: &HeaderMap, get: impl FnOnce(H) -> u32) -> u32 {
    Some(lenient(h, get))
        .filter(|&n| n < 1_000_000_000)
        .unwrap_or(0)
}

/// Reads [`put_stat`]'s headers: the `lstat` a GETATTR response carries
/// (missing or malformed fields read as 0, as the original client does; so
/// do the `nsec` extension's nanoseconds from a server without it; `rdev`
/// is not on the wire: 0).
pub fn get_stat(h: &HeaderMap) -> crate::stat::Stat {
    crate::stat::Stat {
        mode: lenient(h, |h: XSpockMode| h.0),
        uid: lenient(h, |h: XSpockUid| h.0 as u32),
        gid: lenient(h, |h: XSpockGid| h.0 as u32),
        size: lenient(h, |h: XSpockSize| h.0),
        mtime: lenient(h, |h: XSpockMtime| h.0),
        atime: lenient(h, |h: XSpockAtime| h.0),
        ctime: lenient(h, |h: XSpockCtime| h.0),
        nlink: lenient(h, |h: XSpockNlink| h.0),
        blocks: lenient(h, |h: XSpockBlocks| h.0),
        dev: lenient(h, |h: XSpockDev| h.0 as u64),
        ino: lenient(h, |h: XSpockIno| h.0),
        rdev: 0,
        atime_nsec: lenient_nsec(h, |h: XSpockAtimeNsec| h.0),
        mtime_nsec: lenient_nsec(h, |h: XSpockMtimeNsec| h.0),
        ctime_nsec: lenient_nsec(h, |h: XSpockCtimeNsec| h.0),
    }
}

/// Writes `s` as STATFS's response headers (`X-Spock-bsize`, `-frsize`,
/// `-blocks`, `-bfree`, `-bavail`, `-files`, `-ffree`, `-favail`, `-fsid`,
/// `-flag`, `-namemax`); [`get_statfs`] reads them back.
///
/// ```
/// use spockfs_proto::headers::{get_statfs, put_statfs};
/// use spockfs_proto::StatFs;
/// let s = StatFs { bsize: 4096, blocks: 10, flag: 4, namemax: 255, ..StatFs::default() };
/// let mut h = http::HeaderMap::new();
/// put_statfs(&mut h, &s);
/// assert_eq!(get_statfs(&h), s);
/// ```
pub fn put_statfs(hm: &mut HeaderMap, s: &crate::stat::StatFs) {
    hm.typed_insert(XSpockBsize(s.bsize));
    hm.typed_insert(XSpockFrsize(s.frsize));
    hm.typed_insert(XSpockBlocks(s.blocks));
    hm.typed_insert(XSpockBfree(s.bfree));
    hm.typed_insert(XSpockBavail(s.bavail));
    hm.typed_insert(XSpockFiles(s.files));
    hm.typed_insert(XSpockFfree(s.ffree));
    hm.typed_insert(XSpockFavail(s.favail));
    hm.typed_insert(XSpockFsid(s.fsid));
    hm.typed_insert(XSpockFlag(s.flag as i64));
    hm.typed_insert(XSpockNamemax(s.namemax));
}

/// Reads [`put_statfs`]'s headers: the `statvfs` a STATFS response
/// carries (missing or malformed fields read as 0).
pub fn get_statfs(h: &HeaderMap) -> crate::stat::StatFs {
    crate::stat::StatFs {
        bsize: lenient(h, |h: XSpockBsize| h.0),
        frsize: lenient(h, |h: XSpockFrsize| h.0),
        blocks: lenient(h, |h: XSpockBlocks| h.0),
        bfree: lenient(h, |h: XSpockBfree| h.0),
        bavail: lenient(h, |h: XSpockBavail| h.0),
        files: lenient(h, |h: XSpockFiles| h.0),
        ffree: lenient(h, |h: XSpockFfree| h.0),
        favail: lenient(h, |h: XSpockFavail| h.0),
        fsid: lenient(h, |h: XSpockFsid| h.0),
        flag: lenient(h, |h: XSpockFlag| h.0 as u64),
        namemax: lenient(h, |h: XSpockNamemax| h.0),
    }
}

/// Writes the directory's attributes that answer a change with
/// `X-Spock-stat: 1` (extension `parent-stat`): [`X_SPOCK_PARENT`] in the
/// `readdir-attrs` field format and [`X_SPOCK_PARENT_NSEC`] with its
/// nanoseconds; [`get_parent`] reads them back.
///
/// ```
/// use spockfs_proto::headers::{get_parent, put_parent};
/// use spockfs_proto::Stat;
/// let st = Stat { mode: 0o40755, nlink: 2, mtime: 9, mtime_nsec: 3, ..Stat::default() };
/// let mut h = http::HeaderMap::new();
/// assert_eq!(get_parent(&h), None);
/// put_parent(&mut h, &st);
/// assert_eq!(h["x-spock-parent"], "16877 0 2 0 0 0 0 0 9 0");
/// assert_eq!(get_parent(&h), Some(st));
/// ```
pub fn put_parent(hm: &mut HeaderMap, st: &crate::stat::Stat) {
    if let Ok(v) = HeaderValue::from_str(&crate::readdir::format_attrs(st)) {
        hm.insert(X_SPOCK_PARENT.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&crate::readdir::format_nsec(st)) {
        hm.insert(X_SPOCK_PARENT_NSEC.clone(), v);
    }
}

/// Reads [`put_parent`]'s headers: `None` if `X-Spock-parent` is absent
/// or malformed; a missing or malformed `X-Spock-parent-nsec` leaves whole
/// seconds.
pub fn get_parent(hm: &HeaderMap) -> Option<crate::stat::Stat> {
    let mut st = crate::readdir::parse_attrs(hm.get(&X_SPOCK_PARENT)?.as_bytes())?;
    if let Some(v) = hm.get(&X_SPOCK_PARENT_NSEC) {
        // Malformed: seconds only.
        let _ = crate::readdir::parse_nsec(v.as_bytes(), &mut st);
    }
    Some(st)
}

/// Reads a required typed header; the error names it.
pub fn required<H: Header>(headers: &HeaderMap, display: &'static str) -> Result<H, BadHeader> {
    if !headers.contains_key(H::name()) {
        return Err(BadHeader::Missing(display));
    }
    headers
        .typed_try_get::<H>()
        .ok()
        .flatten()
        .ok_or(BadHeader::Malformed {
            name: display,
            why: "expected one plain decimal integer in range",
        })
}

/// Reads an optional typed header; present-but-malformed is an error.
pub fn optional<H: Header>(
    headers: &HeaderMap,
    display: &'static str,
) -> Result<Option<H>, BadHeader> {
    if !headers.contains_key(H::name()) {
        return Ok(None);
    }
    required(headers, display).map(Some)
}

/// Reads the required raw `X-Spock-target` header.
pub fn required_target(headers: &HeaderMap) -> Result<Vec<u8>, BadHeader> {
    let mut it = headers.get_all(XSpockTarget::name()).iter();
    match (it.next(), it.next()) {
        (None, _) => Err(BadHeader::Missing("X-Spock-target")),
        (Some(v), None) => Ok(v.as_bytes().to_vec()),
        (Some(_), Some(_)) => Err(BadHeader::Malformed {
            name: "X-Spock-target",
            why: "sent more than once",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal_i128(b"0"), Some(0));
        assert_eq!(parse_decimal_i128(b"-1"), Some(-1));
        assert_eq!(
            parse_decimal_i128(b"18446744073709551615"),
            Some(u64::MAX as i128)
        );
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"0x10",
            b"1e3",
            b"1.5",
            b"--1",
        ] {
            assert_eq!(parse_decimal_i128(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn typed_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-spock-mode", HeaderValue::from_static("448"));
        h.insert("x-spock-uid", HeaderValue::from_static("-1"));
        assert_eq!(
            required::<XSpockMode>(&h, "X-Spock-mode"),
            Ok(XSpockMode(448))
        );
        assert_eq!(required::<XSpockUid>(&h, "X-Spock-uid"), Ok(XSpockUid(-1)));
        assert_eq!(
            required::<XSpockSize>(&h, "X-Spock-size"),
            Err(BadHeader::Missing("X-Spock-size"))
        );
        h.insert("x-spock-size", HeaderValue::from_static("-5"));
        assert!(matches!(
            required::<XSpockSize>(&h, "X-Spock-size"),
            Err(BadHeader::Malformed { .. })
        ));
        h.append("x-spock-mode", HeaderValue::from_static("1"));
        assert!(required::<XSpockMode>(&h, "X-Spock-mode").is_err());
        assert_eq!(optional::<XSpockFlag>(&h, "X-Spock-flag"), Ok(None));
    }

    fn full_stat() -> crate::stat::Stat {
        crate::stat::Stat {
            dev: u64::MAX,
            ino: u64::MAX,
            mode: 0o104755,
            nlink: 1 << 40,
            uid: u32::MAX,
            gid: 4_000_000_000,
            rdev: 0,
            size: i64::MAX as u64,
            blocks: 123,
            atime: i64::MIN,
            mtime: -1,
            ctime: i64::MAX,
            atime_nsec: 999_999_999,
            mtime_nsec: 1,
            ctime_nsec: 0,
        }
    }

    /// What the server writes, the client reads back exactly, with every
    /// field at the edge of its range.
    #[test]
    fn stat_round_trips_with_nsec() {
        let st = full_stat();
        let mut h = HeaderMap::new();
        put_stat(&mut h, &st);
        assert_eq!(get_stat(&h), st);
    }

    /// A server without the `nsec` extension sends no nanoseconds: they
    /// read as 0, the rest as sent; out-of-range or malformed fields read
    /// as 0 rather than failing the call.
    #[test]
    fn stat_without_nsec_and_malformed_fields() {
        let st = full_stat();
        let mut h = HeaderMap::new();
        put_stat(&mut h, &st);
        for n in [
            "x-spock-atime-nsec",
            "x-spock-mtime-nsec",
            "x-spock-ctime-nsec",
        ] {
            h.remove(n);
        }
        let back = get_stat(&h);
        assert_eq!(
            (back.atime_nsec, back.mtime_nsec, back.ctime_nsec),
            (0, 0, 0)
        );
        assert_eq!(
            back,
            crate::stat::Stat {
                atime_nsec: 0,
                mtime_nsec: 0,
                ..st
            }
        );
        h.insert("x-spock-mtime-nsec", HeaderValue::from_static("1000000000"));
        h.insert("x-spock-size", HeaderValue::from_static("-5"));
        h.append("x-spock-mode", HeaderValue::from_static("1"));
        let back = get_stat(&h);
        assert_eq!((back.mtime_nsec, back.size, back.mode), (0, 0, 0));
        assert_eq!(get_stat(&HeaderMap::new()), crate::stat::Stat::default());
    }

    #[test]
    fn statfs_round_trips() {
        let s = crate::stat::StatFs {
            bsize: 4096,
            frsize: 512,
            blocks: u64::MAX,
            bfree: 1,
            bavail: 2,
            files: 3,
            ffree: 4,
            favail: 5,
            fsid: i64::MAX as u64,
            flag: 4 | 1,
            namemax: 255,
        };
        let mut h = HeaderMap::new();
        put_statfs(&mut h, &s);
        assert_eq!(get_statfs(&h), s);
        assert_eq!(
            get_statfs(&HeaderMap::new()),
            crate::stat::StatFs::default()
        );
    }

    #[test]
    fn parent_round_trips_and_tolerates_bad_nsec() {
        let st = crate::stat::Stat {
            dev: 0,
            ..full_stat()
        };
        let mut h = HeaderMap::new();
        put_parent(&mut h, &st);
        assert_eq!(get_parent(&h), Some(st));
        h.insert(X_SPOCK_PARENT_NSEC.clone(), HeaderValue::from_static("1 2"));
        assert_eq!(
            get_parent(&h),
            Some(crate::stat::Stat {
                atime_nsec: 0,
                mtime_nsec: 0,
                ctime_nsec: 0,
                ..st
            })
        );
        h.insert(X_SPOCK_PARENT.clone(), HeaderValue::from_static("1 2 3"));
        assert_eq!(get_parent(&h), None);
    }
}
