//! A handler's publishes are written only if it succeeds, in the same
//! transaction as the ack, with source, correlation and causation set.

use crate::support::*;
use serde_json::json;

const HANDLER: &str = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 2\nbackoff_ms = 10\n";

/// A read entry `id` of type `t`, as a commit names it.
fn typed_entry(id: &str) -> sluice::event::Entry {
    sluice::event::Entry { id: id.to_owned(), fields: vec![("type".into(), b"t".to_vec())] }
}

/// What a handler that published one event to `stream` leaves to commit.
fn publishes_to(stream: &str) -> sluice::wasm::Effects {
    let publish = sluice::wasm::Publish { stream: stream.into(), event_type: "x".into(), data: b"{}".to_vec() };
    sluice::wasm::Effects { publishes: vec![publish], ..Default::default() }
}

/// What a handler that set one key-value `key` leaves to commit: a write,
/// but no publish.
fn sets(key: &str) -> sluice::wasm::Effects {
    let set = sluice::wasm::KvWrite::Set { key: key.into(), value: b"v".to_vec(), ttl_ms: None };
    sluice::wasm::Effects { kv: vec![set], ..Default::default() }
}

/// The commit of handler `h` for entry `id` of `in`, with `effects`.
fn commit_in(id: &str, effects: sluice::wasm::Effects) -> sluice::stream::Commit {
    sluice::stream::Commit::ack("in", &typed_entry(id), "h", "sluice:kv:h:", effects, &Default::default())
}

/// The ids of `n` new entries of `in`, read through group `g` by consumer
/// `c`, except the second, which consumer `other` took over, and the third,
/// already acknowledged.
async fn pending_with_c(conn: &mut redis::aio::MultiplexedConnection, n: usize) -> Vec<String> {
    sluice::stream::ensure_group(conn, "in", "g").await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(send(conn, "in", "t", json!({})).await);
    }
    read_pending(conn, "in", "g").await;
    let _: redis::Value =
        redis::cmd("XCLAIM").arg("in").arg("g").arg("other").arg(0).arg(&ids[1]).query_async(conn).await.unwrap();
    let _: usize = redis::cmd("XACK").arg("in").arg("g").arg(&ids[2]).query_async(conn).await.unwrap();
    ids
}

