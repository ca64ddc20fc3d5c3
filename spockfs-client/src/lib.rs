//! # spockfs-client
//!
//! An async client for SpockFS servers: one typed call per filesystem
//! operation (`client.getattr(path)`, `client.read(path, offset, len)`,
//! `client.write(path, offset, bytes)`, …), over one pooled set of
//! keep-alive connections (HTTP/1.1, or HTTP/2 negotiated by ALPN over TLS).
//!
//! - HTTPS with rustls: the system's roots plus any `ca_file`;
//! - basic auth from the URL's userinfo (`https://user:pass@host/fs`);
//! - a per-operation timeout (default 30 s) after which the call fails with
//!   `EIO`, like the original client;
//! - errors as [`Errno`]: the spec's status mapping, refined by
//!   `X-Spock-errno` when the server advertises the `errno` extension;
//!   [`Client::check`] (is a SpockFS server there?) fails with an [`Error`]
//!   that says why: connection refused, timeout, TLS (with rustls' reason),
//!   the HTTP status, or not a SpockFS server;
//! - every call logged at debug level with `tracing` (method, path,
//!   status, errno, duration);
//! - extensions (`readdir-attrs`, `fsync`, `errno`, `stat`, `parent-stat`,
//!   `nsec`, `identity`) used only when `OPTIONS` advertises them; with a
//!   plain 0.1 server it speaks only the spec;
//! - a restarted server is picked up transparently: dead pooled connections
//!   are replaced on the next call.
//! - uploads of any size with flat memory: [`Client::put_stream`],
//!   [`Client::put_file`], [`Client::put_reader`] (whole-file, atomic) and
//!   [`Client::write_stream`] (ranged, exactly `len` bytes), over the same
//!   pool.
//!
//! To mount a server as a local directory, see the `spockfs-mount` crate
//! (this one has no FUSE dependency).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use spockfs_client::Client;
//!
//! let fs = Client::new("http://127.0.0.1:8080/fs")?;
//! fs.mkdir(b"/docs", 0o755).await?;
//! fs.create(b"/docs/hello.txt", 0o644).await?;
//! fs.write(b"/docs/hello.txt", 0, bytes::Bytes::from_static(b"hello")).await?;
//! let data = fs.read(b"/docs/hello.txt", 0, 4096).await?;
//! assert_eq!(&data[..], b"hello");
//! let st = fs.getattr(b"/docs/hello.txt").await?;
//! assert_eq!(st.size, 5);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use spockfs_proto::headers::{get_parent, get_stat, get_statfs};
use spockfs_proto::readdir::{parse_body, Format};
use std::sync::Arc;
use std::time::Duration;
use transport::{hv, Inner};

mod builder;
mod error;
mod response;
mod transport;
mod upload;

pub use builder::{BuildError, ClientBuilder};
pub use error::{redact_url, Error, ErrorKind};
pub use response::{
    errno_of, parse_attrs_line, parse_extensions, parse_line, parse_listing, parse_readdir,
    parse_stat, parse_statfs, parse_xattr_list,
};
pub use spockfs_proto::ext::Extensions;
pub use spockfs_proto::path::encode_path;
pub use spockfs_proto::readdir::DirEntry;
pub use spockfs_proto::{Errno, SetTime, Stat, StatFs, XattrFlag};

/// Result of a filesystem call.
pub type FsResult<T> = Result<T, Errno>;

/// What a call that adds or removes a name learnt of the result, with the
/// server's `stat` and `parent-stat` extensions (saving GETATTR round
/// trips); all `None` without them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// The entry's attributes after the call (none for a removal).
    pub stat: Option<Stat>,
    /// The attributes of the directory holding the name, after the call.
    pub parent: Option<Stat>,
}

/// What became of a call whose answer was lost.
enum Lost {
    /// Its effect is there.
    Applied(Box<Changed>),
    /// The name is as it was before the call.
    NotApplied,
    /// Neither: the error stands.
    Unknown,
}

