//! Which mount, engine or upstream serves a request: the one place that
//! maps a request's (host, path prefix) to what serves it.
//!
//! - [`Hosts`] finds a value by virtual host name, as every host-based
//!   choice in this project does: case-insensitive, userinfo and a trailing
//!   dot ignored, `host:port` tried before `host`;
//! - [`Routes`] adds path prefixes (stripped as axum's `nest_service`
//!   strips them) and routes for every host: spockfs-pingora's module
//!   routes requests to engines with it, and a gateway its upstream pools;
//! - [`MountTable`] is what one engine serves: a [`Mount`] in the request's
//!   extensions, else a vhost (a [`Hosts`] lookup), else a site of the
//!   sites directory, else the default root.

use crate::mount::Mount;
use crate::path::strip_mount_prefix;
use crate::sites::{SiteLookup, SitesDir};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// The authority a request names: the URI's (HTTP/2 `:authority`, or an
/// absolute-form request line), else the `Host` header. `None` if neither
/// is there (or `Host` is not visible ASCII).
///
/// ```
/// use spockfs_core::route::request_host;
/// let req = http::Request::builder().uri("/x").header("host", "a.example").body(()).unwrap();
/// assert_eq!(request_host(req.uri(), req.headers()), Some("a.example"));
/// let h2 = http::Request::builder().uri("https://b.example/x").body(()).unwrap();
/// assert_eq!(request_host(h2.uri(), h2.headers()), Some("b.example"));
/// ```
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// True for an HTTP/1.1 request that names no host (no authority, no
/// `Host`): RFC 9112 §3.2 makes it a 400. HTTP/1.0 may omit it (such a
/// request gets the default root).
///
/// ```
/// use spockfs_core::route::missing_host;
/// let req = http::Request::builder().uri("/x").body(()).unwrap();
/// assert!(missing_host(req.version(), req.uri(), req.headers()));
/// ```
pub fn missing_host(version: http::Version, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && uri.authority().is_none()
        && !headers.contains_key(http::header::HOST)
}

/// A request's authority as vhost names are compared: userinfo dropped,
/// lowercase (allocating only if needed), no trailing dot.
///
/// ```
/// use spockfs_core::route::normalize_host;
/// assert_eq!(normalize_host("u@Files.Example.com.:8080"), "files.example.com.:8080");
/// assert_eq!(normalize_host("Files.Example.com."), "files.example.com");
/// ```
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; anything else unchanged.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// A mount prefix as routes compare it: starting with `/`, without a
/// trailing one; `""` (from `""` or `"/"`) is the whole host.
///
/// ```
/// use spockfs_core::route::normalize_prefix;
/// assert_eq!(normalize_prefix("/fs/"), "/fs");
/// assert_eq!(normalize_prefix("fs"), "/fs");
/// assert_eq!(normalize_prefix("/"), "");
/// assert_eq!(normalize_prefix(""), "");
/// ```
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() || p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    }
}

/// Values by virtual host name (`name` or `name:port`): a request host
/// selects `host:port` as it names it, then `host` alone; names compare
/// [normalized](normalize_host) on both sides.
///
/// ```
/// use spockfs_core::route::Hosts;
/// let mut hosts = Hosts::new();
/// hosts.insert("Files.Example.com", 1);
/// hosts.insert("files.example.com:8080", 2);
/// assert_eq!(hosts.get("files.example.com:443"), Some(&1));
/// assert_eq!(hosts.get("FILES.example.com:8080"), Some(&2));
/// assert_eq!(hosts.get("other.example.com"), None);
/// ```
#[derive(Clone, Debug)]
pub struct Hosts<T> {
    map: HashMap<String, T>,
}

impl<T> Default for Hosts<T> {
    fn default() -> Self {
        Hosts {
            map: HashMap::new(),
        }
    }
}

impl<T> Hosts<T> {
    /// No hosts.
    pub fn new() -> Self {
        Hosts::default()
    }

    /// Sets the value of `host` (`name` or `name:port`, case-insensitive),
    /// returning the one it replaces.
    pub fn insert(&mut self, host: &str, value: T) -> Option<T> {
        self.map.insert(normalize_host(host).into_owned(), value)
    }

    fn entry(&mut self, host: &str) -> &mut T
    where
        T: Default,
    {
        self.map
            .entry(normalize_host(host).into_owned())
            .or_default()
    }

