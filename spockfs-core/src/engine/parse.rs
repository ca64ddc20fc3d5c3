//! What a request means: method, path and headers parsed into a [`Call`]
//! (an [`Op`] its headers fully describe, or a [`BodyOp`] that also reads
//! the request body) on a validated path, or a [`Reject`] (400), before
//! anything is touched.

use crate::backend::{Owner, SetTime, XattrFlag};
use crate::headers::{
    self as h, parse_content_range, parse_range, BadHeader, ByteRange, X_SPOCK_READDIR,
    X_SPOCK_STAT,
};
use crate::method::Method;
use crate::{Errno, FsPath};
use http::header::{CONTENT_RANGE, RANGE};
use http::{HeaderMap, StatusCode};

/// True if a request may change the filesystem: what a read-only mount
/// refuses with 403 `EROFS`. The decision of [`Call::is_mutating`] on the
/// request's parsed operation, made from the method and headers alone (the
/// path plays no part), so that a proxy can enforce read-only on requests
/// it forwards instead of serving them: OPEN with write access, `O_CREAT`
/// or `O_TRUNC`, and ACCESS with `W_OK`, mutate; OPTIONS does not. A
/// request whose headers do not parse counts as mutating: an engine refuses
/// it with 400 before touching anything, but a read-only check should not
/// depend on what is behind it.
///
/// ```
/// use spockfs_core::{engine::is_mutating_request, Method};
/// let mut h = http::HeaderMap::new();
/// assert!(!is_mutating_request(Method::Open, &h)); // O_RDONLY
/// assert!(is_mutating_request(Method::Mkdir, &h)); // (X-Spock-mode missing)
/// h.insert("x-spock-flag", http::HeaderValue::from_static("2")); // O_RDWR
/// assert!(is_mutating_request(Method::Open, &h));
/// assert!(!is_mutating_request(Method::Getattr, &h));
/// ```
pub fn is_mutating_request(method: Method, headers: &HeaderMap) -> bool {
    if method == Method::Options {
        return false;
    }
    match parse(method, "/", headers) {
        Ok((call, _)) => call.is_mutating(),
        Err(_) => true,
    }
}

/// What a request asks for, fully described by its method, path and
/// headers: every SpockFS call but the two whose request body is part of
/// the call ([`BodyOp`]). A request for an `Op` may still carry a body; the
/// engine does not read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    /// `attrs`: the `readdir-attrs` format; `nsec`: its 13-field form
    /// (`X-Spock-readdir: attrs-nsec`, extension `nsec`).
    Readdir {
        attrs: bool,
        nsec: bool,
    },
    Getattr,
    Mknod {
        mode: u32,
        dev: u64,
    },
    Open {
        flags: i32,
    },
    Chmod {
        mode: u32,
    },
    Chown {
        owner: Owner,
    },
    Truncate {
        size: u64,
    },
    Access {
        mask: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
    Readlink,
    Rmdir,
    Mkdir {
        mode: u32,
    },
    Link {
        existing: FsPath,
    },
    Rename {
        from: FsPath,
    },
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
    Statfs,
    Listxattr {
        size: Option<u64>,
    },
    Getxattr {
        name: Vec<u8>,
        size: Option<u64>,
    },
    Removexattr {
        name: Vec<u8>,
    },
    Utimens {
        atime: SetTime,
        mtime: SetTime,
    },
    Get {
        range: Option<ByteRange>,
        head: bool,
    },
    Post {
        mode: u32,
    },
    Delete,
    Fsync {
        datasync: bool,
    },
}

impl Op {
    /// True if the operation may change the filesystem (refused on
    /// read-only mounts).
    pub fn is_mutating(&self) -> bool {
        match self {
            Op::Readdir { .. }
            | Op::Getattr
            | Op::Readlink
            | Op::Statfs
            | Op::Listxattr { .. }
            | Op::Getxattr { .. }
            | Op::Get { .. }
            | Op::Fsync { .. } => false,
            Op::Open { flags } => {
                flags & libc::O_ACCMODE != libc::O_RDONLY
                    || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
            }
            Op::Access { mask } => mask & 2 != 0,
            _ => true,
        }
    }

