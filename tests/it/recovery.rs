//! Nothing is lost across restarts, crashes and takeovers: attempts are
//! counted by Redis, a SIGKILLed host's entries are delivered again, a
//! second host claims a dead host's entries (and the scan for them spares
//! the scanning host's own), three hosts share every group and take a
//! killed one's entries within a scan, shutdown drains, a Redis restart is
//! ridden out, a group deleted mid-delivery is named and made again (a
//! commit that meets it missing gives up at once), a paused host's late
//! plain XACK is warned of by the host that took its entry over, every
//! connection notices a peer that vanished, and every connection follows a
//! failover that moved the address or reopens after a login refused.

use crate::support::*;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// A `behave` handler `h` on `in` that may publish to `out`, with extra keys.
fn behave(extra: &str) -> String {
    format!("[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n{extra}\n")
}

/// Data that makes `behave` compute for `ms` and then publish one event.
fn busy(ms: u64) -> serde_json::Value {
    json!({"action": "busy", "ms": ms, "publish": [{"stream": "out", "type": "done", "data": {}}]})
}

async fn wait_finished(conn: &MultiplexedConnection, n: usize, timeout: Duration) {
    eventually(timeout, &format!("{n} entries finished and none pending"), || {
        let mut c = conn.clone();
        async move { (finished(&mut c, "in", "h").await == n && pending(&mut c, "in", "h").await == 0).then_some(()) }
    })
    .await;
}

/// Every entry of `in` has at least one publish in `out` caused by it.
async fn assert_every_input_handled(conn: &mut MultiplexedConnection) {
    let causes: HashSet<String> = entries(conn, "out").await.iter().map(|e| field(e, "causation_id")).collect();
    let missing: Vec<String> =
        entries(conn, "in").await.into_iter().map(|e| e.id).filter(|id| !causes.contains(id)).collect();
    assert!(missing.is_empty(), "entries never handled: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_across_a_restart() {
    let redis = RedisServer::start();
    let host_keys = "consumer = \"stable\"\nclaim_idle_ms = 120000";
    let fx = Fixture::new(&redis, host_keys, &behave("max_attempts = 2"));
    let mut conn = redis.conn().await;
    // Attempt 1 asks for a retry a minute later: the host stops before then.
    send(&mut conn, "in", "t", json!({"action": "retry", "delay_ms": 60000})).await;
    let host = fx.start();
    until_pending(&conn, "in", "h", 1).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty(), "one attempt is not the last");
    // The restarted host takes it back as attempt 2, the last one.
    let host = fx.start();
    let dl = until_entries(&conn, "in:dlq", 1).await.remove(0);
    host.stop().await;
    assert_eq!(field(&dl, "sluice.attempts"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_batch_loses_nothing() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "consumer = \"host-a\"", &behave("concurrency = 8"));
    let mut conn = redis.conn().await;
    for _ in 0..200 {
        send(&mut conn, "in", "t", busy(10)).await;
    }
    let mut host = fx.spawn_binary();
    until_entries(&conn, "out", 20).await;
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    let done = finished(&mut conn, "in", "h").await;
    let in_flight = pending(&mut conn, "in", "h").await;
    assert!(done < 200, "the kill should land mid-run (all {done} finished already)");
    assert!(in_flight > 0, "the kill should leave entries pending");
    let mut host = fx.spawn_binary();
    wait_finished(&conn, 200, Duration::from_secs(60)).await;
    host.kill().unwrap();
    host.wait().unwrap();
    assert_every_input_handled(&mut conn).await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_claims_a_dead_hosts_entries() {
    let redis = RedisServer::start();
    let handler = behave("concurrency = 4\ntimeout_ms = 500");
    let dead = Fixture::new(&redis, "consumer = \"dead\"\nclaim_idle_ms = 1000", &handler);
    let alive = Fixture::new(&redis, "consumer = \"alive\"\nclaim_idle_ms = 1000", &handler);
    let mut conn = redis.conn().await;
    for _ in 0..40 {
        send(&mut conn, "in", "t", busy(30)).await;
    }
    let mut host = dead.spawn_binary();
    until_entries(&conn, "out", 4).await;
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(pending(&mut conn, "in", "h").await > 0, "the dead host left entries pending");
    let survivor = alive.start();
    wait_finished(&conn, 40, Duration::from_secs(30)).await;
    survivor.stop().await;
    assert_every_input_handled(&mut conn).await;
}

/// The scan for entries abandoned by dead hosts leaves the scanning host's
/// own alone: one it still holds (its delivery slow to get the CPU, as for
/// a handler demoted to idle priority on a busy machine) is neither claimed
/// nor counted as delivered again. (`XAUTOCLAIM` counted one at every scan,
/// until the entry was dead-lettered as out of attempts, its handler never
/// having failed.) Another consumer's is taken and counted once, page by
/// page, and one deleted from the stream is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_takeover_scan_spares_the_scanners_own_entries_and_counts_anothers_once() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "in", "h").await.unwrap();
    let mut ids = vec![];
    for i in 0..3 {
        ids.push(send(&mut conn, "in", "t", json!({ "n": i })).await);
    }
    let read = |consumer: &str, count: usize| {
        let mut c = conn.clone();
        let consumer = consumer.to_owned();
        async move {
            let _: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("h")
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg("in")
                .arg(">")
                .query_async(&mut c)
                .await
                .unwrap();
        }
    };
    read("scanner", 1).await;
    read("dead", 2).await;
    let _: i64 = redis::cmd("XDEL").arg("in").arg(&ids[1]).query_async(&mut conn).await.unwrap();
    let scan = |cursor: &str, count: usize| {
        let mut c = conn.clone();
        let cursor = cursor.to_owned();
        async move { sluice::stream::take_over(&mut c, "in", "h", "scanner", Duration::ZERO, &cursor, count).await.unwrap() }
    };
    // A page of one: the scanner's own entry looked at and left (it does
    // not count), the dead host's first entry taken, found deleted.
    let page = scan("0-0", 1).await;
    assert!(page.found.is_empty(), "{page:?}");
    assert_eq!(page.deleted, [ids[1].clone()]);
    let next = page.next.expect("a page that stopped early has a next one");
    // The rest: the dead host's other entry taken, as its second delivery.
    let page = scan(&next, 10).await;
    let taken: Vec<(&str, u32)> = page.found.iter().map(|d| (d.entry.id.as_str(), d.attempt)).collect();
    assert_eq!(taken, [(ids[2].as_str(), 2)], "{page:?}");
    assert!(page.deleted.is_empty(), "{page:?}");
    assert_eq!(page.next, None);
    // Scanned again: the scanner's entries, both now its own, stay as they are.
    assert!(scan("0-0", 10).await.found.is_empty());
    let counts: Vec<(String, u64)> =
        pending_rows(&mut conn, "h", "scanner").await.into_iter().map(|r| (r.0, r.3)).collect();
    assert_eq!(counts, [(ids[0].clone(), 1), (ids[2].clone(), 2)]);
    assert_eq!(pending_with(&mut conn, "h", "dead").await, 0);
}

/// The entries of `in` that `group` has pending under `consumer` (none
/// before the group exists): id, consumer, ms since delivered, deliveries.
async fn pending_rows(
    conn: &mut MultiplexedConnection,
    group: &str,
    consumer: &str,
) -> Vec<(String, String, u64, u64)> {
    let rows: redis::RedisResult<_> =
        redis::cmd("XPENDING").arg("in").arg(group).arg("-").arg("+").arg(1000).arg(consumer).query_async(conn).await;
    match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some("NOGROUP") => vec![],
        Err(e) => panic!("XPENDING of in {group}: {e}"),
    }
}

