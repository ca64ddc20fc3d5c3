//! Which backend serves a request.
//!
//! In order: a [`Mount`] the host application put in the request's
//! extensions (for example per-user homes chosen by an auth layer), then the
//! virtual host (`:authority` or `Host`, case-insensitive, `host:port` before
//! `host`), then the default root. None of them: 404.

use crate::backend::{Backend, Devices, SetId};
use crate::identity::{ClientIds, Identity};
use crate::sites::{SiteLookup, SitesDir};
use crate::LocalFs;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A backend plus how it is exposed. Cheap to clone.
///
/// Insert one into a request's extensions to choose the root for that
/// request (it takes precedence over virtual hosts):
///
/// ```
/// use spockfs_core::{Mount, MemFs};
///
/// let home = Mount::new(MemFs::new()).read_only(true);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(home);
/// ```
///
/// # Privilege policy
///
/// Whoever the server runs as, a mount by default behaves like a local
/// filesystem mounted `nosuid` with a restricted set of extended attribute
/// namespaces, so that a client can never plant a program that runs with
/// more privileges than its caller on the server:
///
/// - the set-user-ID and set-group-ID bits are never set on anything but a
///   directory (MKNOD, POST and CHMOD succeed without them; the set-group-ID
///   bit of directories, which gives group inheritance, is kept), and
///   writing, truncating or replacing a file's content clears them where
///   they already exist, as the kernel does for an unprivileged writer
///   ([`SetId::Strip`]); [`allow_setid`](Mount::allow_setid) opts out;
/// - only `user.*` extended attributes and POSIX ACLs
///   (`system.posix_acl_access`, `system.posix_acl_default`) can be set or
///   removed; SETXATTR and REMOVEXATTR of any other name (`security.*`,
///   such as file capabilities, `trusted.*`, ...) answer 403 `EPERM` and
///   change nothing. Reading them is not restricted.
///   [`allow_any_xattr`](Mount::allow_any_xattr) opts out;
/// - character and block devices are never made (MKNOD answers 403
///   `EPERM`), like a filesystem mounted `nodev` that does not even hold
///   device nodes; [`allow_devices`](Mount::allow_devices) lets clients
///   make them where they are inert (on a server filesystem mounted
///   `nodev`).
///
/// OPTIONS names the restrictions in force in its `X-Spock-policy` header.
#[derive(Clone)]
pub struct Mount {
    backend: Arc<dyn Backend>,
    policy: Policy,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What a [`Mount`] lets its clients do: everything but the backend, so
/// one configuration can be given to many roots (a server's per-user or
/// per-site mounts). The default is writable, `nosuid`, and restricted
/// xattr namespaces ([the policy](Mount#privilege-policy)).
///
/// ```
/// use spockfs_core::{MemFs, Mount, Policy};
///
/// let policy = Policy::default().read_only(true);
/// let home = Mount::new(MemFs::new()).with_policy(policy);
/// assert!(home.is_read_only());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    read_only: bool,
    setid: SetId,
    any_xattr: bool,
    devices: Devices,
    act_as: Option<Identity>,
    client_ids: Option<ClientIds>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            read_only: false,
            setid: SetId::Strip,
            any_xattr: false,
            devices: Devices::Refuse,
            act_as: None,
            client_ids: None,
        }
    }
}

impl Policy {
    /// See [`Mount::read_only`]. Default: `false`.
    pub fn read_only(mut self, read_only: bool) -> Policy {
        self.read_only = read_only;
        self
    }

    /// See [`Mount::allow_setid`]. Default: `false`.
    pub fn allow_setid(mut self, allow: bool) -> Policy {
        self.setid = if allow { SetId::Keep } else { SetId::Strip };
        self
    }

    /// See [`Mount::allow_any_xattr`]. Default: `false`.
    pub fn allow_any_xattr(mut self, allow: bool) -> Policy {
        self.any_xattr = allow;
        self
    }

    /// See [`Mount::allow_devices`]. Default: `false`.
    pub fn allow_devices(mut self, allow: bool) -> Policy {
        self.devices = if allow {
            Devices::Inert
        } else {
            Devices::Refuse
        };
        self
    }

    /// See [`Mount::act_as`]. Default: none (the server's own identity).
    pub fn act_as(mut self, id: Option<Identity>) -> Policy {
        self.act_as = id;
        self
    }

    /// See [`Mount::trust_client_ids`]. Default: none.
    pub fn trust_client_ids(mut self, ids: Option<ClientIds>) -> Policy {
        self.client_ids = ids;
        self
    }

