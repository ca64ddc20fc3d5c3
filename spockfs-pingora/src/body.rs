//! The request body as the engine sees it: frames a pump reads from the
//! Pingora session, pulled on demand.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// The request body as the engine sees it: frames pushed by the pump (`serve::pump`),
/// pulled on demand.
pub(crate) struct PumpBody {
    pub(crate) rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    pub(crate) demand: Option<oneshot::Sender<()>>,
    pub(crate) remaining: Option<u64>,
    pub(crate) done: bool,
}

impl PumpBody {
    pub(crate) fn empty() -> PumpBody {
        PumpBody {
            rx: None,
            demand: None,
            remaining: Some(0),
            done: true,
        }
    }
}

impl Body for PumpBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(d) = self.demand.take() {
            let _ = d.send(());
        }
        let Some(rx) = self.rx.as_mut() else {
            self.done = true;
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
