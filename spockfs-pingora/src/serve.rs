//! Serving one SpockFS request on a Pingora `Session` with an engine:
//! the request head and body in, the response head and body out.

use crate::body::PumpBody;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT};
use http::{Request, StatusCode, Uri};
use http_body::Body;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use spockfs_core::{Engine, SpockBody};
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};

/// Builds the engine's request from Pingora's header: same method, version,
/// headers and extensions (a per-request `Mount`, and whatever else the
/// host attached); the URI keeps the authority (HTTP/2 vhost selection)
/// with the stripped path.
pub(crate) fn engine_request(
    rh: &RequestHeader,
    path: &str,
    body: PumpBody,
) -> Option<Request<PumpBody>> {
    let pq = match rh.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri = match rh.uri.authority() {
        Some(a) => Uri::builder()
            .scheme(rh.uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(a.clone())
            .path_and_query(pq)
            .build()
            .ok()?,
        None => pq.parse().ok()?,
    };
    let mut req = Request::new(body);
    *req.method_mut() = rh.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = rh.version;
    *req.headers_mut() = rh.headers.clone();
    // Cloned, not taken: the host's later hooks (logging) still see them.
    // Empty extensions clone without allocating.
    *req.extensions_mut() = rh.extensions.clone();
    Some(req)
}

/// Serves one SpockFS request on `session` with `engine`.
pub async fn serve(engine: &Engine, path: &str, session: &mut Session) -> Result<()> {
    let no_body = session.as_downstream_mut().is_body_empty();
    let content_length = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expect_continue = session
        .req_header()
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if no_body {
        // Most SpockFS requests (GETATTR, READDIR, GET…) carry no body:
        // no pump, no channel.
        let Some(req) = engine_request(session.req_header(), path, PumpBody::empty()) else {
            session.respond_error(400).await?;
            return Ok(());
        };
        let resp = engine.handle(req).await;
        let r = write_response(session, resp).await;
        return finish(session, r);
    }
    let (tx, rx) = mpsc::channel(2);
    let (demand_tx, demand_rx) = oneshot::channel();
    let body = PumpBody {
        rx: Some(rx),
        demand: Some(demand_tx),
        remaining: content_length,
        done: false,
    };
    let Some(req) = engine_request(session.req_header(), path, body) else {
        session.respond_error(400).await?;
        return Ok(());
    };

    // Run the engine and the request-body pump together: the engine pulls
    // the body only when it needs it (PUT, SETXATTR, draining before an
    // error), and only then is `100 Continue` sent and the body read.
    let mut body_complete = false;
    let resp = {
        let handle = engine.handle(req);
        tokio::pin!(handle);
        let pump = pump(session, tx, demand_rx, expect_continue);
        tokio::pin!(pump);
        let mut pump_done = false;
        loop {
            tokio::select! {
                resp = &mut handle => break resp,
                done = &mut pump, if !pump_done => {
                    pump_done = true;
                    body_complete = done;
                }
            }
        }
    };
    if !body_complete {
        // Part of the request body is still on the wire: the connection
        // cannot be reused.
        session.as_downstream_mut().set_keepalive(None);
    }
    let r = write_response(session, resp).await;
    finish(session, r)
}

/// A client that went away mid-response is not a server error: close the
/// connection quietly instead of letting Pingora log an ERROR for it.
fn finish(session: &mut Session, r: Result<()>) -> Result<()> {
    match r {
        Err(e)
            if matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ConnectionClosed
            ) =>
        {
            tracing::debug!(error = %e, "client went away during a SpockFS response");
            session.as_downstream_mut().set_keepalive(None);
            Ok(())
        }
        r => r,
    }
}

/// Reads the request body into the engine's channel once the engine first
/// asks for it. Returns true if the body was read to its end.
async fn pump(
    session: &mut Session,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    demand: oneshot::Receiver<()>,
    expect_continue: bool,
) -> bool {
    if demand.await.is_err() {
        return false;
    }
    if expect_continue {
        // Pingora disables keep-alive on an interim response unless told
        // that answering before the body is fine.
        session
            .as_mut()
            .set_close_on_response_before_downstream_finish(false);
        if let Err(e) = session.as_downstream_mut().write_continue_response().await {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return false;
        }
    }
    loop {
        match session.as_downstream_mut().read_request_body().await {
            Ok(Some(b)) => {
                if tx.send(Ok(b)).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return false;
            }
        }
    }
}

/// Writes a response made by the engine (or by [`spockfs_core::error_response`])
/// on `session`: header, then the body streamed frame by frame. A client
/// that went away is not an error (the connection is just not reused).
pub async fn respond(session: &mut Session, resp: http::Response<SpockBody>) -> Result<()> {
    let r = write_response(session, resp).await;
    finish(session, r)
}

/// Writes the engine's response: header (with an exact Content-Length, or
/// chunked for a streamed READDIR), then the body streamed frame by frame.
async fn write_response(session: &mut Session, resp: http::Response<SpockBody>) -> Result<()> {
    let (parts, body) = resp.into_parts();
    let (mut parts, mut body) = (parts, body);
    if !parts.headers.contains_key(CONTENT_LENGTH) && !no_body_status(parts.status) {
        match body.size_hint().exact() {
            Some(n) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, http::HeaderValue::from(n));
            }
            None if session.req_header().version == http::Version::HTTP_11 => {
                parts.headers.insert(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static("chunked"),
                );
            }
            // HTTP/1.0: the end of the connection ends the body; HTTP/2
            // frames it by itself.
            None => {}
        }
    }
    // The engine's response head moves in whole (no case map: names go out
    // lowercase, exactly as hyper sends them).
    let header = ResponseHeader::from(parts);
    let mut end = body.is_end_stream();
    session.write_response_header(Box::new(header), end).await?;
    let mut body = Pin::new(&mut body);
    while !end {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                session.write_response_body(None, true).await?;
                end = true;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    end = body.is_end_stream();
                    session.write_response_body(Some(data), end).await?;
                }
            }
            Some(Err(e)) => {
                // Content-Length was promised; abort the connection.
                // (InternalError, not WriteError: `finish` treats write
                // errors as a client that went away.)
                return Err(Error::because(
                    ErrorType::InternalError,
                    "SpockFS response body",
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn no_body_status(s: StatusCode) -> bool {
    s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> RequestHeader {
        let mut r =
            RequestHeader::build("GET", uri.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
        if let Some(h) = host {
            r.insert_header("host", h).unwrap_or_else(|e| panic!("{e}"));
        }
        r
    }

    /// Whatever the host attached to the request (a per-request `Mount`,
    /// any other type) reaches the engine, and stays on the session.
    #[test]
    fn extensions_go_to_the_engine() {
        #[derive(Clone, Debug, PartialEq)]
        struct Identity(&'static str);
        let mut rh = req(Some("x"), "/fs/a?q=1");
        let mount = spockfs_core::Mount::new(spockfs_core::MemFs::new()).read_only(true);
        rh.extensions_mut().insert(mount);
        rh.extensions_mut().insert(Identity("alice"));
        let r = engine_request(&rh, "/a", PumpBody::empty()).unwrap_or_else(|| panic!());
        assert_eq!(r.uri(), "/a?q=1");
        assert!(r
            .extensions()
            .get::<spockfs_core::Mount>()
            .is_some_and(|m| m.is_read_only()));
        assert_eq!(r.extensions().get::<Identity>(), Some(&Identity("alice")));
        assert!(rh.extensions.get::<Identity>().is_some());
    }
}