    /// True if the operation may give a new name to an object: the request
    /// path's final name must then be one READDIR can list (no `\n`).
    pub fn names_entry(&self) -> bool {
        matches!(
            self,
            Op::Post { .. }
                | Op::Mkdir { .. }
                | Op::Mknod { .. }
                | Op::Symlink { .. }
                | Op::Link { .. }
                | Op::Rename { .. }
        )
    }

    /// True if the operation adds or removes a name in the request path's
    /// directory, whose attributes the `parent-stat` extension returns.
    pub fn changes_parent(&self) -> bool {
        self.names_entry() || matches!(self, Op::Delete | Op::Rmdir)
    }

    /// True if the operation leaves an entry at the request path whose
    /// attributes the `stat` extension can return.
    pub fn can_stat(&self) -> bool {
        self.names_entry()
            || matches!(
                self,
                Op::Chmod { .. }
                    | Op::Chown { .. }
                    | Op::Truncate { .. }
                    | Op::Utimens { .. }
                    | Op::Fallocate { .. }
                    | Op::Open { .. }
            )
    }
}

/// What a request asks for when its body is part of the call: the engine
/// reads the body (within [`Limits`](super::Limits)) as the file's content
/// or the attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOp {
    /// PUT: the body replaces the file's content (`range: None`; the file
    /// is created if missing), or is written at `range`'s offset (`(offset,
    /// length)` from `Content-Range`; the file must exist).
    Put {
        /// `(offset, length)`, if the request has a `Content-Range`.
        range: Option<(u64, u64)>,
    },
    /// SETXATTR: the body is the attribute's value.
    Setxattr {
        /// The attribute's name.
        name: Vec<u8>,
        /// Create, replace, or either.
        flag: XattrFlag,
    },
}

impl BodyOp {
    /// True if the operation may give a new name to an object (a
    /// whole-file PUT creates the file if missing): see
    /// [`Op::names_entry`].
    pub fn names_entry(&self) -> bool {
        matches!(self, BodyOp::Put { range: None })
    }
}

/// A parsed request: an operation described by its headers, or one that
/// also reads the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Fully described by method, path and headers.
    Op(Op),
    /// Also reads the request body.
    Body(BodyOp),
}

impl Call {
    /// True if the call may change the filesystem (refused on read-only
    /// mounts): [`Op::is_mutating`]; both body operations do.
    pub fn is_mutating(&self) -> bool {
        match self {
            Call::Op(op) => op.is_mutating(),
            Call::Body(_) => true,
        }
    }

    /// True if the call may give a new name to an object: the request
    /// path's final name must then be one READDIR can list (no `\n`).
    pub fn names_entry(&self) -> bool {
        match self {
            Call::Op(op) => op.names_entry(),
            Call::Body(op) => op.names_entry(),
        }
    }
}

impl From<Op> for Call {
    fn from(op: Op) -> Call {
        Call::Op(op)
    }
}

impl From<BodyOp> for Call {
    fn from(op: BodyOp) -> Call {
        Call::Body(op)
    }
}

/// A request refused before touching the filesystem.
#[derive(Debug)]
pub struct Reject {
    pub(super) status: StatusCode,
    pub(super) errno: Errno,
    pub(super) message: String,
}

impl Reject {
    pub(super) fn bad(message: impl Into<String>) -> Reject {
        Reject {
            status: StatusCode::BAD_REQUEST,
            errno: Errno::EINVAL,
            message: message.into(),
        }
    }
}

impl From<BadHeader> for Reject {
    fn from(e: BadHeader) -> Reject {
        Reject::bad(e.to_string())
    }
}

fn target_path(headers: &HeaderMap) -> Result<FsPath, Reject> {
    let t = h::required_target(headers)?;
    FsPath::from_bytes(&t).map_err(|e| path_reject("invalid X-Spock-target path", e))
}

/// A rejected path: 400, with `ENAMETOOLONG` for over-long names (what a
/// local filesystem would say) and `EINVAL` for everything else.
fn path_reject(what: &str, e: crate::PathError) -> Reject {
    Reject {
        status: StatusCode::BAD_REQUEST,
        errno: if e == crate::PathError::TooLong {
            Errno::ENAMETOOLONG
        } else {
            Errno::EINVAL
        },
        message: format!("{what}: {e}"),
    }
}

