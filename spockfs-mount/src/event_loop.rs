//! The mount's event loop: one single-threaded runtime per FUSE thread
//! that reads `/dev/fuse` when it is readable, starts each request as a
//! task, and polls a little before sleeping when it runs out of work.

use std::future::Future;
use std::time::Duration;

/// A FUSE thread's requests in flight.
struct Local {
    /// Requests started as tasks on this thread and not yet answered.
    in_flight: std::cell::Cell<usize>,
    /// When the thread last ran out of requests (none in flight).
    idle_since: std::cell::Cell<Option<std::time::Instant>>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            in_flight: std::cell::Cell::new(0),
            idle_since: std::cell::Cell::new(None),
        }
    };
}

/// Counts a request task in flight on this thread, until dropped (the task
/// finished or was dropped with the runtime).
struct InFlight;

impl InFlight {
    fn start() -> Self {
        LOCAL.with(|l| l.in_flight.set(l.in_flight.get() + 1));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| {
            let n = l.in_flight.get().saturating_sub(1);
            l.in_flight.set(n);
            if n == 0 {
                l.idle_since.set(Some(std::time::Instant::now()));
            }
        });
    }
}

/// How long the event loop keeps polling `/dev/fuse` after it ran out of
/// work, before it sleeps in epoll. A process making one call after
/// another sends its next request microseconds after its answer (`ls -l`
/// asks for two xattrs per file, answered from the negative cache), and
/// when the process and a sleeping loop thread sit on different CPUs every
/// call pays cross-CPU wake-ups: measured on 2 cores, ~18 us per call with
/// both pinned to one CPU, 50-65 us on two. Polling (with `sched_yield`, so
/// a caller on the same CPU gets it) catches the next request awake: a
/// fresh-mount `ls -l | grep` of 1000 files went from 51.5 ms (median of
/// 15; tail to 137 ms) to 44.4 ms (tail 52 ms). The window follows the
/// recent gap between running out of work and the next request (3x its
/// moving average, at most 200 us); when that gap averages over 300 us (a
/// caller that thinks between calls) the loop sleeps at once.
const SPIN: spockfs_proto::spin::SpinWindow = spockfs_proto::spin::SpinWindow {
    min: Duration::ZERO,
    max: Duration::from_micros(200),
    sparse: Duration::from_micros(300),
};

/// True if this thread has no request in flight; marks when it ran out of
/// work, unless already marked.
fn went_idle() -> bool {
    LOCAL.with(|l| {
        let idle = l.in_flight.get() == 0;
        if idle && l.idle_since.get().is_none() {
            l.idle_since.set(Some(std::time::Instant::now()));
        }
        idle
    })
}

/// Requests read in a row before the event loop lets the tasks it started
/// run.
const READ_BURST: usize = 64;

/// Starts a request as a task on this FUSE thread's event loop (see
/// [`run`]): it runs while the loop reads more requests.
pub(super) fn spawn<F>(f: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            let guard = InFlight::start();
            h.spawn(async move {
                f.await;
                drop(guard);
            });
        }
        // Only the event loop calls in here. Dropping `f` drops its
        // reply, which answers EIO.
        Err(_) => tracing::error!("a FUSE request outside the mount's event loop"),
    }
}

/// The thread's event loop: a single-threaded tokio runtime that waits
/// for `/dev/fuse` to be readable, reads and dispatches the queued
/// requests (each started as a task on this runtime), and otherwise
/// runs those tasks and their connections. The thread that answered
/// the last request reads the next one, so a process making one call at
/// a time always meets the same warm thread and connection; the kernel
/// would otherwise hand each request to the thread that has waited
/// longest, a different (cold) one every time. `on_start` runs on the
/// thread first (the filesystem takes a connection pool of its own).
pub(super) fn run(
    fd: std::os::fd::BorrowedFd<'_>,
    step: &mut dyn FnMut() -> std::io::Result<fuser::Step>,
    on_start: impl FnOnce(),
) -> std::io::Result<()> {
    use tokio::io::{unix::AsyncFd, Interest};
    rustix::io::ioctl_fionbio(fd, true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    on_start();
    rt.block_on(async {
        // ERROR too: an unmounted /dev/fuse polls as EPOLLERR only,
        // and `step` must then read its ENODEV to end the loop.
        let interest = Interest::READABLE | Interest::ERROR;
        // SAFETY: `fd` is open and refers to the same description for
        // this whole call (the session lends it), and `dev` is dropped
        // before the call returns.
        let dev = unsafe { AsyncFd::register_with_interest(fd, interest) }?;
        // Moving average of the gap between running out of work and
        // the next request (see `SPIN`).
        let mut avg = u64::MAX;
        let arrived = |avg: &mut u64| {
            if let Some(t) = LOCAL.with(|l| l.idle_since.take()) {
                *avg = SPIN.next_avg(*avg, t.elapsed().as_nanos() as u64);
            }
        };
        loop {
            // Out of work: poll for a while before sleeping.
            if went_idle() {
                let got = SPIN.poll(avg, || match step() {
                    Ok(fuser::Step::WouldBlock) => None,
                    r => Some(r),
                });
                match got.transpose()? {
                    Some(fuser::Step::Dispatched) => {
                        arrived(&mut avg);
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Some(fuser::Step::Done) => return Ok(()),
                    Some(fuser::Step::WouldBlock) | None => {}
                }
            }
            let mut ready = dev.ready(interest).await?;
            for _ in 0..READ_BURST {
                match step()? {
                    fuser::Step::Dispatched => arrived(&mut avg),
                    fuser::Step::WouldBlock => {
                        ready.clear_ready();
                        break;
                    }
                    fuser::Step::Done => return Ok(()),
                }
            }
            drop(ready);
            // Let the tasks just started (and their connections) run
            // before reading more.
            tokio::task::yield_now().await;
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn spin_window_follows_the_gap_between_requests() {
        use super::SPIN;
        use std::time::Duration;
        let mut avg = u64::MAX;
        let mut record = |gap: Duration, n: usize| {
            for _ in 0..n {
                avg = SPIN.next_avg(avg, gap.as_nanos() as u64);
            }
            SPIN.window(avg)
        };
        // Starts asleep: nothing learned yet.
        assert!(record(Duration::ZERO, 0).is_zero());
        let w = record(Duration::from_micros(10), 64);
        assert!(
            w >= Duration::from_micros(25) && w <= Duration::from_micros(40),
            "{w:?}"
        );
        assert_eq!(record(Duration::from_micros(90), 64), SPIN.max);
        // A caller that pauses between calls: no polling at all.
        assert!(record(Duration::from_secs(1), 64).is_zero());
    }
}
