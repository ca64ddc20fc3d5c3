//! A mount: a backend and what its clients may do with it ([`Policy`]).
//!
//! Which mount serves a request is decided in [`crate::route`].

use crate::backend::{Backend, Devices, SetId};
use crate::identity::{ClientIds, Identity};
use crate::LocalFs;
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

    /// True if the policy refuses every change.
    pub fn is_read_only(&self) -> bool {
        self.read_only
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

/// The policy settings a server reads from its configuration, by name —
/// what both example servers' flags and TOML keys say, turned into a
/// [`Policy`] in one place ([`PolicySettings::policy`]), users looked up.
///
/// ```
/// use spockfs_core::PolicySettings;
/// let policy = PolicySettings { read_only: true, ..Default::default() }.policy()?;
/// assert!(policy.is_read_only());
/// # Ok::<(), spockfs_core::UnknownUser>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySettings {
    /// [`Policy::read_only`].
    pub read_only: bool,
    /// [`Policy::allow_setid`].
    pub allow_setid: bool,
    /// [`Policy::allow_any_xattr`].
    pub allow_any_xattr: bool,
    /// [`Policy::allow_devices`].
    pub allow_devices: bool,
    /// Every request acts as this user (name or numeric uid):
    /// [`Policy::act_as`].
    pub as_user: Option<String>,
    /// Requests act as the identity the client declares
    /// ([`Policy::trust_client_ids`]), squashed to `anon_user`.
    pub trust_client_ids: bool,
    /// The user squashed identities become (`None`: `nobody`).
    pub anon_user: Option<String>,
    /// With `trust_client_ids`: root stays root ([`ClientIds::no_root_squash`]).
    pub no_root_squash: bool,
}

/// Which user setting of a [`PolicySettings`] names an unknown user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSetting {
    /// [`PolicySettings::as_user`].
    AsUser,
    /// [`PolicySettings::anon_user`].
    AnonUser,
}

/// A user named in [`PolicySettings`] that could not be looked up.
#[derive(Debug, thiserror::Error)]
#[error("user {user:?}: {source}")]
pub struct UnknownUser {
    /// The setting that names it.
    pub setting: UserSetting,
    /// The user as given.
    pub user: String,
    /// Why the lookup failed.
    #[source]
    pub source: std::io::Error,
}

impl PolicySettings {
    /// The [`Policy`] these settings describe (for every root; a per-root
    /// identity such as "the owner of the root" is the caller's to add).
    pub fn policy(&self) -> Result<Policy, UnknownUser> {
        let user = |setting: UserSetting, name: &str| {
            Identity::of_user(name).map_err(|source| UnknownUser {
                setting,
                user: name.to_owned(),
                source,
            })
        };
        let act_as = self
            .as_user
            .as_deref()
            .map(|u| user(UserSetting::AsUser, u))
            .transpose()?;
        let client_ids = if self.trust_client_ids {
            let anon = user(
                UserSetting::AnonUser,
                self.anon_user.as_deref().unwrap_or("nobody"),
            )?;
            Some(ClientIds::new(anon).no_root_squash(self.no_root_squash))
        } else {
            None
        };
        Ok(Policy::default()
            .read_only(self.read_only)
            .allow_setid(self.allow_setid)
            .allow_any_xattr(self.allow_any_xattr)
            .allow_devices(self.allow_devices)
            .act_as(act_as)
            .trust_client_ids(client_ids))
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

// The routing decision lives in `route`; these paths stay for users of
// the old ones.
pub use crate::route::{normalize_host, strip_port, MountTable, SelectError, Selected};
