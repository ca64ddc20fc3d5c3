//! Following a client's HTTP/2 frames far enough to time request heads.

use crate::state::State;
use tokio::time::Instant;

pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows the HTTP/2 frames a client sends, far enough to time request
/// heads: each 9-byte frame header gives the frame's length, type and
/// flags; payloads are skipped.
#[derive(Debug)]
pub(crate) struct H2Frames {
    /// Preface bytes still to skip.
    pub(crate) preface: usize,
    pub(crate) head: [u8; 9],
    pub(crate) have: usize,
    /// Payload bytes of the current frame still to come.
    pub(crate) left: usize,
    /// The current frame ends a header block (`HEADERS` or `CONTINUATION`
    /// with `END_HEADERS`).
    pub(crate) ends_block: bool,
}

pub(crate) const FRAME_HEADERS: u8 = 0x1;
pub(crate) const FRAME_CONTINUATION: u8 = 0x9;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;

impl H2Frames {
    /// Starting `done` bytes into the preface.
    pub(crate) fn new(done: usize) -> H2Frames {
        H2Frames {
            preface: H2_PREFACE.len() - done,
            head: [0; 9],
            have: 0,
            left: 0,
            ends_block: false,
        }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8], st: &mut State) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
            } else if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                if self.left == 0 {
                    self.frame_done(st);
                }
            } else {
                let n = (9 - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = self.head;
                    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                    let (ty, flags) = (h[3], h[4]);
                    let header_frame = ty == FRAME_HEADERS || ty == FRAME_CONTINUATION;
                    if header_frame && st.header_started.is_none() {
                        st.header_started = Some(Instant::now());
                    }
                    self.ends_block = header_frame && flags & FLAG_END_HEADERS != 0;
                    self.left = len;
                    if len == 0 {
                        self.frame_done(st);
                    }
                }
            }
        }
    }

    pub(crate) fn frame_done(&mut self, st: &mut State) {
        if std::mem::take(&mut self.ends_block) {
            st.header_started = None;
            // A complete head counts as activity: the request is about to
            // be taken (the idle clock must not close it first).
            st.idle_since = Instant::now();
        }
    }
}
