//! One handler's consumer: reads its streams through its group, runs each
//! delivery in its plugin, and carries out the
//! [`Decision`](crate::dispatch::Decision).
//!
//! Sources of deliveries, in order: this consumer's own pending entries from
//! an earlier run (same consumer name), new entries (`XREADGROUP >`), entries
//! abandoned by dead consumers (after `claim_idle_ms`, by the script in
//! `stream/takeover.lua`), and this consumer's own retries (`XCLAIM` after
//! the backoff).
//!
//! Layout: [`Consumer`] and its life cycle in `consumer.rs`; taking entries
//! in (reads, claims, recovery) in `intake.rs`; running a delivery and
//! finishing it (commit, retry, dead-letter) in `finish.rs`; the same
//! intake through key queues, for a handler with `order_by`, in
//! `ordered.rs`; demotion to idle priority after timeouts in `demotion.rs`;
//! [`Binding`] in `binding.rs`; the gate between reads in flight and the
//! recovery after a lost reply in `gate.rs`.

mod binding;
#[allow(clippy::module_inception)]
mod consumer;
mod demotion;
mod finish;
mod gate;
mod intake;
mod ordered;

pub use binding::Binding;
pub use consumer::Consumer;
pub use demotion::PROMOTE_AFTER;