/// How many entries of `in` `group` has pending under `consumer`.
async fn pending_with(conn: &mut MultiplexedConnection, group: &str, consumer: &str) -> usize {
    pending_rows(conn, group, consumer).await.len()
}

/// How long ago (ms) the first entry of `in` that `group` has pending under
/// `consumer` was delivered; `None` if none is.
async fn idle_with(conn: &mut MultiplexedConnection, group: &str, consumer: &str) -> Option<u64> {
    pending_rows(conn, group, consumer).await.first().map(|(_, _, idle, _)| *idle)
}

/// The consumers `group` knows (none before the group exists).
async fn consumers(conn: &mut MultiplexedConnection, group: &str) -> Vec<String> {
    let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> =
        redis::AsyncCommands::xinfo_consumers(conn, "in", group).await;
    reply.map(|r| r.consumers.into_iter().map(|c| c.name).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_every_group_and_take_a_killed_hosts_entries_within_a_scan() {
    const CLAIM_IDLE: Duration = Duration::from_millis(2000);
    let redis = RedisServer::start();
    // Two groups on one stream, both in every host.
    let handlers = format!(
        "{}\n[handlers.g]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nconcurrency = 4\ntimeout_ms = 500\n",
        behave("concurrency = 4\ntimeout_ms = 500")
    );
    let host = |name: &str| format!("consumer = \"{name}\"\nclaim_idle_ms = {}", CLAIM_IDLE.as_millis());
    let fixtures: Vec<Fixture> = ["a", "b", "c"].iter().map(|n| Fixture::new(&redis, &host(n), &handlers)).collect();
    let mut conn = redis.conn().await;
    let mut hosts = Hosts(fixtures.iter().map(|f| f.spawn_binary()).collect());
    // Seconds of work on two cores: every host gets some, and host a is
    // still busy when it is killed.
    for _ in 0..300 {
        send(&mut conn, "in", "t", busy(10)).await;
    }
    // Every host reads in every group.
    for group in ["h", "g"] {
        eventually(Duration::from_secs(20), &format!("three consumers in group {group}"), || {
            let mut c = conn.clone();
            async move { (consumers(&mut c, group).await.len() == 3).then_some(()) }
        })
        .await;
    }
    // Kill host a while it holds entries.
    eventually(Duration::from_secs(20), "host a holding entries", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "h", "a").await + pending_with(&mut c, "g", "a").await > 0).then_some(()) }
    })
    .await;
    hosts.0[0].kill().unwrap();
    let killed = std::time::Instant::now();
    hosts.0[0].wait().unwrap();
    let left = pending_with(&mut conn, "h", "a").await + pending_with(&mut conn, "g", "a").await;
    assert!(left > 0, "the killed host left entries pending");
    // Its entries go idle for claim_idle_ms; a scan every claim_idle_ms / 2
    // finds them. One second more for a busy machine.
    let bound = CLAIM_IDLE + CLAIM_IDLE / 2 + Duration::from_secs(1);
    eventually(bound * 2, "the killed host's entries taken over", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "h", "a").await + pending_with(&mut c, "g", "a").await == 0).then_some(()) }
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= bound, "the {left} entries of the killed host were taken over after {took:?}, more than {bound:?}");
    for group in ["h", "g"] {
        eventually(Duration::from_secs(60), &format!("group {group} finished"), || {
            let mut c = conn.clone();
            async move {
                (finished(&mut c, "in", group).await == 300 && pending(&mut c, "in", group).await == 0).then_some(())
            }
        })
        .await;
    }
    drop(hosts);
    // Each input was published for once by each group: nothing lost, and
    // nothing the killed host had committed was committed again.
    let mut outputs: std::collections::HashMap<String, usize> = Default::default();
    for output in entries(&mut conn, "out").await {
        *outputs.entry(field(&output, "causation_id")).or_default() += 1;
    }
    for input in entries(&mut conn, "in").await {
        let n = outputs.get(&input.id).copied().unwrap_or(0);
        assert_eq!(n, 2, "input {} published for {n} times by the 2 groups", input.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_events_finish() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &behave(""));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", busy(400)).await;
    until_pending(&conn, "in", "h", 1).await;
    host.stop().await;
    assert_eq!(pending(&mut conn, "in", "h").await, 0, "shutdown waited for the event and acked it");
    assert_eq!(entries(&mut conn, "out").await.len(), 1);
}

