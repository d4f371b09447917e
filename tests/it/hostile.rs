//! The hostile plugin suite: every attack is contained within its limit and
//! dead-lettered with the right reason, the host stays healthy, and a
//! well-behaved handler beside the attackers keeps handling its events.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const HANDLERS: &str = r#"
[handlers.good]
plugin = "behave.wasm"
streams = ["good"]
concurrency = 8

# (Each attack is stopped by a limit of its own, not by the time limit:
# 5 s leaves the 1000 round trips of the kv read flood room on a loaded
# machine, where 1 s did not always.)
[handlers.hostile]
plugin = "hostile.wasm"
streams = ["attacks"]
publish = ["out"]
timeout_ms = 5000
memory_mb = 32
max_attempts = 1

[handlers.bomb]
plugin = "behave.wasm"
streams = ["bombs"]
timeout_ms = 300
memory_mb = 32
max_attempts = 1
"#;

/// (stream, action data, expected start of the dead-letter reason); `None`
/// for attacks that must succeed harmlessly.
fn attacks() -> Vec<(&'static str, serde_json::Value, Option<&'static str>)> {
    vec![
        ("attacks", json!({"action": "recurse"}), Some("trap: ")),
        ("attacks", json!({"action": "print_flood"}), Some("stdout limit exceeded: more than 1024 KiB")),
        ("attacks", json!({"action": "log_flood"}), Some("log limit exceeded: more than 1000 lines")),
        ("attacks", json!({"action": "publish_flood"}), Some("publish limit exceeded: more than 1024 events")),
        ("attacks", json!({"action": "kv_flood"}), Some("kv limit exceeded: more than 1000 writes")),
        ("attacks", json!({"action": "read_file"}), Some("contained: read_file")),
        ("attacks", json!({"action": "env"}), Some("contained: env")),
        ("attacks", json!({"action": "socket", "addr": "127.0.0.1:1"}), Some("contained: socket")),
        (
            "attacks",
            json!({"action": "resource_flood"}),
            Some("trap: [new_fields] pushing fields: resource table has no free keys"),
        ),
        ("attacks", json!({"action": "header_flood"}), Some("trap: total size of fields exceeds limit")),
        ("attacks", json!({"action": "reason_flood"}), Some("xxxxxxxx")),
        ("attacks", json!({"action": "kv_read_flood"}), Some("kv limit exceeded: more than 1000 reads")),
        ("attacks", json!({"action": "plant"}), None),
        ("attacks", json!({"action": "peek"}), None),
        ("bombs", json!({"action": "loop"}), Some("timeout after 300 ms")),
        ("bombs", json!({"action": "alloc", "mb": 256}), Some("memory limit 32 MiB exceeded")),
        (
            "bombs",
            json!({"action": "publish", "publish": [{"stream": "secret", "type": "x", "data": {}}]}),
            Some("publish refused"),
        ),
    ]
}

