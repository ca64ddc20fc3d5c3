//! The engine: request head + body stream in, response head + body stream
//! out. Framework adapters hand it an `http::Request` and send back the
//! `http::Response` it returns; nothing else about a request is decided
//! outside this module.
//!
//! The work is split like tower-http's `ServeDir`: [`parse`] decides what a
//! request means (method, path, headers → an [`Op`] or a 4xx), `execute`
//! runs it against the backend on a blocking thread, and the response
//! builders turn the outcome into status, headers and body.

use crate::backend::{
    Backend, Devices, FileHandle, Owner, Replacement, SetId, SetTime, Stat, StatFs, XattrFlag,
};
use crate::body::{read_chunk, BodyReaper, SpockBody};
use crate::headers::{
    self as h, parse_content_range, parse_range, BadHeader, ByteRange, X_SPOCK_CALLER,
    X_SPOCK_ERRNO, X_SPOCK_EXTENSIONS, X_SPOCK_POLICY, X_SPOCK_READDIR, X_SPOCK_STAT,
    X_SPOCK_VERSION,
};
use crate::identity::{self, CallerError};
use crate::method::{Method, ALLOW, EXTENSIONS, EXTENSIONS_WITH_IDENTITY};
use crate::mount::{Mount, MountTable, SelectError, Selected};
use crate::pool::{BlockingPool, JobHandle};
use crate::sites::{SiteError, SitesDir};
use crate::{Errno, FsPath, FsResult, Identity};
use bytes::{Buf, Bytes, BytesMut};
use headers::HeaderMapExt;
use http::header::{HeaderValue, ALLOW as ALLOW_HDR, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// A boxed error, as request bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tunables, each with its default.
///
/// The limits that protect the host (`max_requests`, `max_put_size`,
/// `readdir_max_entries`, `body_timeout`) answer with the usual SpockFS
/// error form: the status, `X-Spock-errno` and a one-line body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest xattr value or list (LISTXATTR/GETXATTR/SETXATTR), bytes;
    /// larger is 413. Default 64 KiB (the Linux limit for one value).
    pub xattr_size: usize,
    /// Bytes per disk read/write when streaming GET and PUT bodies. Default
    /// 256 KiB.
    pub chunk_size: usize,
    /// Most threads running filesystem calls at once (they are created on
    /// demand and exit after 10 s idle). Default 128.
    pub blocking_threads: usize,
    /// Largest ranged PUT accepted without a known body length (chunked
    /// transfer encoding): such bodies are buffered to check their length
    /// before anything is written; larger ones get 411. Default 1 MiB.
    pub max_unsized_range_put: usize,
    /// How much of an unread request body is drained before an error
    /// response so the connection can be kept alive; past it the connection
    /// is closed. Default 1 MiB.
    pub drain: usize,
    /// Most requests in progress at once (from the request head to the end
    /// of the response body, so a streaming GET or READDIR counts until it
    /// is sent). `0`: no limit. Default 1024. A request over the limit waits
    /// up to [`max_requests_wait`](Limits::max_requests_wait) for a slot,
    /// with at most `max_requests` requests waiting; then (or at once when
    /// that many already wait) it is answered 503 with `Retry-After` and
    /// `X-Spock-errno: EAGAIN`, having touched nothing.
    pub max_requests: usize,
    /// How long a request over [`max_requests`](Limits::max_requests) waits
    /// for a slot before its 503. A short wait absorbs bursts (a FUSE
    /// client turns a 503 into `EIO` for the user), and the bounded queue
    /// keeps an overload from piling up. Default 500 ms.
    pub max_requests_wait: Duration,
    /// Largest PUT body, bytes; more is 413 (`X-Spock-errno: EFBIG`) and
    /// nothing is written: a `Content-Length` over it is refused before the
    /// file is opened, a chunked body as soon as it passes the limit (a
    /// whole-file PUT then leaves the previous content intact, a ranged one
    /// is checked before any write). `None`: no limit (the default; the
    /// filesystem's free space is the limit).
    pub max_put_size: Option<u64>,
    /// Most entries one READDIR may list; a larger directory is 413
    /// (`X-Spock-errno: E2BIG`), decided before anything is sent (the
    /// directory is counted first, which costs one extra pass over its
    /// entries, without `stat`). If the directory grows past the limit
    /// between that count and the end of the listing, the body is aborted
    /// (after a 200 head that is the only honest signal). `None`: no limit
    /// (the default: listings stream in batches with flat memory whatever
    /// their size, so a large directory costs time, not memory).
    pub readdir_max_entries: Option<u64>,
    /// Request body deadline (PUT, SETXATTR): each
    /// [`chunk_size`](Limits::chunk_size) bytes of a body (or its rest, if
    /// shorter) must arrive within this time. A body that stalls, or
    /// trickles slower than `chunk_size / body_timeout` on average (8.7 KB/s
    /// with the defaults), is answered 408 (`X-Spock-errno: ETIMEDOUT`) as
    /// soon as a chunk is late; nothing more is written (a whole-file PUT
    /// leaves the previous content intact) and the connection is closed.
    /// Default 30 s.
    pub body_timeout: Duration,
    /// Response deadline: a response body that the transport stops pulling
    /// (a client that reads nothing, an HTTP/2 stream whose flow-control
    /// window stays at zero) for this long is aborted, and its request slot
    /// ([`max_requests`](Limits::max_requests)) and open file or directory
    /// are released at once, whether or not the transport ever polls the
    /// body again (it fails if it does). One background task per engine
    /// checks every in-flight body a few times per timeout, so the abort
    /// comes between 1 and 1.25 times this after the body last moved. A
    /// body pulls a [`chunk_size`](Limits::chunk_size) at a time, so a
    /// client reading slower than `chunk_size / write_timeout` on average
    /// (4.4 KB/s with the defaults) is cut off too. Bodies that hold
    /// nothing (no slot, no file) and empty bodies are not watched.
    /// `None`: off. Default 60 s.
    pub write_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            xattr_size: 64 * 1024,
            chunk_size: 256 * 1024,
            blocking_threads: 128,
            max_unsized_range_put: 1024 * 1024,
            drain: 1024 * 1024,
            max_requests: 1024,
            max_requests_wait: Duration::from_millis(500),
            max_put_size: None,
            readdir_max_entries: None,
            body_timeout: Duration::from_secs(30),
            write_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Entries per READDIR batch: each batch is one job on the blocking pool
/// and one body frame. A listing that fits in the first batch is sent with
/// a `Content-Length`; a longer one is streamed (chunked).
pub const READDIR_BATCH: usize = 256;

/// The concurrency limit ([`Limits::max_requests`]): a semaphore and a
/// bounded count of waiters. Engines built with the same `Limiter` share
/// one limit (the gateway serves several vhosts under one cap).
#[derive(Debug, Clone)]
pub struct Limiter {
    sem: Option<Arc<tokio::sync::Semaphore>>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    max_waiting: usize,
    wait: Duration,
}

impl Limiter {
    /// At most `max` requests at once (`0`: no limit), at most `max` more
    /// waiting up to `wait` each.
    pub fn new(max: usize, wait: Duration) -> Limiter {
        Limiter {
            sem: (max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max))),
            waiting: Arc::default(),
            max_waiting: max,
            wait,
        }
    }

    /// From [`Limits::max_requests`] and [`Limits::max_requests_wait`].
    pub fn from_limits(l: &Limits) -> Limiter {
        Limiter::new(l.max_requests, l.max_requests_wait)
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.sem
            .as_ref()
            .map_or(0, |s| self.max_waiting - s.available_permits())
    }

    /// A slot, or `Err` if none freed up in time (or the queue is full).
    async fn acquire(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(sem) = &self.sem else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.waiting.fetch_add(1, SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, SeqCst);
            return Err(());
        }
        let r = tokio::time::timeout(self.wait, sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, SeqCst);
        match r {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(()),
        }
    }
}

