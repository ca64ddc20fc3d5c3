//! Per-user roots: the host decides who the user is (its own basic auth,
//! or a trusted proxy's `X-Remote-User`), and hands SpockFS that user's
//! directory as a per-request [`Mount`] — the engine's extension point for
//! exactly this.

use crate::auth::AuthenticatedUser;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use spockfs_core::Identity;
use spockfs_tower::{LocalFs, Mount, Policy};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The header a trusted proxy (nginx: `proxy_set_header X-Remote-User
/// $remote_user`) names the user in.
pub const X_REMOTE_USER: &str = "x-remote-user";

/// Users' roots under one directory.
pub struct UserRoots {
    dir: PathBuf,
    policy: Policy,
    trusted_proxy: Option<IpAddr>,
    has_auth: bool,
    accounts: Accounts,
    mounts: Mutex<HashMap<String, Home>>,
}

/// How users map to Unix accounts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts {
    /// Each user acts as the Unix account of the same name (`--users-as-unix`).
    pub users_as_unix: bool,
    /// Each home acts as the owner of its directory (`--as-owner`).
    pub as_owner: bool,
    /// With `as_owner`, homes owned by uid 0 too.
    pub allow_root_owner: bool,
}

/// A user's root, and the identity their requests act as.
#[derive(Clone)]
struct Home {
    mount: Mount,
    identity: Option<Identity>,
}

/// Why a user's root cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// `--users-as-unix` and no account of that name: 403.
    #[error("no Unix account named {0:?}")]
    NoAccount(String),
    /// `--as-owner` and the home belongs to root: 403.
    #[error("the home directory belongs to root; refusing to act as root")]
    RootOwned,
    /// 500.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

const MAX_CACHED: usize = 4096;

impl UserRoots {
    /// Roots under `dir`, each served with `policy`; `X-Remote-User`
    /// believed only from `trusted_proxy`; `has_auth` if the host itself
    /// authenticates.
    pub fn new(
        dir: PathBuf,
        policy: Policy,
        trusted_proxy: Option<IpAddr>,
        has_auth: bool,
        accounts: Accounts,
    ) -> UserRoots {
        UserRoots {
            dir,
            policy,
            trusted_proxy,
            has_auth,
            accounts,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    /// The user a request is from: the host's own authentication first,
    /// else `X-Remote-User` if and only if the peer is the trusted proxy.
    pub fn user_of(&self, req: &Request) -> Option<String> {
        if let Some(AuthenticatedUser(u)) = req.extensions().get::<AuthenticatedUser>() {
            return Some(u.clone());
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())?;
        if Some(peer) != self.trusted_proxy {
            return None;
        }
        // The name's bytes as the proxy sent them (nginx passes a basic-auth
        // user name through as is): UTF-8, not just the visible ASCII
        // `to_str` allows. Invalid UTF-8 is no user.
        req.headers()
            .get(X_REMOTE_USER)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    }

    /// The user's home (created on first use, mode 0700; with
    /// `users_as_unix`, owned by their account) and identity. Blocking.
    fn home_for(&self, user: &str) -> Result<Home, HomeError> {
        if let Some(h) = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return Ok(h.clone());
        }
        let account = if self.accounts.users_as_unix {
            // By name only: a login called "0" is not root.
            match Identity::of_account_name(user) {
                Ok(id) => Some(id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(HomeError::NoAccount(user.to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let dir = self.dir.join(user);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(id) = &account {
                    std::os::unix::fs::lchown(&dir, Some(id.uid()), Some(id.gid()))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let mut policy = self.policy.clone();
        if self.accounts.as_owner && account.is_none() {
            let owner = Identity::of_owner(&dir)?;
            if owner.is_root() && !self.accounts.allow_root_owner {
                return Err(HomeError::RootOwned);
            }
            policy = policy.act_as(Some(owner));
        }
        let home = Home {
            mount: Mount::new(LocalFs::open(&dir)?).with_policy(policy),
            identity: account,
        };
        let mut cache = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(user.to_owned(), home.clone());
        Ok(home)
    }
}

use std::os::unix::fs::DirBuilderExt;

/// A user name usable as one directory name.
pub fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 255
        && u != "."
        && u != ".."
        && !u
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_control())
}

fn deny(status: StatusCode, msg: &str) -> Response {
    (status, format!("{} {}\n", status.as_u16(), msg)).into_response()
}

/// Middleware: puts the user's root into the request as a `Mount`.
pub async fn choose_root(
    State(roots): State<Arc<UserRoots>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(user) = roots.user_of(&req) else {
        return if roots.has_auth {
            deny(StatusCode::UNAUTHORIZED, "authentication required")
        } else {
            deny(
                StatusCode::FORBIDDEN,
                "no authenticated user (X-Remote-User only from the trusted proxy)",
            )
        };
    };
    if !valid_user(&user) {
        return deny(StatusCode::FORBIDDEN, "user name cannot name a directory");
    }
    let r2 = roots.clone();
    let u2 = user.clone();
    let home = match tokio::task::spawn_blocking(move || r2.home_for(&u2)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e @ (HomeError::NoAccount(_) | HomeError::RootOwned))) => {
            tracing::info!(user, error = %e, "user refused");
            return deny(StatusCode::FORBIDDEN, &e.to_string());
        }
        Ok(Err(HomeError::Io(e))) => {
            tracing::error!(user, error = %e, "cannot open the user's root");
            return deny(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot open the user's root",
            );
        }
        Err(_) => {
            return deny(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot open the user's root",
            )
        }
    };
    req.extensions_mut().insert(home.mount);
    if let Some(id) = home.identity {
        req.extensions_mut().insert(id);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_names() {
        for ok in ["alice", "bob.smith", "x@y", "ü"] {
            assert!(super::valid_user(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "a\nb"] {
            assert!(!super::valid_user(bad), "{bad:?}");
        }
    }
}
