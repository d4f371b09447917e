//! The thread pools handler code runs on, apart from the runtime that drives
//! Redis and the host's own tasks. A handler that computes until its
//! deadline then competes only with other handlers, never with the I/O that
//! acknowledges everyone's events (on a shared runtime, busy workers poll
//! the I/O driver too rarely and every handler stalls).
//!
//! Two lanes: the normal one, and an idle-priority one for demoted handlers
//! (see [`crate::consumer`]'s demotion), whose threads the kernel runs only
//! when no normal thread wants the core (`SCHED_IDLE`). A handler whose
//! events spin until their timeout then takes CPU from nobody. Only the
//! wasm of a demoted delivery runs there ([`Executor::run_idle`]): its
//! time limit and its commit stay at normal priority, since the idle lane
//! may get no CPU at all while the machine is busy.

use futures::FutureExt;
use futures::future::BoxFuture;
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Which of the executor's pools a delivery runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Normal priority: every handler that behaves.
    Normal,
    /// Idle priority (`SCHED_IDLE` on Linux): CPU that no normal thread
    /// wants. A demoted handler's wasm runs here ([`Executor::run_idle`]),
    /// with its time limit counted in CPU time rather than wall time.
    Idle,
}

/// What became of work run on the idle lane ([`Executor::run_idle`]).
pub enum Waited<T> {
    /// It finished in time.
    Done(T),
    /// It panicked.
    Panicked,
    /// It did not finish in time.
    GaveUp(Straggler),
}

/// Work on the idle lane given up on ([`Waited::GaveUp`]): cancelled, but
/// it holds what it holds (a wasm instance and its memory) until one of the
/// idle lane's threads gets the CPU to drop it.
pub struct Straggler(BoxFuture<'static, ()>);

impl Straggler {
    /// Waits until the work is dropped.
    pub async fn ended(self) {
        self.0.await
    }
}

thread_local! {
    /// The lane this thread works for, if it is one of an executor's workers.
    static LANE: Cell<Option<Lane>> = const { Cell::new(None) };
    /// An idle-lane thread's entry on its list, dropped when the thread ends.
    static LISTED: std::cell::RefCell<Option<Listed>> = const { std::cell::RefCell::new(None) };
}

/// Multi-threaded tokio runtimes for wasm execution: one per [`Lane`], the
/// idle one started on first use. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    normal: tokio::runtime::Handle,
    owner: Arc<Owner>,
}

/// Shuts the runtimes down without blocking when the last clone goes (a
/// plain drop would panic inside an async context).
struct Owner {
    runtimes: Mutex<Vec<tokio::runtime::Runtime>>,
    idle: OnceLock<std::io::Result<tokio::runtime::Handle>>,
    /// The idle lane's live threads.
    idle_threads: Arc<Mutex<IdleThreads>>,
}

/// The idle lane's live threads, by thread id, and whether they were lifted
/// to normal priority ([`Executor::lift_idle_lane`]): a thread started
/// after that stays at normal priority too.
#[derive(Default)]
struct IdleThreads {
    ids: Vec<i32>,
    lifted: bool,
}

/// Takes an idle-lane thread off its list when the thread ends (normally
/// or unwinding): a thread id may be reused by any process after that.
struct Listed {
    threads: Arc<Mutex<IdleThreads>>,
    id: i32,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Ok(mut threads) = self.threads.lock() {
            threads.ids.retain(|&t| t != self.id);
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        for rt in self.runtimes.lock().unwrap().drain(..) {
            rt.shutdown_background();
        }
    }
}

impl Executor {
    /// A pool with one worker per core. I/O is enabled for handlers' HTTP calls.
    pub fn new() -> std::io::Result<Executor> {
        let rt = build(Lane::Normal, Arc::default())?;
        let normal = rt.handle().clone();
        let owner = Owner { runtimes: Mutex::new(vec![rt]), idle: OnceLock::new(), idle_threads: Arc::default() };
        Ok(Executor { normal, owner: Arc::new(owner) })
    }

    /// The lane the calling thread works for; `None` off the executor.
    pub fn current_lane() -> Option<Lane> {
        LANE.get()
    }

    /// Runs `work` on the normal lane and waits for it. `None` if it
    /// panicked. Already on either lane, it runs in the calling task (no hop).
    pub async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Option<T> {
        if LANE.get().is_some() {
            AssertUnwindSafe(work).catch_unwind().await.ok()
        } else {
            self.normal.spawn(work).await.ok()
        }
    }