fn uid_opt(v: i64, name: &str) -> Result<Option<u32>, Reject> {
    match v {
        -1 | 4294967295 => Ok(None),
        0..=4294967294 => Ok(Some(v as u32)),
        _ => Err(Reject::bad(format!(
            "malformed header {name}: out of range"
        ))),
    }
}

/// Decides what a request means: its [`Op`] on a validated path, or why it
/// is refused. Pure: no I/O.
pub fn parse(method: Method, path: &str, headers: &HeaderMap) -> Result<(Call, FsPath), Reject> {
    let path = FsPath::from_url_path(path).map_err(|e| path_reject("invalid path", e))?;
    use h::{optional as opt, required as req};
    let call: Call = match method {
        Method::Readdir => {
            use crate::listing::Format;
            let format = headers
                .get(&X_SPOCK_READDIR)
                .map(|v| Format::from_name(v.as_bytes()));
            let (attrs, nsec) = match format {
                None => (false, false),
                Some(Some(Format::Attrs)) => (true, false),
                Some(Some(Format::AttrsNsec)) => (true, true),
                Some(None) => {
                    return Err(Reject::bad(
                        "malformed header X-Spock-readdir: expected 'attrs' or 'attrs-nsec'",
                    ))
                }
            };
            Op::Readdir { attrs, nsec }.into()
        }
        Method::Getattr => Op::Getattr.into(),
        Method::Mknod => Op::Mknod {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
            dev: opt::<h::XSpockDev>(headers, "X-Spock-dev")?.map_or(0, |d| d.0 as u64),
        }
        .into(),
        Method::Open => {
            let flags = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            let flags = i32::try_from(flags)
                .map_err(|_| Reject::bad("malformed header X-Spock-flag: out of range"))?;
            Op::Open { flags }.into()
        }
        Method::Chmod => Op::Chmod {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        }
        .into(),
        Method::Chown => Op::Chown {
            owner: Owner {
                uid: uid_opt(
                    req::<h::XSpockUid>(headers, "X-Spock-uid")?.0,
                    "X-Spock-uid",
                )?,
                gid: uid_opt(
                    req::<h::XSpockGid>(headers, "X-Spock-gid")?.0,
                    "X-Spock-gid",
                )?,
            },
        }
        .into(),
        Method::Truncate => {
            let size = req::<h::XSpockSize>(headers, "X-Spock-size")?.0;
            if size > i64::MAX as u64 {
                return Err(Reject::bad("malformed header X-Spock-size: out of range"));
            }
            Op::Truncate { size }.into()
        }
        Method::Access => {
            let mask = req::<h::XSpockMode>(headers, "X-Spock-mode")?.0;
            if mask > 7 {
                return Err(Reject::bad(
                    "malformed header X-Spock-mode: ACCESS takes R_OK|W_OK|X_OK (0 to 7)",
                ));
            }
            Op::Access { mask }.into()
        }
        Method::Symlink => {
            let target = h::required_target(headers)?;
            if target.is_empty() {
                return Err(Reject::bad(
                    "malformed header X-Spock-target: empty symlink target",
                ));
            }
            Op::Symlink { target }.into()
        }
        Method::Readlink => Op::Readlink.into(),
        Method::Rmdir => Op::Rmdir.into(),
        Method::Mkdir => Op::Mkdir {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        }
        .into(),
        Method::Link => Op::Link {
            existing: target_path(headers)?,
        }
        .into(),
        Method::Rename => Op::Rename {
            from: target_path(headers)?,
        }
        .into(),
        Method::Fallocate => {
            let mode = opt::<h::XSpockMode>(headers, "X-Spock-mode")?.map_or(0, |m| m.0);
            let range = headers
                .get(RANGE)
                .ok_or(BadHeader::Missing("Range"))
                .map_err(Reject::from)?;
            let (offset, len) = match parse_range(range.as_bytes()) {
                Some(ByteRange::FromTo { first, last }) if last >= first => {
                    match (last - first).checked_add(1) {
                        Some(len) => (first, len),
                        None => return Err(Reject::bad("malformed header Range: out of range")),
                    }
                }
                _ => {
                    return Err(Reject::bad(
                        "malformed header Range: expected bytes=first-last",
                    ))
                }
            };
            if offset
                .checked_add(len)
                .is_none_or(|end| end > i64::MAX as u64)
            {
                return Err(Reject::bad("malformed header Range: out of range"));
            }
            Op::Fallocate {
                mode: mode as i32,
                offset,
                len,
            }
            .into()
        }
        Method::Statfs => Op::Statfs.into(),
        Method::Listxattr => Op::Listxattr {
            size: opt::<h::XSpockSize>(headers, "X-Spock-size")?.map(|s| s.0),
        }
        .into(),
        Method::Getxattr => Op::Getxattr {
            name: xattr_name(headers)?,
            size: opt::<h::XSpockSize>(headers, "X-Spock-size")?.map(|s| s.0),
        }
        .into(),
        Method::Setxattr => {
            let flag = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            BodyOp::Setxattr {
                name: xattr_name(headers)?,
                flag: XattrFlag::from_wire(flag).map_err(|_| {
                    Reject::bad("malformed header X-Spock-flag: expected 0, 1 (XATTR_CREATE) or 2 (XATTR_REPLACE)")
                })?,
            }.into()
        }
        Method::Removexattr => Op::Removexattr {
            name: xattr_name(headers)?,
        }
        .into(),
        Method::Utimens => Op::Utimens {
            atime: h::set_time(headers, h::TimeField::Atime)?,
            mtime: h::set_time(headers, h::TimeField::Mtime)?,
        }
        .into(),
        Method::Get | Method::Head => {
            let range = match headers.get(RANGE) {
                None => None,
                Some(v) => Some(parse_range(v.as_bytes()).ok_or_else(|| {
                    Reject::bad("malformed header Range: expected bytes=first-last, bytes=first- or bytes=-suffix")
                })?),
            };
            Op::Get {
                range,
                head: method == Method::Head,
            }
            .into()
        }
        Method::Put => {
            let range = match headers.get(CONTENT_RANGE) {
                None => None,
                Some(v) => {
                    let (off, len) = parse_content_range(v.as_bytes()).ok_or_else(|| {
                        Reject::bad("malformed header Content-Range: expected bytes=first-last or bytes first-last/total")
                    })?;
                    if off.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
                        return Err(Reject::bad("malformed header Content-Range: out of range"));
                    }
                    Some((off, len))
                }
            };
            BodyOp::Put { range }.into()
        }
        Method::Post => Op::Post {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        }
        .into(),
        Method::Delete => Op::Delete.into(),
        Method::Fsync => {
            let flag = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            Op::Fsync {
                datasync: flag == 1,
            }
            .into()
        }
        Method::Options => return Err(Reject::bad("OPTIONS has no operation")),
    };
    if call.names_entry() && path.name().is_some_and(|n| n.contains(&b'\n')) {
        // READDIR lists one name per line: such a name could never be
        // listed, and its directory could never be emptied by a client.
        return Err(Reject::bad(
            "a name containing a newline cannot be listed by READDIR and is refused",
        ));
    }
    server_names(&call, &path)?;
    Ok((call, path))
}

