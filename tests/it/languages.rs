//! Handlers in Python (componentize-py) and JavaScript (componentize-js),
//! built by `scripts/build-plugins`: the same events get the same outcomes as
//! with the Rust fixture, the examples do their work, and instances are
//! fresh per event unless a handler opts into reuse.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// Compiling a Python or JavaScript component takes seconds (cold cache).
const LOADED: Duration = Duration::from_secs(120);

/// The twins of `behave`, by the stream each reads.
const FIXTURES: [(&str, &str); 3] = [("rs", "behave.wasm"), ("py", "behave-py.wasm"), ("js", "behave-js.wasm")];

fn twin(stream: &str, plugin: &str) -> String {
    format!(
        "[handlers.{stream}]\nplugin = \"{plugin}\"\nstreams = [\"{stream}\"]\npublish = [\"out-{stream}\"]\nmax_attempts = 2\nbackoff_ms = 10\n"
    )
}

async fn wait_entries(
    conn: &redis::aio::MultiplexedConnection,
    stream: &str,
    n: usize,
) -> Vec<redis::streams::StreamId> {
    eventually(LOADED, &format!("{n} entries in {stream}"), || {
        let mut c = conn.clone();
        let stream = stream.to_owned();
        async move {
            let found = entries(&mut c, &stream).await;
            (found.len() >= n).then_some(found)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_have_the_same_outcomes_in_rust_python_and_javascript() {
    let redis = RedisServer::start();
    let handlers: String = FIXTURES.iter().map(|(s, p)| twin(s, p)).collect();
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    for (lang, _) in FIXTURES {
        let publish = |stream: &str| json!({"action": "publish", "publish": [{"stream": stream, "type": "done", "data": {"n": 1}}]});
        send(&mut conn, lang, "t", json!({"action": "ok"})).await;
        send(&mut conn, lang, "t", publish(&format!("out-{lang}"))).await;
        send(&mut conn, lang, "t", json!({"action": "retry"})).await;
        send(&mut conn, lang, "t", json!({"action": "reject", "reason": "no such order"})).await;
        send(&mut conn, lang, "t", publish("forbidden")).await;
        send(&mut conn, lang, "t", json!({"action": "trap"})).await;
    }
    let mut reasons = Vec::new();
    for (lang, _) in FIXTURES {
        let out = wait_entries(&conn, &format!("out-{lang}"), 1).await;
        assert_eq!((field(&out[0], "type"), field(&out[0], "data")), ("done".into(), r#"{"n":1}"#.into()), "{lang}");
        let dlq = wait_entries(&conn, &format!("{lang}:dlq"), 4).await;
        reasons.push(dlq.iter().map(|e| field(e, "sluice.error")).collect::<Vec<_>>());
        until_finished(&conn, lang, lang, 6).await;
    }
    host.stop().await;
    // An exception or panic that escapes `handle` traps; the reason carries
    // the best the guest said about it on stderr: the panic message, the
    // last line of the Python traceback, the thrown JavaScript value.
    let trapped = [
        "(stderr: asked to trap)",
        "(stderr: RuntimeError: asked to trap)",
        "(stderr: uncaught exception: Error: asked to trap)",
    ];
    for ((reasons, (lang, _)), trap) in reasons.iter().zip(FIXTURES).zip(trapped) {
        let has = |p: &dyn Fn(&String) -> bool| reasons.iter().filter(|r| p(r)).count() == 1;
        assert_eq!(reasons.len(), 4, "{lang}: {reasons:?}");
        assert!(has(&|r| r == "asked to retry (gave up after 2 attempts)"), "{lang}: {reasons:?}");
        assert!(has(&|r| r == "no such order"), "{lang}: {reasons:?}");
        assert!(has(&|r| r.starts_with("publish refused: stream \"forbidden\" is not granted")), "{lang}: {reasons:?}");
        assert!(has(&|r| r.starts_with("trap: ") && r.contains(trap)), "{lang}: {reasons:?}");
    }
    for lang in ["out-rs", "out-py", "out-js"] {
        assert_eq!(entries(&mut conn, lang).await.len(), 1, "{lang}: failed deliveries publish nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_javascript_examples_format_and_publish_notifications() {
    let redis = RedisServer::start();
    let example = |name: &str, plugin: &str| {
        format!(
            "[handlers.{name}]\nplugin = \"{plugin}\"\nstreams = [\"shipments-{name}\"]\nevents = [\"order.shipped\"]\npublish = [\"notifications\"]\nmax_attempts = 1\n[handlers.{name}.config]\nshop_name = \"Mugs & Co\"\n"
        )
    };
    let handlers = format!("{}{}", example("py", "notify-py.wasm"), example("js", "notify-js.wasm"));
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    for lang in ["py", "js"] {
        let stream = format!("shipments-{lang}");
        let shipped =
            json!({"order_id": format!("o-{lang}"), "carrier": "DHL", "tracking_number": "T-1", "customer": "Ada"});
        xadd(
            &mut conn,
            &stream,
            &[("type", "order.shipped"), ("data", &shipped.to_string()), ("correlation_id", "c-9")],
        )
        .await;
        send(&mut conn, &stream, "order.shipped", json!({"order_id": "o-2", "carrier": "DHL"})).await;
    }
    let sent = wait_entries(&conn, "notifications", 2).await;
    let py_dlq = wait_entries(&conn, "shipments-py:dlq", 1).await;
    let js_dlq = wait_entries(&conn, "shipments-js:dlq", 1).await;
    host.stop().await;
    for lang in ["py", "js"] {
        let n = sent.iter().find(|e| field(e, "source") == lang).unwrap_or_else(|| panic!("{lang} published"));
        assert_eq!(field(n, "type"), "notification.sent");
        assert_eq!(field(n, "correlation_id"), "c-9");
        let data: serde_json::Value = serde_json::from_str(&field(n, "data")).unwrap();
        assert_eq!(data["order_id"], format!("o-{lang}"));
        assert_eq!(
            data["text"],
            format!("Hello Ada, your Mugs & Co order o-{lang} is on its way with DHL (tracking T-1).")
        );
    }
    for dlq in [py_dlq, js_dlq] {
        assert_eq!(field(&dlq[0], "sluice.error"), "shipment is missing tracking_number");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_fresh_per_event_unless_the_handler_opts_into_reuse() {
    let redis = RedisServer::start();
    let handler = |name: &str, isolation: &str| {
        format!(
            "[handlers.{name}]\nplugin = \"behave.wasm\"\nstreams = [\"{name}\"]\npublish = [\"{name}-out\"]\nmax_attempts = 1\nconcurrency = 1\nisolation = \"{isolation}\"\n"
        )
    };
    let handlers = format!("{}{}", handler("fresh", "per-event"), handler("reused", "reuse"));
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let count = |name: &str| json!({"action": "count", "out": format!("{name}-out")});
    for name in ["fresh", "reused"] {
        for _ in 0..3 {
            send(&mut conn, name, "t", count(name)).await;
        }
        // A trap discards a reused instance: the next count starts over.
        send(&mut conn, name, "t", json!({"action": "trap"})).await;
        send(&mut conn, name, "t", count(name)).await;
    }
    let fresh = until_entries(&conn, "fresh-out", 4).await;
    let reused = until_entries(&conn, "reused-out", 4).await;
    host.stop().await;
    let counts = |out: &[redis::streams::StreamId]| out.iter().map(|e| field(e, "data")).collect::<Vec<_>>();
    let n = |n: u32| format!(r#"{{"n":{n}}}"#);
    assert_eq!(counts(&fresh), [n(1), n(1), n(1), n(1)], "nothing survives between events by default");
    assert_eq!(counts(&reused), [n(1), n(2), n(3), n(1)], "a reused instance keeps its memory until it traps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_gets_a_fresh_deadline_per_delivery_and_is_dropped_after_a_timeout() {
    let redis = RedisServer::start();
    let handlers = "[handlers.reused]\nplugin = \"behave.wasm\"\nstreams = [\"reused\"]\npublish = [\"out\"]\nmax_attempts = 1\nconcurrency = 1\ntimeout_ms = 100\nisolation = \"reuse\"\n";
    let fx = Fixture::new(&redis, "", handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let count = json!({"action": "count", "out": "out"});
    send(&mut conn, "reused", "t", count.clone()).await;
    until_entries(&conn, "out", 1).await;
    // Longer than the timeout: the instance outlives it, its deliveries must
    // not. A delivery that computes across a few epoch ticks would time out
    // at once if it inherited the first delivery's deadline.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let busy = json!({"action": "busy", "ms": 20, "publish": [{"stream": "out", "type": "busy", "data": {}}]});
    send(&mut conn, "reused", "t", busy).await;
    send(&mut conn, "reused", "t", count.clone()).await;
    send(&mut conn, "reused", "t", json!({"action": "loop"})).await;
    send(&mut conn, "reused", "t", count).await;
    let out = until_entries(&conn, "out", 4).await;
    let dlq = until_entries(&conn, "reused:dlq", 1).await;
    host.stop().await;
    let counts: Vec<String> = out.iter().map(|e| field(e, "data")).collect();
    assert_eq!(counts, [r#"{"n":1}"#, "{}", r#"{"n":2}"#, r#"{"n":1}"#], "reused, then replaced after the timeout");
    assert_eq!(dlq.len(), 1, "only the loop timed out");
    assert!(field(&dlq[0], "sluice.error").starts_with("timeout after 100 ms"), "{}", field(&dlq[0], "sluice.error"));
}