/// The SpockFS request engine. Cheap to share (`Arc` it); stateless
/// between requests.
///
/// ```
/// use spockfs_core::{Engine, Mount, MemFs};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = Engine::builder().default_mount(Mount::new(MemFs::new())).build();
/// let req = http::Request::builder()
///     .method("MKDIR")
///     .uri("/docs")
///     .header("host", "example.com")
///     .header("x-spock-mode", "493")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())
///     .unwrap();
/// let resp = engine.handle(req).await;
/// assert_eq!(resp.status(), 201);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    mounts: MountTable,
    limits: Limits,
    pool: BlockingPool,
    limiter: Limiter,
    /// Aborts response bodies past [`Limits::write_timeout`].
    reaper: Option<BodyReaper>,
}

/// Builds an [`Engine`], or anything made from one (`T`: an adapter's
/// service, so that adapters share these options instead of copying them).
#[derive(Debug)]
pub struct EngineBuilder<T = Engine> {
    mounts: MountTable,
    limits: Limits,
    limiter: Option<Limiter>,
    output: std::marker::PhantomData<fn() -> T>,
}

impl<T> Default for EngineBuilder<T> {
    fn default() -> Self {
        EngineBuilder {
            mounts: MountTable::default(),
            limits: Limits::default(),
            limiter: None,
            output: std::marker::PhantomData,
        }
    }
}

impl<T: From<Engine>> EngineBuilder<T> {
    /// Serves `dir` (a [`LocalFs`](crate::LocalFs)) when no vhost matches.
    pub fn root(self, dir: impl AsRef<Path>) -> Self {
        self.default_mount(Mount::local(dir))
    }

    /// Serves `mount` when no vhost matches. Default: none (404).
    pub fn default_mount(mut self, mount: Mount) -> Self {
        self.mounts.set_default(mount);
        self
    }

    /// Serves `mount` for requests to `host` (`"example.com"` or
    /// `"example.com:8080"`; case-insensitive; `host:port` is tried before
    /// `host`).
    pub fn vhost(mut self, host: &str, mount: Mount) -> Self {
        self.mounts.insert_vhost(host, mount);
        self
    }

    /// Serves hosts that no vhost names from the sites directory `sites`
    /// (`DIR/<host>`, looked up per request); a host without a site is
    /// 404, never the default root. Default: none.
    pub fn sites(mut self, sites: SitesDir) -> Self {
        self.mounts.set_sites(sites);
        self
    }

    /// Replaces all limits. Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Largest xattr value or list. Default 64 KiB.
    pub fn xattr_limit(mut self, bytes: usize) -> Self {
        self.limits.xattr_size = bytes;
        self
    }

    /// Bytes per streamed read/write. Default 256 KiB.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.limits.chunk_size = bytes.max(4096);
        self
    }

    /// Shares `limiter` (and so one [`Limits::max_requests`] budget) with
    /// other engines. Default: a limiter of this engine's own, from its
    /// limits.
    pub fn limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The engine (or what `T` makes of it).
    pub fn build(self) -> T {
        T::from(Engine {
            pool: BlockingPool::new(self.limits.blocking_threads),
            reaper: self.limits.write_timeout.map(BodyReaper::new),
            limiter: self
                .limiter
                .unwrap_or_else(|| Limiter::from_limits(&self.limits)),
            mounts: self.mounts,
            limits: self.limits,
        })
    }
}

/// True if a request may change the filesystem: what a read-only mount
/// refuses with 403 `EROFS`. The decision of [`Op::is_mutating`] on the
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
        Ok((op, _)) => op.is_mutating(),
        Err(_) => true,
    }
}

/// What a request asks for, fully parsed.
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
    Setxattr {
        name: Vec<u8>,
        flag: XattrFlag,
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
    Put {
        range: Option<(u64, u64)>,
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
                | Op::Put { range: None }
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
        matches!(
            self,
            Op::Post { .. }
                | Op::Mkdir { .. }
                | Op::Mknod { .. }
                | Op::Symlink { .. }
                | Op::Link { .. }
                | Op::Rename { .. }
                | Op::Chmod { .. }
                | Op::Chown { .. }
                | Op::Truncate { .. }
                | Op::Utimens { .. }
                | Op::Fallocate { .. }
        )
    }
}

/// A request refused before touching the filesystem.
#[derive(Debug)]
pub struct Reject {
    status: StatusCode,
    errno: Errno,
    message: String,
}

impl Reject {
    fn bad(message: impl Into<String>) -> Reject {
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
pub fn parse(method: Method, path: &str, headers: &HeaderMap) -> Result<(Op, FsPath), Reject> {
    let path = FsPath::from_url_path(path).map_err(|e| path_reject("invalid path", e))?;
    use h::{optional as opt, required as req};
    let op = match method {
        Method::Readdir => {
            let (attrs, nsec) = match headers.get(&X_SPOCK_READDIR) {
                None => (false, false),
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"attrs") => (true, false),
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"attrs-nsec") => (true, true),
                Some(_) => {
                    return Err(Reject::bad(
                        "malformed header X-Spock-readdir: expected 'attrs' or 'attrs-nsec'",
                    ))
                }
            };
            Op::Readdir { attrs, nsec }
        }
        Method::Getattr => Op::Getattr,
        Method::Mknod => Op::Mknod {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
            dev: opt::<h::XSpockDev>(headers, "X-Spock-dev")?.map_or(0, |d| d.0 as u64),
        },
        Method::Open => {
            let flags = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            let flags = i32::try_from(flags)
                .map_err(|_| Reject::bad("malformed header X-Spock-flag: out of range"))?;
            Op::Open { flags }
        }
        Method::Chmod => Op::Chmod {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        },
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
        },
        Method::Truncate => {
            let size = req::<h::XSpockSize>(headers, "X-Spock-size")?.0;
            if size > i64::MAX as u64 {
                return Err(Reject::bad("malformed header X-Spock-size: out of range"));
            }
            Op::Truncate { size }
        }
        Method::Access => {
            let mask = req::<h::XSpockMode>(headers, "X-Spock-mode")?.0;
            if mask > 7 {
                return Err(Reject::bad(
                    "malformed header X-Spock-mode: ACCESS takes R_OK|W_OK|X_OK (0 to 7)",
                ));
            }
            Op::Access { mask }
        }
        Method::Symlink => {
            let target = h::required_target(headers)?;
            if target.is_empty() {
                return Err(Reject::bad(
                    "malformed header X-Spock-target: empty symlink target",
                ));
            }
            Op::Symlink { target }
        }
        Method::Readlink => Op::Readlink,
        Method::Rmdir => Op::Rmdir,
        Method::Mkdir => Op::Mkdir {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        },
        Method::Link => Op::Link {
            existing: target_path(headers)?,
        },
        Method::Rename => Op::Rename {
            from: target_path(headers)?,
        },
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
        }
        Method::Statfs => Op::Statfs,
        Method::Listxattr => Op::Listxattr {
            size: opt::<h::XSpockSize>(headers, "X-Spock-size")?.map(|s| s.0),
        },
        Method::Getxattr => Op::Getxattr {
            name: xattr_name(headers)?,
            size: opt::<h::XSpockSize>(headers, "X-Spock-size")?.map(|s| s.0),
        },
        Method::Setxattr => {
            let flag = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            Op::Setxattr {
                name: xattr_name(headers)?,
                flag: XattrFlag::from_wire(flag).map_err(|_| {
                    Reject::bad("malformed header X-Spock-flag: expected 0, 1 (XATTR_CREATE) or 2 (XATTR_REPLACE)")
                })?,
            }
        }
        Method::Removexattr => Op::Removexattr {
            name: xattr_name(headers)?,
        },
        Method::Utimens => Op::Utimens {
            atime: h::set_time(headers, h::TimeField::Atime)?,
            mtime: h::set_time(headers, h::TimeField::Mtime)?,
        },
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
            Op::Put { range }
        }
        Method::Post => Op::Post {
            mode: req::<h::XSpockMode>(headers, "X-Spock-mode")?.0,
        },
        Method::Delete => Op::Delete,
        Method::Fsync => {
            let flag = opt::<h::XSpockFlag>(headers, "X-Spock-flag")?.map_or(0, |f| f.0);
            Op::Fsync {
                datasync: flag == 1,
            }
        }
        Method::Options => return Err(Reject::bad("OPTIONS has no operation")),
    };
    if op.names_entry() && path.name().is_some_and(|n| n.contains(&b'\n')) {
        // READDIR lists one name per line: such a name could never be
        // listed, and its directory could never be emptied by a client.
        return Err(Reject::bad(
            "a name containing a newline cannot be listed by READDIR and is refused",
        ));
    }
    Ok((op, path))
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

