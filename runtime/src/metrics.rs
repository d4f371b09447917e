//! The host's metrics, in one Prometheus registry per process (served at
//! `/metrics` by [`crate::admin`]): events by handler and outcome, handler
//! durations, retries, dead letters, reloads, and gauges sampled from Redis
//! when scraped.

use crate::dispatch::Verdict;
use crate::ops::status::Row;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByVerdict {
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
struct ByStreamOnly {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByGroup {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldBack {
    stream: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutbox {
    outbox: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRoute {
    route: &'static str,
    status: String,
}

/// Every metric the host keeps.
struct Metrics {
    registry: Registry,
    events: Family<ByVerdict, Counter>,
    duration: Family<ByHandler, Histogram>,
    retries: Family<ByHandler, Counter>,
    dead_letters: Family<ByHandler, Counter>,
    already_finished: Family<ByHandler, Counter>,
    ownership_lost: Family<ByHandler, Counter>,
    claim_failures: Family<ByHandler, Counter>,
    deleted_unfinished: Family<ByHandler, Counter>,
    demoted: Family<ByHandler, Gauge>,
    reloads: Family<ByResult, Counter>,
    trimmed: Family<ByStreamOnly, Counter>,
    stream_length: Family<ByStreamOnly, Gauge>,
    over_bound: Family<HeldBack, Gauge>,
    consumers_forgotten: Family<ByGroup, Counter>,
    removed_unread: Family<ByStream, Counter>,
    unreplicated: Family<ByOutbox, Gauge>,
    lag: Family<ByStream, Gauge>,
    pending: Family<ByStream, Gauge>,
    dead_letter_depth: Family<ByStream, Gauge>,
    ingress: Family<ByRoute, Counter>,
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
            already_finished: Family::default(),
            ownership_lost: Family::default(),
            claim_failures: Family::default(),
            deleted_unfinished: Family::default(),
            demoted: Family::default(),
            reloads: Family::default(),
            trimmed: Family::default(),
            stream_length: Family::default(),
            over_bound: Family::default(),
            consumers_forgotten: Family::default(),
            removed_unread: Family::default(),
            unreplicated: Family::default(),
            lag: Family::default(),
            pending: Family::default(),
            dead_letter_depth: Family::default(),
            ingress: Family::default(),
        };
        m.register_all();
        m
    }

    /// Registers every family: one line per metric, its name, what it
    /// counts, its family.
    #[rustfmt::skip]
    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register("events", "Events handled, by handler and outcome (ok, retry, reject, crash, skipped, invalid, exhausted, malformed, expired)", self.events.clone());
        r.register("handler_duration_seconds", "Time one delivery took in the handler", self.duration.clone());
        r.register("retries", "Deliveries that will be tried again", self.retries.clone());
        r.register("dead_letters", "Events written to a dead-letter stream", self.dead_letters.clone());
        r.register("commits_already_finished", "Commits that found their entry finished by another consumer (one of the two took it over from the other, presumed dead); nothing was written", self.already_finished.clone());
        r.register("ownership_lost", "Deliveries whose entry another consumer took over meanwhile (this host was presumed dead); their output was not written", self.ownership_lost.clone());
        r.register("claim_failures", "Failed scans for entries abandoned by other consumers", self.claim_failures.clone());
        r.register("entries_deleted_unfinished", "Entries deleted from their stream (XDEL, or another program's trim) while pending with the handler's group, before they were finished: found when they were to be delivered again or taken over, they were neither handled nor dead-lettered", self.deleted_unfinished.clone());
        r.register("handler_demoted", "1 while the handler runs at idle priority because its deliveries ran out of time", self.demoted.clone());
        r.register("reloads", "Reloads of config and plugins, by result (applied, rejected)", self.reloads.clone());
        r.register("trimmed", "Entries removed from a stream to keep it within its bound", self.trimmed.clone());
        r.register("stream_length", "Entries in a bounded stream, after its last trim", self.stream_length.clone());
        r.register("stream_over_bound", "1 while a group that has not yet read or acknowledged entries keeps a stream over its bound", self.over_bound.clone());
        r.register("consumers_forgotten", "Consumers deleted from their group after being idle with nothing pending", self.consumers_forgotten.clone());
        r.register("entries_removed_unread", "Entries removed from a stream before the handler's group read them (by another program's XADD MAXLEN, XTRIM or XDEL; Sluice's own trim waits for groups): they were neither handled nor dead-lettered", self.removed_unread.clone());
        r.register("relay_unreplicated", "Writes an outbox keeps because no replica of their target's master has acknowledged them (Redis Cluster), as of the last round of its relay on this host: they are written again each round until one does", self.unreplicated.clone());
        r.register("lag", "Entries not yet delivered to the handler's group (sampled from Redis)", self.lag.clone());
        r.register("pending", "Entries delivered and not yet acknowledged (sampled from Redis)", self.pending.clone());
        r.register("dead_letter_depth", "Entries in the stream's dead-letter stream (sampled from Redis)", self.dead_letter_depth.clone());
        r.register("ingress_requests", "HTTP requests to the ingress, by route (events, requests, other) and status", self.ingress.clone());
    }
}

/// Handler durations in fine buckets (each about 19% wide, from 1 µs to
/// hours), for the dashboard's p50 and p99 over the last minute: the
/// Prometheus histogram's buckets are too coarse for quantiles. Counting
/// is one atomic add.
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

/// Buckets of [`Latency`]: 16 of 1 µs, then 4 per power of two up to 2^36 µs.
pub const LATENCY_BUCKETS: usize = 16 + 4 * 33;

impl Latency {
    fn new() -> Latency {
        Latency { buckets: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// The bucket holding `micros`.
    fn bucket(micros: u64) -> usize {
        if micros < 16 {
            return micros as usize;
        }
        let exp = 63 - micros.leading_zeros() as usize; // at least 4
        let sub = ((micros >> (exp - 2)) & 3) as usize;
        (16 + (exp - 4) * 4 + sub).min(LATENCY_BUCKETS - 1)
    }

    /// The middle of bucket `i`, in µs.
    pub fn middle_micros(i: usize) -> f64 {
        if i < 16 {
            return i as f64 + 0.5;
        }
        let (exp, sub) = (4 + (i - 16) / 4, (i - 16) % 4);
        let low = ((4 + sub) as u64) << (exp - 2);
        low as f64 + (1u64 << (exp - 2)) as f64 / 2.0
    }

    fn record(&self, took: Duration) {
        self.buckets[Self::bucket(took.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every bucket's count so far.
    pub fn counts(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// Each handler's [`Latency`], by name: kept across reloads, like its counters.
static LATENCIES: LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Latency>>>> =
    LazyLock::new(Default::default);

fn latency_of(handler: &str) -> Arc<Latency> {
    let mut all = LATENCIES.lock().expect("never poisoned");
    all.entry(handler.to_owned()).or_insert_with(|| Arc::new(Latency::new())).clone()
}

/// What a handler has done since the process started: the dashboard's
/// rates are differences of these.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Events its plugin handled successfully.
    pub ok: u64,
    /// Deliveries that will be tried again.
    pub retries: u64,
    /// Events written to a dead-letter stream.
    pub dead_letters: u64,
    /// Handler durations, by [`Latency`] bucket.
    pub latency: [u64; LATENCY_BUCKETS],
}

/// `handler`'s [`Totals`] now.
pub fn totals(handler: &str) -> Totals {
    let m = &*METRICS;
    let by = ByHandler { handler: handler.to_owned() };
    Totals {
        ok: m.events.get_or_create(&ByVerdict { handler: handler.to_owned(), outcome: Verdict::Ok.label() }).get(),
        retries: m.retries.get_or_create(&by).get(),
        dead_letters: m.dead_letters.get_or_create(&by).get(),
        latency: latency_of(handler).counts(),
    }
}

/// One handler's counters, looked up once so that counting an event
/// allocates nothing.
#[derive(Clone)]
pub struct HandlerMetrics {
    /// One counter per [`Verdict`], in [`Verdict::ALL`] order.
    verdicts: [Counter; Verdict::ALL.len()],
    retries: Counter,
    dead_letters: Counter,
    already_finished: Counter,
    ownership_lost: Counter,
    claim_failures: Counter,
    deleted_unfinished: Counter,
    demoted: Gauge,
    duration: Histogram,
    latency: Arc<Latency>,
}

impl HandlerMetrics {
    /// The counters of `handler`.
    pub fn new(handler: &str) -> HandlerMetrics {
        let m = &*METRICS;
        let verdict =
            |v: Verdict| m.events.get_or_create(&ByVerdict { handler: handler.to_owned(), outcome: v.label() }).clone();
        let by = ByHandler { handler: handler.to_owned() };
        HandlerMetrics {
            verdicts: Verdict::ALL.map(verdict),
            retries: m.retries.get_or_create(&by).clone(),
            dead_letters: m.dead_letters.get_or_create(&by).clone(),
            already_finished: m.already_finished.get_or_create(&by).clone(),
            ownership_lost: m.ownership_lost.get_or_create(&by).clone(),
            claim_failures: m.claim_failures.get_or_create(&by).clone(),
            deleted_unfinished: m.deleted_unfinished.get_or_create(&by).clone(),
            demoted: m.demoted.get_or_create(&by).clone(),
            duration: m.duration.get_or_create(&by).clone(),
            latency: latency_of(handler),
        }
    }

    /// Counts how one turn of an entry ended.
    pub fn counted(&self, verdict: Verdict) {
        self.verdicts[verdict as usize].inc();
    }

    /// Records how long one delivery took in the handler.
    pub fn took(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        self.latency.record(took);
    }

    /// Counts a delivery that will be tried again.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts an event written to a dead-letter stream.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    /// Counts a commit whose entry another consumer had finished.
    pub fn already_finished(&self) {
        self.already_finished.inc();
    }

    /// Counts a delivery whose entry another consumer took over meanwhile.
    pub fn ownership_lost(&self) {
        self.ownership_lost.inc();
    }

    /// Counts a failed scan for abandoned entries.
    pub fn claim_failed(&self) {
        self.claim_failures.inc();
    }

    /// Counts `n` entries found deleted from their stream before they were
    /// finished.
    pub fn deleted_unfinished(&self, n: usize) {
        self.deleted_unfinished.inc_by(n as u64);
    }

    /// Marks the handler demoted (or not) to idle priority.
    pub fn set_demoted(&self, demoted: bool) {
        self.demoted.set(i64::from(demoted));
    }
}

/// Records a trim of `stream`: `removed` entries, `length` left, and the
/// group that keeps it over its bound, if one does.
pub fn stream_trimmed(stream: &str, removed: u64, length: u64, held_back_by: Option<&str>) {
    let m = &*METRICS;
    let by = ByStreamOnly { stream: stream.to_owned() };
    m.trimmed.get_or_create(&by).inc_by(removed);
    m.stream_length.get_or_create(&by).set(length as i64);
    // One series per group that has held it back: 1 for the one that does
    // now, 0 for the others (a family cannot list its series, so they are
    // remembered here).
    let held = |group: &str| HeldBack { stream: stream.to_owned(), group: group.to_owned() };
    let mut known = HELD.lock().expect("never poisoned");
    if let Some(g) = held_back_by {
        known.insert((stream.to_owned(), g.to_owned()));
    }
    for (_, g) in known.iter().filter(|(s, _)| s == stream) {
        m.over_bound.get_or_create(&held(g)).set(i64::from(held_back_by == Some(g.as_str())));
    }
}

/// The (stream, group) pairs that have held a stream over its bound.
static HELD: LazyLock<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>> = LazyLock::new(Default::default);

/// Counts a consumer deleted from `group` for being idle with nothing pending.
pub fn consumer_forgotten(group: &str) {
    METRICS.consumers_forgotten.get_or_create(&ByGroup { group: group.to_owned() }).inc();
}

/// Counts `n` entries of `stream` removed before `handler`'s group read them.
pub fn entries_removed_unread(handler: &str, stream: &str, n: u64) {
    METRICS
        .removed_unread
        .get_or_create(&ByStream { handler: handler.to_owned(), stream: stream.to_owned() })
        .inc_by(n);
}

/// Sets how many writes `outbox` keeps because no replica has them yet
/// (0 when it keeps none, or when this host's relay no longer holds its lease).
pub fn relay_unreplicated(outbox: &str, writes: usize) {
    METRICS.unreplicated.get_or_create(&ByOutbox { outbox: outbox.to_owned() }).set(writes as i64);
}

/// Counts an HTTP request to the ingress on `route`, answered with `status`.
pub fn ingress_answered(route: &'static str, status: u16) {
    METRICS.ingress.get_or_create(&ByRoute { route, status: status.to_string() }).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for micros in [0, 1, 15, 16, 17, 19, 20, 23, 24, 31, 32, 100, 1_000, 65_535, 1 << 20, 1 << 35] {
            let i = Latency::bucket(micros);
            assert!(i >= last, "{micros} µs went to bucket {i}, below {last}");
            last = i;
            let middle = Latency::middle_micros(i);
            let off = (middle - micros as f64).abs() / (micros as f64).max(1.0);
            assert!(off <= 0.13 || micros < 16, "{micros} µs: bucket {i} is centred on {middle}");
        }
        assert_eq!(Latency::bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
