//! `[schemas]`: an event that fails its type's JSON Schema is refused by
//! `sluice publish` and by a handler's `publish`, and dead-lettered with the
//! validation error without its plugin running. Schema files reload live.

use crate::support::*;
use serde_json::{Value, json};
use sluice::reload::ReloadReport;
use std::process::{Command, Output};
use tokio::sync::mpsc::UnboundedReceiver;

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["order_id", "total"],
  "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}}
}"#;

/// The `[schemas]` table every test here uses: order events have a schema,
/// others none.
const SCHEMAS: &str = "[schemas]\n\"order.*\" = \"schemas/order.json\"\n\n";

/// A fixture whose config starts with [`SCHEMAS`], then `handlers`; the
/// schema file holds [`ORDER_SCHEMA`].
fn fixture(redis: &RedisServer, handlers: &str) -> Fixture {
    let fx = Fixture::new(redis, "", &format!("{SCHEMAS}{handlers}"));
    std::fs::create_dir(fx.dir.path().join("schemas")).unwrap();
    write_schema(&fx, ORDER_SCHEMA);
    fx
}

fn write_schema(fx: &Fixture, text: &str) {
    let file = fx.dir.path().join("schemas/order.json");
    // Atomically, as an editor saves: the host never reads half a file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, file).unwrap();
}

fn sluice(args: &[&str], fx: &Fixture) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(&fx.config_path)
        .env("XDG_CACHE_HOME", fx.dir.path())
        .output()
        .expect("run sluice")
}

/// Handler `name` on stream `orders`, publishing to `out`, one event at a
/// time (so its kv count is exact). Each test names its own, as the metrics
/// registry is shared by the whole test process.
fn handler(name: &str) -> String {
    format!(
        "[handlers.{name}]\nplugin = \"behave.wasm\"\nstreams = [\"orders\"]\npublish = [\"out\"]\nmax_attempts = 3\nconcurrency = 1\n"
    )
}

/// A `behave` event that counts its deliveries in kv and publishes the count.
fn counted(extra: Value) -> Value {
    let mut data = json!({"action": "kv_incr", "key": "seen", "out": "out"});
    data.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    data
}

async fn kv_count(conn: &mut redis::aio::MultiplexedConnection, handler: &str) -> Option<String> {
    redis::cmd("GET").arg(format!("sluice:kv:{handler}:seen")).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_is_dead_lettered_with_the_validation_error_and_its_plugin_never_runs() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("invalid_h"));
    let mut conn = redis.conn().await;
    let host = fx.start();
    send(&mut conn, "orders", "order.created", counted(json!({"order_id": "o-1", "total": 1}))).await;
    let bad = send(&mut conn, "orders", "order.created", counted(json!({"order_id": "o-2", "total": "lots"}))).await;
    let not_json = xadd(&mut conn, "orders", &[("type", "order.paid"), ("data", "{oops")]).await;
    // No schema for this type: delivered whatever its data.
    send(&mut conn, "orders", "user.created", counted(json!({"total": "lots"}))).await;
    until_finished(&conn, "orders", "invalid_h", 4).await;
    host.stop().await;

    let dead = entries(&mut conn, "orders:dlq").await;
    let mut reasons: Vec<(String, String, String)> = dead
        .iter()
        .map(|e| (field(e, "sluice.origin_id"), field(e, "sluice.error"), field(e, "sluice.attempts")))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(
        reasons[0],
        (
            bad,
            r#"invalid order.created event: /total: "lots" is not of type "number" (schema schemas/order.json)"#.into(),
            "1".into()
        ),
        "dead-lettered at once with the validation error"
    );
    assert_eq!(reasons[1].0, not_json);
    assert!(
        reasons[1].1.starts_with("invalid order.paid event: data is not JSON (key must be a string at line 1 column 2"),
        "{reasons:?}"
    );
    // Only the valid order and the unchecked type ran: two deliveries counted.
    assert_eq!(kv_count(&mut conn, "invalid_h").await.as_deref(), Some("2"), "the plugin ran on no invalid event");
    assert_eq!(entries(&mut conn, "out").await.len(), 2);
    let metrics = sluice::metrics::exposition(&[]);
    assert!(metrics.contains("sluice_events_total{handler=\"invalid_h\",outcome=\"invalid\"} 2\n"), "{metrics}");
    assert!(metrics.contains("sluice_events_total{handler=\"invalid_h\",outcome=\"ok\"} 2\n"), "{metrics}");
}