/// The same through the real binary and SIGTERM: once the process has
/// exited, nothing more can commit, so an acknowledgement still on its way
/// when the host stopped would show here as a pending entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_only_after_in_flight_events_are_acknowledged() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &behave("concurrency = 8"));
    let mut host = fx.spawn_binary();
    let mut conn = redis.conn().await;
    for _ in 0..8 {
        send(&mut conn, "in", "t", busy(300)).await;
    }
    until_pending(&conn, "in", "h", 8).await;
    let status = terminate(&mut host).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(pending(&mut conn, "in", "h").await, 0, "every event in flight was acknowledged before the exit");
    assert_eq!(entries(&mut conn, "out").await.len(), 8);
}

/// SIGTERM while the host is still starting (here, compiling a Python
/// plugin, which takes seconds) is neither lost nor fatal: the host stops
/// there, without waiting for the compile, and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_starting_stops_the_host_cleanly() {
    let redis = RedisServer::start();
    let handlers = "[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n\n[handlers.b]\nplugin = \"behave-py.wasm\"\nstreams = [\"in\"]\n";
    let fx = Fixture::new(&redis, "", handlers);
    let cache = fx.config().state_dir().join("cache");
    let mut host = fx.spawn_binary();
    // The plugins load in the handlers' order: once a's is in the cache,
    // b's is compiling.
    eventually(SOON, "the first plugin compiled", || {
        let compiled = std::fs::read_dir(&cache)
            .map(|d| d.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "cwasm")))
            .unwrap_or(false);
        async move { compiled.then_some(()) }
    })
    .await;
    let signalled = std::time::Instant::now();
    let status = terminate(&mut host).await;
    assert!(status.success(), "exit status {status}");
    // Well within the compile's seconds (5-6 s on a quiet machine).
    assert!(signalled.elapsed() < Duration::from_secs(2), "took {:?} to stop", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing() {
    let aof = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"];
    let mut redis = RedisServer::start_with(&aof);
    let fx = Fixture::new(&redis, "consumer = \"steady\"\nclaim_idle_ms = 3000", &behave("concurrency = 4"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    for _ in 0..50 {
        send(&mut conn, "in", "t", busy(5)).await;
    }
    until_entries(&conn, "out", 10).await;
    redis.restart();
    let mut conn = redis.conn().await;
    for _ in 0..50 {
        send(&mut conn, "in", "t", busy(5)).await;
    }
    wait_finished(&conn, 100, Duration::from_secs(60)).await;
    host.stop().await;
    assert_every_input_handled(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deleted_mid_delivery_is_named_and_made_again() {
    // Two events are in flight (one writes nothing, a plain XACK; one
    // publishes, the script) and more wait for a permit, so the reader is
    // not blocked in Redis, when the group is deleted. The first commit to
    // come back finds it missing, and the host says so (not that another
    // consumer finished the entry); the other may come after the reader
    // made the group again from the stream's start. No commit gives up
    // (an error), and every entry is handled in the new group.
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &behave("concurrency = 2"));
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "busy", "ms": 500})).await;
    for _ in 0..5 {
        send(&mut conn, "in", "t", busy(500)).await;
    }
    let mut host = fx.spawn_binary_logging_json("warn");
    until_pending(&conn, "in", "h", 2).await;
    let _: usize = redis::cmd("XGROUP").arg("DESTROY").arg("in").arg("h").query_async(&mut conn).await.unwrap();
    wait_finished(&conn, 6, Duration::from_secs(30)).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let says_missing =
        |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").contains("group is missing");
    assert!(lines.iter().any(says_missing), "{lines:#?}");
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{lines:#?}");
    let published: HashSet<String> = entries(&mut conn, "out").await.iter().map(|e| field(e, "causation_id")).collect();
    let ids: Vec<String> = entries(&mut conn, "in").await.into_iter().map(|e| e.id).collect();
    assert!(ids[1..].iter().all(|id| published.contains(id)), "every publishing entry handled: {published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_meets_a_missing_group_gives_up_at_once() {
    // The group is deleted while a delivery that publishes runs, and cannot
    // be made again for a while: Redis refuses its user XGROUP CREATE (an
    // ACL rule changed meanwhile). The commit's script meets the missing
    // group (NOGROUP); asked, Redis says the group is missing, so nothing
    // can be acknowledged. The host says so, once, and does not try the
    // commit again (which would fail the same way, and end in an error):
    // the reader makes the group again from the stream's start, and the
    // entry is delivered again then. (Redis 7.0 or later: an ACL rule on a
    // subcommand, and `failed_calls` in INFO commandstats.)
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &behave("concurrency = 1"));
    let mut conn = redis.conn().await;
    // The commit script's calls and those that failed. Making the group is
    // a script too (`ensure_group`): each of its tries meanwhile is refused
    // at its XGROUP CREATE, which Redis counts as rejected there, and is
    // taken off.
    let script_calls = async |conn: &mut MultiplexedConnection| -> (u64, u64) {
        let stats = command_stats(conn).await;
        let group_tries = command_stat(&stats, "xgroup|create", "rejected_calls");
        let (calls, failed) =
            (command_stat(&stats, "evalsha", "calls"), command_stat(&stats, "evalsha", "failed_calls"));
        (calls - group_tries, failed - group_tries)
    };
    // A first delivery loads the script, so that what follows is one call.
    send(&mut conn, "in", "t", busy(0)).await;
    let mut host = fx.spawn_binary_logging_json("warn");
    wait_finished(&conn, 1, STARTED).await;
    // Long enough for the statistics reset, the rule and the deletion below
    // to reach Redis before the delivery commits.
    send(&mut conn, "in", "t", busy(1000)).await;
    until_pending(&conn, "in", "h", 1).await;
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    acl_default(&mut conn, "-xgroup|create").await;
    let _: usize = redis::cmd("XGROUP").arg("DESTROY").arg("in").arg("h").query_async(&mut conn).await.unwrap();
    eventually(SOON, "the commit's script met the missing group", || {
        let mut c = conn.clone();
        async move { (script_calls(&mut c).await.1 > 0).then_some(()) }
    })
    .await;
    // No second try, while one would fail again. An absence cannot be
    // polled for: held for 1.5 s, well past the host's first pauses between
    // tries (20 ms, then twice as long each time).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(script_calls(&mut conn).await, (1, 1), "one call of the commit script, failed");
    // Once the group can be made, both entries are delivered again.
    acl_default(&mut conn, "+xgroup|create").await;
    wait_finished(&conn, 2, SOON).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    assert_eq!(saying(&lines, "group is missing").len(), 1, "{lines:#?}");
    assert!(saying(&lines, "ack failed").is_empty(), "{lines:#?}");
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{lines:#?}");
    assert_every_input_handled(&mut conn).await;
}

/// Gives the reply of the read that made an entry pending (seen pending in
/// Redis) time to pass the test proxy before it stalls: caught there, the
/// delivery never starts, and the host takes the entry back later instead
/// (seen once in a full run: no commit met the stall). A reply crosses the
/// proxy in well under a millisecond on loopback; 300 ms covers a loaded
/// machine.
async fn read_reply_lands() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_to_a_redis_that_does_not_answer_waits_for_it_until_the_host_stops() {
    // Every try waits out the 5 s command timeout. A Redis that does not
    // answer is away for now, so the commit keeps the handler's result and
    // tries until Redis answers (here after 13 s, on its third try), instead
    // of giving the entry up to run the handler again. Nothing is lost or
    // written twice: once Redis answers, the tries it was sent run, and the
    // entry is finished once.
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let fx = Fixture::with_redis(&format!("url = \"{}\"", proxy.url()), "", &behave("concurrency = 1"));
    let mut conn = redis.conn().await;
    let mut host = fx.spawn_binary_logging_json("info");
    send(&mut conn, "in", "t", busy(1000)).await;
    until_pending(&conn, "in", "h", 1).await;
    read_reply_lands().await;
    // The delivery commits into the stall, within a second from now.
    proxy.stall();
    // Its second try times out at about 11 s; a third is in flight.
    tokio::time::sleep(Duration::from_secs(13)).await;
    proxy.resume();
    wait_finished(&conn, 1, SOON).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let trying = saying(&lines, "trying again until Redis takes it");
    assert_eq!(trying.len(), 1, "one warning for the failed commit: {lines:#?}");
    assert!(saying(&lines, "the entry stays pending").is_empty(), "{lines:#?}");
    assert_eq!(saying(&lines, "went through on try").len(), 1, "{lines:#?}");
    assert_eq!(entries(&mut conn, "out").await.len(), 1, "the output written once");

    // Stopped while Redis does not answer, a host waits for its commit no
    // longer than 2 s after its first failed try, and the try in flight
    // (the rest of its stop waits out a command timeout or so too: the
    // upkeep lease given back).
    let mut host = fx.spawn_binary_logging_json("warn");
    send(&mut conn, "in", "t", busy(1000)).await;
    until_pending(&conn, "in", "h", 1).await;
    read_reply_lands().await;
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let stopping = std::time::Instant::now();
    assert!(terminate(&mut host).await.success());
    let took = stopping.elapsed();
    proxy.resume();
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    assert!(took < Duration::from_secs(15), "stopped in {took:?}: {lines:#?}");
    assert_eq!(saying(&lines, "the entry stays pending and will be delivered again").len(), 1, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_plain_ack_is_warned_of_by_the_host_that_took_the_entry_over() {
    // Host `paused` stops (SIGSTOP) while it runs an entry that writes
    // nothing; host `taker` takes it over after its claim_idle_ms and runs
    // it too. `paused` wakes first and finishes first: `behave`'s `busy`
    // counts wall time, so a delivery stopped mid-run ends as soon as it
    // wakes, while `taker`'s has its full time to run. `paused`'s plain
    // XACK, which does not ask who holds the entry, finishes it. The
    // warning, with the count, comes from `taker`, whose commit then finds
    // the entry finished (docs/delivery.md, "A delivery that writes
    // nothing"); `paused` says nothing, and nothing is written.
    let redis = RedisServer::start();
    let admin = free_port();
    // `paused`'s deadline is long, so its delivery ends on waking instead of
    // timing out (a deadline is wall time).
    let paused = Fixture::new(&redis, "consumer = \"paused\"\nclaim_idle_ms = 120000", &behave("timeout_ms = 60000"));
    let taker_keys = format!("consumer = \"taker\"\nclaim_idle_ms = 3000\nadmin = \"127.0.0.1:{admin}\"");
    let taker = Fixture::new(&redis, &taker_keys, &behave("timeout_ms = 2500"));
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "busy", "ms": 2000})).await;
    // Killed if the test fails: a stopped host must not outlive it.
    let mut hosts = Hosts(vec![paused.spawn_binary_logging_json("warn")]);
    // Stopped once its delivery has run a while, inside `busy` (not before
    // it, which would leave it all 2 s to run on waking).
    eventually(STARTED, "the entry delivered to paused 300 ms ago", || {
        let mut c = conn.clone();
        async move { (idle_with(&mut c, "h", "paused").await? >= 300).then_some(()) }
    })
    .await;
    assert!(send_signal(hosts.0[0].id(), "STOP"));
    hosts.0.push(taker.spawn_binary_logging_json("warn"));
    eventually(STARTED, "the entry taken over by taker", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "h", "taker").await == 1).then_some(()) }
    })
    .await;
    assert!(send_signal(hosts.0[0].id(), "CONT"));
    wait_finished(&conn, 1, SOON).await;
    // Then `taker`'s delivery ends, and its commit finds the entry finished.
    let series = "sluice_commits_already_finished_total{handler=\"h\"} ";
    let counted = || http_get(admin, "/metrics").1.lines().find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok());
    let deadline = std::time::Instant::now() + SOON;
    let mut count = counted();
    while count != Some(1.0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        count = counted();
    }
    let mut logs = vec![];
    for mut host in std::mem::take(&mut hosts.0) {
        assert!(terminate(&mut host).await.success());
        logs.push(json_log_lines(&host.wait_with_output().unwrap().stderr));
    }
    let (first, second) = (&logs[0], &logs[1]);
    assert_eq!(count, Some(1.0), "taker counted one commit as already finished: {second:#?}");
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let warned = |lines: &[serde_json::Value]| -> Vec<String> {
        lines.iter().map(message).filter(|m| m.contains("another consumer") || m.contains("lost the entry")).collect()
    };
    assert_eq!(warned(second).len(), 1, "taker warns once: {second:#?}");
    assert!(warned(second)[0].contains("was finished by another consumer meanwhile"), "{second:#?}");
    assert!(warned(first).is_empty(), "paused finished the entry and says nothing: {first:#?}");
    for lines in [first, second] {
        assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{lines:#?}");
    }
    assert!(entries(&mut conn, "out").await.is_empty() && entries(&mut conn, "in:dlq").await.is_empty());
}

