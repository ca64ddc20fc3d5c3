//! The response body: empty, a small buffer, a file range streamed in
//! bounded chunks read on blocking threads one at a time, or a directory
//! listing streamed in batches the same way (so a slow client holds no
//! thread and memory stays at about two chunks per response).

use crate::backend::{DirStream, FileHandle};
use crate::pool::{BlockingPool, JobHandle};
use crate::reaper::{Reaper, Watched};
use crate::{identity, Errno, FsPath, FsResult, Identity};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Body of every SpockFS response. Its size is known (so responses carry
/// an exact `Content-Length`) except for a READDIR listing too large for
/// one batch, which is streamed chunked.
///
/// A body that holds something (a request slot, an open file or
/// directory) is watched by the engine's write timeout
/// ([`Limits::write_timeout`](crate::Limits::write_timeout)): if the
/// transport stops pulling it for that long, the slot and the file are
/// released at once, and the body fails when (if ever) it is polled again.
pub struct SpockBody {
    repr: Repr,
}

enum Repr {
    /// Not watched: owned here.
    Local(Parts),
    /// Under the write timeout; `true` once the abort has been reported.
    Watched(Watched<Parts>, bool),
}

/// What a body owns, and what the write timeout takes away from a body
/// that stopped moving.
pub(crate) struct Parts {
    kind: Kind,
    /// The request's slot under the engine's concurrency limit, held until
    /// the body has been sent (or dropped).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The write-timeout reaper of an engine's response bodies.
pub(crate) type BodyReaper = Reaper<Parts>;

enum Kind {
    Full(Option<Bytes>),
    File(FileStream),
    Dir(DirListing),
}

impl std::fmt::Debug for SpockBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.repr {
            Repr::Local(p) => p.kind.fmt(f),
            Repr::Watched(w, _) => match &*w.lock() {
                Some(p) => p.kind.fmt(f),
                None => f.write_str("SpockBody::Aborted"),
            },
        }
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Full(b) => f
                .debug_tuple("SpockBody::Full")
                .field(&b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::File(s) => f
                .debug_struct("SpockBody::File")
                .field("offset", &s.offset)
                .field("remaining", &s.remaining)
                .finish(),
            Kind::Dir(d) => f
                .debug_struct("SpockBody::Dir")
                .field("path", &d.path)
                .field("done", &d.done)
                .finish(),
        }
    }
}

impl SpockBody {
    fn of(kind: Kind) -> SpockBody {
        SpockBody {
            repr: Repr::Local(Parts { kind, permit: None }),
        }
    }

    /// No body.
    pub fn empty() -> SpockBody {
        SpockBody::of(Kind::Full(None))
    }

    /// Holds `permit` until this body is dropped (or aborted by the write
    /// timeout).
    pub(crate) fn with_permit(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> SpockBody {
        match &mut self.repr {
            Repr::Local(p) => p.permit = Some(permit),
            Repr::Watched(w, _) => {
                if let Some(p) = w.lock().as_mut() {
                    p.permit = Some(permit);
                }
            }
        }
        self
    }

    /// Puts this body under `reaper` if it holds anything worth taking
    /// back (a request slot, a file, a directory) and is not finished. A
    /// finished body is dropped by the transport right after the head, so
    /// the hot path of an empty answer (GETATTR) registers nothing.
    pub(crate) fn watched(self, reaper: &BodyReaper) -> SpockBody {
        match self.repr {
            Repr::Local(p) if !p.is_end_stream() && (p.permit.is_some() || p.kind.holds_fd()) => {
                SpockBody {
                    repr: Repr::Watched(reaper.watch(p), false),
                }
            }
            repr => SpockBody { repr },
        }
    }

    /// A directory listing: `first` (already formatted), then the rest of
    /// `dir` in batches of `batch` entries. More than `budget` entries in
    /// all (the directory grew past the server's limit after it was
    /// counted) aborts the body. Batches are read as `who` (the request's
    /// identity: listing with attributes needs search permission).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dir(
        dir: Box<dyn DirStream>,
        first: Bytes,
        attrs: Option<crate::listing::Format>,
        path: FsPath,
        batch: usize,
        budget: Option<u64>,
        pool: Option<BlockingPool>,
        who: Option<Identity>,
    ) -> SpockBody {
        SpockBody::of(Kind::Dir(DirListing {
            who,
            dir: Some(dir),
            first: if first.is_empty() { None } else { Some(first) },
            attrs,
            path,
            batch,
            budget,
            pool,
            pending: None,
            done: false,
            buf: Vec::new(),
        }))
    }

    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> SpockBody {
        let b = bytes.into();
        SpockBody::of(Kind::Full(if b.is_empty() { None } else { Some(b) }))
    }

