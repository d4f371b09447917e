//! Stream formats against the real libraries (installed by
//! `scripts/interop-libs`): the PyPI `leanmq` 0.2.0 package produces and
//! consumes beside Sluice on LeanMQ-format streams, dead letters included;
//! the CloudEvents SDK writes structured-mode events as Dapr's
//! `pubsub.redis` stores them, and parses what Sluice publishes and
//! dead-letters. Entries that are not their stream's format are
//! dead-lettered unseen; expired ones are acknowledged unseen.

use crate::support::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

/// The Python with `leanmq` and `cloudevents` installed.
fn python() -> PathBuf {
    let python = repo().join("plugins/.tools/interop/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/interop-libs (scripts/test does) to install the libraries these tests run",
        python.display()
    );
    python
}

/// Runs `script` with the interop Python, `PORT` set to `redis`'s port, and
/// returns what it printed, as JSON.
fn run_python(redis: &RedisServer, script: &str) -> Value {
    let port = redis.url().rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let out = Command::new(python()).arg("-c").arg(script).env("PORT", port).output().expect("run python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python failed:\n{script}\nstderr:\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("python printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The leanmq client every script starts with, on the test's Redis.
const LEANMQ: &str = "
import json, os, time
from leanmq import LeanMQ
mq = LeanMQ(redis_host='127.0.0.1', redis_port=int(os.environ['PORT']))
";

/// A `behave` action that publishes one `shipment.requested` for `order`
/// to `stream`.
fn ship(order: &str, stream: &str) -> Value {
    json!({"action": "publish", "publish": [{"stream": stream, "type": "shipment.requested", "data": {"order_id": order}}]})
}

/// The admin listener's `sluice_events_total` for `handler` and `outcome`.
fn events_total(port: u16, handler: &str, outcome: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics");
    let series = format!("sluice_events_total{{handler=\"{handler}\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leanmq_producers_and_consumers_work_beside_a_sluice_handler_dead_letters_included() {
    let redis = RedisServer::start();
    let admin = free_port();
    let config = "
[streams.\"mq:*\"]
format = \"leanmq\"

[handlers.shop]
plugin = \"behave.wasm\"
streams = [\"mq:orders\", \"mq:raw\"]
events = [\"order.*\"]
publish = [\"mq:shipments\"]
max_attempts = 1
";
    let fx = Fixture::new(&redis, &format!("admin = \"127.0.0.1:{admin}\"\nclaim_idle_ms = 5000"), config);
    let host = fx.start();

    // LeanMQ's producer: its queues (and their consumer groups, which read
    // from now on), then four messages. One was sent "a minute ago" with a
    // 5 s ttl: expired. One is of a type the handler does not take.
    let produce = format!("{LEANMQ}
orders, orders_dlq = mq.create_queue_pair('orders')
shipments, _ = mq.create_queue_pair('shipments')
sent = [orders.send_message({{'event_type': 'order.created', 'order_id': 'o-1', **{ship}}})]
sent.append(orders.send_message({{'event_type': 'order.created', 'order_id': 'o-2', 'action': 'reject', 'reason': 'out of stock'}}))
sent.append(orders.send_message({{'event_type': 'user.created', 'user': 'ada', **{skip}}}))
real = time.time
time.time = lambda: real() - 60
sent.append(orders.send_message({{'event_type': 'order.created', 'order_id': 'o-old', **{late}}}, ttl=5))
time.time = real
print(json.dumps(sent))
", ship = ship("o-1", "mq:shipments"), skip = ship("u-1", "mq:shipments"), late = ship("o-old", "mq:shipments"));
    let sent = run_python(&redis, &produce);
    assert_eq!(sent.as_array().unwrap().len(), 4);
    let conn = redis.conn().await;
    until_finished(&conn, "mq:orders", "shop", 4).await;

    // Not a LeanMQ message: dead-lettered unseen, the reason naming the
    // format and the problem.
    let mut conn = redis.conn().await;
    xadd(&mut conn, "mq:raw", &[("data", "not json")]).await;
    let raw = until_entries(&conn, "mq:raw:dlq", 1).await;
    let reason = field(&raw[0], "sluice.error");
    assert!(reason.starts_with("not a leanmq entry: its \"data\" field is not JSON"), "{reason}");
    assert_eq!(field(&raw[0], "data"), "not json", "kept as it was");

    // LeanMQ's consumer reads what the handler published: the message, its
    // type under `event_type`, LeanMQ's metadata taken off.
    let consumed = run_python(
        &redis,
        &format!(
            "{LEANMQ}
q = mq.get_queue('shipments')
got = q.get_messages(count=10, block_for_seconds=5)
q.acknowledge_messages([m.id for m in got])
print(json.dumps([m.data for m in got]))
"
        ),
    );
    assert_eq!(consumed, json!([{"order_id": "o-1", "event_type": "shipment.requested"}]), "only o-1 shipped");

    // LeanMQ's own dead-letter queue holds the rejected message as its
    // move_to_dlq writes one: the failure's reason in `_failures`.
    let dead = run_python(
        &redis,
        &format!(
            "{LEANMQ}
dlq = mq.get_dead_letter_queue('orders')
got = dlq.get_messages(count=10, block_for_seconds=5)
print(json.dumps([{{'id': m.id, 'data': m.data}} for m in got]))
"
        ),
    );
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["data"]["order_id"], "o-2");
    let failures = dead[0]["data"]["_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert!(failures[0]["reason"].as_str().unwrap().contains("out of stock"), "{failures:?}");
    let mut conn = redis.conn().await;
    let stored = entries(&mut conn, "mq:orders:dlq").await;
    assert_eq!(field(&stored[0], "sluice.handler"), "shop", "Sluice's own record rides beside LeanMQ's");

    // LeanMQ's requeue sends it back; Sluice handles it again (and, as it
    // still asks to be rejected, dead-letters it with both failures).
    let requeued = run_python(
        &redis,
        &format!(
            "{LEANMQ}
dlq = mq.get_dead_letter_queue('orders')
print(json.dumps(dlq.requeue_messages(['{id}'], mq.get_queue('orders'))))
",
            id = dead[0]["id"].as_str().unwrap()
        ),
    );
    assert_eq!(requeued, json!(1));
    until_finished(&conn, "mq:orders", "shop", 5).await;
    let again = until_entries(&conn, "mq:orders:dlq", 1).await;
    let last: Value = serde_json::from_str(&field(again.last().unwrap(), "data")).unwrap();
    assert_eq!(last["order_id"], "o-2");
    assert_eq!(last["_failures"].as_array().unwrap().len(), 2, "{last}");

    // Sluice's own redrive reads the same dead letter as LeanMQ's: sent to
    // the handler's inbox, read as a LeanMQ message, rejected once more.
    let out = sluice(&["dlq", "redrive", "--handler", "shop"], &fx.config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let redriven_from = again.last().unwrap().id.clone();
    let third = eventually(SOON, "the redriven message dead-lettered again", || {
        let mut c = conn.clone();
        let from = redriven_from.clone();
        async move {
            let e = entries(&mut c, "mq:orders:dlq").await;
            e.last().filter(|d| d.id != from).cloned()
        }
    })
    .await;
    let message: Value = serde_json::from_str(&field(&third, "data")).unwrap();
    assert_eq!(message["_failures"].as_array().unwrap().len(), 3, "{message}");
    assert!(field(&third, "sluice.history").contains("out of stock"));

    // The expired message was acknowledged without running, and counted.
    assert_eq!(events_total(admin, "shop", "expired"), 1.0);
    assert_eq!(events_total(admin, "shop", "skipped"), 1.0);
    // (The redrive left the raw entry's dead letter: it would fail again.)
    assert_eq!(events_total(admin, "shop", "malformed"), 1.0);
    assert_eq!(entries(&mut conn, "mq:raw:dlq").await.len(), 1);
    assert_eq!(pending(&mut conn, "mq:orders", "shop").await, 0);
    host.stop().await;

    // An event file written by hand for `sluice invoke`: its type and data
    // are written as the stream's LeanMQ message first.
    let invoke = |event: Value| {
        let file = fx.dir.path().join("event.json");
        std::fs::write(&file, event.to_string()).unwrap();
        let (plugin, file) = (plugins_dir().join("behave.wasm"), file.display().to_string());
        let out =
            sluice(&["invoke", &plugin.display().to_string(), "--event", &file, "--handler", "shop"], &fx.config_path);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let by_hand = |t: &str| json!({"stream": "mq:orders", "type": t, "data": {"action": "reject"}});
    let (code, report) = invoke(by_hand("order.created"));
    assert_eq!(code, Some(4), "{report}");
    let (code, report) = invoke(by_hand("user.created"));
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("skipped"), "{report}");
}

/// The CloudEvents SDK's prelude: a structured-mode writer and reader.
const CLOUDEVENTS: &str = "
import json, os, redis
from cloudevents.core.v1.event import CloudEvent
from cloudevents.core.formats.json import JSONFormat
r = redis.Redis(host='127.0.0.1', port=int(os.environ['PORT']))
fmt = JSONFormat()
def dapr_publish(topic, attributes, data):
    # As Dapr's pubsub.redis stores a message: the CloudEvent in `data`,
    # the request metadata in `metadata`.
    event = CloudEvent({'source': 'checkout', 'topic': topic, 'pubsubname': 'pubsub', **attributes}, data)
    return r.xadd(topic, {'data': fmt.write(event), 'metadata': json.dumps({'ttlInSeconds': '60'})}).decode()
def parse(raw):
    event = fmt.read(CloudEvent, raw)
    return {'attributes': {k: str(v) for k, v in event.get_attributes().items()}, 'data': event.get_data()}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_in_daprs_envelope_are_read_and_what_sluice_writes_parses_with_the_sdk() {
    let redis = RedisServer::start();
    let config = "
[streams.\"dapr.*\"]
format = \"cloudevents\"

[handlers.ce]
plugin = \"behave.wasm\"
streams = [\"dapr.orders\"]
events = [\"order.*\"]
publish = [\"dapr.shipments\"]
max_attempts = 1
";
    let fx = Fixture::new(&redis, "claim_idle_ms = 5000", config);
    let host = fx.start();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let produce = format!(
        "{CLOUDEVENTS}
ids = [dapr_publish('dapr.orders', {{'type': 'order.created', 'traceparent': '{trace}', 'correlationid': 'c-7', 'datacontenttype': 'application/json'}}, {ship})]
ids.append(dapr_publish('dapr.orders', {{'type': 'order.created', 'datacontenttype': 'application/json'}}, {{'order_id': 'o-2', 'action': 'reject', 'reason': 'card declined'}}))
ids.append(dapr_publish('dapr.orders', {{'type': 'order.created', 'expiration': '2020-01-01T00:00:00Z'}}, {late}))
print(json.dumps(ids))
",
        ship = json_py(&ship("o-1", "dapr.shipments")),
        late = json_py(&ship("o-old", "dapr.shipments")),
    );
    let ids = run_python(&redis, &produce);
    let mut conn = redis.conn().await;
    // Not a CloudEvent (no specversion, id, source, type): dead-lettered
    // unseen, with a reason naming the format and the problem.
    xadd(&mut conn, "dapr.orders", &[("data", r#"{"hello": "world"}"#)]).await;
    until_finished(&conn, "dapr.orders", "ce", 4).await;

    // What the handler published parses with the SDK: its type, its data,
    // its source, and the lineage (same trace, the correlation id kept, the
    // cause's entry id).
    let shipped = until_entries(&conn, "dapr.shipments", 1).await;
    assert_eq!(shipped.len(), 1, "the expired order shipped nothing");
    let raw = field(&shipped[0], "data");
    let parsed = run_python(&redis, &format!("{CLOUDEVENTS}\nprint(json.dumps(parse({raw:?})))"));
    let attributes = &parsed["attributes"];
    assert_eq!(attributes["type"], "shipment.requested");
    assert_eq!(attributes["source"], "ce");
    assert_eq!(attributes["specversion"], "1.0");
    assert_eq!(attributes["correlationid"], "c-7");
    assert_eq!(attributes["causationid"], ids[0]);
    assert_eq!(attributes["datacontenttype"], "application/json");
    let child = attributes["traceparent"].as_str().unwrap();
    assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child != trace, "{child}");
    assert_eq!(parsed["data"], json!({"order_id": "o-1"}));

    // The rejected event's dead letter keeps Dapr's envelope, which the SDK
    // still parses, beside Sluice's record of the failure.
    let dead = until_entries(&conn, "dapr.orders:dlq", 2).await;
    assert_eq!(dead.len(), 2, "the rejected event and the entry that is no CloudEvent");
    // (Handled at once, the two may have failed in either order.)
    let (rejected, malformed) = match field(&dead[0], "sluice.error").contains("card declined") {
        true => (&dead[0], &dead[1]),
        false => (&dead[1], &dead[0]),
    };
    assert!(field(rejected, "sluice.error").contains("card declined"));
    assert_eq!(field(rejected, "metadata"), r#"{"ttlInSeconds": "60"}"#);
    let raw = field(rejected, "data");
    let parsed = run_python(&redis, &format!("{CLOUDEVENTS}\nprint(json.dumps(parse({raw:?})))"));
    assert_eq!(parsed["attributes"]["type"], "order.created");
    assert_eq!(parsed["data"]["order_id"], "o-2");
    let reason = field(malformed, "sluice.error");
    assert!(reason.starts_with("not a cloudevents entry: its CloudEvent has no \"specversion\""), "{reason}");
    assert_eq!(field(malformed, "sluice.attempts"), "1");
    assert_eq!(pending(&mut conn, "dapr.orders", "ce").await, 0);
    host.stop().await;

    // The operator's tools read the envelope too: `dlq list` gives the
    // CloudEvent's type, and the event `dlq show --json` saves runs offline
    // with `sluice invoke` as `run` ran it (rejected: exit code 4).
    let sluice = |args: &[&str]| {
        let out = sluice(args, &fx.config_path);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, listed, err) = sluice(&["dlq", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let types: Vec<&str> = listed.iter().map(|d| d["event"]["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"order.created"), "{listed:?}");
    let (code, saved, err) = sluice(&["dlq", "show", &rejected.id, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let plugin = plugins_dir().join("behave.wasm");
    let invoke = |event: &str| {
        let file = fx.dir.path().join("event.json");
        std::fs::write(&file, event).unwrap();
        let plugin = plugin.display().to_string();
        sluice(&["invoke", &plugin, "--event", &file.display().to_string(), "--handler", "ce"])
    };
    let (code, report, err) = invoke(&saved);
    assert_eq!(code, Some(4), "{report}{err}");
    assert!(report.contains("card declined"), "{report}");
    // An event file written by hand, with just a type and data, is written
    // as the stream's CloudEvent first.
    let by_hand = |t: &str| json!({"stream": "dapr.orders", "type": t, "data": {"action": "reject"}}).to_string();
    assert_eq!(invoke(&by_hand("order.created")).0, Some(4));
    let (code, report, _) = invoke(&by_hand("user.created"));
    assert_eq!(code, Some(0), "not for this handler: {report}");
    assert!(report.contains("skipped"), "{report}");
}

/// `value` as a Python literal (JSON's `true`/`false`/`null` aside, which
/// these tests do not use).
fn json_py(value: &Value) -> String {
    value.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_publish_writes_in_the_streams_format() {
    let redis = RedisServer::start();
    let config = "
[streams.\"mq:*\"]
format = \"leanmq\"
type_key = \"kind\"

[streams.\"dapr.*\"]
format = \"cloudevents\"
";
    let fx = Fixture::new(&redis, "", config);
    let publish = |stream: &str, data: &str| {
        let args = ["publish", stream, "--type", "order.created", "--data", data, "--field", "correlation_id=c-3"];
        sluice(&args, &fx.config_path)
    };
    let out = publish("mq:orders", r#"{"order_id":"o-1"}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let consumed = run_python(
        &redis,
        &format!(
            "{LEANMQ}
q = mq.create_queue_pair('orders')[0]
import redis
redis.Redis(host='127.0.0.1', port=int(os.environ['PORT'])).xgroup_setid('mq:orders', 'orders-group', '0')
print(json.dumps([m.data for m in q.get_messages(count=10, block_for_seconds=1)]))
"
        ),
    );
    assert_eq!(consumed, json!([{"order_id": "o-1", "kind": "order.created"}]));

    let out = publish("dapr.orders", r#"{"order_id":"o-2"}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut conn = redis.conn().await;
    let raw = field(&entries(&mut conn, "dapr.orders").await[0], "data");
    let parsed = run_python(&redis, &format!("{CLOUDEVENTS}\nprint(json.dumps(parse({raw:?})))"));
    assert_eq!(parsed["attributes"]["type"], "order.created");
    assert_eq!(parsed["attributes"]["correlationid"], "c-3");
    assert_eq!(parsed["data"], json!({"order_id": "o-2"}));

    // A LeanMQ message is a JSON object: anything else is refused, and
    // nothing is written.
    let out = publish("mq:orders", "[1, 2]");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stream mq:orders is in leanmq format"), "{stderr}");
    assert_eq!(entries(&mut conn, "mq:orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_ingress_writes_in_the_streams_format() {
    let redis = RedisServer::start();
    let port = free_port();
    let host =
        format!("ingress = \"127.0.0.1:{port}\"\ningress_token = \"t0ken\"\ningress_streams = [\"mq:*\", \"dapr.*\"]");
    let config = "[streams.\"mq:*\"]\nformat = \"leanmq\"\n[streams.\"dapr.*\"]\nformat = \"cloudevents\"\n";
    let fx = Fixture::new(&redis, &host, config);
    // The real binary: the ingress's metrics are per process, and another
    // test in this one counts them.
    let _host = Hosts(vec![fx.spawn_binary()]);
    eventually(SOON, "the ingress listening", || async { std::net::TcpStream::connect(("127.0.0.1", port)).ok() })
        .await;
    let post = |stream: &str, body: Value| {
        let auth = [("Authorization", "Bearer t0ken"), ("X-Correlation-Id", "c-5")];
        http_json(port, "POST", &format!("/v1/streams/{stream}/events"), &auth, body.to_string().as_bytes())
    };
    let (code, answer) = post("dapr.orders", json!({"type": "order.created", "data": {"order_id": "o-1"}}));
    assert_eq!(code, 201, "{answer}");
    let mut conn = redis.conn().await;
    let raw = field(&entries(&mut conn, "dapr.orders").await[0], "data");
    let parsed = run_python(&redis, &format!("{CLOUDEVENTS}\nprint(json.dumps(parse({raw:?})))"));
    assert_eq!(parsed["attributes"]["type"], "order.created");
    assert_eq!(parsed["attributes"]["correlationid"], "c-5");
    assert_eq!(parsed["data"], json!({"order_id": "o-1"}));

    let (code, answer) = post("mq:orders", json!({"type": "order.created", "data": {"order_id": "o-2"}}));
    assert_eq!(code, 201, "{answer}");
    let message: Value = serde_json::from_str(&field(&entries(&mut conn, "mq:orders").await[0], "data")).unwrap();
    assert_eq!((message["event_type"].as_str(), message["order_id"].as_str()), (Some("order.created"), Some("o-2")));
    assert!(message["_metadata"]["id"].is_string(), "{message}");
    // Not a JSON object: no LeanMQ message, refused with the reason.
    let (code, answer) = post("mq:orders", json!({"type": "order.created", "data": [1, 2]}));
    assert_eq!(code, 422, "{answer}");
    assert!(answer.to_string().contains("leanmq format"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_format_is_not_set_is_named_in_a_warning() {
    let redis = RedisServer::start();
    let handler = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"dapr.orders\"]\nevents = [\"order.*\"]\n";
    let fx = Fixture::new(&redis, "", handler);
    let mut conn = redis.conn().await;
    let ce = r#"{"specversion":"1.0","id":"1","source":"checkout","type":"order.created","data":{}}"#;
    xadd(&mut conn, "dapr.orders", &[("data", ce), ("metadata", "{}")]).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&fx.config_path)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _host = Hosts(vec![child]);
    // Its lines, as they come, on a thread (the pipe blocks).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let warning = eventually(SOON, "the warning naming the stream's format", || {
        let line = rx.try_iter().find(|l| l.contains("look like cloudevents entries"));
        async move { line }
    })
    .await;
    assert!(warning.contains(r#"[streams."dapr.orders"] format = "cloudevents""#), "{warning}");
    assert!(warning.contains("WARN") && warning.contains("group=h"), "{warning}");
}

/// `order_by = "data.KEY"` on a CloudEvents stream keys each event by its
/// CloudEvent's data: a retrying key holds back its later events, and only
/// those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_a_key_of_the_cloudevents_data_holds_back_only_a_retrying_key() {
    let redis = RedisServer::start();
    let config = "
[streams.\"dapr.*\"]
format = \"cloudevents\"

[handlers.h]
plugin = \"behave.wasm\"
streams = [\"dapr.ledger\"]
publish = [\"out\"]
order_by = \"data.account\"
concurrency = 8
max_attempts = 2
";
    let fx = Fixture::new(&redis, "claim_idle_ms = 5000", config);
    let host = fx.start();
    let mut conn = redis.conn().await;
    // Key a: posting 2 always fails; after its one retry (400 ms later) it
    // is dead-lettered. Key b's postings come after it in the stream.
    let postings =
        [("a", 1, 0), ("a", 2, 99), ("a", 3, 0), ("a", 4, 0)].into_iter().chain((1..=5).map(|s| ("b", s, 0)));
    for (account, seq, fail) in postings {
        let posting =
            json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "fail": fail, "delay_ms": 400});
        let ce = json!({"specversion": "1.0", "id": format!("{account}-{seq}"), "source": "bank", "type": "posting", "data": posting});
        xadd(&mut conn, "dapr.ledger", &[("data", &ce.to_string())]).await;
    }
    until_finished(&conn, "dapr.ledger", "h", 9).await;
    host.stop().await;
    let dead = entries(&mut conn, "dapr.ledger:dlq").await;
    assert_eq!(dead.len(), 1);
    let dead_ms = id_ms(&dead[0].id);
    let out = entries(&mut conn, "out").await;
    let committed = |account: &str| ledger_commits(&out, account);
    let a = committed("a");
    assert_eq!(a.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(1, 0), (3, 1), (4, 3)], "{a:?}");
    assert!(a[1].2 >= dead_ms, "posting a/3 ran before a/2 was dead-lettered: {a:?}, dead letter at {dead_ms}");
    let b = committed("b");
    assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(b[4].2 < dead_ms, "key b waited for key a's retry: {b:?}, dead letter at {dead_ms}");
}

/// What a handler publishes to a LeanMQ stream must be a JSON object, and
/// its schema is checked on the message its stream's handlers will get
/// (which holds the type): the publish says so at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_leanmq_stream_is_checked_as_the_message_it_will_be() {
    let redis = RedisServer::start();
    let schema = tempfile::NamedTempFile::new().unwrap();
    // The message must name its type: true of what reaches a LeanMQ stream's
    // handlers, though the handler's data does not hold it.
    std::fs::write(schema.path(), r#"{"type": "object", "required": ["event_type", "order_id"]}"#).unwrap();
    let config = format!(
        "[schemas]\n\"shipment.*\" = \"{}\"\n\n[streams.\"mq:*\"]\nformat = \"leanmq\"\n\n[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"mq:shipments\"]\nmax_attempts = 1\n",
        schema.path().display()
    );
    let fx = Fixture::new(&redis, "claim_idle_ms = 5000", &config);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let publish = |data: Value| json!({"action": "publish", "publish": [{"stream": "mq:shipments", "type": "shipment.requested", "data": data}]});
    send(&mut conn, "in", "t", publish(json!({"order_id": "o-1"}))).await;
    send(&mut conn, "in", "t", publish(json!([1, 2]))).await;
    until_finished(&conn, "in", "h", 2).await;
    host.stop().await;
    let shipped = entries(&mut conn, "mq:shipments").await;
    assert_eq!(shipped.len(), 1);
    let message: Value = serde_json::from_str(&field(&shipped[0], "data")).unwrap();
    assert_eq!(
        (message["order_id"].as_str(), message["event_type"].as_str()),
        (Some("o-1"), Some("shipment.requested"))
    );
    let dead = entries(&mut conn, "in:dlq").await;
    assert_eq!(dead.len(), 1);
    let reason = field(&dead[0], "sluice.error");
    assert!(
        reason.contains(r#"stream "mq:shipments" is in leanmq format: a LeanMQ message is a JSON object"#),
        "{reason}"
    );
}