    /// Starts `work` on the normal lane. Whole deliveries run here, so the
    /// only hops to the host's runtime are Redis calls, which are batched.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        drop(self.normal.spawn(work));
    }

    /// Runs `work` on the idle lane, and waits for it at most `within` from
    /// the calling task, at normal priority (on a machine with no CPU to
    /// spare, the idle lane's threads may not run for seconds, their own
    /// timers included). Work not done by then is cancelled, and returned
    /// as a [`Straggler`]. If the idle lane cannot be started, the work runs
    /// on the normal one.
    pub async fn run_idle<T: Send + 'static>(
        &self,
        within: Duration,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Waited<T> {
        let mut handle = self.idle().unwrap_or(&self.normal).spawn(work);
        match tokio::time::timeout(within, &mut handle).await {
            Ok(Ok(done)) => Waited::Done(done),
            Ok(Err(_)) => Waited::Panicked,
            Err(_) => {
                handle.abort();
                Waited::GaveUp(Straggler(Box::pin(async move {
                    let _ = handle.await;
                })))
            }
        }
    }

    /// Lifts the idle lane's threads back to normal priority, for a host
    /// that has stopped: what they still hold (deliveries given up, see
    /// [`Straggler`]) is dropped, and they exit, without waiting for CPU
    /// that a busy machine may not leave free. (A process exits only once
    /// every thread has, and an exiting thread runs at its own priority.)
    /// Linux lets a thread leave the idle class only with `CAP_SYS_NICE`
    /// (which a container's root lacks unless granted) or an `RLIMIT_NICE`
    /// of 20: without, the threads stay where they are, and this says why.
    pub fn lift_idle_lane(&self) -> std::io::Result<()> {
        let mut threads = self.owner.idle_threads.lock().unwrap();
        threads.lifted = true;
        #[cfg(target_os = "linux")]
        for &id in &threads.ids {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a plain syscall with a valid pointer, on a thread of
            // this process that is alive (listed until it ends; the list is
            // locked meanwhile).
            if unsafe { libc::sched_setscheduler(id, libc::SCHED_OTHER, &param) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn idle(&self) -> Option<&tokio::runtime::Handle> {
        let started = self.owner.idle.get_or_init(|| {
            let rt = build(Lane::Idle, self.owner.idle_threads.clone())?;
            let handle = rt.handle().clone();
            self.owner.runtimes.lock().unwrap().push(rt);
            Ok(handle)
        });
        match started {
            Ok(handle) => Some(handle),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "cannot start the idle-priority pool for demoted handlers ({e}); they run at normal priority"
                    );
                });
                None
            }
        }
    }
}

/// A runtime for `lane`; the idle lane's threads list themselves in
/// `threads` while they live, and lower their priority unless it was
/// lifted already.
fn build(lane: Lane, threads: Arc<Mutex<IdleThreads>>) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(match lane {
            Lane::Normal => "sluice-wasm",
            Lane::Idle => "sluice-wasm-idle",
        })
        .on_thread_start(move || {
            LANE.set(Some(lane));
            if lane == Lane::Idle {
                let id = this_thread_id();
                let mut list = threads.lock().unwrap();
                if !list.lifted {
                    lower_this_thread();
                }
                list.ids.push(id);
                LISTED.set(Some(Listed { threads: threads.clone(), id }));
            }
        })
        .enable_all()
        .build()
}

/// The calling thread's id (0 where there is none to give).
fn this_thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall with no arguments (glibc before 2.30 has no
    // `gettid` wrapper).
    return unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    #[cfg(not(target_os = "linux"))]
    return 0;
}

/// Puts the calling thread in the idle scheduling class: the kernel runs it
/// only on CPU that normal threads leave free.
#[cfg(target_os = "linux")]
fn lower_this_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid pointer.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("cannot lower a demoted handlers' thread to idle priority: {e}");
    }
}

/// Elsewhere the idle lane runs at normal priority (it still keeps a
/// demoted handler's deliveries off the normal lane's threads).
#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_idle_lane_runs_at_idle_priority_and_the_normal_lane_does_not() {
        let executor = Executor::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let here = || (Executor::current_lane(), unsafe { libc::sched_getscheduler(0) });
        let (tx, rx) = tokio::sync::oneshot::channel();
        executor.spawn(async move {
            // SAFETY (here): plain syscall on the calling thread.
            let _ = tx.send(here());
        });
        assert_eq!(rt.block_on(rx).unwrap(), (Some(Lane::Normal), libc::SCHED_OTHER));
        let on_idle = rt.block_on(executor.run_idle(Duration::from_secs(30), async move { here() }));
        assert!(matches!(on_idle, Waited::Done((Some(Lane::Idle), libc::SCHED_IDLE))));
        assert_eq!(Executor::current_lane(), None);

        // Lifted once the host stops, if it may (see `lift_idle_lane`);
        // threads the idle lane starts after that stay at normal priority.
        match executor.lift_idle_lane() {
            Ok(()) => {
                for _ in 0..8 {
                    let lifted = rt.block_on(executor.run_idle(Duration::from_secs(30), async move { here() }));
                    assert!(matches!(lifted, Waited::Done((Some(Lane::Idle), libc::SCHED_OTHER))));
                }
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn work_on_the_idle_lane_not_done_in_time_is_cancelled_and_its_end_awaited() {
        let executor = Executor::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let never = async move {
            let _dropped = dropped_tx;
            std::future::pending::<()>().await
        };
        let Waited::GaveUp(straggler) = rt.block_on(executor.run_idle(Duration::from_millis(50), never)) else {
            panic!("pending work done or panicked");
        };
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), straggler.ended()).await.expect("cancelled");
            // Dropped, not finished: its sender went without sending.
            assert!(dropped_rx.await.is_err());
        });
        let panics = rt.block_on(executor.run_idle(Duration::from_secs(30), async { panic!("on purpose") }));
        assert!(matches!(panics, Waited::Panicked));
    }
}
