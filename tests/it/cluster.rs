//! Redis Cluster: a 3-master, 3-replica cluster of the test's own, with the
//! streams on different masters. The demo chain and a redrive run on it;
//! moving a slot under load and failing a master over under load lose no
//! event and publish none twice. The payment handler orders by order id, so
//! its key queues (in the orders stream's slot) move and fail over too.

use crate::support::*;
use redis::cluster_async::ClusterConnection;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHAIN: &str = "[handlers.payment]\nplugin = \"payment.wasm\"\nstreams = [\"orders\"]\nevents = [\"order.created\"]\npublish = [\"payments\"]\nmax_attempts = 2\nbackoff_ms = 10\norder_by = \"data.order_id\"\n\
[handlers.shipping]\nplugin = \"shipping.wasm\"\nstreams = [\"payments\"]\nevents = [\"payment.processed\"]\npublish = [\"shipments\"]\n\
[handlers.notification]\nplugin = \"notification.wasm\"\nstreams = [\"shipments\"]\nevents = [\"order.shipped\"]\n";

fn fixture(cluster: &Cluster, host: &str, handlers: &str) -> Fixture {
    Fixture::with_redis(&format!("url = \"{}\"\ncluster = true", cluster.url()), host, handlers)
}

fn order(n: usize, total: f64) -> serde_json::Value {
    json!({"order_id": format!("o-{n}"), "customer": "ada", "total": total, "items": [{"sku": "mug", "qty": 1}]})
}

/// Each value of `field` in `entries`' JSON data, with how often it occurs.
fn counted(entries: &[redis::streams::StreamId], key: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for e in entries {
        let data: serde_json::Value = serde_json::from_str(&field(e, "data")).unwrap();
        *seen.entry(data[key].to_string()).or_default() += 1;
    }
    seen
}

