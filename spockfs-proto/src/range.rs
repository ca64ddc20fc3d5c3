//! The standard range headers SpockFS gives its own meaning to: `Range`
//! on GET, HEAD and FALLOCATE, `Content-Range` on PUT (the spec's
//! `bytes=a-b` as well as the standard form).

/// A byte range requested with `Range` (GET, HEAD, FALLOCATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive). `last` may be before `first` by one for an
    /// empty range (what the original client sends for a 0-byte read).
    FromTo {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: u64,
    },
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Resolves against a file of `size` bytes: `Some((offset, len))` of the
    /// bytes to send, `None` if the range starts at or past the end (or is
    /// empty).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (first, end_excl) = match self {
            ByteRange::FromTo { first, last } => (first, last.saturating_add(1)),
            ByteRange::From(first) => (first, u64::MAX),
            ByteRange::Suffix(n) => (size.saturating_sub(n), size),
        };
        let end = end_excl.min(size);
        if first >= size || first >= end {
            None
        } else {
            Some((first, end - first))
        }
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii();
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses `Range: bytes=a-b` / `bytes=a-` / `bytes=-n`; with several ranges,
/// the first one. Returns `None` for anything malformed, including `a > b`
/// (except the empty `a-(a-1)` form the original client sends for a 0-byte
/// read).
///
/// ```
/// use spockfs_proto::range::{parse_range, ByteRange};
/// assert_eq!(parse_range(b"bytes=100-104"), Some(ByteRange::FromTo { first: 100, last: 104 }));
/// assert_eq!(parse_range(b"bytes=-5, 1-2"), Some(ByteRange::Suffix(5)));
/// assert_eq!(parse_range(b"items=1-2"), None);
/// ```
pub fn parse_range(value: &[u8]) -> Option<ByteRange> {
    let value = value.trim_ascii();
    let (unit, spec) = value.split_at(value.iter().position(|&b| b == b'=')?);
    if !unit.trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let first_spec = spec[1..].split(|&b| b == b',').next()?.trim_ascii();
    let dash = first_spec.iter().position(|&b| b == b'-')?;
    let (a, b) = (&first_spec[..dash], &first_spec[dash + 1..]);
    match (a.trim_ascii().is_empty(), b.trim_ascii().is_empty()) {
        (true, true) => None,
        (true, false) => parse_u64(b).map(ByteRange::Suffix),
        (false, true) => parse_u64(a).map(ByteRange::From),
        (false, false) => {
            let (first, last) = (parse_u64(a)?, parse_u64(b)?);
            if last < first && last.wrapping_add(1) != first {
                return None;
            }
            Some(ByteRange::FromTo { first, last })
        }
    }
}

/// Parses a PUT's `Content-Range`: the spec's `bytes=a-b` or the standard
/// `bytes a-b/total` (`total` a number or `*`). Returns `(offset, length)`.
/// `a-(a-1)` is an empty write at `a` (the original client's 0-byte write),
/// and so is `0-18446744073709551615` ((0 + 0) - 1 wrapped) when the body is
/// empty: the caller decides with the body length.
///
/// ```
/// use spockfs_proto::range::parse_content_range;
/// assert_eq!(parse_content_range(b"bytes=100-104"), Some((100, 5)));
/// assert_eq!(parse_content_range(b"bytes 100-104/*"), Some((100, 5)));
/// assert_eq!(parse_content_range(b"bytes 0-9/10"), Some((0, 10)));
/// assert_eq!(parse_content_range(b"bytes 0-9/5"), None);
/// assert_eq!(parse_content_range(b"bytes */10"), None);
/// ```
pub fn parse_content_range(value: &[u8]) -> Option<(u64, u64)> {
    let value = value.trim_ascii();
    let (spec, total) = if let Some(rest) = strip_prefix_ci(value, b"bytes=") {
        (rest, None)
    } else if let Some(rest) = strip_prefix_ci(value, b"bytes ") {
        let slash = rest.iter().position(|&b| b == b'/')?;
        let total = rest[slash + 1..].trim_ascii();
        let total = if total == b"*" {
            None
        } else {
            Some(parse_u64(total)?)
        };
        (&rest[..slash], total)
    } else {
        return None;
    };
    let dash = spec.iter().position(|&b| b == b'-')?;
    let first = parse_u64(&spec[..dash])?;
    let last = parse_u64(&spec[dash + 1..])?;
    let len = if last.wrapping_add(1) == first {
        0
    } else if last < first {
        return None;
    } else {
        (last - first).checked_add(1)?
    };
    if let Some(total) = total {
        if len > 0 && last >= total {
            return None;
        }
    }
    Some((first, len))
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(
            parse_range(b"bytes=0-4095"),
            Some(FromTo {
                first: 0,
                last: 4095
            })
        );
        assert_eq!(parse_range(b"BYTES = 5-"), Some(From(5)));
        assert_eq!(parse_range(b"bytes=-0"), Some(Suffix(0)));
        assert_eq!(
            parse_range(b"bytes=5-4"),
            Some(FromTo { first: 5, last: 4 })
        );
        assert_eq!(parse_range(b"bytes=5-3"), None);
        assert_eq!(parse_range(b"bytes=-"), None);
        assert_eq!(parse_range(b"bytes=a-b"), None);
        assert_eq!(parse_range(b"bytes"), None);
        assert_eq!(
            FromTo {
                first: 0,
                last: 4095
            }
            .resolve(100),
            Some((0, 100))
        );
        assert_eq!(
            FromTo {
                first: 100,
                last: 200
            }
            .resolve(100),
            None
        );
        assert_eq!(FromTo { first: 5, last: 4 }.resolve(100), None);
        assert_eq!(
            FromTo {
                first: 0,
                last: u64::MAX
            }
            .resolve(10),
            Some((0, 10))
        );
        assert_eq!(From(3).resolve(10), Some((3, 7)));
        assert_eq!(Suffix(3).resolve(10), Some((7, 3)));
        assert_eq!(Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(Suffix(0).resolve(10), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range(b"bytes=5-4"), Some((5, 0)));
        assert_eq!(
            parse_content_range(b"bytes=0-18446744073709551615"),
            Some((0, 0))
        );
        assert_eq!(parse_content_range(b"bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range(b"bytes=9-3"), None);
        assert_eq!(parse_content_range(b"bytes=1-"), None);
        assert_eq!(parse_content_range(b"items=1-2"), None);
        assert_eq!(parse_content_range(b"bytes 1-2"), None);
    }
}
