//! The `sluice` binary as users run it: `check`, `publish`, and `run` on the
//! embedded Redis it starts itself, stopped with SIGTERM.

use crate::support::*;
use serde_json::json;
use std::process::Command;

#[test]
fn check_accepts_the_shipped_config() {
    plugins_dir();
    let out = sluice(&["check"], &repo().join("config.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("11 handler(s), all plugins load"), "{stdout}");
}

#[test]
fn check_reports_a_config_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[defaults]\nmax_attempts = 0\n").unwrap();
    let out = sluice(&["check"], &config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.toml:2:16: defaults.max_attempts: must be at least 1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_entry_id() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", "");
    let out = sluice(&["publish", "orders", "--type", "order.created", "--data", "{\"total\":1}"], &fx.config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut conn = redis.conn().await;
    let stored = entries(&mut conn, "orders").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(field(&stored[0], "type"), "order.created");
}

/// A config with no Redis URL, so `sluice` uses its embedded server.
fn embedded_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        "[host]\nplugins = \"{}\"\n[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n",
        plugins_dir().display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_an_embedded_redis_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    // publish before run: starts the embedded server, writes, stops it again.
    let data = r#"{"action":"publish","publish":[{"stream":"out","type":"done","data":{}}]}"#;
    let out = sluice(&["publish", "in", "--type", "t", "--data", data], &config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut host = Command::new(env!("CARGO_BIN_EXE_sluice")).args(["run", "--config"]).arg(&config).spawn().unwrap();
    let socket = dir.path().join(".sluice/redis.sock");
    let url = format!("redis+unix://{}", socket.display());
    let out_len = eventually(SOON, "the event published before run was handled", || {
        let url = url.clone();
        async move {
            let mut conn = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
            // Not yet, while the server is still loading its data (LOADING).
            let n: usize = redis::cmd("XLEN").arg("out").query_async(&mut conn).await.ok()?;
            (n == 1).then_some(n)
        }
    })
    .await;
    assert_eq!(out_len, 1);
    let status = terminate(&mut host).await;
    assert!(status.success(), "exit status {status}");
    // The embedded server was stopped with the host, its data kept in
    // .sluice/ (AOF): a new publish starts it again and the stream is there.
    let out = sluice(&["publish", "in", "--type", "t"], &config);
    assert!(out.status.success());
    let embedded = sluice::embedded::EmbeddedRedis::ensure(&dir.path().join(".sluice")).await.unwrap();
    assert!(embedded.owned(), "the host stopped the server it started");
    let mut conn =
        redis::Client::open(embedded.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    assert_eq!(entries(&mut conn, "in").await.len(), 2, "both events survived the restarts");
    assert_eq!(entries(&mut conn, "out").await.len(), 1);
    embedded.stop().await;
}

/// Whether the embedded server at `url` answers PING.
async fn answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
    redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
}

/// A host that joins the embedded server a waiting `sluice request` started
/// keeps it when the request gives up and exits; the host, the last to
/// leave, stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_redis_stays_up_while_a_host_uses_it_and_the_last_to_leave_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let url = format!("redis+unix://{}", dir.path().join(".sluice/redis.sock").display());
    // Nothing answers on this stream: the request waits its 3 s, then exits.
    let mut request = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["request", "nobody", "--type", "t", "--timeout-ms", "3000", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(SOON, "the request started the embedded Redis", || async { answers(&url).await.then_some(()) }).await;
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let host = Command::new(env!("CARGO_BIN_EXE_sluice")).args(["run", "--config"]).arg(&config).spawn().unwrap();
    let mut hosts = Hosts(vec![host]);
    let data = r#"{"action":"publish","publish":[{"stream":"out","type":"done","data":{}}]}"#;
    send_raw(&mut conn, "in", data).await;
    until_entries(&conn, "out", 1).await;
    let status = eventually(SOON, "the request gave up", || {
        let s = request.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert_eq!(status.code(), Some(1), "no reply within the wait");
    // The server the request started is still the host's.
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.expect("the server stayed up");
    assert_eq!(pong, "PONG");
    send_raw(&mut conn, "in", data).await;
    until_entries(&conn, "out", 2).await;
    drop(conn);
    assert!(terminate(&mut hosts.0[0]).await.success());
    assert!(!answers(&url).await, "the host, the last to leave, stopped the server");
}

async fn send_raw(conn: &mut redis::aio::MultiplexedConnection, stream: &str, data: &str) {
    xadd(conn, stream, &[("type", "t"), ("data", data)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_event_span_with_its_correlation_id() {
    let redis = RedisServer::start();
    let data = json!({"action": "reject", "reason": "no"}).to_string();
    let (id, lines) = json_logs_of_one_event(&redis, "warn", &data, Some("in:dlq")).await;
    let dead = lines.iter().find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("dead-lettered")));
    let span = &dead.unwrap_or_else(|| panic!("no dead-letter line in {lines:#?}"))["span"];
    assert_eq!((&span["handler"], &span["id"], &span["correlation_id"]), (&json!("h"), &json!(id), &json!("c-42")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_own_lines_carry_the_event_span() {
    // The span is made by an event's first line (logging::EventSpan): here
    // the handler's own, through the host's log import and its stdout.
    let redis = RedisServer::start();
    let data = json!({"action": "log", "message": "said-by-the-plugin", "out": "done"}).to_string();
    let (id, lines) = json_logs_of_one_event(&redis, "info", &data, None).await;
    let said: Vec<_> = lines.iter().filter(|l| l["fields"]["message"] == json!("said-by-the-plugin")).collect();
    let targets: Vec<_> = said.iter().map(|l| l["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["sluice::plugin", "sluice::plugin::stdout"], "{lines:#?}");
    for line in said {
        let span = &line["span"];
        assert_eq!(
            (&span["name"], &span["handler"], &span["stream"], &span["id"], &span["correlation_id"]),
            (&json!("event"), &json!("h"), &json!("in"), &json!(id), &json!("c-42")),
            "{line:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_can_enable_lines_by_the_event_span() {
    // A filter by span can only see a span that exists: with one, every
    // event's span is made at once rather than by its first line.
    let redis = RedisServer::start();
    let data = json!({"action": "ok"}).to_string();
    let (id, lines) = json_logs_of_one_event(&redis, "warn,[event{handler=h}]=debug", &data, None).await;
    let handled = lines.iter().find(|l| l["fields"]["message"] == json!("handled"));
    let handled = handled.unwrap_or_else(|| panic!("no debug line about the event in {lines:#?}"));
    assert_eq!((&handled["span"]["handler"], &handled["span"]["id"]), (&json!("h"), &json!(id)), "{handled:#}");
}

/// The JSON log lines, at `rust_log`, of a host whose handler `h` (behave)
/// got one event of `data` with correlation id `c-42` (and its id), once
/// the stream `wait_for` has an entry (`None`: once the event is finished).
async fn json_logs_of_one_event(
    redis: &RedisServer,
    rust_log: &str,
    data: &str,
    wait_for: Option<&str>,
) -> (String, Vec<serde_json::Value>) {
    let fx = Fixture::new(redis, "", "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n");
    let mut child = fx.spawn_binary_logging_json(rust_log);
    let mut conn = redis.conn().await;
    let id = xadd(&mut conn, "in", &[("type", "t"), ("data", data), ("correlation_id", "c-42")]).await;
    match wait_for {
        Some(stream) => drop(until_entries(&conn, stream, 1).await),
        None => until_finished(&conn, "in", "h", 1).await,
    }
    assert!(terminate(&mut child).await.success());
    let out = child.wait_with_output().unwrap();
    (id, json_log_lines(&out.stderr))
}

/// Whether a server answers on the embedded Redis socket under `dir`.
async fn embedded_answers(dir: &std::path::Path) -> bool {
    let socket = dir.join(".sluice/redis.sock").canonicalize();
    let Ok(socket) = socket else { return false };
    let Ok(client) = redis::Client::open(format!("redis+unix://{}", socket.display())) else { return false };
    match client.get_multiplexed_async_connection().await {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_stop_the_embedded_redis_they_start_even_when_they_fail() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let commands: [(&[&str], bool); 4] = [
        (&["status"], true),
        (&["dlq", "list"], true),
        (&["dlq", "show", "1-1"], false),
        (&["replay", "--stream", "elsewhere", "--handler", "h", "--from", "-1h"], false),
    ];
    for (args, succeeds) in commands {
        let out = sluice(args, &config);
        assert_eq!(out.status.success(), succeeds, "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!embedded_answers(dir.path()).await, "{args:?} left the embedded redis-server running");
    }
}