/// Every connection the host opens to Redis sends a command at once
/// (`TCP_NODELAY`) and notices a peer that vanished: keepalive probes on an
/// idle one, and `TCP_USER_TIMEOUT` on one with a command unanswered (a
/// half-open connection otherwise retransmits for about 15 minutes, every
/// command on it timing out). Read from the sockets themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_to_redis_sends_at_once_and_notices_a_vanished_peer() {
    let redis = RedisServer::start();
    let admin = free_port();
    let fx = Fixture::new(&redis, &format!("admin = \"127.0.0.1:{admin}\""), &behave(""));
    let host = fx.start();
    let ready = || std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() && http_get(admin, "/readyz").0 == 200;
    eventually(SOON, "the host ready", || async move { ready().then_some(()) }).await;
    // This test opens no connection of its own to this Redis: every socket
    // to its port in this process is the host's.
    let sockets = sockets_to(redis.port);
    host.stop().await;
    assert!(sockets.len() >= 2, "the shared connection and a reader: {sockets:?}");
    for s in &sockets {
        assert_eq!((s.nodelay, s.keepalive, s.keepidle_s, s.user_timeout_ms), (1, 1, 15, 20_000), "{s:?}");
    }
}

/// The options of one socket.
#[derive(Debug)]
struct SocketOptions {
    nodelay: i32,
    keepalive: i32,
    keepidle_s: i32,
    user_timeout_ms: i32,
}

