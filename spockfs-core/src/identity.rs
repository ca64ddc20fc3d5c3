//! Who a request acts as: a Unix [`Identity`], and the per-thread
//! credentials the engine runs filesystem calls with.
//!
//! Every request acts as an identity chosen by the engine, in this order
//! (see [`Mount::act_as`](crate::Mount::act_as) and
//! [`ClientIds`]):
//!
//! 1. one the host application put in the request's extensions (its auth
//!    layer maps its user to a Unix account, exactly like a per-request
//!    [`Mount`](crate::Mount));
//! 2. the mount's configured identity (a fixed user, or the owner of the
//!    root directory: the suexec / PHP-FPM-pool model of shared hosting);
//! 3. the identity the client declares in `X-Spock-caller` (extension
//!    `identity`), only on mounts that trust their clients, root squashed
//!    unless told otherwise (like an NFS export with `AUTH_SYS`);
//! 4. otherwise the server process's own (no switching at all).
//!
//! A [`LocalFs`](crate::LocalFs) call then runs on a blocking-pool thread
//! whose credentials are that identity's: the thread's effective uid and gid
//! and its supplementary groups, set with the *per-thread* system calls
//! (`setresuid`, `setresgid`, `setgroups` as the kernel implements them,
//! through rustix — never the C library's wrappers, which change every
//! thread of the process). The effective ids are switched, not only the
//! filesystem ids, so that the kernel also drops every capability for the
//! call, exactly as for a process of that user: permission checks,
//! ownership of new files, set-group-ID inheritance, `CAP_FSETID` clearing,
//! `security.capability`, reserved blocks. The real and saved uid stay the
//! server's, which is how the thread switches back. A thread keeps its
//! credentials between calls and only switches when the next call's
//! identity differs.
//!
//! [`MemFs`](crate::MemFs) applies the same rules in its own permission
//! model, reading the calling thread's identity with [`Identity::current`].

use crate::{Errno, FsResult};
use std::cell::RefCell;
use std::sync::Arc;

/// A Unix identity: user, primary group and supplementary groups. Cheap to
/// clone.
///
/// ```
/// use spockfs_core::Identity;
///
/// let alice = Identity::new(1000, 1000, [1000, 27, 100]);
/// assert!(alice.in_group(27));
/// assert!(!alice.in_group(0));
/// assert_eq!(alice.groups(), &[27, 100, 1000]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    uid: u32,
    gid: u32,
    /// Sorted, without duplicates.
    groups: Arc<[u32]>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({} {} {:?})",
            self.uid,
            self.gid,
            &self.groups[..]
        )
    }
}

impl std::fmt::Display for Identity {
    /// `uid gid g1,g2,...`: the `X-Spock-caller` form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ", self.uid, self.gid)?;
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

/// Most supplementary groups an identity may carry (Linux's `NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;

impl Identity {
    /// `uid`, primary `gid` and supplementary `groups` (any order,
    /// duplicates ignored; at most [`MAX_GROUPS`] are kept).
    pub fn new(uid: u32, gid: u32, groups: impl IntoIterator<Item = u32>) -> Identity {
        let mut g: Vec<u32> = groups.into_iter().take(MAX_GROUPS).collect();
        g.sort_unstable();
        g.dedup();
        Identity {
            uid,
            gid,
            groups: g.into(),
        }
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The supplementary groups, sorted.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// The supplementary groups, shared.
    pub(crate) fn groups_arc(&self) -> Arc<[u32]> {
        self.groups.clone()
    }

    /// True for uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// True if `gid` is the primary group or a supplementary one (the
    /// kernel's `in_group_p`).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.binary_search(&gid).is_ok()
    }

    /// The server process's own effective identity.
    pub fn process() -> Identity {
        let groups = rustix::process::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect::<Vec<_>>())
            .unwrap_or_default();
        Identity::new(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
            groups,
        )
    }

