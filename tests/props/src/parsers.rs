//! Properties of the pure parsers: paths, headers, ranges, listings, and
//! the client's response parsers.

use crate::input::{Cursor, NUMBERS};
use headers::Header;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use spockfs_core::engine::{self, BodyOp, Call, Op};
use spockfs_core::headers::{self as h, ByteRange};
use spockfs_core::listing::{
    parse_attrs_line, parse_line, write_attrs_prefix, write_prefix, Format,
};
use spockfs_core::path::{percent_decode_strict, strip_mount_prefix};
use spockfs_core::{Errno, FsPath, Method, PathError, SetTime, Stat};

/// The reference validity rule of DESIGN.md, written independently of
/// `FsPath`: decoded bytes start with `/`, no NUL, at most 4096 bytes, no
/// `.`/`..`/empty segment except one trailing slash, segments at most 255.
fn reference_path_ok(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') || raw.contains(&0) || raw.len() > 4096 {
        return false;
    }
    if raw == b"/" {
        return true;
    }
    let body = &raw[1..];
    let body = body.strip_suffix(b"/").unwrap_or(body);
    body.split(|&b| b == b'/')
        .all(|s| !s.is_empty() && s != b"." && s != b".." && s.len() <= 255)
}

/// Invariants of an accepted path.
fn check_fspath(p: &FsPath, raw: &[u8]) {
    let rel = p.relative();
    assert!(!rel.contains(&0), "NUL in {p:?}");
    assert!(!rel.starts_with(b"/") && !rel.ends_with(b"/"), "{p:?}");
    assert_eq!(p.is_root(), rel.is_empty());
    let comps: Vec<&[u8]> = p.components().collect();
    for c in &comps {
        assert!(!c.is_empty() && *c != b"." && *c != b"..", "{p:?}: {c:?}");
        assert!(c.len() <= 255 && !c.contains(&b'/'));
    }
    assert_eq!(comps.join(&b'/'), rel, "components of {p:?}");
    match p.parent_and_name() {
        None => assert!(p.is_root()),
        Some((parent, name)) => {
            assert_eq!(Some(name), comps.last().copied());
            let mut joined = parent.to_vec();
            if !joined.is_empty() {
                joined.push(b'/');
            }
            joined.extend_from_slice(name);
            assert_eq!(joined, rel);
        }
    }
    // The raw form it came from: "/" + rel (+ "/").
    let mut canon = vec![b'/'];
    canon.extend_from_slice(rel);
    if p.has_trailing_slash() {
        canon.push(b'/');
    }
    assert_eq!(canon, raw, "{p:?} does not spell its input");
    assert!(FsPath::root().is_ancestor_of(p) && p.is_ancestor_of(p));
    // Round trip through the client's encoder: what the client sends for
    // these bytes decodes to the same path.
    let enc = spockfs_client::encode_path(&canon);
    assert_eq!(FsPath::from_url_path(&enc).as_ref(), Ok(p), "{enc}");
}

/// Path decoding and sanitizing (`FsPath::from_url_path`, `from_bytes`,
/// `percent_decode_strict`, `strip_mount_prefix`, the client's
/// `encode_path`).
pub fn check_path(data: &[u8]) {
    // As raw bytes (X-Spock-target of RENAME/LINK).
    let r = FsPath::from_bytes(data);
    assert_eq!(
        r.is_ok(),
        reference_path_ok(data),
        "from_bytes({data:?}) = {r:?}"
    );
    if let Ok(p) = &r {
        check_fspath(p, data);
    }
    if let Err(e) = r {
        // The error names a real defect.
        match e {
            PathError::NotAbsolute => assert_ne!(data.first(), Some(&b'/')),
            PathError::Nul => assert!(data.contains(&0)),
            PathError::TooLong => {
                assert!(data.len() > 4096 || data.split(|&b| b == b'/').any(|s| s.len() > 255))
            }
            PathError::DotSegment | PathError::EmptySegment => {}
            PathError::BadEscape => panic!("from_bytes does not decode"),
        }
    }
    // As a URL path (percent-decoded first).
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = percent_decode_strict(data);
    let lenient: Vec<u8> = percent_encoding::percent_decode(data).collect();
    match &decoded {
        Ok(d) => assert_eq!(d, &lenient, "strict and lenient decoding disagree"),
        Err(e) => assert_eq!(*e, PathError::BadEscape),
    }
    let r = FsPath::from_url_path(s);
    match (&decoded, &r) {
        (Err(_), r) => assert_eq!(r, &Err(PathError::BadEscape)),
        (Ok(d), Ok(p)) => {
            assert!(reference_path_ok(d), "{s:?} accepted");
            check_fspath(p, d);
        }
        (Ok(d), Err(_)) => assert!(!reference_path_ok(d), "{s:?} refused"),
    }
    // Mount prefixes: the rest is "/" or starts with "/" and is a suffix.
    for prefix in ["", "/fs", "/a/b"] {
        if let Some(rest) = strip_mount_prefix(prefix, s) {
            assert!(rest.starts_with('/'));
            assert!(s.starts_with(prefix));
            assert!(rest == "/" && s == prefix || s[prefix.len()..] == *rest);
        }
    }
}

