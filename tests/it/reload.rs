//! Hot reload while serving: a plugin swapped under load loses nothing and
//! every event is handled by exactly one version; bad plugins and bad
//! configs are rejected while the running version keeps serving; config
//! edits add and remove handlers; a deleted plugin keeps serving; updates of
//! a ConfigMap (a swapped link) are noticed.

use crate::support::*;
use serde_json::json;
use sluice::reload::ReloadReport;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Handler `h` on `payments`, plugin `h.wasm`, publishing to `shipments`.
const H: &str = "[handlers.h]\nplugin = \"h.wasm\"\nstreams = [\"payments\"]\npublish = [\"shipments\"]\n";

/// An event both `behave` (publishes type `v1`) and `shipping` (publishes
/// type `order.shipped`) turn into exactly one `shipments` entry.
fn payment(n: usize) -> serde_json::Value {
    json!({"action": "publish", "publish": [{"stream": "shipments", "type": "v1", "data": {}}], "order_id": format!("o-{n}")})
}

/// The next reload report, failing the test after `SOON`.
async fn next_report(reports: &mut UnboundedReceiver<ReloadReport>) -> ReloadReport {
    tokio::time::timeout(SOON, reports.recv()).await.expect("a reload within the deadline").expect("host running")
}

async fn applied(reports: &mut UnboundedReceiver<ReloadReport>) -> std::collections::BTreeMap<String, String> {
    match next_report(reports).await {
        ReloadReport::Applied { versions } => versions,
        other => panic!("expected the reload to apply, got {other:?}"),
    }
}

async fn rejected(reports: &mut UnboundedReceiver<ReloadReport>) -> String {
    match next_report(reports).await {
        ReloadReport::Rejected { error } => error,
        other => panic!("expected the reload to be rejected, got {other:?}"),
    }
}

