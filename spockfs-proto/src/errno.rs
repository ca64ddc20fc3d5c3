//! POSIX error numbers and their mapping onto SpockFS HTTP statuses.
//!
//! The spec's table maps a handful of statuses to errno values
//! (403 → `EACCES`, 404 → `ENOENT`, …, 500 → `EIO`). The server side needs the
//! opposite direction, plus a name for the `X-Spock-errno` extension header so
//! that a richer client can report the exact error.

use http::StatusCode;
use std::fmt;

/// A POSIX `errno` value, as a server's filesystem produces it and a
/// client reports it.
///
/// ```
/// use spockfs_proto::Errno;
/// use http::StatusCode;
///
/// assert_eq!(Errno::ENOENT.status(), StatusCode::NOT_FOUND);
/// assert_eq!(Errno::ENOENT.name(), "ENOENT");
/// assert_eq!(Errno::ENOSPC.status(), StatusCode::INTERNAL_SERVER_ERROR);
/// assert_eq!(Errno::from_name("ENOTEMPTY"), Some(Errno::ENOTEMPTY));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Errno = Errno(libc::$name);
            )*

            /// The symbolic name (`"ENOENT"`), or `"E<number>"` for values
            /// this crate has no name for.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $(libc::$name => stringify!($name),)*
                    _ => "EUNKNOWN",
                }
            }

            /// Parses a symbolic name as sent in `X-Spock-errno`.
            pub fn from_name(name: &str) -> Option<Errno> {
                match name {
                    $(stringify!($name) => Some(Errno::$name),)*
                    _ => None,
                }
            }
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    EIO,
    ENXIO,
    E2BIG,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    ERANGE,
    ENAMETOOLONG,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOPNOTSUPP,
    EOVERFLOW,
    EDQUOT,
    ESTALE,
    ETIMEDOUT,
    EINTR,
    ECANCELED,
);

impl Errno {
    /// Wraps a raw `errno` value.
    pub const fn from_raw(raw: i32) -> Errno {
        Errno(raw)
    }

    /// The raw `errno` value.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The HTTP status that carries this error, following the spec's table
    /// (403 EACCES/EPERM, 404 ENOENT, 405 ENOSYS, 409 EEXIST, 412 ENOTEMPTY,
    /// 413 ERANGE, 415 ENODATA, 500 anything else).
    ///
    /// A few errno values that mean "refused" to any client are folded into
    /// 403 as well: `EROFS` (read-only mount), `EISDIR` (GET/PUT on a
    /// directory) and `ELOOP` (a path that would go through a symlink, which
    /// this server never follows). `EOPNOTSUPP` is 405 like `ENOSYS`, and
    /// `E2BIG` (over the server's xattr limit) is 413 like `ERANGE`.
    pub fn status(self) -> StatusCode {
        match self {
            Errno::EACCES | Errno::EPERM | Errno::EROFS | Errno::EISDIR | Errno::ELOOP => {
                StatusCode::FORBIDDEN
            }
            Errno::ENOENT => StatusCode::NOT_FOUND,
            Errno::ENOSYS | Errno::EOPNOTSUPP => StatusCode::METHOD_NOT_ALLOWED,
            Errno::EEXIST => StatusCode::CONFLICT,
            Errno::ENOTEMPTY => StatusCode::PRECONDITION_FAILED,
            Errno::ERANGE | Errno::E2BIG => StatusCode::PAYLOAD_TOO_LARGE,
            Errno::ENODATA => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The errno a plain SpockFS 0.1 client derives from `status` (the spec's
    /// table; anything else is `EIO`).
    pub fn from_status(status: StatusCode) -> Errno {
        match status.as_u16() {
            403 => Errno::EACCES,
            404 => Errno::ENOENT,
            405 => Errno::ENOSYS,
            409 => Errno::EEXIST,
            412 => Errno::ENOTEMPTY,
            413 => Errno::ERANGE,
            415 => Errno::ENODATA,
            _ => Errno::EIO,
        }
    }

    /// The errno a response stands for: the spec's status table
    /// ([`from_status`](Errno::from_status)), refined by `X-Spock-errno`
    /// when `use_header` (the server speaks the `errno` extension) and the
    /// header names a known errno.
    ///
    /// ```
    /// use spockfs_proto::Errno;
    /// use http::StatusCode;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x-spock-errno", "ENOTDIR".parse().unwrap());
    /// assert_eq!(Errno::from_response(StatusCode::NOT_FOUND, &h, true), Errno::ENOTDIR);
    /// assert_eq!(Errno::from_response(StatusCode::NOT_FOUND, &h, false), Errno::ENOENT);
    /// ```
    pub fn from_response(status: StatusCode, headers: &http::HeaderMap, use_header: bool) -> Errno {
        if use_header {
            if let Some(e) = headers
                .get(&crate::headers::X_SPOCK_ERRNO)
                .and_then(|v| v.to_str().ok())
                .and_then(Errno::from_name)
            {
                return e;
            }
        }
        Errno::from_status(status)
    }

    /// A human-readable description (`strerror`).
    pub fn description(self) -> String {
        std::io::Error::from_raw_os_error(self.0)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "EUNKNOWN" => write!(f, "Errno({})", self.0),
            name => f.write_str(name),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.description())
    }
}

impl std::error::Error for Errno {}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        match e.raw_os_error() {
            Some(raw) => Errno(raw),
            None => match e.kind() {
                std::io::ErrorKind::NotFound => Errno::ENOENT,
                std::io::ErrorKind::PermissionDenied => Errno::EACCES,
                std::io::ErrorKind::AlreadyExists => Errno::EEXIST,
                std::io::ErrorKind::InvalidInput => Errno::EINVAL,
                std::io::ErrorKind::Unsupported => Errno::EOPNOTSUPP,
                std::io::ErrorKind::OutOfMemory => Errno::ENOMEM,
                _ => Errno::EIO,
            },
        }
    }
}

#[cfg(feature = "rustix")]
impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Errno {
        Errno(e.raw_os_error())
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.0)
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table_round_trips() {
        for e in [
            Errno::EACCES,
            Errno::ENOENT,
            Errno::ENOSYS,
            Errno::EEXIST,
            Errno::ENOTEMPTY,
            Errno::ERANGE,
            Errno::ENODATA,
            Errno::EIO,
        ] {
            assert_eq!(Errno::from_status(e.status()), e, "{e:?}");
        }
        assert_eq!(Errno::EPERM.status(), StatusCode::FORBIDDEN);
        assert_eq!(Errno::ENOSPC.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn names() {
        assert_eq!(Errno::ENOTDIR.name(), "ENOTDIR");
        assert_eq!(Errno::from_name("EROFS"), Some(Errno::EROFS));
        assert_eq!(Errno::from_name("nope"), None);
        assert_eq!(format!("{:?}", Errno::from_raw(9999)), "Errno(9999)");
        assert!(Errno::ENOENT.description().contains("No such file"));
    }
}
