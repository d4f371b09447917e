//! `order_by`: the events of one key are handled one at a time, in stream
//! order, across retries, dead letters, hosts and a kill; other keys flow.

use crate::support::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// The ledger postings committed to `out`, by account: (seq, after,
/// balance) in the order committed.
async fn postings(conn: &mut MultiplexedConnection) -> HashMap<String, Vec<(u64, u64, u64)>> {
    let mut by_account: HashMap<String, Vec<(u64, u64, u64)>> = HashMap::new();
    for e in entries(conn, "out").await {
        let data: serde_json::Value = serde_json::from_str(&field(&e, "data")).unwrap();
        let n = |k: &str| data[k].as_u64().unwrap();
        by_account.entry(data["account"].as_str().unwrap().to_owned()).or_default().push((
            n("seq"),
            n("after"),
            n("balance"),
        ));
    }
    by_account
}

/// The (seq, after) of each posting of `account` committed to `out`, in
/// the order committed.
async fn seqs(conn: &mut MultiplexedConnection, account: &str) -> Vec<(u64, u64)> {
    postings(conn).await.get(account).map_or(Vec::new(), |rows| rows.iter().map(|r| (r.0, r.1)).collect())
}

/// A ledger handler ordering by `order_by`, on stream `in`.
fn ledger(order_by: &str, extra: &str) -> String {
    format!(
        "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\norder_by = \"{order_by}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_keys_keep_their_order_and_exact_balances_across_retries_hosts_and_kills() {
    const KEYS: u64 = 100;
    const PER_KEY: u64 = 200;
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 64\nmax_attempts = 10\nbackoff_ms = 5\ntimeout_ms = 1000");
    let host = |name: &str| format!("consumer = \"{name}\"\nclaim_idle_ms = 2500");
    let fixtures: Vec<Fixture> = ["a", "b", "c"].iter().map(|n| Fixture::new(&redis, &host(n), &handlers)).collect();
    let mut conn = redis.conn().await;
    let mut hosts = Hosts(fixtures.iter().map(|f| f.spawn_binary()).collect());
    // Every key's events in sequence, the keys interleaved; about one
    // posting in 30 fails once or twice before it succeeds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for seq in 1..=PER_KEY {
        let mut pipe = redis::pipe();
        let mut accounts: Vec<u64> = (0..KEYS).collect();
        accounts.shuffle(&mut rng);
        for a in accounts {
            let account = format!("acct-{a}");
            let amount = rng.random_range(1..100u64);
            *expected.entry(account.clone()).or_default() += amount;
            let fail = if rng.random_range(0..30) == 0 { rng.random_range(1..3u64) } else { 0 };
            let data = json!({"action": "ledger", "account": account, "seq": seq, "amount": amount, "fail": fail, "delay_ms": 20});
            pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("posting").arg("data").arg(data.to_string());
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let total = (KEYS * PER_KEY) as usize;
    // Once everything is read, kill a host while it serves keys and start
    // it again at once: it takes its own keys back (their leases are still
    // its own). Later kill a host that serves keys for good: those keys,
    // and the entries queued behind them, are left with a dead holder and no
    // new entry comes to pick them up: the others take them over once their
    // leases run out.
    let names = ["a", "b", "c"];
    let restarted = progress(&conn, total, total / 5, &names).await;
    let i = names.iter().position(|n| *n == restarted).unwrap();
    hosts.0[i].kill().unwrap();
    hosts.0[i].wait().unwrap();
    hosts.0[i] = fixtures[i].spawn_binary();
    let killed = progress(&conn, total, total / 2, &names).await;
    let i = names.iter().position(|n| *n == killed).unwrap();
    hosts.0[i].kill().unwrap();
    hosts.0[i].wait().unwrap();
    eventually(Duration::from_secs(60), &format!("host {killed}'s entries taken over"), || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, killed).await == 0).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(120), "every posting committed", || {
        let mut c = conn.clone();
        async move { (finished(&mut c, "in", "h").await == total && pending(&mut c, "in", "h").await == 0).then_some(()) }
    })
    .await;
    drop(hosts);
    let by_account = postings(&mut conn).await;
    assert_eq!(by_account.len(), KEYS as usize);
    for (account, rows) in &by_account {
        let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (1..=PER_KEY).collect::<Vec<_>>(), "{account}: postings committed out of order, or twice");
        for &(seq, after, _) in rows {
            assert_eq!(after, seq - 1, "{account}: posting {seq} ran after posting {after}");
        }
        let balance: u64 =
            redis::cmd("GET").arg(format!("sluice:kv:h:balance:{account}")).query_async(&mut conn).await.unwrap();
        assert_eq!(balance, expected[account], "{account}: balance");
        assert_eq!(rows.last().unwrap().2, expected[account], "{account}: last posting's balance");
    }
    // No queue, lease or waiting key is left behind once every key is done
    // (only the one-entry wake-up stream stays).
    let left: Vec<String> = redis::cmd("KEYS").arg("sluice:order:*").query_async(&mut conn).await.unwrap();
    assert_eq!(left, ["sluice:order:{in}:h:in:wake"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_counts_the_next_entry_of_a_key_as_one_delivery() {
    // With `concurrency = 1`, a/1's commit hands a/2 (5 s) over on the
    // same permit, and b/1, sent while a/2 runs, waits for it. a/1's
    // acknowledgement used to give the permit back while the chain went
    // on, so the host read b/1 at once and ran it beside a/2.
    let redis = RedisServer::start();
    let fx =
        Fixture::new(&redis, "claim_idle_ms = 60000", &ledger("data.account", "concurrency = 1\ntimeout_ms = 10000"));
    let mut conn = redis.conn().await;
    let posting = |account: &str, seq: u64, ms: u64| json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "ms": ms});
    send(&mut conn, "in", "posting", posting("a", 1, 0)).await;
    send(&mut conn, "in", "posting", posting("a", 2, 5000)).await;
    let host = fx.start();
    eventually(STARTED, "a/1 handled, a/2 running", || {
        let mut c = conn.clone();
        async move { (seqs(&mut c, "a").await.len() == 1 && pending(&mut c, "in", "h").await == 1).then_some(()) }
    })
    .await;
    send(&mut conn, "in", "posting", posting("b", 1, 0)).await;
    until_finished(&conn, "in", "h", 3).await;
    host.stop().await;
    assert_eq!(committed(&mut conn).await, ["a/1", "a/2", "b/1"], "b/1 ran beside a/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_one_entry_of_a_busy_key_not_for_its_whole_queue() {
    // With `concurrency = 1`: k/1 fails once and waits 50 ms for its retry,
    // while the host serves key a, ten entries of 300 ms queued. The retry
    // takes the permit at a's next entry; it used to wait for a's whole
    // queue, as a key's chain kept its permit for as long as its queue had
    // entries (and a queue another host keeps filling may never empty).
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 1\ntimeout_ms = 10000\nbackoff_ms = 50");
    let fx = Fixture::new(&redis, "claim_idle_ms = 60000", &handlers);
    let mut conn = redis.conn().await;
    let k = json!({"action": "ledger", "account": "k", "seq": 1, "amount": 1, "fail": 1});
    send(&mut conn, "in", "posting", k).await;
    for seq in 1..=10 {
        let a = json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": 300});
        send(&mut conn, "in", "posting", a).await;
    }
    let host = fx.start();
    until_finished(&conn, "in", "h", 11).await;
    host.stop().await;
    let committed = committed(&mut conn).await;
    let at = |posting: &str| {
        committed.iter().position(|c| c == posting).unwrap_or_else(|| panic!("{posting}: {committed:?}"))
    };
    assert!(at("k/1") < at("a/4"), "k/1's retry waited for a's queue: {committed:?}");
}

/// The postings committed to `out`, as account/seq, in the order committed.
async fn committed(conn: &mut MultiplexedConnection) -> Vec<String> {
    entries(conn, "out")
        .await
        .iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&field(e, "data")).unwrap();
            format!("{}/{}", data["account"].as_str().unwrap(), data["seq"])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_holds_back_only_its_key_and_a_dead_letter_unblocks_it() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "claim_idle_ms = 5000", &ledger("account", "concurrency = 8\nmax_attempts = 2"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    let posting = |account: &str, seq: u64, fail: u64| {
        json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "fail": fail, "delay_ms": 400})
            .to_string()
    };
    // Key a: posting 2 always fails; after its one retry (400 ms later) it
    // is dead-lettered. Key b's postings come after it in the stream. The
    // key is the entry field `account`.
    for (account, seq, fail) in
        [("a", 1, 0), ("a", 2, 99), ("a", 3, 0), ("a", 4, 0)].into_iter().chain((1..=5).map(|seq| ("b", seq, 0)))
    {
        xadd(&mut conn, "in", &[("type", "posting"), ("account", account), ("data", &posting(account, seq, fail))])
            .await;
    }
    until_finished(&conn, "in", "h", 9).await;
    host.stop().await;
    let dead = entries(&mut conn, "in:dlq").await;
    assert_eq!(dead.len(), 1);
    let dead_ms = id_ms(&dead[0].id);
    let out = entries(&mut conn, "out").await;
    let committed = |account: &str| ledger_commits(&out, account);
    let a = committed("a");
    assert_eq!(a.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(1, 0), (3, 1), (4, 3)], "{a:?}");
    assert!(a[1].2 >= dead_ms, "posting a/3 ran before a/2 was dead-lettered: {a:?}, dead letter at {dead_ms}");
    let b = committed("b");
    assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(b[4].2 < dead_ms, "key b waited for key a's retry: {b:?}, dead letter at {dead_ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_host_died_with_all_its_entries_is_taken_over_in_order() {
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 4\ntimeout_ms = 500");
    let host = |name: &str| format!("consumer = \"{name}\"\nclaim_idle_ms = 1000");
    let (fa, fb) = (Fixture::new(&redis, &host("a"), &handlers), Fixture::new(&redis, &host("b"), &handlers));
    let mut conn = redis.conn().await;
    let mut hosts = Hosts(vec![fa.spawn_binary()]);
    for seq in 1..=20 {
        let data = json!({"action": "ledger", "account": "k", "seq": seq, "amount": seq, "ms": 50});
        send(&mut conn, "in", "posting", data).await;
    }
    // Host a has read all 20 and serves the key; it dies a few postings in.
    eventually(Duration::from_secs(20), "host a holding every entry, some done", || {
        let mut c = conn.clone();
        async move {
            (pending_with(&mut c, "a").await + finished(&mut c, "in", "h").await == 20
                && finished(&mut c, "in", "h").await >= 3)
                .then_some(())
        }
    })
    .await;
    hosts.0[0].kill().unwrap();
    hosts.0[0].wait().unwrap();
    assert!(pending_with(&mut conn, "a").await > 0);
    // Host b reads nothing new: only the scan for keys without a holder
    // finds these.
    hosts.0.push(fb.spawn_binary());
    until_finished(&conn, "in", "h", 20).await;
    let rows = &postings(&mut conn).await["k"];
    assert_eq!(rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), (1..=20).map(|s| (s, s - 1)).collect::<Vec<_>>());
    assert_eq!(rows.last().unwrap().2, 210);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_commit_reply_was_lost_moves_on_to_its_next_entry_soon() {
    // The commit of a key's entry also hands the key's next entry to the
    // same consumer, which keeps the key's lease. When that commit lands
    // but its reply is lost, the commit is sent again: the script finds the
    // entry finished and hands the next one over all the same, so it is
    // delivered at once, not at the next claim scan (every claim_idle_ms /
    // 2, 30 s here, past the deadline).
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let fx = Fixture::with_redis(
        &format!("url = \"{}\"", proxy.url()),
        "claim_idle_ms = 60000",
        &ledger("data.account", "concurrency = 8\ntimeout_ms = 10000"),
    );
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64| json!({"action": "ledger", "account": "k", "seq": seq, "amount": 1, "ms": ms});
    let mut hosts = Hosts(vec![fx.spawn_binary_logging_json("warn,sluice::consumer::finish=debug")]);
    send(&mut conn, "in", "posting", posting(1, 800)).await;
    send(&mut conn, "in", "posting", posting(2, 0)).await;
    // Posting 1 is being handled, 2 is queued behind it. From now on every
    // chunk takes 150 ms each way: room to cut the connections between its
    // commit landing in Redis and the reply reaching the host.
    eventually(STARTED, "both postings read", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 2).then_some(()) }
    })
    .await;
    proxy.set_latency(Duration::from_millis(150));
    let deadline = std::time::Instant::now() + SOON;
    while redis::cmd("XLEN").arg("out").query_async::<usize>(&mut conn).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "posting 1 was never committed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Posting 1's commit ran (its output is written); its reply has not
    // come back yet.
    assert!(proxy.reset() > 0);
    proxy.set_latency(Duration::ZERO);
    eventually(Duration::from_secs(8), "posting 2 handled, long before the next claim scan", || {
        let mut c = conn.clone();
        async move { (finished(&mut c, "in", "h").await == 2).then_some(()) }
    })
    .await;
    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let said = Said(json_log_lines(&host.wait_with_output().unwrap().stderr));
    // Posting 1's commit lost its reply, and sent again, handed posting 2 over.
    said.assert_any(|m| m.starts_with("ack failed") && m.contains("trying again"));
    said.assert_any(|m| m == "handled; the next entry of its key follows");
    said.assert_no_error();
    // Posting 1's commit, tried again, found it finished and wrote nothing.
    let rows = &postings(&mut conn).await["k"];
    assert_eq!(rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(1, 0), (2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_commit_shared_a_call_with_a_missing_group_moves_on_to_its_next_entry_soon() {
    // Commits of two streams can share one script call. When the second's
    // group is missing, the call fails after the first was made: the first
    // entry is acknowledged and its key moved on to its next entry, now
    // pending with this consumer under the key's lease. The host sends the
    // commit again to learn which, and delivers that entry at once, not at
    // the next claim scan (every claim_idle_ms / 2, 30 s here, past the
    // deadline).
    let (said, rows) = commits_sharing_a_call_with_a_missing_group(Shared::AFirst).await;
    said.assert_any(|m| m.ends_with("made by the call before it met a missing group; asking for its key's next entry"));
    said.assert_any(|m| m == "handled; the next entry of its key follows");
    said.assert_no_error();
    // Written once each. (b's commit wrote nothing; b is delivered again
    // once its group is made again, which this test does not wait for.)
    assert_eq!(rows, (vec![(1, 0), (2, 1)], vec![(1, 0)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_commit_came_after_a_missing_group_in_its_call_is_tried_again_at_once() {
    // The same, with the commit of the stream whose group is missing first
    // in the call: the call fails before it makes the other, which is still
    // pending, so the host tries it again, and its key moves on at once.
    let (said, rows) = commits_sharing_a_call_with_a_missing_group(Shared::BFirst).await;
    said.assert_any(|m| m.starts_with("ack failed") && m.contains("NOGROUP") && m.contains("trying again"));
    said.assert_any(|m| m == "handled; the next entry of its key follows");
    said.assert_no_error();
    assert_eq!(rows, (vec![(1, 0), (2, 1)], vec![(1, 0)]));
}

/// Which of the commits of a/1 (stream `in`) and b (stream `in2`, whose
/// group goes missing) comes first in the call they share.
#[derive(PartialEq)]
enum Shared {
    AFirst,
    BFirst,
}

/// Runs postings x, a/1 and a/2 (stream `in`) and b (`in2`) through a
/// host whose Redis round trips take 1 s once all four are read, so that
/// the commits of a/1 and b gather behind x's and share the next call, in
/// the order `first` says; `in2`'s group is deleted (and kept from being
/// made again) before that call. Waits until a/2 is handled, within 15 s;
/// returns what the host logged and the postings of a and of x, as (seq,
/// after).
async fn commits_sharing_a_call_with_a_missing_group(first: Shared) -> (Said, (Vec<(u64, u64)>, Vec<(u64, u64)>)) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\", \"in2\"]\npublish = [\"out\"]\n\
                    order_by = \"data.account\"\nconcurrency = 8\ntimeout_ms = 10000\n";
    let url = format!("url = \"{}\"", proxy.url());
    let fx = Fixture::with_redis(&url, "claim_idle_ms = 60000", handlers);
    let mut conn = redis.conn().await;
    let posting = |account: &str, seq: u64, ms: u64| json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "ms": ms});
    // Key x's commit is in flight (1 s, below) while a's and b's are
    // handed over, 300 and 600 ms after it, so theirs share the next call
    // (with room to spare: a host among many tests may be late to run).
    // (Each posting also reads two keys, two round trips, which shift all
    // three alike; timeout_ms leaves room for them.)
    let (a_ms, b_ms) = if first == Shared::AFirst { (900, 1200) } else { (1200, 900) };
    send(&mut conn, "in", "posting", posting("x", 1, 600)).await;
    send(&mut conn, "in", "posting", posting("a", 1, a_ms)).await;
    send(&mut conn, "in", "posting", posting("a", 2, 0)).await;
    send(&mut conn, "in2", "posting", posting("b", 1, b_ms)).await;
    let rust_log = "warn,sluice::consumer::finish=debug";
    let mut hosts = Hosts(vec![fx.spawn_binary_logging_json(rust_log)]);
    eventually(STARTED, "all four postings read", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 3 && pending(&mut c, "in2", "h").await == 1).then_some(()) }
    })
    .await;
    // From now on every round trip takes 1 s: long enough for a's and
    // b's commits to gather behind x's. (Redis 7.0 or later: an ACL rule
    // on a subcommand keeps the group from being made again meanwhile.)
    proxy.set_latency(Duration::from_millis(500));
    acl_default(&mut conn, "-xgroup|create").await;
    let _: usize = redis::cmd("XGROUP").arg("DESTROY").arg("in2").arg("h").query_async(&mut conn).await.unwrap();
    eventually(Duration::from_secs(15), "posting a/2 handled, long before the next claim scan", || {
        let mut c = conn.clone();
        async move { (postings(&mut c).await.get("a").map_or(0, Vec::len) == 2).then_some(()) }
    })
    .await;
    proxy.set_latency(Duration::ZERO);
    acl_default(&mut conn, "+xgroup|create").await;
    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let said = Said(json_log_lines(&host.wait_with_output().unwrap().stderr));
    let rows = postings(&mut conn).await;
    let seqs = |k: &str| rows[k].iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    (said, (seqs("a"), seqs("x")))
}