/// The reference decimal rule: optional `-`, then 1 to 39 ASCII digits.
fn reference_decimal(v: &[u8]) -> Option<i128> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    if digits.is_empty() || digits.len() > 39 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse::<i128>().ok()
}

fn check_numeric<H>(values: &[HeaderValue], to_i128: fn(&H) -> i128, min: i128, max: i128)
where
    H: Header + PartialEq + std::fmt::Debug,
{
    let decoded = H::decode(&mut values.iter());
    let expect = match values {
        [v] => reference_decimal(v.as_bytes()).filter(|n| (min..=max).contains(n)),
        _ => None,
    };
    match (&decoded, expect) {
        (Ok(hv), Some(n)) => {
            assert_eq!(to_i128(hv), n);
            // Encode, decode: the same value.
            let mut out = Vec::new();
            hv.encode(&mut out);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].as_bytes(), n.to_string().as_bytes());
            assert_eq!(H::decode(&mut out.iter()).as_ref().ok(), Some(hv));
        }
        (Err(_), None) => {}
        (d, e) => panic!("{} {values:?}: decoded {d:?}, expected {e:?}", H::name()),
    }
}

const HEADER_NAMES: &[&str] = &[
    "x-spock-mode",
    "x-spock-uid",
    "x-spock-gid",
    "x-spock-size",
    "x-spock-mtime",
    "x-spock-atime",
    "x-spock-target",
    "x-spock-flag",
    "x-spock-dev",
    "x-spock-readdir",
    "range",
    "content-range",
    "x-spock-ctime",
    "x-spock-nlink",
    "x-spock-atime-nsec",
    "x-spock-mtime-nsec",
];

/// Every typed `X-Spock-*` header against the reference decimal rule, and
/// the engine's request parser (`engine::parse`, pure) on arbitrary
/// method/path/headers.
pub fn check_headers(data: &[u8]) {
    let mut c = Cursor::new(data);
    // 1. One to three values for the numeric headers.
    let n = 1 + c.byte() as usize % 3;
    let mut values = Vec::new();
    for _ in 0..n {
        let v: &[u8] = if c.byte().is_multiple_of(2) {
            c.choose(NUMBERS).as_bytes()
        } else {
            c.bytes()
        };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            values.push(v);
        }
    }
    macro_rules! each {
        ($($ty:ident: $t:ty),*) => {$(
            check_numeric::<h::$ty>(&values, |x| x.0 as i128, <$t>::MIN as i128, <$t>::MAX as i128);
        )*};
    }
    each!(XSpockMode: u32, XSpockUid: i64, XSpockGid: i64, XSpockSize: u64,
        XSpockMtime: i64, XSpockAtime: i64, XSpockCtime: i64, XSpockNlink: u64,
        XSpockBlocks: u64, XSpockDev: i64, XSpockIno: u64, XSpockFlag: i64,
        XSpockBsize: u64, XSpockFrsize: u64, XSpockBfree: u64, XSpockBavail: u64,
        XSpockFiles: u64, XSpockFfree: u64, XSpockFavail: u64, XSpockFsid: u64,
        XSpockNamemax: u64, XSpockAtimeNsec: u32, XSpockMtimeNsec: u32, XSpockCtimeNsec: u32);
    let t = h::XSpockTarget::decode(&mut values.iter());
    assert_eq!(t.is_ok(), values.len() == 1);

    // 2. A whole request head through engine::parse.
    let method = c.choose(&Method::ALL);
    let path = String::from_utf8_lossy(c.bytes()).into_owned();
    let mut hm = HeaderMap::new();
    for _ in 0..c.byte() % 6 {
        let name = HeaderName::from_static(c.choose(HEADER_NAMES));
        let v: &[u8] = match c.byte() % 3 {
            0 => c.choose(NUMBERS).as_bytes(),
            1 => c.choose(&[
                &b"attrs"[..],
                b"attrs-nsec",
                b"now",
                b"omit",
                b"999999999",
                b"1000000000",
                b"/a",
                b"/a/b/",
                b"user.x",
                b"bytes=0-4",
                b"bytes=5-4",
                b"bytes 0-4/*",
                b"bytes=-5",
                b"bytes=0-",
                b"/%2e%2e",
                b"/..",
            ]),
            _ => c.bytes(),
        };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            hm.append(name, v);
        }
    }
    let path_ok = FsPath::from_url_path(&path);
    if let Ok((op, p)) = engine::parse(method, &path, &hm) {
        assert_eq!(Ok(&p), path_ok.as_ref(), "{path:?}");
        check_op(method, &op, &hm);
    }
}

