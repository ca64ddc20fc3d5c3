//! Errors that say what happened: [`Error`], its [`ErrorKind`], and
//! [`redact_url`] for printing a URL without its password.
//!
//! The per-operation calls of [`Client`](crate::Client) return an
//! [`Errno`] (what a filesystem needs); [`Client::check`](crate::Client::check)
//! returns an [`Error`], which keeps the cause: the connection refused, the
//! TLS alert, the HTTP status, a URL that is not a SpockFS server.

use http::{HeaderMap, StatusCode};
use spockfs_proto::Errno;
use std::error::Error as StdError;
use std::time::Duration;

type BoxError = Box<dyn StdError + Send + Sync>;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host refused the connection: nothing listens on that port.
    ConnectionRefused,
    /// No answer in time: the connection attempt timed out, or the call
    /// took longer than the client's timeout.
    Timeout,
    /// Any other failure to connect (the name does not resolve, the
    /// network is unreachable, …).
    Connect,
    /// The TLS handshake failed for another reason than the server's
    /// certificate, e.g. `https://` spoken to a plain HTTP server.
    Tls,
    /// The server's certificate is not signed by a CA this client trusts
    /// (self-signed, or a private CA not added with
    /// [`ca_file`](crate::ClientBuilder::ca_file)).
    UntrustedCertificate,
    /// The server's certificate was rejected for another reason (made for
    /// another host name, expired, …).
    Certificate,
    /// The server answered an HTTP error status ([`Error::status`]).
    Status,
    /// Something answers HTTP at the URL, but not a SpockFS server (a
    /// wrong path prefix, another web server).
    NotSpockFs,
    /// The connection broke after it was made (closed before the whole
    /// answer, not HTTP).
    Connection,
    /// The request could not be built (a name not valid in a header).
    InvalidRequest,
    /// The body of a streamed upload failed on this side: its stream
    /// returned an error (errno `EIO`), or yielded another number of bytes
    /// than the call announced (errno `EINVAL`).
    Upload,
}