/// The options of every TCP socket of this process connected to `port` on
/// this machine.
fn sockets_to(port: u16) -> Vec<SocketOptions> {
    let option = |fd: i32, level: i32, name: i32| {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for the call; `fd` may have
        // been closed meanwhile, which only makes the call fail.
        let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
        if rc == 0 { value } else { -1 }
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as above, with a buffer the size of an IPv4 address.
        let rc = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &raw mut len) };
        if rc != 0 || i32::from(addr.sin_family) != libc::AF_INET || u16::from_be(addr.sin_port) != port {
            continue;
        }
        found.push(SocketOptions {
            nodelay: option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
            keepalive: option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            keepidle_s: option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            user_timeout_ms: option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        });
    }
    found
}

/// Redis out of memory (`maxmemory` reached with `noeviction`) refuses the
/// commit's writes for a while: the host keeps the handler's result and
/// sends it until Redis takes it, instead of giving the entry up to run the
/// handler again, each run an attempt, and in the end dead-lettering an
/// event the handler finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_while_redis_is_out_of_memory_waits_for_it() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "claim_idle_ms = 60000", &behave("max_attempts = 1"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", busy(300)).await;
    until_pending(&conn, "in", "h", 1).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut conn).await.unwrap();
    // Twenty refused tries take some 7 s of pauses; a commit failing for any
    // other reason is given up after 8 tries or 2 s.
    eventually(Duration::from_secs(30), "twenty commits refused", || {
        let mut c = conn.clone();
        async move { (command_stat(&command_stats(&mut c).await, "xadd", "rejected_calls") >= 20).then_some(()) }
    })
    .await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await.unwrap();
    until_entries(&conn, "out", 1).await;
    until_finished(&conn, "in", "h", 1).await;
    host.stop().await;
    assert!(entries(&mut conn, "in:dlq").await.is_empty(), "not dead-lettered");
    assert_eq!(entries(&mut conn, "out").await.len(), 1);
}

