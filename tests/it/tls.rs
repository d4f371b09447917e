//! TLS to Redis, as managed services require it: server-authenticated with
//! a private CA, mutual TLS with a client certificate, and a one-line error
//! naming the URL (password masked) and the reason for each way it goes
//! wrong, from `sluice check` before `run`, and from `run` itself.

use crate::support::*;
use serde_json::json;
use std::process::{Command, Output};

const HANDLER: &str = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n";

/// The `[redis]` keys for `url` with `pki`'s CA, and its client certificate
/// when `client_cert`.
fn tls_redis(url: &str, pki: &Pki, ca: &str, client_cert: bool) -> String {
    let mut keys = format!("url = \"{url}\"\nca_file = \"{}\"\n", pki.file(ca));
    if client_cert {
        keys.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.file("client.pem"),
            pki.file("client.key")
        ));
    }
    keys
}

fn sluice(args: &[&str], fx: &Fixture) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).arg("--config").arg(&fx.config_path).output().unwrap()
}

/// Runs one event through a host on `fx` and checks its publish landed.
async fn round_trip(fx: &Fixture, conn: &mut redis::aio::MultiplexedConnection) {
    let host = fx.start();
    let data = json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {"n": 1}}]});
    send(conn, "in", "t", data).await;
    let out = until_entries(conn, "out", 1).await;
    host.stop().await;
    assert_eq!(field(&out[0], "data"), r#"{"n":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_authenticated_tls_with_a_private_ca_runs_the_whole_path() {
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki, false);
    let fx = Fixture::with_redis(&tls_redis(&redis.url(), &pki, "ca.pem", false), "", HANDLER);
    let out = sluice(&["check"], &fx);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("connected to Redis at {}", redis.url())), "{stdout}");
    round_trip(&fx, &mut redis.tls_conn(&pki, false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki, true);
    let fx = Fixture::with_redis(&tls_redis(&redis.url(), &pki, "ca.pem", true), "", HANDLER);
    round_trip(&fx, &mut redis.tls_conn(&pki, true).await).await;

    let without = Fixture::with_redis(&tls_redis(&redis.url(), &pki, "ca.pem", false), "", HANDLER);
    let out = sluice(&["check"], &without);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&redis.url()), "names the URL: {stderr}");
    assert!(stderr.contains("client certificate"), "says why: {stderr}");
}

/// The one error line `sluice check`, and then `sluice run`, end with.
fn failure(fx: &Fixture) -> String {
    let out = sluice(&["check"], fx);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let check = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(check.lines().count(), 1, "one line: {check}");
    let out = sluice(&["run", "--no-watch"], fx);
    assert_eq!(out.status.code(), Some(1), "run fails at start too");
    let run = String::from_utf8_lossy(&out.stderr);
    assert!(run.lines().any(|l| l == check), "run ends with the same error: {run}");
    check
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tls_mistake_is_one_line_naming_the_url_and_the_reason() {
    let pki = Pki::generate();
    let good = RedisServer::start_tls(&pki, false);
    let rogue = RedisServer::start_tls_as(&pki, "rogue", false);
    let plain = RedisServer::start();
    // A password in the URL must never be shown.
    let with_password = |port: u16| format!("rediss://sluice:s3cret@127.0.0.1:{port}");
    let shown = |port: u16| format!("rediss://sluice:***@127.0.0.1:{port}");
    let cases = [
        (rogue.port, "ca.pem", "not signed by a CA Sluice trusts"),
        (good.port, "other-ca.pem", "not signed by a CA Sluice trusts"),
        (plain.port, "ca.pem", "is this a plain-text port (use redis:// for it)"),
    ];
    for (port, ca, reason) in cases {
        let fx = Fixture::with_redis(&tls_redis(&with_password(port), &pki, ca, false), "", HANDLER);
        let line = failure(&fx);
        assert!(line.contains(&shown(port)), "{line}");
        assert!(line.contains(reason), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
    }

    let missing_key = format!(
        "url = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        with_password(good.port),
        pki.file("client.pem"),
        pki.file("nowhere.key")
    );
    let fx = Fixture::with_redis(&missing_key, "", HANDLER);
    let line = failure(&fx);
    assert!(line.contains("config.toml:4:12: redis.key_file: cannot read"), "{line}");
    assert!(line.contains("nowhere.key") && line.contains(&shown(good.port)), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn tls_settings_are_checked_with_the_config() {
    let cases = [
        ("url = \"redis://127.0.0.1:1\"\nca_file = \"x.pem\"\n", "redis.ca_file: ca_file is for rediss:// URLs"),
        ("url = \"rediss://127.0.0.1:1#insecure\"\n", "TLS hostname verification is always on"),
        ("cluster = true\n", "redis.cluster: cluster = true needs a url"),
    ];
    for (redis, expected) in cases {
        let fx = Fixture::with_redis(redis, "", HANDLER);
        let err = sluice::config::Config::load(&fx.config_path).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let pki = Pki::generate();
    let half = format!("url = \"rediss://127.0.0.1:1\"\ncert_file = \"{}\"\n", pki.file("client.pem"));
    let fx = Fixture::with_redis(&half, "", HANDLER);
    let err = sluice::config::Config::load(&fx.config_path).unwrap_err().to_string();
    assert!(err.contains("redis.cert_file: cert_file needs key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_tls_runs_the_whole_path() {
    // Managed clusters (ElastiCache and the like with cluster mode and
    // encryption in transit) speak only TLS, and announce the nodes that a
    // client must then verify too.
    let pki = Pki::generate();
    let cluster = Cluster::start_tls(&pki);
    // A CA that did not sign the nodes' certificates: the same one line as
    // for one server.
    let keys = format!("{}cluster = true\n", tls_redis(&cluster.url(), &pki, "other-ca.pem", false));
    let line = failure(&Fixture::with_redis(&keys, "", HANDLER));
    assert!(line.contains(&cluster.url()) && line.contains("not signed by a CA Sluice trusts"), "{line}");
    let keys = format!("{}cluster = true\n", tls_redis(&cluster.url(), &pki, "ca.pem", false));
    let fx = Fixture::with_redis(&keys, "", HANDLER);
    let checked = sluice(&["check"], &fx);
    assert!(checked.status.success(), "check: {}", String::from_utf8_lossy(&checked.stderr));
    let host = fx.start();
    let n = 20;
    for i in 0..n {
        let data = json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {"n": i}}]});
        let published = sluice(&["publish", "in", "--type", "t", "--data", &data.to_string()], &fx);
        assert!(published.status.success(), "publish: {}", String::from_utf8_lossy(&published.stderr));
    }
    let out_master = cluster.master_of("out");
    eventually(std::time::Duration::from_secs(30), &format!("{n} entries in out"), || {
        let len = cluster.cli(out_master, &["XLEN", "out"]);
        std::future::ready((len.trim() == n.to_string()).then_some(()))
    })
    .await;
    host.stop().await;
    let in_master = cluster.master_of("in");
    assert_eq!(cluster.cli(in_master, &["XPENDING", "in", "h"]).lines().next().map(str::trim), Some("0"));
}