    /// The values a request host (its authority as sent) selects, most
    /// specific first: the one named `host:port`, then the one named
    /// `host`.
    pub fn matching(&self, host: &str) -> impl Iterator<Item = &T> {
        let (full, bare) = if self.map.is_empty() {
            (None, None)
        } else {
            let host = normalize_host(host);
            let bare = strip_port(&host);
            let bare = (bare.len() != host.len())
                .then(|| self.map.get(bare))
                .flatten();
            (self.map.get(host.as_ref()), bare)
        };
        full.into_iter().chain(bare)
    }

    /// The value a request host selects: `host:port`, else `host`.
    pub fn get(&self, host: &str) -> Option<&T> {
        self.matching(host).next()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }

    /// True if no host is configured.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Values by host and path prefix: what a request is routed to, and its
/// path with the prefix stripped.
///
/// A request is matched against the routes of its host (`host:port`,
/// then `host`, as [`Hosts`]), then against the routes for every host;
/// within each, the longest prefix under which the path lies wins (the
/// first added among equals). A prefix is stripped like axum's
/// `nest_service` strips it: `/fs` and `/fs/` are the root, `/fsx` does
/// not match.
///
/// ```
/// use spockfs_core::route::Routes;
/// let routes = Routes::new()
///     .vhost("files.example.com", "files")
///     .prefix("/fs", "any host")
///     .route(Some("a.example:8080"), "/data", "a, port 8080");
/// assert_eq!(routes.find(Some("Files.Example.com:443"), "/x"), Some((&"files", "/x")));
/// assert_eq!(routes.find(Some("b.example"), "/fs"), Some((&"any host", "/")));
/// assert_eq!(routes.find(None, "/fs/a"), Some((&"any host", "/a")));
/// assert_eq!(routes.find(Some("a.example:8080"), "/data/y"), Some((&"a, port 8080", "/y")));
/// assert_eq!(routes.find(Some("a.example"), "/data/y"), None);
/// ```
#[derive(Clone, Debug)]
pub struct Routes<T> {
    hosts: Hosts<Vec<(String, T)>>,
    any: Vec<(String, T)>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes {
            hosts: Hosts::default(),
            any: Vec::new(),
        }
    }
}

impl<T> Routes<T> {
    /// No routes.
    pub fn new() -> Self {
        Routes::default()
    }

    /// Every request to `host` (`name` or `name:port`, case-insensitive;
    /// `name` matches any port) goes to `value`, path unchanged.
    pub fn vhost(self, host: &str, value: T) -> Self {
        self.route(Some(host), "", value)
    }

    /// On every host, requests under `prefix` go to `value`, with the
    /// prefix stripped.
    pub fn prefix(self, prefix: &str, value: T) -> Self {
        self.route(None, prefix, value)
    }

    /// The general form: `host` (`None` for every host) and `prefix` (`""`
    /// or `"/"` for the whole host; [normalized](normalize_prefix)).
    pub fn route(mut self, host: Option<&str>, prefix: &str, value: T) -> Self {
        self.insert(host, prefix, value);
        self
    }

    /// [`route`](Routes::route) in place.
    pub fn insert(&mut self, host: Option<&str>, prefix: &str, value: T) {
        let list = match host {
            Some(h) => self.hosts.entry(h),
            None => &mut self.any,
        };
        let prefix = normalize_prefix(prefix);
        // Longest prefix first; after the routes of the same length.
        let at = list.partition_point(|(p, _)| p.len() >= prefix.len());
        list.insert(at, (prefix, value));
    }

    /// What a request to `host` (its authority as sent; `None` if it names
    /// none) for `path` goes to, and its path under the route's prefix
    /// (always starting with `/`).
    pub fn find<'a, 'p>(&'a self, host: Option<&str>, path: &'p str) -> Option<(&'a T, &'p str)> {
        let for_host = host.into_iter().flat_map(|h| self.hosts.matching(h));
        for list in for_host.chain(std::iter::once(&self.any)) {
            for (prefix, value) in list {
                if let Some(rest) = strip_mount_prefix(prefix, path) {
                    return Some((value, rest));
                }
            }
        }
        None
    }