/// A failed call, with its cause: a one-line [`Display`](std::fmt::Display)
/// meant for users, the [`kind`](Error::kind) to match on, the
/// [`errno`](Error::errno) a filesystem reports for it, and the underlying
/// error (hyper's, down to the `std::io::Error` or the `rustls::Error`) as
/// [`source`](std::error::Error::source).
///
/// ```no_run
/// # async fn demo() -> Result<(), spockfs_client::BuildError> {
/// use spockfs_client::{Client, ErrorKind};
///
/// let fs = Client::new("http://127.0.0.1:8080/fs")?;
/// match fs.check().await {
///     Ok(root) => println!("root mode {:o}", root.mode),
///     Err(e) if e.kind() == ErrorKind::ConnectionRefused => eprintln!("start the server: {e}"),
///     Err(e) if e.status().is_some_and(|s| s.as_u16() == 401) => eprintln!("log in: {e}"),
///     Err(e) => eprintln!("{e} (the filesystem would see {:?})", e.errno()),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    errno: Errno,
    status: Option<StatusCode>,
    spock_errno: Option<Errno>,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno a filesystem call reports for it: the spec's mapping of
    /// the status (refined by `X-Spock-errno` from a server speaking the
    /// `errno` extension), `EIO` for a server that cannot be reached.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The HTTP status, for [`ErrorKind::Status`] (and
    /// [`ErrorKind::NotSpockFs`] when a status told it).
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The errno the server named in `X-Spock-errno`, if it sent one.
    pub fn spock_errno(&self) -> Option<Errno> {
        self.spock_errno
    }

    /// The innermost `std::io::Error` of the cause (e.g. `ConnectionRefused`),
    /// looking inside the `io::Error`s that wrap other errors (whose
    /// `source()` skips a level).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        let s = self.source.as_deref()?;
        chain(s)
            .into_iter()
            .rev()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
    }

    /// The TLS error of the cause (e.g. `InvalidCertificate(UnknownIssuer)`),
    /// for [`ErrorKind::Tls`], [`ErrorKind::UntrustedCertificate`] and
    /// [`ErrorKind::Certificate`].
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        let s = self.source.as_deref()?;
        chain(s)
            .into_iter()
            .find_map(|e| e.downcast_ref::<rustls::Error>())
    }

    fn new(kind: ErrorKind, message: String, source: Option<BoxError>) -> Error {
        Error {
            kind,
            errno: Errno::EIO,
            status: None,
            spock_errno: None,
            message,
            source,
        }
    }

    /// The client's own timeout, past `after`.
    pub(crate) fn timeout(after: Duration) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!("no answer within {after:?} (timed out)"),
            None,
        )
    }

    /// A request that could not be built.
    pub(crate) fn invalid_request(what: &str) -> Error {
        let mut e = Error::new(ErrorKind::InvalidRequest, what.to_owned(), None);
        e.errno = Errno::EINVAL;
        e
    }

    /// The body of an answer could not be read.
    pub(crate) fn body(e: hyper::Error) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!("reading the answer: {e}"),
            Some(Box::new(e)),
        )
    }

    /// A streamed upload's body failed.
    pub(crate) fn upload(e: crate::upload::UploadError) -> Error {
        use crate::upload::UploadError as U;
        let errno = match e {
            U::Io(_) => Errno::EIO,
            U::Short { .. } | U::Long { .. } => Errno::EINVAL,
        };
        let mut e = Error::new(ErrorKind::Upload, e.to_string(), Some(Box::new(e)));
        e.errno = errno;
        e
    }

    /// An error status; `use_header`: the server speaks the `errno`
    /// extension, so its `X-Spock-errno` refines the errno.
    pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap, use_header: bool) -> Error {
        let errno = Errno::from_response(status, headers, use_header);
        let spock_errno = headers
            .get(&spockfs_proto::headers::X_SPOCK_ERRNO)
            .and_then(|v| v.to_str().ok())
            .and_then(Errno::from_name);
        let from_spockfs = headers.keys().any(|k| k.as_str().starts_with("x-spock-"));
        let code = status.as_u16();
        let mut message = format!("HTTP {code} {}", status.canonical_reason().unwrap_or(""))
            .trim_end()
            .to_owned();
        if let Some(e) = spock_errno {
            message.push_str(&format!(" (X-Spock-errno: {e:?})"));
        }
        match code {
            401 => message.push_str(": wrong or missing credentials"),
            407 => message.push_str(": wrong or missing proxy credentials"),
            502..=504 if !from_spockfs => {
                message.push_str(" from a proxy: the SpockFS server behind it is down?")
            }
            503 => message.push_str(": the server is busy, try again"),
            _ => {}
        }
        Error {
            kind: ErrorKind::Status,
            errno,
            status: Some(status),
            spock_errno,
            message,
            source: spock_errno.map(|e| Box::new(e) as BoxError),
        }
    }

    /// Not a SpockFS server: `why` says what answered instead.
    pub(crate) fn not_spockfs(why: String, status: Option<StatusCode>, errno: Errno) -> Error {
        let mut e = Error::new(
            ErrorKind::NotSpockFs,
            format!("no SpockFS server at this URL ({why}; is the path prefix right, e.g. /fs?)"),
            None,
        );
        e.status = status;
        e.errno = errno;
        e
    }

    /// A failure of the HTTP client (connecting, TLS, the connection),
    /// classified by walking its causes; `https`: the URL's scheme.
    pub(crate) fn from_transport(e: hyper_util::client::legacy::Error, https: bool) -> Error {
        let connecting = e.is_connect();
        let (kind, message) = classify(&e, connecting, https);
        Error::new(kind, message, Some(Box::new(e)))
    }
}

/// `e` and its causes, outermost first. An `io::Error` wrapping another
/// error reports that error's *source* as its own, skipping the wrapped
/// error itself (hyper-rustls wraps the `rustls::Error` in two of them):
/// here the wrapped error is the next link.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        out.push(x);
        if out.len() > 32 {
            break;
        }
        cur = match x.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => x.source(),
        };
    }
    out
}

