//! A handler's publishes are written only if it succeeds, in the same
//! transaction as the ack, with source, correlation and causation set.

use crate::support::*;
use serde_json::json;

const HANDLER: &str = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 2\nbackoff_ms = 10\n";

fn publishing(then: &str, stream: &str) -> serde_json::Value {
    json!({"action": "publish", "then": then, "publish": [{"stream": stream, "type": "done", "data": {"n": 1}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_writes_publishes_with_lineage() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = publishing("ok", "out").to_string();
    let first = xadd(&mut conn, "in", &[("type", "t"), ("data", &data), ("correlation_id", "corr-7")]).await;
    let second = send(&mut conn, "in", "t", publishing("ok", "out")).await;
    let out = until_entries(&conn, "out", 2).await;
    assert_eq!(out.len(), 2);
    host.stop().await;
    let by_cause = |id: &str| out.iter().find(|e| field(e, "causation_id") == id).expect("publish for entry").clone();
    let a = by_cause(&first);
    assert_eq!(field(&a, "type"), "done");
    assert_eq!(field(&a, "data"), r#"{"n":1}"#);
    assert_eq!(field(&a, "source"), "h");
    assert_eq!(field(&a, "correlation_id"), "corr-7", "copied from the consumed event");
    let b = by_cause(&second);
    assert_eq!(field(&b, "correlation_id"), second, "the consumed entry id when it had none");
    assert_eq!(pending(&mut conn, "in", "h").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handlers_publish_nothing() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", publishing("reject", "out")).await;
    send(&mut conn, "in", "t", publishing("trap", "out")).await;
    until_entries(&conn, "in:dlq", 2).await;
    host.stop().await;
    assert!(entries(&mut conn, "out").await.is_empty(), "a failed delivery must publish nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_an_ungranted_stream_is_refused() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", publishing("ok", "secret")).await;
    let dl = until_entries(&conn, "in:dlq", 1).await.remove(0);
    host.stop().await;
    let reason = field(&dl, "sluice.error");
    assert!(reason.contains("publish refused") && reason.contains("\"secret\" is not granted"), "{reason}");
    assert!(entries(&mut conn, "secret").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_refuses_is_a_failed_attempt_not_a_lost_write() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let mut conn = redis.conn().await;
    // Someone put a plain string where the handler's output stream should be.
    let () = redis::cmd("SET").arg("out").arg("not a stream").query_async(&mut conn).await.unwrap();
    let host = fx.start();
    send(&mut conn, "in", "t", publishing("ok", "out")).await;
    let dl = until_entries(&conn, "in:dlq", 1).await;
    host.stop().await;
    let reason = field(&dl[0], "sluice.error");
    assert_eq!(
        reason,
        "cannot commit the handler's output: out holds a string, not a stream (gave up after 2 attempts)"
    );
    let kept: String = redis::cmd("GET").arg("out").query_async(&mut conn).await.unwrap();
    assert_eq!(kept, "not a stream", "nothing was written");
}