/// The server's temporary files ([`TEMP_PREFIX`](crate::backend::TEMP_PREFIX))
/// are not the client's: they do not exist for it (404 `ENOENT`), and it
/// may neither create such a name nor point a new symlink at one (400
/// `EINVAL`), so no client can read, write or remove an upload in progress.
fn server_names(call: &Call, path: &FsPath) -> Result<(), Reject> {
    use crate::backend::is_temp_name;
    const RESERVED: &str =
        "names starting with .spockfs-put. are reserved for the server's temporary files";
    if call.names_entry() && path.name().is_some_and(is_temp_name) {
        return Err(Reject::bad(RESERVED));
    }
    let other = match call {
        Call::Op(Op::Rename { from }) => Some(from),
        Call::Op(Op::Link { existing }) => Some(existing),
        Call::Op(Op::Symlink { target }) => {
            if target.split(|&b| b == b'/').any(is_temp_name) {
                return Err(Reject::bad(RESERVED));
            }
            None
        }
        _ => None,
    };
    let hidden = |p: &FsPath| p.components().any(is_temp_name);
    if hidden(path) || other.is_some_and(hidden) {
        return Err(Reject {
            status: StatusCode::NOT_FOUND,
            errno: Errno::ENOENT,
            message: Errno::ENOENT.description().to_owned(),
        });
    }
    Ok(())
}

