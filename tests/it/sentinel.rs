//! Redis Sentinel (`[redis] sentinels`): a host asks the sentinels where
//! the primary is, and follows a failover, coordinated or after a crash, to
//! the replica they promote, losing nothing; logged in as ACL users with the
//! least the docs say it needs, on the data servers and the sentinel; over
//! TLS, to the sentinel too or to the data servers only; with three
//! sentinels, one of them down; and in a database other than 0.

use crate::support::*;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use sluice::config::Config;
use std::collections::HashSet;

/// What a sentinel's ACL user needs, as docs/operating.md says: redis-rs
/// asks a sentinel `ROLE` too. (With `sentinel|masters` alone the host
/// stops at start: "no permissions to run the 'role' command".)
const SENTINEL_USER_NEEDS: &str = "+sentinel|masters +role";

/// `behave` on `in`, publishing each event's `n` to `out`.
const HANDLER: &str = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n";

/// Sends events `from..to`, each publishing its number to `out`.
async fn send_numbers(conn: &mut MultiplexedConnection, from: u64, to: u64) {
    for n in from..to {
        let publish = [json!({"stream": "out", "type": "n", "data": {"n": n}})];
        send(conn, "in", "n", json!({"action": "publish", "publish": publish, "n": n})).await;
    }
}

/// Waits until `out` on `conn` holds every number below `n`; returns how
/// many entries it holds (more than `n` if some were handled twice).
async fn until_published(conn: &MultiplexedConnection, n: u64) -> usize {
    eventually(SOON, &format!("numbers 0..{n} in out"), || {
        let mut c = conn.clone();
        async move {
            let out = entries(&mut c, "out").await;
            let seen: HashSet<u64> = out
                .iter()
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(&field(e, "data")).ok()?["n"].as_u64())
                .collect();
            (0..n).all(|i| seen.contains(&i)).then_some(out.len())
        }
    })
    .await
}

/// Starts a host of `fx` behind `set`'s sentinel and has it handle events
/// 0 to 9, until the replica has them all ([`until_in_sync`]). The host is
/// killed if the test fails before it is stopped.
async fn ten_handled(set: &SentinelSet, fx: &Fixture) -> Hosts {
    let hosts = Hosts(vec![fx.spawn_binary_logging_json("info")]);
    let mut first = set.primary_conn().await;
    send_numbers(&mut first, 0, 10).await;
    until_published(&first, 10).await;
    until_in_sync(&first).await;
    hosts
}

/// Waits until the 10 events sent first are finished, and every write so
/// far (the host's commits included) is on the replica too: Sentinel
/// promotes a replica without waiting for it to catch up, so what it lacks
/// would be lost by Redis, and could not be handled after.
async fn until_in_sync(first: &MultiplexedConnection) {
    until_finished(first, "in", "h", 10).await;
    eventually(SOON, "the replica in sync", || {
        let mut c = first.clone();
        async move {
            let synced: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut c).await.ok()?;
            (synced == 1).then_some(())
        }
    })
    .await;
}

/// After a failover to `promoted`: sends events 10 to 19 there, waits
/// until all 20 are handled, stops the host, and requires that it said
/// where the primary went.
async fn handled_on_the_new_primary(set: &SentinelSet, mut hosts: Hosts, promoted: u16) {
    let mut second = set.conn(promoted).await;
    send_numbers(&mut second, 10, 20).await;
    until_published(&second, 20).await;
    until_finished(&second, "in", "h", 20).await;
    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let moved = saying(&lines, &format!("the sentinels name a new primary for primary: 127.0.0.1:{promoted}"));
    assert!(!moved.is_empty(), "the host said where the primary went: {lines:#?}");
}

/// A host behind `set` with no credentials of its own handles ten events,
/// the sentinel fails the primary over, and the host handles ten more on
/// the new one.
async fn follows_a_failover(set: &SentinelSet) {
    let fx = Fixture::with_redis(&set.host_keys(), "", HANDLER);
    let hosts = ten_handled(set, &fx).await;

    let promoted = tokio::task::block_in_place(|| set.failover());
    handled_on_the_new_primary(set, hosts, promoted).await;
}

/// A coordinated failover (`SENTINEL FAILOVER`): the host's connections to
/// the old primary are closed by the sentinel, or meet `READONLY` once it is
/// a replica, and are replaced by ones to where the sentinel says the
/// primary is now; events sent to the new primary are handled, and the host
/// says where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_follows_a_failover() {
    let set = tokio::task::block_in_place(SentinelSet::start);
    follows_a_failover(&set).await;
}

/// A crash of the primary (`kill -9`): the sentinel promotes the replica
/// after a second without an answer. The host's connections to the dead
/// primary fail, and it asks the sentinel again until it names the new
/// one; every event is handled, those sent before the crash (the replica
/// had them) and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_follows_its_primary_crashing() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let fx = Fixture::with_redis(&set.host_keys(), "", HANDLER);
    let hosts = ten_handled(&set, &fx).await;

    let promoted = tokio::task::block_in_place(|| set.crash_primary());
    handled_on_the_new_primary(&set, hosts, promoted).await;
}

