//! Running one delivery: a fresh `Store` and instance from the plugin's
//! `InstancePre`, under an epoch deadline and a memory cap, then discarded.

use super::bindings::{Event, Failure};
use super::effects::Effects;
use super::engine::EPOCH_TICK;
use super::plugin::Plugin;
use super::state::{EventState, Sandbox};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::{Store, UpdateDeadline};

/// What one delivery came to. An ordinary value, not an error: failures are
/// the normal business of an event host, and building an error (with its
/// backtrace) per failed event costs real throughput.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `handle` returned ok.
    Success { effects: Effects },
    /// `handle` asked to be tried again.
    Retry { reason: String, delay: Option<Duration> },
    /// `handle` rejected the event for good.
    Reject { reason: String },
    /// The handler did not return: it trapped, ran out of time or memory, or
    /// could not be instantiated. Treated like a retry.
    Crash {
        reason: String,
        /// It ran until its deadline (so it burned CPU the whole time).
        timed_out: bool,
    },
}

/// The marker error the epoch callback raises when the deadline has passed.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

impl Plugin {
    /// Runs `handle(event)` once in a fresh instance, under `sandbox`, on the
    /// wasm executor (see [`super::executor`]).
    pub async fn invoke_isolated(self: &Arc<Self>, sandbox: &Sandbox, event: Event) -> Outcome {
        let (plugin, sandbox) = (self.clone(), sandbox.clone());
        // Keep the event's span (handler, stream, id) on the plugin's log lines.
        let run = async move { plugin.invoke(&sandbox, &event).await }.instrument(tracing::Span::current());
        match self.executor.run(run).await {
            Some(outcome) => outcome,
            None => Outcome::Crash { reason: "the host panicked while running the handler".into(), timed_out: false },
        }
    }

    /// Runs `handle(event)` once in a fresh instance, under `sandbox`, in the
    /// current task.
    pub async fn invoke(&self, sandbox: &Sandbox, event: &Event) -> Outcome {
        let mut store = self.new_store(sandbox);
        let result = self.call(&mut store, sandbox.timeout, event).await;
        let state = store.data_mut();
        log_output(state);
        match result {
            Ok(Ok(())) => Outcome::Success { effects: std::mem::take(&mut state.effects) },
            Ok(Err(Failure::Retry(r))) => {
                Outcome::Retry { reason: r.reason, delay: r.delay_ms.map(Duration::from_millis) }
            }
            Ok(Err(Failure::Reject(reason))) => Outcome::Reject { reason },
            Err(err) => {
                Outcome::Crash { reason: crash_reason(state, sandbox, &err), timed_out: err.is::<DeadlineExceeded>() }
            }
        }
    }

    fn new_store(&self, sandbox: &Sandbox) -> Store<EventState> {
        let mut store = Store::new(self.pre.engine(), EventState::new(sandbox));
        store.limiter(|s| s);
        store.set_fuel(sandbox.fuel.unwrap_or(u64::MAX)).expect("fuel is enabled");
        let deadline = Instant::now() + sandbox.timeout;
        store.set_epoch_deadline(1);
        // Yield to the executor at every tick so a busy handler never holds a
        // worker thread, and stop it once its time is up.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline { Err(DeadlineExceeded.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });
        store
    }

    async fn call(
        &self,
        store: &mut Store<EventState>,
        timeout: Duration,
        event: &Event,
    ) -> wasmtime::Result<Result<(), Failure>> {
        // Backstop for time spent outside wasm code (host calls), which the
        // epoch cannot interrupt.
        let limit = timeout + EPOCH_TICK * 5;
        let run = async {
            let plugin = self.pre.instantiate_async(&mut *store).await?;
            plugin.sluice_plugin_handler().call_handle(&mut *store, event).await
        };
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(DeadlineExceeded.into()),
        }
    }
}

/// Why a delivery that did not return failed: the limit it hit, or the trap.
fn crash_reason(state: &EventState, sandbox: &Sandbox, err: &wasmtime::Error) -> String {
    if err.is::<DeadlineExceeded>() {
        return format!("timeout after {} ms", sandbox.timeout.as_millis());
    }
    if let (Some(fuel), Some(wasmtime::Trap::OutOfFuel)) = (sandbox.fuel, err.downcast_ref::<wasmtime::Trap>()) {
        return format!("fuel limit {fuel} exceeded");
    }
    if let Some(reason) = state.limit_exceeded() {
        return reason;
    }
    if state.memory_denied {
        return format!("memory limit {} MiB exceeded", state.memory_limit() >> 20);
    }
    let mut reason = format!("trap: {err:#}");
    if let Some(line) = state.last_stderr_line.as_deref() {
        reason.push_str(&format!(" (stderr: {line})"));
    }
    reason
}

/// Sends what the guest printed to the host log, one line at a time.
fn log_output(state: &mut EventState) {
    for line in state.stdout.take_text().lines() {
        tracing::info!(target: "sluice::plugin::stdout", "{line}");
    }
    let stderr = state.stderr.take_text();
    for line in stderr.lines() {
        tracing::warn!(target: "sluice::plugin::stderr", "{line}");
    }
    state.last_stderr_line =
        stderr.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("note: ")).map(|l| truncate(l, 300));
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
