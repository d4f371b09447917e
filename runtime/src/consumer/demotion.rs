//! Demotion: a handler whose deliveries run out of time is moved to the
//! executor's idle lane ([`Lane::Idle`], `SCHED_IDLE` threads) until it
//! behaves. A handler that spins until its timeout would otherwise hold
//! the cores every other handler needs. Demoted, it runs only on CPU the
//! others leave free, still at its full `concurrency`, with its
//! `timeout_ms` counted in the CPU time each delivery got (so waiting for
//! CPU never times it out). [`PROMOTE_AFTER`] deliveries in a row that
//! finish in time bring it back; so does a reload to another version of
//! its plugin.
//!
//! Only the wasm of a demoted delivery waits for idle CPU: the delivery is
//! given up, committed and retried from the normal lane
//! ([`Plugin::invoke_demoted`]). Its wasm, given up but not yet dropped by
//! the idle lane, keeps the delivery's permit
//! ([`Consumer::hold_permit_for`]), so a busy machine never piles up more
//! of the handler's instances than its `concurrency`.

use super::Consumer;
use crate::logging::{self, event_line};
#[cfg(doc)]
use crate::wasm::Plugin;
use crate::wasm::{Lane, Straggler};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

/// Deliveries in a row that must finish in time (whatever their outcome)
/// before a demoted handler runs at normal priority again.
pub const PROMOTE_AFTER: u32 = 20;

/// Whether one handler is demoted, and how it has behaved since.
#[derive(Debug, Default)]
pub(super) struct Demotion {
    demoted: AtomicBool,
    /// Deliveries that finished in time since the last one that did not.
    in_time: AtomicU32,
}

/// A change of lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Demoted,
    Promoted,
}

impl Demotion {
    /// The lane the handler's next delivery runs on.
    pub(super) fn lane(&self) -> Lane {
        if self.demoted.load(Ordering::Relaxed) { Lane::Idle } else { Lane::Normal }
    }

    /// Records how a delivery ended: `timed_out`, or in time. Returns the
    /// change of lane it causes, if any.
    pub(super) fn record(&self, timed_out: bool) -> Option<Change> {
        if timed_out {
            self.in_time.store(0, Ordering::SeqCst);
            return (!self.demoted.swap(true, Ordering::SeqCst)).then_some(Change::Demoted);
        }
        if !self.demoted.load(Ordering::SeqCst) {
            return None;
        }
        let in_time = self.in_time.fetch_add(1, Ordering::SeqCst) + 1;
        let promoted = in_time >= PROMOTE_AFTER
            && self.demoted.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        promoted.then_some(Change::Promoted)
    }

    /// Back to normal priority (a new version of the plugin); whether it was
    /// demoted.
    pub(super) fn reset(&self) -> bool {
        self.in_time.store(0, Ordering::SeqCst);
        self.demoted.swap(false, Ordering::SeqCst)
    }
}

impl Consumer {
    /// Whether the handler runs at idle priority after its deliveries ran out
    /// of time.
    pub fn is_demoted(&self) -> bool {
        self.demotion.lane() == Lane::Idle
    }

    /// Records how a delivery ended, demoting or promoting the handler.
    pub(super) fn record_timing(&self, timed_out: bool) {
        match self.demotion.record(timed_out) {
            Some(Change::Demoted) => {
                self.metrics.set_demoted(self.is_demoted());
                event_line!(WARN, group = %self.group, "a delivery ran out of time: this handler now runs at idle priority, on CPU the other handlers leave free, until {PROMOTE_AFTER} deliveries in a row finish in time");
            }
            Some(Change::Promoted) => {
                self.metrics.set_demoted(self.is_demoted());
                event_line!(INFO, group = %self.group, "{PROMOTE_AFTER} deliveries in a row finished in time: this handler runs at normal priority again");
            }
            None => {}
        }
    }

    /// Keeps `permit`, the one a demoted delivery given up had (its outcome
    /// committed already), until the idle lane drops its wasm,
    /// `straggler`, or the host stops: however long the idle lane waits for
    /// CPU, the handler holds no more instances than its `concurrency`.
    pub(super) fn hold_permit_for(self: &Arc<Self>, straggler: Straggler, permit: OwnedSemaphorePermit) {
        let shutdown = self.shutdown.clone();
        let event = logging::current_event();
        self.io.spawn(logging::within(event, async move {
            tokio::select! {
                () = straggler.ended() => {
                    event_line!(DEBUG, "the instance of this given-up delivery is dropped: its permit is free");
                }
                () = shutdown.cancelled() => {},
            }
            drop(permit);
        }));
    }

    /// A new version of the plugin starts at normal priority.
    pub(super) fn promote_new_version(&self) {
        if self.demotion.reset() {
            self.metrics.set_demoted(self.is_demoted());
            info!(group = %self.group, "a new version of the plugin: this handler runs at normal priority again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_demotes_and_enough_deliveries_in_time_in_a_row_promote() {
        let d = Demotion::default();
        assert_eq!((d.lane(), d.record(false)), (Lane::Normal, None));
        assert_eq!(d.record(true), Some(Change::Demoted));
        assert_eq!((d.lane(), d.record(true)), (Lane::Idle, None));
        for _ in 1..PROMOTE_AFTER {
            assert_eq!(d.record(false), None);
        }
        // One more timeout starts the count again.
        assert_eq!(d.record(true), None);
        for _ in 1..PROMOTE_AFTER {
            assert_eq!(d.record(false), None);
        }
        assert_eq!((d.lane(), d.record(false)), (Lane::Idle, Some(Change::Promoted)));
        assert_eq!(d.lane(), Lane::Normal);
        assert_eq!(d.record(true), Some(Change::Demoted));
        assert!(d.reset());
        assert!(!d.reset());
        assert_eq!(d.lane(), Lane::Normal);
    }
}
