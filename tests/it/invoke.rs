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
