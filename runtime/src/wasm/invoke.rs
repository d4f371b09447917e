//! Running one delivery: a fresh `Store` and instance from the plugin's
//! `InstancePre` (or a reused one, see [`super::reuse`]), under an epoch
//! deadline and a memory cap. On the idle lane (a demoted handler) the
//! deadline is in CPU time; see [`super::deadline`]. A Spin Redis-trigger
//! component runs the same way; only the call differs ([`super::entry`]).

use super::bindings::{Event, Failure};
use super::deadline::{CpuMeter, Deadline};
use super::effects::Effects;
use super::engine::{EPOCH_TICK, FuelMetering};
use super::executor::{Executor, Lane, Straggler, Waited};
use super::plugin::Plugin;
use super::reuse::{InstancePool, Warm};
use super::state::{EventState, Sandbox};
use crate::limits;
use crate::logging::{self, event_line};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Store, UpdateDeadline};

/// What one delivery came to. An ordinary value, not an error: failures are
/// the normal business of an event host, and building an error (with its
/// backtrace) per failed event costs real throughput.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `handle` returned ok.
    Success {
        /// What it publishes and writes, committed with the ack.
        effects: Effects,
    },
    /// `handle` asked to be tried again.
    Retry {
        /// Why the attempt failed.
        reason: String,
        /// The delay the handler asked for; `None`: the backoff decides.
        delay: Option<Duration>,
    },
    /// `handle` rejected the event for good.
    Reject {
        /// Why it was rejected.
        reason: String,
    },
    /// The handler did not return: it trapped, ran out of time or memory, or
    /// could not be instantiated. Treated like a retry.
    Crash {
        /// The trap, the limit hit, or why it could not be instantiated.
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
    /// Runs `handle(event)` once under `sandbox` on the wasm executor (see
    /// [`super::Executor`]); see [`Plugin::invoke_in_place`].
    pub async fn invoke(self: &Arc<Self>, sandbox: &Sandbox, event: Event) -> Outcome {
        let (plugin, sandbox) = (self.clone(), sandbox.clone());
        // Keep the event's span (handler, stream, id) on the plugin's log lines.
        // Boxed: the instance's futures are large, and a delivery's task
        // (which awaits this) is moved whole when it is spawned.
        let run = logging::in_caller_span(Box::pin(async move { plugin.invoke_in_place(&sandbox, &event).await }));
        match self.executor.run(run).await {
            Some(outcome) => outcome,
            None => panicked(),
        }
    }

    /// Runs `handle(event)` once under `sandbox` on the executor's idle lane
    /// (a demoted handler's delivery; see [`Plugin::invoke_in_place`]),
    /// waited for from the calling task, at normal priority. The idle lane
    /// gives the delivery up after the sandbox's `patience`, but on a machine
    /// with no CPU to spare it may not run for seconds, its timers included:
    /// the wait here ends a little after the patience in any case, with the
    /// same outcome. A delivery given up here holds its instance until the
    /// idle lane gets the CPU to drop it: the [`Straggler`] returned.
    pub async fn invoke_demoted(self: &Arc<Self>, sandbox: &Sandbox, event: Event) -> (Outcome, Option<Straggler>) {
        let (plugin, on_idle) = (self.clone(), sandbox.clone());
        let run = logging::in_caller_span(Box::pin(async move { plugin.invoke_in_place(&on_idle, &event).await }));
        // After the idle lane's own backstop, whose reason is the closer one
        // when it gets the CPU to give it.
        let within = sandbox.patience + EPOCH_TICK * 2 * BACKSTOP_TICKS;
        match self.executor.run_idle(within, run).await {
            Waited::Done(outcome) => (outcome, None),
            Waited::Panicked => (panicked(), None),
            Waited::GaveUp(straggler) => {
                (Outcome::Crash { reason: no_result_at_idle_priority(sandbox), timed_out: false }, Some(straggler))
            }
        }
    }

    /// Runs `handle(event)` once under `sandbox`, in the current task: in a
    /// fresh instance, or in a reused one when the sandbox keeps a pool
    /// (`isolation = "reuse"`). On the idle lane, `timeout_ms` counts the
    /// CPU time the delivery uses, and it is given up after the sandbox's
    /// `patience` in wall time.
    pub async fn invoke_in_place(&self, sandbox: &Sandbox, event: &Event) -> Outcome {
        if Executor::current_lane() == Some(Lane::Idle) {
            let meter = Arc::new(CpuMeter::default());
            let clock = Clock { meter: Some(meter.clone()), wall: sandbox.patience };
            return meter.run(self.invoke_clocked(sandbox, event, &clock)).await;
        }
        self.invoke_clocked(sandbox, event, &Clock { meter: None, wall: sandbox.timeout }).await
    }

    async fn invoke_clocked(&self, sandbox: &Sandbox, event: &Event, clock: &Clock) -> Outcome {
        if let (Some(fuel), FuelMetering::Off) = (sandbox.fuel, self.fuel) {
            // The host loads a handler with a budget for the engine that
            // counts fuel, so this is a tool's mistake: never run the
            // handler past its budget.
            let reason = format!(
                "fuel limit {fuel} cannot be enforced: the plugin was loaded for the engine that counts no fuel"
            );
            return Outcome::Crash { reason, timed_out: false };
        }
        // Instantiating runs wasm too (start functions): ticks from here on.
        let _running = self.ticker.running();
        match &sandbox.pool {
            None => {
                let mut store = self.new_store(sandbox, clock.deadline(sandbox));
                store.data_mut().reply_to = reply_to(event);
                let result = async {
                    let instance = self.pre.instantiate_async(&mut store).await?;
                    self.entry.bind(&mut store, &instance)?.call(&mut store, event).await
                };
                let result = with_backstop(clock.wall, result).await;
                outcome(store.data_mut(), sandbox, result)
            }
            Some(pool) => self.invoke_reused(pool, sandbox, event, clock).await,
        }
    }

    /// Runs `handle(event)` in an idle instance from `pool` (or a new one),
    /// and returns the instance to the pool if the call ended normally.
    async fn invoke_reused(&self, pool: &InstancePool, sandbox: &Sandbox, event: &Event, clock: &Clock) -> Outcome {
        let mut warm = match pool.take(&self.digest) {
            Some(mut warm) => {
                warm.store.data_mut().next_delivery(clock.deadline(sandbox));
                arm(&mut warm.store, sandbox, self.fuel);
                warm
            }
            None => {
                let mut store = self.new_store(sandbox, clock.deadline(sandbox));
                let bound = async {
                    let instance = self.pre.instantiate_async(&mut store).await?;
                    self.entry.bind(&mut store, &instance)
                };
                match with_backstop(clock.wall, bound).await {
                    Ok(instance) => Warm { store, instance, digest: self.digest.clone(), served: 0 },
                    Err(err) => return outcome(store.data_mut(), sandbox, Err(err)),
                }
            }
        };
        warm.store.data_mut().reply_to = reply_to(event);
        let call = warm.instance.call(&mut warm.store, event);
        let result = with_backstop(clock.wall, call).await;
        warm.served += 1;
        // A trap, a deadline or a refused allocation may leave the guest's
        // state broken: only an instance that returned normally is kept.
        let reusable = result.is_ok() && !warm.store.data().memory_denied;
        let outcome = outcome(warm.store.data_mut(), sandbox, result);
        if reusable {
            pool.put(warm);
        }
        outcome
    }

    fn new_store(&self, sandbox: &Sandbox, deadline: Deadline) -> Store<EventState> {
        let mut store = Store::new(self.pre.engine(), EventState::new(sandbox, deadline));
        store.limiter(|s| s);
        arm(&mut store, sandbox, self.fuel);
        // Yield to the executor at every tick so a busy handler never holds a
        // worker thread, and stop it once its delivery's time is up.
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().deadline.passed() { Err(DeadlineExceeded.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });
        store
    }
}