async fn send_good(conn: &mut redis::aio::MultiplexedConnection, n: usize) {
    for _ in 0..n {
        send(conn, "good", "t", json!({"action": "ok"})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_contained_and_the_neighbour_keeps_working() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLERS);
    let host = fx.start();
    let mut conn = redis.conn().await;

    let alone = Instant::now();
    send_good(&mut conn, 200).await;
    until_finished(&conn, "good", "good", 200).await;
    let alone = alone.elapsed();

    let mut expected: HashMap<String, Option<&str>> = HashMap::new();
    for (stream, data, reason) in attacks() {
        let id = send(&mut conn, stream, "attack", data.clone()).await;
        expected.insert(format!("{stream} {id} {}", data["action"]), reason);
    }
    let beside = Instant::now();
    send_good(&mut conn, 200).await;
    until_finished(&conn, "good", "good", 400).await;
    let beside = beside.elapsed();
    eprintln!("200 good events: {alone:?} alone, {beside:?} beside the attacks");

    until_finished(&conn, "attacks", "hostile", 14).await;
    until_finished(&conn, "bombs", "bomb", 3).await;
    let mut reasons: HashMap<String, String> = HashMap::new();
    for stream in ["attacks", "bombs"] {
        for e in entries(&mut conn, &format!("{stream}:dlq")).await {
            reasons.insert(format!("{stream} {}", field(&e, "sluice.origin_id")), field(&e, "sluice.error"));
        }
    }
    for (key, want) in &expected {
        let at: Vec<&str> = key.split(' ').take(2).collect();
        match (want, reasons.get(&at.join(" "))) {
            (Some(_), Some(got)) if got.len() > sluice::limits::MAX_REASON_BYTES + 64 => {
                panic!("{key}: a reason of {} bytes kept", got.len())
            }
            (Some(want), Some(got)) => assert!(got.starts_with(want), "{key}: reason {got:?}, expected {want:?}"),
            (Some(want), None) => panic!("{key}: not dead-lettered (expected {want:?})"),
            (None, Some(got)) => panic!("{key}: dead-lettered with {got:?}"),
            (None, None) => {}
        }
    }
    assert!(entries(&mut conn, "secret").await.is_empty());
    assert!(entries(&mut conn, "out").await.is_empty(), "a failed flood publishes nothing");
    // Still healthy: serves new events and shuts down cleanly.
    send_good(&mut conn, 10).await;
    until_finished(&conn, "good", "good", 410).await;
    tokio::time::timeout(Duration::from_secs(10), host.stop()).await.expect("clean shutdown");
}

/// `sluice_handler_demoted` for `handler`, from the admin listener on `port`.
fn demoted(port: u16, handler: &str) -> Option<f64> {
    let series = format!("sluice_handler_demoted{{handler=\"{handler}\"}} ");
    http_get(port, "/metrics").1.lines().find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
}

/// The dead-letter reason of the `n`th (1-based) entry dead-lettered from `stream`.
async fn nth_reason(conn: &redis::aio::MultiplexedConnection, stream: &str, n: usize) -> String {
    let dead = until_entries(conn, &format!("{stream}:dlq"), n).await;
    field(&dead[n - 1], "sluice.error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_runs_out_of_time_is_demoted_to_idle_priority_until_it_behaves() {
    let redis = RedisServer::start();
    let port = free_port();
    let sulker = "[handlers.sulker]\nplugin = \"behave.wasm\"\nstreams = [\"sulk\"]\ntimeout_ms = 150\nmax_attempts = 1\nconcurrency = 4\n";
    let fx = Fixture::new(&redis, &format!("admin = \"127.0.0.1:{port}\""), sulker);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    eventually(SOON, "the admin listener", || async move { listening().then_some(()) }).await;
    eventually(SOON, "the handler's metrics", || async { demoted(port, "sulker").map(|_| ()) }).await;
    assert_eq!(demoted(port, "sulker"), Some(0.0));

    // A spin to the deadline, at normal priority: wall time.
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    assert_eq!(nth_reason(&conn, "sulk", 1).await, "timeout after 150 ms (gave up after 1 attempts)");
    eventually(SOON, "the handler demoted", || async { (demoted(port, "sulker") == Some(1.0)).then_some(()) }).await;

    // Demoted: the next spin runs on the idle lane, its time counted in CPU time.
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    // (Or, on a machine too busy to give it 150 ms of CPU, given up after
    // its wall-time patience: also at idle priority.)
    let reason = nth_reason(&conn, "sulk", 2).await;
    let cpu = reason.starts_with("timeout after 150 ms of CPU time (at idle priority");
    assert!(cpu || reason.starts_with("timeout: no result within 1500 ms at idle priority"), "{reason}");

    // Its events are still handled; enough of them in time in a row promote
    // it. (A spin given up for want of CPU did not run out of its time: it
    // counts as in time.)
    let in_time_already = u32::from(!cpu);
    let oks = sluice::consumer::PROMOTE_AFTER - 1 - in_time_already;
    for _ in 0..oks {
        send(&mut conn, "sulk", "t", json!({"action": "ok"})).await;
    }
    until_finished(&conn, "sulk", "sulker", 2 + oks as usize).await;
    assert_eq!(
        demoted(port, "sulker"),
        Some(1.0),
        "promoted before {} deliveries in time",
        sluice::consumer::PROMOTE_AFTER
    );
    send(&mut conn, "sulk", "t", json!({"action": "ok"})).await;
    eventually(SOON, "the handler promoted", || async { (demoted(port, "sulker") == Some(0.0)).then_some(()) }).await;

    // Back at normal priority: wall time again. (Counted from the end: on a
    // machine too busy to run a demoted delivery in time, an ok event may
    // have been dead-lettered too.)
    let dead = entries(&mut conn, "sulk:dlq").await.len();
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    assert_eq!(nth_reason(&conn, "sulk", dead + 1).await, "timeout after 150 ms (gave up after 1 attempts)");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_of_an_event_that_demoted_its_handler_runs_at_idle_priority() {
    let redis = RedisServer::start();
    let handler = "[handlers.again]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\ntimeout_ms = 150\nmax_attempts = 2\nbackoff_ms = 10\n";
    let fx = Fixture::new(&redis, "", handler);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "loop"})).await;
    // The first attempt ran out of time at normal priority and demoted the
    // handler; the second, its retry, ran on the idle lane.
    let reason = nth_reason(&conn, "in", 1).await;
    assert!(reason.contains("at idle priority") && reason.ends_with("(gave up after 2 attempts)"), "{reason}");
    host.stop().await;
}