    /// `len` bytes of `file` from `offset`, starting with `first` (already
    /// read), the rest read `chunk` bytes at a time.
    pub(crate) fn file(
        file: Arc<dyn FileHandle>,
        first: Bytes,
        offset: u64,
        len: u64,
        chunk: usize,
        pool: Option<BlockingPool>,
    ) -> SpockBody {
        SpockBody::of(Kind::File(FileStream {
            file,
            first: if first.is_empty() { None } else { Some(first) },
            offset,
            remaining: len,
            chunk,
            pool,
            pending: None,
        }))
    }
}

impl Kind {
    /// Holds an open file or directory.
    fn holds_fd(&self) -> bool {
        matches!(self, Kind::File(_) | Kind::Dir(_))
    }
}

struct FileStream {
    file: Arc<dyn FileHandle>,
    first: Option<Bytes>,
    /// Offset of the next byte to read (after `first`).
    offset: u64,
    /// Bytes still to send, `first` included.
    remaining: u64,
    chunk: usize,
    /// Where reads run; `None` for backends that never block.
    pool: Option<BlockingPool>,
    pending: Option<JobHandle<Result<Bytes, Errno>>>,
}

/// Reads up to `len` bytes at `offset` (fewer only at end of file).
pub(crate) fn read_chunk(file: &dyn FileHandle, offset: u64, len: usize) -> Result<Bytes, Errno> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        if file.read_append(&mut buf, len - filled, offset + filled as u64)? == 0 {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads exactly `len` bytes: a short read means the file shrank after its
/// length was promised in `Content-Length`, and the only honest answer then
/// is to abort the response.
fn read_exact_chunk(file: &dyn FileHandle, offset: u64, len: usize) -> Result<Bytes, Errno> {
    let b = read_chunk(file, offset, len)?;
    if b.len() != len {
        tracing::warn!(offset, len, got = b.len(), "file shrank while being sent");
        return Err(Errno::EIO);
    }
    Ok(b)
}

impl FileStream {
    fn next_len(&self) -> usize {
        let after_first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        (self.remaining - after_first).min(self.chunk as u64) as usize
    }

    /// Starts the next blocking read, if any is left and none is running.
    fn start_read(&mut self) {
        let len = self.next_len();
        if len == 0 || self.pending.is_some() {
            return;
        }
        let Some(pool) = &self.pool else {
            return;
        };
        let file = self.file.clone();
        let offset = self.offset;
        self.offset += len as u64;
        self.pending = Some(pool.run(move || read_exact_chunk(&*file, offset, len)));
    }
}

/// The error a body aborted by the write timeout fails with.
fn aborted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "response aborted: it made no progress for the write timeout",
    )
}

