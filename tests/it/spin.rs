//! Spin Redis-trigger components run as Sluice handlers, unchanged: the
//! `spin-redis` fixture, built with Spin's own WIT and exporting
//! `fermyon:spin/inbound-redis`, on a real Redis with the host in process.
//! Its `ok` acknowledges, its `err` is retried and then dead-lettered, and a
//! trap is a crash like any handler's.

use crate::support::*;
use serde_json::json;
use sluice::wasm::{FuelMetering, Plugin, PluginError, Runtime};
use std::path::Path;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// The built fixture. Cargo names a library's artifact after the crate with
/// `-` made `_`, so the `spin-redis` crate builds `spin_redis.wasm`.
const PLUGIN: &str = "spin_redis.wasm";

/// The reason a Spin `err` is retried with.
const SPIN_ERROR: &str = "the Spin handler returned an error (fermyon:spin/inbound-redis handle-message)";

const FAST: &str = "claim_idle_ms = 5000";

/// Handler `h` running the Spin fixture on stream `in`, with extra keys.
fn spin(extra: &str) -> String {
    format!("[handlers.h]\nplugin = \"{PLUGIN}\"\nstreams = [\"in\"]\nevents = [\"*\"]\n{extra}\n")
}

/// Waits for the single dead-letter entry of `in` and returns it.
async fn dead_letter(conn: &mut redis::aio::MultiplexedConnection) -> redis::streams::StreamId {
    let mut found = until_entries(conn, "in:dlq", 1).await;
    assert_eq!(found.len(), 1, "exactly one dead-letter entry");
    found.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_acknowledges_the_event() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &spin(""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    // Not JSON: still a message, still `ok`.
    xadd(&mut conn, "in", &[("type", "t"), ("data", "plain text")]).await;
    until_finished(&conn, "in", "h", 2).await;
    until_pending(&conn, "in", "h", 0).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_retried_then_dead_lettered_with_the_spin_reason() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &spin("max_attempts = 3\nbackoff_ms = 10"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = json!({"action": "error"}).to_string();
    let id = xadd(&mut conn, "in", &[("type", "t"), ("data", &data)]).await;
    let dl = dead_letter(&mut conn).await;
    assert_eq!(field(&dl, "sluice.error"), format!("{SPIN_ERROR} (gave up after 3 attempts)"));
    assert_eq!(field(&dl, "sluice.attempts"), "3");
    assert_eq!(field(&dl, "sluice.handler"), "h");
    assert_eq!(field(&dl, "sluice.origin_id"), id);
    assert_eq!(field(&dl, "data"), data);
    until_pending(&conn, "in", "h", 0).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_a_crash_like_any_handlers() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &spin("max_attempts = 2\nbackoff_ms = 10"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "trap"})).await;
    let dl = dead_letter(&mut conn).await;
    let reason = field(&dl, "sluice.error");
    assert!(reason.starts_with("trap: "), "{reason}");
    assert!(reason.contains("asked to trap"), "the guest's panic message is kept: {reason}");
    assert!(reason.ends_with("(gave up after 2 attempts)"), "{reason}");
    assert_eq!(field(&dl, "sluice.attempts"), "2");
    host.stop().await;
}

/// On a stream of another format, a Spin component's payload is the data
/// that format holds: a CloudEvent's `data`, not its envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cloudevents_stream_the_payload_is_the_cloudevents_data() {
    let redis = RedisServer::start();
    let config = format!("[streams.\"in\"]\nformat = \"cloudevents\"\n{}", spin("max_attempts = 1"));
    let fx = Fixture::new(&redis, FAST, &config);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let envelope = |action: &str| {
        json!({"specversion": "1.0", "id": action, "source": "s", "type": "t", "data": {"action": action}}).to_string()
    };
    xadd(&mut conn, "in", &[("data", &envelope("ok"))]).await;
    xadd(&mut conn, "in", &[("data", &envelope("error"))]).await;
    until_finished(&conn, "in", "h", 2).await;
    host.stop().await;
    let dl = dead_letter(&mut conn).await;
    assert!(field(&dl, "data").contains(r#""id":"error""#), "the error event, and only it, failed");
    assert_eq!(field(&dl, "sluice.error"), format!("{SPIN_ERROR} (gave up after 1 attempts)"));
}

/// With `isolation = "reuse"`, one instance serves the messages on either
/// side of an `err` (which returns normally, so the instance is kept), and
/// a trap's instance is replaced. A `second` message succeeds only in an
/// instance that handled one before: in a fresh instance it would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_instances_serve_a_spin_component() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, FAST, &spin("max_attempts = 1\nconcurrency = 1\nisolation = \"reuse\""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    for action in ["ok", "second", "error", "ok", "trap", "ok", "second"] {
        send(&mut conn, "in", "t", json!({"action": action})).await;
    }
    until_finished(&conn, "in", "h", 7).await;
    let dead = until_entries(&conn, "in:dlq", 2).await;
    let reasons: Vec<String> = dead.iter().map(|e| field(e, "sluice.error")).collect();
    assert_eq!(reasons[0], format!("{SPIN_ERROR} (gave up after 1 attempts)"), "{reasons:?}");
    assert!(reasons[1].starts_with("trap: ") && reasons[1].contains("asked to trap"), "{reasons:?}");
    host.stop().await;
    assert_eq!(entries(&mut conn, "in:dlq").await.len(), 2, "the `ok` and `second` messages were acknowledged");
}