    /// The identity of a user of the system's user database: `name` (or a
    /// numeric uid), with the user's primary group and every group that
    /// lists it (`getgrouplist`). A numeric uid that is not in the database
    /// acts with gid = uid's primary group if known, else its own number,
    /// and no supplementary group.
    ///
    /// ```
    /// use spockfs_core::Identity;
    /// let root = Identity::of_user("root")?;
    /// assert_eq!((root.uid(), root.gid()), (0, 0));
    /// assert_eq!(Identity::of_user("0")?, root);
    /// assert!(Identity::of_user("no-such-user-here").is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn of_user(name: &str) -> std::io::Result<Identity> {
        use nix::unistd::{Uid, User};
        match name.parse::<u32>() {
            Ok(uid) => match User::from_uid(Uid::from_raw(uid)).map_err(std::io::Error::from)? {
                Some(u) => Ok(Identity::of_account(&u)),
                None => Ok(Identity::new(uid, uid, [])),
            },
            Err(_) => Identity::of_account_name(name),
        }
    }

    /// The identity of the account named `name` in the user database (a
    /// name only: `"1000"` is the account called so, not uid 1000), with
    /// its groups; `NotFound` if there is none.
    pub fn of_account_name(name: &str) -> std::io::Result<Identity> {
        let user = nix::unistd::User::from_name(name)
            .map_err(std::io::Error::from)?
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no user {name:?} in the user database"),
                )
            })?;
        Ok(Identity::of_account(&user))
    }

    /// The identity of the uid and gid that own `path` (not following a
    /// final symlink), with the supplementary groups of that uid's account
    /// if it has one: how a shared host runs each site as its owner.
    pub fn of_owner(path: &std::path::Path) -> std::io::Result<Identity> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(path)?;
        Identity::of_ids(md.uid(), md.gid())
    }

    /// `uid` and `gid`, with the supplementary groups of `uid`'s account in
    /// the user database (none if it has no account).
    pub fn of_ids(uid: u32, gid: u32) -> std::io::Result<Identity> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(std::io::Error::from)?;
        Ok(match user {
            Some(u) => {
                let acct = Identity::of_account(&u);
                let mut groups = acct.groups.to_vec();
                groups.push(acct.gid);
                Identity::new(uid, gid, groups)
            }
            None => Identity::new(uid, gid, []),
        })
    }

    fn of_account(user: &nix::unistd::User) -> Identity {
        let groups = std::ffi::CString::new(user.name.as_bytes())
            .ok()
            .and_then(|n| nix::unistd::getgrouplist(&n, user.gid).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect::<Vec<_>>())
            .unwrap_or_default();
        Identity::new(user.uid.as_raw(), user.gid.as_raw(), groups)
    }

    /// Parses the `X-Spock-caller` value: `UID GID G1,G2,...` (the group
    /// list may be empty; single spaces; plain decimal).
    ///
    /// ```
    /// use spockfs_core::Identity;
    /// let id = Identity::parse_caller(b"1000 100 100,27").unwrap();
    /// assert_eq!((id.uid(), id.gid(), id.groups()), (1000, 100, &[27, 100][..]));
    /// assert_eq!(id.to_string().as_bytes(), b"1000 100 27,100");
    /// assert!(Identity::parse_caller(b"1000 100 ").is_some());
    /// assert!(Identity::parse_caller(b"1000 100").is_some());
    /// assert!(Identity::parse_caller(b"-1 100 ").is_none());
    /// assert!(Identity::parse_caller(b"1000  100").is_none());
    /// ```
    pub fn parse_caller(value: &[u8]) -> Option<Identity> {
        fn num(b: &[u8]) -> Option<u32> {
            if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(b).ok()?.parse().ok()
        }
        let mut parts = value.splitn(3, |&b| b == b' ');
        let uid = num(parts.next()?)?;
        let gid = num(parts.next()?)?;
        let groups = match parts.next() {
            None | Some(b"") => Vec::new(),
            Some(list) => {
                let mut v = Vec::new();
                for g in list.split(|&b| b == b',') {
                    if v.len() >= MAX_GROUPS {
                        return None;
                    }
                    v.push(num(g)?);
                }
                v
            }
        };
        // (uid_t)-1 and (gid_t)-1 mean "unchanged" to the kernel.
        if uid == u32::MAX || gid == u32::MAX || groups.contains(&u32::MAX) {
            return None;
        }
        Some(Identity::new(uid, gid, groups))
    }

    /// The identity the calling thread acts as: the one the engine set for
    /// the filesystem call in progress, or the process's own outside of
    /// one. In-memory backends use it for their permission checks.
    pub fn current() -> Option<Identity> {
        ACTING.with(|a| a.borrow().clone())
    }
}

