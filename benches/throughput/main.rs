//! Throughput benchmark: Sluice end to end against a native Rust consumer
//! doing the same reads and acks with no handler, in the same run, on the
//! same `redis-server` (started here on a free port), so the ratio holds on
//! a noisy machine. Also the cost of one dispatch (fresh instance + call +
//! drop) of the trivial Rust handler.
//!
//! `cargo bench --bench throughput` (events: `SLUICE_BENCH_EVENTS`, default 20000).

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use sluice::config::Config;
use sluice::wasm::{Outcome, Plugin, Runtime, Sandbox};
use std::path::Path;
use std::time::{Duration, Instant};

/// A hostile neighbour: every event on `spin` loops until its 200 ms
/// timeout, two at a time, for as long as the benchmark runs.
const SPINNER: &str = "[handlers.spinner]\nplugin = \"behave.wasm\"\nstreams = [\"spin\"]\ntimeout_ms = 200\nmax_attempts = 1\nconcurrency = 2\n";

/// The trivial handler's input: `behave` parses the JSON and returns ok.
const PAYLOAD: &str = r#"{"action":"ok","order_id":"o-1","total":42.5,"items":[{"sku":"mug","qty":2}]}"#;

fn main() {
    let events: usize = std::env::var("SLUICE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let redis = RedisServer::start();
    let native = rt.block_on(native_consumer(&redis, events));
    let sluice = rt.block_on(sluice_host(&redis, events, ""));
    let beside = rt.block_on(sluice_host(&RedisServer::start(), events, SPINNER));
    let dispatch = rt.block_on(dispatch_cost(2_000));
    println!("\nSluice throughput, {events} events, trivial Rust handler, fresh instance per event");
    println!("{:<44} {:>12} {:>10}", "what", "events/s", "ratio");
    println!("{:<44} {:>12.0} {:>10}", "native XREADGROUP+XACK loop (no handler)", native, "1.00");
    println!("{:<44} {:>12.0} {:>10.2}", "sluice run, behave ok (end to end)", sluice, sluice / native);
    println!("{:<44} {:>12.0} {:>10.2}", "sluice run, same, beside a spinning handler", beside, beside / native);
    println!("{:<44} {:>12.1} µs", "dispatch: instantiate + call + drop", dispatch);
}

async fn load(conn: &mut MultiplexedConnection, stream: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            pipe.cmd("XADD").arg(stream).arg("*").arg("type").arg("order.created").arg("data").arg(PAYLOAD).ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// The ceiling: read 256 at a time and ack each batch, nothing else.
async fn native_consumer(redis: &RedisServer, n: usize) -> f64 {
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "native", "g").await.unwrap();
    let started = Instant::now();
    load(&mut conn, "native", n).await;
    let mut done = 0;
    while done < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg("native")
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply.keys.iter().flat_map(|k| k.ids.iter().map(|i| i.id.clone())).collect();
        if ids.is_empty() {
            continue;
        }
        let _: usize = redis::cmd("XACK").arg("native").arg("g").arg(&ids).query_async(&mut conn).await.unwrap();
        done += ids.len();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn bench_config(redis: &RedisServer, extra: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    let text = format!(
        "[redis]\nurl = \"{}\"\n[host]\nplugins = \"{}\"\n[handlers.bench]\nplugin = \"behave.wasm\"\nstreams = [\"bench\"]\nconcurrency = 64\n{extra}",
        redis.url(),
        plugins.display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e} (run scripts/build-plugins first)"));
    (dir, config)
}

/// Sluice end to end: from the first XADD until every event is acked.
async fn sluice_host(redis: &RedisServer, n: usize, extra: &str) -> f64 {
    let (_dir, config) = bench_config(redis, extra);
    if !extra.is_empty() {
        let mut conn = redis.conn().await;
        for _ in 0..200 {
            let _: String = redis::cmd("XADD")
                .arg("spin")
                .arg("*")
                .arg("data")
                .arg(r#"{"action":"loop"}"#)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(sluice::host::run(config, async {
        let _ = stopped.await;
    }));
    let mut conn = redis.conn().await;
    while !group_exists(&mut conn).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    load(&mut conn, "bench", n).await;
    while acked(&mut conn).await < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    host.await.unwrap().unwrap();
    rate
}

async fn group_exists(conn: &mut MultiplexedConnection) -> bool {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("bench")
        .query_async::<redis::Value>(conn)
        .await
        .map(|v| matches!(v, redis::Value::Array(a) if !a.is_empty()))
        .unwrap_or(false)
}

/// Entries delivered and no longer pending.
async fn acked(conn: &mut MultiplexedConnection) -> usize {
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::cmd("XINFO").arg("GROUPS").arg("bench").query_async(conn).await.unwrap();
    let g = &groups.groups[0];
    g.entries_read.unwrap_or(0).saturating_sub(g.pending)
}

/// µs per dispatch, sequential: a fresh store and instance per call.
async fn dispatch_cost(iterations: u32) -> f64 {
    let redis = RedisServer::start();
    let (_dir, config) = bench_config(&redis, "");
    let runtime = Runtime::new().unwrap();
    let plugin = Plugin::load(&runtime, None, &config.handlers[0].plugin).unwrap();
    let sandbox = Sandbox::for_handler(&config.handlers[0]);
    let entry = sluice::event::Entry {
        id: "1-0".into(),
        fields: vec![("type".into(), b"order.created".to_vec()), ("data".into(), PAYLOAD.as_bytes().to_vec())],
    };
    let event = entry.to_event("bench", 1);
    for _ in 0..100 {
        assert!(matches!(plugin.invoke(&sandbox, &event).await, Outcome::Success { .. }));
    }
    let started = Instant::now();
    for _ in 0..iterations {
        plugin.invoke(&sandbox, &event).await;
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}
