//! Request bodies: the pool's body type ([`ReqBody`]), either a whole
//! buffer (every ordinary call, no allocation beyond the `Bytes`) or a
//! streamed upload ([`Upload`]) that checks its length, keeps the failure
//! of its source for the caller and tells the call when it is sent (for
//! the timeout rule, see [`Client::put_stream`](crate::Client::put_stream)).

use crate::transport::hv;
use crate::{Errno, FsResult};
use bytes::Bytes;
use futures_core::Stream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::sync::watch;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A stream of chunks to upload.
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// The body of every request the pool sends.
pub(crate) enum ReqBody {
    /// A body held whole (every call but the streamed uploads).
    Full(Full<Bytes>),
    /// A streamed upload.
    Stream(Upload),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|never| match never {}),
            ReqBody::Stream(u) => Pin::new(u).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(f) => f.is_end_stream(),
            ReqBody::Stream(u) => u.done && u.last.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(f) => f.size_hint(),
            ReqBody::Stream(u) => match u.len {
                // Counting the held last chunk as not sent.
                Some(n) => SizeHint::with_exact(
                    n - u.sent.min(n) + u.last.as_ref().map_or(0, |b| b.len() as u64),
                ),
                None => SizeHint::default(),
            },
        }
    }
}

/// Why a streamed upload's body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The caller's stream returned an error.
    #[error("reading the upload's stream: {0}")]
    Io(#[source] io::Error),
    /// The stream ended before the announced length.
    #[error("the upload's stream ended after {got} of the {want} bytes announced")]
    Short { want: u64, got: u64 },
    /// The stream yielded more than the announced length.
    #[error("the upload's stream yielded more than the {want} bytes announced")]
    Long { want: u64 },
}

/// Where a streamed upload's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not polled yet: connecting, or waiting for a pooled connection.
    Waiting,
    /// Being sent.
    Sending,
    /// Sent whole, or failed, at that time.
    Over(Instant),
}

/// What the call keeps of its upload: where the body is, and why it
/// failed if it did.
pub(crate) struct Watch {
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) failure: Arc<Mutex<Option<UploadError>>>,
}

impl Watch {
    /// The failure of the body, if it failed.
    pub(crate) fn take_failure(&self) -> Option<UploadError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

/// A streamed upload: the caller's chunks, passed on as they come, with
/// exactly `len` bytes when a length is announced.
pub(crate) struct Upload {
    stream: ChunkStream,
    len: Option<u64>,
    sent: u64,
    /// The chunk that completes `len`, held until the stream is seen to
    /// end (hyper stops polling a body once it has its `Content-Length`,
    /// so a stream yielding more would go unnoticed).
    last: Option<Bytes>,
    done: bool,
    phase: watch::Sender<Phase>,
    failure: Arc<Mutex<Option<UploadError>>>,
}

impl Upload {
    /// `len`: the exact number of bytes the stream must yield.
    pub(crate) fn new(stream: ChunkStream, len: Option<u64>) -> (Upload, Watch) {
        let (tx, rx) = watch::channel(Phase::Waiting);
        let failure = Arc::new(Mutex::new(None));
        let up = Upload {
            stream,
            len,
            sent: 0,
            last: None,
            done: false,
            phase: tx,
            failure: failure.clone(),
        };
        (up, Watch { phase: rx, failure })
    }

