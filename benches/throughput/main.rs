//! Throughput benchmark: Sluice against a native Rust consumer doing the
//! same reads and acks with no handler, in the same run, each on a fresh
//! `redis-server` (started here on a free port), so the ratios hold on a
//! noisy machine.
//!
//! `cargo bench --bench throughput [-- SECTION...]` (or `scripts/bench`).
//! Sections, all by default:
//!
//! - `native`: the ceiling, `XREADGROUP COUNT 256` + one `XACK` per batch;
//! - `run`: `sluice run` (the real binary) end to end with a trivial Rust
//!   handler, fresh instance per event, with `RUST_BACKTRACE=1` and unset:
//!   the CPU per event of the host and of Redis, Redis's own accounting of
//!   its commit scripts and reads (`INFO commandstats`, steadier than
//!   process CPU on a noisy machine), and the host's peak memory;
//! - `schema`: the trivial handler with a JSON Schema on its events' type,
//!   checked before each delivery;
//! - `chain`: the same with a handler that publishes one event per input;
//! - `defaults`: the trivial handler with the shipped defaults, against the
//!   same at each `concurrency` from 16 to 256 (the best tuned);
//! - `beside`: the trivial handler alone, then beside a hostile one (4
//!   events at a time that spin to their 300 ms timeout or fill their
//!   memory), once the hostile one is demoted;
//! - `dispatch`: µs per dispatch (fresh instance + call + drop) per plugin;
//! - `latency`: publish → commit p50/p99 at a fixed offered rate;
//! - `idle`: resident memory of a host with 10 Rust plugins loaded, idle,
//!   and the CPU it uses while idle;
//! - `cluster`: the publishing handler on a 3-master Redis Cluster, with the
//!   streams in one slot (one script per commit) and in two (an outbox and
//!   its relay), against the same on one `redis-server`;
//! - `hosts`: 1, 2 and 3 `sluice run` hosts sharing the group on one Redis:
//!   throughput, CPU per event, and how evenly the work was split;
//! - `ordered`: the trivial handler with `order_by` over 100 keys and over 1
//!   key, against the same events without it (`concurrency = 64`) and
//!   with `concurrency = 1`;
//! - `formats`: the trivial handler on a stream of each `format` (Sluice's,
//!   a Dapr-style CloudEvent, a LeanMQ message), and the µs one entry
//!   takes to read in each.
//!
//! Environment: `SLUICE_BENCH_EVENTS` (default 20000), `SLUICE_BENCH_ROUNDS`
//! (rounds of `native` and `run`, alternating, each figure the best of
//! them; default 1), `SLUICE_BENCH_RATE`
//! (latency's offered rate, default 10000/s), `SLUICE_BENCH_OUT` (where the
//! JSON goes, default `target/bench/throughput.json`), `SLUICE_BENCH_BIN`
//! (another `sluice` binary to run, e.g. an older build to compare with).

mod dispatch;
mod host;
mod latency;
mod report;

#[path = "../../tests/it/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "../../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../../tests/it/support/tls.rs"]
#[allow(dead_code)]
mod tls;

use host::{Host, Memory, Setup, acked, dist};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use report::Report;
use std::time::{Duration, Instant};

/// The trivial handler's input: `behave` parses the JSON and returns ok.
const TRIVIAL: &str = r#"{"action":"ok","order_id":"o-1","total":42.5,"items":[{"sku":"mug","qty":2}]}"#;
/// The chain's input: `behave` parses it and publishes one event to `out`.
const CHAIN: &str = r#"{"action":"publish","order_id":"o-1","total":42.5,"publish":[{"stream":"out","type":"order.paid","data":{"order_id":"o-1"}}]}"#;
/// A JSON Schema [`TRIVIAL`] satisfies, for the `schema` section: the shape
/// of the demo's `order.created`.
const ORDER_SCHEMA: &str = r#"{"type": "object", "required": ["order_id", "total", "items"], "properties": {
    "order_id": {"type": "string", "minLength": 1}, "total": {"type": "number"},
    "items": {"type": "array", "items": {"type": "object", "required": ["sku", "qty"],
        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}}}"#;