/// How a mount treats the identity its clients declare in `X-Spock-caller`
/// (the `identity` extension): like an NFS export with `AUTH_SYS`, it
/// believes the client, squashing root to an anonymous identity unless told
/// otherwise, and optionally only within ranges of ids. Only for clients
/// that are trusted to tell the truth about their users (a mount on a
/// machine you administer); see [`Mount::trust_client_ids`].
///
/// [`Mount::trust_client_ids`]: crate::Mount::trust_client_ids
///
/// ```
/// use spockfs_core::{ClientIds, Identity};
///
/// let nobody = Identity::new(65534, 65534, []);
/// let ids = ClientIds::new(nobody.clone()).uids(1000..=59999);
/// assert_eq!(ids.resolve(Some(b"1000 100 27")).ok(), Some(Identity::new(1000, 100, [27])));
/// // root is squashed, then must be in range too: it is not.
/// assert!(ids.resolve(Some(b"0 0 ")).is_err());
/// // No header: the anonymous identity.
/// assert_eq!(ClientIds::new(nobody.clone()).resolve(None).ok(), Some(nobody.clone()));
/// assert_eq!(ClientIds::new(nobody.clone()).resolve(Some(b"0 0 0,4")).ok(),
///            Some(Identity::new(65534, 65534, [65534, 4])));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIds {
    anon: Identity,
    squash_root: bool,
    uids: Option<std::ops::RangeInclusive<u32>>,
    gids: Option<std::ops::RangeInclusive<u32>>,
}

/// Why a declared identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// `X-Spock-caller` is not `UID GID G1,G2,...`: 400.
    #[error("malformed header X-Spock-caller: expected 'UID GID G1,G2,...'")]
    Malformed,
    /// An id outside the mount's allowed ranges: 403 `EPERM`.
    #[error("X-Spock-caller: {0} is outside the ids this mount accepts")]
    OutOfRange(String),
}

impl ClientIds {
    /// Trusts declared identities, squashing uid 0 (and gid 0) to `anon`;
    /// requests without `X-Spock-caller` act as `anon`.
    pub fn new(anon: Identity) -> ClientIds {
        ClientIds {
            anon,
            squash_root: true,
            uids: None,
            gids: None,
        }
    }

    /// Believes uid and gid 0 too (NFS `no_root_squash`): a client's root is
    /// the server's root. Default: `false`.
    pub fn no_root_squash(mut self, yes: bool) -> ClientIds {
        self.squash_root = !yes;
        self
    }

    /// Accepts only these uids (after squashing); others are 403 `EPERM`.
    /// Default: any.
    pub fn uids(mut self, range: std::ops::RangeInclusive<u32>) -> ClientIds {
        self.uids = Some(range);
        self
    }

    /// Accepts only these gids, primary and supplementary (after
    /// squashing); others are 403 `EPERM`. Default: any.
    pub fn gids(mut self, range: std::ops::RangeInclusive<u32>) -> ClientIds {
        self.gids = Some(range);
        self
    }

    /// The anonymous identity.
    pub fn anon(&self) -> &Identity {
        &self.anon
    }