/// What executing an operation produced.
enum Outcome {
    /// A READDIR longer than one batch: the first batch, and the open
    /// directory to stream the rest from.
    Listing {
        first: Bytes,
        dir: Box<dyn crate::backend::DirStream>,
        attrs: Option<crate::listing::Format>,
        path: FsPath,
        budget: Option<u64>,
    },
    /// Refused after a look at the filesystem, with the reason.
    Refused(Reject),
    /// A READDIR over [`Limits::readdir_max_entries`].
    TooManyEntries {
        count: u64,
        max: u64,
    },
    Status(StatusCode),
    Stat(Stat),
    /// A success status with the entry's attributes after the change (the
    /// `stat` extension), and its directory's (`parent-stat`), where known.
    StatusStat(StatusCode, Option<Stat>, Option<Stat>),
    StatFs(StatFs),
    Body(Bytes),
    Size(u64),
    File {
        status: StatusCode,
        head: bool,
        file: Option<Arc<dyn FileHandle>>,
        first: Bytes,
        offset: u64,
        len: u64,
        size: u64,
    },
}

impl Engine {
    /// An engine with no mounts yet.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine serving one local directory.
    pub fn new(dir: impl AsRef<Path>) -> Engine {
        Engine::builder().root(dir).build()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The mounts this engine serves.
    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    /// Answers one request. Never fails: every error is a response (4xx/5xx
    /// with `X-Spock-errno` and a one-line text body). The request path is
    /// `req.uri().path()`, already stripped of any mount prefix.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<SpockBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let span = tracing::debug_span!(
            "spockfs",
            method = %req.method(),
            path = %req.uri().path(),
        );
        async move {
            let start = Instant::now();
            let resp = self.handle_inner(req).await;
            let status = resp.status();
            let errno = resp
                .headers()
                .get(&X_SPOCK_ERRNO)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let elapsed_us = start.elapsed().as_micros() as u64;
            if status.is_server_error() {
                tracing::warn!(
                    status = status.as_u16(),
                    errno,
                    elapsed_us,
                    "request failed"
                );
            } else {
                tracing::debug!(status = status.as_u16(), errno, elapsed_us, "request done");
            }
            resp
        }
        .instrument(span)
        .await
    }

    async fn handle_inner<B>(&self, req: Request<B>) -> Response<SpockBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let mut body = std::pin::pin!(body);
        let resp = match self.limiter.acquire().await {
            Ok(permit) => {
                let resp = self.answer(&parts, body.as_mut()).await;
                match permit {
                    Some(p) => resp.map(|b| b.with_permit(p)),
                    None => resp,
                }
            }
            Err(()) => busy_response(self.limiter.wait),
        };
        let resp = self.finish(parts.version, resp, body.as_mut()).await;
        match &self.reaper {
            Some(r) => resp.map(|b| b.watched(r)),
            None => resp,
        }
    }

    /// The response to a request; its body may be left partly unread.
    async fn answer<B>(
        &self,
        parts: &http::request::Parts,
        body: Pin<&mut B>,
    ) -> Response<SpockBody>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let Some(method) = Method::from_http(&parts.method) else {
            let mut r = reject(Reject {
                status: StatusCode::METHOD_NOT_ALLOWED,
                errno: Errno::ENOSYS,
                message: format!("method {} is not a SpockFS method", parts.method),
            });
            r.headers_mut()
                .insert(ALLOW_HDR, HeaderValue::from_static(ALLOW));
            return r;
        };
        let mount = self.select(parts).await;
        if method == Method::Options {
            return options_response(mount.as_ref().ok());
        }
        let mount = match mount {
            Ok(m) => m,
            Err(rej) => return reject(rej),
        };
        let (op, path) = match parse(method, parts.uri.path(), &parts.headers) {
            Ok(x) => x,
            Err(rej) => return reject(rej),
        };
        if mount.is_read_only() && op.is_mutating() {
            return errno_response(Errno::EROFS, "read-only mount");
        }
        let op = match apply_policy(&mount, op) {
            Ok(op) => op,
            Err(rej) => return reject(rej),
        };
        let who = match identity_of(parts, &mount) {
            Ok(who) => who,
            Err(rej) => return reject(rej),
        };
        let cx = Cx {
            backend: mount.backend(),
            who: &who,
        };
        let result = match op {
            Op::Put { range } => self.put(&mount, cx, path, range, body).await,
            Op::Setxattr { name, flag } => self.setxattr(cx, path, name, flag, body).await,
            op => {
                let wants = wants_stat(&parts.headers);
                let stat = Stats {
                    entry: wants && op.can_stat(),
                    parent: wants && op.changes_parent(),
                };
                self.execute(&mount, cx, path, op, stat).await
            }
        };
        match result {
            Ok(outcome) => self.respond(outcome, cx),
            Err(Fail::Errno(e)) => errno_response(e, ""),
            Err(Fail::Reject(rej)) => reject(rej),
        }
    }

    /// The mount a request is for; a site of the sites directory that is
    /// not open yet is opened on the blocking pool, as the server itself.
    async fn select(&self, parts: &http::request::Parts) -> Result<Mount, Reject> {
        let lookup = match self.mounts.select(parts) {
            Ok(Selected::Mount(m)) => return Ok(m),
            Ok(Selected::Lookup(l)) => l,
            Err(SelectError::MissingHost) => {
                return Err(Reject::bad("HTTP/1.1 request without Host header"))
            }
            Err(SelectError::NoMount) => {
                return Err(Reject {
                    status: StatusCode::NOT_FOUND,
                    errno: Errno::ENOENT,
                    message: "no SpockFS root for this host".into(),
                })
            }
        };
        let opened = joined(
            self.pool
                .run(move || identity::run_as(None, || lookup.open())),
        )
        .await
        .and_then(|r| r);
        match opened {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(SiteError::NotFound)) => Err(Reject {
                status: StatusCode::NOT_FOUND,
                errno: Errno::ENOENT,
                message: "no SpockFS site for this host".into(),
            }),
            Ok(Err(e @ SiteError::RootOwned)) => Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: e.to_string(),
            }),
            Ok(Err(e @ SiteError::Io(_))) => {
                tracing::error!(error = %e, "cannot open a site");
                Err(Reject {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    errno: Errno::EIO,
                    message: "cannot open the site".into(),
                })
            }
            Err(e) => Err(Reject {
                status: e.status(),
                errno: e,
                message: "cannot open the site".into(),
            }),
        }
    }

    /// Drains what is left of the request body (bounded) so the connection
    /// can be reused; if too much is left, asks the client to close.
    async fn finish<B>(
        &self,
        version: http::Version,
        mut resp: Response<SpockBody>,
        mut body: Pin<&mut B>,
    ) -> Response<SpockBody>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return resp;
        }
        // A body that stalled (408) will not be drained either.
        if resp.status() != StatusCode::REQUEST_TIMEOUT
            && body.size_hint().lower() <= self.limits.drain as u64
        {
            let mut drained = 0usize;
            let deadline = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    frame = body.frame() => match frame {
                        None => return resp,
                        Some(Ok(f)) => {
                            drained += f.data_ref().map_or(0, |d| d.remaining());
                            if drained > self.limits.drain {
                                break;
                            }
                        }
                        Some(Err(_)) => break,
                    },
                    _ = &mut deadline => break,
                }
            }
        }
        // Unread body left on an HTTP/1 connection: it cannot be reused.
        if version <= http::Version::HTTP_11 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Runs `op` on the blocking pool; with `stat`, a successful change is
    /// answered with the entry's attributes and its directory's, read in
    /// the same pool call.
    async fn execute(
        &self,
        mount: &Mount,
        cx: Cx<'_>,
        path: FsPath,
        op: Op,
        stat: Stats,
    ) -> Result<Outcome, Fail> {
        let limits = self.limits;
        let setid = mount.setid();
        let devices = mount.devices();
        blocking(&self.pool, cx, move |b| {
            let out = execute_sync(b, &path, op, &limits, setid, devices)?;
            Ok(match out {
                Outcome::Status(s) if stat.entry || stat.parent => {
                    // Changed, then removed or replaced by someone else:
                    // the change still succeeded, without attributes.
                    let entry = stat.entry.then(|| b.getattr(&path).ok()).flatten();
                    let parent = stat
                        .parent
                        .then(|| path.parent().and_then(|p| b.getattr(&p).ok()))
                        .flatten();
                    Outcome::StatusStat(s, entry, parent)
                }
                out => out,
            })
        })
        .await
        .and_then(|r| r)
        .map_err(Fail::from)
    }

    async fn setxattr<B>(
        &self,
        cx: Cx<'_>,
        path: FsPath,
        name: Vec<u8>,
        flag: XattrFlag,
        body: Pin<&mut B>,
    ) -> Result<Outcome, Fail>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let clock = BodyClock::new(self.limits.body_timeout, self.limits.chunk_size);
        let value = read_limited(body, self.limits.xattr_size, clock).await?;
        blocking(&self.pool, cx, move |b| {
            precheck(b, &path, DirRule::Any)?;
            b.setxattr(&path, &name, &value, flag)
        })
        .await
        .and_then(|r| r)
        .map(|()| Outcome::Status(StatusCode::OK))
        .map_err(Fail::from)
    }

    async fn put<B>(
        &self,
        mount: &Mount,
        cx: Cx<'_>,
        path: FsPath,
        range: Option<(u64, u64)>,
        mut body: Pin<&mut B>,
    ) -> Result<Outcome, Fail>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let chunk = self.limits.chunk_size;
        let timeout = self.limits.body_timeout;
        let cap = self.limits.max_put_size;
        let setid = mount.setid();
        let exact = body.size_hint().exact();
        let rules = |announced| BodyRules {
            chunk,
            announced,
            cap,
            timeout,
        };
        if let Some(max) = cap {
            // Refused before anything is opened: a Content-Length, or a
            // Content-Range, over the limit.
            if body.size_hint().lower() > max || range.is_some_and(|(_, len)| len > max) {
                return Err(too_large(max));
            }
        }
        match range {
            Some((offset, len)) => {
                // Check the body length against the range before writing
                // anything: a mismatch is a client bug, and writing part of
                // it would corrupt the file. Read whole before the file is
                // opened: bodies of up to one chunk with a length (a FUSE
                // write: open, write and close are then one blocking call
                // instead of three), and small ones without a length (so a
                // short body writes nothing).
                let read_first = match exact {
                    Some(n) if n != len => {
                        return Err(Fail::Reject(Reject::bad(format!(
                            "Content-Range covers {len} bytes but the body has {n}"
                        ))))
                    }
                    Some(_) => len as usize <= chunk,
                    None if len as usize <= self.limits.max_unsized_range_put => true,
                    None => {
                        return Err(Fail::Reject(Reject {
                            status: StatusCode::LENGTH_REQUIRED,
                            errno: Errno::EINVAL,
                            message: "a ranged PUT this large needs a Content-Length".into(),
                        }))
                    }
                };
                let p = path.clone();
                if read_first {
                    let clock = BodyClock::new(timeout, chunk);
                    let data = read_limited(body.as_mut(), len as usize, clock).await?;
                    if data.len() as u64 != len {
                        return Err(Fail::Reject(Reject::bad(format!(
                            "Content-Range covers {len} bytes but the body has {}",
                            data.len()
                        ))));
                    }
                    // The file is closed (dropped) on the blocking thread.
                    blocking(&self.pool, cx, move |b| {
                        precheck(b, &p, DirRule::NotDir)?;
                        b.open_write(&p, setid)?.write_at(&data, offset)
                    })
                    .await??;
                    return Ok(Outcome::Status(StatusCode::OK));
                }
                let file: Arc<dyn FileHandle> = blocking(&self.pool, cx, move |b| {
                    precheck(b, &p, DirRule::NotDir)?;
                    b.open_write(&p, setid).map(Arc::from)
                })
                .await??;
                let file = DropOnPool::new(file, &self.pool, cx);
                stream_to(&self.pool, cx, body, rules(Some(len)), |buf, off| {
                    let f = file.get().clone();
                    move || f.write_at(&buf, offset + off)
                })
                .await?;
                Ok(Outcome::Status(StatusCode::OK))
            }
            None => {
                let p = path.clone();
                let rep: Arc<dyn Replacement> = blocking(&self.pool, cx, move |b| {
                    precheck(b, &p, DirRule::NotDir)?;
                    b.replace(&p, setid).map(Arc::from)
                })
                .await??;
                let rep = DropOnPool::new(rep, &self.pool, cx);
                stream_to(&self.pool, cx, body, rules(exact), |buf, off| {
                    let r = rep.get().clone();
                    move || r.write_at(&buf, off)
                })
                .await?;
                let r = rep.get().clone();
                let created = blocking(&self.pool, cx, move |_| r.commit()).await??;
                Ok(Outcome::Status(if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                }))
            }
        }
    }

    fn respond(&self, outcome: Outcome, cx: Cx<'_>) -> Response<SpockBody> {
        match outcome {
            Outcome::Listing {
                first,
                dir,
                attrs,
                path,
                budget,
            } => {
                let pool = cx.backend.is_blocking().then(|| self.pool.clone());
                let body = SpockBody::dir(
                    dir,
                    first,
                    attrs,
                    path,
                    READDIR_BATCH,
                    budget,
                    pool,
                    cx.who.clone(),
                );
                let mut r = Response::new(body);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Outcome::TooManyEntries { count, max } => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                Errno::E2BIG,
                &format!(
                    "the directory has {count} entries; this server lists at most {max} per READDIR"
                ),
            ),
            Outcome::Refused(rej) => reject(rej),
            Outcome::Status(s) => status_response(s),
            Outcome::Stat(st) => {
                let mut r = status_response(StatusCode::OK);
                h::put_stat(r.headers_mut(), &st);
                r
            }
            Outcome::StatusStat(s, entry, parent) => {
                let mut r = status_response(s);
                if let Some(st) = entry {
                    h::put_stat(r.headers_mut(), &st);
                }
                if let Some(st) = parent {
                    let hm = r.headers_mut();
                    if let Ok(v) = HeaderValue::from_str(&crate::listing::format_attrs(&st)) {
                        hm.insert(h::X_SPOCK_PARENT.clone(), v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&crate::listing::format_nsec(&st)) {
                        hm.insert(h::X_SPOCK_PARENT_NSEC.clone(), v);
                    }
                }
                r
            }
            Outcome::StatFs(s) => {
                let mut r = status_response(StatusCode::OK);
                let hm = r.headers_mut();
                hm.typed_insert(h::XSpockBsize(s.bsize));
                hm.typed_insert(h::XSpockFrsize(s.frsize));
                hm.typed_insert(h::XSpockBlocks(s.blocks));
                hm.typed_insert(h::XSpockBfree(s.bfree));
                hm.typed_insert(h::XSpockBavail(s.bavail));
                hm.typed_insert(h::XSpockFiles(s.files));
                hm.typed_insert(h::XSpockFfree(s.ffree));
                hm.typed_insert(h::XSpockFavail(s.favail));
                hm.typed_insert(h::XSpockFsid(s.fsid));
                hm.typed_insert(h::XSpockFlag(s.flag as i64));
                hm.typed_insert(h::XSpockNamemax(s.namemax));
                r
            }
            Outcome::Body(b) => {
                let mut r = Response::new(SpockBody::full(b));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Outcome::Size(n) => {
                let mut r = status_response(StatusCode::OK);
                r.headers_mut().typed_insert(h::XSpockSize(n));
                r
            }
            Outcome::File {
                status,
                head,
                file,
                first,
                offset,
                len,
                size,
            } => {
                let body = match file {
                    Some(f) if len > first.len() as u64 => SpockBody::file(
                        f,
                        first.clone(),
                        offset + first.len() as u64,
                        len,
                        self.limits.chunk_size,
                        Some(self.pool.clone()),
                    ),
                    _ if head => SpockBody::empty(),
                    _ => SpockBody::full(first),
                };
                let mut r = Response::new(body);
                *r.status_mut() = status;
                let hm = r.headers_mut();
                hm.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                hm.insert(
                    http::header::ACCEPT_RANGES,
                    HeaderValue::from_static("bytes"),
                );
                if status == StatusCode::PARTIAL_CONTENT {
                    let v = if len == 0 {
                        format!("bytes */{size}")
                    } else {
                        format!("bytes {}-{}/{}", offset, offset + len - 1, size)
                    };
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        hm.insert(CONTENT_RANGE, v);
                    }
                }
                if head {
                    hm.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
                }
                r
            }
        }
    }
}

