//! Several handlers on one stream each see every event (fan-out); a
//! handler's `events` globs decide which it runs for.

use crate::support::*;
use serde_json::json;

/// A `behave` handler `name` on `in` with `events`, allowed to publish to `out`.
fn handler(name: &str, events: &str) -> String {
    format!("[handlers.{name}]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nevents = {events}\npublish = [\"out\"]\n")
}

/// Data that makes `behave` publish one `seen` event to `out`.
fn echo() -> serde_json::Value {
    json!({"action": "publish", "publish": [{"stream": "out", "type": "seen", "data": {}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_on_a_stream_sees_every_event() {
    let redis = RedisServer::start();
    let handlers = format!("{}\n{}", handler("a", "[\"*\"]"), handler("b", "[\"*\"]"));
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    for _ in 0..3 {
        send(&mut conn, "in", "t", echo()).await;
    }
    let out = until_entries(&conn, "out", 6).await;
    host.stop().await;
    let from = |name: &str| out.iter().filter(|e| field(e, "source") == name).count();
    assert_eq!((from("a"), from("b"), out.len()), (3, 3, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outside_the_globs_are_acked_without_running_the_plugin() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &handler("orders", "[\"order.*\"]"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "user.created", echo()).await;
    send(&mut conn, "in", "order.created", echo()).await;
    // An entry with no `type` at all is not an order either.
    xadd(&mut conn, "in", &[("data", &echo().to_string())]).await;
    until_finished(&conn, "in", "orders", 3).await;
    host.stop().await;
    let out = entries(&mut conn, "out").await;
    assert_eq!(out.len(), 1, "only the order.created event ran the plugin");
}
