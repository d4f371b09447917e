//! Handler state and settings: key-value writes commit with the ack (and
//! vanish with a failure), reads see the delivery's own writes, state is
//! scoped per handler, and `config.get` reads the handler's own table.

use crate::support::*;
use redis::AsyncCommands;
use serde_json::json;

fn counter(name: &str, extra: &str) -> String {
    format!(
        "[handlers.{name}]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 1\n{extra}\n"
    )
}

fn incr(then: &str) -> serde_json::Value {
    json!({"action": "kv_incr", "key": "seen", "then": then})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_commit_with_the_ack_and_vanish_on_failure() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &counter("h", "concurrency = 1"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    for _ in 0..3 {
        send(&mut conn, "in", "t", incr("ok")).await;
    }
    // These fail after writing and publishing: neither may land.
    send(&mut conn, "in", "t", incr("reject")).await;
    send(&mut conn, "in", "t", incr("trap")).await;
    until_finished(&conn, "in", "h", 5).await;
    host.stop().await;
    let stored: Option<String> = conn.get("sluice:kv:h:seen").await.unwrap();
    assert_eq!(stored.as_deref(), Some("3"));
    let counts: Vec<String> = entries(&mut conn, "out").await.iter().map(|e| field(e, "data")).collect();
    assert_eq!(counts, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
    assert_eq!(entries(&mut conn, "in:dlq").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_private_to_each_handler_and_honours_ttl_and_delete() {
    let redis = RedisServer::start();
    let handlers = format!("{}\n{}", counter("a", ""), counter("b", ""));
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "kv_incr", "key": "seen", "ttl_ms": 600000})).await;
    until_finished(&conn, "in", "a", 1).await;
    until_finished(&conn, "in", "b", 1).await;
    let a: Option<String> = conn.get("sluice:kv:a:seen").await.unwrap();
    let b: Option<String> = conn.get("sluice:kv:b:seen").await.unwrap();
    assert_eq!((a.as_deref(), b.as_deref()), (Some("1"), Some("1")), "each handler counts in its own space");
    let ttl: i64 = conn.pttl("sluice:kv:a:seen").await.unwrap();
    assert!(ttl > 500_000, "ttl set: {ttl}");
    send(&mut conn, "in", "t", json!({"action": "kv_delete", "key": "seen"})).await;
    until_finished(&conn, "in", "a", 2).await;
    until_finished(&conn, "in", "b", 2).await;
    host.stop().await;
    let gone: Option<String> = conn.get("sluice:kv:a:seen").await.unwrap();
    assert_eq!(gone, None);
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_are_per_handler_and_expand_env() {
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("SLUICE_TEST_GREETING", "hello from env") };
    let redis = RedisServer::start();
    let handlers = format!(
        "{}[handlers.a.config]\ngreeting = \"${{SLUICE_TEST_GREETING}}\"\n\n{}",
        counter("a", ""),
        counter("b", "")
    );
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "config", "key": "greeting"})).await;
    until_finished(&conn, "in", "a", 1).await;
    until_finished(&conn, "in", "b", 1).await;
    host.stop().await;
    let out = entries(&mut conn, "out").await;
    assert_eq!(out.len(), 1, "only a has the value");
    assert_eq!(field(&out[0], "data"), r#"{"greeting":"hello from env"}"#);
    let dl = entries(&mut conn, "in:dlq").await;
    assert_eq!(field(&dl[0], "sluice.handler"), "b");
    assert_eq!(field(&dl[0], "sluice.error"), "no config value greeting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_retried_after_it_went_through_writes_nothing_twice() {
    // The commit script does nothing for an entry no longer pending: run it
    // twice for one delivery, as a retry after a lost reply would.
    use sluice::wasm::{Effects, KvWrite, Publish};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "in", "g").await.unwrap();
    let id = send(&mut conn, "in", "t", json!({})).await;
    read_pending(&mut conn, "in", "g").await;
    let entry = sluice::event::Entry { id, fields: vec![("type".into(), b"t".to_vec())] };
    let effects = Effects {
        publishes: vec![Publish { stream: "out".into(), event_type: "x".into(), data: b"{}".to_vec() }],
        kv: vec![KvWrite::Set { key: "k".into(), value: b"v".to_vec(), ttl_ms: None }],
        ..Default::default()
    };
    for _ in 0..2 {
        let commit =
            sluice::stream::Commit::ack("in", &entry, "h", "sluice:kv:h:", effects.clone(), &Default::default());
        sluice::stream::commit_one(&mut conn, "g", "c", commit).await.unwrap();
    }
    assert_eq!(entries(&mut conn, "out").await.len(), 1, "published once");
    assert_eq!(pending(&mut conn, "in", "g").await, 0);
}
