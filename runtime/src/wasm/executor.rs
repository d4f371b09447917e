//! The thread pools handler code runs on, apart from the runtime that drives
//! Redis and the host's own tasks. A handler that computes until its
//! deadline then competes only with other handlers, never with the I/O that
//! acknowledges everyone's events (on a shared runtime, busy workers poll
//! the I/O driver too rarely and every handler stalls).
//!
//! Two lanes: the normal one, and an idle-priority one for demoted handlers
//! (see [`crate::consumer`]'s demotion), whose threads the kernel runs only
//! when no normal thread wants the core (`SCHED_IDLE`). A handler whose
//! events spin until their timeout then takes CPU from nobody.

use futures::FutureExt;
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

/// Which of the executor's pools a delivery runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Normal priority: every handler that behaves.
    Normal,
    /// Idle priority (`SCHED_IDLE` on Linux): CPU that no normal thread
    /// wants. A demoted handler's deliveries run here, with their time
    /// limit counted in CPU time rather than wall time.
    Idle,
}

thread_local! {
    /// The lane this thread works for, if it is one of an executor's workers.
    static LANE: Cell<Option<Lane>> = const { Cell::new(None) };
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
        let rt = build(Lane::Normal)?;
        let normal = rt.handle().clone();
        Ok(Executor { normal, owner: Arc::new(Owner { runtimes: Mutex::new(vec![rt]), idle: OnceLock::new() }) })
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

    /// Starts `work` on `lane`. Whole deliveries run here, so the only hops
    /// to the host's runtime are Redis calls, which are batched. If the idle
    /// lane cannot be started, the work runs on the normal one.
    pub fn spawn(&self, lane: Lane, work: impl Future<Output = ()> + Send + 'static) {
        let handle = match lane {
            Lane::Normal => &self.normal,
            Lane::Idle => self.idle().unwrap_or(&self.normal),
        };
        drop(handle.spawn(work));
    }

    fn idle(&self) -> Option<&tokio::runtime::Handle> {
        let started = self.owner.idle.get_or_init(|| {
            let rt = build(Lane::Idle)?;
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

fn build(lane: Lane) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(match lane {
            Lane::Normal => "sluice-wasm",
            Lane::Idle => "sluice-wasm-idle",
        })
        .on_thread_start(move || {
            LANE.set(Some(lane));
            if lane == Lane::Idle {
                lower_this_thread();
            }
        })
        .enable_all()
        .build()
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
        for (lane, policy) in [(Lane::Normal, libc::SCHED_OTHER), (Lane::Idle, libc::SCHED_IDLE)] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            executor.spawn(lane, async move {
                // SAFETY: plain syscall on the calling thread.
                let got = unsafe { libc::sched_getscheduler(0) };
                let _ = tx.send((Executor::current_lane(), got));
            });
            let (on, got) = rt.block_on(rx).unwrap();
            assert_eq!((on, got), (Some(lane), policy), "{lane:?}");
        }
        assert_eq!(Executor::current_lane(), None);
    }
}