/// A SpockFS client. Cheap to clone; clones share the connection pool.
///
/// A call that is lost on the way — a proxy answers 502 because the node it
/// chose died with the request in flight, or the connection breaks before
/// the answer — is sent once more if doing it twice gives the same result
/// as once ([`Method::is_replay_safe`](spockfs_proto::Method::is_replay_safe):
/// reads, PUT, CHMOD, TRUNCATE, …); a gateway pooling several nodes on one
/// shared filesystem then sends it to another node. A lost create or
/// removal (POST, MKDIR, DELETE, RMDIR) is settled by a GETATTR: its effect
/// there is success, the name unchanged sends it again, anything else is
/// the error. Other calls (RENAME, LINK, …) fail with the error, as they
/// may have been applied.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// `X-Spock-caller` value, sent when the server speaks `identity`.
    caller: Option<HeaderValue>,
}

/// Who a call is made for: the `X-Spock-caller` identity (extension
/// `identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The `X-Spock-caller` value: `UID GID G1,G2,...`.
    ///
    /// ```
    /// let c = spockfs_client::Caller { uid: 1000, gid: 100, groups: vec![27, 100] };
    /// assert_eq!(c.header_value(), "1000 100 27,100");
    /// ```
    pub fn header_value(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{} {} {}", self.uid, self.gid, groups.join(","))
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `url` (`http(s)://[user:pass@]host[:port][/prefix]`)
    /// with the defaults of [`ClientBuilder`].
    pub fn new(url: &str) -> Result<Client, BuildError> {
        Client::builder(url).build()
    }

    /// Configures a client.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            timeout: Duration::from_secs(30),
            ca_files: Vec::new(),
            system_roots: true,
            http2_prior_knowledge: false,
        }
    }

    /// The same client (same pool), making its calls for `caller`: each
    /// request carries `X-Spock-caller` if the server speaks the `identity`
    /// extension (learnt from [`extensions`](Client::extensions)), so that a
    /// server that trusts this client acts as that user. `None`: no caller.
    ///
    /// ```
    /// use spockfs_client::{Caller, Client};
    /// let c = Client::new("http://127.0.0.1:8080/fs")?;
    /// let alice = c.with_caller(Some(&Caller { uid: 1000, gid: 1000, groups: vec![] }));
    /// # drop(alice);
    /// # Ok::<(), spockfs_client::BuildError>(())
    /// ```
    pub fn with_caller(&self, caller: Option<&Caller>) -> Client {
        Client {
            inner: self.inner.clone(),
            caller: caller.and_then(|c| HeaderValue::from_str(&c.header_value()).ok()),
        }
    }

    /// The extensions the server advertises (asked with `OPTIONS` until the
    /// server answers, then remembered; none if it answers anything but
    /// 200). A server that cannot be reached is asked again on the next call
    /// rather than remembered as speaking no extension.
    pub async fn extensions(&self) -> Extensions {
        let r = self
            .inner
            .extensions
            .get_or_try_init(|| async {
                match self.raw("OPTIONS", b"/", &[], Bytes::new()).await {
                    Ok(r) if r.status() == StatusCode::OK => Ok(parse_extensions(r.headers())),
                    Ok(_) => Ok(Extensions::default()),
                    Err(e) => Err(e),
                }
            })
            .await;
        r.copied().unwrap_or_default()
    }

    /// Checks that a SpockFS server answers at the URL, and learns its
    /// extensions: `OPTIONS` then `GETATTR /`, the root's attributes on
    /// success. Fails with the cause, for a message a user can act on:
    ///
    /// - the connection: [`ErrorKind::ConnectionRefused`],
    ///   [`ErrorKind::Timeout`], [`ErrorKind::Connect`];
    /// - TLS: [`ErrorKind::UntrustedCertificate`] (the server's certificate
    ///   is not signed by a trusted CA), [`ErrorKind::Certificate`] (rejected
    ///   for another reason), [`ErrorKind::Tls`] (e.g. `https://` to a plain
    ///   HTTP server), with rustls' reason;
    /// - [`ErrorKind::Status`]: 401 (credentials), 407, a 502/503/504 from a
    ///   proxy whose SpockFS server is down, any other error status of
    ///   `GETATTR /` (with its `X-Spock-errno`);
    /// - [`ErrorKind::NotSpockFs`]: something else answers HTTP there (no
    ///   SpockFS `Allow`/`X-Spock-*` headers, or 404 for `GETATTR /`: most
    ///   often a wrong path prefix).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use spockfs_client::{Client, ErrorKind};
    /// let fs = Client::new("http://127.0.0.1:8080/wrong-prefix")?;
    /// let err = fs.check().await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::NotSpockFs);
    /// eprintln!("{err}"); // no SpockFS server at this URL (GETATTR / answered HTTP 404 Not Found; is the path prefix right, e.g. /fs?)
    /// # Ok(()) }
    /// ```
    pub async fn check(&self) -> Result<Stat, Error> {
        let opts = self.send("OPTIONS", b"/", &[], Bytes::new()).await?;
        let status = opts.status();
        let h = opts.headers();
        let marked = h.keys().any(|k| k.as_str().starts_with("x-spock-"))
            || h.get(http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|m| m.trim() == "GETATTR"));
        match status.as_u16() {
            401 | 407 | 502..=504 => return Err(Error::from_status(status, h, false)),
            _ => {}
        }
        let ext = if status == StatusCode::OK && marked {
            parse_extensions(h)
        } else {
            Extensions::default()
        };
        let unmarked = if marked {
            None
        } else {
            Some(format!(
                "OPTIONS / answered HTTP {} without SpockFS's Allow or X-Spock-* headers",
                status.as_u16()
            ))
        };
        if status == StatusCode::OK && marked {
            // As extensions() would have learnt them.
            let _ = self.inner.extensions.set(ext);
        }
        let r = self.send("GETATTR", b"/", &[], Bytes::new()).await?;
        let (status, h) = (r.status(), r.headers());
        if status == StatusCode::OK && h.contains_key("x-spock-mode") {
            if !marked && self.inner.extensions.get().is_none() {
                // An old server, or a proxy eating OPTIONS: plain spec.
                let _ = self.inner.extensions.set(Extensions::default());
            }
            return Ok(get_stat(h));
        }
        let use_header = ext.errno;
        match status.as_u16() {
            401 | 407 | 502..=504 => Err(Error::from_status(status, h, use_header)),
            200 => Err(Error::not_spockfs(
                "GETATTR / answered HTTP 200 without X-Spock-mode".into(),
                Some(status),
                Errno::EIO,
            )),
            404 if !h.contains_key(&spockfs_proto::headers::X_SPOCK_ERRNO) => {
                Err(Error::not_spockfs(
                    "GETATTR / answered HTTP 404 Not Found".into(),
                    Some(status),
                    errno_of(status, h, use_header),
                ))
            }
            _ => match unmarked {
                Some(why) => Err(Error::not_spockfs(
                    why,
                    Some(status),
                    errno_of(status, h, use_header),
                )),
                None => Err(Error::from_status(status, h, use_header)),
            },
        }
    }

    /// The extensions learnt from the server so far, without asking it
    /// (`None` until [`extensions`](Client::extensions) got an answer).
    pub fn known_extensions(&self) -> Option<Extensions> {
        self.inner.extensions.get().copied()
    }

    /// `lstat`.
    pub async fn getattr(&self, path: &[u8]) -> FsResult<Stat> {
        let r = self
            .call("GETATTR", path, &[], Bytes::new(), &[200])
            .await?;
        Ok(get_stat(r.headers()))
    }

    /// A call that creates or changes the entry at `path`: with the `stat`
    /// extension, it also asks for the entry's attributes after the change.
    async fn change(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        ok: &[u16],
    ) -> FsResult<Option<Stat>> {
        self.change_in_dir(method, path, headers, ok)
            .await
            .map(|c| c.stat)
    }

    /// A change answered, where the server can, with the entry's and its
    /// directory's attributes.
    async fn change_in_dir(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&'static str, HeaderValue)],
        ok: &[u16],
    ) -> FsResult<Changed> {
        let ext = self.extensions().await;
        let mut h = headers.to_vec();
        if ext.stat || ext.parent_stat {
            h.push(("x-spock-stat", HeaderValue::from_static("1")));
        }
        let r = match self.request(method, path, &h, Bytes::new(), ok).await {
            Ok(r) => r,
            Err(e) if transport::lost_in_transit_error(&e) => {
                match self.resolve_lost(method, path).await {
                    Lost::Applied(c) => return Ok(*c),
                    // Nothing happened: doing it now is doing it once.
                    Lost::NotApplied => self.call(method, path, &h, Bytes::new(), ok).await?,
                    Lost::Unknown => return Err(e.errno()),
                }
            }
            Err(e) => return Err(e.errno()),
        };
        let hm = r.headers();
        Ok(Changed {
            // Absent if the entry vanished between the change and the stat.
            stat: hm.contains_key("x-spock-mode").then(|| get_stat(hm)),
            parent: get_parent(hm),
        })
    }

    /// A create or a removal whose answer was lost (a proxy's node died
    /// with it in flight): it may or may not have been applied, and blindly
    /// doing it again could fail where it succeeded. Looks at the result
    /// instead: the directory or empty file it creates is there, or the
    /// name it removes is gone, counts as applied (as an NFS server's
    /// duplicate request cache would answer; a concurrent client doing the
    /// same at the same instant is indistinguishable); the name still as it
    /// was before means not applied.
    async fn resolve_lost(&self, method: &str, path: &[u8]) -> Lost {
        use spockfs_proto::stat::mode::{S_IFDIR, S_IFMT, S_IFREG};
        let now = self.getattr(path).await;
        let applied = match (method, &now) {
            ("MKDIR", Ok(st)) => st.mode & S_IFMT == S_IFDIR,
            ("POST", Ok(st)) => st.mode & S_IFMT == S_IFREG && st.size == 0,
            ("DELETE" | "RMDIR", Err(Errno::ENOENT)) => true,
            _ => false,
        };
        let not_applied = match (method, &now) {
            ("MKDIR" | "POST", Err(Errno::ENOENT)) => true,
            ("DELETE", Ok(st)) => st.mode & S_IFMT != S_IFDIR,
            ("RMDIR", Ok(st)) => st.mode & S_IFMT == S_IFDIR,
            _ => false,
        };
        if not_applied {
            return Lost::NotApplied;
        }
        if !applied {
            return Lost::Unknown;
        }
        Lost::Applied(Box::new(Changed {
            stat: now.ok(),
            parent: None,
        }))
    }

    /// Lists a directory (without `.`/`..`); with `readdir-attrs`, each
    /// entry carries its attributes.
    pub async fn readdir(&self, path: &[u8]) -> FsResult<Vec<DirEntry>> {
        let ext = self.extensions().await;
        let format = match ext {
            Extensions {
                readdir_attrs: true,
                nsec: true,
                ..
            } => Some(Format::AttrsNsec),
            Extensions {
                readdir_attrs: true,
                ..
            } => Some(Format::Attrs),
            _ => None,
        };
        let hdrs: &[(&'static str, HeaderValue)] = match format {
            Some(f) => &[("x-spock-readdir", HeaderValue::from_static(f.name()))],
            None => &[],
        };
        let r = self
            .call("READDIR", path, hdrs, Bytes::new(), &[200])
            .await?;
        parse_body(r.body(), format)
    }

    /// `mknod`.
    ///
    /// With the server's `stat` and `parent-stat` extensions, the result
    /// carries the entry's and its directory's attributes after the call.
    pub async fn mknod(&self, path: &[u8], mode: u32, dev: u64) -> FsResult<Changed> {
        let h = [("x-spock-mode", hv(mode)), ("x-spock-dev", hv(dev as i64))];
        self.change_in_dir("MKNOD", path, &h, &[201]).await
    }

    /// `open` permission check with `flags`.
    pub async fn open(&self, path: &[u8], flags: i32) -> FsResult<()> {
        self.call(
            "OPEN",
            path,
            &[("x-spock-flag", hv(flags))],
            Bytes::new(),
            &[200],
        )
        .await
        .map(drop)
    }

    /// [`open`](Client::open), answering the file's attributes as of the
    /// open where the server has the `stat` extension (`None` otherwise):
    /// what a client checks its cached data against (close-to-open).
    pub async fn open_stat(&self, path: &[u8], flags: i32) -> FsResult<Option<Stat>> {
        self.change("OPEN", path, &[("x-spock-flag", hv(flags))], &[200])
            .await
    }

    /// `chmod`.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn chmod(&self, path: &[u8], mode: u32) -> FsResult<Option<Stat>> {
        self.change("CHMOD", path, &[("x-spock-mode", hv(mode))], &[200])
            .await
    }

    /// `lchown`; `None` leaves an id unchanged.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn chown(
        &self,
        path: &[u8],
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> FsResult<Option<Stat>> {
        let id = |v: Option<u32>| hv(v.map_or(-1, i64::from));
        let h = [("x-spock-uid", id(uid)), ("x-spock-gid", id(gid))];
        self.change("CHOWN", path, &h, &[200]).await
    }

    /// `truncate`.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn truncate(&self, path: &[u8], size: u64) -> FsResult<Option<Stat>> {
        self.change("TRUNCATE", path, &[("x-spock-size", hv(size))], &[200])
            .await
    }

    /// `access(mask)` (`R_OK|W_OK|X_OK`, or 0 for existence).
    pub async fn access(&self, path: &[u8], mask: u32) -> FsResult<()> {
        self.call(
            "ACCESS",
            path,
            &[("x-spock-mode", hv(mask))],
            Bytes::new(),
            &[200],
        )
        .await
        .map(drop)
    }

    /// `symlink(target, path)`.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn symlink(&self, path: &[u8], target: &[u8]) -> FsResult<Changed> {
        let t = HeaderValue::from_bytes(target).map_err(|_| Errno::EINVAL)?;
        self.change_in_dir("SYMLINK", path, &[("x-spock-target", t)], &[201])
            .await
    }

    /// `readlink`.
    pub async fn readlink(&self, path: &[u8]) -> FsResult<Vec<u8>> {
        Ok(self
            .call("READLINK", path, &[], Bytes::new(), &[200])
            .await?
            .into_body()
            .to_vec())
    }

    /// `rmdir`.
    pub async fn rmdir(&self, path: &[u8]) -> FsResult<Changed> {
        self.change_in_dir("RMDIR", path, &[], &[200]).await
    }

    /// `mkdir`.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn mkdir(&self, path: &[u8], mode: u32) -> FsResult<Changed> {
        self.change_in_dir("MKDIR", path, &[("x-spock-mode", hv(mode))], &[201])
            .await
    }

    /// `link(existing, path)`.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn link(&self, path: &[u8], existing: &[u8]) -> FsResult<Changed> {
        let t = HeaderValue::from_bytes(existing).map_err(|_| Errno::EINVAL)?;
        self.change_in_dir("LINK", path, &[("x-spock-target", t)], &[201])
            .await
    }

    /// `rename(from, to)`. With the server's extensions, the result
    /// carries `to`'s attributes and its directory's.
    pub async fn rename(&self, from: &[u8], to: &[u8]) -> FsResult<Changed> {
        let t = HeaderValue::from_bytes(from).map_err(|_| Errno::EINVAL)?;
        self.change_in_dir("RENAME", to, &[("x-spock-target", t)], &[200])
            .await
    }

    /// `fallocate(mode, offset, len)`.
    pub async fn fallocate(&self, path: &[u8], mode: i32, offset: u64, len: u64) -> FsResult<()> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = offset.checked_add(len - 1).ok_or(Errno::EFBIG)?;
        let h = [
            ("x-spock-mode", hv(mode)),
            ("range", hv(format_args!("bytes={offset}-{last}"))),
        ];
        self.call("FALLOCATE", path, &h, Bytes::new(), &[200])
            .await
            .map(drop)
    }

    /// `statvfs`.
    pub async fn statfs(&self, path: &[u8]) -> FsResult<StatFs> {
        let r = self.call("STATFS", path, &[], Bytes::new(), &[200]).await?;
        Ok(get_statfs(r.headers()))
    }

    /// `listxattr`: the names.
    pub async fn listxattr(&self, path: &[u8]) -> FsResult<Vec<Vec<u8>>> {
        let r = self
            .call(
                "LISTXATTR",
                path,
                &[("x-spock-size", hv(65536))],
                Bytes::new(),
                &[200],
            )
            .await?;
        Ok(parse_xattr_list(r.body()))
    }

    /// `getxattr`: the value.
    pub async fn getxattr(&self, path: &[u8], name: &[u8]) -> FsResult<Vec<u8>> {
        let n = HeaderValue::from_bytes(name).map_err(|_| Errno::EINVAL)?;
        let h = [("x-spock-target", n), ("x-spock-size", hv(65536))];
        Ok(self
            .call("GETXATTR", path, &h, Bytes::new(), &[200])
            .await?
            .into_body()
            .to_vec())
    }

    /// `setxattr`.
    pub async fn setxattr(
        &self,
        path: &[u8],
        name: &[u8],
        value: Bytes,
        flag: XattrFlag,
    ) -> FsResult<()> {
        let n = HeaderValue::from_bytes(name).map_err(|_| Errno::EINVAL)?;
        let h = [("x-spock-target", n), ("x-spock-flag", hv(flag.to_wire()))];
        self.call("SETXATTR", path, &h, value, &[200])
            .await
            .map(drop)
    }

    /// `removexattr`.
    pub async fn removexattr(&self, path: &[u8], name: &[u8]) -> FsResult<()> {
        let n = HeaderValue::from_bytes(name).map_err(|_| Errno::EINVAL)?;
        self.call(
            "REMOVEXATTR",
            path,
            &[("x-spock-target", n)],
            Bytes::new(),
            &[200],
        )
        .await
        .map(drop)
    }

    /// `utimensat` (never following a final symlink).
    ///
    /// With the server's `nsec` extension, the call is exactly
    /// `utimensat`'s: nanoseconds, and [`SetTime::Now`] and
    /// [`SetTime::Omit`] reach the server as `UTIME_NOW` and `UTIME_OMIT`
    /// (which matters for permissions: both times `Now` is allowed to a
    /// non-owner with write access, see [`SetTime`]). Without it (a 0.1
    /// server), times are whole seconds (nanoseconds dropped), `Now` is
    /// this machine's clock, and `Omit` is the current value, read with a
    /// GETATTR first; both `Omit` sends nothing.
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn utimens(
        &self,
        path: &[u8],
        atime: SetTime,
        mtime: SetTime,
    ) -> FsResult<Option<Stat>> {
        if !atime.is_valid() || !mtime.is_valid() {
            return Err(Errno::EINVAL);
        }
        if !self.extensions().await.nsec {
            if (atime, mtime) == (SetTime::Omit, SetTime::Omit) {
                return Ok(None);
            }
            let old = if atime == SetTime::Omit || mtime == SetTime::Omit {
                Some(self.getattr(path).await?)
            } else {
                None
            };
            let now = unix_now();
            let secs = |t: SetTime, old: Option<i64>| match t {
                SetTime::Now => now,
                SetTime::Omit => old.unwrap_or(now),
                SetTime::At { sec, .. } => sec,
            };
            let (a, m) = (
                secs(atime, old.map(|s| s.atime)),
                secs(mtime, old.map(|s| s.mtime)),
            );
            let h = [("x-spock-atime", hv(a)), ("x-spock-mtime", hv(m))];
            return self.change("UTIMENS", path, &h, &[200]).await;
        }
        let mut h = Vec::with_capacity(4);
        for (t, name, nsec_name) in [
            (atime, "x-spock-atime", "x-spock-atime-nsec"),
            (mtime, "x-spock-mtime", "x-spock-mtime-nsec"),
        ] {
            match t {
                SetTime::Now => h.push((name, HeaderValue::from_static("now"))),
                SetTime::Omit => h.push((name, HeaderValue::from_static("omit"))),
                SetTime::At { sec, nsec } => {
                    h.push((name, hv(sec)));
                    if nsec != 0 {
                        h.push((nsec_name, hv(nsec)));
                    }
                }
            }
        }
        self.change("UTIMENS", path, &h, &[200]).await
    }

    /// `creat(path, mode)` (the server adds `S_IWUSR`).
    ///
    /// With the server's `stat` extension, the result carries the entry's
    /// attributes after the call (saving a GETATTR); `None` otherwise.
    pub async fn create(&self, path: &[u8], mode: u32) -> FsResult<Changed> {
        self.change_in_dir("POST", path, &[("x-spock-mode", hv(mode))], &[201])
            .await
    }

    /// `unlink`. With the server's `parent-stat` extension, the result
    /// carries the directory's attributes after the call.
    pub async fn unlink(&self, path: &[u8]) -> FsResult<Changed> {
        self.change_in_dir("DELETE", path, &[], &[200]).await
    }

    /// `fsync`/`fdatasync`; a no-op on servers without the `fsync`
    /// extension.
    pub async fn fsync(&self, path: &[u8], datasync: bool) -> FsResult<()> {
        if !self.extensions().await.fsync {
            return Ok(());
        }
        let h = [("x-spock-flag", hv(i32::from(datasync)))];
        self.call("FSYNC", path, &h, Bytes::new(), &[200])
            .await
            .map(drop)
    }

    /// Reads up to `len` bytes at `offset` (fewer at end of file).
    pub async fn read(&self, path: &[u8], offset: u64, len: u64) -> FsResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let last = offset.saturating_add(len - 1);
        let h = [("range", hv(format_args!("bytes={offset}-{last}")))];
        let r = self
            .call("GET", path, &h, Bytes::new(), &[200, 206])
            .await?;
        let status = r.status();
        let mut body = r.into_body();
        if status == StatusCode::OK {
            // A server that ignored the range: cut out what was asked for.
            let start = (offset as usize).min(body.len());
            let end = start.saturating_add(len as usize).min(body.len());
            body = body.slice(start..end);
        }
        if body.len() as u64 > len {
            body.truncate(len as usize);
        }
        Ok(body)
    }

    /// Writes `data` at `offset` of an existing file.
    pub async fn write(&self, path: &[u8], offset: u64, data: Bytes) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let last = offset
            .checked_add(data.len() as u64 - 1)
            .ok_or(Errno::EFBIG)?;
        let h = [("content-range", hv(format_args!("bytes={offset}-{last}")))];
        self.call("PUT", path, &h, data, &[200]).await.map(drop)
    }

    /// Replaces a whole file atomically (created if missing).
    pub async fn put(&self, path: &[u8], data: Bytes) -> FsResult<()> {
        self.call("PUT", path, &[], data, &[200, 201])
            .await
            .map(drop)
    }
}

