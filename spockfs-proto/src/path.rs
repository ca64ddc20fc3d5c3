//! Path rules: how a client writes a path into a URL ([`encode_path`]) and
//! how a server reads and sanitizes it ([`FsPath`]).
//!
//! A SpockFS path is the URL path after the mount prefix, percent-decoded to
//! bytes (names are bytes, never required to be UTF-8). Validation happens
//! *after* decoding, so `%2e%2e` is `..` and `%2f` is a separator.
//!
//! Rejected (400): a path not starting with `/`, a NUL byte, a `.` or `..`
//! segment, and an empty segment (`//`) other than one trailing slash.
//!
//! String checks are only the first line of defence: every backend resolves
//! the resulting components relative to its own root (see
//! `spockfs_core::LocalFs`).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::fmt;

/// Why a path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// A `.` or `..` segment.
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    /// An empty segment (`//`) other than one trailing slash.
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    /// A malformed percent escape (`%zz`, or a `%` at the end).
    #[error("path contains a malformed percent escape")]
    BadEscape,
    /// A segment longer than 255 bytes or a path longer than 4096 bytes.
    #[error("path or path segment too long")]
    TooLong,
}

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest accepted segment, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// A validated path inside a mount: zero or more non-empty components, none
/// of them `.`/`..`, none containing `/` or NUL.
///
/// ```
/// use spockfs_proto::FsPath;
///
/// let p = FsPath::from_url_path("/docs/caf%C3%A9%20menu.txt").unwrap();
/// assert_eq!(p.components().collect::<Vec<_>>(), [&b"docs"[..], "café menu.txt".as_bytes()]);
/// assert!(FsPath::from_url_path("/a/%2e%2e/b").is_err());
/// assert!(FsPath::from_url_path("/").unwrap().is_root());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FsPath {
    /// Components joined by `/`, without leading or trailing slash; empty for
    /// the root.
    rel: Vec<u8>,
    trailing_slash: bool,
}

impl FsPath {
    /// The root of the mount.
    pub fn root() -> FsPath {
        FsPath {
            rel: Vec::new(),
            trailing_slash: false,
        }
    }

    /// Parses the path of a request URI (percent-encoded, query excluded).
    pub fn from_url_path(path: &str) -> Result<FsPath, PathError> {
        let decoded = percent_decode_strict(path.as_bytes())?;
        FsPath::from_bytes(&decoded)
    }

    /// Validates raw path bytes (already decoded), as sent in
    /// `X-Spock-target` for RENAME and LINK.
    pub fn from_bytes(raw: &[u8]) -> Result<FsPath, PathError> {
        if raw.first() != Some(&b'/') {
            return Err(PathError::NotAbsolute);
        }
        if raw.contains(&0) {
            return Err(PathError::Nul);
        }
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let body = &raw[1..];
        let (body, trailing_slash) = match body.strip_suffix(b"/") {
            Some(b) => (b, true),
            None => (body, false),
        };
        if body.is_empty() {
            // "/" (or "//" which is the root with an extra trailing slash:
            // that is an empty segment).
            return if trailing_slash {
                Err(PathError::EmptySegment)
            } else {
                Ok(FsPath::root())
            };
        }
        for seg in body.split(|&b| b == b'/') {
            match seg {
                b"" => return Err(PathError::EmptySegment),
                b"." | b".." => return Err(PathError::DotSegment),
                s if s.len() > MAX_NAME => return Err(PathError::TooLong),
                _ => {}
            }
        }
        Ok(FsPath {
            rel: body.to_vec(),
            trailing_slash,
        })
    }

    /// True for the mount's root.
    pub fn is_root(&self) -> bool {
        self.rel.is_empty()
    }

    /// True if the request path ended in `/`: the object must then be a
    /// directory (as in POSIX path resolution).
    pub fn has_trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// Components joined by `/`, no leading or trailing slash; empty for the
    /// root. Suitable for `openat2(root_fd, ..)`.
    pub fn relative(&self) -> &[u8] {
        &self.rel
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.rel.split(|&b| b == b'/').filter(|s| !s.is_empty())
    }

    /// Splits into the parent's relative path and the final name; `None` for
    /// the root.
    pub fn parent_and_name(&self) -> Option<(&[u8], &[u8])> {
        if self.rel.is_empty() {
            return None;
        }
        Some(match self.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.rel[..i], &self.rel[i + 1..]),
            None => (&[][..], &self.rel[..]),
        })
    }

    /// The directory holding this path's final name; `None` for the root.
    ///
    /// ```
    /// use spockfs_proto::FsPath;
    /// let p = FsPath::from_url_path("/a/b/c").unwrap();
    /// assert_eq!(p.parent().map(|d| d.relative().to_vec()), Some(b"a/b".to_vec()));
    /// assert!(FsPath::from_url_path("/a").unwrap().parent().unwrap().is_root());
    /// assert!(FsPath::root().parent().is_none());
    /// ```
    pub fn parent(&self) -> Option<FsPath> {
        self.parent_and_name().map(|(dir, _)| FsPath {
            rel: dir.to_vec(),
            trailing_slash: false,
        })
    }

    /// The final component; `None` for the root.
    pub fn name(&self) -> Option<&[u8]> {
        self.parent_and_name().map(|(_, n)| n)
    }

    /// True if `other` is this path or lies below it.
    pub fn is_ancestor_of(&self, other: &FsPath) -> bool {
        if self.rel.is_empty() {
            return true;
        }
        other.rel.starts_with(&self.rel)
            && (other.rel.len() == self.rel.len() || other.rel[self.rel.len()] == b'/')
    }
}

