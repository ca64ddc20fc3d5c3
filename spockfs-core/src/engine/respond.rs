//! Responses: what executing an operation produced ([`Outcome`]) turned
//! into status, headers and body, and the SpockFS error form.

use super::exec::Cx;
use super::limits::READDIR_BATCH;
use super::parse::Reject;
use super::Engine;
use crate::backend::{FileHandle, Stat, StatFs};
use crate::body::SpockBody;
use crate::headers::{
    self as h, X_SPOCK_ERRNO, X_SPOCK_EXTENSIONS, X_SPOCK_POLICY, X_SPOCK_VERSION,
};
use crate::method::{ALLOW, EXTENSIONS, EXTENSIONS_WITH_IDENTITY};
use crate::mount::Mount;
use crate::{Errno, FsPath};
use bytes::Bytes;
use headers::HeaderMapExt;
use http::header::{HeaderValue, ALLOW as ALLOW_HDR, CONTENT_RANGE, CONTENT_TYPE};
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// What executing an operation produced.
pub(super) enum Outcome {
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
    /// A READDIR over [`Limits::readdir_max_entries`](super::Limits::readdir_max_entries).
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
    pub(super) fn respond(&self, outcome: Outcome, cx: Cx<'_>) -> Response<SpockBody> {
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
                    h::put_parent(r.headers_mut(), &st);
                }
                r
            }
            Outcome::StatFs(s) => {
                let mut r = status_response(StatusCode::OK);
                h::put_statfs(r.headers_mut(), &s);
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

/// 503 for a request over the concurrency limit.
pub(super) fn busy_response(waited: Duration) -> Response<SpockBody> {
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

pub(super) fn reject(rej: Reject) -> Response<SpockBody> {
    error_response(rej.status, rej.errno, &rej.message)
}

pub(super) fn errno_response(e: Errno, context: &str) -> Response<SpockBody> {
    let msg = if context.is_empty() {
        e.description()
    } else {
        format!("{} ({context})", e.description())
    };
    error_response(e.status(), e, &msg)
}

pub(super) fn status_response(status: StatusCode) -> Response<SpockBody> {
    let mut r = Response::new(SpockBody::empty());
    *r.status_mut() = status;
    r
}

pub(super) fn options_response(mount: Option<&Mount>) -> Response<SpockBody> {
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
