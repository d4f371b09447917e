//! Upkeep for months of running: a bounded stream is trimmed to its bound
//! without removing what a slow group still needs, and consumers left
//! behind by killed hosts are forgotten once their entries are taken over.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// The value of the series `series` (name and labels, as exposed) in the
/// in-process metrics, if any.
fn metric(series: &str) -> Option<f64> {
    let text = sluice::metrics::exposition(&[]);
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_stream_keeps_what_a_slow_group_needs_then_stays_near_its_bound() {
    let redis = RedisServer::start();
    let handlers = "[streams.\"in\"]\nmax_len = 1000\n\n\
        [handlers.fast]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nconcurrency = 16\n\
        [handlers.slow]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nconcurrency = 1\n";
    let fx = Fixture::new(&redis, "", handlers);
    let mut conn = redis.conn().await;
    let total = 20_000;
    let data = json!({"action": "ok"}).to_string();
    for chunk in 0..total / 1000 {
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("data").arg(&data).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
    }
    let host = fx.start();
    // While the slow group lags, the stream stays over its bound, and says why.
    let held = r#"sluice_stream_over_bound{stream="in",group="slow"}"#;
    eventually(Duration::from_secs(30), "a trim held back by the slow group", || async {
        (metric(held) == Some(1.0)).then_some(())
    })
    .await;
    let first = first_id(&mut conn).await;
    let needed = slow_needs_from(&mut conn).await;
    assert!(
        first <= needed,
        "nothing the slow group has yet to handle was removed: the stream starts at {first:?}, the group needs {needed:?} on"
    );
    let handled = r#"sluice_events_total{handler="slow",outcome="ok"}"#;
    eventually(Duration::from_secs(120), "the slow handler caught up", || async {
        (metric(handled) == Some(total as f64)).then_some(())
    })
    .await;
    // Caught up: the next trims bring it to its bound, and keep it there.
    let at_bound = eventually(Duration::from_secs(20), "XLEN back at the bound", || {
        let mut c = conn.clone();
        async move {
            let len: u64 = redis::cmd("XLEN").arg("in").query_async(&mut c).await.unwrap();
            (len <= 1000).then_some(len)
        }
    })
    .await;
    assert_eq!(at_bound, 1000, "trimmed to the bound, not below it");
    assert_eq!(metric(held), Some(0.0), "no longer held back");
    host.stop().await;
    assert_eq!(metric(handled), Some(total as f64), "the slow handler saw every event, once");
    assert_eq!(pending(&mut conn, "in", "slow").await, 0);
}

/// A stream id as numbers, to compare.
fn id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// The id of the first entry of `in`.
async fn first_id(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let first: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("in").arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await.unwrap();
    id(&first[0].0)
}

/// The first entry of `in` the slow group has not finished: its oldest
/// pending one, or else the one after its last delivered.
async fn slow_needs_from(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let summary: (u64, Option<String>, Option<String>, redis::Value) =
        redis::cmd("XPENDING").arg("in").arg("slow").query_async(conn).await.unwrap();
    if let Some(oldest) = summary.1 {
        return id(&oldest);
    }
    let groups: redis::streams::StreamInfoGroupsReply = redis::AsyncCommands::xinfo_groups(conn, "in").await.unwrap();
    let last = id(&groups.groups.iter().find(|g| g.name == "slow").unwrap().last_delivered_id);
    (last.0, last.1 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_left_by_stopped_and_killed_hosts_are_forgotten() {
    let redis = RedisServer::start();
    let admin = free_port();
    // The default consumer name, hostname-pid: every run is a new consumer.
    // The runs that leave consumers behind forget none themselves (a slow run
    // could otherwise forget an earlier one); the live host forgets after 1 s.
    let keep = "forget_consumers_after_ms = 3600000";
    let host_keys = format!("claim_idle_ms = 1000\n{keep}\nadmin = \"127.0.0.1:{admin}\"");
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nconcurrency = 2\ntimeout_ms = 900\n";
    let fx = Fixture::new(&redis, &host_keys, handlers);
    let mut conn = redis.conn().await;
    let events = 24;
    for n in 0..events {
        let publish = [json!({"stream": "out", "type": "n", "data": {"n": n}})];
        send(&mut conn, "in", "t", json!({"action": "busy", "ms": 150, "publish": publish})).await;
    }
    // Two runs stopped cleanly, then three killed with entries in flight.
    for _ in 0..2 {
        let mut host = fx.spawn_binary();
        until_pending(&conn, "in", "h", 2).await;
        terminate(&mut host).await;
    }
    for _ in 0..3 {
        let mut host = fx.spawn_binary();
        let before = entries(&mut conn, "out").await.len();
        eventually(SOON, "a new host at work", || {
            let mut c = conn.clone();
            async move {
                (entries(&mut c, "out").await.len() > before && pending(&mut c, "in", "h").await > 0).then_some(())
            }
        })
        .await;
        host.kill().unwrap(); // SIGKILL, with entries pending
        host.wait().unwrap();
    }
    let consumers = sluice::stream::hygiene::consumers(&mut conn, "in", "h").await.unwrap();
    assert_eq!(consumers.len(), 5, "each run left its consumer: {consumers:?}");

    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(&fx.config_path, text.replace(keep, "forget_consumers_after_ms = 1000")).unwrap();
    let mut live = fx.spawn_binary();
    let out = until_entries(&conn, "out", events).await;
    let mut numbers: Vec<String> = out.iter().map(|e| field(e, "data")).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), events, "every event handled, none published twice");
    let left = eventually(Duration::from_secs(20), "only the live host's consumer left", || {
        let mut c = conn.clone();
        async move {
            let left = sluice::stream::hygiene::consumers(&mut c, "in", "h").await.unwrap();
            (left.len() == 1).then_some(left)
        }
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics");
    let forgotten: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"sluice_consumers_forgotten_total{group="h"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    live.kill().unwrap();
    live.wait().unwrap();
    assert_eq!(forgotten, 5.0, "each forgotten consumer counted: {metrics}");
    assert_eq!(left[0].pending, 0);
}