/// Redis refusing every read for a while (here its user may no longer run
/// `XREADGROUP`) is said once, with the streams and group, and the reader
/// keeps its connection: a new one would meet the same refusal, and in a
/// cluster each costs a new client. When reads go through again, the host
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_refused_by_redis_are_warned_of_once_without_reconnecting() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &behave(""));
    let mut conn = redis.conn().await;
    let mut host = fx.spawn_binary_logging_json("info");
    send(&mut conn, "in", "t", busy(0)).await;
    wait_finished(&conn, 1, STARTED).await;
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    acl_default(&mut conn, "-xreadgroup").await;
    let before = info_stat(&mut conn, "total_connections_received").await;
    eventually(SOON, "eight reads refused", || {
        let mut c = conn.clone();
        async move { (command_stat(&command_stats(&mut c).await, "xreadgroup", "rejected_calls") >= 8).then_some(()) }
    })
    .await;
    let opened = info_stat(&mut conn, "total_connections_received").await - before;
    acl_default(&mut conn, "+xreadgroup").await;
    send(&mut conn, "in", "t", busy(0)).await;
    wait_finished(&conn, 2, SOON).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let refused = saying(&lines, "reading from Redis failed");
    assert_eq!(refused.len(), 1, "one warning for the run: {lines:#?}");
    assert_eq!(refused[0]["fields"]["group"], "h", "{:#?}", refused[0]);
    assert_eq!(saying(&lines, "reading from Redis again").len(), 1, "{lines:#?}");
    assert_eq!(opened, 0, "no new connection while Redis refused the reads");
}

