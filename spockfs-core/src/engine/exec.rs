//! Execution of the operations described by their headers alone: each
//! runs against the backend on the blocking pool, as the request's
//! identity, and produces an [`Outcome`].

use super::limits::{Limits, READDIR_BATCH};
use super::parse::{Op, Reject};
use super::policy::is_device;
use super::respond::Outcome;
use super::Engine;
use crate::backend::{Backend, Devices, SetId};
use crate::body::read_chunk;
use crate::identity;
use crate::mount::Mount;
use crate::pool::{BlockingPool, JobHandle};
use crate::{Errno, FsPath, FsResult, Identity};
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;

impl Engine {
    /// True while another request than the caller's is being answered.
    fn busy(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed) > 1
    }

    /// Runs `op` on the blocking pool; with `stat`, a successful change is
    /// answered with the entry's attributes and its directory's, read in
    /// the same pool call.
    pub(super) async fn execute(
        &self,
        mount: &Mount,
        cx: Cx<'_>,
        path: FsPath,
        op: Op,
        stat: Stats,
    ) -> Result<Outcome, Fail> {
        // A GETATTR as the server's own identity whose answer is already
        // in the kernel's caches skips the pool (see Backend::getattr_nowait)
        // when other requests are in flight: then the hop is pure cost
        // (16 connections: 1.09x req/s, 0.88x CPU per request). A request
        // alone goes to the pool, whose thread stays awake for the client's
        // next one (bench/results/getattr-nowait-20261207.md: inline, a
        // one-connection client got 0.78x the req/s, the server's cores
        // idling between requests). As a request's identity, it always
        // runs on a pool thread switched to it.
        if matches!(op, Op::Getattr) && cx.who.is_none() && self.busy() {
            if let Some(r) = cx.backend.getattr_nowait(&path) {
                return r.map(Outcome::Stat).map_err(Fail::from);
            }
        }
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
}

/// Why an operation failed.
pub(super) enum Fail {
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

/// Which attributes a change is answered with (`stat`, `parent-stat`).
#[derive(Clone, Copy)]
pub(super) struct Stats {
    pub(super) entry: bool,
    pub(super) parent: bool,
}

/// Where and as whom a request's filesystem calls run.
#[derive(Clone, Copy)]
pub(super) struct Cx<'a> {
    pub(super) backend: &'a Arc<dyn Backend>,
    /// The request's identity (`None`: the server's own).
    pub(super) who: &'a Option<Identity>,
}

/// Runs `f` as the request's identity: on a blocking thread with its
/// credentials if the backend blocks, inline otherwise (with
/// [`Identity::current`] answering it). A thread that cannot take the
/// identity is `EIO`.
pub(super) async fn blocking<T, F>(pool: &BlockingPool, cx: Cx<'_>, f: F) -> FsResult<T>
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

/// The result of a job on the pool; a panic in it is `EIO`.
pub(super) async fn joined<T>(job: JobHandle<T>) -> FsResult<T> {
    job.await.map_err(|()| {
        tracing::error!("a filesystem call panicked");
        Errno::EIO
    })
}

/// How a trailing slash constrains the object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum DirRule {
    /// The object may be anything; with a trailing slash it must be a
    /// directory if it exists.
    Any,
    /// The operation creates or needs a non-directory: with a trailing
    /// slash, it fails with `ENOTDIR` (unless the object is a directory, in
    /// which case the operation's own error applies).
    NotDir,
}

/// POSIX trailing-slash semantics: `path/` names a directory.
pub(super) fn precheck(b: &dyn Backend, path: &FsPath, rule: DirRule) -> FsResult<()> {
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
            crate::listing::write_head(&mut out, attrs);
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

#[cfg(test)]
mod tests {
    use crate::{Engine, LocalFs, Mount};
    use bytes::Bytes;
    use http::Request;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A request body that never arrives: a PUT waiting on it keeps the
    /// engine busy.
    struct Never;

    impl http_body::Body for Never {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(1 << 20)
        }
    }

    /// What GETATTR answers for `path`: status, errno, inode.
    async fn getattr(engine: &Engine, path: &str) -> (u16, String, String) {
        let req = Request::builder()
            .method("GETATTR")
            .uri(path)
            .header("host", "example.com")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = engine.handle(req).await;
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (r.status().as_u16(), h("x-spock-errno"), h("x-spock-ino"))
    }

    /// Under load (another request in flight), GETATTR takes the
    /// non-blocking path and answers exactly what the pool answers alone:
    /// through symlinks, out of the root, into missing names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn getattr_under_load_answers_as_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().join("root");
        crate::backend::local::resolution_tree(&root);
        let paths = [
            "/",
            "/d",
            "/d/e",
            "/d/f",
            "/ld",
            "/ld/f",
            "/up",
            "/up/etc",
            "/d/f/x",
            "/d/",
            "/d/f/",
            "/missing",
            "/missing/x",
        ];
        let engine = Engine::builder()
            .default_mount(Mount::new(LocalFs::new(&root)))
            .build();
        let mut alone = Vec::new();
        for p in paths {
            alone.push(getattr(&engine, p).await);
        }
        let held = engine.clone();
        let hold = tokio::spawn(async move {
            let req = Request::builder()
                .method("PUT")
                .uri("/held")
                .header("host", "example.com")
                .body(Never)
                .unwrap_or_else(|e| panic!("{e}"));
            held.handle(req).await
        });
        let active = || engine.active.load(std::sync::atomic::Ordering::Relaxed);
        while active() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            for (p, want) in paths.iter().zip(&alone) {
                assert_eq!(&getattr(&engine, p).await, want, "{p}");
            }
        }
        assert_eq!(active(), 1, "the held PUT was in flight throughout");
        hold.abort();
        // Through a symlink and out of the root: refused, not followed.
        for i in [5, 7] {
            assert!(alone[i].0 >= 400, "{}: {:?}", paths[i], alone[i]);
        }
    }
}