/// How one delivery's time is counted: in CPU time with `meter` (the idle
/// lane), else in wall time; and the wall time after which it is given up
/// in any case (time spent in host calls, which the epoch cannot interrupt).
struct Clock {
    meter: Option<Arc<CpuMeter>>,
    wall: Duration,
}

impl Clock {
    fn deadline(&self, sandbox: &Sandbox) -> Deadline {
        Deadline::new(sandbox.timeout, self.meter.as_ref())
    }
}

/// The stream a request's reply goes to: its `reply_to` field, if it has one.
fn reply_to(event: &Event) -> Option<String> {
    event
        .fields
        .iter()
        .find(|(k, _)| k == crate::event::field::REPLY_TO)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// Gives a store its fuel (if its engine counts fuel) and its first epoch
/// deadline for one delivery.
fn arm(store: &mut Store<EventState>, sandbox: &Sandbox, fuel: FuelMetering) {
    if fuel == FuelMetering::On {
        store.set_fuel(sandbox.fuel.unwrap_or(u64::MAX)).expect("the engine counts fuel");
    }
    store.set_epoch_deadline(1);
}

/// Epoch ticks past a delivery's wall time after which [`with_backstop`]
/// gives it up.
const BACKSTOP_TICKS: u32 = 5;

/// Runs `work` with a backstop for time spent outside wasm code (host
/// calls), which the epoch cannot interrupt: `timeout` plus a few ticks.
async fn with_backstop<T>(timeout: Duration, work: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    match tokio::time::timeout(timeout + EPOCH_TICK * BACKSTOP_TICKS, work).await {
        Ok(result) => result,
        Err(_) => Err(DeadlineExceeded.into()),
    }
}

/// What a call's result comes to, after logging the guest's output.
fn outcome(state: &mut EventState, sandbox: &Sandbox, result: wasmtime::Result<Result<(), Failure>>) -> Outcome {
    log_output(state);
    match result {
        Ok(Ok(())) => Outcome::Success { effects: std::mem::take(&mut state.effects) },
        Ok(Err(Failure::Retry(r))) => {
            Outcome::Retry { reason: limits::reason(r.reason), delay: r.delay_ms.map(Duration::from_millis) }
        }
        Ok(Err(Failure::Reject(reason))) => Outcome::Reject { reason: limits::reason(reason) },
        Err(err) => {
            // On the idle lane, a delivery given up before it used its CPU
            // time was waiting for CPU: it did not run out of time.
            let timed_out = err.is::<DeadlineExceeded>() && state.deadline.passed();
            Outcome::Crash { reason: crash_reason(state, sandbox, &err), timed_out }
        }
    }
}

/// The outcome of a delivery whose task panicked.
fn panicked() -> Outcome {
    Outcome::Crash { reason: "the host panicked while running the handler".into(), timed_out: false }
}

/// Why a demoted delivery was given up before it used its time: it got
/// too little CPU within its patience. (Not a timeout of the handler's.)
fn no_result_at_idle_priority(sandbox: &Sandbox) -> String {
    format!(
        "timeout: no result within {} ms at idle priority (the handler is demoted after earlier timeouts)",
        sandbox.patience.as_millis()
    )
}

/// Why a delivery that did not return failed: the limit it hit, or the trap.
fn crash_reason(state: &EventState, sandbox: &Sandbox, err: &wasmtime::Error) -> String {
    if err.is::<DeadlineExceeded>() {
        let ms = sandbox.timeout.as_millis();
        return match &state.deadline {
            Deadline::Wall(_) => format!("timeout after {ms} ms"),
            Deadline::Cpu { meter, limit } if meter.used() >= *limit => {
                format!(
                    "timeout after {ms} ms of CPU time (at idle priority: the handler is demoted after earlier timeouts)"
                )
            }
            Deadline::Cpu { .. } => no_result_at_idle_priority(sandbox),
        };
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
        event_line!(INFO, target: "sluice::plugin::stdout", "{line}");
    }
    let stderr = state.stderr.take_text();
    for line in stderr.lines() {
        event_line!(WARN, target: "sluice::plugin::stderr", "{line}");
    }
    state.last_stderr_line = explanation(&stderr);
}

/// The stderr line that best explains a trap: the last one that is not a
/// stack frame or a runtime's boilerplate (for Python, that is the last line
/// of the traceback: the exception). An exception that escaped a JavaScript
/// handler (componentize-js reports it as a bad `failure` value) is named as
/// such.
fn explanation(stderr: &str) -> Option<String> {
    let noise = |l: &str| {
        l.trim().is_empty()
            || l.starts_with(char::is_whitespace)
            || l.starts_with("note: ")
            || l == "Stack:"
            || l.starts_with("Redirecting call to abort()")
            || l == "Python function threw an unexpected exception"
            || (l.starts_with("thread '") && l.contains("panicked at") && l.ends_with(':'))
    };
    let line = stderr.lines().rev().find(|l| !noise(l))?;
    if let Some((_, rest)) = line.split_once("(received `")
        && let Some((thrown, _)) = rest.split_once("`)")
    {
        return Some(truncate(&format!("uncaught exception: {thrown}"), 300));
    }
    Some(truncate(line, 300))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::explanation;

    #[test]
    fn a_trap_is_explained_by_the_guests_own_message() {
        let rust =
            "thread '<unnamed>' panicked at src/lib.rs:56:23:\nasked to trap\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(explanation(rust).as_deref(), Some("asked to trap"));
        let js = "invalid variant tag value `undefined` (received `Error: asked to trap`) specified for `Failure`\nStack:\n  handle@app.js:5:1\n\nRedirecting call to abort() to mozalloc_abort\n";
        assert_eq!(explanation(js).as_deref(), Some("uncaught exception: Error: asked to trap"));
        let python = "Traceback (most recent call last):\n  File \"/0/app.py\", line 57, in handle\nRuntimeError: asked to trap\n\nthread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(explanation(python).as_deref(), Some("RuntimeError: asked to trap"));
        assert_eq!(explanation("\n \n"), None);
    }
}