fn classify(e: &(dyn StdError + 'static), connecting: bool, https: bool) -> (ErrorKind, String) {
    let links = chain(e);
    if let Some(t) = links.iter().find_map(|x| x.downcast_ref::<rustls::Error>()) {
        return match t {
            // BadSignature: signed by another CA than the trusted one of
            // the same name.
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => (
                ErrorKind::UntrustedCertificate,
                format!("TLS: server certificate not trusted: {t} (not signed by a trusted CA)"),
            ),
            rustls::Error::InvalidCertificate(c) => {
                let hint = match c {
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => {
                        " (made for another host name)"
                    }
                    _ => "",
                };
                (
                    ErrorKind::Certificate,
                    format!("TLS: server certificate rejected: {t}{hint}"),
                )
            }
            rustls::Error::NoCertificatesPresented => (
                ErrorKind::Certificate,
                format!("TLS: server certificate rejected: {t}"),
            ),
            rustls::Error::InvalidMessage(_) => (
                ErrorKind::Tls,
                format!("TLS handshake failed: {t} (is it a plain http:// server?)"),
            ),
            _ => (ErrorKind::Tls, format!("TLS handshake failed: {t}")),
        };
    }
    let io = links
        .iter()
        .rev()
        .find_map(|x| x.downcast_ref::<std::io::Error>());
    let innermost = links.last().map(|x| x.to_string()).unwrap_or_default();
    use std::io::ErrorKind as K;
    match io.map(std::io::Error::kind) {
        Some(K::ConnectionRefused) => (
            ErrorKind::ConnectionRefused,
            "connection refused (is the server running?)".to_owned(),
        ),
        Some(K::TimedOut) => (ErrorKind::Timeout, "connection timed out".to_owned()),
        Some(K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe)
            if connecting && https =>
        {
            (
                ErrorKind::Tls,
                format!(
                    "TLS handshake failed: the server closed the connection ({innermost}; \
                     is it a plain http:// server?)"
                ),
            )
        }
        _ if connecting => (ErrorKind::Connect, format!("cannot connect: {innermost}")),
        _ if !https => (
            ErrorKind::Connection,
            format!("connection failed: {innermost} (is it an https:// server?)"),
        ),
        _ => (
            ErrorKind::Connection,
            format!("connection failed: {innermost}"),
        ),
    }
}

/// `url` with the password of its userinfo replaced by `***`
/// (`http://user:***@host/fs`), for messages and logs. Anything that does
/// not parse as `scheme://authority…` is returned unchanged if it holds no
/// `@`, and as `***` otherwise.
///
/// ```
/// use spockfs_client::redact_url;
/// assert_eq!(redact_url("https://alice:s3cret@h:8443/fs"), "https://alice:***@h:8443/fs");
/// assert_eq!(redact_url("http://alice@h/fs"), "http://alice@h/fs");
/// assert_eq!(redact_url("http://h/fs?a@b"), "http://h/fs?a@b");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return if url.contains('@') {
            "***".into()
        } else {
            url.to_owned()
        };
    };
    let rest = &url[s + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.split_once(':') {
        Some((u, _)) => format!("{u}:***"),
        None => userinfo.to_owned(),
    };
    format!("{}{user}{}", &url[..s + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact_url("http://u:p@h/fs"), "http://u:***@h/fs");
        assert_eq!(redact_url("http://u:p:q@x@h/fs"), "http://u:***@h/fs");
        assert_eq!(redact_url("http://h:1/fs"), "http://h:1/fs");
        assert_eq!(redact_url("u:p@h"), "***");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("http://u:p@h"), "http://u:***@h");
    }

    #[test]
    fn statuses() {
        let h = HeaderMap::new();
        let e = Error::from_status(StatusCode::UNAUTHORIZED, &h, false);
        assert_eq!(
            e.to_string(),
            "HTTP 401 Unauthorized: wrong or missing credentials"
        );
        assert_eq!((e.kind(), e.errno()), (ErrorKind::Status, Errno::EIO));
        let e = Error::from_status(StatusCode::BAD_GATEWAY, &h, false);
        assert_eq!(
            e.to_string(),
            "HTTP 502 Bad Gateway from a proxy: the SpockFS server behind it is down?"
        );
        let mut h = HeaderMap::new();
        h.insert("x-spock-errno", http::HeaderValue::from_static("EAGAIN"));
        let e = Error::from_status(StatusCode::SERVICE_UNAVAILABLE, &h, true);
        assert_eq!(
            e.to_string(),
            "HTTP 503 Service Unavailable (X-Spock-errno: EAGAIN): the server is busy, try again"
        );
        assert_eq!(e.errno(), Errno::EAGAIN);
        assert_eq!(e.spock_errno(), Some(Errno::EAGAIN));
        let src = e.source().map(ToString::to_string).unwrap_or_default();
        assert!(src.starts_with("EAGAIN"), "{src}");
    }
}
