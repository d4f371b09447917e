//! The fault audit, short (`support::audit`; `cargo bench --bench faults`
//! runs it at full size): two `sluice run` hosts handle a numbered load
//! while one fault strikes, and afterwards every number is handled (in the
//! output stream, or for one in four that writes nothing, logged by a host
//! as handled) or in the dead-letter stream, and none written twice.
//! recovery.rs and cluster.rs already cover a kill -9, a Redis restart and a
//! failover with one host; these add the second host and the per-number
//! account.

use crate::support::audit::{self, Account, Fault, Fsync, Plan};
use crate::support::{Proxy, RedisServer, plugins_dir};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Hundreds of events over three seconds, two hosts, a 1 s `claim_idle_ms`.
fn short(fault: Fault) -> Plan {
    Plan {
        claim_idle: Duration::from_secs(1),
        concurrency: 8,
        drain: Duration::from_secs(20),
        ..Plan::new(fault, 300, 100, plugins_dir())
    }
}

/// The load drained, and nothing Redis kept is lost or misplaced: for a
/// crash that may lose what a replica had not received (counted as lost by
/// Redis) or deliver an event again.
fn assert_nothing_kept_lost(a: &Account) {
    eprintln!("{}", a.summary());
    let why = format!("{}\n{}", a.summary(), log_tails(a));
    assert!(a.drained, "the load did not drain: {why}");
    assert_eq!(a.lost_by_sluice(), 0, "lost by Sluice: {why}");
    assert_eq!(a.misplaced, 0, "events not rejected dead-lettered, or rejected ones handled: {why}");
}

/// The last lines of each host's log, for a failure message.
fn log_tails(a: &Account) -> String {
    let tail =
        |log: &String| log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    a.logs.iter().enumerate().map(|(i, l)| format!("--- host-{i} ---\n{}", tail(l))).collect::<Vec<_>>().join("\n")
}

