//! Connection protection for servers that host SpockFS (the two example
//! servers use it): a transparent
//! wrapper around a connection's byte stream ([`GuardedIo`]) that enforces
//! the connection timeouts of HTTP/1 and HTTP/2, and a registry of open
//! connections ([`ConnLimiter`]) that caps how many there are, in all and
//! per client address.
//!
//! The wrapper cannot parse HTTP/1; the server tells it when a request head
//! has been read and when its response is done ([`ConnActivity::request`],
//! whose guard ends the request when dropped). Of HTTP/2 it reads just the
//! frame headers. The timeouts ([`ConnTimeouts`]):
//!
//! - **idle**: no request in progress for [`ConnTimeouts::idle`] (from
//!   accept, or from the end of the last response): the read side reports
//!   end of file and the server closes the connection quietly. For HTTP/2
//!   this counts requests, not bytes: pings and window updates do not keep
//!   a connection open.
//! - **header**: a request head started but not complete within
//!   [`ConnTimeouts::header`]: the read side fails with `TimedOut` and the
//!   server drops the connection. HTTP/1: from the first byte of the head
//!   to the server taking the request. HTTP/2: from a `HEADERS` frame to
//!   the end of the frame that carries `END_HEADERS` (the stream's
//!   `HEADERS` or its last `CONTINUATION`), whatever else is in progress.
//! - **write**: a write that stays blocked (the client reads nothing) for
//!   [`ConnTimeouts::write`] fails with `TimedOut` and the server drops the
//!   connection.
//!
//! While an HTTP/1 request is in progress the read side adds nothing:
//! request bodies are covered by the engine's
//! `Limits::body_timeout`, and slow filesystem calls must
//! not be cut off. HTTP/2 is recognised by its preface (or declared with
//! [`GuardedIo::http2`] when ALPN chose it); its keep-alive pings are the
//! HTTP/2 stack's (hyper's, or the gateway's own loop).
//!
//! Linux only (the default connection cap reads `RLIMIT_NOFILE`).
#![warn(missing_docs)]

mod guard;
mod h2;
mod limit;
mod state;
#[cfg(test)]
mod tests;

pub use guard::{ConnTimeouts, GuardedIo, LINGER_BYTES, LINGER_TIME};
pub use limit::{
    default_max_connections, default_max_connections_unpaced, max_connections_for, Admission,
    ConnLimiter, Refused, ACCEPT_BURST_FDS, MAX_CLOSING, RESERVED_FDS,
};
pub use state::{ConnActivity, RequestActive};