fn publishing(then: &str, stream: &str) -> serde_json::Value {
    json!({"action": "publish", "then": then, "publish": [{"stream": stream, "type": "done", "data": {"n": 1}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_writes_publishes_with_lineage() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = publishing("ok", "out").to_string();
    let first = xadd(&mut conn, "in", &[("type", "t"), ("data", &data), ("correlation_id", "corr-7")]).await;
    let second = send(&mut conn, "in", "t", publishing("ok", "out")).await;
    let out = until_entries(&conn, "out", 2).await;
    assert_eq!(out.len(), 2);
    host.stop().await;
    let by_cause = |id: &str| out.iter().find(|e| field(e, "causation_id") == id).expect("publish for entry").clone();
    let a = by_cause(&first);
    assert_eq!(field(&a, "type"), "done");
    assert_eq!(field(&a, "data"), r#"{"n":1}"#);
    assert_eq!(field(&a, "source"), "h");
    assert_eq!(field(&a, "correlation_id"), "corr-7", "copied from the consumed event");
    let b = by_cause(&second);
    assert_eq!(field(&b, "correlation_id"), second, "the consumed entry id when it had none");
    assert_eq!(pending(&mut conn, "in", "h").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handlers_publish_nothing() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", publishing("reject", "out")).await;
    send(&mut conn, "in", "t", publishing("trap", "out")).await;
    until_entries(&conn, "in:dlq", 2).await;
    host.stop().await;
    assert!(entries(&mut conn, "out").await.is_empty(), "a failed delivery must publish nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_an_ungranted_stream_is_refused() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", publishing("ok", "secret")).await;
    let dl = until_entries(&conn, "in:dlq", 1).await.remove(0);
    host.stop().await;
    let reason = field(&dl, "sluice.error");
    assert!(reason.contains("publish refused") && reason.contains("\"secret\" is not granted"), "{reason}");
    assert!(entries(&mut conn, "secret").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_refuses_is_a_failed_attempt_not_a_lost_write() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let mut conn = redis.conn().await;
    // Someone put a plain string where the handler's output stream should be.
    let () = redis::cmd("SET").arg("out").arg("not a stream").query_async(&mut conn).await.unwrap();
    let host = fx.start();
    send(&mut conn, "in", "t", publishing("ok", "out")).await;
    let dl = until_entries(&conn, "in:dlq", 1).await;
    host.stop().await;
    let reason = field(&dl[0], "sluice.error");
    assert_eq!(
        reason,
        "cannot commit the handler's output: out holds a string, not a stream (gave up after 2 attempts)"
    );
    let kept: String = redis::cmd("GET").arg("out").query_async(&mut conn).await.unwrap();
    assert_eq!(kept, "not a stream", "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_commit_is_all_or_nothing_per_delivery() {
    // One script finishes several deliveries: a refused one (its target is
    // not a stream) writes nothing and stays pending, while the others in the
    // same batch commit, and one already committed writes nothing twice.
    use sluice::stream::{Committed, commit_batch};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "in", "g").await.unwrap();
    let _: () = redis::cmd("SET").arg("not-a-stream").arg("x").query_async(&mut conn).await.unwrap();
    let ids = [
        send(&mut conn, "in", "t", json!({})).await,
        send(&mut conn, "in", "t", json!({})).await,
        send(&mut conn, "in", "t", json!({})).await,
    ];
    read_pending(&mut conn, "in", "g").await;
    let commits = [
        commit_in(&ids[0], publishes_to("out")),
        commit_in(&ids[1], publishes_to("not-a-stream")),
        commit_in(&ids[2], publishes_to("out")),
        commit_in(&ids[0], publishes_to("out")), // a repeat of the first
    ];
    let results = commit_batch(&mut conn, "g", "c", &commits).await.unwrap();
    assert_eq!((&results[0], &results[2]), (&Committed::Done, &Committed::Done), "{results:?}");
    assert_eq!(results[3], Committed::AlreadyFinished, "the repeat writes nothing: {results:?}");
    assert!(matches!(&results[1], Committed::Refused(why) if why.contains("not-a-stream")), "{results:?}");
    let out = entries(&mut conn, "out").await;
    let causes: Vec<String> = out.iter().map(|e| field(e, "causation_id")).collect();
    assert_eq!(causes, [ids[0].clone(), ids[2].clone()], "each committed delivery published once");
    let still: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    assert_eq!(
        still.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        [ids[1].clone()],
        "only the refused one is pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_one_stream_share_a_check_and_an_ack_with_each_result_its_own() {
    // A run of the script's deliveries of one stream is finished with one
    // XPENDING and one XACK, and a stream's type is checked once, yet each
    // gets the result it would get on its own: done, already finished
    // (acknowledged before, or a repeat in the same batch), taken over by
    // another consumer, or refused; entries in flight between them stay
    // pending, and only the deliveries that are done write. (Deliveries
    // that write nothing are plain XACKs: see
    // a_delivery_that_writes_nothing_is_a_plain_xack.)
    use sluice::stream::{Commit, Committed, commit_batch};
    use sluice::wasm::{Effects, KvWrite};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let ids = pending_with_c(&mut conn, 30).await;
    let set = |i: usize| commit_in(&ids[i], sets("set"));
    let writes = |i: usize| commit_in(&ids[i], publishes_to("out"));
    let count = |stats: &str, command: &str| command_stat(stats, command, "calls");
    let reset = async |conn: &mut redis::aio::MultiplexedConnection| {
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await.unwrap();
    };
    let causes = async |conn: &mut redis::aio::MultiplexedConnection| -> Vec<usize> {
        let out = entries(conn, "out").await;
        out.iter().map(|e| ids.iter().position(|id| *id == field(e, "causation_id")).unwrap()).collect()
    };

    // Out of order, with a repeat: ids 3 to 9 are only in flight.
    let commits = [writes(11), writes(0), writes(1), set(2), set(10), writes(0)];
    let results = commit_batch(&mut conn, "g", "c", &commits).await.unwrap();
    let expected = [
        Committed::Done,
        Committed::Done,
        Committed::TakenOver("other".into()),
        Committed::AlreadyFinished,
        Committed::Done,
        Committed::AlreadyFinished,
    ];
    assert_eq!(results, expected);
    assert_eq!(causes(&mut conn).await, [11, 0], "only the deliveries that are done wrote, once");

    // Ten in a run, half of them publishing, all this consumer's and
    // nothing else in their range: one XPENDING, one XACK and one TYPE in
    // all.
    reset(&mut conn).await;
    let commits: Vec<Commit> = [16, 13, 12, 19, 14, 17, 15, 18, 20, 21]
        .into_iter()
        .map(|i| if i % 2 == 0 { writes(i) } else { set(i) })
        .collect();
    let results = commit_batch(&mut conn, "g", "c", &commits).await.unwrap();
    assert_eq!(results, vec![Committed::Done; 10]);
    let after = command_stats(&mut conn).await;
    let calls = ["xpending", "xack", "type"].map(|c| count(&after, c));
    assert_eq!(calls, [1, 1, 1], "{after}");
    assert_eq!(causes(&mut conn).await, [11, 0, 16, 12, 14, 18, 20]);

    // More of this consumer's entries in the range than the run lists at
    // once: the one beyond is asked about alone, and still finished.
    let results = commit_batch(&mut conn, "g", "c", &[set(22), set(29)]).await.unwrap();
    assert_eq!(results, [Committed::Done, Committed::Done]);

    // A run ends at a delivery of another stream: three runs, so three
    // XPENDINGs and three XACKs.
    sluice::stream::ensure_group(&mut conn, "in2", "g").await.unwrap();
    let elsewhere = send(&mut conn, "in2", "t", json!({})).await;
    read_pending(&mut conn, "in2", "g").await;
    let in2 = Commit::ack("in2", &typed_entry(&elsewhere), "h", "sluice:kv:h:", sets("in2"), &Default::default());
    reset(&mut conn).await;
    let results = commit_batch(&mut conn, "g", "c", &[set(23), in2, set(24), writes(25)]).await.unwrap();
    assert_eq!(results, vec![Committed::Done; 4]);
    let after = command_stats(&mut conn).await;
    assert_eq!((count(&after, "xpending"), count(&after, "xack")), (3, 3), "{after}");
    let left: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in2").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    assert!(left.is_empty(), "the other stream's entry was acknowledged on its own stream: {left:?}");
    assert_eq!(causes(&mut conn).await, [11, 0, 16, 12, 14, 18, 20, 25], "the delivery that publishes did once");

    // A key's type checked once a call is checked again after a write that
    // is not an XADD: a stream made a string by a key-value write earlier in
    // the same run refuses the next publish to it (else its XADD would fail
    // the whole call with WRONGTYPE), and once deleted takes one again.
    let clash = "sluice:kv:h:clash";
    let set = KvWrite::Set { key: "clash".into(), value: b"v".to_vec(), ttl_ms: None };
    let delete = KvWrite::Delete { key: "clash".into() };
    let commits = [
        commit_in(&ids[26], publishes_to(clash)),
        commit_in(&ids[27], Effects { kv: vec![set], ..Default::default() }),
        commit_in(&ids[28], publishes_to(clash)),
        commit_in(&ids[3], Effects { kv: vec![delete], ..Default::default() }),
        commit_in(&ids[4], publishes_to(clash)),
    ];
    let results = commit_batch(&mut conn, "g", "c", &commits).await.unwrap();
    assert_eq!(results[..2], [Committed::Done, Committed::Done]);
    assert!(matches!(&results[2], Committed::Refused(why) if why.contains("holds a string")), "{results:?}");
    assert_eq!(results[3..], [Committed::Done, Committed::Done], "{results:?}");
    assert_eq!(entries(&mut conn, clash).await.len(), 1, "a stream again, with the last publish in it");

    let still: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(100).query_async(&mut conn).await.unwrap();
    let pending: Vec<(usize, &str)> =
        still.iter().map(|p| (ids.iter().position(|id| *id == p.0).unwrap(), p.1.as_str())).collect();
    let mut expected: Vec<(usize, &str)> = vec![(1, "other")];
    expected.extend((5..10).chain([28]).map(|i| (i, "c")));
    assert_eq!(pending, expected, "only the entries committed were acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_all_the_same_acknowledges_what_was_written_before_it() {
    // A write the script's checks do not foresee fails part way through a
    // run (here an XADD to a stream whose last possible id is taken): the
    // deliveries written before it are acknowledged, as they would be on
    // their own, and it and those after it write nothing and stay pending.
    use sluice::stream::commit_batch;
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    sluice::stream::ensure_group(&mut conn, "in", "g").await.unwrap();
    let last = "18446744073709551615-18446744073709551615";
    let _: String = redis::cmd("XADD").arg("full").arg(last).arg("f").arg("v").query_async(&mut conn).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(send(&mut conn, "in", "t", json!({})).await);
    }
    read_pending(&mut conn, "in", "g").await;
    let commits = [
        commit_in(&ids[0], publishes_to("out")),
        commit_in(&ids[1], sets("k")),
        commit_in(&ids[2], publishes_to("full")),
        commit_in(&ids[3], publishes_to("out")),
        commit_in(&ids[4], sets("k")),
    ];
    let error = commit_batch(&mut conn, "g", "c", &commits).await.unwrap_err();
    assert!(error.to_string().contains("exhausted the last possible ID"), "{error}");
    let out = entries(&mut conn, "out").await;
    assert_eq!(out.iter().map(|e| field(e, "causation_id")).collect::<Vec<_>>(), [ids[0].clone()]);
    let still: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    assert_eq!(still.into_iter().map(|p| p.0).collect::<Vec<_>>(), ids[2..], "only those before it were acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_writes_nothing_is_a_plain_xack() {
    // A commit that only acknowledges its entry is a plain XACK sent with
    // the batch, not part of its script: done if it acknowledged the entry
    // (even one another consumer took over: its handler succeeded, and
    // nothing is written), already finished if the entry was no longer
    // pending. Each has its own result, in the batch's order, whatever the
    // script or another XACK answers.
    use sluice::stream::{Committed, ReadAfter, commit_and_read, commit_batch};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let ids = pending_with_c(&mut conn, 8).await;
    let quiet = |i: usize| commit_in(&ids[i], Default::default());
    let calls = async |conn: &mut redis::aio::MultiplexedConnection, command: &str| -> u64 {
        command_stat(&command_stats(conn).await, command, "calls")
    };

    // Only XACKs: no script runs.
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    let results = commit_batch(&mut conn, "g", "c", &[quiet(0), quiet(1), quiet(2), quiet(0)]).await.unwrap();
    let expected = [Committed::Done, Committed::Done, Committed::AlreadyFinished, Committed::AlreadyFinished];
    assert_eq!(results, expected);
    assert_eq!((calls(&mut conn, "evalsha").await, calls(&mut conn, "xack").await), (0, 4));

    // With a script that fails (a write Redis refuses as it runs), and an
    // XACK Redis refuses (its stream is a string): each has its own result.
    let last = "18446744073709551615-18446744073709551615";
    let _: String = redis::cmd("XADD").arg("full").arg(last).arg("f").arg("v").query_async(&mut conn).await.unwrap();
    let () = redis::cmd("SET").arg("a-string").arg("x").query_async(&mut conn).await.unwrap();
    let not_a_stream = sluice::stream::Commit::ack(
        "a-string",
        &typed_entry(&ids[6]),
        "h",
        "p:",
        Default::default(),
        &Default::default(),
    );
    let commits = [quiet(3), commit_in(&ids[4], publishes_to("full")), not_a_stream, quiet(5)];
    let batch = commit_and_read(&mut conn, "g", "c", &commits, ReadAfter::NOTHING).await.unwrap();
    let mut results = batch.committed.into_iter();
    assert_eq!(results.next().unwrap().unwrap(), Committed::Done);
    let failed = results.next().unwrap().unwrap_err();
    assert!(failed.to_string().contains("exhausted the last possible ID"), "{failed}");
    let refused = results.next().unwrap().unwrap_err();
    assert!(refused.to_string().contains("WRONGTYPE") && refused.to_string().contains("a-string"), "{refused}");
    assert_eq!(results.next().unwrap().unwrap(), Committed::Done);

    let still: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    let still: Vec<usize> = still.iter().map(|p| ids.iter().position(|id| *id == p.0).unwrap()).collect();
    assert_eq!(still, [4, 6, 7], "the taken-over entry was acknowledged too; the failed ones stay pending");
    assert!(entries(&mut conn, "full").await.len() == 1, "the failed script wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_an_entry_stands_in_its_group_is_read_from_redis() {
    // After a commit's rare outcomes (its entry not pending, a missing
    // group) the host asks Redis where the entry stands: its group missing,
    // not delivered (the group set back or made again), pending, or
    // acknowledged. A commit through a missing group: the script fails
    // with NOGROUP, a plain XACK acknowledges nothing.
    use sluice::stream::{Committed, EntryState, ReadAfter, commit_and_read, entry_state};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let ids = pending_with_c(&mut conn, 4).await;
    let state = async |conn: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str| {
        entry_state(conn, stream, "g", id).await.unwrap()
    };
    assert_eq!(state(&mut conn, "in", &ids[2]).await, EntryState::Acknowledged);
    assert_eq!(state(&mut conn, "in", &ids[3]).await, EntryState::Pending);

    let () = redis::cmd("XGROUP").arg("SETID").arg("in").arg("g").arg(&ids[1]).query_async(&mut conn).await.unwrap();
    let _: usize = redis::cmd("XACK").arg("in").arg("g").arg(&ids[1]).query_async(&mut conn).await.unwrap();
    assert_eq!(state(&mut conn, "in", &ids[1]).await, EntryState::Acknowledged, "the group's last delivered entry");
    assert_eq!(state(&mut conn, "in", &ids[2]).await, EntryState::NotDelivered, "after the group's last delivered");

    let _: usize = redis::cmd("XGROUP").arg("DESTROY").arg("in").arg("g").query_async(&mut conn).await.unwrap();
    assert_eq!(state(&mut conn, "in", &ids[3]).await, EntryState::GroupMissing);
    assert_eq!(state(&mut conn, "nowhere", &ids[3]).await, EntryState::GroupMissing, "no such stream");

    let commits = [commit_in(&ids[3], Default::default()), commit_in(&ids[0], sets("k"))];
    let batch = commit_and_read(&mut conn, "g", "c", &commits, ReadAfter::NOTHING).await.unwrap();
    let mut results = batch.committed.into_iter();
    assert_eq!(results.next().unwrap().unwrap(), Committed::AlreadyFinished, "XACK through no group");
    let failed = results.next().unwrap().unwrap_err();
    assert!(failed.is_no_group(), "the script's error keeps its code: {failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_new_entries_with_its_script() {
    // A batch may also read new entries for its consumer, sent with its
    // script: up to the count given of each stream given; they come back as
    // first deliveries, pending with the consumer, whatever the script
    // answers, its failure included. If a stream lacks the group nothing is
    // read, and the commit stands; a script Redis lost is loaded, and the
    // read stands.
    use sluice::stream::{CommitAndRead, Committed, ReadAfter, commit_and_read};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    for s in ["in", "in2"] {
        sluice::stream::ensure_group(&mut conn, s, "g").await.unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(send(&mut conn, "in", "t", json!({})).await);
    }
    read_pending(&mut conn, "in", "g").await;
    let mut new = Vec::new();
    for _ in 0..6 {
        new.push(send(&mut conn, "in", "t", json!({})).await);
    }
    let other = [send(&mut conn, "in2", "t", json!({})).await, send(&mut conn, "in2", "t", json!({})).await];
    let quiet = |i: usize| commit_in(&ids[i], Default::default());
    let streams = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let read_ids = |found: &[sluice::stream::Delivery]| {
        found.iter().map(|d| (d.stream.clone(), d.entry.id.clone(), d.attempt)).collect::<Vec<_>>()
    };
    let expect = |s: &str, ids: &[String]| ids.iter().map(|id| (s.to_string(), id.clone(), 1)).collect::<Vec<_>>();

    // Two done and a repeat: up to two of each stream read.
    let both = streams(&["in2", "in"]);
    let commits = [quiet(0), quiet(1), quiet(0)];
    let CommitAndRead { committed, found, .. } =
        commit_and_read(&mut conn, "g", "c", &commits, ReadAfter { streams: &both, count: 2 }).await.unwrap();
    let committed: Vec<Committed> = committed.into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(committed, [Committed::Done, Committed::Done, Committed::AlreadyFinished]);
    assert_eq!(read_ids(&found), [expect("in2", &other), expect("in", &new[..2])].concat());
    let pending_with_c: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in2").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    assert_eq!(
        pending_with_c.iter().map(|p| (p.0.as_str(), p.1.as_str())).collect::<Vec<_>>(),
        [(other[0].as_str(), "c"), (other[1].as_str(), "c")]
    );

    // The count caps it.
    let one = streams(&["in"]);
    let read_one = ReadAfter { streams: &one, count: 1 };
    let batch = commit_and_read(&mut conn, "g", "c", &[quiet(2)], read_one).await.unwrap();
    assert_eq!(read_ids(&batch.found), expect("in", &new[2..3]));

    // A stream without the group: nothing read; the commit stands.
    let gone = streams(&["gone", "in"]);
    let batch =
        commit_and_read(&mut conn, "g", "c", &[quiet(3)], ReadAfter { streams: &gone, count: 5 }).await.unwrap();
    assert_eq!(
        (batch.committed.into_iter().collect::<Result<Vec<_>, _>>().unwrap(), batch.found.len()),
        (vec![Committed::Done], 0)
    );

    // A script that fails (a write Redis refuses as it runs: the last
    // possible id of `full` is taken): the read stands.
    let last = "18446744073709551615-18446744073709551615";
    let _: String = redis::cmd("XADD").arg("full").arg(last).arg("f").arg("v").query_async(&mut conn).await.unwrap();
    let failing = commit_in(&ids[4], publishes_to("full"));
    let batch = commit_and_read(&mut conn, "g", "c", &[failing], read_one).await.unwrap();
    let error = batch.committed.into_iter().next().unwrap().unwrap_err();
    assert!(error.to_string().contains("exhausted the last possible ID"), "{error}");
    assert_eq!(read_ids(&batch.found), expect("in", &new[3..4]));

    // Redis lost its scripts: the commit runs once the script is loaded
    // again, and the read, which ran all the same, is not lost; nor are the
    // plain XACKs in the same round trip, each result in its place.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let commits = [quiet(6), commit_in(&ids[5], sets("k")), quiet(7), quiet(6)];
    let batch = commit_and_read(&mut conn, "g", "c", &commits, read_one).await.unwrap();
    let committed: Vec<Committed> = batch.committed.into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(committed, [Committed::Done, Committed::Done, Committed::Done, Committed::AlreadyFinished]);
    assert_eq!(read_ids(&batch.found), expect("in", &new[4..5]));
    let still: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    let still: Vec<String> = still.into_iter().map(|p| p.0).collect();
    assert_eq!(still, [&ids[4..5], &new[..5]].concat(), "the failed commit's entry and those read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_continues_the_trace_in_what_the_handler_publishes() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", HANDLER);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = publishing("ok", "out").to_string();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    xadd(&mut conn, "in", &[("type", "t"), ("data", &data), ("traceparent", parent)]).await;
    let out = until_entries(&conn, "out", 1).await;
    host.stop().await;
    let child = field(&out[0], "traceparent");
    assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child.ends_with("-01"), "{child}");
    assert_ne!(child, parent, "a new parent id");
}
