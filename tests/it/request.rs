//! Request/reply: `sluice request` publishes with a fresh `reply_to`, a
//! handler answers with `host.reply`, and the caller prints the answer; a
//! dead-lettered request answers with its reason; nobody answering is a
//! timeout; reply streams never outlive their use.

use crate::support::*;
use serde_json::json;
use std::process::Output;
use std::time::{Duration, Instant};

const HANDLER: &str = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nmax_attempts = 1\n";

/// `sluice request STREAM --type t --data DATA --timeout-ms MS` with `fx`'s config.
fn request(fx: &Fixture, stream: &str, data: serde_json::Value, timeout_ms: u64) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["request", stream, "--type", "t", "--data", &data.to_string()])
        .args(["--timeout-ms", &timeout_ms.to_string(), "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap()
}

/// The reply streams left in Redis.
async fn reply_streams(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS").arg("sluice:reply:*").query_async(conn).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_and_its_reply_stream_deleted() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let out =
        request(&fx, "in", json!({"action": "reply", "type": "order.status", "reply": {"status": "paid"}}), 10_000);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"status":"paid"}"#);
    assert!(reply_streams(&mut conn).await.is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_answers_with_its_reason_at_once() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let started = Instant::now();
    let out = request(&fx, "in", json!({"action": "reject", "reason": "out of stock"}), 20_000);
    assert_eq!(out.status.code(), Some(2), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("failed: out of stock"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10), "the caller waited out its timeout");
    // Dead-lettered as usual, and the reply stream is gone.
    assert_eq!(entries(&mut conn, "in:dlq").await.len(), 1);
    assert!(reply_streams(&mut conn).await.is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_times_out_naming_the_stream_and_the_wait() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let mut conn = redis.conn().await;
    // No host runs: nobody consumes `in`.
    let out = request(&fx, "in", json!({"action": "reply", "reply": {}}), 300);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(said.contains("no reply to request") && said.contains("on stream in within 300 ms"), "{said}");
    assert!(reply_streams(&mut conn).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_needs_a_reply_to_and_a_reply_stream_expires() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let answer = json!({"action": "reply", "reply": {"n": 1}}).to_string();
    // Not a request: the reply is refused, and the handler rejects.
    xadd(&mut conn, "in", &[("type", "t"), ("data", &answer)]).await;
    // A reply_to that is not a reply stream (here the handler's own input):
    // refused, and nothing is written there or made to expire.
    xadd(&mut conn, "in", &[("type", "t"), ("data", &answer), ("reply_to", "in")]).await;
    // A request whose caller is gone: its reply stays only for a while.
    let id = xadd(&mut conn, "in", &[("type", "t"), ("data", &answer), ("reply_to", "sluice:reply:gone")]).await;
    until_finished(&conn, "in", "h", 3).await;
    host.stop().await;
    let dead = entries(&mut conn, "in:dlq").await;
    // Dead-lettered in either order (they run concurrently).
    let reasons: Vec<String> = dead.iter().map(|e| field(e, "sluice.error")).collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.iter().any(|r| r.contains("no reply_to field")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("\"in\" is not a reply stream")), "{reasons:?}");
    let ttl: i64 = redis::cmd("PTTL").arg("in").query_async(&mut conn).await.unwrap();
    assert_eq!((entries(&mut conn, "in").await.len(), ttl), (3, -1), "nothing written to in, no expiry set");
    let replies = entries(&mut conn, "sluice:reply:gone").await;
    assert_eq!(replies.len(), 1);
    assert_eq!((field(&replies[0], "request_id"), field(&replies[0], "data")), (id, r#"{"n":1}"#.to_owned()));
    let ttl: i64 = redis::cmd("PTTL").arg("sluice:reply:gone").query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= sluice::request::REPLY_TTL_MS as i64, "{ttl}");
}
