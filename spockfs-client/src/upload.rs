//! Request bodies: the pool's body type ([`ReqBody`]), either a whole
//! buffer (every ordinary call, no allocation beyond the `Bytes`) or a
//! streamed upload ([`Upload`]) that checks its length, keeps the failure
//! of its source for the caller and tells the call when it is sent (for
//! the timeout rule, see [`Client::put_stream`](crate::Client::put_stream)).

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