/// A number from `INFO stats` (`total_connections_received`, ...).
async fn info_stat(conn: &mut MultiplexedConnection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).unwrap();
    line.trim().parse().unwrap()
}

/// A failover that moves the address the host was given (a managed
/// service's DNS name, a virtual IP) leaves the connections open at the time
/// with the demoted primary, a replica now, which refuses every write and
/// `XREADGROUP` (`READONLY`). (A read blocked at the time is cut by Redis
/// itself; one sent after is refused.) The reader and the shared connection
/// are replaced, and reach the new primary: events sent to it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_moves_the_address_is_followed_to_the_new_primary() {
    // (No 5 s wait before the replica's first sync.)
    let old = RedisServer::start_with(&["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]);
    let of_old = ["--replicaof", "127.0.0.1", &old.port.to_string()];
    let new = RedisServer::start_with(&[&["--save", "", "--appendonly", "no"][..], &of_old].concat());
    let proxy = Proxy::start(old.port).await;
    let fx = Fixture::with_redis(&format!("url = \"{}\"", proxy.url()), "", &behave("concurrency = 1"));
    let mut first = old.conn().await;
    let mut host = fx.spawn_binary_logging_json("info");
    send(&mut first, "in", "t", busy(0)).await;
    wait_finished(&first, 1, STARTED).await;
    // The one permit taken by a delivery, so the reader is not blocked in
    // Redis when its server is demoted: its next read is refused.
    send(&mut first, "in", "t", busy(1500)).await;
    until_pending(&first, "in", "h", 1).await;
    // The replica has it all; then the two swap roles, and the address
    // goes with the primary's.
    eventually(SOON, "the replica in sync", || {
        let mut c = first.clone();
        async move {
            let synced: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut c).await.unwrap();
            (synced == 1).then_some(())
        }
    })
    .await;
    let mut second = new.conn().await;
    let () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut second).await.unwrap();
    proxy.retarget(new.port);
    let () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(new.port).query_async(&mut first).await.unwrap();
    wait_finished(&second, 2, SOON).await;
    for _ in 0..10 {
        send(&mut second, "in", "t", busy(0)).await;
    }
    wait_finished(&second, 12, SOON).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    assert_every_input_handled(&mut second).await;
    assert_eq!(saying(&lines, "reaches a replica").len(), 1, "the shared connection replaced once: {lines:#?}");
    let reader = saying(&lines, "the server became a replica (a failover?): reconnecting");
    assert_eq!(reader.len(), 1, "the reader's connection replaced once: {lines:#?}");
}