    /// The identity a request with this `X-Spock-caller` value (if any)
    /// acts as.
    pub fn resolve(&self, header: Option<&[u8]>) -> Result<Identity, CallerError> {
        let Some(value) = header else {
            return Ok(self.anon.clone());
        };
        let mut id = Identity::parse_caller(value).ok_or(CallerError::Malformed)?;
        if self.squash_root {
            let anon_gid = self.anon.gid;
            let squash_gid = |g: u32| if g == 0 { anon_gid } else { g };
            let uid = if id.uid == 0 { self.anon.uid } else { id.uid };
            let groups: Vec<u32> = id.groups.iter().map(|&g| squash_gid(g)).collect();
            id = Identity::new(uid, squash_gid(id.gid), groups);
        }
        if let Some(r) = &self.uids {
            if !r.contains(&id.uid) {
                return Err(CallerError::OutOfRange(format!("uid {}", id.uid)));
            }
        }
        if let Some(r) = &self.gids {
            if let Some(g) = std::iter::once(&id.gid)
                .chain(id.groups.iter())
                .find(|g| !r.contains(g))
            {
                return Err(CallerError::OutOfRange(format!("gid {g}")));
            }
        }
        Ok(id)
    }
}

thread_local! {
    /// What [`Identity::current`] answers.
    static ACTING: RefCell<Option<Identity>> = const { RefCell::new(None) };
    /// The identity this thread's kernel credentials are set to (`None`:
    /// the process's own).
    static KERNEL: RefCell<Option<Identity>> = const { RefCell::new(None) };
}

/// Runs `f` with [`Identity::current`] answering `id` (`None`: the
/// process's own), restoring the previous answer afterwards, even if `f`
/// panics.
pub(crate) fn acting_as<T>(id: Option<&Identity>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Identity>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            ACTING.with(|a| *a.borrow_mut() = prev);
        }
    }
    let prev = ACTING.with(|a| std::mem::replace(&mut *a.borrow_mut(), id.cloned()));
    let _restore = Restore(prev);
    f()
}

/// Runs `f` on this (blocking-pool) thread as `id`: the thread's kernel
/// credentials switched (see [`switch_thread`]) and [`Identity::current`]
/// answering `id`. A failed switch is `EIO` and `f` does not run.
pub(crate) fn run_as<T>(id: Option<&Identity>, f: impl FnOnce() -> T) -> FsResult<T> {
    switch_thread(id)?;
    Ok(acting_as(id, f))
}

/// Sets the calling thread's kernel credentials to `id` (`None`: back to
/// the process's own), unless they already are. Only for threads that do
/// nothing else (the blocking pool's): the credentials stay set after it
/// returns.
pub(crate) fn switch_thread(id: Option<&Identity>) -> FsResult<()> {
    // Read the process's own ids before this thread first changes them
    // (the ids are per thread: once switched, they read as the identity's).
    process_creds();
    KERNEL.with(|k| {
        let mut cur = k.borrow_mut();
        if cur.as_ref() == id {
            return Ok(());
        }
        // Back to the process's own first: that restores the effective
        // capabilities (from the permitted set) needed to switch again.
        if cur.is_some() {
            *cur = None;
            restore_process().map_err(|e| {
                tracing::error!(error = %e, "cannot switch a pool thread back to the server's credentials");
                Errno::EIO
            })?;
        }
        if let Some(id) = id {
            if let Err(e) = set_thread(id) {
                tracing::error!(identity = %id, error = %e,
                    "cannot switch a pool thread to a request's identity");
                // Leave the thread as the process, never half switched.
                let _ = restore_process();
                return Err(Errno::EIO);
            }
            *cur = Some(id.clone());
        }
        Ok(())
    })
}

fn set_thread(id: &Identity) -> rustix::io::Result<()> {
    use rustix::fs::{Gid, Uid};
    let groups: Vec<Gid> = id.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    rustix::thread::set_thread_groups(&groups)?;
    rustix::thread::set_thread_res_gid(None, Some(Gid::from_raw(id.gid)), None)?;
    // Last: from here on the thread has no capability left.
    rustix::thread::set_thread_res_uid(None, Some(Uid::from_raw(id.uid)), None)
}

