//! [`ConnLimiter`]: the cap on open connections, in all and per client
//! address, and its default from the open-file limit.

use crate::state::Shared;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// File descriptors [`max_connections_for`] keeps for the server itself:
/// listeners, the event loop, log files, the blocking pool's wake-ups,
/// upstream connections of a proxy.
pub const RESERVED_FDS: u64 = 64;

/// Connections closed to make room whose descriptors may still be open
/// (their tasks have not run yet) before [`ConnLimiter::admit`] stops
/// closing more and refuses instead ([`Refused::Closing`]); part of
/// [`RESERVED_FDS`]. Without this bound a burst of connects at the cap
/// would hold one descriptor per closed connection until the runtime gets
/// to their tasks, and could run the process out of descriptors.
pub const MAX_CLOSING: usize = 16;

/// The default connection cap for an open-file limit of `nofile` and a
/// request cap of `max_requests` (`0`: none): of `nofile` minus
/// [`RESERVED_FDS`], the smaller of `max_requests` and half is kept for the
/// files requests open (a request holds one open file or directory at a
/// time — a GET, a READDIR — or two — a whole-file PUT, its temporary and
/// its directory), and the rest is for connections:
///
/// ```text
/// avail = nofile - 64
/// max_connections = avail - min(max_requests, avail / 2)
/// ```
///
/// With a 1024 limit that is 480, with 65536 it is 64448 (at least 1).
pub fn max_connections_for(nofile: u64, max_requests: usize) -> usize {
    let avail = nofile.saturating_sub(RESERVED_FDS);
    let files = match max_requests {
        0 => avail / 2,
        n => (n as u64).min(avail / 2),
    };
    usize::try_from(avail - files).unwrap_or(usize::MAX).max(1)
}

/// [`max_connections_for`] this process's open-file limit (the soft
/// `RLIMIT_NOFILE`); `None` when that is unlimited. For a server whose
/// accept loop waits on [`ConnLimiter::settled`] before accepting.
pub fn default_max_connections(max_requests: usize) -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current.map(|n| max_connections_for(n, max_requests))
}

/// Descriptors kept, beside [`RESERVED_FDS`], by a server whose accept
/// loop the limiter cannot pace: Pingora's listener accepts and spawns a
/// task per connection, and the application sees (and admits) it only
/// when that task runs; tokio lets one task accept up to 128 connections
/// before it yields, so that many can be open and not yet admitted.
pub const ACCEPT_BURST_FDS: u64 = 128;

/// [`default_max_connections`] for a server whose accept loop does not
/// wait on [`ConnLimiter::settled`] (Pingora's): the open-file limit less
/// [`ACCEPT_BURST_FDS`] first. With a 1024 limit that is 416.
///
/// ```
/// assert_eq!(spockfs_conn::max_connections_for(1024 - spockfs_conn::ACCEPT_BURST_FDS, 1024), 416);
/// ```
pub fn default_max_connections_unpaced(max_requests: usize) -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current
        .map(|n| max_connections_for(n.saturating_sub(ACCEPT_BURST_FDS), max_requests))
}

/// Caps the connections open at once, in all and per client address;
/// shared by every listener of a server. Cheap to clone.
///
/// At a cap a new connection never waits: the idlest connection (no
/// request in progress, idle longest) is closed to admit it — its reader
/// is woken and reports end of file, so the server closes it as it would
/// an idle one — and only when none is idle is the new connection refused
/// (closed at once). The per-address cap works the same way within one
/// address: past it, that address's own idlest connection makes room, or
/// its new connection is refused; other clients are never closed for it.
/// A connection still in its TLS handshake is never chosen (the handshake
/// timeout bounds it).
///
/// ```
/// use spockfs_conn::{ConnLimiter, ConnTimeouts, GuardedIo};
/// let limiter = ConnLimiter::new(Some(2), None);
/// let timeouts = ConnTimeouts { idle: None, header: None, write: None };
/// let ip = "192.0.2.1".parse().ok();
/// let a = GuardedIo::admitted(tokio::io::empty(), timeouts, limiter.admit(ip).unwrap());
/// let b = GuardedIo::admitted(tokio::io::empty(), timeouts, limiter.admit(ip).unwrap());
/// // Both idle: a third one closes the idlest (`a`) to get in.
/// let c = limiter.admit(ip).unwrap();
/// assert_eq!(limiter.open(), 2);
/// # drop((a, b, c));
/// ```
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    pub(crate) registry: Arc<Registry>,
}

#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) max: Option<usize>,
    pub(crate) per_ip: Option<usize>,
    pub(crate) conns: Mutex<Conns>,
    /// Signalled when a closed-to-make-room connection is gone.
    pub(crate) gone: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct Conns {
    pub(crate) next_id: u64,
    pub(crate) all: HashMap<u64, Entry>,
    pub(crate) per_ip: HashMap<IpAddr, usize>,
    /// Closed to make room, descriptor possibly still open.
    pub(crate) closing: std::collections::HashSet<u64>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) shared: Arc<Shared>,
}