/// Why an operation failed.
enum Fail {
    Errno(Errno),
    Reject(Reject),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Errno(e)
    }
}

impl From<Reject> for Fail {
    fn from(r: Reject) -> Fail {
        Fail::Reject(r)
    }
}

/// 503 for a request over the concurrency limit.
fn busy_response(waited: Duration) -> Response<SpockBody> {
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        Errno::EAGAIN,
        &format!(
            "too many requests in progress (waited {} ms for a slot); retry later",
            waited.as_millis()
        ),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn reject(rej: Reject) -> Response<SpockBody> {
    error_response(rej.status, rej.errno, &rej.message)
}

fn errno_response(e: Errno, context: &str) -> Response<SpockBody> {
    let msg = if context.is_empty() {
        e.description()
    } else {
        format!("{} ({context})", e.description())
    };
    error_response(e.status(), e, &msg)
}

/// Which attributes a change is answered with (`stat`, `parent-stat`).
#[derive(Clone, Copy)]
struct Stats {
    entry: bool,
    parent: bool,
}

/// Where and as whom a request's filesystem calls run.
#[derive(Clone, Copy)]
struct Cx<'a> {
    backend: &'a Arc<dyn Backend>,
    /// The request's identity (`None`: the server's own).
    who: &'a Option<Identity>,
}