    /// [`find`](Routes::find) for a request: its host is
    /// [`request_host`], its path the URI's.
    pub fn find_request<'a, 'r>(
        &'a self,
        uri: &'r http::Uri,
        headers: &http::HeaderMap,
    ) -> Option<(&'a T, &'r str)> {
        self.find(request_host(uri, headers), uri.path())
    }

    /// Every routed value, with its host (`None`: every host) and prefix.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, &str, &T)> {
        let hosts = self.hosts.map.iter().flat_map(|(h, list)| {
            list.iter()
                .map(move |(p, v)| (Some(h.as_str()), p.as_str(), v))
        });
        let any = self.any.iter().map(|(p, v)| (None, p.as_str(), v));
        hosts.chain(any)
    }

    /// True if there are no routes.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.any.is_empty()
    }
}

/// Virtual hosts, a sites directory and the default root: the mounts one
/// engine serves.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    vhosts: Hosts<Mount>,
    sites: Option<Arc<SitesDir>>,
    default: Option<Mount>,
}

/// What [`MountTable::select`] found.
#[derive(Debug, Clone)]
pub enum Selected {
    /// The mount to serve the request with.
    Mount(Mount),
    /// A site of the sites directory that is not open yet: open it off the
    /// async workers ([`SiteLookup::open`]).
    Lookup(SiteLookup),
}

/// Why no mount was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// No vhost matched and there is no default root: 404.
    NoMount,
    /// HTTP/1.1 request without `Host`: 400.
    MissingHost,
}

impl MountTable {
    /// Adds a virtual host (`"example.com"` or `"example.com:8080"`,
    /// case-insensitive).
    pub fn insert_vhost(&mut self, host: &str, mount: Mount) {
        self.vhosts.insert(host, mount);
    }

    /// Sets the default root, used when no vhost matches.
    pub fn set_default(&mut self, mount: Mount) {
        self.default = Some(mount);
    }

    /// Serves hosts that no vhost names from a [`SitesDir`]; a host with no
    /// site there is 404, never the default root.
    pub fn set_sites(&mut self, sites: SitesDir) {
        self.sites = Some(Arc::new(sites));
    }

    /// The sites directory, if any.
    pub fn sites(&self) -> Option<&Arc<SitesDir>> {
        self.sites.as_ref()
    }

    /// Every configured mount (vhosts, then the default root).
    pub fn mounts(&self) -> impl Iterator<Item = &Mount> {
        self.vhosts.values().chain(self.default.iter())
    }

