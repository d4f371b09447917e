//! The host's own memory of the last 15 minutes, so the dashboard needs no
//! Prometheus: every [`SAMPLE_EVERY`], each handler's totals (from
//! [`metrics::totals`]) and its rows from Redis (lag, pending, dead
//! letters, as `sluice status` reads them). Rates and latency quantiles
//! over the last minute are differences between now and a sample a minute
//! old.

use crate::config::Config;
use crate::metrics::{self, LATENCY_BUCKETS, Latency, Totals};
use crate::ops;
use crate::ops::status::Row;
use crate::stream::Conn;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the host samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How far back the sparklines go.
pub const KEEP: Duration = Duration::from_secs(15 * 60);
/// The window of the rates and latency quantiles.
pub const WINDOW: Duration = Duration::from_secs(60);
/// One point of a sparkline covers this much time.
pub const STEP: Duration = Duration::from_secs(10);
/// How long sampling Redis may take.
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// One sample: every handler's totals, and the Redis rows.
struct Sample {
    at: Instant,
    totals: BTreeMap<String, Totals>,
    /// Each handler's lag summed over its streams, when Redis answered.
    lag: BTreeMap<String, u64>,
}

/// What the sampler has seen.
#[derive(Default)]
struct Seen {
    samples: VecDeque<Sample>,
    rows: Vec<Row>,
    /// Why the last sample has no rows.
    redis_error: Option<String>,
}

/// The samples of one host.
pub struct History {
    config: Arc<ArcSwap<Config>>,
    conn: Conn,
    seen: Mutex<Seen>,
}

/// One handler's figures over the last minute.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Recent {
    /// Events per second handled successfully.
    pub ok_per_s: f64,
    /// Deliveries per second that will be tried again.
    pub retry_per_s: f64,
    /// Events per second dead-lettered.
    pub dead_per_s: f64,
    /// Handler duration, median, ms; none without deliveries.
    pub p50_ms: Option<f64>,
    /// Handler duration, 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

/// One handler's sparklines: a point per 10 s, oldest first.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sparklines {
    /// Seconds per point.
    pub step_s: u64,
    /// Events handled per second (ok, retried and dead-lettered); none
    /// before the host had samples for the step.
    pub events_per_s: Vec<Option<f64>>,
    /// Lag at the end of each step; none where Redis did not answer.
    pub lag: Vec<Option<u64>>,
}

impl History {
    /// An empty history of the host running `config`, sampling Redis on `conn`.
    pub fn new(config: Arc<ArcSwap<Config>>, conn: Conn) -> History {
        History { config, conn, seen: Mutex::new(Seen::default()) }
    }

    /// Samples every [`SAMPLE_EVERY`] until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample().await,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Takes one sample now.
    pub async fn sample(&self) {
        let config = self.config.load_full();
        // The counters' time: Redis may take a while to answer.
        let now = Instant::now();
        let totals = config.handlers.iter().map(|h| (h.name.clone(), metrics::totals(&h.name))).collect();
        let rows = ops::status::rows_within(&mut self.conn.clone(), &config, REDIS_WAIT).await;
        let mut lag = BTreeMap::new();
        if let Ok(rows) = &rows {
            for r in rows {
                *lag.entry(r.handler.clone()).or_insert(0) += r.lag.unwrap_or(0);
            }
        }
        let mut seen = self.seen.lock().expect("never poisoned");
        while seen.samples.front().is_some_and(|s| now.duration_since(s.at) > KEEP + STEP) {
            seen.samples.pop_front();
        }
        seen.samples.push_back(Sample { at: now, totals, lag });
        match rows {
            Ok(rows) => {
                seen.rows = rows;
                seen.redis_error = None;
            }
            Err(e) => {
                debug!("dashboard sample: {e}");
                seen.redis_error = Some(e);
            }
        }
    }

    /// The rows of the last sample, and why Redis did not answer it.
    pub fn rows(&self) -> (Vec<Row>, Option<String>) {
        let seen = self.seen.lock().expect("never poisoned");
        (seen.rows.clone(), seen.redis_error.clone())
    }

    /// `handler`'s rates and latency over the last minute, up to now.
    pub fn recent(&self, handler: &str) -> Recent {
        let now = (Instant::now(), metrics::totals(handler));
        let seen = self.seen.lock().expect("never poisoned");
        // The newest sample at least a minute old, or else the oldest.
        let base = seen
            .samples
            .iter()
            .rev()
            .find(|s| now.0.duration_since(s.at) >= WINDOW)
            .or(seen.samples.front())
            .and_then(|s| s.totals.get(handler).map(|t| (s.at, t)));
        let Some((at, then)) = base else { return Recent::default() };
        let secs = now.0.duration_since(at).as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let latency: Vec<u64> =
            (0..LATENCY_BUCKETS).map(|i| now.1.latency[i].saturating_sub(then.latency[i])).collect();
        Recent {
            ok_per_s: rate(now.1.ok, then.ok),
            retry_per_s: rate(now.1.retries, then.retries),
            dead_per_s: rate(now.1.dead_letters, then.dead_letters),
            p50_ms: quantile(&latency, 0.50),
            p99_ms: quantile(&latency, 0.99),
        }
    }

    /// `handler`'s sparklines over the last [`KEEP`].
    pub fn sparklines(&self, handler: &str) -> Sparklines {
        let seen = self.seen.lock().expect("never poisoned");
        let mut lines = Sparklines { step_s: STEP.as_secs(), ..Sparklines::default() };
        let Some(last) = seen.samples.back() else { return lines };
        let points = (KEEP.as_secs() / STEP.as_secs()) as usize;
        // Point i ends at last.at - (points - 1 - i) * STEP.
        let at_or_before = |t: Instant| seen.samples.iter().rev().find(|s| s.at <= t);
        let handled = |x: &Sample| x.totals.get(handler).map_or(0, |t| t.ok + t.retries + t.dead_letters);
        for i in 0..points {
            // A gap (none) where the host has no samples yet: every line
            // spans the same 15 minutes.
            let back = STEP * (points - 1 - i) as u32;
            let end = last.at.checked_sub(back).and_then(at_or_before);
            let start = last.at.checked_sub(back + STEP).and_then(at_or_before);
            let (rate, lag) = match (end, start) {
                (Some(e), Some(s)) if e.at > s.at => {
                    let secs = e.at.duration_since(s.at).as_secs_f64();
                    (Some(handled(e).saturating_sub(handled(s)) as f64 / secs), e.lag.get(handler).copied())
                }
                _ => (None, None),
            };
            lines.events_per_s.push(rate);
            lines.lag.push(lag);
        }
        lines
    }
}

/// The `q` quantile of the durations counted in `buckets`, in ms.
fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(Latency::middle_micros(i) / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut buckets = vec![0; LATENCY_BUCKETS];
        assert_eq!(quantile(&buckets, 0.5), None);
        buckets[10] = 98; // 10 µs
        buckets[LATENCY_BUCKETS - 100] = 2;
        assert_eq!(quantile(&buckets, 0.5), Some(0.0105));
        assert_eq!(quantile(&buckets, 0.98), Some(0.0105));
        assert!(quantile(&buckets, 0.99).unwrap() > 1.0);
    }
}