/// Runs `f` as the request's identity: on a blocking thread with its
/// credentials if the backend blocks, inline otherwise (with
/// [`Identity::current`] answering it). A thread that cannot take the
/// identity is `EIO`.
async fn blocking<T, F>(pool: &BlockingPool, cx: Cx<'_>, f: F) -> FsResult<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Backend) -> T + Send + 'static,
{
    if !cx.backend.is_blocking() {
        return Ok(identity::acting_as(cx.who.as_ref(), || f(&**cx.backend)));
    }
    let b = cx.backend.clone();
    let who = cx.who.clone();
    joined(pool.run(move || identity::run_as(who.as_ref(), || f(&*b))))
        .await
        .and_then(|r| r)
}

/// Who a request acts as, in order: an [`Identity`] the host put in the
/// request's extensions, the mount's own ([`Mount::act_as`]), the
/// client-declared one on mounts that trust it
/// ([`Mount::trust_client_ids`]), else `None` (the server's own).
fn identity_of(parts: &http::request::Parts, mount: &Mount) -> Result<Option<Identity>, Reject> {
    if let Some(id) = parts.extensions.get::<Identity>() {
        return Ok(Some(id.clone()));
    }
    let policy = mount.policy();
    if let Some(id) = policy.identity() {
        return Ok(Some(id.clone()));
    }
    let Some(ids) = policy.client_ids() else {
        return Ok(None);
    };
    let header = parts.headers.get(&X_SPOCK_CALLER).map(|v| v.as_bytes());
    match ids.resolve(header) {
        Ok(id) => Ok(Some(id)),
        Err(e @ CallerError::Malformed) => Err(Reject::bad(e.to_string())),
        Err(e @ CallerError::OutOfRange(_)) => Err(Reject {
            status: StatusCode::FORBIDDEN,
            errno: Errno::EPERM,
            message: e.to_string(),
        }),
    }
}

/// The result of a job on the pool; a panic in it is `EIO`.
async fn joined<T>(job: JobHandle<T>) -> FsResult<T> {
    job.await.map_err(|()| {
        tracing::error!("a filesystem call panicked");
        Errno::EIO
    })
}

/// Holds a file handle (or a replacement) and drops it on a blocking thread
/// however the request ends, done, failed or cancelled mid-body: closing a
/// file can flush, dropping an uncommitted replacement unlinks its
/// temporary file. A clone still held by a write running on the pool is
/// dropped there.
struct DropOnPool<T: ?Sized + Send + Sync + 'static> {
    v: Option<Arc<T>>,
    pool: Option<BlockingPool>,
    /// The request's identity.
    who: Option<Identity>,
}

