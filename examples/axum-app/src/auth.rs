//! HTTP basic auth against an htpasswd file with bcrypt entries (as made by
//! `htpasswd -B`), as a tower-http `AsyncAuthorizeRequest`.
//!
//! bcrypt is deliberately slow (tens of milliseconds), and a FUSE client
//! sends one request per filesystem call, so verification runs on a blocking
//! thread and successful credentials are remembered (bounded cache keyed by
//! the exact `Authorization` value), the way nginx workers would otherwise
//! burn a core per request.

use axum::body::Body;
use base64::Engine as _;
use http::{header, Request, Response, StatusCode};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tower_http::auth::AsyncAuthorizeRequest;

/// The authenticated user name, inserted into the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser(pub String);

/// Users and their bcrypt hashes.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Reads `user:hash` lines; blank lines and `#` comments are skipped.
    /// Only bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) are accepted: the other
    /// htpasswd formats (MD5 apr1, SHA1, crypt) are weak and refused at start.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Htpasswd::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses htpasswd text.
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(format!(
                    "line {}: user {user:?} has no bcrypt hash (create entries with htpasswd -B)",
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users })
    }

    /// True if `password` is `user`'s. Slow (bcrypt): call off the async
    /// workers.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                // Same cost for unknown users, so timing does not reveal
                // which names exist.
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        }
    }
}

const DUMMY_HASH: &str = "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
const CACHE_MAX: usize = 4096;

/// Basic-auth authorizer for `AsyncRequireAuthorizationLayer`.
#[derive(Clone)]
pub struct BasicAuth {
    users: Arc<Htpasswd>,
    realm: Arc<str>,
    cache: Arc<Mutex<HashMap<Vec<u8>, String>>>,
}

impl BasicAuth {
    /// Authorizes against `users`, answering 401 with `realm`.
    pub fn new(users: Arc<Htpasswd>, realm: &str) -> BasicAuth {
        BasicAuth {
            users,
            realm: realm.into(),
            cache: Arc::default(),
        }
    }

    fn unauthorized(&self) -> Response<Body> {
        let mut r = Response::new(Body::from("401 Unauthorized\n"));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        if let Ok(v) = http::HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            self.realm
        )) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }
}

/// Decodes `Basic base64(user:password)`.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

impl<B: Send + 'static> AsyncAuthorizeRequest<B> for BasicAuth {
    type RequestBody = B;
    type ResponseBody = Body;
    type Future = Pin<Box<dyn Future<Output = Result<Request<B>, Response<Body>>> + Send>>;

    fn authorize(&mut self, mut request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(value) = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec())
            else {
                return Err(this.unauthorized());
            };
            let cached = this
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&value)
                .cloned();
            let user = match cached {
                Some(u) => u,
                None => {
                    let Some((user, pass)) = parse_basic(&value) else {
                        return Err(this.unauthorized());
                    };
                    let users = this.users.clone();
                    let u2 = user.clone();
                    let ok = tokio::task::spawn_blocking(move || users.verify(&u2, &pass))
                        .await
                        .unwrap_or(false);
                    if !ok {
                        tracing::info!(user, "basic auth failed");
                        return Err(this.unauthorized());
                    }
                    let mut cache = this.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(value, user.clone());
                    user
                }
            };
            request.extensions_mut().insert(AuthenticatedUser(user));
            Ok(request)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let hash = bcrypt::hash("s3cret", 4).unwrap_or_default();
        let h = Htpasswd::parse(&format!("# users\nalice:{hash}\n")).unwrap_or_default();
        assert!(h.verify("alice", "s3cret"));
        assert!(!h.verify("alice", "nope"));
        assert!(!h.verify("bob", "s3cret"));
        assert!(Htpasswd::parse("bob:$apr1$abc$def").is_err());
        assert!(Htpasswd::parse("nocolon").is_err());
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(parse_basic(b"Bearer x"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }
}