/// A host pinned to one CPU (for [`BusyLoops`] there), logging JSON at
/// `rust_log`, whose handler `sulker` (`behave` on `sulk`, `timeout_ms =
/// 50`, one attempt, and the `extra` keys) was demoted by a `loop` event
/// that ran out of time at normal priority. Its Redis and config live as
/// long as the first two values returned.
async fn demoted_on_one_cpu(
    extra: &str,
    rust_log: &str,
) -> (RedisServer, Fixture, usize, Hosts, redis::aio::MultiplexedConnection) {
    let redis = RedisServer::start();
    let sulker = format!(
        "[handlers.sulker]\nplugin = \"behave.wasm\"\nstreams = [\"sulk\"]\ntimeout_ms = 50\nmax_attempts = 1\n{extra}"
    );
    let fx = Fixture::new(&redis, "", &sulker);
    let cpu = last_cpu();
    let hosts = Hosts(vec![fx.spawn_binary_on_cpu_logging_json(cpu, rust_log)]);
    let mut conn = redis.conn().await;
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    assert_eq!(nth_reason(&conn, "sulk", 1).await, "timeout after 50 ms (gave up after 1 attempts)");
    (redis, fx, cpu, hosts, conn)
}

/// A demoted handler's deliveries wait for CPU that others leave free, but
/// their time limit and their commit must not: on a CPU kept busy at
/// normal priority, where the idle lane gets next to no time, a demoted
/// delivery is given up after its patience (10 times its `timeout_ms`) and
/// dead-lettered on time. (Held until the idle lane got the CPU, its entry
/// would outlast `claim_idle_ms`, and other hosts would take it over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_delivery_that_gets_no_cpu_is_still_given_up_on_time() {
    let (_redis, _fx, cpu, _hosts, mut conn) = demoted_on_one_cpu("", "warn").await;

    let busy = BusyLoops::on_cpu(cpu, 3).await;
    let sent = Instant::now();
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    let reason = nth_reason(&conn, "sulk", 2).await;
    let took = sent.elapsed();
    drop(busy);
    assert_eq!(
        reason,
        "timeout: no result within 500 ms at idle priority (the handler is demoted after earlier timeouts) (gave up after 1 attempts)"
    );
    assert!(took < Duration::from_millis(1_500), "dead-lettered {took:?} after it was sent");
}

