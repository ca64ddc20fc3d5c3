//! A mount's policy applied to a parsed request: who it acts as
//! (identity) and what it may do (set-ID bits, devices, privileged xattrs).

use super::parse::{BodyOp, Call, Op, Reject};
use crate::backend::Devices;
use crate::headers::X_SPOCK_CALLER;
use crate::identity::CallerError;
use crate::mount::Mount;
use crate::{Errno, Identity};
use http::StatusCode;

/// Who a request acts as, in order: an [`Identity`] the host put in the
/// request's extensions, the mount's own ([`Mount::act_as`]), the
/// client-declared one on mounts that trust it
/// ([`Mount::trust_client_ids`]), else `None` (the server's own).
pub(super) fn identity_of(
    parts: &http::request::Parts,
    mount: &Mount,
) -> Result<Option<Identity>, Reject> {
    if let Some(id) = parts.extensions.get::<Identity>() {
        return Ok(Some(id.clone()));
    }
    let policy = mount.policy();
    if let Some(id) = policy.identity() {
        return Ok(Some(id.clone()));
    }
    let Some(ids) = policy.client_ids() else {
        return Ok(None);
    };
    let header = parts.headers.get(&X_SPOCK_CALLER).map(|v| v.as_bytes());
    match ids.resolve(header) {
        Ok(id) => Ok(Some(id)),
        Err(e @ CallerError::Malformed) => Err(Reject::bad(e.to_string())),
        Err(e @ CallerError::OutOfRange(_)) => Err(Reject {
            status: StatusCode::FORBIDDEN,
            errno: Errno::EPERM,
            message: e.to_string(),
        }),
    }
}

/// True for a character or block device's mode.
pub(super) fn is_device(mode: u32) -> bool {
    use crate::backend::mode::{S_IFBLK, S_IFCHR, S_IFMT};
    matches!(mode & S_IFMT, S_IFCHR | S_IFBLK)
}

/// The mount's [privilege policy](Mount#privilege-policy) applied to a
/// parsed request: modes of new non-directories lose the set-ID bits the policy
/// forbids (CHMOD, writes and truncation are handled by the backend on the
/// object itself, see [`SetId`](crate::backend::SetId)), and privileged xattr namespaces are
/// refused before anything is read or changed.
pub(super) fn apply_policy(mount: &Mount, call: Call) -> Result<Call, Reject> {
    use crate::backend::mode::{S_IFDIR, S_IFMT};
    let setid = mount.setid();
    Ok(match call {
        Call::Op(Op::Post { mode }) => Call::Op(Op::Post {
            mode: setid.file_mode(mode),
        }),
        Call::Op(Op::Mknod { mode, .. })
            if is_device(mode) && mount.devices() == Devices::Refuse =>
        {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: "device nodes are not made on this mount".into(),
            });
        }
        // MKNOD never makes a directory (EPERM), so every mode is a file's.
        Call::Op(Op::Mknod { mode, dev }) if mode & S_IFMT != S_IFDIR => Call::Op(Op::Mknod {
            mode: setid.file_mode(mode),
            dev,
        }),
        Call::Body(BodyOp::Setxattr { ref name, .. }) | Call::Op(Op::Removexattr { ref name })
            if !mount.allows_any_xattr() && !crate::mount::is_unprivileged_xattr(name) =>
        {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                errno: Errno::EPERM,
                message: format!(
                    "extended attribute {:?}: only user.* and POSIX ACLs may be changed on this mount",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        call => call,
    })
}
