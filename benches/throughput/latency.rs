//! Publish → commit latency at a fixed offered rate. The handler publishes
//! one event per input; its publish lands atomically with the input's ack,
//! so the moment the output entry appears is the moment the input was
//! committed. The output's `causation_id` names the input.

use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Latency percentiles, in milliseconds, and the rate actually offered.
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub offered: f64,
}

/// What a latency run offers: `rate` events/s of `payload` to `input` for
/// `run`, timed until each one's output appears on `output`.
#[derive(Clone, Copy)]
pub struct Offer<'a> {
    pub input: &'a str,
    pub output: &'a str,
    pub payload: &'a str,
    pub rate: u32,
    pub run: Duration,
    /// Left out of the figures.
    pub warmup: Duration,
}

/// Sends `rate` events/s to `input` for `run`, each `payload`, in ticks of
/// 1 ms, and times each until its output appears on `output`. The first
/// `warmup` is left out of the figures. The time of an input is taken
/// just before its tick's pipeline is sent.
pub async fn measure(conn: MultiplexedConnection, watcher_conn: MultiplexedConnection, offer: &Offer<'_>) -> Latency {
    let Offer { input, output, payload, rate, run, warmup } = *offer;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    let total = (f64::from(rate) * run.as_secs_f64()) as usize;
    // Its own connection: a blocking XREAD would hold up the XADDs behind it.
    let watcher = tokio::spawn(watch(watcher_conn, output.to_owned(), total));
    let per_tick = (rate / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut conn = conn;
    let mut count = 0;
    while count < total {
        tick.tick().await;
        let mut pipe = redis::pipe();
        for _ in 0..per_tick {
            pipe.cmd("XADD").arg(input).arg("*").arg("type").arg("order.created").arg("data").arg(payload);
        }
        let at = Instant::now();
        let ids: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
        count += ids.len();
        sent.extend(ids.into_iter().map(|id| (id, at)));
    }
    let offered = count as f64 / started.elapsed().as_secs_f64();
    let seen = watcher.await.unwrap();
    let mut ms: Vec<f64> = seen
        .iter()
        .map(|(cause, seen_at)| (sent[cause], seen_at))
        .filter(|(at, _)| *at >= started + warmup)
        .map(|(at, seen_at)| (*seen_at - at).as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    Latency { p50: pct(0.50), p99: pct(0.99), p999: pct(0.999), max: *ms.last().unwrap(), offered }
}

/// Reads `output` until `total` entries came: when each was seen, and the
/// input it was published for.
async fn watch(mut conn: MultiplexedConnection, output: String, total: usize) -> Vec<(String, Instant)> {
    let mut last = "0-0".to_owned();
    let mut samples = Vec::with_capacity(total);
    while samples.len() < total {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&output)
            .arg(&last)
            .query_async(&mut conn)
            .await
            .unwrap();
        let now = Instant::now();
        for entry in reply.keys.iter().flat_map(|k| &k.ids) {
            last = entry.id.clone();
            let cause: String = entry.get("causation_id").expect("a published entry names its cause");
            samples.push((cause, now));
        }
    }
    samples
}