/// A host asked to stop waits for a demoted delivery no longer than its
/// patience, however busy the CPU, and commits its outcome before it
/// stops. (Its delivery used to run whole on the idle lane, and the host
/// waited for that lane to get the CPU.) If it may (see
/// [`may_leave_idle_priority`]), it then lifts the idle lane's threads to
/// normal priority, and exits at once; if not, the process may take
/// seconds more to exit, and the CPU is freed after 2.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stops_within_the_patience_of_a_demoted_delivery_that_gets_no_cpu() {
    let (_redis, _fx, cpu, mut hosts, mut conn) = demoted_on_one_cpu("", "warn,sluice::host=info").await;

    let busy = BusyLoops::on_cpu(cpu, 3).await;
    send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    until_pending(&conn, "sulk", "sulker", 1).await;
    let asked = Instant::now();
    assert!(send_signal(hosts.0[0].id(), "TERM"));
    let exit_soon = Duration::from_millis(1_500);
    while hosts.0[0].try_wait().unwrap().is_none() && asked.elapsed() < exit_soon + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = asked.elapsed();
    drop(busy);
    let host = hosts.0.pop().unwrap();
    if may_leave_idle_priority() {
        assert!(took < exit_soon, "the process took {took:?} to exit");
    }
    let out = tokio::task::spawn_blocking(move || host.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", out.status);
    let lines = json_log_lines(&out.stderr);
    let at = |words: &str| {
        let line = saying(&lines, words).pop().unwrap_or_else(|| panic!("no line saying {words:?}: {lines:#?}"));
        humantime::parse_rfc3339(line["timestamp"].as_str().expect("a timestamp")).expect("an RFC 3339 timestamp")
    };
    let stopping = at("stopped").duration_since(at("shutting down: finishing in-flight events")).unwrap();
    assert!(stopping < Duration::from_millis(1_500), "the host took {stopping:?} to stop");
    let reason = nth_reason(&conn, "sulk", 2).await;
    assert!(reason.starts_with("timeout: no result within 500 ms at idle priority"), "{reason}");
    assert_eq!(pending(&mut conn, "sulk", "sulker").await, 0);
}

/// A demoted delivery given up while its wasm waits for the idle lane's
/// CPU keeps its permit until the idle lane drops it: however long the
/// machine stays busy, a demoted handler holds no more instances than its
/// `concurrency`. Here (`concurrency = 1`) the next event starts only once
/// the given-up one's instance is dropped (the host's debug lines say when).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_delivery_given_up_keeps_its_permit_until_its_wasm_is_dropped() {
    let (_redis, _fx, cpu, mut hosts, mut conn) =
        demoted_on_one_cpu("concurrency = 1\n", "warn,sluice::consumer=debug").await;

    let busy = BusyLoops::on_cpu(cpu, 3).await;
    let given_up = send(&mut conn, "sulk", "t", json!({"action": "loop"})).await;
    let next = send(&mut conn, "sulk", "t", json!({"action": "ok"})).await;
    assert!(nth_reason(&conn, "sulk", 2).await.starts_with("timeout: no result within 500 ms at idle priority"));
    drop(busy);
    // (Handled, or given up in turn if another test keeps the CPU busy now.)
    until_finished(&conn, "sulk", "sulker", 3).await;

    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let line = |id: &str, words: &str| {
        let said = |l: &serde_json::Value| l["fields"]["message"].as_str().is_some_and(|m| m.contains(words));
        (lines.iter().position(|l| l["span"]["id"] == json!(id) && said(l)))
            .unwrap_or_else(|| panic!("no line saying {words:?} about {id}: {lines:#?}"))
    };
    let dropped = line(&given_up, "instance of this given-up delivery is dropped");
    let started = line(&next, "running at idle priority");
    assert!(dropped < started, "the next event started while the given-up one held its instance: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuel_budget_stops_a_loop_deterministically() {
    let redis = RedisServer::start();
    let handler = "[handlers.f]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nfuel = 5000000\ntimeout_ms = 60000\nmax_attempts = 1\n";
    let fx = Fixture::new(&redis, "claim_idle_ms = 120000", handler);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "loop"})).await;
    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    let dl = until_entries(&conn, "in:dlq", 1).await;
    until_finished(&conn, "in", "f", 2).await;
    host.stop().await;
    assert_eq!(field(&dl[0], "sluice.error"), "fuel limit 5000000 exceeded (gave up after 1 attempts)");
}

