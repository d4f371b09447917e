//! `sluice invoke`: one delivery offline, with no Redis. Its exit code and
//! report give the handler's verdict, and the verdict is what `sluice run`
//! does with the same event.

use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// Runs `sluice invoke PLUGIN --event FILE --json [args]`; returns the exit
/// code and the report.
fn invoke(plugin: &str, event: &Value, args: &[&str]) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    std::fs::write(&file, event.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("invoke")
        .arg(plugins_dir().join(plugin))
        .arg("--event")
        .arg(&file)
        .arg("--json")
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("run sluice invoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

/// A config for handler `h` on `behave.wasm` whose Redis does not exist:
/// `invoke` must not need it.
fn offline_config(dir: &Path, extra: &str) -> String {
    let config = dir.join("config.toml");
    let text = format!(
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[host]\nplugins = \"{}\"\n[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nevents = [\"t\"]\npublish = [\"out\"]\nmax_attempts = 2\n{extra}\n",
        plugins_dir().display()
    );
    std::fs::write(&config, text).unwrap();
    config.display().to_string()
}

fn event(data: Value) -> Value {
    json!({"stream": "in", "type": "t", "data": data, "fields": {"correlation_id": "c-1"}})
}

#[test]
fn invoke_reports_the_verdict_output_and_effects_with_an_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "[handlers.h.config]\nkey = \"the value\"\n");
    let with_config = ["--config", config.as_str()];

    let (code, r) = invoke("behave.wasm", &event(json!({"action": "log", "message": "hello"})), &with_config);
    assert_eq!((code, &r["outcome"], &r["action"]), (0, &json!("ok"), &json!("ack")), "{r:#}");
    let logs = r["logs"].as_array().unwrap();
    assert!(logs.contains(&json!({"source": "log", "level": "info", "message": "hello"})), "{r:#}");
    assert!(logs.contains(&json!({"source": "stdout", "level": "info", "message": "hello"})), "{r:#}");

    let (code, r) = invoke("behave.wasm", &event(json!({"action": "config", "key": "key"})), &with_config);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["publishes"], json!([{"stream": "out", "type": "config", "data": r#"{"key":"the value"}"#}]));

    let (code, r) = invoke("behave.wasm", &event(json!({"action": "kv_incr", "key": "k"})), &with_config);
    assert_eq!((code, &r["kv_writes"]), (0, &json!([{"key": "k", "value": "1"}])), "{r:#}");

    let (code, r) = invoke("behave.wasm", &event(json!({"action": "retry"})), &with_config);
    assert_eq!((code, &r["action"], &r["reason"]), (3, &json!("retry"), &json!("asked to retry")), "{r:#}");
    assert!(r["retry_in_ms"].as_u64().is_some(), "{r:#}");

    let (code, r) = invoke("behave.wasm", &event(json!({"action": "reject", "reason": "no"})), &with_config);
    assert_eq!((code, &r["action"], &r["dead_letter_stream"]), (4, &json!("dead-letter"), &json!("in:dlq")), "{r:#}");

    // A failed delivery commits nothing, so it reports no publishes.
    let refused = json!({"action": "publish", "publish": [{"stream": "out", "type": "x", "data": {}}], "then": "trap"});
    let (code, r) = invoke("behave.wasm", &event(refused), &with_config);
    assert_eq!((code, &r["outcome"], &r["publishes"]), (5, &json!("crash"), &json!([])), "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("asked to trap"), "{r:#}");

    // The handler's limits apply: a loop is stopped at its timeout.
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "timeout_ms = 100");
    let (code, r) = invoke("behave.wasm", &event(json!({"action": "loop"})), &["--config", &config]);
    assert_eq!((code, &r["reason"]), (5, &json!("timeout after 100 ms")), "{r:#}");
    // A fuel budget too: the engine meters fuel for a handler that has one.
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "fuel = 5000000\ntimeout_ms = 10000");
    let (code, r) = invoke("behave.wasm", &event(json!({"action": "loop"})), &["--config", &config]);
    assert_eq!((code, &r["reason"]), (5, &json!("fuel limit 5000000 exceeded")), "{r:#}");

    // A type outside the handler's `events` is not delivered.
    let other = json!({"stream": "in", "type": "other", "data": {"action": "trap"}});
    let (code, r) = invoke("behave.wasm", &other, &with_config);
    assert_eq!((code, &r["outcome"]), (0, &json!("skipped")), "{r:#}");
}

#[test]
fn without_a_config_a_handler_gets_the_defaults_and_no_grants() {
    let publish = json!({"action": "publish", "publish": [{"stream": "out", "type": "x", "data": {}}]});
    let (code, r) = invoke("behave.wasm", &event(publish), &[]);
    assert_eq!((code, &r["handler"], &r["max_attempts"]), (4, &json!("behave"), &json!(5)), "{r:#}");
    assert!(r["reason"].as_str().unwrap().starts_with("publish refused: stream \"out\" is not granted"), "{r:#}");
}

#[test]
fn a_bad_event_file_or_an_unknown_handler_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    std::fs::write(&file, r#"{"stream": "in", "payload": 1}"#).unwrap();
    let config = offline_config(dir.path(), "");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("invoke")
            .arg(plugins_dir().join("behave.wasm"))
            .args(["--event", file.to_str().unwrap()])
            .args(args)
            .env("XDG_CACHE_HOME", dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("event.json: not an event") && stderr.contains("unknown field `payload`"), "{stderr}");
    std::fs::write(&file, r#"{"stream": "in", "type": "t"}"#).unwrap();
    let (code, stderr) = run(&["--config", &config, "--handler", "nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no handler \"nope\" (it has: h)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_decides_what_run_does_with_the_same_events() {
    let redis = RedisServer::start();
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 1\nconcurrency = 1\n";
    let fx = Fixture::new(&redis, "", handlers);
    let cases = [
        json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {"n": 1}}]}),
        json!({"action": "reject", "reason": "bad order"}),
        json!({"action": "retry"}),
        json!({"action": "trap"}),
        json!({"action": "publish", "publish": [{"stream": "forbidden", "type": "x", "data": {}}]}),
    ];
    let host = fx.start();
    let mut conn = redis.conn().await;
    for data in &cases {
        send(&mut conn, "in", "t", data.clone()).await;
    }
    until_finished(&conn, "in", "h", cases.len()).await;
    host.stop().await;
    let dead: Vec<String> = entries(&mut conn, "in:dlq").await.iter().map(|e| field(e, "sluice.error")).collect();
    let published = entries(&mut conn, "out").await;

    let config = fx.config_path.display().to_string();
    let mut offline_dead = Vec::new();
    for data in &cases {
        let (_, r) = invoke("behave.wasm", &event(data.clone()), &["--config", &config]);
        match r["action"].as_str() {
            Some("ack") => assert_eq!(r["publishes"].as_array().unwrap().len(), published.len(), "{r:#}"),
            Some("dead-letter") => offline_dead.push(r["reason"].as_str().unwrap().to_owned()),
            other => panic!("max_attempts = 1 leaves no retries, got {other:?}: {r:#}"),
        }
    }
    assert_eq!(offline_dead, dead, "the same reasons, in the same order");
    assert_eq!(field(&published[0], "data"), r#"{"n":1}"#);
}

/// The same event files, each with its attempt number, through `sluice
/// invoke` and through `sluice run`: every turn comes to the same verdict.
/// Both go through `dispatch::turn`; this pins that they cannot drift (an
/// attempt past `max_attempts` used to run the plugin offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_invoke_decide_alike_on_the_same_event_files() {
    let redis = RedisServer::start();
    let schemas = "[schemas]\n\"checked\" = \"order.json\"\n\n";
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nevents = [\"t\", \"checked\"]\npublish = [\"out\"]\nmax_attempts = 3\nbackoff_ms = 1\nconcurrency = 1\n";
    let fx = Fixture::new(&redis, "consumer = \"host-a\"", &format!("{schemas}{handlers}"));
    std::fs::write(fx.dir.path().join("order.json"), r#"{"type": "object", "required": ["total"]}"#).unwrap();
    let published = json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {"n": 1}}]});
    // (type, data, attempt), those delivered before first (they are read
    // first); the retry is run from its first attempt, so its last turn
    // (attempt 3) is the one compared.
    let cases = [
        ("t", json!({"action": "ok"}), 4),
        ("t", json!({"action": "trap"}), 3),
        ("t", published, 1),
        ("t", json!({"action": "reject", "reason": "bad order"}), 1),
        ("other", json!({"action": "trap"}), 1),
        ("checked", json!({"action": "ok"}), 1),
        ("t", json!({"action": "retry"}), 1),
    ];
    let config = fx.config_path.display().to_string();
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "in", "h").await.unwrap();
    let mut offline = Vec::new();
    for (event_type, data, attempt) in &cases {
        let file = json!({"stream": "in", "type": event_type, "data": data, "attempt": attempt});
        let last = json!({"stream": "in", "type": event_type, "data": data, "attempt": 3});
        let (_, first) = invoke("behave.wasm", &file, &["--config", &config]);
        let (_, end) =
            invoke("behave.wasm", if data["action"] == "retry" { &last } else { &file }, &["--config", &config]);
        offline.push((first["action"].clone(), end["outcome"].clone(), end["reason"].clone()));
        // The same entry in Redis, delivered `attempt - 1` times already to
        // this host's consumer name, as if an earlier run died handling it.
        let id = send(&mut conn, "in", event_type, data.clone()).await;
        for _ in 1..*attempt {
            predeliver(&mut conn, &id).await;
        }
    }
    let actions: Vec<&str> = offline.iter().map(|(a, _, _)| a.as_str().unwrap()).collect();
    assert_eq!(actions, ["dead-letter", "dead-letter", "ack", "dead-letter", "ack", "dead-letter", "retry"]);
    let outcomes: Vec<&str> = offline.iter().map(|(_, o, _)| o.as_str().unwrap()).collect();
    assert_eq!(outcomes, ["exhausted", "crash", "ok", "reject", "skipped", "invalid", "retry"]);

    let host = fx.start();
    until_finished(&conn, "in", "h", cases.len()).await;
    host.stop().await;
    let dead = entries(&mut conn, "in:dlq").await;
    let run_reasons: Vec<String> = dead.iter().map(|e| field(e, "sluice.error")).collect();
    let offline_reasons: Vec<String> = offline
        .iter()
        .filter(|(a, _, r)| a == "dead-letter" || (a == "retry" && r.is_string()))
        .map(|(_, _, r)| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(run_reasons, offline_reasons, "the same reasons, in the same order");
    let out = entries(&mut conn, "out").await;
    assert_eq!(out.len(), 1, "only the acknowledged delivery published");
    assert_eq!(pending(&mut conn, "in", "h").await, 0);
}

/// Delivers entry `id` of `in` once more to consumer `host-a` of group `h`,
/// leaving it pending: a read the first time (`id` must be the oldest entry
/// not yet read), then a claim, which counts as a delivery.
async fn predeliver(conn: &mut redis::aio::MultiplexedConnection, id: &str) {
    let pending: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("h").arg(id).arg(id).arg(1).query_async(conn).await.unwrap();
    let cmd = match pending.is_empty() {
        true => redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("h")
            .arg("host-a")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("in")
            .arg(">")
            .clone(),
        false => redis::cmd("XCLAIM").arg("in").arg("h").arg("host-a").arg(0).arg(id).clone(),
    };
    let _: redis::Value = cmd.query_async(conn).await.unwrap();
}