/// (lost, duplicated): of the `expected` values, how many never appear in
/// `seen`, and how many appear more than once.
fn losses(seen: &BTreeMap<String, usize>, expected: impl IntoIterator<Item = String>) -> (usize, usize) {
    let expected: Vec<String> = expected.into_iter().collect();
    let lost = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    (lost, duplicated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_chain_and_a_redrive_run_with_the_streams_on_different_masters() {
    let cluster = Cluster::start();
    let masters: std::collections::BTreeSet<u16> =
        ["orders", "payments", "shipments"].iter().map(|s| cluster.master_of(s)).collect();
    assert!(masters.len() >= 2, "the streams live on different masters");
    let fx = fixture(&cluster, "", CHAIN);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}{}", String::from_utf8_lossy(&check.stderr));
    assert!(said.contains("connected to a Redis Cluster"), "{said}");
    assert!(said.contains("via outbox   payment          orders -> payments"), "{said}");

    let host = fx.start();
    let mut conn = cluster.conn().await;
    let orders = 40;
    for n in 0..orders {
        let total = if n % 10 == 9 { -1.0 } else { 10.0 + n as f64 };
        send(&mut conn, "orders", "order.created", order(n, total)).await;
    }
    let good = orders - orders / 10;
    let shipments = until_entries(&conn, "shipments", good).await;
    until_finished(&conn, "shipments", "notification", good).await;
    let seen = counted(&shipments, "order_id");
    let expected = (0..orders).filter(|n| n % 10 != 9).map(|n| format!("\"o-{n}\""));
    assert_eq!(losses(&seen, expected), (0, 0), "lost, duplicated: {seen:?}");
    let dead = until_entries(&conn, "{orders}:dlq", orders / 10).await;
    assert!(field(&dead[0], "sluice.error").contains("total"), "{:?}", dead[0]);

    // The refused orders go back to payment alone, fail again, and keep
    // their history.
    let redrive = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dlq", "redrive", "--handler", "payment", "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    eventually(SOON, "the redriven orders dead-lettered again", || {
        let mut c = conn.clone();
        async move {
            let dead = entries(&mut c, "{orders}:dlq").await;
            (dead.len() == orders / 10 && dead.iter().all(|e| e.map.contains_key("sluice.history"))).then_some(())
        }
    })
    .await;
    host.stop().await;
    assert_eq!(entries(&mut conn, "shipments").await.len(), good, "nothing shipped twice");
    assert!(entries(&mut conn, "sluice:outbox:{orders}").await.is_empty(), "the outbox was relayed");
}

/// Each event of the load publishes its number to `out`.
fn numbered(n: usize) -> serde_json::Value {
    json!({"action": "publish", "publish": [{"stream": "out", "type": "n", "data": {"n": n}}]})
}

/// Runs numbered events through a host, published steadily for about three
/// seconds, while `fault` happens midway (once a third are handled), then
/// checks every number reached `out` once.
async fn under_load(cluster: &Cluster, fault: impl FnOnce(&Cluster)) {
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nconcurrency = 8\n";
    let fx = fixture(cluster, "claim_idle_ms = 5000", handlers);
    let host = fx.start();
    let mut conn = cluster.conn().await;
    let load = 1500;
    let mut producer = conn.clone();
    let published = tokio::spawn(async move {
        for n in 0..load {
            // A producer retries when the cluster redirects it past its
            // client's retries (while a slot moves, nodes briefly disagree);
            // a redirected write was not applied, so it is not a duplicate.
            let fields = [("type", "t".to_owned()), ("data", numbered(n).to_string())];
            loop {
                let added: redis::RedisResult<String> =
                    redis::AsyncCommands::xadd(&mut producer, "in", "*", &fields).await;
                match added {
                    Ok(_) => break,
                    Err(e) if e.redirect_node().is_some() || e.code() == Some("TRYAGAIN") => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("publishing {n}: {e}"),
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    eventually(SOON, "a third of the load handled", || {
        let mut c = conn.clone();
        async move { (entries(&mut c, "out").await.len() >= load / 3).then_some(()) }
    })
    .await;
    // On this thread, which the host's other workers can spare meanwhile.
    tokio::task::block_in_place(|| fault(cluster));
    assert!(!published.is_finished(), "the fault came while events were still being published");
    published.await.unwrap();
    let out = eventually(std::time::Duration::from_secs(60), "the whole load handled", || {
        let mut c: ClusterConnection = conn.clone();
        async move {
            let out = entries(&mut c, "out").await;
            (out.len() >= load && finished(&mut c, "in", "h").await == load).then_some(out)
        }
    })
    .await;
    host.stop().await;
    let seen = counted(&out, "n");
    assert_eq!(losses(&seen, (0..load).map(|n| n.to_string())), (0, 0), "lost, duplicated");
    assert_eq!(entries(&mut conn, "out").await.len(), load, "no publish twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_streams_slot_under_load_loses_and_duplicates_nothing() {
    let cluster = Cluster::start();
    under_load(&cluster, |c| {
        let slot = c.slot_of("in");
        let to = c.masters().into_iter().find(|m| *m != c.master_of("in")).unwrap();
        c.move_slot(slot, to);
        assert_eq!(c.master_of("in"), to, "the slot moved");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_the_streams_master_over_under_load_loses_and_duplicates_nothing() {
    let cluster = Cluster::start();
    under_load(&cluster, |c| {
        let old = c.master_of("in");
        let new = c.failover(old);
        assert_eq!(c.master_of("in"), new, "the replica took over");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_repeats_its_writes_lands_each_once() {
    // A relay interrupted between writing and deleting from the outbox
    // writes again what it wrote. Here it may never delete (its user lacks
    // XDEL), so it repeats every round: the marks in the targets' slots must
    // make each write land exactly once, in order, however many targets
    // (two streams and ten kv keys, in several slots) and rounds there are.
    let redis = RedisServer::start();
    let mut root = redis.conn().await;
    let rule = "ACL SETUSER relayer on >pw ~* &* +@all -xdel";
    let words: Vec<&str> = rule.split(' ').collect();
    let _: () = redis::cmd(words[0]).arg(&words[1..]).query_async(&mut root).await.unwrap();
    let outbox = sluice::stream::outbox("in");
    for n in 0..50 {
        let data = format!("{{\"n\":{n}}}");
        let stream = if n % 2 == 0 { "out" } else { "side" };
        let fields =
            [("kind", "xadd"), ("key", stream), ("a", "type"), ("a", "n"), ("a", "data"), ("a", data.as_str())];
        let _: String = redis::AsyncCommands::xadd(&mut root, &outbox, "*", &fields).await.unwrap();
        let (key, value) = (format!("k{}", n % 10), n.to_string());
        let fields = [("kind", "set"), ("key", key.as_str()), ("a", value.as_str())];
        let _: String = redis::AsyncCommands::xadd(&mut root, &outbox, "*", &fields).await.unwrap();
    }
    let url = format!("redis://relayer:pw@127.0.0.1:{}", redis.port);
    let as_relayer = sluice::stream::Redis::connect(&url, &Default::default()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(sluice::stream::Relay::new(outbox.clone(), "h".into(), as_relayer).run(stop.clone()));
    until_entries(&root, "out", 25).await;
    until_entries(&root, "side", 25).await;
    // Rounds go on: each finds the same 100 entries still in the outbox.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.cancel();
    relay.await.unwrap();
    assert_eq!(entries(&mut root, &outbox).await.len(), 100, "the relay could not delete, so it repeated");
    for (stream, first) in [("out", 0), ("side", 1)] {
        let numbers: Vec<String> = entries(&mut root, stream).await.iter().map(|e| field(e, "data")).collect();
        let expected: Vec<String> = (first..50).step_by(2).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(numbers, expected, "each write to {stream} once, in order");
    }
    for k in 0..10 {
        let value: String = redis::AsyncCommands::get(&mut root, format!("k{k}")).await.unwrap();
        assert_eq!(value, (40 + k).to_string(), "k{k} holds its last write");
    }
    // One mark per slot written to, each with one field (this outbox): the
    // marks do not grow with the number of keys.
    let marks: Vec<String> = redis::AsyncCommands::keys(&mut root, "sluice:relayed:*").await.unwrap();
    let slots: std::collections::HashSet<u16> = ["out", "side"]
        .into_iter()
        .map(String::from)
        .chain((0..10).map(|k| format!("k{k}")))
        .map(|k| sluice::stream::slot::of(&k))
        .collect();
    assert_eq!(marks.len(), slots.len(), "a mark per slot: {marks:?}");
    for mark in marks {
        let fields: Vec<String> = redis::AsyncCommands::hkeys(&mut root, &mark).await.unwrap();
        assert_eq!(fields, std::slice::from_ref(&outbox), "{mark} has one field per outbox");
    }
}

/// Log lines written on this thread while it lives, kept.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Keeps the log lines (info and up, without colours) written on this
    /// thread until the guard is dropped.
    fn on_this_thread() -> (Captured, tracing::subscriber::DefaultGuard) {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    /// The lines kept so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_blocked_by_a_target_that_is_not_a_stream_says_so_once() {
    // The outbox's first write goes to a key holding a string: every round
    // fails (WRONGTYPE) until the key is fixed, and the writes behind it
    // wait. That is said once, not every half second, and so is the end of
    // it. (The relay runs on this test's own task, so that its log lines
    // reach the subscriber set for this thread.)
    let redis = RedisServer::start();
    let mut root = redis.conn().await;
    let _: () = redis::AsyncCommands::set(&mut root, "blocked", "a string").await.unwrap();
    let outbox = sluice::stream::outbox("in");
    let fields = [("kind", "xadd"), ("key", "blocked"), ("a", "type"), ("a", "t"), ("a", "data"), ("a", "{}")];
    let _: String = redis::AsyncCommands::xadd(&mut root, &outbox, "*", &fields).await.unwrap();
    let (log, _guard) = Captured::on_this_thread();
    let host = sluice::stream::Redis::connect(&redis.url(), &Default::default()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = sluice::stream::Relay::new(outbox.clone(), "h".into(), host).run(stop.clone());
    let fix = async {
        let failed = async |c: &mut redis::aio::MultiplexedConnection| {
            command_stat(&command_stats(c).await, "evalsha", "failed_calls")
        };
        eventually(SOON, "five rounds failed", || {
            let mut c = root.clone();
            async move { (failed(&mut c).await >= 5).then_some(()) }
        })
        .await;
        let _: () = redis::AsyncCommands::del(&mut root.clone(), "blocked").await.unwrap();
        until_entries(&root, "blocked", 1).await;
        stop.cancel();
    };
    tokio::join!(relay, fix);
    let text = log.text();
    let failed: Vec<&str> =
        text.lines().filter(|l| l.contains("relaying writes to other cluster slots failed")).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(failed[0].contains("WARN") && failed[0].contains(&outbox), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("relaying writes to other cluster slots again")).count(),
        1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_through_the_outbox_of_another_slot() {
    let cluster = Cluster::start();
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"{b}:in\"]\n";
    let fx = fixture(&cluster, "", handlers);
    let host = fx.start();
    // The reply stream (sluice:reply:<random>) is in another slot than
    // {b}:in: the reply and its time to live go through the outbox.
    let data = json!({"action": "reply", "reply": {"n": 7}}).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["request", "{b}:in", "--type", "t", "--data", &data, "--timeout-ms", "10000", "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), r#"{"n":7}"#);
    // A caller that is gone: its reply stream, relayed, still expires.
    let mut conn = cluster.conn().await;
    let gone = "sluice:reply:gone";
    assert_ne!(cluster.slot_of(gone), cluster.slot_of("{b}:in"));
    let _: String = redis::cmd("XADD")
        .arg("{b}:in")
        .arg("*")
        .arg("type")
        .arg("t")
        .arg("data")
        .arg(&data)
        .arg("reply_to")
        .arg(gone)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl = eventually(SOON, "the reply relayed", || {
        let mut c = conn.clone();
        async move {
            let ttl: i64 = redis::cmd("PTTL").arg(gone).query_async(&mut c).await.unwrap();
            (ttl != -2).then_some(ttl)
        }
    })
    .await;
    assert!(ttl > 0, "the relayed reply stream has no time to live ({ttl})");
    host.stop().await;
}

/// What a committer's batches read for
/// [`a_commit_batch_reads_the_next_entries_when_the_handlers_streams_share_its_slot`]:
/// per batch that read, the streams it named and the entries it found.
type Reads = Arc<Mutex<Vec<(Vec<String>, Vec<(String, String)>)>>>;

/// A [`sluice::stream::Refill`] for a handler of `streams` that records
/// what each batch read.
struct Recorder {
    streams: Arc<[String]>,
    reads: Reads,
    tracker: tokio_util::task::TaskTracker,
}

impl sluice::stream::Refill for Recorder {
    fn room(&self, finishing: usize) -> Option<sluice::stream::Room> {
        let (streams, tracked) = (self.streams.clone(), self.tracker.token());
        Some(sluice::stream::Room { streams, count: finishing, tracked, in_flight: Box::new(()) })
    }

    fn found(
        &self,
        room: sluice::stream::Room,
        found: Vec<sluice::stream::Delivery>,
        _permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let found = found.into_iter().map(|d| (d.stream, d.entry.id)).collect();
        self.reads.lock().unwrap().push((room.streams.to_vec(), found));
    }

    fn lost(&self, room: sluice::stream::Room) {
        self.reads.lock().unwrap().push((room.streams.to_vec(), vec![("lost".into(), String::new())]));
    }

    fn deleted(&self, _deleted: Vec<(String, String)>) {}
}

/// Commits, through a committer on `conn` for a handler of `streams`, the
/// pending entry of each of `pending` (stream, id); each must be done.
/// What its batches read.
async fn commit_through_refill(conn: &ClusterConnection, streams: &[&str], pending: &[(&str, String)]) -> Reads {
    use sluice::stream::{Commit, Committed, Committer, Conn};
    let reads = Reads::default();
    let streams: Arc<[String]> = streams.iter().map(|s| s.to_string()).collect();
    let recorder = Recorder { streams, reads: reads.clone(), tracker: tokio_util::task::TaskTracker::new() };
    let committer = Committer::start(Conn::Cluster(conn.clone()), "g".into(), "c".into(), Some(Box::new(recorder)));
    let permits = Arc::new(tokio::sync::Semaphore::new(pending.len()));
    let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    for (s, id) in pending {
        let entry = sluice::event::Entry { id: id.clone(), fields: vec![("type".into(), b"t".to_vec())] };
        let commit = Commit::ack(s, &entry, "h", "sluice:kv:h:", Default::default(), &Default::default());
        let permit = permits.clone().acquire_owned().await.unwrap();
        let tx = tx.clone();
        committer.commit_then(Arc::new(commit), move |result| {
            drop(tx.send(result.map_err(|e| e.to_string())));
            Some(permit)
        });
    }
    drop(tx);
    for _ in pending {
        let result = tokio::time::timeout(SOON, results.recv()).await.expect("each commit answered");
        assert_eq!(result, Some(Ok(Committed::Done)));
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_batch_reads_the_next_entries_when_the_handlers_streams_share_its_slot() {
    // As on one server, a batch of commits reads the next new entries for
    // the permits it gives back, in the same round trip, when all of the
    // handler's streams are in the batch's slot (one call can only name
    // keys of one slot). A handler whose streams span slots reads with its
    // readers alone: a batch that read only its own slot would keep its
    // permits there, and a backlog in one slot would starve the others.
    let cluster = Cluster::start();
    let (a, a2, b) = ("{a}in", "{a}in2", "{b}in");
    assert_eq!(cluster.slot_of(a), cluster.slot_of(a2));
    assert_ne!(cluster.slot_of(a), cluster.slot_of(b));
    let mut conn = cluster.conn().await;
    let mut held = Vec::new();
    let mut new = Vec::new();
    for s in [a, a2, b] {
        sluice::stream::ensure_group(&mut conn, s, "g").await.unwrap();
        held.push((s, send(&mut conn, s, "t", json!({})).await));
        read_pending(&mut conn, s, "g").await;
        new.push((s.to_owned(), send(&mut conn, s, "t", json!({})).await));
        send(&mut conn, s, "t", json!({})).await;
    }
    // One slot: the batch reads one new entry of each stream for the one
    // delivery it finished (COUNT is per stream).
    let reads = commit_through_refill(&conn, &[a, a2], &held[..1]).await;
    let found = eventually(SOON, "a read by the batch", || {
        let reads = reads.lock().unwrap().clone();
        async move { reads.into_iter().next() }
    })
    .await;
    assert_eq!(found, (vec![a.to_owned(), a2.to_owned()], vec![new[0].clone(), new[1].clone()]));
    // Two slots: the batches read nothing. Redis runs a batch's read before
    // its reply comes back, so what Redis shows pending is final here: the
    // entries the first batch read, and nothing of b.
    let reads = commit_through_refill(&conn, &[a, a2, b], &[held[1].clone(), held[2].clone()]).await;
    let mut left = Vec::new();
    for s in [a, a2, b] {
        left.push(pending(&mut conn, s, "g").await);
    }
    assert_eq!(left, [1, 1, 0], "entries pending in {a}, {a2}, {b}; reads: {:?}", reads.lock().unwrap());
}

/// A master loading its data (restarting, as in a rolling upgrade) holds
/// up no commit on the others. Where a node does not have Sluice's commit
/// script (it restarted, or never loaded it before a failover promoted it),
/// the script runs by body on the node that serves its keys. It used to be
/// loaded with `SCRIPT LOAD`, which redis-rs sends to every master it knows:
/// a loading one refused it, and every such commit failed until that master
/// had loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_loading_its_data_holds_up_no_commit_on_another() {
    let cluster = Cluster::start();
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"{t}.in\"]\npublish = [\"{t}.out\"]\n";
    let fx = fixture(&cluster, "", handlers);
    let mut conn = cluster.conn().await;
    let host = fx.start();
    let publish = json!({"action": "publish", "publish": [{"stream": "{t}.out", "type": "done", "data": {}}]});
    let watcher = conn.clone();
    let published = |n: usize| {
        let conn = watcher.clone();
        move || {
            let mut c = conn.clone();
            async move { (entries(&mut c, "{t}.out").await.len() == n).then_some(()) }
        }
    };
    send(&mut conn, "{t}.in", "t", publish.clone()).await;
    eventually(SOON, "the first event published", published(1)).await;

    // Another master holds 10 000 keys, and loads them at 1 ms each (as a
    // restart does), answering LOADING meanwhile. (redis-rs sends SCRIPT
    // LOAD to the masters it is connected to; a loading replica would not
    // have shown this.)
    let master = cluster.master_of("{t}");
    let tag = (0..).map(|n| format!("{{o{n}}}")).find(|tag| cluster.master_of(tag) != master).unwrap();
    let other = cluster.master_of(&tag);
    for chunk in 0..10 {
        let mut pipe = redis::pipe();
        for n in 0..1000 {
            pipe.cmd("SET").arg(format!("{tag}.k{chunk}.{n}")).arg(n).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let loading = || cluster.cli(other, &["INFO", "persistence"]).contains("loading:1");
    cluster.cli(other, &["CONFIG", "SET", "key-load-delay", "1000"]);
    cluster.cli(other, &["CONFIG", "SET", "loading-process-events-interval-bytes", "1024"]);
    let mut reload =
        std::process::Command::new("redis-cli").args(["-p", &other.to_string(), "DEBUG", "RELOAD"]).spawn().unwrap();
    eventually(SOON, "the other master loading", || async { loading().then_some(()) }).await;

    // The master forgets its scripts, as after a restart.
    assert_eq!(cluster.cli(master, &["SCRIPT", "FLUSH"]).trim(), "OK");
    send(&mut conn, "{t}.in", "t", publish).await;
    // By the old way, the commit waited out the loading master's refusal
    // of SCRIPT LOAD (5 s, a command's timeout) before it went through.
    eventually(Duration::from_secs(2), "the second event published", published(2)).await;
    assert!(loading(), "published while the other master was still loading");
    reload.wait().unwrap();
    host.stop().await;
}

/// A host whose handler publishes each event from `source` to a stream on
/// another master (`out`), through the outbox, with a first event relayed
/// and its outbox entry gone: where the relay's tests of replicas start.
/// (`source` is the test's own: the relay's metrics belong to the whole
/// test binary, by outbox.)
struct Relaying {
    _fx: Fixture,
    host: RunningHost,
    conn: ClusterConnection,
    source: String,
    out: String,
    outbox: String,
}

impl Relaying {
    async fn start(cluster: &Cluster, source: &str) -> Relaying {
        let out = (0..).map(|n| format!("out{n}")).find(|k| cluster.master_of(k) != cluster.master_of(source)).unwrap();
        let handlers =
            format!("[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"{source}\"]\npublish = [\"{out}\"]\n");
        let fx = fixture(cluster, "", &handlers);
        let conn = cluster.conn().await;
        let host = fx.start();
        let outbox = sluice::stream::outbox(source);
        let mut r = Relaying { _fx: fx, host, conn, source: source.to_owned(), out, outbox };
        r.publish(0).await;
        eventually(SOON, "the first event published", || r.published(1)).await;
        eventually(SOON, "the first event's outbox entry deleted", || r.relayed()).await;
        r
    }

    /// Sends event `n`, which the handler publishes to `out` as `{"n": n}`.
    async fn publish(&mut self, n: usize) {
        let publish = json!({"action": "publish", "publish": [{"stream": self.out, "type": "n", "data": {"n": n}}]});
        send(&mut self.conn, &self.source, "t", publish).await;
    }

    /// `Some` once `out` has exactly `n` entries.
    async fn published(&self, n: usize) -> Option<()> {
        (entries(&mut self.conn.clone(), &self.out).await.len() == n).then_some(())
    }

    /// Requires `relayed`, `out`'s entries, to hold events 0 and 1 once each.
    fn each_once(relayed: &[redis::streams::StreamId]) {
        let seen = counted(relayed, "n");
        assert_eq!(losses(&seen, ["0".to_owned(), "1".to_owned()]), (0, 0), "lost, duplicated: {seen:?}");
        assert_eq!(relayed.len(), 2, "each event published once: {seen:?}");
    }

    /// `Some` once the outbox is empty.
    async fn relayed(&self) -> Option<()> {
        entries(&mut self.conn.clone(), &self.outbox).await.is_empty().then_some(())
    }
}

/// A write relayed to another master leaves the outbox only once a replica
/// of that master has it too, so a failover cannot lose it, and is counted
/// meanwhile (`sluice_relay_unreplicated`). Here the
/// target's master refuses its replica the replication commands and drops
/// its link, an event is published through the outbox, and the replica
/// then takes over without the write (`CLUSTER FAILOVER TAKEOVER`, as after
/// the master crashed; the old master becomes its replica and drops the
/// write too). The relay, which deleted the outbox entry as soon as the
/// master had the write, lost the event; now it keeps the entry until a
/// replica acknowledges it, and writes it again on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_relayed_to_a_master_that_then_fails_over_is_not_lost() {
    let cluster = Cluster::start();
    let mut r = Relaying::start(&cluster, "src").await;
    let (out, outbox, conn) = (r.out.clone(), r.outbox.clone(), r.conn.clone());
    let master = cluster.master_of(&out);
    let replica = tokio::task::block_in_place(|| cluster.cut_off_replica(master));
    r.publish(1).await;
    eventually(SOON, "the second event on the target's master", || r.published(2)).await;
    let held = |n: usize| format!("sluice_relay_unreplicated{{outbox=\"{outbox}\"}} {n}\n");
    eventually(SOON, "the write counted as held for a replica", || async {
        sluice::metrics::exposition(&[]).contains(&held(1)).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| {
        assert_eq!(cluster.cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]).trim(), "OK");
    });
    let promoted = || async { tokio::task::block_in_place(|| cluster.master_of(&out) == replica).then_some(()) };
    eventually(SOON, "the replica promoted", promoted).await;
    let relayed =
        eventually(Duration::from_secs(30), "the second event on the new master, and the outbox empty", || {
            let (mut c, out, outbox) = (conn.clone(), out.clone(), outbox.clone());
            async move {
                let out = entries(&mut c, &out).await;
                (out.len() >= 2 && entries(&mut c, &outbox).await.is_empty()).then_some(out)
            }
        })
        .await;
    r.host.stop().await;
    assert!(sluice::metrics::exposition(&[]).contains(&held(0)), "no write held once relayed");
    Relaying::each_once(&relayed);
}

/// A relay whose connection to a target's master is replaced, after its
/// writes landed there and before a replica had them, still waits for a
/// replica. A `WAIT` counts what the connection it comes on has done. Sent
/// apart from the script, the `WAIT` reached a connection redis-rs had
/// made since, one that had done nothing; it passed at once (a replica
/// that lags is still online), and the outbox entry was deleted, so that a
/// failover then would have lost the write. The script and its `WAIT` now
/// share a round trip on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_reconnects_before_a_replica_has_its_writes_still_waits_for_one() {
    let cluster = Cluster::start();
    let mut r = Relaying::start(&cluster, "again").await;
    let (out, outbox, mut conn) = (r.out.clone(), r.outbox.clone(), r.conn.clone());
    let master = cluster.master_of(&out);
    let replica = tokio::task::block_in_place(|| cluster.pause_replica(master));
    r.publish(1).await;
    until_entries(&conn, &out, 2).await;
    let held = format!("sluice_relay_unreplicated{{outbox=\"{outbox}\"}} 1\n");
    eventually(SOON, "the write held for a replica", || async {
        sluice::metrics::exposition(&[]).contains(&held).then_some(())
    })
    .await;

    // Every client connection to the target's master is dropped, the
    // relay's among them; its next rounds come on a new one.
    let waits = || {
        let stats = tokio::task::block_in_place(|| cluster.cli(master, &["INFO", "commandstats"]));
        let calls = stats.lines().find_map(|l| l.strip_prefix("cmdstat_wait:calls="));
        calls.map_or(0, |c| c.split(',').next().unwrap().parse::<u64>().unwrap())
    };
    tokio::task::block_in_place(|| cluster.cli(master, &["CLIENT", "KILL", "TYPE", "normal"]));
    let before = waits();
    let kept = eventually(SOON, "two waits on the new connection, or the outbox emptied", || {
        let (mut c, outbox) = (conn.clone(), outbox.clone());
        async move {
            let kept = entries(&mut c, &outbox).await.len();
            (kept == 0 || waits() >= before + 2).then_some(kept)
        }
    })
    .await;
    assert_eq!(kept, 1, "the write stays in the outbox while no replica has it");

    tokio::task::block_in_place(|| cluster.resume_replica(replica));
    eventually(SOON, "the outbox empty once the replica caught up", || r.relayed()).await;
    r.host.stop().await;
    let relayed = entries(&mut conn, &out).await;
    Relaying::each_once(&relayed);
}

/// A relay whose ACL user may not call `WAIT` (one made from the rule of a
/// version before the relay waited, as docs/operating.md says of an
/// upgrade) writes to the target, keeps the outbox entry, and warns with
/// Redis's refusal, which names the command; once the rule allows `WAIT`,
/// the entry goes and the write has landed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_user_may_not_wait_keeps_its_writes_and_says_why() {
    let cluster = Cluster::start();
    let outbox = sluice::stream::outbox("in");
    let out = (0..).map(|n| format!("out{n}")).find(|k| cluster.master_of(k) != cluster.master_of(&outbox)).unwrap();
    let every_node = |rule: &str| {
        let words: Vec<&str> = rule.split(' ').collect();
        for node in &cluster.nodes {
            assert_eq!(cluster.cli(node.port, &words).trim(), "OK", "{rule} on {}", node.port);
        }
    };
    every_node("ACL SETUSER relayer on >pw ~* &* +@all -wait");
    let mut conn = cluster.conn().await;
    let fields = [("kind", "xadd"), ("key", out.as_str()), ("a", "type"), ("a", "t"), ("a", "data"), ("a", "{}")];
    let _: String = redis::AsyncCommands::xadd(&mut conn, &outbox, "*", &fields).await.unwrap();
    let (log, _guard) = Captured::on_this_thread();
    let url = cluster.url().replace("redis://", "redis://relayer:pw@");
    let settings = sluice::config::RedisSettings { cluster: true, ..Default::default() };
    let host = sluice::stream::Redis::connect(&url, &settings).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = sluice::stream::Relay::new(outbox.clone(), "h".into(), host).run(stop.clone());
    let master = cluster.master_of(&out);
    // How many times the target's master refused the relayer `WAIT` (`ACL
    // LOG` counts a repeated refusal in its entry's `count`).
    let refused = || {
        let log = cluster.cli(master, &["ACL", "LOG"]);
        let lines: Vec<&str> = log.lines().collect();
        match (lines.first(), lines.get(1), lines.contains(&"wait")) {
            (Some(&"count"), Some(n), true) => n.parse().unwrap(),
            _ => 0,
        }
    };
    let allow = async {
        eventually(SOON, "WAIT refused twice at the target's master", || async {
            (tokio::task::block_in_place(refused) >= 2).then_some(())
        })
        .await;
        assert_eq!(entries(&mut conn, &out).await.len(), 1, "the write landed");
        assert_eq!(entries(&mut conn, &outbox).await.len(), 1, "the outbox entry kept");
        tokio::task::block_in_place(|| every_node("ACL SETUSER relayer +wait"));
        eventually(SOON, "the outbox entry gone once WAIT is allowed", || {
            let (mut c, outbox) = (conn.clone(), outbox.clone());
            async move { entries(&mut c, &outbox).await.is_empty().then_some(()) }
        })
        .await;
        stop.cancel();
    };
    tokio::join!(relay, allow);
    assert_eq!(entries(&mut conn, &out).await.len(), 1, "the write landed once");
    let text = log.text();
    let failed: Vec<&str> =
        text.lines().filter(|l| l.contains("relaying writes to other cluster slots failed")).collect();
    assert_eq!(failed.len(), 1, "said once: {text}");
    assert!(failed[0].contains("WARN") && failed[0].contains("no permissions to run the 'wait' command"), "{text}");
    assert!(text.contains("relaying writes to other cluster slots again"), "{text}");
}

/// A redrive into an inbox on another master deletes the dead letter only
/// once a replica of that master has the copy. With the replica cut off,
/// `sluice dlq redrive` fails, saying so, and keeps the dead letter (the
/// copy is in the inbox); once the replica is back, the same redrive
/// deletes it without adding a second copy. Before, the dead letter was
/// deleted at once, and a failover would have lost the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_to_another_master_keeps_the_dead_letter_until_a_replica_has_the_copy() {
    let cluster = Cluster::start();
    let inbox_master = cluster.master_of("in");
    let dead = (0..).map(|n| format!("dead{n}")).find(|k| cluster.master_of(k) != inbox_master).unwrap();
    let handlers = format!("[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\ndead_letter = \"{dead}\"\n");
    let fx = fixture(&cluster, "", &handlers);
    let mut conn = cluster.conn().await;
    let host = fx.start();
    send(&mut conn, "in", "t", json!({"action": "reject"})).await;
    until_entries(&conn, &dead, 1).await;
    host.stop().await;
    let inbox = fx.config().handler("h").unwrap().inbox.clone();
    assert_eq!(cluster.slot_of(&inbox), cluster.slot_of("in"), "the inbox is in the stream's slot");

    let replica = tokio::task::block_in_place(|| cluster.cut_off_replica(inbox_master));
    let out = sluice(&["dlq", "redrive", "--handler", "h"], &fx.config_path);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the redrive must fail: {said}");
    assert!(said.contains("no replica of its master acknowledged the write"), "{said}");
    assert_eq!(entries(&mut conn, &dead).await.len(), 1, "the dead letter kept");
    assert_eq!(entries(&mut conn, &inbox).await.len(), 1, "the copy in the inbox");

    tokio::task::block_in_place(|| cluster.let_replica_back(inbox_master, replica));
    // As its error says, the redrive is run again: until the master has
    // the replica online and acknowledging within the second it waits (a
    // moment after the replica reports its link up, longer on a busy
    // machine), it may fail the same way, and no run adds a second copy.
    eventually(SOON, "the redrive run again succeeds", || async {
        let out = tokio::task::block_in_place(|| sluice(&["dlq", "redrive", "--handler", "h"], &fx.config_path));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || said.contains("no replica of its master acknowledged"), "{said}");
        out.status.success().then_some(())
    })
    .await;
    assert!(entries(&mut conn, &dead).await.is_empty(), "the dead letter moved");
    assert_eq!(entries(&mut conn, &inbox).await.len(), 1, "one copy, not two");
}