impl<T: ?Sized + Send + Sync + 'static> DropOnPool<T> {
    fn new(v: Arc<T>, pool: &BlockingPool, cx: Cx<'_>) -> Self {
        DropOnPool {
            v: Some(v),
            pool: cx.backend.is_blocking().then(|| pool.clone()),
            who: cx.who.clone(),
        }
    }

    fn get(&self) -> &Arc<T> {
        // Only `drop` takes it.
        self.v.as_ref().expect("held until dropped")
    }
}

impl<T: ?Sized + Send + Sync + 'static> Drop for DropOnPool<T> {
    fn drop(&mut self) {
        if let (Some(v), Some(pool)) = (self.v.take(), &self.pool) {
            if Arc::strong_count(&v) == 1 {
                // As the request's identity: dropping an uncommitted
                // replacement unlinks its temporary file.
                let who = self.who.take();
                pool.detach(move || {
                    if identity::run_as(who.as_ref(), || drop(v)).is_err() {
                        tracing::warn!("a PUT's file was closed without its identity");
                    }
                });
            }
        }
    }
}

/// The body deadline ([`Limits::body_timeout`]): each `chunk` bytes of a
/// request body (or its rest, if shorter) must arrive within `timeout`, so a
/// stalled body fails after `timeout` and a trickling one as soon as a
/// chunk takes longer.
struct BodyClock {
    timeout: Duration,
    chunk: usize,
    deadline: tokio::time::Instant,
    received: usize,
}

impl BodyClock {
    fn new(timeout: Duration, chunk: usize) -> BodyClock {
        BodyClock {
            timeout,
            chunk: chunk.max(1),
            deadline: tokio::time::Instant::now() + timeout,
            received: 0,
        }
    }

    fn got(&mut self, n: usize) {
        self.received += n;
        if self.received >= self.chunk {
            self.received %= self.chunk;
            self.deadline = tokio::time::Instant::now() + self.timeout;
        }
    }
}

/// The next frame of a request body, by the clock's deadline: a body that
/// stalls or trickles is 408 (`ETIMEDOUT`).
async fn next_frame<B>(
    mut body: Pin<&mut B>,
    clock: &mut BodyClock,
) -> Result<Option<http_body::Frame<B::Data>>, Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout_at(clock.deadline, body.frame()).await {
        Err(_) => Err(Fail::Reject(Reject {
            status: StatusCode::REQUEST_TIMEOUT,
            errno: Errno::ETIMEDOUT,
            message: format!(
                "request body too slow: less than {} bytes in {} s",
                clock.chunk,
                clock.timeout.as_secs_f32()
            ),
        })),
        Ok(None) => Ok(None),
        Ok(Some(Ok(f))) => {
            clock.got(f.data_ref().map_or(0, |d| d.remaining()));
            Ok(Some(f))
        }
        Ok(Some(Err(e))) => Err(Fail::Reject(Reject::bad(format!(
            "reading request body: {}",
            e.into()
        )))),
    }
}

/// A PUT body over [`Limits::max_put_size`].
fn too_large(max: u64) -> Fail {
    Fail::Reject(Reject {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        errno: Errno::EFBIG,
        message: format!("PUT body larger than this server's limit of {max} bytes"),
    })
}

/// Reads a whole body of at most `limit` bytes; more is 413.
async fn read_limited<B>(
    mut body: Pin<&mut B>,
    limit: usize,
    mut clock: BodyClock,
) -> Result<Bytes, Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(Fail::Errno(Errno::E2BIG));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = next_frame(body.as_mut(), &mut clock).await? {
        if let Ok(mut data) = frame.into_data() {
            if buf.len() + data.remaining() > limit {
                return Err(Fail::Errno(Errno::E2BIG));
            }
            while data.has_remaining() {
                let c = data.chunk();
                buf.extend_from_slice(c);
                let n = c.len();
                data.advance(n);
            }
        }
    }
    Ok(buf.freeze())
}

/// How [`stream_to`] reads the body.
struct BodyRules {
    /// Bytes per write.
    chunk: usize,
    /// The announced length, if any: more or fewer bytes is 400.
    announced: Option<u64>,
    /// The server's PUT limit: more is 413.
    cap: Option<u64>,
    /// Longest wait for the next frame.
    timeout: Duration,
}

/// Streams the request body to `write` in chunks, each write on a blocking
/// thread while the next chunk is read (one write in flight, so at most two
/// chunks in memory). Fails unless the body has the announced length.
async fn stream_to<B, W, F>(
    pool: &BlockingPool,
    cx: Cx<'_>,
    mut body: Pin<&mut B>,
    rules: BodyRules,
    mut write: W,
) -> Result<(), Fail>
where
    B: Body,
    B::Error: Into<BoxError>,
    W: FnMut(Bytes, u64) -> F,
    F: FnOnce() -> FsResult<()> + Send + 'static,
{
    let chunk = rules.chunk;
    let max = rules.announced.unwrap_or(u64::MAX);
    let mut buf = BytesMut::with_capacity(chunk.min(max as usize));
    let mut written: u64 = 0;
    let mut eof = false;
    let mut clock = BodyClock::new(rules.timeout, chunk);
    let mut pending: Option<JobHandle<FsResult<()>>> = None;
    while !eof {
        // Fill one chunk.
        while buf.len() < chunk {
            match next_frame(body.as_mut(), &mut clock).await? {
                None => {
                    eof = true;
                    break;
                }
                Some(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let c = data.chunk();
                            buf.extend_from_slice(c);
                            let n = c.len();
                            data.advance(n);
                        }
                    }
                }
            }
            if let Some(cap) = rules.cap {
                if written + buf.len() as u64 > cap {
                    return Err(too_large(cap));
                }
            }
        }
        if buf.is_empty() {
            break;
        }
        if written + buf.len() as u64 > max {
            return Err(Fail::Reject(Reject::bad(
                "request body longer than announced",
            )));
        }
        let data = buf.split().freeze();
        let n = data.len() as u64;
        let job = write(data, written);
        // One write in flight: the previous chunk's must have succeeded
        // before this one is submitted (so a failed write stops the
        // stream), and this one runs while the next chunk arrives.
        if let Some(p) = pending.take() {
            joined(p).await??;
        }
        if cx.backend.is_blocking() {
            // As the request's identity: the kernel's write path decides
            // what a write clears (set-ID bits) by the writer's capabilities.
            let who = cx.who.clone();
            pending = Some(pool.run(move || identity::run_as(who.as_ref(), job).and_then(|r| r)));
        } else {
            identity::acting_as(cx.who.as_ref(), job)?;
        }
        written += n;
        buf.reserve(chunk);
    }
    if let Some(p) = pending.take() {
        joined(p).await??;
    }
    if rules.announced.is_some_and(|n| n != written) {
        return Err(Fail::Reject(Reject::bad(format!(
            "request body ended after {written} of {max} bytes"
        ))));
    }
    Ok(())
}

