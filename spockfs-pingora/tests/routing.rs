//! The module's routing as seen from a Pingora request header: host
//! (`Host` or HTTP/2 `:authority`) and path prefix to engine and stripped
//! path.

use pingora::http::RequestHeader;
use spockfs_core::{Engine, Routes};
use spockfs_pingora::SpockFsModule;

fn req(host: Option<&str>, uri: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
    if let Some(h) = host {
        r.insert_header("host", h).unwrap_or_else(|e| panic!("{e}"));
    }
    r
}

#[test]
fn routing() {
    let m = SpockFsModule::new(
        Routes::new()
            .prefix("/fs/", Engine::builder().build())
            .vhost("Files.Test", Engine::builder().build())
            .route(Some("a.test:8080"), "/data", Engine::builder().build()),
    );
    let p = |h: Option<&str>, u: &str| m.route_for(&req(h, u)).map(|(_, p)| p);
    assert_eq!(p(Some("x"), "/fs"), Some("/".into()));
    assert_eq!(p(Some("x"), "/fs/"), Some("/".into()));
    assert_eq!(p(Some("x"), "/fs/a/b"), Some("/a/b".into()));
    assert_eq!(p(Some("x"), "/fsx"), None);
    assert_eq!(p(Some("x"), "/other"), None);
    assert_eq!(p(Some("files.test:443"), "/other"), Some("/other".into()));
    assert_eq!(p(Some("a.test:8080"), "/data/x"), Some("/x".into()));
    assert_eq!(p(Some("a.test:8081"), "/data/x"), None);
    // HTTP/2: no Host header, the authority is in the URI.
    let mut h2 = req(None, "/z");
    h2.set_uri(
        "https://files.test/z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(m.route_for(&h2).map(|(_, p)| p), Some("/z".into()));
    assert_eq!(p(None, "/fs/q"), Some("/q".into()));
}