impl Body for SpockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().repr {
            Repr::Local(p) => p.poll_frame(cx),
            Repr::Watched(w, reported) => {
                // Being polled is progress (even if the next chunk is still
                // being read from disk): the transport wants data.
                w.touch();
                let mut parts = w.lock();
                match parts.as_mut() {
                    Some(p) => p.poll_frame(cx),
                    None if *reported => Poll::Ready(None),
                    None => {
                        *reported = true;
                        Poll::Ready(Some(Err(aborted())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.repr {
            Repr::Local(p) => p.is_end_stream(),
            Repr::Watched(w, reported) => w.lock().as_ref().map_or(*reported, Parts::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.repr {
            Repr::Local(p) => p.size_hint(),
            Repr::Watched(w, _) => w
                .lock()
                .as_ref()
                .map_or_else(SizeHint::default, Parts::size_hint),
        }
    }
}

impl Parts {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::File(s) => {
                if s.remaining == 0 {
                    return Poll::Ready(None);
                }
                if let Some(first) = s.first.take() {
                    s.remaining -= first.len() as u64;
                    if s.pool.is_some() {
                        // Read ahead while this chunk is being written out.
                        s.start_read();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                let res = if s.pool.is_some() {
                    s.start_read();
                    let Some(pending) = s.pending.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let res = ready!(Pin::new(pending).poll(cx));
                    s.pending = None;
                    res.unwrap_or_else(|()| {
                        tracing::error!("read task panicked");
                        Err(Errno::EIO)
                    })
                } else {
                    let len = s.next_len();
                    let r = read_exact_chunk(&*s.file, s.offset, len);
                    s.offset += len as u64;
                    r
                };
                match res {
                    Ok(bytes) => {
                        s.remaining -= bytes.len() as u64;
                        if s.pool.is_some() {
                            s.start_read();
                        }
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Err(e) => {
                        s.remaining = 0;
                        Poll::Ready(Some(Err(e.into())))
                    }
                }
            }
            Kind::Dir(d) => d.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::File(s) => s.remaining == 0,
            Kind::Dir(d) => d.done && d.first.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::File(s) => SizeHint::with_exact(s.remaining),
            Kind::Dir(d) if d.done && d.first.is_none() => SizeHint::with_exact(0),
            Kind::Dir(_) => SizeHint::default(),
        }
    }
}

/// Stands in for a file handed to a blocking thread to be closed.
struct Closed;

impl FileHandle for Closed {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> Result<usize, Errno> {
        Err(Errno::EBADF)
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<(), Errno> {
        Err(Errno::EBADF)
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        // Close the file on a blocking thread too (closing can flush).
        if let Some(pool) = &self.pool {
            let file: Arc<dyn FileHandle> = std::mem::replace(&mut self.file, Arc::new(Closed));
            pool.detach(move || drop(file));
        }
    }
}

use std::future::Future;

/// Formats up to `max` entries of `dir` as READDIR lines (plain names, or
/// the `readdir-attrs` form `attrs` names, written by
/// [`listing::write_entry`](crate::listing::write_entry)) onto `out`.
/// Returns the number of entries read and whether the directory is
/// exhausted. A name containing `\n` cannot be represented: it is omitted
/// and logged.
pub(crate) fn dir_batch(
    dir: &mut dyn DirStream,
    attrs: Option<crate::listing::Format>,
    max: usize,
    path: &FsPath,
    out: &mut Vec<u8>,
) -> FsResult<(u64, bool)> {
    let mut n = 0u64;
    let done = dir.next_batch(max, &mut |name, st| {
        n += 1;
        if !crate::listing::write_entry(out, name, st, attrs) {
            tracing::warn!(dir = %path, name = %String::from_utf8_lossy(name).escape_debug(),
                "READDIR: omitting a name that contains a newline");
        }
        Ok(())
    })?;
    Ok((n, done))
}

/// A batch read: the directory and buffer handed back, and (entries read,
/// exhausted).
type BatchResult = (Box<dyn DirStream>, Vec<u8>, FsResult<(u64, bool)>);
type DirJob = JobHandle<BatchResult>;

struct DirListing {
    /// The request's identity.
    who: Option<Identity>,
    /// `None` while a batch is being read on the pool.
    dir: Option<Box<dyn DirStream>>,
    first: Option<Bytes>,
    attrs: Option<crate::listing::Format>,
    path: FsPath,
    batch: usize,
    /// Entries that may still be sent (`None`: no limit).
    budget: Option<u64>,
    pool: Option<BlockingPool>,
    pending: Option<DirJob>,
    done: bool,
    /// The batch buffer, reused: each frame is a copy made on the async
    /// side, so batch buffers are not allocated on one thread and freed on
    /// another (which made the allocator hold on to memory).
    buf: Vec<u8>,
}

impl DirListing {
    fn read_batch(
        mut dir: Box<dyn DirStream>,
        mut out: Vec<u8>,
        attrs: Option<crate::listing::Format>,
        batch: usize,
        path: &FsPath,
    ) -> BatchResult {
        out.clear();
        let r = dir_batch(&mut *dir, attrs, batch, path, &mut out);
        (dir, out, r)
    }

    /// [`read_batch`](Self::read_batch) on a pool thread, as `who`.
    fn read_batch_as(
        who: Option<&Identity>,
        dir: Box<dyn DirStream>,
        out: Vec<u8>,
        attrs: Option<crate::listing::Format>,
        batch: usize,
        path: &FsPath,
    ) -> BatchResult {
        match identity::switch_thread(who) {
            Ok(()) => identity::acting_as(who, || Self::read_batch(dir, out, attrs, batch, path)),
            Err(e) => (dir, out, Err(e)),
        }
    }

    /// Starts reading the next batch on the pool, if none is running.
    fn start(&mut self) {
        if self.done || self.pending.is_some() {
            return;
        }
        let (Some(pool), Some(dir)) = (&self.pool, self.dir.take()) else {
            return;
        };
        let (attrs, batch, path) = (self.attrs, self.batch, self.path.clone());
        let buf = std::mem::take(&mut self.buf);
        let who = self.who.clone();
        self.pending = Some(
            pool.run(move || Self::read_batch_as(who.as_ref(), dir, buf, attrs, batch, &path)),
        );
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            // Read the next batch while this one is being written out.
            self.start();
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let res = if self.pool.is_some() {
                self.start();
                let Some(pending) = self.pending.as_mut() else {
                    self.done = true;
                    return Poll::Ready(None);
                };
                let res = ready!(Pin::new(pending).poll(cx));
                self.pending = None;
                match res {
                    Ok((dir, buf, r)) => {
                        self.dir = Some(dir);
                        self.buf = buf;
                        r
                    }
                    Err(()) => {
                        tracing::error!("readdir task panicked");
                        Err(Errno::EIO)
                    }
                }
            } else {
                match self.dir.take() {
                    Some(dir) => {
                        let buf = std::mem::take(&mut self.buf);
                        let (dir, buf, r) = identity::acting_as(self.who.as_ref(), || {
                            Self::read_batch(dir, buf, self.attrs, self.batch, &self.path)
                        });
                        self.dir = Some(dir);
                        self.buf = buf;
                        r
                    }
                    None => Err(Errno::EIO),
                }
            };
            let (n, done) = match res {
                Ok(x) => x,
                Err(e) => {
                    // The head (200) is out: aborting is the only signal.
                    tracing::warn!(dir = %self.path, errno = %e, "READDIR failed mid-listing; aborting the body");
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            self.done = done;
            if let Some(b) = self.budget.as_mut() {
                if n > *b {
                    tracing::warn!(dir = %self.path,
                        "READDIR: the directory grew past the entry limit while being listed; aborting the body");
                    self.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "directory grew past the READDIR entry limit",
                    ))));
                }
                *b -= n;
            }
            if self.buf.is_empty() {
                continue;
            }
            let frame = Bytes::copy_from_slice(&self.buf);
            if !self.done && self.pool.is_some() {
                self.start();
            }
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
    }
}

impl Drop for DirListing {
    fn drop(&mut self) {
        // Close the directory on a blocking thread too.
        if let (Some(pool), Some(dir)) = (&self.pool, self.dir.take()) {
            pool.detach(move || drop(dir));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Engine, Limits, MemFs, Mount};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::time::Duration;

    fn req(method: &str, path: &str, body: &'static [u8]) -> http::Request<Full<Bytes>> {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "x")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A response nobody pulls gives its slot back after the write
    /// timeout, and fails if it is polled afterwards; one that is pulled
    /// keeps going.
    #[tokio::test]
    async fn unpulled_response_releases_its_slot() {
        let engine = Engine::builder()
            .default_mount(Mount::new(MemFs::new()))
            .limits(Limits {
                max_requests: 1,
                max_requests_wait: Duration::from_millis(50),
                write_timeout: Some(Duration::from_millis(200)),
                chunk_size: 4096,
                ..Limits::default()
            })
            .build();
        let data: &'static [u8] = &[5u8; 64 * 1024];
        assert_eq!(engine.handle(req("PUT", "/f", data)).await.status(), 201);
        let stalled = engine.handle(req("GET", "/f", b"")).await;
        assert_eq!(stalled.status(), 200);
        // Its slot is held: another request waits, then 503.
        let busy = engine.handle(req("GETATTR", "/f", b"")).await;
        assert_eq!(busy.status(), 503);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(engine.handle(req("GETATTR", "/f", b"")).await.status(), 200);
        let e = stalled.into_body().collect().await.err();
        assert_eq!(
            e.map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut),
            "an aborted body must fail, not end short"
        );
        // Pulled slowly but steadily (a chunk every 100 ms): not aborted.
        let mut body = engine.handle(req("GET", "/f", b"")).await.into_body();
        let mut got = 0;
        while let Some(f) = body.frame().await {
            got += f
                .map_err(|e| panic!("{e}"))
                .ok()
                .and_then(|f| f.into_data().ok())
                .map_or(0, |d| d.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
            if got >= 16 * 1024 {
                break;
            }
        }
        assert_eq!(got, 16 * 1024);
    }
}