/// The process's own credentials, as read when first needed.
struct ProcessCreds {
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
    groups: Vec<rustix::fs::Gid>,
}

fn process_creds() -> &'static ProcessCreds {
    static CREDS: std::sync::OnceLock<ProcessCreds> = std::sync::OnceLock::new();
    CREDS.get_or_init(|| ProcessCreds {
        uid: rustix::process::geteuid(),
        gid: rustix::process::getegid(),
        groups: rustix::process::getgroups().unwrap_or_default(),
    })
}

fn restore_process() -> rustix::io::Result<()> {
    let p = process_creds();
    rustix::thread::set_thread_res_uid(None, Some(p.uid), None)?;
    rustix::thread::set_thread_res_gid(None, Some(p.gid), None)?;
    rustix::thread::set_thread_groups(&p.groups)
}

/// Checks that this process may act as other identities (it has
/// `CAP_SETUID` and `CAP_SETGID`): a server configured with any identity
/// other than its own calls this at start and refuses to run otherwise.
///
/// ```
/// // Whatever the answer here, it says why.
/// match spockfs_core::identity::check_can_switch() {
///     Ok(()) => {}
///     Err(e) => assert!(e.to_string().contains("CAP_SETUID")),
/// }
/// ```
pub fn check_can_switch() -> std::io::Result<()> {
    use rustix::thread::CapabilitySet;
    // Read the process's ids before any thread switches.
    process_creds();
    let caps = rustix::thread::capabilities(None).map_err(std::io::Error::from)?;
    let need = CapabilitySet::SETUID | CapabilitySet::SETGID;
    if caps.effective.contains(need) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "acting as other users needs CAP_SETUID and CAP_SETGID (run the server as root, \
             or grant them: setcap cap_setuid,cap_setgid+ep BINARY); this process runs as uid {} \
             without them",
            rustix::process::geteuid().as_raw()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_header_forms() {
        for bad in [
            &b""[..],
            b"1",
            b"a b c",
            b"1 2 3,",
            b"1 2 ,3",
            b"1 2 3 4",
            b"4294967295 0 ",
            b"0 4294967295",
            b"0 0 4294967295",
            b"99999999999 0",
            b"+1 0",
            b" 1 0",
        ] {
            assert_eq!(Identity::parse_caller(bad), None, "{:?}", bad);
        }
        let id = Identity::parse_caller(b"65534 65534 ").unwrap_or_else(|| panic!());
        assert_eq!(id, Identity::new(65534, 65534, []));
    }

    /// A pool-like thread switches to an identity and back: files it
    /// creates belong to that identity, and afterwards to the process.
    #[test]
    fn thread_switch_and_back() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("note: not root; thread credential switching is not tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("r"), b"").unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().to_path_buf();
        std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let nobody = Identity::new(65534, 65533, [65532]);
            switch_thread(Some(&nobody)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(p.join("a"), b"").unwrap_or_else(|e| panic!("{e}"));
            // No capability left: root's 0644 file is not writable.
            let e = std::fs::write(p.join("r"), b"x").err().map(|e| e.kind());
            assert_eq!(e, Some(std::io::ErrorKind::PermissionDenied));
            switch_thread(None).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(p.join("b"), b"").unwrap_or_else(|e| panic!("{e}"));
            let a = std::fs::metadata(p.join("a")).unwrap_or_else(|e| panic!("{e}"));
            let b = std::fs::metadata(p.join("b")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((a.uid(), a.gid()), (65534, 65533));
            assert_eq!((b.uid(), b.gid()), (0, 0));
        })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
        // The test's own thread was never switched.
        assert_eq!(rustix::process::geteuid().as_raw(), 0);
    }
}
