//! Drops what makes no progress: a value handed to a [`Reaper`] is dropped
//! by one background task once it has gone the reaper's timeout without a
//! [`Watched::touch`], even if its owner is never polled again.
//!
//! This is how a response body that the transport stopped pulling (a
//! client that reads nothing, an HTTP/2 stream whose flow-control window
//! stays at zero) gives back its request slot and its open file: the
//! transport parks on its own socket or window and would never drop the
//! body by itself.
//!
//! Cost on the request path: registering is an `Arc` and one short lock of
//! one of [`SHARDS`] slabs; a touch is one relaxed atomic store. The task
//! wakes every `timeout / SCANS` and counts, for each value, the scans it
//! has seen without a touch; at `SCANS + 1` the value is dropped. A value
//! is therefore dropped between `timeout` and `timeout * (SCANS + 1) /
//! SCANS` after its last touch.

use slab::Slab;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Slabs the registrations are spread over (fewer threads meeting on one
/// lock).
const SHARDS: usize = 8;
/// Scans per timeout.
const SCANS: u32 = 4;
/// Shortest time between two scans.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Owns the background task and the registrations. Cheap to clone.
pub(crate) struct Reaper<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Reaper<T> {
    fn clone(&self) -> Self {
        Reaper {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Reaper<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

struct Shared<T> {
    timeout: Duration,
    shards: [Mutex<Slab<Arc<Slot<T>>>>; SHARDS],
    next_shard: AtomicUsize,
    /// True while the scanning task runs (it clears this when it ends,
    /// including when its runtime shuts down).
    running: AtomicBool,
}

struct Slot<T> {
    /// Scans since the last touch.
    stale: AtomicU32,
    /// `None` once reaped (or taken).
    value: Mutex<Option<T>>,
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Send + 'static> Reaper<T> {
    /// A reaper dropping values untouched for `timeout`. The task starts
    /// with the first [`watch`](Reaper::watch).
    pub(crate) fn new(timeout: Duration) -> Reaper<T> {
        Reaper {
            shared: Arc::new(Shared {
                timeout,
                shards: std::array::from_fn(|_| Mutex::new(Slab::new())),
                next_shard: AtomicUsize::new(0),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// Registers `value`; it counts as touched now.
    pub(crate) fn watch(&self, value: T) -> Watched<T> {
        self.ensure_task();
        let slot = Arc::new(Slot {
            stale: AtomicU32::new(0),
            value: Mutex::new(Some(value)),
        });
        let shard = self.shared.next_shard.fetch_add(1, Relaxed) % SHARDS;
        let key = lock(&self.shared.shards[shard]).insert(slot.clone());
        Watched {
            slot,
            shared: self.shared.clone(),
            shard,
            key,
        }
    }

    /// Starts the scanning task on the current runtime unless it runs.
    /// Outside a runtime nothing is started (and nothing is reaped).
    fn ensure_task(&self) {
        let shared = &self.shared;
        if shared.running.load(Relaxed) || shared.running.swap(true, Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            shared.running.store(false, Relaxed);
            return;
        };
        let weak = Arc::downgrade(shared);
        let interval = (shared.timeout / SCANS).max(MIN_INTERVAL);
        rt.spawn(async move {
            // Clears `running` however the task ends.
            let _running = Running(weak.clone());
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                shared.scan();
            }
        });
    }
}

/// Clears `running` when the task ends.
struct Running<T>(Weak<Shared<T>>);

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.upgrade() {
            s.running.store(false, Relaxed);
        }
    }
}

impl<T> Shared<T> {
    /// One scan: ages every live value, drops those past the limit.
    fn scan(&self) {
        let mut dead = Vec::new();
        for shard in &self.shards {
            let slab = lock(shard);
            for (_, slot) in slab.iter() {
                let stale = slot.stale.load(Relaxed);
                if stale > SCANS {
                    continue; // reaped already
                }
                slot.stale.store(stale + 1, Relaxed);
                if stale < SCANS {
                    continue;
                }
                // Locked: being polled right now, which is progress.
                match slot.value.try_lock() {
                    Ok(mut v) => dead.extend(v.take()),
                    Err(_) => slot.stale.store(0, Relaxed),
                }
            }
        }
        if !dead.is_empty() {
            tracing::info!(
                count = dead.len(),
                timeout_ms = self.timeout.as_millis() as u64,
                "aborting responses that made no progress (write timeout)"
            );
        }
        // Dropped here, outside every lock.
        drop(dead);
    }
}

/// A value under a [`Reaper`]; unregistered when dropped.
pub(crate) struct Watched<T> {
    slot: Arc<Slot<T>>,
    shared: Arc<Shared<T>>,
    shard: usize,
    key: usize,
}

impl<T> Watched<T> {
    /// Progress: the reaper's clock restarts.
    #[inline]
    pub(crate) fn touch(&self) {
        self.slot.stale.store(0, Relaxed);
    }

    /// The value, `None` if it was reaped.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<T>> {
        lock(&self.slot.value)
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        lock(&self.shared.shards[self.shard]).try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops.
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[tokio::test]
    async fn untouched_values_are_dropped_touched_ones_kept() {
        let reaper = Reaper::new(Duration::from_millis(200));
        let drops = Arc::new(AtomicUsize::new(0));
        let idle = reaper.watch(Probe(drops.clone()));
        let busy = reaper.watch(Probe(drops.clone()));
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            busy.touch();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            drops.load(Relaxed),
            1,
            "only the untouched value is dropped"
        );
        assert!(idle.lock().is_none());
        assert!(busy.lock().is_some());
        drop(busy);
        assert_eq!(drops.load(Relaxed), 2);
        drop(idle);
        let slabs: usize = reaper.shared.shards.iter().map(|s| lock(s).len()).sum();
        assert_eq!(slabs, 0, "unregistered on drop");
    }

    #[tokio::test]
    async fn not_reaped_before_the_timeout() {
        let reaper = Reaper::new(Duration::from_millis(400));
        let drops = Arc::new(AtomicUsize::new(0));
        let w = reaper.watch(Probe(drops.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(drops.load(Relaxed), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(drops.load(Relaxed), 1);
        drop(w);
    }
}
