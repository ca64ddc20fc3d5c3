//! The SpockFS methods: their names on the wire and the `Allow` list.

/// Every method this server answers: the 25 of SpockFS 0.1, HEAD, OPTIONS,
/// and the `FSYNC` extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Method {
    Readdir,
    Getattr,
    Mknod,
    Open,
    Chmod,
    Chown,
    Truncate,
    Access,
    Symlink,
    Readlink,
    Rmdir,
    Mkdir,
    Link,
    Rename,
    Fallocate,
    Statfs,
    Listxattr,
    Getxattr,
    Setxattr,
    Removexattr,
    Utimens,
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Fsync,
}

/// The value of the `Allow` header: every method, comma separated.
pub const ALLOW: &str = "READDIR, GETATTR, MKNOD, OPEN, CHMOD, CHOWN, TRUNCATE, ACCESS, SYMLINK, \
READLINK, RMDIR, MKDIR, LINK, RENAME, FALLOCATE, STATFS, LISTXATTR, GETXATTR, SETXATTR, \
REMOVEXATTR, UTIMENS, GET, HEAD, PUT, POST, DELETE, OPTIONS, FSYNC";

pub use crate::ext::{EXTENSIONS, EXTENSIONS_WITH_IDENTITY};

impl Method {
    /// All methods.
    pub const ALL: [Method; 28] = [
        Method::Readdir,
        Method::Getattr,
        Method::Mknod,
        Method::Open,
        Method::Chmod,
        Method::Chown,
        Method::Truncate,
        Method::Access,
        Method::Symlink,
        Method::Readlink,
        Method::Rmdir,
        Method::Mkdir,
        Method::Link,
        Method::Rename,
        Method::Fallocate,
        Method::Statfs,
        Method::Listxattr,
        Method::Getxattr,
        Method::Setxattr,
        Method::Removexattr,
        Method::Utimens,
        Method::Get,
        Method::Head,
        Method::Put,
        Method::Post,
        Method::Delete,
        Method::Options,
        Method::Fsync,
    ];

    /// The method name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Readdir => "READDIR",
            Method::Getattr => "GETATTR",
            Method::Mknod => "MKNOD",
            Method::Open => "OPEN",
            Method::Chmod => "CHMOD",
            Method::Chown => "CHOWN",
            Method::Truncate => "TRUNCATE",
            Method::Access => "ACCESS",
            Method::Symlink => "SYMLINK",
            Method::Readlink => "READLINK",
            Method::Rmdir => "RMDIR",
            Method::Mkdir => "MKDIR",
            Method::Link => "LINK",
            Method::Rename => "RENAME",
            Method::Fallocate => "FALLOCATE",
            Method::Statfs => "STATFS",
            Method::Listxattr => "LISTXATTR",
            Method::Getxattr => "GETXATTR",
            Method::Setxattr => "SETXATTR",
            Method::Removexattr => "REMOVEXATTR",
            Method::Utimens => "UTIMENS",
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Fsync => "FSYNC",
        }
    }

    /// Parses an HTTP method (case-sensitive, as HTTP methods are).
    ///
    /// ```
    /// use spockfs_proto::Method;
    /// let m = http::Method::from_bytes(b"READDIR").unwrap();
    /// assert_eq!(Method::from_http(&m), Some(Method::Readdir));
    /// assert_eq!(Method::from_http(&http::Method::PATCH), None);
    /// ```
    pub fn from_http(m: &http::Method) -> Option<Method> {
        let s = m.as_str();
        Method::ALL.iter().copied().find(|x| x.as_str() == s)
    }

    /// The `http::Method` value.
    pub fn to_http(self) -> http::Method {
        match self {
            Method::Get => http::Method::GET,
            Method::Head => http::Method::HEAD,
            Method::Put => http::Method::PUT,
            Method::Post => http::Method::POST,
            Method::Delete => http::Method::DELETE,
            Method::Options => http::Method::OPTIONS,
            other => {
                http::Method::from_bytes(other.as_str().as_bytes()).unwrap_or(http::Method::OPTIONS)
            }
        }
    }

    /// True if sending this request a second time gives the result the
    /// first would have had, whether or not the first reached the
    /// filesystem: what a proxy (or a client) may replay on another node of
    /// a pool sharing one filesystem when the node it sent it to died
    /// before answering (RFC 9110's idempotent methods, decided per SpockFS
    /// call). Reads; and the writes that carry absolute values: PUT (ranged
    /// or whole), CHMOD, CHOWN, TRUNCATE, UTIMENS, FSYNC, SETXATTR unless
    /// `XATTR_CREATE`, FALLOCATE mode 0, OPEN unless `O_CREAT|O_EXCL`. Not
    /// POST, MKDIR, MKNOD, SYMLINK, LINK, RENAME, DELETE, RMDIR, REMOVEXATTR:
    /// a second try can fail (`EEXIST`, `ENOENT`) where the first succeeded.
    /// A header this depends on that does not parse makes it unsafe.
    ///
    /// ```
    /// use spockfs_proto::Method;
    /// let mut h = http::HeaderMap::new();
    /// assert!(Method::Put.is_replay_safe(&h));
    /// assert!(!Method::Rename.is_replay_safe(&h));
    /// assert!(!Method::Post.is_replay_safe(&h)); // a second create: EEXIST
    /// h.insert("x-spock-flag", http::HeaderValue::from_static("1"));
    /// assert!(!Method::Setxattr.is_replay_safe(&h)); // XATTR_CREATE
    /// ```
    pub fn is_replay_safe(self, headers: &http::HeaderMap) -> bool {
        // A numeric header; absent is 0.
        let num = |name: &str| -> Option<i64> {
            match headers.get(name) {
                None => Some(0),
                Some(v) => v.to_str().ok()?.trim().parse().ok(),
            }
        };
        let create_excl = i64::from(libc::O_CREAT | libc::O_EXCL);
        match self {
            Method::Open => num("x-spock-flag").is_some_and(|f| f & create_excl != create_excl),
            m if m.is_idempotent_read() => true,
            Method::Put
            | Method::Chmod
            | Method::Chown
            | Method::Truncate
            | Method::Utimens
            | Method::Fsync => true,
            Method::Setxattr => num("x-spock-flag").is_some_and(|f| f != 1),
            Method::Fallocate => num("x-spock-mode") == Some(0),
            _ => false,
        }
    }

    /// True if the method never changes anything, whatever its headers, so
    /// it may be retried on another node.
    pub fn is_idempotent_read(self) -> bool {
        matches!(
            self,
            Method::Readdir
                | Method::Getattr
                | Method::Open
                | Method::Access
                | Method::Readlink
                | Method::Statfs
                | Method::Listxattr
                | Method::Getxattr
                | Method::Get
                | Method::Head
                | Method::Options
        )
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