/// The load drained, and every number published is handled or
/// dead-lettered as planned, once.
fn assert_whole(a: &Account, events: usize) {
    eprintln!("{}", a.summary());
    let why = format!("{}\n{}", a.summary(), log_tails(a));
    assert!(a.drained, "the load did not drain: {why}");
    assert_eq!(a.events, events, "every event was published: {why}");
    assert_eq!((a.lost, a.duplicated), (0, 0), "lost, duplicated: {why}");
    assert_eq!(a.out_of_order, 0, "outputs out of their key's order: {why}");
    // And each where it belongs: these faults exhaust no event's attempts.
    assert_eq!(a.misplaced, 0, "events not rejected dead-lettered, or rejected ones handled: {why}");
    assert_eq!(a.handled + a.dead_lettered, events, "{why}");
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

/// The audit's network faults are real: the proxy forwards, delays, holds
/// bytes while stalled (the connection stays open), and resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_delays_stalls_and_resets() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let mut conn = redis::Client::open(proxy.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    assert_eq!(proxy.open_connections(), 1);

    proxy.set_latency(Duration::from_millis(50));
    let sent = Instant::now();
    ping(&mut conn).await.unwrap();
    assert!(sent.elapsed() >= Duration::from_millis(100), "50 ms each way: {:?}", sent.elapsed());
    proxy.set_latency(Duration::ZERO);

    proxy.stall();
    let mut stalled = conn.clone();
    let held = tokio::spawn(async move { ping(&mut stalled).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "nothing is forwarded while stalled");
    proxy.resume();
    assert_eq!(held.await.unwrap().unwrap(), "PONG", "the held command goes through on resume");

    // A reset is an RST, not a FIN: the peer reads an error, not an end.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    raw.write_all(b"PING\r\n").await.unwrap();
    let mut reply = [0u8; 7];
    raw.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
    assert_eq!(proxy.reset(), 2, "both connections");
    let read = raw.read(&mut reply).await;
    assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset));
    assert!(ping(&mut conn).await.is_err(), "the other connection was reset too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_lose_and_duplicate_nothing_across_kills() {
    // Events compute for 10 ms, so each kill finds some in flight.
    let plan = Plan { busy: Some(Duration::from_millis(10)), events: 200, rate: 60, ..short(Fault::Kill { times: 2 }) };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
    assert!(a.held > 0, "the kills hit events in flight: {}", a.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_ordering_by_key_keep_each_keys_order_across_kills() {
    // The same with `order_by` over two keys, each with an event every
    // 10 ms: a killed host, started again, takes its keys back from their
    // first pending entries, while the other host's reads queue the keys'
    // new entries behind them. (Without `order_by`, 2 to 4 outputs in three
    // runs came out of their key's order: the other host committed new
    // entries before the restarted host committed those it held.)
    let plan = Plan {
        busy: Some(Duration::from_millis(10)),
        events: 600,
        rate: 200,
        keys: Some(2),
        ..short(Fault::Kill { times: 2 })
    };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
    assert!(a.held > 0, "the kills hit events in flight: {}", a.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_hosts_late_commits_are_refused_and_publish_nothing_twice() {
    // Events compute for 20 ms, so some are in flight when host-0 stops;
    // it stays stopped past claim_idle_ms, and host-1 takes them over.
    let pause = Fault::Pause { hold: Duration::from_secs(2) };
    let plan = Plan { busy: Some(Duration::from_millis(20)), events: 160, rate: 40, ..short(pause) };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
    assert!(a.held > 0, "host-0 held events when it stopped: {}", a.summary());
    // On waking, host-0 ran what it had read, among it what its blocked read
    // was handed while it was stopped, and the commit script refused to write
    // what those that publish produced: host-1 had taken those entries over,
    // or finished them. Those that write nothing were acknowledged all the
    // same, by a plain XACK. (What was mid-run when it stopped is past its
    // deadline on waking: a timeout, retried, not committed.)
    let warned = audit::LATE_COMMIT_WARNINGS.iter().any(|w| a.logs[0].contains(w));
    assert!(warned, "host-0 warned of its refused late commits: {}\n{}", a.summary(), log_tails(&a));
    let counted = a.counter(0, "sluice_ownership_lost_total") + a.counter(0, "sluice_commits_already_finished_total");
    assert!(counted >= 1.0, "host-0 counted them: {:?}", a.metrics[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_appendfsync_always_loses_nothing_across_two_hosts() {
    let plan = short(Fault::RedisRestart(Fsync::Always));
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_appendfsync_everysec_costs_at_most_what_redis_lost() {
    let plan = short(Fault::RedisRestart(Fsync::Everysec));
    let a = audit::run(&plan).await;
    // What Redis acknowledged and then lost (the last second of writes, at
    // worst) is Redis's promise, not Sluice's: only report it. Everything
    // Redis kept must be accounted for, once.
    eprintln!(
        "{}\nappendfsync everysec: Redis lost {} of {} acknowledged events",
        a.summary(),
        a.lost_by_redis,
        a.events
    );
    let why = format!("{}\n{}", a.summary(), log_tails(&a));
    assert!(a.drained, "the load did not drain: {why}");
    assert_eq!((a.lost_by_sluice(), a.duplicated), (0, 0), "lost by Sluice, duplicated: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_appendfsync_everysec_keeps_each_keys_order() {
    // With `order_by` over ten keys. Redis comes back from its append-only
    // file with the keys' queues and leases as they were written: what was
    // in flight is delivered again, and each key's outputs are still
    // committed in its order.
    let plan = Plan { keys: Some(10), ..short(Fault::RedisRestart(Fsync::Everysec)) };
    let a = audit::run(&plan).await;
    let why = format!("{}\n{}", a.summary(), log_tails(&a));
    assert!(a.drained, "the load did not drain: {why}");
    assert_eq!((a.lost_by_sluice(), a.duplicated), (0, 0), "lost by Sluice, duplicated: {why}");
    assert_eq!(a.out_of_order, 0, "outputs out of their key's order: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_under_load_lose_and_duplicate_nothing() {
    let plan = short(Fault::Reset { times: 2 });
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
    assert!(a.connections_reset > 0, "the hosts' connections were reset: {}", a.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_by_a_reply_a_reset_lost_are_taken_back_at_once() {
    // A read whose reply dies with its connection leaves its entries pending
    // with a live host that never saw them. The host takes them back when it
    // reconnects, not claim_idle_ms later (30 s here, past the deadline).
    let plan = Plan {
        claim_idle: Duration::from_secs(30),
        drain: Duration::from_secs(10),
        ..short(Fault::Reset { times: 3 })
    };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
    assert!(a.connections_reset > 0, "the hosts' connections were reset: {}", a.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_stall_loses_and_duplicates_nothing() {
    // Longer than claim_idle_ms: on resume the hosts may take each other's
    // entries over, and only one commit of each may write.
    let plan = Plan { events: 400, ..short(Fault::Stall { hold: Duration::from_secs(2) }) };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_ms_of_latency_loses_and_duplicates_nothing() {
    let plan = short(Fault::Latency { latency: Duration::from_millis(50), hold: Duration::from_secs(1) });
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_under_two_hosts_loses_and_duplicates_nothing() {
    // Longer: the failover and the cluster settling take a few seconds,
    // and the load must outlast them.
    let plan = Plan { events: 700, ..short(Fault::Failover) };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_two_hosts_loses_nothing_redis_kept() {
    // The input's master (and the output's) is killed; its replica takes
    // over. Redis may lose what the replica had not received: events the
    // producer was told were added (lost by Redis, not by Sluice), and
    // deliveries and acknowledgements, which deliver again, so an event
    // may be handled twice. Sluice loses nothing Redis kept.
    let plan = Plan { events: 700, ..short(Fault::MasterCrash) };
    let a = audit::run(&plan).await;
    assert_nothing_kept_lost(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_target_killed_with_its_replica_behind_loses_nothing() {
    // The handler publishes to a stream on another master than the input's,
    // through the outbox. That master's replica is cut off for three
    // seconds, then the master is killed and the replica promoted without
    // the writes of that while. The relay deleted no outbox entry that no
    // replica had, so it writes them again on the new master. The input's
    // master is untouched: Redis loses no event, and none is handled twice.
    let plan = Plan { events: 700, ..short(Fault::TargetCrash { behind: Duration::from_secs(3) }) };
    let a = audit::run(&plan).await;
    assert_whole(&a, plan.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_behind_sentinel_killed_under_two_hosts_loses_nothing_redis_kept() {
    // The hosts find the primary through the sentinel; it is killed, and
    // the sentinel promotes its replica. As with a cluster master's crash,
    // Redis may lose what the replica had not received; Sluice loses
    // nothing Redis kept.
    let plan = Plan { events: 700, ..short(Fault::SentinelCrash) };
    let a = audit::run(&plan).await;
    assert_nothing_kept_lost(&a);
}