/// How a trailing slash constrains the object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirRule {
    /// The object may be anything; with a trailing slash it must be a
    /// directory if it exists.
    Any,
    /// The operation creates or needs a non-directory: with a trailing
    /// slash, it fails with `ENOTDIR` (unless the object is a directory, in
    /// which case the operation's own error applies).
    NotDir,
}

/// POSIX trailing-slash semantics: `path/` names a directory.
fn precheck(b: &dyn Backend, path: &FsPath, rule: DirRule) -> FsResult<()> {
    if !path.has_trailing_slash() {
        return Ok(());
    }
    match b.getattr(path) {
        Ok(st) if st.is_dir() => Ok(()),
        Ok(_) => Err(Errno::ENOTDIR),
        Err(Errno::ENOENT) if rule == DirRule::NotDir => Err(Errno::ENOTDIR),
        Err(_) => Ok(()),
    }
}

/// True for a character or block device's mode.
fn is_device(mode: u32) -> bool {
    use crate::backend::mode::{S_IFBLK, S_IFCHR, S_IFMT};
    matches!(mode & S_IFMT, S_IFCHR | S_IFBLK)
}

/// Why a device node may not be made at `path` on a mount that allows
/// inert ones: the filesystem of its directory is not mounted `nodev`.
/// `None` if it is, or if that cannot be told (the backend's own check
/// then decides, with its own error).
fn not_nodev(b: &dyn Backend, path: &FsPath) -> Option<Reject> {
    let dir = path.parent()?;
    let fs = b.statfs(&dir).ok()?;
    (fs.flag & crate::backend::ST_NODEV == 0).then(|| Reject {
        status: StatusCode::FORBIDDEN,
        errno: Errno::EPERM,
        message: "device nodes are only made on a filesystem mounted nodev (where they are \
                  inert), and the server's filesystem here is not"
            .into(),
    })
}

fn execute_sync(
    b: &dyn Backend,
    path: &FsPath,
    op: Op,
    limits: &Limits,
    setid: SetId,
    devices: Devices,
) -> FsResult<Outcome> {
    use DirRule::*;
    let ok = StatusCode::OK;
    let created = StatusCode::CREATED;
    Ok(match op {
        Op::Readdir { attrs, nsec } => {
            precheck(b, path, Any)?;
            let mut dir = b.open_dir(path, attrs)?;
            let attrs = attrs.then_some(if nsec {
                crate::listing::Format::AttrsNsec
            } else {
                crate::listing::Format::Attrs
            });
            if let Some(max) = limits.readdir_max_entries {
                let count = dir.count_and_rewind()?;
                if count > max {
                    return Ok(Outcome::TooManyEntries { count, max });
                }
            }
            let mut out = Vec::with_capacity(512);
            if attrs.is_none() {
                out.extend_from_slice(b".\n..\n");
            }
            let (n, done) =
                crate::body::dir_batch(&mut *dir, attrs, READDIR_BATCH, path, &mut out)?;
            if done {
                Outcome::Body(Bytes::from(out))
            } else {
                Outcome::Listing {
                    first: Bytes::from(out),
                    dir,
                    attrs,
                    path: path.clone(),
                    budget: limits.readdir_max_entries.map(|m| m.saturating_sub(n)),
                }
            }
        }
        Op::Getattr => {
            precheck(b, path, Any)?;
            Outcome::Stat(b.getattr(path)?)
        }
        Op::Mknod { mode, dev } => {
            precheck(b, path, NotDir)?;
            if is_device(mode) && devices == Devices::Inert {
                // The backend decides on the node's directory itself; this
                // only says why, for the common refusal.
                if let Some(why) = not_nodev(b, path) {
                    return Ok(Outcome::Refused(why));
                }
            }
            b.mknod(path, mode, dev, devices)?;
            Outcome::Status(created)
        }
        Op::Open { flags } => {
            precheck(b, path, Any)?;
            b.open(path, flags)?;
            Outcome::Status(ok)
        }
        Op::Chmod { mode } => {
            precheck(b, path, Any)?;
            b.chmod(path, mode, setid)?;
            Outcome::Status(ok)
        }
        Op::Chown { owner } => {
            precheck(b, path, Any)?;
            b.chown(path, owner)?;
            Outcome::Status(ok)
        }
        Op::Truncate { size } => {
            precheck(b, path, NotDir)?;
            b.truncate(path, size, setid)?;
            Outcome::Status(ok)
        }
        Op::Access { mask } => {
            precheck(b, path, Any)?;
            b.access(path, mask)?;
            Outcome::Status(ok)
        }
        Op::Symlink { target } => {
            precheck(b, path, NotDir)?;
            b.symlink(path, &target)?;
            Outcome::Status(created)
        }
        Op::Readlink => {
            precheck(b, path, NotDir)?;
            Outcome::Body(Bytes::from(b.readlink(path)?))
        }
        Op::Rmdir => {
            precheck(b, path, Any)?;
            b.rmdir(path)?;
            Outcome::Status(ok)
        }
        Op::Mkdir { mode } => {
            precheck(b, path, Any)?;
            b.mkdir(path, mode)?;
            Outcome::Status(created)
        }
        Op::Link { existing } => {
            precheck(b, path, NotDir)?;
            precheck(b, &existing, NotDir)?;
            b.link(path, &existing)?;
            Outcome::Status(created)
        }
        Op::Rename { from } => {
            if path.has_trailing_slash() || from.has_trailing_slash() {
                // `rename("a/", "b")`: the source must be a directory.
                let st = b.getattr(&from)?;
                if !st.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                precheck(b, path, Any)?;
            }
            b.rename(&from, path)?;
            Outcome::Status(ok)
        }
        Op::Fallocate { mode, offset, len } => {
            precheck(b, path, NotDir)?;
            b.fallocate(path, mode, offset, len, setid)?;
            Outcome::Status(ok)
        }
        Op::Statfs => {
            precheck(b, path, Any)?;
            Outcome::StatFs(b.statfs(path)?)
        }
        Op::Listxattr { size } => {
            precheck(b, path, Any)?;
            let names = b.listxattr(path, limits.xattr_size)?;
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(&n);
                out.push(b'\n');
            }
            sized(out, size)?
        }
        Op::Getxattr { name, size } => {
            precheck(b, path, Any)?;
            sized(b.getxattr(path, &name, limits.xattr_size)?, size)?
        }
        Op::Setxattr { .. } | Op::Put { .. } => return Err(Errno::EINVAL),
        Op::Removexattr { name } => {
            precheck(b, path, Any)?;
            b.removexattr(path, &name)?;
            Outcome::Status(ok)
        }
        Op::Utimens { atime, mtime } => {
            precheck(b, path, Any)?;
            b.utimens(path, atime, mtime)?;
            Outcome::Status(ok)
        }
        Op::Get { range, head } => {
            precheck(b, path, NotDir)?;
            let file = b.open_read(path)?;
            let size = file.size();
            let (status, offset, len) = match range {
                None => (ok, 0, size),
                Some(r) => match r.resolve(size) {
                    Some((o, l)) => (StatusCode::PARTIAL_CONTENT, o, l),
                    None => (StatusCode::PARTIAL_CONTENT, size, 0),
                },
            };
            if head {
                Outcome::File {
                    status,
                    head: true,
                    file: None,
                    first: Bytes::new(),
                    offset,
                    len,
                    size,
                }
            } else {
                let first_len = len.min(limits.chunk_size as u64) as usize;
                let first = read_chunk(&*file, offset, first_len)?;
                if (first.len() as u64) < first_len as u64 {
                    // The file shrank since fstat: send what is there.
                    let l = first.len() as u64;
                    return Ok(Outcome::File {
                        status,
                        head: false,
                        file: None,
                        first,
                        offset,
                        len: l,
                        size,
                    });
                }
                let more = len > first_len as u64;
                Outcome::File {
                    status,
                    head: false,
                    file: if more { Some(Arc::from(file)) } else { None },
                    first,
                    offset,
                    len,
                    size,
                }
            }
        }
        Op::Post { mode } => {
            precheck(b, path, NotDir)?;
            b.create(path, mode | crate::backend::mode::S_IWUSR, setid)?;
            Outcome::Status(created)
        }
        Op::Delete => {
            precheck(b, path, NotDir)?;
            b.unlink(path)?;
            Outcome::Status(ok)
        }
        Op::Fsync { datasync } => {
            precheck(b, path, Any)?;
            b.fsync(path, datasync)?;
            Outcome::Status(ok)
        }
    })
}

