//! Reading responses: the public decoders for what a SpockFS server sends
//! back, each a call to the protocol's single definition in
//! [`spockfs_proto`] (kept here as this crate's API for callers that speak
//! to a server with their own HTTP stack).

use crate::{DirEntry, Errno, Extensions, FsResult, Stat, StatFs};
use http::{HeaderMap, StatusCode};
use spockfs_proto::readdir::{self, Format};

/// Parses one `readdir-attrs` line (`mode ino nlink uid gid size blocks
/// atime mtime ctime name`) with the format's single definition in
/// [`spockfs_proto::readdir`].
pub fn parse_attrs_line(line: &[u8]) -> Option<DirEntry> {
    parse_line(line, Format::Attrs)
}

/// Parses one line of a listing with attributes in `format` (`attrs`, or
/// `attrs-nsec` with the three nanosecond fields after the ten).
pub fn parse_line(line: &[u8], format: Format) -> Option<DirEntry> {
    readdir::parse_line(line, format).map(|(name, st)| DirEntry {
        name: name.to_vec(),
        stat: Some(st),
    })
}

/// The `lstat` a GETATTR response carries in its `X-Spock-*` headers
/// (missing or malformed fields read as 0, as the original client does;
/// so do the `nsec` extension's nanoseconds from a server without it):
/// [`spockfs_proto::headers::get_stat`].
pub fn parse_stat(h: &HeaderMap) -> Stat {
    spockfs_proto::headers::get_stat(h)
}

/// The `statvfs` a STATFS response carries in its `X-Spock-*` headers:
/// [`spockfs_proto::headers::get_statfs`].
pub fn parse_statfs(h: &HeaderMap) -> StatFs {
    spockfs_proto::headers::get_statfs(h)
}

/// The extensions an `OPTIONS` response advertises in
/// `X-Spock-extensions`.
pub fn parse_extensions(h: &HeaderMap) -> Extensions {
    Extensions::from_headers(h)
}

/// A READDIR body: one name per line (`.` and `..` skipped), or with
/// `attrs` the `readdir-attrs` lines; a malformed attrs line is `EIO`.
pub fn parse_readdir(body: &[u8], attrs: bool) -> FsResult<Vec<DirEntry>> {
    parse_listing(body, attrs.then_some(Format::Attrs))
}

/// A READDIR body: one name per line (`.` and `..` skipped), or lines
/// with attributes in `format`; a malformed line with attributes is `EIO`
/// ([`spockfs_proto::readdir::parse_body`]).
pub fn parse_listing(body: &[u8], format: Option<Format>) -> FsResult<Vec<DirEntry>> {
    readdir::parse_body(body, format)
}

/// A LISTXATTR body: one name per line.
pub fn parse_xattr_list(body: &[u8]) -> Vec<Vec<u8>> {
    body.split(|&b| b == b'\n')
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The errno a response stands for: the spec's status table, refined by
/// `X-Spock-errno` when the server speaks the `errno` extension
/// ([`Errno::from_response`]).
pub fn errno_of(status: StatusCode, headers: &HeaderMap, use_header: bool) -> Errno {
    Errno::from_response(status, headers, use_header)
}
