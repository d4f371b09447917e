//! The host's metrics, in one Prometheus registry per process (served at
//! `/metrics` by [`crate::admin`]): events by handler and outcome, handler
//! durations, retries, dead letters, reloads, and gauges sampled from Redis
//! when scraped.

use crate::ops::status::Row;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    handler: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByHandler {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByStream {
    handler: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: &'static str,
}

/// Every metric the host keeps.
struct Metrics {
    registry: Registry,
    events: Family<Outcome, Counter>,
    duration: Family<ByHandler, Histogram>,
    retries: Family<ByHandler, Counter>,
    dead_letters: Family<ByHandler, Counter>,
    reloads: Family<ByResult, Counter>,
    lag: Family<ByStream, Gauge>,
    pending: Family<ByStream, Gauge>,
    dead_letter_depth: Family<ByStream, Gauge>,
}

/// One registry per process, like Prometheus's default registry: a host is
/// one process, and every part of it counts into the same families.
static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let duration = Family::<ByHandler, Histogram>::new_with_constructor(|| {
            // 50 µs to about 13 s.
            Histogram::new(exponential_buckets(0.00005, 4.0, 10))
        });
        let mut m = Metrics {
            registry: Registry::with_prefix("sluice"),
            events: Family::default(),
            duration,
            retries: Family::default(),
            dead_letters: Family::default(),
            reloads: Family::default(),
            lag: Family::default(),
            pending: Family::default(),
            dead_letter_depth: Family::default(),
        };
        m.registry.register(
            "events",
            "Events handled, by handler and outcome (ok, retry, reject, crash, skipped, invalid)",
            m.events.clone(),
        );
        m.registry.register("handler_duration_seconds", "Time one delivery took in the handler", m.duration.clone());
        m.registry.register("retries", "Deliveries that will be tried again", m.retries.clone());
        m.registry.register("dead_letters", "Events written to a dead-letter stream", m.dead_letters.clone());
        m.registry.register(
            "reloads",
            "Reloads of config and plugins, by result (applied, rejected)",
            m.reloads.clone(),
        );
        m.registry.register(
            "lag",
            "Entries not yet delivered to the handler's group (sampled from Redis)",
            m.lag.clone(),
        );
        m.registry.register(
            "pending",
            "Entries delivered and not yet acknowledged (sampled from Redis)",
            m.pending.clone(),
        );
        m.registry.register(
            "dead_letter_depth",
            "Entries in the stream's dead-letter stream (sampled from Redis)",
            m.dead_letter_depth.clone(),
        );
        m
    }
}

/// One handler's counters, looked up once so that counting an event
/// allocates nothing.
#[derive(Clone)]
pub struct HandlerMetrics {
    ok: Counter,
    retry: Counter,
    reject: Counter,
    crash: Counter,
    skipped: Counter,
    invalid: Counter,
    retries: Counter,
    dead_letters: Counter,
    duration: Histogram,
}

impl HandlerMetrics {
    /// The counters of `handler`.
    pub fn new(handler: &str) -> HandlerMetrics {
        let m = &*METRICS;
        let outcome = |outcome| m.events.get_or_create(&Outcome { handler: handler.to_owned(), outcome }).clone();
        let by = ByHandler { handler: handler.to_owned() };
        HandlerMetrics {
            ok: outcome("ok"),
            retry: outcome("retry"),
            reject: outcome("reject"),
            crash: outcome("crash"),
            skipped: outcome("skipped"),
            invalid: outcome("invalid"),
            retries: m.retries.get_or_create(&by).clone(),
            dead_letters: m.dead_letters.get_or_create(&by).clone(),
            duration: m.duration.get_or_create(&by).clone(),
        }
    }

    /// Counts one delivery's outcome and how long it took.
    pub fn handled(&self, outcome: &crate::wasm::Outcome, took: Duration) {
        use crate::wasm::Outcome::*;
        let counter = match outcome {
            Success { .. } => &self.ok,
            Retry { .. } => &self.retry,
            Reject { .. } => &self.reject,
            Crash { .. } => &self.crash,
        };
        counter.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts entries acknowledged without a delivery (not for this handler).
    pub fn skipped(&self, n: u64) {
        self.skipped.inc_by(n);
    }

    /// Counts an event that failed its type's schema (the plugin did not run).
    pub fn invalid(&self) {
        self.invalid.inc();
    }

    /// Counts a delivery that will be tried again.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts an event written to a dead-letter stream.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }
}

/// Counts a reload, applied or rejected.
pub fn reloaded(applied: bool) {
    let result = if applied { "applied" } else { "rejected" };
    METRICS.reloads.get_or_create(&ByResult { result }).inc();
}

/// The registry as Prometheus text, with the Redis gauges set from `rows`.
pub fn exposition(rows: &[Row]) -> String {
    let m = &*METRICS;
    for family in [&m.lag, &m.pending, &m.dead_letter_depth] {
        family.clear();
    }
    for r in rows {
        let labels = ByStream { handler: r.handler.clone(), stream: r.stream.clone() };
        if let Some(lag) = r.lag {
            m.lag.get_or_create(&labels).set(lag as i64);
        }
        m.pending.get_or_create(&labels).set(r.pending as i64);
        m.dead_letter_depth.get_or_create(&labels).set(r.dead_letters as i64);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("writing to a String");
    text
}