/// What a parsed operation must satisfy, whatever the headers said.
fn check_op(method: Method, op: &Call, hm: &HeaderMap) {
    let one = |n: &str| {
        let mut it = hm.get_all(n).iter();
        let v = it.next().map(|v| v.as_bytes().to_vec());
        assert!(it.next().is_none(), "{n} sent twice but {op:?} accepted");
        v
    };
    match op {
        Call::Op(Op::Truncate { size }) => assert!(*size <= i64::MAX as u64),
        Call::Op(Op::Access { mask }) => assert!(*mask <= 7),
        Call::Op(Op::Symlink { target }) => {
            assert!(!target.is_empty());
            assert_eq!(one("x-spock-target").as_ref(), Some(target));
        }
        Call::Op(Op::Link { existing } | Op::Rename { from: existing }) => {
            let raw = one("x-spock-target").unwrap_or_default();
            assert_eq!(FsPath::from_bytes(&raw).as_ref(), Ok(existing));
        }
        Call::Op(Op::Fallocate { offset, len, .. }) => {
            assert!(*len > 0);
            assert!(offset
                .checked_add(*len)
                .is_some_and(|e| e <= i64::MAX as u64));
        }
        Call::Op(Op::Getxattr { name, .. } | Op::Removexattr { name })
        | Call::Body(BodyOp::Setxattr { name, .. }) => {
            assert!(!name.is_empty() && name.len() <= 255);
            assert_eq!(one("x-spock-target").as_ref(), Some(name));
        }
        Call::Body(BodyOp::Put {
            range: Some((off, len)),
        }) => {
            assert!(off.checked_add(*len).is_some_and(|e| e <= i64::MAX as u64));
        }
        Call::Op(Op::Get { head, .. }) => assert_eq!(*head, method == Method::Head),
        Call::Op(Op::Utimens { atime, mtime }) => {
            // Each time as its header spelled it; nanoseconds only with
            // seconds, and in range.
            for (t, secs, nsec) in [
                (atime, "x-spock-atime", "x-spock-atime-nsec"),
                (mtime, "x-spock-mtime", "x-spock-mtime-nsec"),
            ] {
                let v = one(secs).unwrap_or_else(|| panic!("{op:?} without {secs}"));
                let ns = one(nsec);
                match t {
                    SetTime::Now => {
                        assert!(v.eq_ignore_ascii_case(b"now") && ns.is_none())
                    }
                    SetTime::Omit => {
                        assert!(v.eq_ignore_ascii_case(b"omit") && ns.is_none())
                    }
                    SetTime::At { sec, nsec } => {
                        assert_eq!(reference_decimal(&v), Some(*sec as i128));
                        assert!(*nsec < 1_000_000_000);
                        let want = ns.map_or(Some(0), |n| reference_decimal(&n));
                        assert_eq!(want, Some(*nsec as i128));
                    }
                }
            }
        }
        Call::Op(Op::Readdir { attrs, nsec }) => {
            assert_eq!(*attrs, hm.contains_key("x-spock-readdir"));
            assert_eq!(
                *nsec,
                one("x-spock-readdir").is_some_and(|v| v.eq_ignore_ascii_case(b"attrs-nsec"))
            );
        }
        _ => {}
    }
    // Whatever it parsed, it was spelled by the header that names it.
    if let Call::Op(Op::Mkdir { mode } | Op::Chmod { mode } | Op::Post { mode }) = op {
        assert_eq!(
            one("x-spock-mode").map(|v| reference_decimal(&v)),
            Some(Some(*mode as i128))
        );
    }
}

fn fmt_range(r: ByteRange) -> String {
    match r {
        ByteRange::FromTo { first, last } => format!("bytes={first}-{last}"),
        ByteRange::From(a) => format!("bytes={a}-"),
        ByteRange::Suffix(n) => format!("bytes=-{n}"),
    }
}

