//! The admin listener: `/metrics` parses as Prometheus (OpenMetrics) text
//! and its counters move; `/healthz` and `/readyz` answer.

use crate::support::*;
use serde_json::json;

use crate::support::http_get as get;

/// The samples of an exposition, checked line by line against the text
/// format: `# TYPE`/`# HELP`/`# UNIT` comments, `name{labels} value`
/// samples with float values, and a final `# EOF`.
fn parse(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(["TYPE", "HELP", "UNIT"].contains(&kind), "bad comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name: {line}");
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_and_health_answers() {
    let redis = RedisServer::start();
    let port = free_port();
    let handlers = "[handlers.m]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nevents = [\"t\"]\nmax_attempts = 2\nbackoff_ms = 10\n";
    let fx = Fixture::new(&redis, &format!("admin = \"127.0.0.1:{port}\""), handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    eventually(SOON, "the admin listener", || async move { listening().then_some(()) }).await;
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    eventually(SOON, "ready", || async { (get(port, "/readyz").0 == 200).then_some(()) }).await;
    let before = parse(&get(port, "/metrics").1);

    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    send(&mut conn, "in", "t", json!({"action": "reject"})).await;
    send(&mut conn, "in", "t", json!({"action": "retry"})).await;
    send(&mut conn, "in", "other", json!({})).await;
    until_finished(&conn, "in", "m", 4).await;
    let after = parse(&get(port, "/metrics").1);
    host.stop().await;

    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved(r#"sluice_events_total{handler="m",outcome="ok"}"#), 1.0, "{after:?}");
    assert_eq!(moved(r#"sluice_events_total{handler="m",outcome="reject"}"#), 1.0);
    assert_eq!(moved(r#"sluice_events_total{handler="m",outcome="retry"}"#), 2.0);
    assert_eq!(moved(r#"sluice_events_total{handler="m",outcome="skipped"}"#), 1.0);
    assert_eq!(moved(r#"sluice_retries_total{handler="m"}"#), 1.0);
    assert_eq!(moved(r#"sluice_dead_letters_total{handler="m"}"#), 2.0);
    assert_eq!(moved(r#"sluice_handler_duration_seconds_count{handler="m"}"#), 4.0);
    assert_eq!(sample(&after, r#"sluice_dead_letter_depth{handler="m",stream="in"}"#), 2.0);
    assert_eq!(sample(&after, r#"sluice_pending{handler="m",stream="in"}"#), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_what_is_not_ready() {
    let redis = RedisServer::start();
    let port = free_port();
    // Readiness checks the config in force: a handler no host has started.
    let state = sluice::admin::AdminState::new(
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
            Fixture::new(&redis, "", "[handlers.z]\nplugin = \"behave.wasm\"\nstreams = [\"zs\"]\n").config(),
        )),
        &sluice::stream::Redis::connect(&redis.url(), &Default::default()).await.unwrap(),
        Default::default(),
        Default::default(),
        None,
    );
    let token = tokio_util::sync::CancellationToken::new();
    let listener = sluice::admin::bind(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    tokio::spawn(sluice::admin::serve(listener, state, token.clone()));
    let (code, body) = tokio::task::spawn_blocking(move || get(port, "/readyz")).await.unwrap();
    token.cancel();
    assert_eq!((code, body.as_str()), (503, "not ready: handler z is not consuming zs yet\n"));
}
