//! When a delivery's time is up. On the normal lane, `timeout_ms` is wall
//! time. On the idle lane (a demoted handler, see [`super::Lane`]) it is the
//! CPU time the delivery itself used: there it waits for CPU that others
//! leave free, and that wait must not count against it, or a demoted
//! handler's events would all time out whenever the host is busy.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

/// When one delivery's time is up.
#[derive(Debug, Clone)]
pub enum Deadline {
    /// At this instant (the normal lane).
    Wall(Instant),
    /// Once the delivery has used this much CPU time (the idle lane).
    Cpu {
        /// The CPU time the delivery used so far.
        meter: Arc<CpuMeter>,
        /// Its `timeout_ms`.
        limit: Duration,
    },
}

impl Deadline {
    /// `timeout` from now, counted as wall time, or as CPU time with `meter`.
    pub fn new(timeout: Duration, meter: Option<&Arc<CpuMeter>>) -> Deadline {
        match meter {
            None => Deadline::Wall(Instant::now() + timeout),
            Some(meter) => Deadline::Cpu { meter: meter.clone(), limit: timeout },
        }
    }

    /// Whether the time is up. For CPU time, call it from within the
    /// delivery's poll (as the epoch callback is).
    pub fn passed(&self) -> bool {
        match self {
            Deadline::Wall(at) => Instant::now() >= *at,
            Deadline::Cpu { meter, limit } => meter.used() >= *limit,
        }
    }
}

/// The CPU time one delivery's future used: the calling thread's CPU time
/// summed over its polls (a task may move between threads between polls).
#[derive(Debug, Default)]
pub struct CpuMeter {
    /// Nanoseconds used in finished polls.
    used_ns: AtomicU64,
    /// The thread's CPU clock when the current poll began; 0: not in a poll.
    poll_started_ns: AtomicU64,
}

impl CpuMeter {
    /// Runs `work`, counting the CPU time its polls take.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            self.poll_started_ns.store(thread_cpu_ns().max(1), Ordering::Relaxed);
            let result: Poll<T> = work.as_mut().poll(cx);
            let started = self.poll_started_ns.swap(0, Ordering::Relaxed);
            self.used_ns.fetch_add(thread_cpu_ns().saturating_sub(started), Ordering::Relaxed);
            result
        })
        .await
    }

    /// CPU time used so far, including the poll in progress on this thread.
    pub fn used(&self) -> Duration {
        let started = self.poll_started_ns.load(Ordering::Relaxed);
        let current = if started == 0 { 0 } else { thread_cpu_ns().saturating_sub(started) };
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed) + current)
    }
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec; the clock exists on every unix.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < d.as_nanos() as u64 {
            std::hint::black_box(0);
        }
    }

    #[test]
    fn cpu_time_counts_the_polls_and_not_the_waits_between_them() {
        let meter = Arc::new(CpuMeter::default());
        let deadline = Deadline::new(Duration::from_millis(30), Some(&meter));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let passed_inside = rt.block_on(meter.run(async {
            spin(Duration::from_millis(10));
            // Waiting (off CPU) does not count...
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = deadline.passed();
            // ...computing does, also mid-poll.
            spin(Duration::from_millis(25));
            (before, deadline.passed())
        }));
        assert_eq!(passed_inside, (false, true));
        let used = meter.used();
        assert!(used >= Duration::from_millis(35) && used < Duration::from_millis(100), "{used:?}");
        assert!(!Deadline::new(Duration::from_secs(5), None).passed());
        assert!(Deadline::new(Duration::ZERO, None).passed());
    }
}
