//! Who a request is made by: the FUSE caller's uid, gid and
//! supplementary groups (read from `/proc`), carried by the task that
//! serves the request.

use super::MountFs;
use spockfs_client::Caller;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A caller's supplementary groups and when they were read.
pub(super) type CallerGroups = (Arc<[u32]>, Instant);

tokio::task_local! {
    /// Who the FUSE request a task serves was made by.
    static CALLER: Option<Caller>;
}

/// Runs `fut` as `caller`: every server call [`MountFs`] makes while
/// `fut` runs carries that caller (when the mount sends ids at all, see
/// [`MountFs::caller`]); `None` makes them as the mount's own user.
pub fn as_caller<F: Future>(caller: Option<Caller>, fut: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, fut)
}

/// The caller the current task runs as (see [`as_caller`]).
pub(super) fn current() -> Option<Caller> {
    CALLER.try_with(|c| c.clone()).ok().flatten()
}

/// How long a caller's groups read from `/proc` are reused.
const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Most callers whose groups are remembered.
const GROUPS_MAX: usize = 1024;

/// The supplementary groups of process (or thread) `pid`, from the
/// `Groups:` line of `/proc/PID/status`.
fn proc_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

impl MountFs {
    /// The caller of a FUSE request by process (or thread) `pid` as `uid`
    /// and `gid`, with the supplementary groups read from `/proc` (reused
    /// for a second), to run its calls with [`as_caller`]; `None` if the
    /// mount does not send ids (`MountConfig::send_ids`).
    pub fn caller(&self, uid: u32, gid: u32, pid: u32) -> Option<Caller> {
        if !self.cfg.send_ids {
            return None;
        }
        let groups = {
            let mut cache = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&pid) {
                Some((g, at)) if at.elapsed() < GROUPS_TTL => g.clone(),
                _ => {
                    // A caller gone already has no groups to add.
                    let g: Arc<[u32]> = proc_groups(pid).unwrap_or_default().into();
                    if cache.len() >= GROUPS_MAX {
                        cache.retain(|_, (_, at)| at.elapsed() < GROUPS_TTL);
                        if cache.len() >= GROUPS_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(pid, (g.clone(), Instant::now()));
                    g
                }
            }
        };
        Some(Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        })
    }
}
