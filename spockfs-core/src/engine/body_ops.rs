//! Execution of the operations that carry a request body: PUT (ranged
//! write or whole-file replacement) and SETXATTR.

use super::body_in::{read_limited, stream_to, too_large, BodyClock, BodyRules};
use super::exec::{blocking, precheck, Cx, DirRule, Fail};
use super::parse::Reject;
use super::respond::Outcome;
use super::{BoxError, Engine};
use crate::backend::{FileHandle, Replacement, XattrFlag};
use crate::identity;
use crate::mount::Mount;
use crate::pool::BlockingPool;
use crate::{Errno, FsPath, Identity};
use http::StatusCode;
use http_body::Body;
use std::pin::Pin;
use std::sync::Arc;

impl Engine {
    pub(super) async fn setxattr<B>(
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

    pub(super) async fn put<B>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Request;
    use std::time::Duration;

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
}