impl fmt::Debug for FsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FsPath({self})")
    }
}

impl fmt::Display for FsPath {
    /// Displays the path with a leading `/`, lossily for non-UTF-8 names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.rel).escape_debug())?;
        if self.trailing_slash {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Strips a mount prefix (`/fs`, no trailing slash; `""` for none) from a
/// request path, as axum's `nest_service` does: `Some(rest)`, always
/// starting with `/`, if the path is the prefix or lies under it.
///
/// ```
/// use spockfs_proto::path::strip_mount_prefix;
/// assert_eq!(strip_mount_prefix("/fs", "/fs"), Some("/"));
/// assert_eq!(strip_mount_prefix("/fs", "/fs/a/b"), Some("/a/b"));
/// assert_eq!(strip_mount_prefix("/fs", "/fsx"), None);
/// assert_eq!(strip_mount_prefix("", "/x"), Some("/x"));
/// ```
pub fn strip_mount_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Percent-decodes, rejecting malformed escapes instead of passing them
/// through (a `%` that is not followed by two hex digits is ambiguous).
pub fn percent_decode_strict(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (input.get(i + 1), input.get(i + 2)) {
                (Some(&h), Some(&l)) => match (hex(h), hex(l)) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => return Err(PathError::BadEscape),
                },
                _ => return Err(PathError::BadEscape),
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Bytes kept as-is in paths, as the original client does: unreserved
/// characters and `/`.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes a filesystem path (bytes) for a request URL, as the
/// original client does: everything but unreserved characters and `/`.
/// [`FsPath::from_url_path`] reads it back.
///
/// ```
/// use spockfs_proto::path::{encode_path, FsPath};
/// assert_eq!(encode_path(b"/a b/c%d"), "/a%20b/c%25d");
/// let p = FsPath::from_url_path(&encode_path(b"/x\xff\n")).unwrap();
/// assert_eq!(p.relative(), b"x\xff\n");
/// ```
pub fn encode_path(path: &[u8]) -> String {
    percent_encoding::percent_encode(path, PATH_KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> FsPath {
        FsPath::from_url_path(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn valid_paths() {
        assert!(ok("/").is_root());
        assert_eq!(ok("/a").relative(), b"a");
        assert_eq!(ok("/a/b/c").relative(), b"a/b/c");
        let p = ok("/a/b/");
        assert_eq!(p.relative(), b"a/b");
        assert!(p.has_trailing_slash());
        assert_eq!(ok("/a%2fb").relative(), b"a/b");
        assert_eq!(ok("/%ff%fe").relative(), b"\xff\xfe");
        assert_eq!(ok("/...").relative(), b"...");
        assert_eq!(ok("/.hidden").relative(), b".hidden");
        assert_eq!(ok("/a..b").relative(), b"a..b");
        assert_eq!(ok("/a/b").parent_and_name(), Some((&b"a"[..], &b"b"[..])));
        assert_eq!(ok("/b").parent_and_name(), Some((&b""[..], &b"b"[..])));
        assert_eq!(ok("/").parent_and_name(), None);
    }

    #[test]
    fn invalid_paths() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("", NotAbsolute),
            ("a", NotAbsolute),
            ("/..", DotSegment),
            ("/.", DotSegment),
            ("/a/../b", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/..", DotSegment),
            ("/a/../", DotSegment),
            ("/%2e%2e", DotSegment),
            ("/%2E%2e/x", DotSegment),
            ("/a%2f..%2fb", DotSegment),
            ("/.%2e", DotSegment),
            ("/a%2f%2e", DotSegment),
            ("//", EmptySegment),
            ("//a", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a//", EmptySegment),
            ("/a%2f%2fb", EmptySegment),
            ("/a%00b", Nul),
            ("/a%0", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%", BadEscape),
        ];
        for (p, e) in cases {
            assert_eq!(FsPath::from_url_path(p), Err(*e), "{p:?}");
        }
        let long = format!("/{}", "a".repeat(256));
        assert_eq!(FsPath::from_url_path(&long), Err(TooLong));
    }

    #[test]
    fn ancestry() {
        assert!(ok("/a").is_ancestor_of(&ok("/a/b")));
        assert!(ok("/a").is_ancestor_of(&ok("/a")));
        assert!(!ok("/a").is_ancestor_of(&ok("/ab")));
        assert!(ok("/").is_ancestor_of(&ok("/ab")));
    }

    /// Moved from spockfs-client, with `encode_path`.
    #[test]
    fn paths_encode_like_the_original_client() {
        assert_eq!(encode_path(b"/a b/c%d"), "/a%20b/c%25d");
        assert_eq!(encode_path(b"/x-y_z.~/\xff"), "/x-y_z.~/%FF");
        assert_eq!(encode_path("/café?#".as_bytes()), "/caf%C3%A9%3F%23");
    }

    /// Whatever the bytes, a valid path survives the client's encoding and
    /// the server's decoding unchanged (names with `%`, spaces, newlines,
    /// non-UTF-8 bytes).
    #[test]
    fn encoded_paths_decode_to_the_same_bytes() {
        for raw in [
            &b"/"[..],
            b"/a",
            b"/100% sure/x y",
            b"/caf\xc3\xa9/\xff\xfe",
            b"/line\nbreak/tab\there",
            b"/%2e%2e",
            b"/a/b/",
        ] {
            let p =
                FsPath::from_url_path(&encode_path(raw)).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(p, FsPath::from_bytes(raw).unwrap_or_else(|e| panic!("{e}")));
        }
    }
}