    /// The mount's own identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.act_as.as_ref()
    }

    /// How declared client identities are treated, if they are trusted.
    pub fn client_ids(&self) -> Option<&ClientIds> {
        self.client_ids.as_ref()
    }

    /// True if serving this policy needs to switch credentials (an
    /// identity other than the process's own may be used): the server
    /// needs `CAP_SETUID`/`CAP_SETGID`
    /// ([`check_can_switch`](crate::identity::check_can_switch)).
    pub fn switches_identity(&self) -> bool {
        self.act_as.is_some() || self.client_ids.is_some()
    }
}

/// Extended attribute names that a mount without
/// [`allow_any_xattr`](Mount::allow_any_xattr) lets clients set and remove:
/// the `user.` namespace and the two POSIX ACLs.
///
/// ```
/// use spockfs_core::mount::is_unprivileged_xattr;
/// assert!(is_unprivileged_xattr(b"user.mime_type"));
/// assert!(is_unprivileged_xattr(b"system.posix_acl_access"));
/// assert!(!is_unprivileged_xattr(b"security.capability"));
/// assert!(!is_unprivileged_xattr(b"trusted.glusterfs.dht"));
/// assert!(!is_unprivileged_xattr(b"user"));
/// ```
pub fn is_unprivileged_xattr(name: &[u8]) -> bool {
    name.strip_prefix(b"user.").is_some_and(|n| !n.is_empty())
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

impl Mount {
    /// Serves `backend`, writable.
    pub fn new(backend: impl Backend) -> Mount {
        Mount::from_arc(Arc::new(backend))
    }

    /// Serves a shared backend.
    pub fn from_arc(backend: Arc<dyn Backend>) -> Mount {
        Mount {
            backend,
            policy: Policy::default(),
        }
    }

    /// Replaces the whole policy. Default: [`Policy::default`].
    pub fn with_policy(mut self, policy: Policy) -> Mount {
        self.policy = policy;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every request on this mount acts as `id` (unless the host
    /// application put an [`Identity`] in the request's extensions): its
    /// filesystem calls run with that user's credentials, so the kernel
    /// checks its permissions and new files belong to it. The server needs
    /// `CAP_SETUID` and `CAP_SETGID`. Default: the server's own identity.
    ///
    /// ```no_run
    /// use spockfs_core::{Identity, Mount};
    /// // The suexec model: each site acts as the owner of its directory.
    /// let site = Mount::local("/srv/sites/example.com")
    ///     .act_as(Identity::of_owner("/srv/sites/example.com".as_ref())?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn act_as(mut self, id: Identity) -> Mount {
        self.policy.act_as = Some(id);
        self
    }

    /// Believes the identity clients declare in `X-Spock-caller` (the
    /// `identity` extension, advertised by OPTIONS on this mount only),
    /// squashed and limited as `ids` says, for requests that no host
    /// extension or [`act_as`](Mount::act_as) gives an identity. Like an
    /// NFS export with `AUTH_SYS`: only for clients you trust to tell the
    /// truth about their users. Default: not trusted (never read).
    pub fn trust_client_ids(mut self, ids: ClientIds) -> Mount {
        self.policy.client_ids = Some(ids);
        self
    }

    /// Serves a local directory ([`LocalFs::new`]: opened on first use).
    pub fn local(dir: impl AsRef<Path>) -> Mount {
        Mount::new(LocalFs::new(dir))
    }

    /// Read-only: every mutating request is refused with 403 and
    /// `X-Spock-errno: EROFS`, as are OPEN with write flags and ACCESS with
    /// `W_OK`. Default: `false`.
    pub fn read_only(mut self, read_only: bool) -> Mount {
        self.policy = self.policy.read_only(read_only);
        self
    }

    /// True if read-only.
    pub fn is_read_only(&self) -> bool {
        self.policy.read_only
    }

    /// Applies modes exactly as clients send them, set-user-ID and
    /// set-group-ID on files included, and leaves to the kernel what a
    /// write clears ([`SetId::Keep`]). Only for trees whose clients may
    /// create programs that run as their owner — with a server running as
    /// root, that is root. Default: `false` ([`SetId::Strip`], see
    /// [the policy](Mount#privilege-policy)).
    ///
    /// ```
    /// use spockfs_core::{Mount, MemFs, SetId};
    /// assert_eq!(Mount::new(MemFs::new()).setid(), SetId::Strip);
    /// assert_eq!(Mount::new(MemFs::new()).allow_setid(true).setid(), SetId::Keep);
    /// ```
    pub fn allow_setid(mut self, allow: bool) -> Mount {
        self.policy = self.policy.allow_setid(allow);
        self
    }

    /// What happens to set-ID bits of non-directories on this mount.
    pub fn setid(&self) -> SetId {
        self.policy.setid
    }

    /// Lets clients set and remove extended attributes of every namespace
    /// the server's identity may write (`security.*`, `trusted.*`, ...), not
    /// only `user.*` and POSIX ACLs. Default: `false` (see
    /// [the policy](Mount#privilege-policy)).
    pub fn allow_any_xattr(mut self, allow: bool) -> Mount {
        self.policy = self.policy.allow_any_xattr(allow);
        self
    }

    /// True if every xattr namespace may be written
    /// ([`allow_any_xattr`](Mount::allow_any_xattr)).
    pub fn allows_any_xattr(&self) -> bool {
        self.policy.any_xattr
    }

    /// Lets clients make character and block device nodes (MKNOD) where
    /// they are inert: in a directory whose filesystem is mounted `nodev`
    /// on the server (`ST_NODEV` in its `statvfs` flags), checked on every
    /// request on the directory that would hold the node. Elsewhere MKNOD
    /// of a device still answers 403 `EPERM`, saying why. For clients that
    /// need the nodes themselves (a container image or a chroot built
    /// through SpockFS), never to open devices through them. Default:
    /// `false` (device nodes are never made, see
    /// [the policy](Mount#privilege-policy)).
    ///
    /// ```
    /// use spockfs_core::{Devices, MemFs, Mount};
    /// assert_eq!(Mount::new(MemFs::new()).devices(), Devices::Refuse);
    /// assert_eq!(Mount::new(MemFs::new()).allow_devices(true).devices(), Devices::Inert);
    /// ```
    pub fn allow_devices(mut self, allow: bool) -> Mount {
        self.policy = self.policy.allow_devices(allow);
        self
    }

    /// What MKNOD does with device nodes on this mount.
    pub fn devices(&self) -> Devices {
        self.policy.devices
    }

    /// The restrictions in force, as OPTIONS names them in
    /// `X-Spock-policy`: `ro` (read-only), `nosuid` (set-ID bits stripped
    /// from non-directories and cleared by writes), `nodev` (device nodes
    /// are never made), `xattr-user-acl` (only `user.*` and POSIX ACL
    /// xattrs may be changed); empty if none.
    ///
    /// ```
    /// use spockfs_core::{Mount, MemFs};
    /// assert_eq!(Mount::new(MemFs::new()).policy_tokens(), "nosuid, nodev, xattr-user-acl");
    /// let open = Mount::new(MemFs::new())
    ///     .allow_setid(true)
    ///     .allow_any_xattr(true)
    ///     .allow_devices(true);
    /// assert_eq!(open.read_only(true).policy_tokens(), "ro");
    /// ```
    pub fn policy_tokens(&self) -> String {
        let p = &self.policy;
        let mut t: Vec<&str> = Vec::new();
        if p.read_only {
            t.push("ro");
        }
        if p.setid == SetId::Strip {
            t.push("nosuid");
        }
        if p.devices == Devices::Refuse {
            t.push("nodev");
        }
        if !p.any_xattr {
            t.push("xattr-user-acl");
        }
        t.join(", ")
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

/// Virtual hosts, a sites directory and the default root.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    vhosts: HashMap<String, Mount>,
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
        self.vhosts.insert(host.to_ascii_lowercase(), mount);
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
        let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        if host.is_none()
            && parts.version == http::Version::HTTP_11
            && !parts.headers.contains_key(http::header::HOST)
        {
            return Err(SelectError::MissingHost);
        }
        if !self.vhosts.is_empty() {
            if let Some(host) = host {
                let host = normalize_host(host);
                if let Some(m) = self.vhosts.get(host.as_ref()) {
                    return Ok(Selected::Mount(m.clone()));
                }
                if let Some(m) = self.vhosts.get(strip_port(&host)) {
                    return Ok(Selected::Mount(m.clone()));
                }
            }
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

/// A request's authority as vhost names are compared: userinfo dropped,
/// lowercase (allocating only if needed), no trailing dot.
///
/// ```
/// use spockfs_core::mount::normalize_host;
/// assert_eq!(normalize_host("u@Files.Example.com.:8080"), "files.example.com.:8080");
/// assert_eq!(normalize_host("Files.Example.com."), "files.example.com");
/// ```
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
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

/// True if a configured vhost name (lowercase, `name` or `name:port`)
/// matches a [normalized](normalize_host) request host: `host:port` first,
/// then `host` alone.
pub fn vhost_matches(want: &str, host: &str) -> bool {
    want == host || want == strip_port(host)
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
}
