//! The gate between reading and taking back what a lost reply left behind.
//!
//! An entry is pending with this consumer from the moment Redis runs the
//! read (or claim) that delivers it until its reply is in and the entry is
//! held here ([`super::Consumer::hold`]). A recovery that met it in that
//! window would deliver it a second time; that is why a recovery spares
//! entries delivered less than `RECOVER_MIN_IDLE` ago. For a handler that
//! does not order by key, each read and claim passes through this gate for
//! that window, and the recovery that follows a lost reply closes the gate
//! and waits until no read is in it: then nothing pending here and not held
//! can be on its way, and it takes all of it back at once, instead of half
//! a second later.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often a closed gate is looked at again (by a read waiting to pass,
/// or a recovery waiting for the reads in it). Only after a lost reply.
const POLL: Duration = Duration::from_millis(1);

/// Reads in flight, and the recovery that may close the way to them.
#[derive(Debug, Default)]
pub(super) struct ReadGate {
    /// Reads between being sent and their entries held here.
    inside: Arc<AtomicUsize>,
    /// Whether a recovery has closed the gate (0 or 1: recoveries take
    /// turns, `turn`).
    closed: AtomicUsize,
    /// One recovery at a time: two at once could each take back the same
    /// entry, and the one that finds it already finished and released would
    /// deliver it again.
    turn: tokio::sync::Mutex<()>,
}

/// One read in the gate, until dropped (once its entries are held, or its
/// reply is lost).
#[derive(Debug)]
pub(super) struct Pass(Arc<AtomicUsize>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The gate closed by one recovery, until dropped.
#[derive(Debug)]
pub(super) struct Closed<'a> {
    gate: &'a ReadGate,
    _turn: tokio::sync::MutexGuard<'a, ()>,
    /// Whether every read in the gate came out in time: if not, one may
    /// still bring entries that are pending here and not held yet.
    pub(super) empty: bool,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.closed.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReadGate {
    /// A pass for a read about to be sent, or `None` while a recovery has
    /// the gate closed (for a caller that must not wait: it reads nothing).
    pub(super) fn try_pass(&self) -> Option<Pass> {
        // (SeqCst on both sides: a recovery that closes the gate and then
        // finds no read inside, and a read that enters and then finds the
        // gate open, cannot both happen.)
        self.inside.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.inside.clone());
        (self.closed.load(Ordering::SeqCst) == 0).then_some(pass)
    }

    /// A pass for a read about to be sent, once no recovery has the gate
    /// closed.
    pub(super) async fn pass(&self) -> Pass {
        loop {
            if let Some(pass) = self.try_pass() {
                return pass;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Closes the gate (after any recovery closing it now) and waits up to
    /// `patience` for the reads inside to come out.
    pub(super) async fn close(&self, patience: Duration) -> Closed<'_> {
        let turn = self.turn.lock().await;
        self.closed.fetch_add(1, Ordering::SeqCst);
        let mut closed = Closed { gate: self, _turn: turn, empty: false };
        let until = Instant::now() + patience;
        loop {
            if self.inside.load(Ordering::SeqCst) == 0 {
                closed.empty = true;
                return closed;
            }
            if Instant::now() >= until {
                return closed;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_lets_no_read_in_and_waits_for_those_inside() {
        let gate = Arc::new(ReadGate::default());
        let inside = gate.try_pass().expect("open");
        // A read inside that does not come out in time: the gate closes,
        // but not empty.
        let closed = gate.close(Duration::from_millis(5)).await;
        assert!(!closed.empty);
        assert!(gate.try_pass().is_none(), "closed to new reads");
        drop(closed);
        // Once it comes out, a recovery finds the gate empty.
        let leaving = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(inside);
        });
        let closed = gate.close(Duration::from_secs(10)).await;
        assert!(closed.empty);
        leaving.await.unwrap();
        // A read waiting to pass gets in once the recovery is done.
        let g = gate.clone();
        let read = tokio::spawn(async move { g.pass().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!read.is_finished(), "let in while closed");
        drop(closed);
        let pass = read.await.unwrap();
        assert_eq!(gate.inside.load(Ordering::SeqCst), 1, "only the read let in is counted");
        drop(pass);
        assert_eq!(gate.inside.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn recoveries_take_turns() {
        let gate = Arc::new(ReadGate::default());
        let first = gate.close(Duration::ZERO).await;
        let g = gate.clone();
        let second = tokio::spawn(async move { g.close(Duration::ZERO).await.empty });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!second.is_finished(), "closed by two recoveries at once");
        drop(first);
        assert!(second.await.unwrap());
        assert!(gate.try_pass().is_some(), "open once both are done");
    }
}