/// A new connection's login refused for a while (here the host's ACL user
/// is given another password, as while an operator recreates it) fails
/// with `WRONGPASS`, not a network error. redis-rs's connection manager
/// keeps such a failure and returns it for every later command, for good;
/// the shared connection is opened again instead, and the commit that met
/// the refusal waits for it (it would be given up after 2 s, and the entry,
/// on its one attempt, dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_connection_whose_login_was_refused_is_opened_again() {
    let redis = RedisServer::start();
    let mut root = redis.conn().await;
    let password = async |c: &mut MultiplexedConnection, password: &str| {
        let user = ["SETUSER", "sluice", "on", "resetpass", password, "~*", "&*", "+@all"];
        let () = redis::cmd("ACL").arg(&user).query_async(c).await.unwrap();
    };
    password(&mut root, ">s3cret").await;
    let url = format!("redis://sluice:s3cret@127.0.0.1:{}", redis.port);
    let fx = Fixture::with_redis(&format!("url = \"{url}\""), "claim_idle_ms = 60000", &behave("max_attempts = 1"));
    let mut host = fx.spawn_binary_logging_json("info");
    send(&mut root, "in", "t", busy(0)).await;
    wait_finished(&root, 1, STARTED).await;
    // Logins refused from now on; then the host's connections other than
    // its reader's (blocked in XREADGROUP) are cut.
    password(&mut root, ">other").await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut root).await.unwrap();
    let shared: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains(" user=sluice ") && !l.contains(" cmd=xreadgroup "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert!(!shared.is_empty(), "the host's shared connection: {clients}");
    for id in shared {
        let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut root).await.unwrap();
    }
    // The reader reads it; its commit needs a new connection, whose login
    // is refused for 4 s.
    let () = redis::cmd("ACL").arg("LOG").arg("RESET").query_async(&mut root).await.unwrap();
    send(&mut root, "in", "t", busy(0)).await;
    eventually(SOON, "a login refused", || {
        let mut c = root.clone();
        async move {
            let refused: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query_async(&mut c).await.unwrap();
            (!refused.is_empty()).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    password(&mut root, ">s3cret").await;
    wait_finished(&root, 2, SOON).await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    assert!(entries(&mut root, "in:dlq").await.is_empty(), "not dead-lettered: {lines:#?}");
    assert_eq!(entries(&mut root, "out").await.len(), 2, "each handled once: {lines:#?}");
}

/// Entries deleted from their stream while pending (an `XDEL`, or another
/// program's trim such as a producer's `XADD MAXLEN`) are gone for good:
/// Redis drops such an entry from the group when it is claimed, and the
/// ordered path acknowledges it. No host can deliver them, but the operator
/// must hear of it: a warning naming the stream, group, handler and ids,
/// both when a host takes back its own entries (a restart) and when it
/// takes over a dead host's. `handlers` configures handler `h` on `in`.
async fn entries_deleted_while_pending_are_named(handlers: &str) {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "consumer = \"alive\"\nclaim_idle_ms = 1000", handlers);
    let mut conn = redis.conn().await;
    let mut ids = Vec::new();
    for key in ["k1", "k2", "k3", "k4"] {
        let mut data = busy(0);
        data["account"] = json!(key);
        ids.push(send(&mut conn, "in", "t", data).await);
    }
    let () = redis::cmd("XGROUP").arg("CREATE").arg("in").arg("h").arg("0").query_async(&mut conn).await.unwrap();
    // Two pending with this host's consumer (an earlier run), two with a
    // dead one; one of each deleted.
    for consumer in ["alive", "dead"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("h")
            .arg(consumer)
            .arg("COUNT")
            .arg(2)
            .arg("STREAMS")
            .arg("in")
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: u64 = redis::cmd("XDEL").arg("in").arg(&ids[0]).arg(&ids[2]).query_async(&mut conn).await.unwrap();
    let mut host = fx.spawn_binary_logging_json("info");
    eventually(SOON, "the two entries left handled, nothing pending", || {
        let mut c = conn.clone();
        async move {
            let done = entries(&mut c, "out").await.len() == 2 && pending(&mut c, "in", "h").await == 0;
            done.then_some(())
        }
    })
    .await;
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let warned = saying(&lines, "were deleted from stream in before they were finished");
    assert_eq!(warned.len(), 2, "one warning for its own entry, one for the dead host's: {lines:#?}");
    for (line, id) in warned.iter().zip([&ids[0], &ids[2]]) {
        assert_eq!(line["level"], "WARN", "{line:#}");
        assert_eq!((&line["fields"]["stream"], &line["fields"]["group"]), (&json!("in"), &json!("h")), "{line:#}");
        assert_eq!(line["fields"]["handler"], "h", "{line:#}");
        assert!(line["fields"]["message"].as_str().unwrap().contains(id.as_str()), "names {id}: {line:#}");
    }
    let handled: Vec<String> = entries(&mut conn, "out").await.iter().map(|e| field(e, "causation_id")).collect();
    assert_eq!(handled, [ids[1].clone(), ids[3].clone()], "the entries still in the stream handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_while_pending_are_named_when_taken_back_or_over() {
    entries_deleted_while_pending_are_named(&behave("timeout_ms = 500")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_while_pending_are_named_when_taken_back_or_over_in_key_order() {
    entries_deleted_while_pending_are_named(&behave("timeout_ms = 500\norder_by = \"data.account\"")).await;
}