/// `behave.wasm` loaded for `fuel` on `runtime`, with the sandbox of a
/// handler configured by `keys`.
fn behave_on(
    runtime: &sluice::wasm::Runtime,
    fuel: sluice::wasm::FuelMetering,
    keys: &str,
) -> (std::sync::Arc<sluice::wasm::Plugin>, sluice::wasm::Sandbox) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "[host]\nplugins = \"{}\"\n[handlers.f]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n{keys}\n",
        plugins_dir().display()
    );
    std::fs::write(&path, text).unwrap();
    let config = sluice::config::Config::load(&path).unwrap();
    let plugin = sluice::wasm::Plugin::load(runtime, None, &config.handlers[0].plugin, fuel).unwrap();
    (std::sync::Arc::new(plugin), sluice::wasm::Sandbox::for_handler(&config.handlers[0]))
}

/// An event for `behave.wasm` with `data`.
fn behave_event(data: serde_json::Value) -> sluice::wasm::bindings::Event {
    let entry = sluice::event::Entry {
        id: "1-0".into(),
        fields: vec![("type".into(), b"t".to_vec()), ("data".into(), data.to_string().into_bytes())],
    };
    entry.to_event("in", 1)
}

/// A budget is never ignored: a plugin loaded for the engine that counts no
/// fuel refuses a delivery under a `fuel` budget (a host never builds such a
/// pair: it loads a handler with a budget for the engine that counts fuel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuel_budget_is_never_run_without_metering() {
    use sluice::wasm::{FuelMetering, Outcome, Runtime};
    let runtime = Runtime::new().unwrap();
    let (plugin, sandbox) = behave_on(&runtime, FuelMetering::Off, "fuel = 5000000");
    let outcome = plugin.invoke(&sandbox, behave_event(json!({"action": "ok"}))).await;
    let reason =
        "fuel limit 5000000 cannot be enforced: the plugin was loaded for the engine that counts no fuel".to_owned();
    assert_eq!(outcome, Outcome::Crash { reason, timed_out: false });
}

/// The epoch ticker that stops a guest at its deadline sleeps while no wasm
/// runs, so an idle host makes no wake-ups for it; a guest that starts while
/// it sleeps wakes it, and an endless loop is still stopped on time. (Were
/// it not woken, the loop would never yield: this test's own timeout fails
/// it, and the loop spins on until the test binary exits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_started_while_the_host_was_idle_is_still_stopped_on_time() {
    use sluice::wasm::{FuelMetering, Outcome, Runtime};
    let runtime = Runtime::new().unwrap();
    let (plugin, sandbox) = behave_on(&runtime, FuelMetering::Off, "timeout_ms = 200");
    let rt = &runtime;
    let asleep = move || async move { rt.ticker_asleep().then_some(()) };
    eventually(SOON, "the epoch ticker to sleep on an idle runtime", asleep).await;
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), plugin.invoke(&sandbox, behave_event(json!({"action": "loop"}))))
            .await
            .expect("the loop was never stopped: the sleeping ticker was not woken");
    assert_eq!(outcome, Outcome::Crash { reason: "timeout after 200 ms".into(), timed_out: true });
    assert!(started.elapsed() < Duration::from_secs(5), "stopped late: {:?}", started.elapsed());
    // It sleeps again once nothing runs.
    eventually(SOON, "the epoch ticker to sleep again", asleep).await;
}

/// Counting fuel slows every handler an engine runs, so only a handler with
/// a budget runs on the engine that counts it: a host without budgets never
/// builds that engine, and in a host with one, the other handlers, even
/// with the same plugin file, run on the engine that counts none.
#[test]
fn only_a_handler_with_a_fuel_budget_pays_for_counting_it() {
    use sluice::wasm::FuelMetering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let load = |budget: &str| {
        let text = format!(
            "[host]\nplugins = \"{}\"\n[handlers.f]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n{budget}\n[handlers.g]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n",
            plugins_dir().display()
        );
        std::fs::write(&path, text).unwrap();
        let config = sluice::config::Config::load(&path).unwrap();
        let runtime = sluice::host::runtime_for(&config).unwrap();
        let plugins = sluice::host::load_plugins(&runtime, &sluice::host::cache_for(&config), &config).unwrap();
        (runtime.counts_fuel(), plugins.iter().map(|p| p.fuel()).collect::<Vec<_>>())
    };
    assert_eq!(load(""), (false, vec![FuelMetering::Off, FuelMetering::Off]));
    assert_eq!(load("fuel = 5000000"), (true, vec![FuelMetering::On, FuelMetering::Off]));
}