    /// True if nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.vhosts.is_empty() && self.default.is_none() && self.sites.is_none()
    }

    /// True if some request may act as another identity than the
    /// server's (a mount or the sites directory is configured so): the
    /// server needs [`check_can_switch`](crate::identity::check_can_switch).
    pub fn switches_identity(&self) -> bool {
        self.mounts().any(|m| m.policy().switches_identity())
            || self.sites.as_ref().is_some_and(|s| s.switches_identity())
    }

    /// Chooses the mount for a request: a [`Mount`] in its extensions,
    /// else a vhost, else a site of the sites directory, else the default
    /// root.
    pub fn select(&self, parts: &http::request::Parts) -> Result<Selected, SelectError> {
        if let Some(m) = parts.extensions.get::<Mount>() {
            return Ok(Selected::Mount(m.clone()));
        }
        if missing_host(parts.version, &parts.uri, &parts.headers) {
            return Err(SelectError::MissingHost);
        }
        let host = request_host(&parts.uri, &parts.headers);
        if let Some(m) = host.and_then(|h| self.vhosts.get(h)) {
            return Ok(Selected::Mount(m.clone()));
        }
        if let Some(sites) = &self.sites {
            let name = host
                .and_then(SitesDir::site_name)
                .ok_or(SelectError::NoMount)?;
            return Ok(match sites.cached_mount(&name) {
                Some(m) => Selected::Mount(m),
                None => Selected::Lookup(SiteLookup {
                    sites: sites.clone(),
                    name,
                }),
            });
        }
        self.default
            .clone()
            .map(Selected::Mount)
            .ok_or(SelectError::NoMount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemFs;

    fn parts(host: Option<&str>, uri: &str, version: http::Version) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri).version(version);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn selection_order() {
        let a = Mount::new(MemFs::new());
        let b = Mount::new(MemFs::new()).read_only(true);
        let d = Mount::new(MemFs::new());
        let mut t = MountTable::default();
        fn sel(t: &MountTable, p: &http::request::Parts) -> Result<Mount, SelectError> {
            match t.select(p)? {
                Selected::Mount(m) => Ok(m),
                Selected::Lookup(_) => panic!("no sites directory here"),
            }
        }
        t.insert_vhost("A.example", a.clone());
        t.insert_vhost("b.example:8080", b.clone());
        let v11 = http::Version::HTTP_11;
        assert!(Arc::ptr_eq(
            sel(&t, &parts(Some("a.EXAMPLE:99"), "/", v11))
                .unwrap_or_else(|_| panic!())
                .backend(),
            a.backend()
        ));
        assert!(sel(&t, &parts(Some("b.example:8080"), "/", v11)).is_ok_and(|m| m.is_read_only()));
        assert_eq!(
            sel(&t, &parts(Some("b.example"), "/", v11)).err(),
            Some(SelectError::NoMount)
        );
        assert_eq!(
            sel(&t, &parts(None, "/", v11)).err(),
            Some(SelectError::MissingHost)
        );
        t.set_default(d.clone());
        assert!(Arc::ptr_eq(
            sel(&t, &parts(Some("other"), "/", v11))
                .unwrap_or_else(|_| panic!())
                .backend(),
            d.backend()
        ));
        // HTTP/2: :authority, no Host header.
        assert!(Arc::ptr_eq(
            sel(
                &t,
                &parts(None, "https://a.example/x", http::Version::HTTP_2)
            )
            .unwrap_or_else(|_| panic!())
            .backend(),
            a.backend()
        ));
        // HTTP/1.0 without Host: default.
        assert!(sel(&t, &parts(None, "/", http::Version::HTTP_10)).is_ok());
        // Extension wins.
        let mut p = parts(Some("a.example"), "/", v11);
        p.extensions.insert(b.clone());
        assert!(sel(&t, &p).is_ok_and(|m| m.is_read_only()));
    }

    #[test]
    fn ports() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    /// A configured name is normalized as request hosts are: a vhost
    /// written with a trailing dot or in capitals is found (before, only
    /// the request side dropped the dot, so such a vhost never matched).
    #[test]
    fn configured_names_normalize_like_requests() {
        let mut t = MountTable::default();
        t.insert_vhost("Docs.Example.", Mount::new(MemFs::new()).read_only(true));
        for host in ["docs.example", "DOCS.example.", "docs.example:80"] {
            let p = parts(Some(host), "/", http::Version::HTTP_11);
            assert!(
                matches!(t.select(&p), Ok(Selected::Mount(m)) if m.is_read_only()),
                "{host}"
            );
        }
        let routes = Routes::new().vhost("Docs.Example.", 1);
        assert_eq!(routes.find(Some("docs.example"), "/a"), Some((&1, "/a")));
    }

    /// Host before any host, `host:port` before `host`, longest prefix
    /// first, first added among equals; a host's routes that do not cover
    /// the path fall through to the next.
    #[test]
    fn route_order() {
        let r = Routes::new()
            .prefix("/", "any")
            .prefix("/fs/", "any /fs")
            .route(Some("a.test"), "/fs", "a /fs")
            .route(Some("a.test:8080"), "/", "a:8080")
            .route(Some("a.test"), "/fs/deep", "a /fs/deep")
            .route(Some("A.TEST."), "/fs/deep", "a /fs/deep again");
        assert_eq!(r.find(Some("x"), "/fs/q"), Some((&"any /fs", "/q")));
        assert_eq!(r.find(Some("x"), "/other"), Some((&"any", "/other")));
        assert_eq!(r.find(Some("a.test"), "/fs/q"), Some((&"a /fs", "/q")));
        assert_eq!(
            r.find(Some("a.test:1"), "/fs/deep/q"),
            Some((&"a /fs/deep", "/q"))
        );
        assert_eq!(
            r.find(Some("a.test:8080"), "/fs/q"),
            Some((&"a:8080", "/fs/q"))
        );
        assert_eq!(r.find(Some("a.test"), "/x"), Some((&"any", "/x")));
        assert_eq!(r.iter().count(), 6);
        let empty: Routes<()> = Routes::new();
        assert!(empty.is_empty() && empty.find(Some("a"), "/").is_none());
    }
}
