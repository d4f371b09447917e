//! What happens to an entry after each kind of delivery outcome, end to end:
//! a real Redis, the `behave` plugin, the host in process.

use crate::support::*;
use serde_json::json;

/// One `behave` handler `h` on stream `in`, with extra handler keys.
fn behave(extra: &str) -> String {
    format!("[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n{extra}\n")
}

const FAST: &str = "claim_idle_ms = 5000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_is_acknowledged() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave(""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    until_finished(&conn, "in", "h", 1).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

/// Waits for the single dead-letter entry of `in` and returns it.
async fn dead_letter(conn: &mut redis::aio::MultiplexedConnection) -> redis::streams::StreamId {
    let mut found = until_entries(conn, "in:dlq", 1).await;
    assert_eq!(found.len(), 1, "exactly one dead-letter entry");
    found.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_at_once_with_every_field() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave(""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = json!({"action": "reject", "reason": "total is negative"}).to_string();
    let id = xadd(&mut conn, "in", &[("type", "order.created"), ("data", &data), ("correlation_id", "c-1")]).await;
    let dl = dead_letter(&mut conn).await;
    assert_eq!(field(&dl, "sluice.error"), "total is negative");
    assert_eq!(field(&dl, "sluice.handler"), "h");
    assert_eq!(field(&dl, "sluice.attempts"), "1");
    assert_eq!(field(&dl, "sluice.origin_stream"), "in");
    assert_eq!(field(&dl, "sluice.origin_id"), id);
    assert_eq!(field(&dl, "sluice.plugin_version").len(), 12);
    let failed_at: u64 = field(&dl, "sluice.failed_at").parse().unwrap();
    assert!(failed_at > 1_600_000_000_000);
    // The original fields travel with it.
    assert_eq!(field(&dl, "type"), "order.created");
    assert_eq!(field(&dl, "data"), data);
    assert_eq!(field(&dl, "correlation_id"), "c-1");
    // And the original is acknowledged.
    until_pending(&conn, "in", "h", 0).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_delivered_again_until_it_succeeds() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 5\nbackoff_ms = 10"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    // Succeeds on attempt 3, then publishes nothing; finished means acked.
    send(&mut conn, "in", "t", json!({"action": "fail_until", "n": 3})).await;
    until_finished(&conn, "in", "h", 1).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty(), "it succeeded, so no dead letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_dead_letter_with_the_last_reason() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 3\nbackoff_ms = 10"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "retry", "delay_ms": 20})).await;
    let dl = dead_letter(&mut conn).await;
    assert_eq!(field(&dl, "sluice.attempts"), "3");
    assert_eq!(field(&dl, "sluice.error"), "asked to retry (gave up after 3 attempts)");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_counts_as_failure_and_names_the_panic() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 2\nbackoff_ms = 10"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "trap"})).await;
    let dl = dead_letter(&mut conn).await;
    let reason = field(&dl, "sluice.error");
    assert!(reason.starts_with("trap: "), "{reason}");
    assert!(reason.contains("asked to trap"), "the guest's panic message is kept: {reason}");
    assert!(reason.ends_with("(gave up after 2 attempts)"), "{reason}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_an_endless_loop() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 1\ntimeout_ms = 200"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "loop"})).await;
    // A well-behaved event right behind it is not held up.
    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    let dl = dead_letter(&mut conn).await;
    assert_eq!(field(&dl, "sluice.error"), "timeout after 200 ms (gave up after 1 attempts)");
    until_finished(&conn, "in", "h", 2).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_is_enforced_and_named() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 1\nmemory_mb = 16"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "alloc", "mb": 64})).await;
    let dl = dead_letter(&mut conn).await;
    let reason = field(&dl, "sluice.error");
    assert!(reason.starts_with("memory limit 16 MiB exceeded"), "{reason}");
    // Within the cap is fine.
    send(&mut conn, "in", "t", json!({"action": "alloc", "mb": 4})).await;
    until_finished(&conn, "in", "h", 2).await;
    assert_eq!(entries(&mut conn, "in:dlq").await.len(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_dead_letter_stream_is_used() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("dead_letter = \"failures\""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "reject"})).await;
    until_entries(&conn, "failures", 1).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_a_permit_while_a_backlog_flows() {
    // Under load, a commit's batch reads the next entries for the permits
    // its deliveries give back, so they never go back to the pool; a retry
    // waiting for one must still get one soon, not once the stream runs dry.
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &behave("max_attempts = 3\nbackoff_ms = 10\nconcurrency = 4"));
    let mut conn = redis.conn().await;
    let first = send(&mut conn, "in", "t", json!({"action": "fail_until", "n": 2})).await;
    let backlog = 4_000;
    let mut pipe = redis::pipe();
    for _ in 0..backlog {
        pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("data").arg(r#"{"action":"ok"}"#).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let host = fx.start();
    let finished_first = eventually(SOON, "the first entry finished on its second attempt", || {
        let mut c = conn.clone();
        let first = first.clone();
        async move {
            let still: Vec<redis::Value> = redis::cmd("XPENDING")
                .arg("in")
                .arg("h")
                .arg(&first)
                .arg(&first)
                .arg(1)
                .query_async(&mut c)
                .await
                .ok()?;
            let done = finished(&mut c, "in", "h").await;
            (still.is_empty() && done > 0).then_some(done)
        }
    })
    .await;
    assert!(finished_first < backlog * 3 / 4, "the retry waited for the backlog: {finished_first} finished before it");
    until_finished(&conn, "in", "h", backlog + 1).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

/// An entry with more fields than a script call can pass (another program's,
/// some 4500) cannot be dead-lettered whole: its commit is refused before
/// anything is written, so it stays pending and the rest of its batch is
/// finished once, not aborted half-written and done again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_too_wide_to_dead_letter_stays_pending_and_spares_its_batch() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "claim_idle_ms = 60000", &behave("concurrency = 32"));
    let mut conn = redis.conn().await;
    let reject = json!({"action": "reject"}).to_string();
    let (wide, narrow) = (4, 200);
    for n in 0..narrow {
        if n % (narrow / wide) == 0 {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("in").arg("*").arg("type").arg("t").arg("data").arg(&reject);
            for f in 0..4500 {
                cmd.arg(format!("f{f}")).arg("v");
            }
            let _: String = cmd.query_async(&mut conn).await.unwrap();
        }
        send(&mut conn, "in", "t", json!({"action": "reject", "n": n})).await;
    }
    let host = fx.start();
    until_entries(&conn, "in:dlq", narrow).await;
    until_pending(&conn, "in", "h", wide).await;
    host.stop().await;
    let dead = entries(&mut conn, "in:dlq").await;
    let mut origins: Vec<String> = dead.iter().map(|e| field(e, "sluice.origin_id")).collect();
    origins.sort();
    origins.dedup();
    assert_eq!((dead.len(), origins.len()), (narrow, narrow), "each narrow entry dead-lettered once");
    assert_eq!(pending(&mut conn, "in", "h").await, wide, "the wide ones stay pending, not lost");
}