/// `Range` and `Content-Range`.
pub fn check_range(data: &[u8]) {
    let mut c = Cursor::new(data);
    let sizes = [0, 1, 5, 100, c.u64(), u64::MAX];
    let value = c.rest();
    if let Some(r) = h::parse_range(value) {
        // The canonical spelling parses to the same range.
        assert_eq!(h::parse_range(fmt_range(r).as_bytes()), Some(r));
        if let ByteRange::FromTo { first, last } = r {
            assert!(last >= first || last.wrapping_add(1) == first, "{r:?}");
        }
        for size in sizes {
            if let Some((off, len)) = r.resolve(size) {
                assert!(len > 0 && off < size && off.checked_add(len).is_some_and(|e| e <= size));
                match r {
                    ByteRange::FromTo { first, last } => {
                        assert_eq!(off, first);
                        assert!(off + len - 1 <= last);
                    }
                    ByteRange::From(a) => assert_eq!((off, off + len), (a, size)),
                    ByteRange::Suffix(n) => assert_eq!(len, n.min(size)),
                }
            } else {
                match r {
                    ByteRange::FromTo { first, last } => assert!(first >= size || last < first),
                    ByteRange::From(a) => assert!(a >= size),
                    ByteRange::Suffix(n) => assert!(n == 0 || size == 0),
                }
            }
        }
    }
    if let Some((off, len)) = h::parse_content_range(value) {
        if len > 0 {
            let last = off + (len - 1);
            let spec = format!("bytes={off}-{last}");
            assert_eq!(h::parse_content_range(spec.as_bytes()), Some((off, len)));
            let std = format!("bytes {off}-{last}/*");
            assert_eq!(h::parse_content_range(std.as_bytes()), Some((off, len)));
            if let Some(total) = last.checked_add(1) {
                let std = format!("bytes {off}-{last}/{total}");
                assert_eq!(h::parse_content_range(std.as_bytes()), Some((off, len)));
            }
        } else {
            // Empty writes are only the client's a-(a-1) form.
            let s = String::from_utf8_lossy(value);
            assert!(s.contains('-'), "{s:?}");
        }
    }
}

fn stat_from(c: &mut Cursor<'_>) -> Stat {
    // Field by field, each either a full-range value or a small one, so both
    // the extremes and ordinary listings are covered.
    let mut n = || {
        let sel = c.byte();
        let v = c.u64();
        if sel.is_multiple_of(2) {
            v % 100_000
        } else {
            v
        }
    };
    Stat {
        mode: n() as u32,
        ino: n(),
        nlink: n(),
        uid: n() as u32,
        gid: n() as u32,
        size: n() & (i64::MAX as u64),
        blocks: n(),
        atime: n() as i64,
        mtime: n() as i64,
        ctime: n() as i64,
        atime_nsec: (n() % 1_000_000_000) as u32,
        mtime_nsec: (n() % 1_000_000_000) as u32,
        ctime_nsec: (n() % 1_000_000_000) as u32,
        dev: 0,
        rdev: 0,
    }
}

/// The `readdir-attrs` line format: writer/parser round trip, and any
/// line the parser accepts is re-written identically (canonical) or at
/// least re-parsed to the same value.
pub fn check_listing(data: &[u8]) {
    let mut c = Cursor::new(data);
    // Round trip of what the server writes.
    let st = stat_from(&mut c);
    let name: Vec<u8> = c.bytes().iter().copied().filter(|&b| b != b'\n').collect();
    if !name.is_empty() {
        // The 13-field form (extension `nsec`) keeps the nanoseconds.
        let mut line = Vec::new();
        write_prefix(&mut line, &st, Format::AttrsNsec);
        line.extend_from_slice(&name);
        assert_eq!(
            parse_line(&line, Format::AttrsNsec),
            Some((&name[..], st)),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        // The ten fields carry whole seconds only.
        let st = Stat {
            atime_nsec: 0,
            mtime_nsec: 0,
            ctime_nsec: 0,
            ..st
        };
        let mut line = Vec::new();
        write_attrs_prefix(&mut line, &st);
        line.extend_from_slice(&name);
        assert_eq!(
            parse_attrs_line(&line),
            Some((&name[..], st)),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        // And the client reads the same entry out of a whole listing.
        let mut body = line.clone();
        body.push(b'\n');
        let entries = spockfs_client::parse_readdir(&body, true);
        if name != b"." && name != b".." {
            let e = entries.unwrap_or_else(|e| panic!("client refused {body:?}: {e}"));
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].name, name);
            assert_eq!(e[0].stat, Some(st));
        }
    }
    // Arbitrary lines: accepted ones re-write to an equivalent line.
    let line = c.rest();
    if let Some((name, st)) = parse_line(line, Format::AttrsNsec) {
        assert!(!name.is_empty() && line.ends_with(name));
        assert!(st.atime_nsec < 1_000_000_000 && st.mtime_nsec < 1_000_000_000);
        assert!(st.ctime_nsec < 1_000_000_000);
        let mut again = Vec::new();
        write_prefix(&mut again, &st, Format::AttrsNsec);
        again.extend_from_slice(name);
        assert_eq!(parse_line(&again, Format::AttrsNsec), Some((name, st)));
    }
    if let Some((name, st)) = parse_attrs_line(line) {
        assert!(!name.is_empty());
        assert!(line.ends_with(name));
        let mut again = Vec::new();
        write_attrs_prefix(&mut again, &st);
        again.extend_from_slice(name);
        assert_eq!(parse_attrs_line(&again), Some((name, st)));
    }
}

