//! Idle polling: how long a thread that ran out of work keeps checking
//! for more before it sleeps, learned from the gaps between arrivals. Shared
//! by the server's blocking pool and the mount's FUSE event loop.

use std::time::{Duration, Instant};

/// How long a thread waiting for work keeps polling before it sleeps,
/// learned from the gaps between arrivals: three times their moving
/// average (weight 1/8 per arrival), within `min..=max`; just `min` when
/// arrivals average more than `sparse` apart (the next one is unlikely to
/// come soon enough to be worth the CPU). Gaps count up to `2 * sparse`, so
/// one long pause is forgotten after a few arrivals.
///
/// The idle-polling helper shared by the server's blocking pool (its idle
/// thread) and `spockfs-mount`'s FUSE event loop.
///
/// ```
/// use spockfs_proto::spin::SpinWindow;
/// use std::time::Duration;
///
/// let w = SpinWindow {
///     min: Duration::ZERO,
///     max: Duration::from_micros(200),
///     sparse: Duration::from_micros(300),
/// };
/// // Nothing learned yet: no polling.
/// let mut avg = u64::MAX;
/// assert_eq!(w.window(avg), Duration::ZERO);
/// // Arrivals 20 us apart: poll for about 60 us.
/// for _ in 0..64 {
///     avg = w.next_avg(avg, 20_000);
/// }
/// let win = w.window(avg);
/// assert!(win > Duration::from_micros(55) && win < Duration::from_micros(65));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinWindow {
    /// Shortest poll (also the poll for sparse arrivals).
    pub min: Duration,
    /// Longest poll.
    pub max: Duration,
    /// Average gap above which arrivals count as sparse.
    pub sparse: Duration,
}

impl SpinWindow {
    /// The next moving average of the gap between arrivals (ns), given the
    /// last one (start from `u64::MAX`: nothing learned) and the new gap.
    pub fn next_avg(self, avg: u64, gap: u64) -> u64 {
        let cap = 2 * self.sparse.as_nanos() as u64;
        (avg.min(cap) * 7 + gap.min(cap)) / 8
    }

    /// How long to poll, given the average gap (ns).
    pub fn window(self, avg: u64) -> Duration {
        let avg = Duration::from_nanos(avg);
        if avg > self.sparse {
            self.min
        } else {
            (avg * 3).clamp(self.min, self.max)
        }
    }

    /// Calls `ready` until it returns `Some`, yielding the CPU
    /// (`sched_yield`) between calls, for at most [`window(avg)`](Self::window);
    /// `None` when the window ran out (or is zero) first.
    ///
    /// ```
    /// use spockfs_proto::spin::SpinWindow;
    /// use std::time::Duration;
    ///
    /// // A generous window: ready on the third call, however loaded the machine.
    /// let w = SpinWindow {
    ///     min: Duration::from_secs(5),
    ///     max: Duration::from_secs(5),
    ///     sparse: Duration::from_secs(5),
    /// };
    /// let mut calls = 0;
    /// assert_eq!(w.poll(u64::MAX, || { calls += 1; (calls == 3).then_some(calls) }), Some(3));
    /// // A zero window: nothing was ready at once.
    /// let none = SpinWindow { min: Duration::ZERO, max: Duration::ZERO, sparse: Duration::ZERO };
    /// assert_eq!(none.poll(u64::MAX, || None::<()>), None);
    /// ```
    pub fn poll<T>(self, avg: u64, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
        let window = self.window(avg);
        let start = Instant::now();
        while start.elapsed() < window {
            if let Some(v) = ready() {
                return Some(v);
            }
            std::thread::yield_now();
        }
        None
    }
}