/// What the component prints is logged like a Sluice handler's output; seen
/// here through `sluice invoke`, which captures the same log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_stdout_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, json!({"stream": "in", "type": "t", "data": {"action": "ok"}}).to_string()).unwrap();
    let invocation =
        sluice::offline::Invocation { plugin: plugins_dir().join(PLUGIN), event, config: None, handler: None };
    let report = sluice::offline::invoke(&invocation).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report:?}");
    let stdout: Vec<&str> = report.logs.iter().filter(|l| l.source == "stdout").map(|l| l.message.as_str()).collect();
    assert_eq!(stdout, [r#"spin got {"action":"ok"}"#], "{report:?}");
}

/// The fixture is what a Spin developer builds: it exports Spin's
/// interface and imports nothing from Spin's platform, only WASI.
#[test]
fn the_fixture_exports_spins_interface_and_imports_only_wasi() {
    let runtime = Runtime::new().unwrap();
    let path = plugins_dir().join(PLUGIN);
    let component = Component::from_file(runtime.engine(), &path).unwrap();
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(runtime.engine()).map(|(name, _)| name).collect();
    assert_eq!(exports, ["fermyon:spin/inbound-redis"]);
    // `inbound-redis` uses the types of `redis-types`, so that interface is
    // imported too, as in every Spin Redis component; it holds only types,
    // which need nothing from the host.
    for (name, item) in ty.imports(runtime.engine()) {
        if name == "fermyon:spin/redis-types" {
            let ComponentItem::ComponentInstance(instance) = item.ty else { panic!("{name} is not an instance") };
            let items: Vec<_> = instance.exports(runtime.engine()).collect();
            assert!(items.iter().all(|(_, i)| matches!(i.ty, ComponentItem::Type(_))), "{name}: {items:?}");
        } else {
            assert!(name.starts_with("wasi:"), "it imports {name}");
        }
    }
    Plugin::load(&runtime, None, &path, FuelMetering::Off).expect("it loads as a handler");
}

/// A component that imports one of Spin's platform interfaces is refused
/// at load, naming the import. (A component built by hand with just that
/// import, holding one function: the linker refuses it before looking at
/// the exports.)
#[test]
fn a_spin_platform_import_is_refused_by_name() {
    let runtime = Runtime::new().unwrap();
    let bytes = component_importing("fermyon:spin/redis", "publish");
    let error = match Plugin::from_bytes(&runtime, None, Path::new("spin.wasm"), &bytes, FuelMetering::Off) {
        Err(e @ PluginError::Link { .. }) => e.to_string(),
        Err(other) => panic!("not a link error: {other}"),
        Ok(_) => panic!("a component importing fermyon:spin/redis loaded"),
    };
    assert!(error.contains("imports something Sluice does not provide"), "{error}");
    assert!(error.contains("fermyon:spin/redis"), "{error}");

    // Exporting neither interface: both are named.
    let empty = Plugin::from_bytes(&runtime, None, Path::new("empty.wasm"), COMPONENT_HEADER, FuelMetering::Off);
    let error = empty.err().expect("the empty component is refused").to_string();
    assert!(error.contains("sluice:plugin/handler@0.1.0 or Spin's fermyon:spin/inbound-redis"), "{error}");
}

/// A component that exports Spin's interface with another signature is
/// refused at load, not on every delivery.
#[test]
fn a_spin_export_with_another_signature_is_refused_at_load() {
    let runtime = Runtime::new().unwrap();
    let wrong = wat::parse_str(
        r#"(component
            (core module $m (func (export "h") (param i32)))
            (core instance $i (instantiate $m))
            (func $f (param "message" u32) (canon lift (core func $i "h")))
            (instance $redis (export "handle-message" (func $f)))
            (export "fermyon:spin/inbound-redis" (instance $redis)))"#,
    )
    .unwrap();
    let error = match Plugin::from_bytes(&runtime, None, Path::new("wrong.wasm"), &wrong, FuelMetering::Off) {
        Err(e @ PluginError::WrongWorld { .. }) => e.to_string(),
        Err(other) => panic!("not a wrong-world error: {other}"),
        Ok(_) => panic!("a handle-message taking a u32 loaded"),
    };
    assert!(error.contains("is not Spin's `func(message: list<u8>) -> result<_, error>`"), "{error}");
}

/// The start of a component binary: magic, version, layer.
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// A component (binary format) whose only item is an import of instance
/// `interface` exporting `func: func()`.
fn component_importing(interface: &str, func: &str) -> Vec<u8> {
    fn name(s: &str) -> Vec<u8> {
        [&[0x00, s.len() as u8][..], s.as_bytes()].concat()
    }
    fn section(id: u8, body: &[u8]) -> Vec<u8> {
        [&[id, body.len() as u8][..], body].concat()
    }
    // instance type: 2 decls: type 0 = func() (no params, no results); export `func` of type 0.
    let instance = [&[0x42, 0x02, 0x01, 0x40, 0x00, 0x01, 0x00, 0x04][..], &name(func), &[0x01, 0x00]].concat();
    let types = section(0x07, &[&[0x01][..], &instance].concat());
    // 1 import: `interface`, an instance of type 0.
    let imports = section(0x0a, &[&[0x01][..], &name(interface), &[0x05, 0x00]].concat());
    [COMPONENT_HEADER, &types, &imports].concat()
}