/// This machine's clock, unix seconds.
fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_lines() {
        let e = parse_attrs_line(b"33188 7 1 0 0 5 8 1 2 3 a name").unwrap_or_else(|| panic!());
        assert_eq!(e.name, b"a name");
        assert_eq!(
            e.stat.map(|s| (s.mode, s.size, s.mtime)),
            Some((33188, 5, 2))
        );
        assert!(parse_attrs_line(b"1 2 3").is_none());
        assert!(parse_attrs_line(b"x 7 1 0 0 5 8 1 2 3 n").is_none());
    }

    #[test]
    fn urls() {
        assert!(Client::new("ftp://x/").is_err());
        assert!(Client::new("not a url").is_err());
        let bad = Client::new("http://al:s3cret@ho st/fs").map(drop);
        let msg = bad.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(
            msg.starts_with("bad SpockFS URL \"http://***@ho st/fs\""),
            "{msg}"
        );
        let bad = Client::new("ftp://al:s3cret@host/fs").map(drop);
        let msg = bad.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(
            msg.starts_with("bad SpockFS URL \"ftp://al:***@host/fs\""),
            "{msg}"
        );
        let bad = Client::new("http://al:s3/cret@host/fs").map(drop);
        let msg = bad.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(!msg.contains("cret"), "{msg}");
        let c = Client::new("https://u%40x:p%3Ass@host:8443/fs/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.inner.base, "https://host:8443/fs");
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u@x:p:ss")
        );
        assert_eq!(
            c.inner.auth.as_ref().and_then(|v| v.to_str().ok()),
            Some(want.as_str())
        );
    }
}