/// The hostile neighbour: four events at a time, each spinning until its
/// 300 ms timeout or filling its memory (see [`hostile_event`]).
const SPINNER: &str = "[handlers.spinner]\nplugin = \"behave.wasm\"\nstreams = [\"spin\"]\ntimeout_ms = 300\nmemory_mb = 64\nmax_attempts = 1\nconcurrency = 4\n";
/// Concurrency values the `defaults` section tries, for the best tuned rate.
const TUNED: [u32; 5] = [16, 32, 64, 128, 256];
/// Plugins whose dispatch is measured: label, file in `plugins/dist`, input.
const DISPATCHED: [(&str, &str, &str); 3] = [
    ("Rust (behave)", "behave.wasm", TRIVIAL),
    ("Python (behave-py)", "behave-py.wasm", TRIVIAL),
    ("JavaScript (behave-js)", "behave-js.wasm", TRIVIAL),
];

fn main() {
    let sections: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    let n: usize = env_or("SLUICE_BENCH_EVENTS", 20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut report = Report::default();

    // `native` and `run` alternate for `rounds` rounds; each figure is the
    // best of its rounds (the most events/s, the least CPU per event), so
    // that a noisy machine's slow spells do not decide the ratio.
    let rounds: usize = env_or("SLUICE_BENCH_ROUNDS", 1).max(1);
    let best_of = if rounds > 1 { format!(", best of {rounds} rounds") } else { String::new() };
    let (mut native, mut runs): (Option<f64>, [Option<Run>; 2]) = (None, [None, None]);
    for _ in 0..rounds {
        if wanted("native") {
            let rate = rt.block_on(native_consumer(&RedisServer::start(), n));
            native = Some(native.map_or(rate, |best| best.max(rate)));
        }
        if wanted("run") {
            for (best, backtrace) in runs.iter_mut().zip([true, false]) {
                let run = rt.block_on(end_to_end(n, &handler("bench", "behave.wasm", ""), TRIVIAL, backtrace));
                *best = Some(match best.take() {
                    Some(b) => b.best_with(run),
                    None => run,
                });
            }
        }
    }
    if let Some(rate) = native {
        report.rate(format!("native: XREADGROUP COUNT 256 + XACK per batch, no handler{best_of}"), rate, native);
    }
    if let [Some(with_bt), Some(without_bt)] = &runs {
        for (run, bt) in [(with_bt, "RUST_BACKTRACE=1"), (without_bt, "RUST_BACKTRACE unset")] {
            report.rate(format!("sluice run, trivial Rust handler ({bt}{best_of})"), run.rate, native);
            report.add(format!("  CPU per event ({bt}): sluice host"), run.host_cpu_us, "µs");
            report.add(format!("  CPU per event ({bt}): redis-server"), run.redis_cpu_us, "µs");
            report.add(format!("    of which in the commit script ({bt})"), run.script_us, "µs");
            report.add(format!("    of which in XACK, plain or in the script ({bt})"), run.ack_us, "µs");
            report.add(format!("    of which in XREADGROUP ({bt})"), run.read_us, "µs");
            report.add(format!("  events per XREADGROUP call ({bt})"), run.per_read, "events");
        }
        let peak = with_bt.memory.peak.max(without_bt.memory.peak);
        report.add("sluice run, trivial Rust handler: host peak RSS", peak, "MiB");
    }
    if wanted("schema") {
        let handlers = format!("[schemas]\n\"order.*\" = \"order.json\"\n{}", handler("bench", "behave.wasm", ""));
        let rate = rt.block_on(end_to_end(n, &handlers, TRIVIAL, true)).rate;
        report.rate("sluice run, trivial Rust handler, JSON Schema checked", rate, native);
        let (check, parse) = schema_check_cost();
        report.add("schema check of one event (parse + match + validate)", check, "µs");
        report.add("the same event parsed by serde_json alone (the floor)", parse, "µs");
    }
    if wanted("chain") {
        let handlers = handler("bench", "behave.wasm", "publish = [\"out\"]\n");
        let rate = rt.block_on(end_to_end(n, &handlers, CHAIN, true)).rate;
        report.rate("sluice run, Rust handler publishing one event per input", rate, native);
    }
    if wanted("formats") {
        // The control: Sluice's format with data as large as the CloudEvent
        // (the whole envelope, which `behave` parses as its data), so that
        // what the size of an entry costs is told apart from what reading
        // its format costs.
        let runs = [
            ("sluice", "", TRIVIAL.to_owned()),
            ("sluice", ", data the CloudEvent's size", cloudevent()),
            ("cloudevents", "", cloudevent()),
            ("leanmq", "", leanmq()),
        ];
        for (format, note, payload) in runs {
            let handlers =
                format!("[streams.\"bench\"]\nformat = \"{format}\"\n{}", handler("bench", "behave.wasm", ""));
            let run = rt.block_on(end_to_end(n, &handlers, &payload, true));
            report.rate(format!("sluice run, trivial handler, format = {format}{note}"), run.rate, native);
            report.add(
                format!("  CPU per event: sluice host ({} bytes in the entry)", payload.len()),
                run.host_cpu_us,
                "µs",
            );
        }
        for (format, payload) in [
            (sluice::format::Format::Sluice, TRIVIAL.to_owned()),
            (sluice::format::Format::CloudEvents, cloudevent()),
            (sluice::format::Format::leanmq(), leanmq()),
        ] {
            let entry = sluice::event::Entry {
                id: "1-0".into(),
                fields: vec![("type".into(), b"order.created".to_vec()), ("data".into(), payload.into_bytes())],
            };
            let us = per_call(&|| drop(std::hint::black_box(format.read(&entry, 0).unwrap())));
            report.add(format!("reading one entry, format = {}", format.name()), us, "µs");
        }
    }
    if wanted("defaults") {
        let shipped = "[handlers.bench]\nplugin = \"behave.wasm\"\nstreams = [\"bench\"]\n";
        let default = rt.block_on(end_to_end(n, shipped, TRIVIAL, true));
        report.rate("sluice run, trivial handler, shipped defaults", default.rate, native);
        let mut best: f64 = 0.0;
        for c in TUNED {
            let tuned = handler("bench", "behave.wasm", "").replace("concurrency = 64", &format!("concurrency = {c}"));
            let rate = rt.block_on(end_to_end(n, &tuned, TRIVIAL, true)).rate;
            report.rate(format!("  the same, concurrency = {c}"), rate, native);
            best = best.max(rate);
        }
        report.add("  shipped defaults / best tuned", default.rate / best, "ratio");
        let idle = rt.block_on(idle_with_plugins(1, true));
        idle.add_to(&mut report, "  idle host, shipped defaults, after a first start (warm cache)");
    }
    if wanted("beside") {
        let trivial = handler("bench", "behave.wasm", "");
        let alone = rt.block_on(end_to_end(n, &trivial, TRIVIAL, true)).rate;
        report.rate("sluice run, trivial handler alone", alone, native);
        let beside = rt.block_on(end_to_end(n, &format!("{trivial}{SPINNER}"), TRIVIAL, true)).rate;
        report.rate("the same beside a hostile handler (spins to timeout, fills memory)", beside, native);
        report.add("  beside / alone", beside / alone, "ratio");
    }
    if wanted("dispatch") {
        for (label, file, payload) in DISPATCHED {
            let iterations = if file == "behave.wasm" { 5_000 } else { 300 };
            let fresh = rt.block_on(dispatch::cost(&dist(), file, payload, iterations, r#"isolation = "per-event""#));
            report.add(format!("dispatch, {label}: fresh instance + call + drop"), fresh.direct, "µs");
            report.add(format!("dispatch, {label}: the same as the host runs it"), fresh.isolated, "µs");
            // With and without a fuel budget (counting fuel slows the
            // handler's wasm code; only handlers with a budget run on the
            // engine that counts it): the least of three alternating runs
            // each, so that a noisy moment does not decide the ratio.
            let (mut reuse, mut metered) = (f64::MAX, f64::MAX);
            for _ in 0..3 {
                let plain = rt.block_on(dispatch::cost(&dist(), file, payload, 5_000, r#"isolation = "reuse""#));
                reuse = reuse.min(plain.isolated);
                let budget = "isolation = \"reuse\"\nfuel = 10000000000";
                metered = metered.min(rt.block_on(dispatch::cost(&dist(), file, payload, 5_000, budget)).isolated);
            }
            report.add(format!("dispatch, {label}: isolation = \"reuse\", as the host runs it"), reuse, "µs");
            report.add(format!("dispatch, {label}: the same with a fuel budget"), metered, "µs");
            report.add("  with a fuel budget / without", metered / reuse, "ratio");
        }
    }
    if wanted("latency") {
        let rate: u32 = env_or("SLUICE_BENCH_RATE", 10_000);
        for native in [true, false] {
            let l = rt.block_on(publish_to_commit(rate, native));
            let who = if native { "native consumer" } else { "sluice run, chain handler" };
            report.add(format!("latency publish → commit at {rate}/s, {who}: p50"), l.p50, "ms");
            report.add(format!("latency publish → commit at {rate}/s, {who}: p99"), l.p99, "ms");
            report.add(format!("latency publish → commit at {rate}/s, {who}: p99.9"), l.p999, "ms");
            report.add(format!("latency publish → commit at {rate}/s, {who}: max"), l.max, "ms");
            report.add(format!("latency publish → commit at {rate}/s, {who}: rate offered"), l.offered, "events/s");
        }
    }
    if wanted("idle") {
        for warm in [false, true] {
            let idle = rt.block_on(idle_with_plugins(10, warm));
            let cache = if warm { "warm cache" } else { "cold cache: compiled at start" };
            idle.add_to(&mut report, &format!("idle host, 10 Rust plugins loaded ({cache})"));
        }
    }
    if wanted("cluster") {
        let chain = |input: &str, output: &str| {
            format!(
                "[handlers.bench]\nplugin = \"behave.wasm\"\nstreams = [\"{input}\"]\npublish = [\"{output}\"]\nconcurrency = 64\n"
            )
        };
        let single = rt.block_on(on_cluster(None, n, &chain("bench", "out"), "bench", "out"));
        report.rate("one redis-server: handler publishing one event per input", single.acked, native);
        let c = cluster::Cluster::start();
        let one = rt.block_on(on_cluster(Some(&c), n, &chain("{b}:bench", "{b}:out"), "{b}:bench", "{b}:out"));
        report.rate("Redis Cluster, streams in one slot: one script per commit", one.acked, native);
        let cross = rt.block_on(on_cluster(Some(&c), n, &chain("bench", "out"), "bench", "out"));
        report.rate("Redis Cluster, streams in two slots: outbox, acked", cross.acked, native);
        report.rate("Redis Cluster, streams in two slots: outbox, relayed to out", cross.landed, native);
        report.add("  one slot over one redis-server", one.acked / single.acked, "ratio");
        report.add("  two slots (acked) over one redis-server", cross.acked / single.acked, "ratio");
    }
    if wanted("hosts") {
        for hosts in 1..=3 {
            let r = rt.block_on(many_hosts(n, hosts));
            report.rate(format!("{hosts} host(s) sharing the group: throughput"), r.rate, native);
            report.add(format!("{hosts} host(s): CPU per event, hosts + redis-server"), r.cpu_us, "µs");
            report.add(format!("{hosts} host(s): share of the busiest / the idlest host"), r.spread, "ratio");
        }
    }
    if wanted("ordered") {
        let keyed = |keys: usize| {
            move |i: usize| TRIVIAL.replace("\"order_id\":\"o-1\"", &format!("\"order_id\":\"o-{}\"", i % keys))
        };
        let run = |extra: &str, keys: usize| {
            let handlers = handler("bench", "behave.wasm", extra).replace("concurrency = 64\n", "");
            rt.block_on(end_to_end_with(n, &handlers, keyed(keys), true)).rate
        };
        let unordered = run("concurrency = 64\n", 100);
        report.rate("unordered, concurrency = 64 (100 keys in the data)", unordered, native);
        let ordered = run("concurrency = 64\norder_by = \"data.order_id\"\n", 100);
        report.rate("order_by over 100 keys, concurrency = 64", ordered, native);
        report.add("  order_by over 100 keys / unordered", ordered / unordered, "ratio");
        let one_key = run("concurrency = 64\norder_by = \"data.order_id\"\n", 1);
        report.rate("order_by, every event of 1 key, concurrency = 64", one_key, native);
        let serial = run("concurrency = 1\n", 1);
        report.rate("unordered, concurrency = 1", serial, native);
        report.add("  order_by over 1 key / concurrency = 1", one_key / serial, "ratio");
    }
    report.print(&format!("Sluice throughput, {n} events per run, Redis on the same machine"));
    let meta = serde_json::json!({
        "events": n,
        "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    });
    println!("written to {}", report.write(meta).display());
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One handler's config, reading stream `bench`, concurrency 64.
fn handler(name: &str, plugin: &str, extra: &str) -> String {
    format!("[handlers.{name}]\nplugin = \"{plugin}\"\nstreams = [\"bench\"]\nconcurrency = 64\n{extra}")
}

/// Adds `n` entries with `payload` to `stream`, 1000 per pipeline.
async fn load(conn: &mut impl redis::aio::ConnectionLike, stream: &str, payload: &str, n: usize) {
    load_with(conn, stream, |_| payload.to_owned(), n).await
}

/// Adds `n` entries to `stream`, the `i`th with data `payload(i)`, 1000 per
/// pipeline.
async fn load_with(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    payload: impl Fn(usize) -> String,
    n: usize,
) {
    for start in (0..n).step_by(1_000) {
        let mut pipe = redis::pipe();
        for i in start..n.min(start + 1_000) {
            pipe.cmd("XADD").arg(stream).arg("*").arg("type").arg("order.created").arg("data").arg(payload(i)).ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// The ceiling: read 256 at a time and ack each batch, nothing else.
async fn native_consumer(redis: &RedisServer, n: usize) -> f64 {
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "native", "g").await.unwrap();
    let started = Instant::now();
    load(&mut conn, "native", TRIVIAL, n).await;
    let mut done = 0;
    while done < n {
        let reply = read_group(&mut conn, "native").await;
        let ids: Vec<String> = reply.keys.iter().flat_map(|k| k.ids.iter().map(|i| i.id.clone())).collect();
        if ids.is_empty() {
            continue;
        }
        let _: usize = redis::cmd("XACK").arg("native").arg("g").arg(&ids).query_async(&mut conn).await.unwrap();
        done += ids.len();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Up to 256 new entries of `stream` for consumer `c` of group `g`.
async fn read_group(conn: &mut MultiplexedConnection, stream: &str) -> redis::streams::StreamReadReply {
    let opts = redis::streams::StreamReadOptions::default().group("g", "c").count(256).block(100);
    conn.xread_options(&[stream], &[">"], &opts).await.unwrap()
}

/// What one [`end_to_end`] run measured.
struct Run {
    /// Events per second, from the first XADD until every one was acked.
    rate: f64,
    /// The host's memory at the end.
    memory: Memory,
    /// CPU time per event of the `sluice` process and of `redis-server`
    /// (including the XADDs), in µs.
    host_cpu_us: f64,
    redis_cpu_us: f64,
    /// Redis's own accounting (`INFO commandstats`) of the same stretch:
    /// µs per event in the commit script, in `XACK` (the plain ones that
    /// commit deliveries that write nothing, and those the script calls,
    /// which its own time includes) and in `XREADGROUP`, and events per
    /// `XREADGROUP` call (the reader's reads and those sent with commits:
    /// about the events per batch).
    script_us: f64,
    ack_us: f64,
    read_us: f64,
    per_read: f64,
}

impl Run {
    /// The best of two runs of the same setup, figure by figure: the most
    /// events/s (and events per read), the least CPU per event; for
    /// memory, the most (the worst).
    fn best_with(self, other: Run) -> Run {
        Run {
            rate: self.rate.max(other.rate),
            memory: Memory {
                now: self.memory.now.max(other.memory.now),
                peak: self.memory.peak.max(other.memory.peak),
            },
            host_cpu_us: self.host_cpu_us.min(other.host_cpu_us),
            redis_cpu_us: self.redis_cpu_us.min(other.redis_cpu_us),
            script_us: self.script_us.min(other.script_us),
            ack_us: self.ack_us.min(other.ack_us),
            read_us: self.read_us.min(other.read_us),
            per_read: self.per_read.max(other.per_read),
        }
    }
}

/// `sluice run` with `handlers` on a fresh Redis: events/s from the first
/// XADD of `n` entries to `bench` until every one is acked, and the host's
/// memory. With a `spinner` handler, its stream gets 400 hostile events
/// ([`hostile_event`]) first, and the clock starts once the first of them
/// was dead-lettered (the spinner is demoted by then).
async fn end_to_end(n: usize, handlers: &str, payload: &str, backtrace: bool) -> Run {
    end_to_end_with(n, handlers, |_| payload.to_owned(), backtrace).await
}

/// The `i`th hostile event: three of four spin until their timeout, the
/// fourth fills its memory (48 of its 64 MiB) and returns.
fn hostile_event(i: usize) -> String {
    if i % 4 == 3 { r#"{"action":"alloc","mb":48}"#.into() } else { r#"{"action":"loop"}"#.into() }
}

/// [`end_to_end`] with the `i`th event's data `payload(i)`.
async fn end_to_end_with(n: usize, handlers: &str, payload: impl Fn(usize) -> String, backtrace: bool) -> Run {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut streams = vec!["bench"];
    let hostile = handlers.contains("[handlers.spinner]");
    if hostile {
        load_with(&mut conn, "spin", hostile_event, 400).await;
        streams.push("spin");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order.json"), ORDER_SCHEMA).unwrap();
    let host = Host::start(dir.path(), &redis.url(), &dist(), handlers, backtrace, &streams).await;
    while hostile && conn.xlen::<_, usize>("spin:dlq").await.unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    let cpu_before = (host.cpu(), host::cpu_seconds(redis.pid()));
    let started = Instant::now();
    load_with(&mut conn, "bench", payload, n).await;
    while acked(&mut conn, "bench").await < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let per_event = |before: f64, after: f64| (after - before) * 1e6 / n as f64;
    let host_cpu_us = per_event(cpu_before.0, host.cpu());
    let redis_cpu_us = per_event(cpu_before.1, host::cpu_seconds(redis.pid()));
    let stats = host::command_stats(&mut conn).await;
    let usec_per_event = |command: &str| stats.get(command).map_or(0.0, |(_, usec)| usec / n as f64);
    let (script_us, ack_us, read_us) =
        (usec_per_event("evalsha"), usec_per_event("xack"), usec_per_event("xreadgroup"));
    let per_read = n as f64 / stats.get("xreadgroup").map_or(1.0, |(calls, _)| calls.max(1.0));
    let memory = host.memory();
    host.stop();
    // Every event handled, none dead-lettered (by a schema, say): else the
    // rate would count failures.
    let dead: usize = conn.xlen("bench:dlq").await.unwrap();
    assert_eq!(dead, 0, "{dead} events were dead-lettered; see the host's log");
    Run { rate, memory, host_cpu_us, redis_cpu_us, script_us, ack_us, read_us, per_read }
}

/// µs per [`TRIVIAL`] event for `Schemas::check` with [`ORDER_SCHEMA`],
/// and for parsing it into a `serde_json::Value`, which the check does first.
fn schema_check_cost() -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order.json"), ORDER_SCHEMA).unwrap();
    let lines = std::collections::BTreeMap::from([("order.*".to_owned(), "order.json".to_owned())]);
    let schemas = sluice::schema::Schemas::compile(dir.path(), &lines).unwrap();
    let per_event = |f: &dyn Fn()| {
        let n = 200_000;
        let started = Instant::now();
        for _ in 0..n {
            f();
        }
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let check = per_event(&|| schemas.check("order.created", TRIVIAL.as_bytes()).expect("valid"));
    let parse = per_event(&|| {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(TRIVIAL.as_bytes()).unwrap());
    });
    (check, parse)
}

/// [`TRIVIAL`] in a CloudEvent, as Dapr's `pubsub.redis` stores it.
fn cloudevent() -> String {
    format!(
        r#"{{"specversion":"1.0","id":"6f1c4ad6-1b47-4b7e-9e0c-7c2b2a1f9d3e","source":"checkout","type":"order.created","datacontenttype":"application/json","topic":"bench","pubsubname":"pubsub","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","time":"2026-11-26T10:00:00Z","data":{TRIVIAL}}}"#
    )
}

/// [`TRIVIAL`] as a LeanMQ message, with its type and `_metadata`.
fn leanmq() -> String {
    let mut message: serde_json::Value = serde_json::from_str(TRIVIAL).unwrap();
    message["event_type"] = "order.created".into();
    message["_metadata"] =
        serde_json::json!({"id": "6f1c4ad6-1b47-4b7e-9e0c-7c2b2a1f9d3e", "timestamp": 1_795_000_000.5, "ttl": null});
    message.to_string()
}

/// µs per call of `f`, over 200 000 calls.
fn per_call(f: &dyn Fn()) -> f64 {
    let n = 200_000;
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The chain handler at `rate` events/s for 3 s (the first 0.5 s left
/// out); or, `native`, a Rust loop doing the same reads and writes with no
/// handler: the floor of this measurement on this machine.
async fn publish_to_commit(rate: u32, native: bool) -> latency::Latency {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let floor = native.then(|| tokio::spawn(native_chain(redis.url())));
    let host = if native {
        None
    } else {
        let handlers = handler("bench", "behave.wasm", "publish = [\"out\"]\n");
        Some(Host::start(dir.path(), &redis.url(), &dist(), &handlers, true, &["bench"]).await)
    };
    let offer = latency::Offer {
        input: "bench",
        output: "out",
        payload: CHAIN,
        rate,
        run: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
    };
    let l = latency::measure(redis.conn().await, redis.conn().await, &offer).await;
    if let Some(host) = host {
        host.stop();
    }
    if let Some(floor) = floor {
        floor.abort();
    }
    l
}

/// Reads `bench` through group `g` and, per entry, publishes to `out`
/// (naming it as the cause) and acks, one pipeline per read. Runs until aborted.
async fn native_chain(url: String) {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    sluice::stream::ensure_group(&mut conn, "bench", "g").await.unwrap();
    loop {
        let reply = read_group(&mut conn, "bench").await;
        let mut pipe = redis::pipe();
        for entry in reply.keys.iter().flat_map(|k| &k.ids) {
            pipe.cmd("XADD").arg("out").arg("*").arg("causation_id").arg(&entry.id).ignore();
            pipe.cmd("XACK").arg("bench").arg("g").arg(&entry.id).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
}

/// What a run on a cluster measured, in events/s: until every input was
/// acknowledged, and until every output landed.
struct ClusterRate {
    acked: f64,
    landed: f64,
}

/// The publishing handler (`handlers`, reading `input`, writing `output`)
/// on `cluster`, or on a fresh `redis-server` when `None`: `n` events.
async fn on_cluster(
    cluster: Option<&cluster::Cluster>,
    n: usize,
    handlers: &str,
    input: &str,
    output: &str,
) -> ClusterRate {
    let server = cluster.is_none().then(RedisServer::start);
    let (redis, mut conn) = match (cluster, &server) {
        (Some(c), _) => {
            (format!("url = \"{}\"\ncluster = true", c.url()), sluice::stream::Conn::Cluster(c.conn().await))
        }
        (None, Some(s)) => (format!("url = \"{}\"", s.url()), sluice::stream::Conn::Dedicated(s.conn().await)),
        _ => unreachable!(),
    };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { redis: &redis, host: "", plugins: &dist(), handlers, backtrace: true };
    let host = Host::start_with(dir.path(), &setup, &[input], &mut conn).await;
    let started = Instant::now();
    load(&mut conn, input, CHAIN.replace("\"out\"", &format!("{output:?}")).as_str(), n).await;
    while acked(&mut conn, input).await < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked = n as f64 / started.elapsed().as_secs_f64();
    loop {
        let len: usize = conn.xlen(output).await.unwrap();
        if len >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let landed = n as f64 / started.elapsed().as_secs_f64();
    host.stop();
    let len: usize = conn.xlen(output).await.unwrap();
    assert_eq!(len, n, "every event published once");
    ClusterRate { acked, landed }
}

/// What a run of several hosts measured.
struct HostsRun {
    /// Events per second, all hosts together.
    rate: f64,
    /// CPU time of the hosts and of redis-server, per event, in µs.
    cpu_us: f64,
    /// The busiest host's share over the idlest's (1: perfectly even).
    spread: f64,
}

/// `hosts` `sluice run` processes sharing group `bench` on one Redis, each
/// with its own consumer name and admin port: `n` trivial events.
async fn many_hosts(n: usize, hosts: usize) -> HostsRun {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let dirs: Vec<tempfile::TempDir> = (0..hosts).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..hosts).map(|_| redis_server::free_port()).collect();
    let handlers = handler("bench", "behave.wasm", "");
    let url = format!("url = \"{}\"", redis.url());
    let mut running = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let host_keys = format!("consumer = \"host-{i}\"\nadmin = \"127.0.0.1:{}\"", ports[i]);
        let setup = Setup { redis: &url, host: &host_keys, plugins: &dist(), handlers: &handlers, backtrace: true };
        running.push(Host::start_with(dir.path(), &setup, &["bench"], &mut conn).await);
    }
    let cpu = |running: &[Host]| running.iter().map(Host::cpu).sum::<f64>() + host::cpu_seconds(redis.pid());
    let before = cpu(&running);
    let started = Instant::now();
    load(&mut conn, "bench", TRIVIAL, n).await;
    while acked(&mut conn, "bench").await < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu(&running) - before) * 1e6 / n as f64;
    let shares: Vec<f64> = ports.iter().map(|p| handled_by(*p)).collect();
    for h in running {
        h.stop();
    }
    let (most, least) = shares.iter().fold((0.0f64, f64::MAX), |(hi, lo), s| (hi.max(*s), lo.min(*s)));
    HostsRun { rate, cpu_us, spread: if least > 0.0 { most / least } else { f64::INFINITY } }
}

/// Events handled ok by the host whose admin listener is on `port`.
fn handled_by(port: u16) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let series = r#"sluice_events_total{handler="bench",outcome="ok"} "#;
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// How long an idle host's CPU is measured: long enough for the kernel's
/// 10 ms accounting steps to tell a host that wakes hundreds of times a
/// second from one that does not.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(10);

/// What an idle host uses.
struct Idle {
    /// Its resident memory a second after it started.
    memory: Memory,
    /// The share of one core it used over the [`IDLE_CPU_WINDOW`] after that.
    cpu_share: f64,
}

impl Idle {
    /// Adds its two rows to `report`, the first named `what`.
    fn add_to(&self, report: &mut Report, what: &str) {
        report.add(format!("{what}: RSS"), self.memory.now, "MiB");
        let window = IDLE_CPU_WINDOW.as_secs();
        report.add(
            format!("  its CPU while idle ({window} s, from /proc: 10 ms steps)"),
            self.cpu_share * 100.0,
            "% of a core",
        );
    }
}

/// A host with `count` distinct Rust plugins, one handler each, idle for a
/// second after starting, then for [`IDLE_CPU_WINDOW`]. `warm`: started
/// once before, so the compiled-component cache is filled and nothing is
/// compiled.
async fn idle_with_plugins(count: usize, warm: bool) -> Idle {
    let redis = RedisServer::start();
    let (plugins, names) = host::distinct_plugins(count);
    let streams: Vec<String> = (0..count).map(|i| format!("s{i}")).collect();
    let handlers: String = names
        .iter()
        .zip(&streams)
        .enumerate()
        .map(|(i, (p, s))| format!("[handlers.h{i}]\nplugin = \"{p}\"\nstreams = [\"{s}\"]\n"))
        .collect();
    let streams: Vec<&str> = streams.iter().map(String::as_str).collect();
    let (dir, url) = (tempfile::tempdir().unwrap(), redis.url());
    if warm {
        Host::start(dir.path(), &url, plugins.path(), &handlers, true, &streams).await.stop();
    }
    let host = Host::start(dir.path(), &url, plugins.path(), &handlers, true, &streams).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let memory = host.memory();
    let before = host.cpu();
    tokio::time::sleep(IDLE_CPU_WINDOW).await;
    let cpu_share = (host.cpu() - before) / IDLE_CPU_WINDOW.as_secs_f64();
    host.stop();
    Idle { memory, cpu_share }
}