/// LISTXATTR/GETXATTR sizing: `X-Spock-size: 0` asks for the size only; a
/// buffer smaller than the data is `ERANGE`.
fn sized(data: Vec<u8>, size: Option<u64>) -> FsResult<Outcome> {
    match size {
        Some(0) => Ok(Outcome::Size(data.len() as u64)),
        Some(n) if (data.len() as u64) > n => Err(Errno::ERANGE),
        _ => Ok(Outcome::Body(Bytes::from(data))),
    }
}

/// `X-Spock-stat: 1` (the `stat` extension).
fn wants_stat(headers: &HeaderMap) -> bool {
    headers
        .get(&X_SPOCK_STAT)
        .is_some_and(|v| v.as_bytes() == b"1")
}

fn status_response(status: StatusCode) -> Response<SpockBody> {
    let mut r = Response::new(SpockBody::empty());
    *r.status_mut() = status;
    r
}

/// The mount's [privilege policy](Mount#privilege-policy) applied to an
/// operation: modes of new non-directories lose the set-ID bits the policy
/// forbids (CHMOD, writes and truncation are handled by the backend on the
/// object itself, see [`SetId`]), and privileged xattr namespaces are
/// refused before anything is read or changed.
fn apply_policy(mount: &Mount, op: Op) -> Result<Op, Reject> {
    use crate::backend::mode::{S_IFDIR, S_IFMT};
    let setid = mount.setid();
    Ok(match op {
        Op::Post { mode } => Op::Post {
            mode: setid.file_mode(mode),
        },
        Op::Mknod { mode, .. } if is_device(mode) && mount.devices() == Devices::Refuse => {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: "device nodes are not made on this mount".into(),
            });
        }
        // MKNOD never makes a directory (EPERM), so every mode is a file's.
        Op::Mknod { mode, dev } if mode & S_IFMT != S_IFDIR => Op::Mknod {
            mode: setid.file_mode(mode),
            dev,
        },
        Op::Setxattr { ref name, .. } | Op::Removexattr { ref name }
            if !mount.allows_any_xattr() && !crate::mount::is_unprivileged_xattr(name) =>
        {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: format!(
                    "extended attribute {:?}: only user.* and POSIX ACLs may be changed on this mount",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        op => op,
    })
}

fn options_response(mount: Option<&Mount>) -> Response<SpockBody> {
    let mut r = status_response(StatusCode::OK);
    let hm = r.headers_mut();
    hm.insert(ALLOW_HDR, HeaderValue::from_static(ALLOW));
    hm.insert(X_SPOCK_VERSION.clone(), HeaderValue::from_static("0.1"));
    // `identity` only where the client's X-Spock-caller is believed.
    let trusts = mount.is_some_and(|m| m.policy().client_ids().is_some());
    hm.insert(
        X_SPOCK_EXTENSIONS.clone(),
        HeaderValue::from_static(if trusts {
            EXTENSIONS_WITH_IDENTITY
        } else {
            EXTENSIONS
        }),
    );
    if let Some(v) = mount.and_then(|m| HeaderValue::from_str(&m.policy_tokens()).ok()) {
        if !v.is_empty() {
            hm.insert(X_SPOCK_POLICY.clone(), v);
        }
    }
    r
}

/// An error response: the status, `X-Spock-errno`, and a one-line body.
pub fn error_response(status: StatusCode, errno: Errno, message: &str) -> Response<SpockBody> {
    let line = format!(
        "{} {}: {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        errno.name(),
        message.replace(['\r', '\n'], " ")
    );
    let mut r = Response::new(SpockBody::full(line));
    *r.status_mut() = status;
    let hm = r.headers_mut();
    hm.insert(
        X_SPOCK_ERRNO.clone(),
        HeaderValue::from_static(errno.name()),
    );
    hm.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A body that announces `claim` bytes and ends after `data`.
    struct Short {
        data: Option<Bytes>,
        claim: u64,
    }

    impl Body for Short {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.claim)
        }
    }

    /// Streamed PUTs (bodies over one chunk) whose body ends before the
    /// announced length: 400 on both paths, the whole-file PUT leaves no
    /// file and no temporary file behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_put_shorter_than_announced_is_400() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let engine = Engine::builder()
            .default_mount(Mount::new(crate::LocalFs::new(dir.path())))
            .build();
        let sent = Bytes::from(vec![7u8; 600 * 1024]);
        let claim = 1024 * 1024;
        let put = |range: Option<String>| {
            let mut b = Request::builder()
                .method("PUT")
                .uri("/f")
                .header("host", "example.com");
            if let Some(r) = range {
                b = b.header("content-range", r);
            }
            b.body(Short {
                data: Some(sent.clone()),
                claim,
            })
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let r = engine.handle(put(None)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // The temporary file is dropped on the pool, just after the answer.
        let listing = || -> Vec<_> {
            std::fs::read_dir(dir.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect()
        };
        for _ in 0..200 {
            if listing().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(listing(), Vec::<std::ffi::OsString>::new());

        std::fs::write(dir.path().join("f"), b"x").unwrap_or_else(|e| panic!("{e}"));
        let r = engine
            .handle(put(Some(format!("bytes 0-{}/*", claim - 1))))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
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
}