fn xattr_name(headers: &HeaderMap) -> Result<Vec<u8>, Reject> {
    let name = h::required_target(headers)?;
    if name.is_empty() || name.len() > 255 {
        return Err(Reject::bad(
            "malformed header X-Spock-target: xattr name must be 1 to 255 bytes",
        ));
    }
    Ok(name)
}

/// `X-Spock-stat: 1` (the `stat` extension).
pub(super) fn wants_stat(headers: &HeaderMap) -> bool {
    headers
        .get(&X_SPOCK_STAT)
        .is_some_and(|v| v.as_bytes() == b"1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hm(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }

    /// Extreme and malformed values in every header of every method:
    /// parse answers (Ok or a 400), never panics.
    #[test]
    fn parse_never_panics_on_extremes() {
        let values: &[&[u8]] = &[
            b"0",
            b"-1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"-9223372036854775808",
            b"99999999999999999999999999999999999999999",
            b"",
            b"\xff",
            b"bytes=0-18446744073709551615",
            b"bytes=18446744073709551615-18446744073709551615",
            b"bytes=18446744073709551614-",
            b"bytes -0-/*",
            b"bytes 18446744073709551615-18446744073709551615/18446744073709551615",
            b"/../x",
            b"/a/b",
            b"now",
            b"OMIT",
            b"attrs-nsec",
            b"999999999",
            b"1000000000",
        ];
        let names = [
            "x-spock-mode",
            "x-spock-uid",
            "x-spock-gid",
            "x-spock-size",
            "x-spock-atime",
            "x-spock-mtime",
            "x-spock-dev",
            "x-spock-flag",
            "x-spock-target",
            "range",
            "content-range",
            "x-spock-readdir",
            "x-spock-atime-nsec",
            "x-spock-mtime-nsec",
        ];
        for m in Method::ALL {
            if m == Method::Options {
                continue;
            }
            for v in values {
                let all: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, *v)).collect();
                let _ = parse(m, "/f", &hm(&all));
                for n in names {
                    let _ = parse(m, "/f", &hm(&[(n, v)]));
                }
            }
        }
        let r = parse(
            Method::Fallocate,
            "/f",
            &hm(&[("range", b"bytes=0-18446744073709551615")]),
        );
        assert!(r.is_err());
    }

    #[test]
    fn mutating_ops() {
        assert!(!Op::Open { flags: 0 }.is_mutating());
        assert!(Op::Open {
            flags: libc::O_WRONLY
        }
        .is_mutating());
        assert!(Op::Open {
            flags: libc::O_TRUNC
        }
        .is_mutating());
        assert!(Op::Access { mask: 2 }.is_mutating());
        assert!(!Op::Access { mask: 5 }.is_mutating());
        assert!(!Op::Fsync { datasync: false }.is_mutating());
        assert!(Op::Delete.is_mutating());
    }

    /// PUT and SETXATTR parse to body operations, everything else to an
    /// `Op`; a whole-file PUT names an entry, a ranged one does not.
    #[test]
    fn body_operations_are_their_own_type() {
        let put = parse(Method::Put, "/f", &HeaderMap::new()).map(|(c, _)| c);
        assert_eq!(put.ok(), Some(Call::Body(BodyOp::Put { range: None })));
        let ranged = hm(&[("content-range", b"bytes 4-7/*")]);
        let (call, _) = parse(Method::Put, "/f", &ranged).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            call,
            Call::Body(BodyOp::Put {
                range: Some((4, 4))
            })
        );
        assert!(call.is_mutating() && !call.names_entry());
        let set = hm(&[("x-spock-target", b"user.a"), ("x-spock-flag", b"1")]);
        let (call, _) = parse(Method::Setxattr, "/f", &set).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            call,
            Call::Body(BodyOp::Setxattr {
                name: b"user.a".to_vec(),
                flag: XattrFlag::Create,
            })
        );
        for m in Method::ALL {
            if let Ok((call, _)) = parse(m, "/f", &HeaderMap::new()) {
                let body = matches!(m, Method::Put | Method::Setxattr);
                assert_eq!(matches!(call, Call::Body(_)), body, "{m:?}");
            }
        }
        // A name READDIR could not list is refused where a PUT would make it.
        assert!(parse(Method::Put, "/a%0Ab", &HeaderMap::new()).is_err());
        assert!(parse(Method::Put, "/a%0Ab", &ranged).is_ok());
    }
}
