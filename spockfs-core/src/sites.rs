//! A sites directory: `Host: example.com` is served from `DIR/example.com`,
//! looked up per request, so that sites come and go without a restart (the
//! shape of a shared hosting server with thousands of vhosts).
//!
//! The host is lowercased, its port and a trailing dot dropped, and must be
//! a single path component of visible ASCII (no `/`, not `.` or `..`);
//! anything else, and a host without a directory there, is 404 — never the
//! default root. The directory is opened beneath `DIR` with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a site that is a
//! symlink is not served. Open sites are kept in a bounded cache
//! ([`SitesDir::cache_size`]); a site removed from disk answers 404 from
//! then on (its root is gone), one put back is served again.
//!
//! With [`SitesDir::as_owner`], each site acts as the uid and gid that own
//! its directory (read when the site is first opened), with that user's
//! supplementary groups: the suexec / PHP-FPM-pool model.

use crate::backend::local::{open_dir_beneath, LocalFs};
use crate::identity::Identity;
use crate::mount::{Mount, Policy};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Sites under one directory. Cheap to share (`Arc` it).
///
/// ```no_run
/// use spockfs_core::{Engine, Policy};
/// use spockfs_core::sites::SitesDir;
///
/// let sites = SitesDir::open("/srv/sites")?.as_owner(true).policy(Policy::default());
/// let engine = Engine::builder().sites(sites).build();
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SitesDir {
    dir: PathBuf,
    fd: rustix::fd::OwnedFd,
    policy: Policy,
    as_owner: bool,
    allow_root_owner: bool,
    cache_size: usize,
    cache: Mutex<HashMap<String, Mount>>,
}

impl std::fmt::Debug for SitesDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SitesDir")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("as_owner", &self.as_owner)
            .field("cache_size", &self.cache_size)
            .finish_non_exhaustive()
    }
}

/// Why a site could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// No such site (or not a usable name): 404.
    #[error("no site for this host")]
    NotFound,
    /// With [`SitesDir::as_owner`], the site's directory belongs to root
    /// (and [`SitesDir::allow_root_owner`] is off): 403.
    #[error("the site's directory belongs to root; refusing to act as root")]
    RootOwned,
    /// The site exists but could not be opened: 500.
    #[error("cannot open the site: {0}")]
    Io(std::io::Error),
}

/// Default [`SitesDir::cache_size`].
pub const DEFAULT_SITES_CACHE: usize = 4096;

impl SitesDir {
    /// Serves the sites under `dir`, opened now (its path resolved once,
    /// like [`LocalFs::new`]). Default policy: [`Policy::default`], sites
    /// act as the server's identity, [`DEFAULT_SITES_CACHE`] open sites.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<SitesDir> {
        let dir = std::fs::canonicalize(dir.as_ref()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("sites directory {}: {e}", dir.as_ref().display()),
            )
        })?;
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("sites directory {}: {e}", dir.display()),
            )
        })?;
        Ok(SitesDir {
            dir,
            fd,
            policy: Policy::default(),
            as_owner: false,
            allow_root_owner: false,
            cache_size: DEFAULT_SITES_CACHE,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The policy every site is served with. Default: [`Policy::default`].
    pub fn policy(mut self, policy: Policy) -> SitesDir {
        self.policy = policy;
        self
    }

    /// Each site acts as the owner of its directory (uid, gid, and the
    /// user's supplementary groups), unless the policy names an identity.
    /// Default: `false`.
    pub fn as_owner(mut self, yes: bool) -> SitesDir {
        self.as_owner = yes;
        self
    }

    /// With [`as_owner`](SitesDir::as_owner), also serve sites whose
    /// directory belongs to uid 0, as root. Default: `false` (such a site
    /// answers 403).
    pub fn allow_root_owner(mut self, yes: bool) -> SitesDir {
        self.allow_root_owner = yes;
        self
    }

    /// Most sites kept open at once; beyond it, one is dropped for each
    /// new one (it is opened again on its next request). Default
    /// [`DEFAULT_SITES_CACHE`].
    pub fn cache_size(mut self, n: usize) -> SitesDir {
        self.cache_size = n.max(1);
        self
    }

    /// The (resolved) directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sites open now.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    /// True if the policy or [`as_owner`](SitesDir::as_owner) makes sites
    /// act as another identity than the server's.
    pub fn switches_identity(&self) -> bool {
        self.as_owner || self.policy.switches_identity()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mount>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The site name a request host maps to: lowercase, no port, no
    /// trailing dot, one path component of visible ASCII.
    ///
    /// ```
    /// use spockfs_core::sites::SitesDir;
    /// assert_eq!(SitesDir::site_name("Example.COM:8080").as_deref(), Some("example.com"));
    /// assert_eq!(SitesDir::site_name("example.com.").as_deref(), Some("example.com"));
    /// assert_eq!(SitesDir::site_name(".."), None);
    /// assert_eq!(SitesDir::site_name("a/b"), None);
    /// assert_eq!(SitesDir::site_name(""), None);
    /// ```
    pub fn site_name(host: &str) -> Option<String> {
        let host = crate::mount::normalize_host(host);
        let name = crate::mount::strip_port(&host);
        let name = name.strip_suffix('.').unwrap_or(name);
        let ok = !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        ok.then(|| name.to_owned())
    }

    /// The cached mount of a site, if it is open.
    pub(crate) fn cached_mount(&self, name: &str) -> Option<Mount> {
        self.lock().get(name).cloned()
    }

    /// Opens a site (blocking: run it off the async workers, as the
    /// server's own identity) and caches it.
    pub fn open_site(&self, name: &str) -> Result<Mount, SiteError> {
        if let Some(m) = self.cached_mount(name) {
            return Ok(m);
        }
        let (fd, st) = match open_dir_beneath(&self.fd, name.as_bytes()) {
            Ok(x) => x,
            Err(crate::Errno::ENOENT | crate::Errno::ENOTDIR | crate::Errno::ELOOP) => {
                return Err(SiteError::NotFound)
            }
            Err(e) => return Err(SiteError::Io(e.into())),
        };
        drop(fd);
        let path = self.dir.join(name);
        let mut policy = self.policy.clone();
        if self.as_owner && policy.identity().is_none() {
            if st.uid == 0 && !self.allow_root_owner {
                return Err(SiteError::RootOwned);
            }
            let id = Identity::of_ids(st.uid, st.gid).map_err(SiteError::Io)?;
            policy = policy.act_as(Some(id));
        }
        // The name was just opened beneath the resolved directory without
        // following a symlink: the joined path is resolved as it is.
        let mount = Mount::new(LocalFs::with_resolved(path)).with_policy(policy);
        let mut cache = self.lock();
        if cache.len() >= self.cache_size && !cache.contains_key(name) {
            if let Some(k) = cache.keys().next().cloned() {
                cache.remove(&k);
            }
        }
        Ok(cache.entry(name.to_owned()).or_insert(mount).clone())
    }
}

/// A site lookup the engine runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct SiteLookup {
    pub(crate) sites: Arc<SitesDir>,
    pub(crate) name: String,
}

impl SiteLookup {
    /// Opens the site ([`SitesDir::open_site`]).
    pub fn open(&self) -> Result<Mount, SiteError> {
        self.sites.open_site(&self.name)
    }
}