/// Behind Sentinel with ACL users on every server, as a managed set-up has
/// them: the host logs in to the data servers as a user made from the rule
/// `sluice acl` prints, and to the sentinel as a user allowed only what
/// docs/operating.md says a sentinel's user needs. It follows a failover,
/// and no server refused it anything (their `ACL LOG`s are empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_logs_in_as_acl_users_and_follows_a_failover() {
    let doc = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    assert!(doc.contains("a sentinel's ACL user needs `sentinel|masters` and `role`"), "docs/operating.md says so");
    let set = tokio::task::block_in_place(SentinelSet::start);
    let fx = Fixture::with_redis(&set.host_keys_as("sluice:s3cret@", "watcher:w4tch@"), "", HANDLER);
    let config = Config::load_unchecked(&fx.config_path).unwrap();
    let data_rule = sluice::stream::acl::rule(&config, "sluice").replace(">PASSWORD", ">s3cret");
    let sentinel_rule = format!("ACL SETUSER watcher on >w4tch -@all {SENTINEL_USER_NEEDS}");
    let users = async |conn: &mut MultiplexedConnection, rule: &str| {
        let words: Vec<&str> = rule.split(' ').collect();
        let () = redis::cmd(words[0]).arg(&words[1..]).query_async(conn).await.unwrap();
    };
    for server in &set.servers {
        users(&mut set.conn(server.port).await, &data_rule).await;
    }
    users(&mut set.sentinel_conn().await, &sentinel_rule).await;
    let hosts = ten_handled(&set, &fx).await;

    let promoted = tokio::task::block_in_place(|| set.failover());
    handled_on_the_new_primary(&set, hosts, promoted).await;
    for server in &set.servers {
        let refused = acl_refusals(&mut set.conn(server.port).await).await;
        assert!(refused.is_empty(), "server {} refused: {refused:#?}", server.port);
    }
    let refused = acl_refusals(&mut set.sentinel_conn().await).await;
    assert!(refused.is_empty(), "the sentinel refused: {refused:#?}");
}

/// Behind Sentinel over TLS: the data servers and the sentinel speak only
/// TLS, with certificates of the test's own CA (`ca_file`). The host finds
/// the primary, follows a failover, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_over_tls_follows_a_failover() {
    let pki = Pki::generate();
    let set = tokio::task::block_in_place(|| SentinelSet::start_tls(&pki, true));
    follows_a_failover(&set).await;
}

/// Mutual TLS behind Sentinel: the data servers and the sentinel require a
/// client certificate signed by the CA. Without one (`cert_file` and
/// `key_file`), `sluice check` fails with one line that names the
/// sentinels and why; with it, the host shows it to the sentinel and the
/// data servers alike, and follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_over_mutual_tls_follows_a_failover() {
    let pki = Pki::generate();
    let set = tokio::task::block_in_place(|| SentinelSet::start_mutual_tls(&pki));
    let keys = set.host_keys();
    let without: Vec<&str> =
        keys.lines().filter(|l| !l.starts_with("cert_file") && !l.starts_with("key_file")).collect();
    assert_eq!(without.len() + 2, keys.lines().count(), "{keys}");
    let fx = Fixture::with_redis(&without.join("\n"), "", HANDLER);
    let out = sluice(&["check"], &fx.config_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for words in ["rediss://primary", "sentinels", "client certificate", "cert_file and key_file"] {
        assert!(stderr.contains(words), "says {words:?}: {stderr}");
    }

    follows_a_failover(&set).await;
}

/// Data servers that speak only TLS behind a sentinel that speaks plain
/// TCP, as where the sentinels sit inside a private network: the
/// certificates go to the data servers only (redis-rs refuses them for a
/// plain connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_a_plain_sentinel_reaches_tls_data_servers() {
    let pki = Pki::generate();
    let set = tokio::task::block_in_place(|| SentinelSet::start_tls(&pki, false));
    follows_a_failover(&set).await;
}

/// Three sentinels, two of which must agree, and the first the host's list
/// names is down from the start, as one of three may be at any time: the
/// host asks the next, and when the primary crashes the two left agree on
/// the replica, and the host follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_three_sentinels_one_down_follows_its_primary_crashing() {
    let mut set = tokio::task::block_in_place(SentinelSet::start_three);
    set.kill_sentinel(0);
    let fx = Fixture::with_redis(&set.host_keys(), "", HANDLER);
    let hosts = ten_handled(&set, &fx).await;

    let promoted = tokio::task::block_in_place(|| set.crash_primary());
    handled_on_the_new_primary(&set, hosts, promoted).await;
}

/// A database other than 0, named by `url`'s path (`redis://primary/3`):
/// the host reads, commits and keeps its own keys there, before and after
/// a failover, and database 0 stays empty on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_sentinel_keeps_to_the_database_its_url_names() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    set.db = 3;
    follows_a_failover(&set).await;
    // (Asked until answered: the old primary may be loading its new
    // primary's data.)
    let set = &set;
    let keys = |port: u16, db: u8| async move {
        let what = format!("the keys of database {db} on port {port}");
        eventually(SOON, &what, move || async move {
            let mut conn = set.conn_to_db(port, db).await;
            redis::cmd("KEYS").arg("*").query_async::<Vec<String>>(&mut conn).await.ok()
        })
        .await
    };
    for server in &set.servers {
        let zero = keys(server.port, 0).await;
        assert!(zero.is_empty(), "keys in database 0 of the server on port {}: {zero:?}", server.port);
        let three = keys(server.port, 3).await;
        assert!(three.iter().any(|k| k == "out"), "database 3 of the server on port {}: {three:?}", server.port);
    }
}