/// Types of the `shipments` and `out` entries, by the entry that caused them.
async fn outputs_by_cause(conn: &redis::aio::MultiplexedConnection) -> HashMap<String, Vec<String>> {
    let mut by_cause: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = entries(&mut conn.clone(), "shipments").await;
    all.extend(entries(&mut conn.clone(), "out").await);
    for e in all {
        by_cause.entry(field(&e, "causation_id")).or_default().push(field(&e, "type"));
    }
    by_cause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_under_load_loses_nothing() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", H, &[("h.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let conn = redis.conn().await;
    // About 400 events/s for 3 s, swapping the plugin after 1 s.
    let publisher = {
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..1200 {
                sent.push((send(&mut conn, "payments", "payment.processed", payment(n)).await, Instant::now()));
                if n % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = Instant::now();
    fx.install_plugin("h.wasm", "shipping.wasm");
    let versions = applied(&mut reports).await;
    let swapped = Instant::now();
    eprintln!("reload applied {:?} after the file write: {versions:?}", swapped - written);
    let sent = publisher.await.unwrap();
    until_finished(&conn, "payments", "h", sent.len()).await;
    host.stop().await;
    assert_eq!(versions.len(), 1);
    let by_cause = outputs_by_cause(&conn).await;
    let (mut old, mut new) = (0, 0);
    for (id, at) in &sent {
        let types = by_cause.get(id).unwrap_or_else(|| panic!("event {id} was lost"));
        assert_eq!(types.len(), 1, "event {id} handled {} times: {types:?}", types.len());
        match types[0].as_str() {
            "v1" => {
                old += 1;
                assert!(*at < swapped, "event {id}, sent after the swap was applied, ran on the old version");
            }
            "order.shipped" => new += 1,
            other => panic!("unexpected output type {other}"),
        }
    }
    assert!(old > 0 && new > 0, "both versions served ({old} old, {new} new)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_are_rejected_while_the_old_version_serves() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", H, &[("h.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;

    fx.write_plugin("h.wasm", b"this is not wasm");
    let error = rejected(&mut reports).await;
    assert!(error.contains("h.wasm") && error.contains("not a valid WebAssembly component"), "{error}");

    // A valid component of the wrong world: the empty component.
    fx.write_plugin("h.wasm", b"\0asm\x0d\x00\x01\x00");
    let error = rejected(&mut reports).await;
    assert!(error.contains("h.wasm") && error.contains("not a Sluice handler"), "{error}");

    // A handler that imports something the host does not provide.
    fx.install_plugin("h.wasm", "stranger.wasm");
    let error = rejected(&mut reports).await;
    assert!(
        error.contains("imports something Sluice does not provide") && error.contains("test:stranger/gadget"),
        "{error}"
    );

    // The old version still serves.
    let id = send(&mut conn, "payments", "payment.processed", payment(1)).await;
    until_finished(&conn, "payments", "h", 1).await;
    assert_eq!(outputs_by_cause(&conn).await[&id], ["v1"]);

    // Fixing the file is picked up.
    fx.install_plugin("h.wasm", "shipping.wasm");
    applied(&mut reports).await;
    let id = send(&mut conn, "payments", "payment.processed", payment(2)).await;
    until_finished(&conn, "payments", "h", 2).await;
    host.stop().await;
    assert_eq!(outputs_by_cause(&conn).await[&id], ["order.shipped"]);
}

/// A `behave` handler `name` on `in` (plugin shared, `b.wasm`).
fn handler(name: &str) -> String {
    format!("[handlers.{name}]\nplugin = \"b.wasm\"\nstreams = [\"in\"]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_add_and_remove_handlers() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;

    fx.rewrite_handlers(&format!("{}\n{}", handler("a"), handler("b")));
    let versions = applied(&mut reports).await;
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["a", "b"]);
    // A new group starts at the beginning of the stream: b sees both.
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 2).await;
    until_finished(&conn, "in", "b", 2).await;

    fx.rewrite_handlers(&handler("b"));
    let versions = applied(&mut reports).await;
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["b"]);
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "b", 3).await;
    host.stop().await;
    assert_eq!(finished(&mut conn, "in", "a").await, 2, "a removed handler stops consuming");
    assert_eq!(pending(&mut conn, "in", "a").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_rejected_and_a_later_fix_applies() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;

    fx.rewrite_handlers(&format!("{}timeout_ms = \"soon\"\n", handler("a")));
    let error = rejected(&mut reports).await;
    assert!(error.contains("config.toml:") && error.contains("timeout_ms"), "{error}");
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;

    // The fix narrows the handler to order.* events.
    fx.rewrite_handlers(&format!("{}events = [\"order.*\"]\n", handler("a")));
    applied(&mut reports).await;
    send(&mut conn, "in", "user.created", json!({"action": "reject"})).await;
    until_finished(&conn, "in", "a", 2).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty(), "the new filter skipped the event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_plugin_keeps_serving_its_loaded_version() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    std::fs::remove_file(fx.dir.path().join("plugins/b.wasm")).unwrap();
    applied(&mut reports).await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_watch_sighup_reloads() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let mut host = fx.spawn_binary_with(&["--no-watch"]);
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    fx.rewrite_handlers(&format!("{}\n{}", handler("a"), handler("b")));
    tokio::time::sleep(reload_quiet_period()).await;
    assert_eq!(finished(&mut conn, "in", "b").await, 0, "--no-watch: the edit is not applied by itself");
    assert!(send_signal(host.id(), "HUP"));
    until_finished(&conn, "in", "b", 1).await;
    host.kill().unwrap();
    host.wait().unwrap();
}

/// Long enough for a watching host to have applied an edit.
fn reload_quiet_period() -> Duration {
    sluice::reload::DEBOUNCE * 5
}

/// Data that makes `behave` compute for `ms`, then publish one `out` event.
fn busy(ms: u64) -> serde_json::Value {
    json!({"action": "busy", "ms": ms, "publish": [{"stream": "out", "type": "done", "data": {}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_streams_restarts_the_handler_without_duplicates() {
    let redis = RedisServer::start();
    let a = "[handlers.a]\nplugin = \"b.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nconcurrency = 4\n";
    let fx = Fixture::with_own_plugins(&redis, "consumer = \"fixed\"", a, &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    for _ in 0..8 {
        send(&mut conn, "in", "t", busy(300)).await;
    }
    eventually(SOON, "events in flight", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "a").await > 0).then_some(()) }
    })
    .await;
    fx.rewrite_handlers(&a.replace("[\"in\"]", "[\"in\", \"in2\"]"));
    applied(&mut reports).await;
    send(&mut conn, "in2", "t", busy(1)).await;
    until_finished(&conn, "in", "a", 8).await;
    until_finished(&conn, "in2", "a", 1).await;
    host.stop().await;
    let by_cause = outputs_by_cause(&conn).await;
    assert_eq!(by_cause.len(), 9, "every event handled");
    assert!(by_cause.values().all(|v| v.len() == 1), "none handled twice: {by_cause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_raise_a_timeout_past_the_running_claim_idle() {
    let redis = RedisServer::start();
    let a = format!("{}timeout_ms = 500\n", handler("a"));
    let fx = Fixture::with_own_plugins(&redis, "claim_idle_ms = 1000", &a, &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    // Valid on its own (claim_idle raised too), but the running host keeps
    // claim_idle 1000 until restarted.
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text =
        text.replace("claim_idle_ms = 1000", "claim_idle_ms = 10000").replace("timeout_ms = 500", "timeout_ms = 5000");
    std::fs::write(&fx.config_path, text).unwrap();
    let error = rejected(&mut reports).await;
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let line = 1 + text.lines().position(|l| l.starts_with("timeout_ms")).unwrap();
    let at = format!("{}:{line}:14: ", fx.config_path.display());
    let why = "handlers.a.timeout_ms must stay below the running host's claim_idle_ms (1000)";
    assert!(error.contains(&format!("{at}{why}")), "{error}");
    host.stop().await;
}

/// A host whose handlers had no `fuel` budget when it started counts no
/// fuel; a reload that gives a handler its first budget applies at once
/// (the plugin moves to the engine that counts fuel, built then), and one
/// that takes the budget away moves it back. The other handler keeps
/// serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_fuel_budget_live() {
    let redis = RedisServer::start();
    let b = "[handlers.b]\nplugin = \"b.wasm\"\nstreams = [\"loops\"]\nmax_attempts = 1\ntimeout_ms = 300\n";
    let fx = Fixture::with_own_plugins(&redis, "", &format!("{}\n{b}", handler("a")), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;

    fx.rewrite_handlers(&format!("{}\n{b}fuel = 5000000\n", handler("a")));
    applied(&mut reports).await;
    send(&mut conn, "loops", "t", json!({"action": "loop"})).await;
    let dead = until_entries(&conn, "loops:dlq", 1).await;
    assert_eq!(field(&dead[0], "sluice.error"), "fuel limit 5000000 exceeded (gave up after 1 attempts)");

    fx.rewrite_handlers(&format!("{}\n{b}", handler("a")));
    applied(&mut reports).await;
    send(&mut conn, "loops", "t", json!({"action": "loop"})).await;
    let dead = until_entries(&conn, "loops:dlq", 2).await;
    assert_eq!(field(&dead[1], "sluice.error"), "timeout after 300 ms (gave up after 1 attempts)");

    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    host.stop().await;
}

/// Two handlers whose plugin files hold the same bytes (one a copy of the
/// other): a reload reuses the loaded code for both, and each keeps its own
/// file, so deleting one file leaves its handler serving the loaded
/// version, as for any deleted file. Before, the reload gave the second
/// handler the first one's loaded plugin, file name and all, and deleting
/// the second file was then rejected as a missing plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_plugin_file_is_a_copy_of_anothers_keeps_its_own_file() {
    let redis = RedisServer::start();
    let two = "[handlers.a]\nplugin = \"a.wasm\"\nstreams = [\"in\"]\n\
               [handlers.b]\nplugin = \"b.wasm\"\nstreams = [\"in2\"]\nmax_attempts = 1\n";
    let fx = Fixture::with_own_plugins(&redis, "", two, &[("a.wasm", "behave.wasm"), ("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    // A change to the config alone: both plugins are reused.
    fx.rewrite_handlers(&format!("{two}backoff_ms = 10\n"));
    applied(&mut reports).await;

    std::fs::remove_file(fx.dir.path().join("plugins/b.wasm")).unwrap();
    applied(&mut reports).await;
    send(&mut conn, "in2", "t", json!({"action": "reject"})).await;
    until_entries(&conn, "in2:dlq", 1).await;
    host.stop().await;
}

/// A deleted plugin keeps serving when its handler's `fuel` budget changes
/// only if the same plugin is loaded for the engine the new budget needs
/// (here, by another handler); otherwise the reload is rejected with why,
/// the loaded version keeps serving, and restoring the file applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_plugin_changes_its_fuel_budget_only_from_a_loaded_copy() {
    let redis = RedisServer::start();
    let b = "[handlers.b]\nplugin = \"b.wasm\"\nstreams = [\"loops\"]\nmax_attempts = 1\ntimeout_ms = 300\n";
    let with_fuel = format!("{}\n{b}fuel = 5000000\n", handler("a"));
    let fx = Fixture::with_own_plugins(&redis, "", &with_fuel, &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    std::fs::remove_file(fx.dir.path().join("plugins/b.wasm")).unwrap();
    applied(&mut reports).await;

    // a's copy counts no fuel: b takes it.
    fx.rewrite_handlers(&format!("{}\n{b}", handler("a")));
    applied(&mut reports).await;
    send(&mut conn, "loops", "t", json!({"action": "loop"})).await;
    let dead = until_entries(&conn, "loops:dlq", 1).await;
    assert_eq!(field(&dead[0], "sluice.error"), "timeout after 300 ms (gave up after 1 attempts)");

    // No copy counts fuel any more, and there is no file to compile one.
    fx.rewrite_handlers(&with_fuel);
    let error = rejected(&mut reports).await;
    assert!(error.contains("handlers.b.plugin"), "{error}");
    assert!(
        error.contains("b.wasm does not exist, and giving the handler a fuel budget needs the plugin compiled again from it: restore the file"),
        "{error}"
    );
    send(&mut conn, "loops", "t", json!({"action": "loop"})).await;
    let dead = until_entries(&conn, "loops:dlq", 2).await;
    // (After the first timeout the handler is demoted: the reason says so.)
    let error = field(&dead[1], "sluice.error");
    assert!(error.starts_with("timeout after 300 ms"), "still serving the loaded version: {error}");

    fx.install_plugin("b.wasm", "behave.wasm");
    applied(&mut reports).await;
    send(&mut conn, "loops", "t", json!({"action": "loop"})).await;
    let dead = until_entries(&conn, "loops:dlq", 3).await;
    assert_eq!(field(&dead[2], "sluice.error"), "fuel limit 5000000 exceeded (gave up after 1 attempts)");

    // The other way round: b alone, with its budget, and the file gone.
    fx.rewrite_handlers(&format!("{b}fuel = 5000000\n"));
    applied(&mut reports).await;
    std::fs::remove_file(fx.dir.path().join("plugins/b.wasm")).unwrap();
    applied(&mut reports).await;
    fx.rewrite_handlers(b);
    let error = rejected(&mut reports).await;
    assert!(error.contains("taking the handler's fuel budget away needs the plugin compiled again"), "{error}");
    host.stop().await;
}

/// A deleted plugin's handler keeps its own loaded version, not another
/// handler's copy of the same bytes from another file: so later reloads
/// still find the handler's plugin loaded from the file its config names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_plugin_keeps_its_own_version_beside_an_identical_file() {
    let redis = RedisServer::start();
    let on = |name: &str, file: &str| format!("[handlers.{name}]\nplugin = \"{file}\"\nstreams = [\"in\"]\n");
    let handlers = format!("{}\n{}", on("a", "x.wasm"), on("b", "y.wasm"));
    let fx = Fixture::with_own_plugins(&redis, "", &handlers, &[("x.wasm", "behave.wasm"), ("y.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    std::fs::remove_file(fx.dir.path().join("plugins/y.wasm")).unwrap();
    applied(&mut reports).await;
    fx.rewrite_handlers(&format!("{handlers}concurrency = 8\n"));
    applied(&mut reports).await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "b", 1).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_outgrow_the_instance_pool_the_host_started_with() {
    let redis = RedisServer::start();
    // 64 in flight at most: the pool has its smallest size, 512.
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    let wide = |name: &str| format!("{}concurrency = 300\n", handler(name));
    fx.rewrite_handlers(&format!("{}\n{}", wide("a"), wide("b")));
    let error = rejected(&mut reports).await;
    assert!(
        error.contains("concurrency adds up to 600 (for a handler already running, the larger of its old and new concurrency: its running events finish first), but this host's instance pool, sized when it started, has room for 512: restart the host"),
        "{error}"
    );
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    // Within the pool, the same change applies.
    fx.rewrite_handlers(&format!("{}\n{}", wide("a"), handler("b")));
    applied(&mut reports).await;
    // Swapping the two counts would need 600 while a's running events
    // finish: refused too.
    fx.rewrite_handlers(&format!("{}\n{}", handler("a"), wide("b")));
    let error = rejected(&mut reports).await;
    assert!(error.contains("concurrency adds up to 600"), "{error}");
    host.stop().await;
}

/// A smaller `concurrency` takes effect while a backlog flows: the commits'
/// reads, which pass finished deliveries' permits straight on, give way to
/// the reload waiting to take permits back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_concurrency_takes_effect_while_a_backlog_flows() {
    let redis = RedisServer::start();
    let with = |n: usize| format!("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nconcurrency = {n}\n");
    let fx = Fixture::new(&redis, "", &with(8));
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    let backlog = 2_000;
    let mut pipe = redis::pipe();
    for _ in 0..backlog {
        let data = r#"{"action":"busy","ms":5}"#;
        pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("data").arg(data).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let in_flight = |at_most: usize| {
        let conn = conn.clone();
        move || {
            let mut c = conn.clone();
            async move {
                let (now, done) = (pending(&mut c, "in", "a").await, finished(&mut c, "in", "a").await);
                assert!(done < backlog, "the backlog ran dry first");
                (now <= at_most).then_some(())
            }
        }
    };
    eventually(SOON, "more than one in flight", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "a").await > 1).then_some(()) }
    })
    .await;
    fx.rewrite_handlers(&with(1));
    applied(&mut reports).await;
    eventually(SOON, "one in flight, the backlog still flowing", in_flight(1)).await;
    host.stop().await;
}

/// A reload that adds handler `added` with the group of handler `moved`,
/// which moves to another group, starts `added` only once `moved` has
/// drained: `added`, sorted first, would otherwise take back the entry
/// `moved` is running (pending under the host's one consumer name in that
/// group) and run it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_given_a_stopping_handlers_group_starts_once_that_one_drained() {
    let redis = RedisServer::start();
    let admin = free_port();
    let handler = |name: &str, group: &str| {
        format!(
            "[handlers.{name}]\nplugin = \"b.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\ngroup = \"{group}\"\ntimeout_ms = 10000\n"
        )
    };
    let host_keys = format!("admin = \"127.0.0.1:{admin}\"\nclaim_idle_ms = 30000");
    let fx = Fixture::with_own_plugins(&redis, &host_keys, &handler("moved", "g"), &[("b.wasm", "behave.wasm")]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", busy(3000)).await;
    eventually(SOON, "moved running the event", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "g").await == 1).then_some(()) }
    })
    .await;
    fx.rewrite_handlers(&format!("{}\n{}", handler("added", "g"), handler("moved", "g2")));
    applied(&mut reports).await;
    // moved finished it in g (and, on g2, from the stream's start, again).
    until_finished(&conn, "in", "g", 1).await;
    until_finished(&conn, "in", "g2", 1).await;
    let metrics = http_get(admin, "/metrics").1;
    host.stop().await;
    let ran = |handler: &str| {
        let line = format!("sluice_events_total{{handler=\"{handler}\",outcome=\"ok\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    assert_eq!(ran("added"), 0, "added ran moved's in-flight event: {metrics}");
    assert_eq!(ran("moved"), 2, "once on g, once on g2: {metrics}");
    assert_eq!(entries(&mut conn, "out").await.len(), 2);
}

/// A SIGHUP that comes while the host is still starting (here, waiting for
/// a Redis that does not answer yet) neither kills it, as the signal's
/// default action would, nor is lost: the host runs, and reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_host_starts_does_not_stop_it() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    assert!(send_signal(redis.pid(), "STOP"));
    let mut host = fx.spawn_binary();
    // Connected to the stopped Redis (the kernel accepts for it): past
    // loading the plugins, waiting for Redis's answer.
    let port = redis.url().rsplit(':').next().unwrap().trim_end_matches('/').parse::<u16>().unwrap();
    eventually(SOON, "the host connected to Redis", || async move {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let established = format!(":{port:04X} 01 ");
        tcp.lines().any(|l| l.contains(&established)).then_some(())
    })
    .await;
    assert!(send_signal(host.id(), "HUP"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(send_signal(redis.pid(), "CONT"));
    assert_eq!(host.try_wait().unwrap(), None, "the host ended on SIGHUP");
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    assert!(terminate(&mut host).await.success());
}

/// Stopping does not wait for a reload's plugins to compile (a Python
/// plugin takes seconds): nothing has changed until they have. Told to stop
/// while a new Python handler compiles, the host stops at once, the
/// handler it serves drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stopped_while_a_reload_compiles_stops_at_once() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[("b.wasm", "behave.wasm")]);
    let mut host = fx.spawn_binary();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;
    fx.install_plugin("py.wasm", "behave-py.wasm");
    fx.rewrite_handlers(&format!("{}[handlers.py]\nplugin = \"py.wasm\"\nstreams = [\"py\"]\n", handler("a")));
    // The edit noticed, and the compile under way (it takes seconds).
    tokio::time::sleep(sluice::reload::DEBOUNCE * 3).await;
    let stopping = Instant::now();
    assert!(terminate(&mut host).await.success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(4), "stopped in {took:?}, not after the compile");
    assert_eq!(pending(&mut conn, "in", "a").await, 0);
}

/// Lays `files` out in `dir` as the kubelet mounts a ConfigMap, version
/// `version`: a folder `..<version>` holding them, a `..data` link to it
/// swapped in by renaming a new link over the old one, the old folder
/// removed, and each file a link to `..data/<name>` (made once).
fn mount_config_map(dir: &std::path::Path, version: u32, files: &[(&str, Vec<u8>)]) {
    use std::os::unix::fs::symlink;
    let folder = format!("..2026_11_29_{version}");
    std::fs::create_dir(dir.join(&folder)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(&folder).join(name), bytes).unwrap();
    }
    symlink(&folder, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if version > 1 {
        std::fs::remove_dir_all(dir.join(format!("..2026_11_29_{}", version - 1))).unwrap();
    }
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

/// A config, a plugins folder and a schemas folder mounted from Kubernetes
/// ConfigMaps: each update swaps their `..data` link, and no file event
/// names `config.toml`, a `.wasm` file or a schema file. Each update is
/// still reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_updates_that_swap_a_link_are_reloaded() {
    let redis = RedisServer::start();
    let fx = Fixture::with_own_plugins(&redis, "", &handler("a"), &[]);
    let schemas = "[schemas]\n\"order.*\" = \"schemas/order.json\"\n";
    let text = [std::fs::read(&fx.config_path).unwrap(), schemas.as_bytes().to_vec()].concat();
    std::fs::remove_file(&fx.config_path).unwrap();
    let config_dir = fx.config_path.parent().unwrap();
    let plugins = fx.dir.path().join("plugins");
    let built = |name: &str| std::fs::read(plugins_dir().join(name)).unwrap();
    mount_config_map(config_dir, 1, &[("config.toml", text.clone())]);
    mount_config_map(&plugins, 1, &[("b.wasm", built("behave.wasm"))]);
    let schema_dir = fx.dir.path().join("schemas");
    std::fs::create_dir(&schema_dir).unwrap();
    mount_config_map(&schema_dir, 1, &[("order.json", b"{\"type\": \"object\"}".to_vec())]);
    let (host, mut reports) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({})).await;
    until_finished(&conn, "in", "a", 1).await;

    let two = [text, handler("b").into_bytes()].concat();
    mount_config_map(config_dir, 2, &[("config.toml", two.clone())]);
    let versions = applied(&mut reports).await;
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["a", "b"]);

    mount_config_map(&plugins, 2, &[("b.wasm", built("shipping.wasm"))]);
    let swapped = applied(&mut reports).await;
    assert_ne!(swapped["a"], versions["a"], "the new plugin loaded");

    // A broken schema: a reload, rejected, naming the file.
    mount_config_map(&schema_dir, 2, &[("order.json", b"{\"type\": ".to_vec())]);
    let error = rejected(&mut reports).await;
    assert!(error.contains("schemas/order.json"), "{error}");
    host.stop().await;
}