/// A host's JSON log lines.
struct Said(Vec<serde_json::Value>);

impl Said {
    /// Asserts that some line's message is as `is` wants.
    #[track_caller]
    fn assert_any(&self, is: impl Fn(&str) -> bool) {
        let found = self.0.iter().any(|l| is(l["fields"]["message"].as_str().unwrap_or("")));
        assert!(found, "no such line: {:#?}", self.0);
    }

    /// Asserts that no line's message is as `is` says.
    #[track_caller]
    fn assert_none(&self, is: impl Fn(&str) -> bool) {
        let found: Vec<_> = self.0.iter().filter(|l| is(l["fields"]["message"].as_str().unwrap_or(""))).collect();
        assert!(found.is_empty(), "such lines: {found:#?}");
    }

    /// Asserts that no line is an error.
    #[track_caller]
    fn assert_no_error(&self) {
        assert!(self.0.iter().all(|l| l["level"] != "ERROR"), "{:#?}", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_group_went_missing_under_its_delivery_is_served_again_at_once_and_in_order() {
    group_lost_under_a_keys_delivery(Meets::MissingAtCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_group_went_missing_before_its_retry_is_served_again_at_once_and_in_order() {
    group_lost_under_a_keys_delivery(Meets::MissingAtRetry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_group_was_made_again_before_its_retry_is_served_again_soon_and_in_order() {
    group_lost_under_a_keys_delivery(Meets::MadeAgainAtRetry).await;
}

/// What a/2's delivery meets in [`group_lost_under_a_keys_delivery`].
#[derive(PartialEq)]
enum Meets {
    /// Its commit meets the group missing: a/2 computes for 1.5 s.
    MissingAtCommit,
    /// Its retry meets the group missing: its first attempt fails, and it
    /// is tried again after 1.6 to 2.4 s.
    MissingAtRetry,
    /// Its retry finds the group made again (by the test, at once), which
    /// has delivered a/1 to a/3 again already (the host's next read, within
    /// a second).
    MadeAgainAtRetry,
}

/// Posting a/1 is handled; the group is deleted (and made again or not)
/// while a/2 runs, a/3 queued behind it, so that a/2's delivery ends as
/// `meets` says, and the host gives up a's lease. Once the group is made
/// again, from the stream's start, a/1 to a/3 are delivered again at once,
/// or (when the host's read delivered them before the lease was given up)
/// soon, not at the next claim scan (every claim_idle_ms / 2, 30 s here,
/// past the deadline); and a/1 comes before a/2 and a/3, which were still
/// in a's queue from before. (Unless the test makes the group again, an ACL rule keeps the
/// host from making it until the lease is seen gone.)
async fn group_lost_under_a_keys_delivery(meets: Meets) {
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 8\ntimeout_ms = 10000\nbackoff_ms = 2000");
    let fx = Fixture::new(&redis, "consumer = \"c\"\nclaim_idle_ms = 60000", &handlers);
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64, fail: u64| json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": ms, "fail": fail});
    send(&mut conn, "in", "posting", posting(1, 0, 0)).await;
    let (ms, fail) = if meets == Meets::MissingAtCommit { (1500, 0) } else { (0, 1) };
    send(&mut conn, "in", "posting", posting(2, ms, fail)).await;
    send(&mut conn, "in", "posting", posting(3, 0, 0)).await;
    let rust_log = "warn,sluice::consumer::finish=debug,sluice::consumer::ordered=info";
    let mut hosts = Hosts(vec![fx.spawn_binary_logging_json(rust_log)]);
    until_a2_runs_with_a3_queued(&conn).await;
    let made_again = meets == Meets::MadeAgainAtRetry;
    if !made_again {
        acl_default(&mut conn, "-xgroup|create").await;
    }
    // In one step, so that the host cannot make the group in between.
    let mut lose = redis::pipe();
    lose.atomic().cmd("XGROUP").arg("DESTROY").arg("in").arg("h").ignore();
    if made_again {
        lose.cmd("XGROUP").arg("CREATE").arg("in").arg("h").arg("0").ignore();
    }
    let _: () = lose.query_async(&mut conn).await.unwrap();
    eventually(SOON, "a's lease given up once a/2's delivery met the group lost", || {
        let mut c = conn.clone();
        async move { (leases_held(&mut c, "c").await == 0).then_some(()) }
    })
    .await;
    if !made_again {
        acl_default(&mut conn, "+xgroup|create").await;
    }
    eventually(Duration::from_secs(12), "a/1 to a/3 handled again, long before the next claim scan", || {
        let mut c = conn.clone();
        async move { (postings(&mut c).await.get("a").map_or(0, Vec::len) == 4).then_some(()) }
    })
    .await;
    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let said = Said(json_log_lines(&host.wait_with_output().unwrap().stderr));
    match meets {
        Meets::MissingAtCommit => said.assert_any(|m| m.contains("the consumer group is missing")),
        Meets::MissingAtRetry => said.assert_any(|m| m == "the consumer group went missing before this entry's retry"),
        Meets::MadeAgainAtRetry => {
            said.assert_any(|m| m.starts_with("the entry waiting for its retry was no longer this host's to claim"));
            said.assert_any(|m| m.starts_with("taking back this consumer's pending entries"));
        }
    }
    said.assert_no_error();
    // a/1, then again a/1, a/2 and a/3, in order (a/2's first delivery
    // wrote nothing): (seq, the seq it came after).
    assert_eq!(seqs(&mut conn, "a").await, [(1, 0), (1, 1), (2, 1), (3, 2)]);
}

/// Postings a/1, a/2 (which runs `a2_ms`) and a/3 on `in`, and host `c`
/// (the binary, logging JSON) started on them: returns once a/2 runs under
/// a's lease with a/3 queued behind it, with the fixture (kept while the
/// host runs), the host and a/3's id.
async fn a2_running_with_a3_queued(redis: &RedisServer, a2_ms: u64) -> (Fixture, std::process::Child, String) {
    let handlers = ledger("data.account", "concurrency = 8\ntimeout_ms = 10000");
    let fx = Fixture::new(redis, "consumer = \"c\"\nclaim_idle_ms = 60000", &handlers);
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64| json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": ms});
    send(&mut conn, "in", "posting", posting(1, 0)).await;
    send(&mut conn, "in", "posting", posting(2, a2_ms)).await;
    let a3 = send(&mut conn, "in", "posting", posting(3, 0)).await;
    let host = fx.spawn_binary_logging_json("info");
    until_a2_runs_with_a3_queued(&conn).await;
    (fx, host, a3)
}

/// Stops `host` and checks that it warned once, naming handler `h`, that
/// entry `id` of `in` was deleted before it was finished.
async fn assert_warned_of_deleted(mut host: std::process::Child, id: &str) {
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let deleted = format!("were deleted from stream in before they were finished ({id})");
    let warned: Vec<_> = lines.iter().filter(|l| l["fields"]["message"].as_str().unwrap().contains(&deleted)).collect();
    assert_eq!(warned.len(), 1, "{id} named once: {lines:#?}");
    assert_eq!(
        (&warned[0]["level"], &warned[0]["fields"]["handler"]),
        (&json!("WARN"), &json!("h")),
        "{:#}",
        warned[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_entry_deleted_after_its_group_was_set_back_is_acknowledged_by_the_next_read() {
    // The group is set back to the stream's start while a/2 runs (3 s),
    // a/3 queued behind it, and a/3 is deleted from the stream. The host's
    // next read (within a second) delivers a/1 and a/2 again and drops a/2
    // and a/3 from the end of a's queue: a/3, still pending (a set-back
    // keeps pending entries) but gone from the stream, is acknowledged
    // there, not left pending until a claim scan (claim_idle_ms, 60 s here),
    // and the host warns of it: it was neither handled nor dead-lettered.
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_fx, host, a3) = a2_running_with_a3_queued(&redis, 3000).await;
    let mut set_back = redis::pipe();
    set_back.atomic().cmd("XGROUP").arg("SETID").arg("in").arg("h").arg("0").ignore();
    set_back.cmd("XDEL").arg("in").arg(&a3).ignore();
    let _: () = set_back.query_async(&mut conn).await.unwrap();
    // Read again before a/2's commit: a/1 and a/2 pending, a/3 no longer.
    eventually(Duration::from_millis(2500), "a/3 acknowledged by the host's next read", || {
        let mut c = conn.clone();
        let a3 = a3.clone();
        async move {
            let rows: Vec<redis::Value> =
                redis::cmd("XPENDING").arg("in").arg("h").arg(&a3).arg(&a3).arg(1).query_async(&mut c).await.unwrap();
            rows.is_empty().then_some(())
        }
    })
    .await;
    eventually(SOON, "a/1 and a/2 handled again, nothing left pending", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 0).then_some(()) }
    })
    .await;
    assert_warned_of_deleted(host, &a3).await;
}

/// A key's queued entry deleted from the stream while the entry before it
/// runs: the commit that hands the key on finds it gone, acknowledges it
/// (there is nothing to deliver), and the host warns of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_entry_deleted_while_its_key_runs_is_named_when_the_key_is_handed_on() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_fx, host, a3) = a2_running_with_a3_queued(&redis, 2000).await;
    let _: u64 = redis::cmd("XDEL").arg("in").arg(&a3).query_async(&mut conn).await.unwrap();
    eventually(SOON, "a/2 committed and a/3 acknowledged", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 0).then_some(()) }
    })
    .await;
    assert_warned_of_deleted(host, &a3).await;
    let seqs: Vec<u64> = postings(&mut conn).await["a"].iter().map(|p| p.0).collect();
    assert_eq!(seqs, [1, 2], "a/1 and a/2 handled, a/3 never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_running_when_its_group_was_set_back_waits_for_its_keys_earlier_entries() {
    set_back_under_a_running_delivery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_lease_lapsed_when_its_group_was_set_back_waits_for_its_keys_earlier_entries() {
    set_back_under_a_running_delivery(true).await;
}

/// The group is set back to the stream's start while a/2 runs (3 s), a/3
/// queued behind it. The host's next read (within a second) delivers a/1 to
/// a/3 again and queues them under a's lease, which a/2's delivery holds
/// (or, `lapsed`, held: the test deletes it then, as if it had run out
/// while no one took it; the next renewal is 20 s away). a/2's commit then
/// finds a/1 first in a's queue: it writes nothing, and the key goes on
/// from a/1, so that a/1 to a/3 come again in order, not a/2 ahead of a/1.
async fn set_back_under_a_running_delivery(lapsed: bool) {
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 8\ntimeout_ms = 10000");
    let fx = Fixture::new(&redis, "consumer = \"c\"\nclaim_idle_ms = 60000", &handlers);
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64| json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": ms});
    send(&mut conn, "in", "posting", posting(1, 0)).await;
    send(&mut conn, "in", "posting", posting(2, 3000)).await;
    send(&mut conn, "in", "posting", posting(3, 0)).await;
    let mut hosts = Hosts(vec![fx.spawn_binary_logging_json("warn")]);
    until_a2_runs_with_a3_queued(&conn).await;
    let _: () = redis::cmd("XGROUP").arg("SETID").arg("in").arg("h").arg("0").query_async(&mut conn).await.unwrap();
    eventually(Duration::from_millis(2500), "a/1 delivered again by the host's next read", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 3).then_some(()) }
    })
    .await;
    assert_eq!(postings(&mut conn).await["a"].len(), 1, "a/2 committed before the host read a/1 again");
    if lapsed {
        let leases: Vec<String> = redis::cmd("KEYS").arg("sluice:order:*lease*").query_async(&mut conn).await.unwrap();
        let _: () = redis::cmd("DEL").arg(&leases).query_async(&mut conn).await.unwrap();
    }
    until_finished(&conn, "in", "h", 3).await;
    assert_eq!(seqs(&mut conn, "a").await, [(1, 0), (1, 1), (2, 1), (3, 2)]);
    assert_eq!(leases_held(&mut conn, "c").await, 0);
    let mut host = hosts.0.pop().unwrap();
    assert!(terminate(&mut host).await.success());
    let said = Said(json_log_lines(&host.wait_with_output().unwrap().stderr));
    said.assert_any(|m| {
        m.starts_with("an earlier entry of its key was queued ahead of this one") && m.ends_with("in its key's order")
    });
    said.assert_no_error();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_made_again_from_the_start_while_another_host_reads_leaves_the_key_with_its_holder() {
    made_again_while_another_host_reads(MadeAgain::FromTheStart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_made_again_at_the_running_entry_while_another_host_reads_leaves_the_key_with_its_holder() {
    made_again_while_another_host_reads(MadeAgain::AtTheRunningEntry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_entry_deleted_after_another_host_read_it_again_is_not_committed() {
    made_again_while_another_host_reads(MadeAgain::AtTheRunningEntryThenDeleted).await;
}

/// Where [`made_again_while_another_host_reads`] makes the group again.
#[derive(PartialEq)]
enum MadeAgain {
    /// At the stream's start: a/1 to a/3 are delivered again, and a/1 is
    /// first in a's queue when a/2's delivery commits.
    FromTheStart,
    /// Just after a/1: a/2 and a/3 are delivered again, and a/2, still
    /// running, is first in a's queue.
    AtTheRunningEntry,
    /// The same, and then a/2 is deleted from the stream: claiming it back
    /// drops it, so its commit writes nothing, and a/3 follows.
    AtTheRunningEntryThenDeleted,
}

/// Host c serves key a: a/1 handled, a/2 running (6 s), a/3 queued; with
/// `concurrency = 1` it reads nothing more meanwhile. The group is made
/// again (`from` says where), and host d's next read delivers a's entries
/// again, to d, and queues them under c's lease. a/2's commit on c goes on
/// with the key at once: from a/1, writing nothing for a/2
/// (`MadeAgain::FromTheStart`), or, a/2 being first, claiming it back from
/// d and committing it (`MadeAgain::AtTheRunningEntry`); either way taking
/// each next entry back from d in turn. a's entries are handled again, in
/// order, long before c's lease would run out (claim_idle_ms, 60 s here);
/// c used to find a/2 "taken over" and leave the key waiting for that.
async fn made_again_while_another_host_reads(from: MadeAgain) {
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 1\ntimeout_ms = 10000");
    let host = |name: &str| format!("consumer = \"{name}\"\nclaim_idle_ms = 60000");
    let (fc, fd) = (Fixture::new(&redis, &host("c"), &handlers), Fixture::new(&redis, &host("d"), &handlers));
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64| json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": ms});
    let a1 = send(&mut conn, "in", "posting", posting(1, 0)).await;
    let a2 = send(&mut conn, "in", "posting", posting(2, 6000)).await;
    send(&mut conn, "in", "posting", posting(3, 0)).await;
    let mut hosts = Hosts(vec![fc.spawn_binary_logging_json("warn")]);
    until_a2_runs_with_a3_queued(&conn).await;
    // Host d loads behave.wasm as c compiled it: a/2's 6 s must cover d's
    // start, its first wait on the stream and its read after the reset.
    fd.copy_cache_from(&fc);
    hosts.0.push(fd.spawn_binary());
    // Host d blocks on the stream once it has found nothing new (Redis
    // shows no consumer for a read that delivered nothing); c, its only
    // permit taken, does not read.
    eventually(STARTED, "host d waiting for new entries", || {
        let mut c = conn.clone();
        async move {
            let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await.unwrap();
            clients.lines().any(|l| l.contains("cmd=xread ")).then_some(())
        }
    })
    .await;
    let start = if from == MadeAgain::FromTheStart { "0" } else { a1.as_str() };
    let mut again = redis::pipe();
    again.atomic().cmd("XGROUP").arg("DESTROY").arg("in").arg("h").ignore();
    again.cmd("XGROUP").arg("CREATE").arg("in").arg("h").arg(start).ignore();
    let _: () = again.query_async(&mut conn).await.unwrap();
    // Delivered again to d; then finished, of the entries left in the
    // stream; and the postings.
    let (again, left, expected): (usize, usize, &[(u64, u64)]) = match from {
        MadeAgain::FromTheStart => (3, 3, &[(1, 0), (1, 1), (2, 1), (3, 2)]),
        MadeAgain::AtTheRunningEntry => (2, 3, &[(1, 0), (2, 1), (3, 2)]),
        MadeAgain::AtTheRunningEntryThenDeleted => (2, 2, &[(1, 0), (3, 1)]),
    };
    eventually(Duration::from_millis(2500), "a's entries delivered again to host d", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "d").await == again).then_some(()) }
    })
    .await;
    assert_eq!(postings(&mut conn).await["a"].len(), 1, "a/2 committed before host d read a's entries again");
    if from == MadeAgain::AtTheRunningEntryThenDeleted {
        let _: () = redis::cmd("XDEL").arg("in").arg(&a2).query_async(&mut conn).await.unwrap();
    }
    eventually(Duration::from_secs(20), "a's entries handled again, long before c's lease runs out", || {
        let mut c = conn.clone();
        async move { (finished(&mut c, "in", "h").await == left).then_some(()) }
    })
    .await;
    assert_eq!(seqs(&mut conn, "a").await, expected);
    let mut c = hosts.0.remove(0);
    assert!(terminate(&mut c).await.success());
    let said = Said(json_log_lines(&c.wait_with_output().unwrap().stderr));
    let out_of_turn = |m: &str| m.starts_with("an earlier entry of its key was queued ahead of this one");
    match from {
        MadeAgain::FromTheStart => said.assert_any(|m| out_of_turn(m) && m.ends_with("in its key's order")),
        MadeAgain::AtTheRunningEntry | MadeAgain::AtTheRunningEntryThenDeleted => said.assert_none(out_of_turn),
    }
    said.assert_none(|m| m.contains("presumed dead"));
    said.assert_no_error();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_key_another_host_took_for_an_earlier_entry_writes_nothing() {
    // Host c serves key a: a/1 handled, a/2 running (6 s), a/3 queued; with
    // `concurrency = 1` it reads nothing more meanwhile. Then, in one step,
    // the state three rare things together leave: c's lease on a lapsed,
    // the group was set back to the stream's start, and host d's read
    // delivered a/1 again (alone: its read ended there), dropped a/2 and
    // a/3 from a's queue (the group delivers them again) and took the key
    // to serve a/1 (the test sets a's lease to d). a/2's commit on c must write nothing:
    // it would go ahead of a/1's second run. d then serves a's entries
    // again, in order.
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 1\ntimeout_ms = 10000");
    let host = |name: &str| format!("consumer = \"{name}\"\nclaim_idle_ms = 60000");
    let admin = free_port();
    let with_admin = format!("{}\nadmin = \"127.0.0.1:{admin}\"", host("c"));
    let (fc, fd) = (Fixture::new(&redis, &with_admin, &handlers), Fixture::new(&redis, &host("d"), &handlers));
    let mut conn = redis.conn().await;
    let posting = |seq: u64, ms: u64| json!({"action": "ledger", "account": "a", "seq": seq, "amount": 1, "ms": ms});
    let a1 = send(&mut conn, "in", "posting", posting(1, 0)).await;
    send(&mut conn, "in", "posting", posting(2, 6000)).await;
    send(&mut conn, "in", "posting", posting(3, 0)).await;
    let mut hosts = Hosts(vec![fc.spawn_binary_logging_json("warn")]);
    until_a2_runs_with_a3_queued(&conn).await;
    let (queue, lease) = (order_key(&conn, "queue:a").await, order_key(&conn, "lease:a").await);
    let mut taken = redis::pipe();
    taken.atomic();
    taken.cmd("XGROUP").arg("SETID").arg("in").arg("h").arg("0").ignore();
    taken
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("h")
        .arg("d")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("in")
        .arg(">")
        .ignore();
    taken.cmd("DEL").arg(&queue).ignore();
    taken.cmd("RPUSH").arg(&queue).arg(&a1).ignore();
    taken.cmd("SET").arg(&lease).arg("d").arg("PX").arg(60_000).ignore();
    let _: () = taken.query_async(&mut conn).await.unwrap();
    // a/2's commit comes back to c: the entry lost to d (counted), or its
    // posting written. (c's next read then delivers a/2 and a/3 again, and
    // queues them behind a/1, under d's lease.)
    eventually(Duration::from_secs(12), "a/2's commit on c", || {
        let mut c = conn.clone();
        async move {
            let lost = http_get(admin, "/metrics").1.contains("sluice_ownership_lost_total{handler=\"h\"} 1\n");
            (lost || seqs(&mut c, "a").await.len() > 1).then_some(())
        }
    })
    .await;
    assert_eq!(seqs(&mut conn, "a").await, [(1, 0)], "a/2's delivery on c wrote its posting ahead of a/1's second run");
    fd.copy_cache_from(&fc);
    hosts.0.push(fd.spawn_binary());
    until_finished(&conn, "in", "h", 3).await;
    assert_eq!(seqs(&mut conn, "a").await, [(1, 0), (1, 1), (2, 1), (3, 2)]);
    let mut c = hosts.0.remove(0);
    assert!(terminate(&mut c).await.success());
    let said = Said(json_log_lines(&c.wait_with_output().unwrap().stderr));
    said.assert_any(|m| m.starts_with("this host lost the entry to consumer d"));
    said.assert_no_error();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_takes_no_lease_for_an_entry_only_queued_here_so_a_host_with_room_serves_it() {
    // The state a stalled connection left (the fault audit found it): a/1's
    // commit ran in Redis (a's queue emptied, its lease given up) but its
    // reply has not reached the host, which still counts key a as served;
    // then a read queued a/2, pending with this host, and left key a
    // waiting for a host with room. A renewal sent meanwhile must not take
    // a's lapsed lease for a/2, which no one here delivers: the key would
    // have a holder that serves nothing, and wait for the holder's next
    // claim scan after a/1's delivery ends. Key b runs beside it, its lease
    // deleted too, as if it had run out while b/1 ran: that one the renewal
    // must take back (b/1, its first entry, is being delivered), which
    // also shows the test when a renewal has come.
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 8\ntimeout_ms = 8500");
    let fx = Fixture::new(&redis, "consumer = \"c\"\nclaim_idle_ms = 9000", &handlers);
    let mut conn = redis.conn().await;
    let posting = |account: &str, seq: u64, ms: u64| json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "ms": ms});
    let hosts = Hosts(vec![fx.spawn_binary_logging_json("warn")]);
    let a1 = send(&mut conn, "in", "posting", posting("a", 1, 8_000)).await;
    send(&mut conn, "in", "posting", posting("b", 1, 8_000)).await;
    send(&mut conn, "in", "posting", posting("a", 2, 0)).await;
    // a/1 and b/1 run; a/2 is queued under a's lease.
    eventually(STARTED, "a/1 and b/1 running, a/2 queued", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "c").await == 3 && leases_held(&mut c, "c").await == 2).then_some(()) }
    })
    .await;
    let started = std::time::Instant::now();
    let (queue_a, lease_a, lease_b) =
        (order_key(&conn, "queue:a").await, order_key(&conn, "lease:a").await, order_key(&conn, "lease:b").await);
    let prefix = queue_a.strip_suffix("queue:a").unwrap().to_owned();
    // As if a/1's commit had run, and a read had then queued a/2 with no
    // room for its key.
    let mut as_if = redis::pipe();
    as_if.atomic();
    as_if.cmd("XACK").arg("in").arg("h").arg(&a1).ignore();
    as_if.cmd("LREM").arg(&queue_a).arg(1).arg(&a1).ignore();
    as_if.cmd("DEL").arg(&lease_a).arg(&lease_b).ignore();
    let _: () = as_if.query_async(&mut conn).await.unwrap();
    until_renewal_takes_back(&conn, &lease_b).await;
    let holder: Option<String> = redis::cmd("GET").arg(&lease_a).query_async(&mut conn).await.unwrap();
    assert_eq!(holder, None, "the renewal took a's lease for a/2, which no one delivers");
    // The read's wake-up: the host, idle with room, takes key a.
    let mut wake = redis::pipe();
    wake.atomic();
    wake.cmd("SADD").arg(format!("{prefix}waiting")).arg("a").ignore();
    wake.cmd("XADD").arg(format!("{prefix}wake")).arg("MAXLEN").arg(1).arg("*").arg("key").arg("waiting").ignore();
    let _: () = wake.query_async(&mut conn).await.unwrap();
    eventually(Duration::from_secs(3), "a/2 handled while a/1's delivery still runs", || {
        let mut c = conn.clone();
        async move { (seqs(&mut c, "a").await == [(2, 0)]).then_some(()) }
    })
    .await;
    assert!(started.elapsed() < Duration::from_millis(7500), "a/1's delivery (8 s) may have ended meanwhile");
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_warns_of_a_key_taken_over_only_while_this_host_delivers_its_first_entry() {
    // Host c delivers a/1, b/1 and e/1 (8 s each), a/2 queued behind a/1.
    // In one step the test then makes three keys' states:
    // - a: a/1 acknowledged and out of a's queue, a's lease host d's. As if
    //   a/1's commit had run (its reply not yet seen by c, which still
    //   counts a as served) and d had then taken the key from `waiting`
    //   (d would have claimed a/2 too; the test leaves it with c, which
    //   does not deliver it). c lost nothing of a's to d: it delivers no
    //   more of a.
    // - b: b's lease d's, b/1 still first in b's queue, as if d had taken
    //   b over while b/1 ran here.
    // - e: its lease deleted, as if it had run out; a renewal takes it back,
    //   which shows the test when one has come.
    // c must warn of one key taken over, not two.
    let redis = RedisServer::start();
    let handlers = ledger("data.account", "concurrency = 8\ntimeout_ms = 8500");
    let fx = Fixture::new(&redis, "consumer = \"c\"\nclaim_idle_ms = 9000", &handlers);
    let mut conn = redis.conn().await;
    let posting = |account: &str, seq: u64, ms: u64| json!({"action": "ledger", "account": account, "seq": seq, "amount": 1, "ms": ms});
    let mut hosts = Hosts(vec![fx.spawn_binary_logging_json("warn")]);
    let a1 = send(&mut conn, "in", "posting", posting("a", 1, 8_000)).await;
    send(&mut conn, "in", "posting", posting("b", 1, 8_000)).await;
    send(&mut conn, "in", "posting", posting("e", 1, 8_000)).await;
    send(&mut conn, "in", "posting", posting("a", 2, 0)).await;
    eventually(STARTED, "a/1, b/1 and e/1 running, a/2 queued", || {
        let mut c = conn.clone();
        async move { (pending_with(&mut c, "c").await == 4 && leases_held(&mut c, "c").await == 3).then_some(()) }
    })
    .await;
    let (queue_a, lease_e) = (order_key(&conn, "queue:a").await, order_key(&conn, "lease:e").await);
    let (lease_a, lease_b) = (order_key(&conn, "lease:a").await, order_key(&conn, "lease:b").await);
    let mut as_if = redis::pipe();
    as_if.atomic();
    as_if.cmd("XACK").arg("in").arg("h").arg(&a1).ignore();
    as_if.cmd("LREM").arg(&queue_a).arg(1).arg(&a1).ignore();
    as_if.cmd("SET").arg(&lease_a).arg("d").ignore();
    as_if.cmd("SET").arg(&lease_b).arg("d").ignore();
    as_if.cmd("DEL").arg(&lease_e).ignore();
    let _: () = as_if.query_async(&mut conn).await.unwrap();
    until_renewal_takes_back(&conn, &lease_e).await;
    let mut c = hosts.0.pop().unwrap();
    assert!(terminate(&mut c).await.success());
    let said = Said(json_log_lines(&c.wait_with_output().unwrap().stderr));
    let taken = |m: &str| m.contains("key(s) taken over by another consumer");
    said.assert_any(taken);
    said.assert_none(|m| taken(m) && !m.starts_with("1 key(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_kills_its_host_each_time_runs_out_of_attempts_and_frees_its_key() {
    let redis = RedisServer::start();
    let handlers = ledger("account", "max_attempts = 2\ntimeout_ms = 20000");
    let fx = Fixture::new(&redis, "consumer = \"a\"\nclaim_idle_ms = 60000", &handlers);
    let mut conn = redis.conn().await;
    let posting =
        |seq: u64, ms: u64| json!({"action": "ledger", "account": "k", "seq": seq, "amount": 1, "ms": ms}).to_string();
    // Posting 1 runs long enough to be killed in, twice.
    for (seq, ms) in [(1, 10_000), (2, 0)] {
        xadd(&mut conn, "in", &[("type", "posting"), ("account", "k"), ("data", &posting(seq, ms))]).await;
    }
    let mut hosts = Hosts(vec![]);
    for _ in 0..2 {
        hosts.0.push(fx.spawn_binary());
        until_pending(&conn, "in", "h", 2).await;
        // Started: the host is computing posting 1 (nothing is finished).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let host = hosts.0.last_mut().unwrap();
        host.kill().unwrap();
        host.wait().unwrap();
    }
    // Its third delivery would be past max_attempts: dead-lettered unrun,
    // and posting 2 goes ahead.
    hosts.0.push(fx.spawn_binary());
    until_finished(&conn, "in", "h", 2).await;
    let dead = entries(&mut conn, "in:dlq").await;
    assert_eq!(dead.len(), 1);
    assert!(field(&dead[0], "sluice.error").contains("attempt"), "{:?}", dead[0].map);
    let rows = &postings(&mut conn).await["k"];
    assert_eq!(rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(2, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_utf8_is_ordered_like_any_other() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &ledger("account", "concurrency = 8\nbackoff_ms = 50"));
    let host = fx.start();
    let mut conn = redis.conn().await;
    // The field holds bytes that are not UTF-8; the ledger sees its data's
    // account. Posting 1 fails once; the others wait for it.
    for seq in 1..=3u64 {
        let data = json!({"action": "ledger", "account": "bin", "seq": seq, "amount": 1, "fail": u64::from(seq == 1)});
        let _: String = redis::cmd("XADD")
            .arg("in")
            .arg("*")
            .arg("type")
            .arg("posting")
            .arg("account")
            .arg(&b"\xff\x00k"[..])
            .arg("data")
            .arg(data.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // Well within claim_idle_ms (30 s): no wait for a lease to run out.
    until_finished(&conn, "in", "h", 3).await;
    host.stop().await;
    let rows = &postings(&mut conn).await["bin"];
    assert_eq!(rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(1, 0), (2, 1), (3, 2)]);
}

/// Waits until every one of the `total` entries of `in` has been read, at
/// least `done` of them are finished, and one of `hosts` serves a key;
/// returns that host.
async fn progress(conn: &MultiplexedConnection, total: usize, done: usize, hosts: &[&'static str]) -> &'static str {
    eventually(Duration::from_secs(60), &format!("all read, {done} committed, a host serving keys"), || {
        let mut c = conn.clone();
        async move {
            let (read, lag) = (group_field(&mut c, "entries-read").await, group_field(&mut c, "lag").await);
            let finished = read.saturating_sub(pending(&mut c, "in", "h").await);
            if read != total || lag != 0 || finished < done {
                return None;
            }
            for h in hosts {
                if leases_held(&mut c, h).await > 0 {
                    return Some(*h);
                }
            }
            None
        }
    })
    .await
}

/// A number from `XINFO GROUPS in` for group `h` (0 before it exists).
async fn group_field(conn: &mut MultiplexedConnection, name: &str) -> usize {
    let groups: redis::RedisResult<Vec<Vec<redis::Value>>> =
        redis::cmd("XINFO").arg("GROUPS").arg("in").query_async(conn).await;
    for g in groups.unwrap_or_default() {
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let fields: HashMap<String, &redis::Value> = g.chunks(2).map(|kv| (text(&kv[0]), &kv[1])).collect();
        if fields.get("name").map(|v| text(v)).as_deref() == Some("h") {
            return match fields.get(name) {
                Some(redis::Value::Int(n)) => *n as usize,
                _ => 0,
            };
        }
    }
    0
}

/// Waits until posting a/1 is handled and a/2 is delivered under consumer
/// `c`'s lease of key a, with a/3 queued behind it.
async fn until_a2_runs_with_a3_queued(conn: &MultiplexedConnection) {
    eventually(STARTED, "a/1 handled, a/2 under a's lease, a/3 queued", || {
        let mut c = conn.clone();
        async move {
            let handled = postings(&mut c).await.get("a").map_or(0, Vec::len);
            (handled == 1 && pending(&mut c, "in", "h").await == 2 && leases_held(&mut c, "c").await == 1).then_some(())
        }
    })
    .await;
}

/// Waits until a renewal of host c has taken back `lease`, which the test
/// deleted while c delivered its key's first entry (every claim_idle_ms / 3).
async fn until_renewal_takes_back(conn: &MultiplexedConnection, lease: &str) {
    eventually(SOON, &format!("{lease} taken back by a renewal"), || {
        let mut c = conn.clone();
        async move {
            let holder: Option<String> = redis::cmd("GET").arg(lease).query_async(&mut c).await.unwrap();
            (holder.as_deref() == Some("c")).then_some(())
        }
    })
    .await;
}

/// The Redis key of `part` (`queue:a`, `lease:b`) of the keys ordered for
/// group `h` on stream `in`, found among `sluice:order:*`; exactly one must
/// match.
async fn order_key(conn: &MultiplexedConnection, part: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg("sluice:order:*").query_async(&mut conn.clone()).await.unwrap();
    let suffix = format!(":{part}");
    let found: Vec<&String> = keys.iter().filter(|k| k.ends_with(&suffix)).collect();
    assert_eq!(found.len(), 1, "{part}: {keys:?}");
    found[0].clone()
}

/// How many key leases `consumer` holds.
async fn leases_held(conn: &mut MultiplexedConnection, consumer: &str) -> usize {
    let leases: Vec<String> = redis::cmd("KEYS").arg("sluice:order:*lease*").query_async(conn).await.unwrap();
    let mut held = 0;
    for l in leases {
        let h: Option<String> = redis::cmd("GET").arg(l).query_async(conn).await.unwrap();
        held += usize::from(h.as_deref() == Some(consumer));
    }
    held
}

/// Entries of group `h` pending with `consumer` (0 before the group exists).
async fn pending_with(conn: &mut MultiplexedConnection, consumer: &str) -> usize {
    let rows: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("XPENDING").arg("in").arg("h").arg("-").arg("+").arg(100_000).arg(consumer).query_async(conn).await;
    rows.map_or(0, |r| r.len())
}

#[test]
fn check_says_what_a_handler_is_ordered_by() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &ledger("data.account", ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("streams: in  ordered by data.account"), "{said}");
}