    fn fail(&mut self, e: UploadError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let msg = e.to_string();
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(e);
        }
        self.phase.send_replace(Phase::Over(Instant::now()));
        // hyper gets a copy; the call reports the one kept above.
        Poll::Ready(Some(Err(msg.into())))
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if *this.phase.borrow() == Phase::Waiting {
            this.phase.send_replace(Phase::Sending);
        }
        loop {
            let next = ready!(this.stream.as_mut().poll_next(cx));
            if let Some(last) = this.last.take() {
                match next {
                    Some(Err(e)) => return this.fail(UploadError::Io(e)),
                    Some(Ok(b)) if b.is_empty() => {
                        this.last = Some(last);
                        continue;
                    }
                    Some(Ok(_)) => {
                        let want = this.sent;
                        return this.fail(UploadError::Long { want });
                    }
                    None => {
                        this.done = true;
                        this.phase.send_replace(Phase::Over(Instant::now()));
                        return Poll::Ready(Some(Ok(Frame::data(last))));
                    }
                }
            }
            match next {
                Some(Err(e)) => return this.fail(UploadError::Io(e)),
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => {
                    let n = b.len() as u64;
                    if let Some(want) = this.len {
                        if this.sent + n > want {
                            return this.fail(UploadError::Long { want });
                        }
                        if this.sent + n == want {
                            this.sent += n;
                            this.last = Some(b);
                            continue;
                        }
                    }
                    this.sent += n;
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                None => {
                    if let Some(want) = this.len {
                        if this.sent != want {
                            return this.fail(UploadError::Short {
                                want,
                                got: this.sent,
                            });
                        }
                    }
                    this.done = true;
                    this.phase.send_replace(Phase::Over(Instant::now()));
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// The streamed-upload calls.
impl crate::Client {
    /// Replaces a whole file atomically (created if missing) with the
    /// chunks of `body`, sent as they come: memory stays flat whatever the
    /// size (chunked transfer encoding on HTTP/1.1, DATA frames on HTTP/2;
    /// no `Content-Length`). The server writes a temporary file and puts it
    /// in place only once the whole body is in: a call that fails leaves
    /// the old content.
    ///
    /// Fails with `EIO` if `body` returns an error (the request is then
    /// aborted, so the server does not commit), and with the errno of the
    /// answer like [`put`](crate::Client::put).
    ///
    /// Timeout: the client's [`timeout`](crate::ClientBuilder::timeout) bounds
    /// the wait for a connection (until the body starts) and the wait for
    /// the answer once the body is sent, not the sending of the body
    /// itself, which can take as long as the stream does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use spockfs_client::Client;
    ///
    /// let fs = Client::new("http://127.0.0.1:8080/fs")?;
    /// // Any `Stream<Item = Result<Bytes, std::io::Error>> + Send`; here
    /// // the receiving end of a channel that another task feeds.
    /// struct Chan(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);
    /// impl futures_core::Stream for Chan {
    ///     type Item = std::io::Result<Bytes>;
    ///     fn poll_next(
    ///         mut self: std::pin::Pin<&mut Self>,
    ///         cx: &mut std::task::Context<'_>,
    ///     ) -> std::task::Poll<Option<Self::Item>> {
    ///         self.0.poll_recv(cx)
    ///     }
    /// }
    /// let (tx, rx) = tokio::sync::mpsc::channel(4);
    /// tokio::spawn(async move {
    ///     for i in 0..1_000_000u32 {
    ///         let line = Bytes::from(format!("line {i}\n"));
    ///         if tx.send(Ok(line)).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// });
    /// fs.put_stream(b"/log.txt", Chan(rx)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_stream<S>(&self, path: &[u8], body: S) -> FsResult<()>
    where
        S: futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.request_stream("PUT", path, &[], Box::pin(body), None, &[200, 201])
            .await
            .map(drop)
            .map_err(|e| e.errno())
    }

    /// Replaces a whole file atomically with the content of a local file,
    /// read and sent in chunks: [`put_stream`](crate::Client::put_stream) over
    /// `file` (same atomicity, errors and timeout rule).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let fs = spockfs_client::Client::new("http://127.0.0.1:8080/fs")?;
    /// let file = tokio::fs::File::open("/var/backups/big.tar").await?;
    /// fs.put_file(b"/backups/big.tar", file).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_file(&self, path: &[u8], file: tokio::fs::File) -> FsResult<()> {
        self.put_reader(path, file).await
    }

    /// Replaces a whole file atomically with what `reader` yields until its
    /// end, sent in chunks of up to 128 KiB:
    /// [`put_stream`](crate::Client::put_stream) over `reader` (same atomicity,
    /// errors and timeout rule).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::AsyncReadExt;
    ///
    /// let fs = spockfs_client::Client::new("http://127.0.0.1:8080/fs")?;
    /// // Any `AsyncRead`: here the first GiB of a disk image.
    /// let disk = tokio::fs::File::open("/var/lib/images/vm.img").await?;
    /// fs.put_reader(b"/images/head.img", disk.take(1 << 30)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_reader<R>(&self, path: &[u8], reader: R) -> FsResult<()>
    where
        R: tokio::io::AsyncRead + Send + 'static,
    {
        let s = tokio_util::io::ReaderStream::with_capacity(reader, 128 * 1024);
        self.put_stream(path, s).await
    }

    /// Writes exactly `len` bytes, the chunks of `body`, at `offset` of an
    /// existing file (a ranged PUT, `Content-Range: bytes=offset-(offset+len-1)`
    /// with a `Content-Length`), sent as they come: memory stays flat
    /// whatever `len`.
    ///
    /// `body` must yield exactly `len` bytes: if it ends early or yields
    /// more, the request is aborted and the call fails with `EINVAL`; if it
    /// returns an error, the call fails with `EIO`. The server writes a
    /// ranged PUT in place as the body comes: an aborted call may leave
    /// part of the range written (not for bodies of up to one server chunk,
    /// 256 KiB by default, which the server reads whole before writing).
    /// `EFBIG` if the range ends past 2^64. `len == 0` sends nothing (after
    /// checking that `body` is empty). Timeout rule as for
    /// [`put_stream`](crate::Client::put_stream).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::AsyncSeekExt;
    ///
    /// let fs = spockfs_client::Client::new("http://127.0.0.1:8080/fs")?;
    /// // Resume an upload: send the local file from where the remote copy ends.
    /// let done = fs.getattr(b"/big.iso").await?.size;
    /// let mut file = tokio::fs::File::open("big.iso").await?;
    /// let total = file.metadata().await?.len();
    /// file.seek(std::io::SeekFrom::Start(done)).await?;
    /// let body = tokio_util::io::ReaderStream::with_capacity(file, 128 * 1024);
    /// fs.write_stream(b"/big.iso", done, total - done, body).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_stream<S>(&self, path: &[u8], offset: u64, len: u64, body: S) -> FsResult<()>
    where
        S: futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let mut body = Box::pin(body);
        if len == 0 {
            while let Some(c) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
                match c {
                    Ok(b) if b.is_empty() => {}
                    Ok(_) => return Err(Errno::EINVAL),
                    Err(_) => return Err(Errno::EIO),
                }
            }
            return Ok(());
        }
        let last = offset.checked_add(len - 1).ok_or(Errno::EFBIG)?;
        let h = [
            ("content-range", hv(format_args!("bytes={offset}-{last}"))),
            ("content-length", hv(len)),
        ];
        self.request_stream("PUT", path, &h, body, Some(len), &[200])
            .await
            .map(drop)
            .map_err(|e| e.errno())
    }
}