/// The client's response parsers on arbitrary bodies and headers, and
/// round trips of what the server writes.
pub fn check_client(data: &[u8]) {
    let mut c = Cursor::new(data);
    let attrs = c.byte().is_multiple_of(2);
    let body = c.bytes();
    // Listings: never more entries than lines; no ., .., empty names.
    if let Ok(entries) = spockfs_client::parse_readdir(body, attrs) {
        assert!(entries.len() <= body.split(|&b| b == b'\n').count());
        for e in &entries {
            assert!(!e.name.is_empty() && e.name != b"." && e.name != b"..");
            assert!(!e.name.contains(&b'\n'));
            assert_eq!(e.stat.is_some(), attrs);
        }
    } else {
        assert!(attrs, "the plain listing cannot fail");
    }
    let names = spockfs_client::parse_xattr_list(body);
    for n in &names {
        assert!(!n.is_empty() && !n.contains(&b'\n'));
    }
    // The server's plain READDIR / LISTXATTR formats read back exactly.
    let listed: Vec<Vec<u8>> = body
        .split(|&b| b == b'\n')
        .filter(|n| !n.is_empty() && *n != b"." && *n != b"..")
        .map(<[u8]>::to_vec)
        .collect();
    let mut server = b".\n..\n".to_vec();
    let mut xl = Vec::new();
    for n in &listed {
        server.extend_from_slice(n);
        server.push(b'\n');
        xl.extend_from_slice(n);
        xl.push(b'\n');
    }
    let back = spockfs_client::parse_readdir(&server, false).unwrap_or_default();
    let back: Vec<Vec<u8>> = back.into_iter().map(|e| e.name).collect();
    assert_eq!(back, listed);
    assert_eq!(spockfs_client::parse_xattr_list(&xl), listed);

    // Response headers: arbitrary values never panic; a GETATTR written by
    // the server reads back exactly.
    let mut hm = HeaderMap::new();
    for _ in 0..c.byte() % 8 {
        let name = HeaderName::from_static(c.choose(&[
            "x-spock-mode",
            "x-spock-size",
            "x-spock-ino",
            "x-spock-uid",
            "x-spock-dev",
            "x-spock-mtime",
            "x-spock-errno",
            "x-spock-extensions",
            "x-spock-flag",
            "x-spock-blocks",
        ]));
        let v: &[u8] = match c.byte() % 4 {
            0 => c.choose(NUMBERS).as_bytes(),
            1 => c.choose(&[
                &b"ENOENT"[..],
                b"EBOGUS",
                b"errno, readdir-attrs, fsync",
                b"fsync,errno",
                b"readdir-attrs ,",
                b"",
            ]),
            _ => c.bytes(),
        };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            hm.append(name, v);
        }
    }
    let _ = spockfs_client::parse_stat(&hm);
    let _ = spockfs_client::parse_statfs(&hm);
    let ext = spockfs_client::parse_extensions(&hm);
    if ext.errno || ext.fsync || ext.readdir_attrs {
        assert!(hm.contains_key("x-spock-extensions"));
    }
    let status = StatusCode::from_u16(400 + u16::from(c.byte()) % 200)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let e = spockfs_client::errno_of(status, &hm, true);
    let plain = spockfs_client::errno_of(status, &hm, false);
    assert_eq!(plain, Errno::from_status(status));
    if e != plain {
        let v = hm.get("x-spock-errno").and_then(|v| v.to_str().ok());
        assert_eq!(v.and_then(Errno::from_name), Some(e));
    }
    // Server-written stat headers round-trip through the client.
    let st = stat_from(&mut c);
    let mut sh = HeaderMap::new();
    h::put_stat(&mut sh, &st);
    assert_eq!(spockfs_client::parse_stat(&sh), st);
}