#[test]
fn sluice_publish_refuses_an_invalid_event_and_adds_nothing() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("schema_h"));
    let out = sluice(&["publish", "orders", "--type", "order.created", "--data", r#"{"order_id": "o-1"}"#], &fx);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            r#"refused, nothing was published: invalid order.created event: "total" is a required property (schema schemas/order.json)"#
        ),
        "{stderr}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut conn = rt.block_on(redis.conn());
    assert!(rt.block_on(entries(&mut conn, "orders")).is_empty(), "nothing added");

    let out =
        sluice(&["publish", "orders", "--type", "order.created", "--data", r#"{"order_id": "o-1", "total": 2}"#], &fx);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rt.block_on(entries(&mut conn, "orders")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cannot_publish_an_event_that_fails_its_schema() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("schema_h"));
    let mut conn = redis.conn().await;
    let host = fx.start();
    let item =
        |total: Value| json!({"stream": "out", "type": "order.created", "data": {"order_id": "o-1", "total": total}});
    send(&mut conn, "orders", "t", json!({"action": "publish", "publish": [item(json!("lots"))]})).await;
    send(&mut conn, "orders", "t", json!({"action": "publish", "publish": [item(json!(3))]})).await;
    until_finished(&conn, "orders", "schema_h", 2).await;
    host.stop().await;

    let dead = entries(&mut conn, "orders:dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        field(&dead[0], "sluice.error"),
        r#"publish refused: invalid order.created event: /total: "lots" is not of type "number" (schema schemas/order.json)"#,
        "the handler got the validation error back from publish"
    );
    let out = entries(&mut conn, "out").await;
    assert_eq!(out.len(), 1, "only the valid event was published");
    assert_eq!(field(&out[0], "data"), r#"{"order_id":"o-1","total":3}"#);
}

#[test]
fn invoke_reports_an_invalid_event_without_running_the_plugin() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("schema_h"));
    let file = fx.dir.path().join("event.json");
    let data = json!({"action": "log", "message": "the-plugin-ran", "order_id": "o-1"});
    std::fs::write(&file, json!({"stream": "orders", "type": "order.created", "data": data}).to_string()).unwrap();
    let plugin = plugins_dir().join("behave.wasm");
    let out = sluice(&["invoke", plugin.to_str().unwrap(), "--event", file.to_str().unwrap()], &fx);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("result    invalid (the data fails its type's schema): the plugin did not run"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"run would dead-letter it to orders:dlq: invalid order.created event: "total" is a required property"#
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("the-plugin-ran"), "the plugin logged nothing: {stdout}");
}

#[test]
fn a_bad_schema_is_rejected_with_the_config_line_and_the_schema_files_line() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("schema_h"));
    write_schema(&fx, "{\n  \"type\": \"object\",\n}\n");
    let out = sluice(&["check"], &fx);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let config_line =
        std::fs::read_to_string(&fx.config_path).unwrap().lines().position(|l| l.starts_with("\"order.*\"")).unwrap()
            + 1;
    let expected = format!(
        "config.toml:{config_line}:13: schemas.order.*: schema file schemas/order.json is not JSON: trailing comma at line 3 column 1"
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
}

async fn next_report(reports: &mut UnboundedReceiver<ReloadReport>) -> ReloadReport {
    tokio::time::timeout(SOON, reports.recv()).await.expect("a reload in time").expect("host running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_schema_file_reloads_it_and_a_broken_edit_keeps_the_old_one() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("schema_h"));
    let mut conn = redis.conn().await;
    let (host, mut reports) = fx.start_watching().await;
    let lots = || counted(json!({"order_id": "o-1", "total": "lots"}));
    send(&mut conn, "orders", "order.created", lots()).await;
    until_entries(&conn, "orders:dlq", 1).await;
    // Sent back while the schema still refuses it: left where it is.
    let out = sluice(&["dlq", "redrive", "--handler", "schema_h"], &fx);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("redrove 0 entr(ies)"), "{stdout}");
    assert!(stdout.contains("left 1 entr(ies) whose data still fails its type's schema"), "{stdout}");
    assert_eq!(entries(&mut conn, "orders:dlq").await.len(), 1);

    // A broken edit is rejected, naming the file; the old schema still applies.
    write_schema(&fx, "{\"type\": ");
    match next_report(&mut reports).await {
        ReloadReport::Rejected { error } => {
            assert!(error.contains("schema file schemas/order.json is not JSON: EOF while parsing"), "{error}")
        }
        other => panic!("expected a rejected reload, got {other:?}"),
    }
    send(&mut conn, "orders", "order.created", lots()).await;
    until_entries(&conn, "orders:dlq", 2).await;

    // A fixed schema applies live: the dead letters, sent back, now pass.
    write_schema(
        &fx,
        &ORDER_SCHEMA.replace(r#""total": {"type": "number"}"#, r#""total": {"type": ["number", "string"]}"#),
    );
    assert!(matches!(next_report(&mut reports).await, ReloadReport::Applied { .. }));
    let out = sluice(&["dlq", "redrive", "--handler", "schema_h"], &fx);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_entries(&conn, "out", 2).await;
    host.stop().await;
    assert!(entries(&mut conn, "orders:dlq").await.is_empty());
    assert_eq!(kv_count(&mut conn, "schema_h").await.as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_before_its_file_exists_applies_once_the_file_is_written() {
    let redis = RedisServer::start();
    let fx = fixture(&redis, &handler("late_h"));
    let mut conn = redis.conn().await;
    let (host, mut reports) = fx.start_watching().await;
    // The config names a schema file not written yet: rejected.
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let more = SCHEMAS.replace("\n\n", "\n\"user.*\" = \"schemas/user.json\"\n\n");
    std::fs::write(&fx.config_path, text.replace(SCHEMAS, &more)).unwrap();
    match next_report(&mut reports).await {
        ReloadReport::Rejected { error } => {
            assert!(error.contains("cannot read schema file schemas/user.json"), "{error}")
        }
        other => panic!("expected a rejected reload, got {other:?}"),
    }
    // Writing the file is the fix: the config need not be touched again.
    std::fs::write(fx.dir.path().join("schemas/user.json"), r#"{"required": ["user_id"]}"#).unwrap();
    assert!(matches!(next_report(&mut reports).await, ReloadReport::Applied { .. }));
    send(&mut conn, "orders", "user.created", json!({"action": "ok"})).await;
    let dead = until_entries(&conn, "orders:dlq", 1).await;
    host.stop().await;
    assert_eq!(
        field(&dead[0], "sluice.error"),
        r#"invalid user.created event: "user_id" is a required property (schema schemas/user.json)"#
    );
}
