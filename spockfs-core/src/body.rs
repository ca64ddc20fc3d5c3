//! The response body: empty, a small buffer, or a file range streamed in
//! bounded chunks read on blocking threads one at a time (so a slow client
//! holds no thread and memory stays at about two chunks per response).

use crate::backend::FileHandle;
use crate::pool::{BlockingPool, JobHandle};
use crate::Errno;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Body of every SpockFS response. Its size is always known, so responses
/// carry an exact `Content-Length`.
pub struct SpockBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    File(FileStream),
}

impl std::fmt::Debug for SpockBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_tuple("SpockBody::Full")
                .field(&b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::File(s) => f
                .debug_struct("SpockBody::File")
                .field("offset", &s.offset)
                .field("remaining", &s.remaining)
                .finish(),
        }
    }
}

impl SpockBody {
    /// No body.
    pub fn empty() -> SpockBody {
        SpockBody {
            kind: Kind::Full(None),
        }
    }

    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> SpockBody {
        let b = bytes.into();
        SpockBody {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
        }
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
        SpockBody {
            kind: Kind::File(FileStream {
                file,
                first: if first.is_empty() { None } else { Some(first) },
                offset,
                remaining: len,
                chunk,
                pool,
                pending: None,
            }),
        }
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
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
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

impl Body for SpockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::File(s) => s.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::File(s) => SizeHint::with_exact(s.remaining),
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