impl Conns {
    pub(crate) fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.all.remove(&id)?;
        if let Some(ip) = e.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        Some(e)
    }

    /// The connection idle longest (of `ip`, if given).
    pub(crate) fn idlest(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.all
            .iter()
            .filter(|(_, e)| ip.is_none() || e.ip == ip)
            .filter_map(|(&id, e)| {
                let st = e.shared.lock();
                (st.guarded && !st.evicted && st.in_flight == 0).then_some((st.idle_since, id))
            })
            .min()
            .map(|(_, id)| id)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its client address has as many connections as allowed, none idle.
    PerIp,
    /// The server has as many connections as allowed, none idle.
    Full,
    /// The server has as many connections as allowed, and
    /// [`MAX_CLOSING`] of those it closed to make room have not released
    /// their descriptors yet.
    Closing,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::PerIp => "too many connections from this address, none idle",
            Refused::Full => "too many connections, none idle",
            Refused::Closing => {
                "too many connections, and those closed to make room are not gone yet"
            }
        })
    }
}

impl std::error::Error for Refused {}

/// A connection's place under a [`ConnLimiter`]; hand it to
/// [`GuardedIo::admitted`](crate::GuardedIo::admitted). Dropping it gives the place back.
#[derive(Debug)]
pub struct Admission {
    pub(crate) shared: Arc<Shared>,
    pub(crate) registration: Registration,
}

#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) registry: Arc<Registry>,
    pub(crate) id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        let was_closing = c.closing.remove(&self.id);
        let gone = c.remove(self.id);
        drop(c);
        drop(gone);
        if was_closing {
            self.registry.gone.notify_waiters();
        }
    }
}

impl Registry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes `e` (its reader reports end of file once no request is in
/// progress).
fn evict(e: Entry) {
    let waker = {
        let mut st = e.shared.lock();
        st.evicted = true;
        st.reader.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

impl ConnLimiter {
    /// At most `max` connections at once and at most `per_ip` from one
    /// client address; `None` (or `0`) leaves one uncapped.
    pub fn new(max: Option<usize>, per_ip: Option<usize>) -> ConnLimiter {
        ConnLimiter {
            registry: Arc::new(Registry {
                max: max.filter(|&n| n > 0),
                per_ip: per_ip.filter(|&n| n > 0),
                conns: Mutex::new(Conns::default()),
                gone: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The cap on all connections.
    pub fn max(&self) -> Option<usize> {
        self.registry.max
    }

    /// The cap per client address.
    pub fn max_per_ip(&self) -> Option<usize> {
        self.registry.per_ip
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.registry.lock().all.len()
    }

    /// Connections closed to make room whose descriptors are not released
    /// yet (their [`Admission`] not dropped).
    pub fn closing(&self) -> usize {
        self.registry.lock().closing.len()
    }

    /// Waits until fewer than [`MAX_CLOSING`] connections closed to make
    /// room are still open, so that [`admit`](Self::admit) can make room
    /// again. An accept loop calls it before accepting: at the cap, a
    /// burst of connects then never holds more than [`MAX_CLOSING`]
    /// descriptors beyond the cap. A closed connection goes as soon as its
    /// task runs (or its request in progress ends), so callers bound the
    /// wait with a timeout.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let limiter = spockfs_conn::ConnLimiter::new(Some(1), None);
    /// limiter.settled().await; // nothing is closing: returns at once
    /// # });
    /// ```
    pub async fn settled(&self) {
        loop {
            let gone = self.registry.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.closing() < MAX_CLOSING {
                return;
            }
            gone.await;
        }
    }

    /// Admits a new connection from `peer`, closing the idlest one if a
    /// cap is reached (see [`ConnLimiter`]); `Err` if it must be refused
    /// (also when [`MAX_CLOSING`] connections closed to make room still
    /// hold their descriptors: see [`settled`](Self::settled)). Never
    /// waits.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Admission, Refused> {
        let reg = &self.registry;
        let mut evicted = Vec::new();
        let mut c = reg.lock();
        let per_ip_full = match (peer, reg.per_ip) {
            (Some(ip), Some(cap)) => c.per_ip.get(&ip).copied().unwrap_or(0) >= cap,
            _ => false,
        };
        let full = reg.max.is_some_and(|cap| c.all.len() >= cap);
        if (per_ip_full || full) && c.closing.len() >= MAX_CLOSING {
            return Err(Refused::Closing);
        }
        if per_ip_full {
            let id = c.idlest(peer).ok_or(Refused::PerIp)?;
            evicted.extend(c.remove(id));
            c.closing.insert(id);
        }
        if reg.max.is_some_and(|cap| c.all.len() >= cap) {
            let id = c.idlest(None).ok_or(Refused::Full)?;
            evicted.extend(c.remove(id));
            c.closing.insert(id);
        }
        let shared = Shared::new(false);
        let id = c.next_id;
        c.next_id += 1;
        c.all.insert(
            id,
            Entry {
                ip: peer,
                shared: shared.clone(),
            },
        );
        if let Some(ip) = peer {
            *c.per_ip.entry(ip).or_default() += 1;
        }
        drop(c);
        for e in evicted {
            evict(e);
        }
        Ok(Admission {
            shared,
            registration: Registration {
                registry: reg.clone(),
                id,
            },
        })
    }
}
