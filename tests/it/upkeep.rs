//! Upkeep for months of running: a bounded stream is trimmed to its bound
//! without removing what a slow group still needs, entries another program
//! removed before a group read them are told once, and consumers left
//! behind by killed hosts are forgotten once their entries are taken over.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// The value of the series `series` (name and labels, as exposed) in the
/// in-process metrics, if any.
fn metric(series: &str) -> Option<f64> {
    let text = sluice::metrics::exposition(&[]);
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// Waits until a trim of `stream` was held back by `group` (the metric says
/// so), and returns the metric's series, to read again.
async fn until_held_back(stream: &str, group: &str) -> String {
    let held = format!("sluice_stream_over_bound{{stream=\"{stream}\",group=\"{group}\"}}");
    let what = format!("a trim of {stream} held back by group {group}");
    eventually(Duration::from_secs(30), &what, || async { (metric(&held) == Some(1.0)).then_some(()) }).await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_stream_keeps_what_a_slow_group_needs_then_stays_near_its_bound() {
    let redis = RedisServer::start();
    let handlers = "[streams.\"in\"]\nmax_len = 1000\n\n\
        [handlers.fast]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nconcurrency = 16\n\
        [handlers.slow]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nconcurrency = 1\n";
    let fx = Fixture::new(&redis, "", handlers);
    let mut conn = redis.conn().await;
    let total = 20_000;
    let data = json!({"action": "ok"}).to_string();
    for chunk in 0..total / 1000 {
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("data").arg(&data).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
    }
    let host = fx.start();
    // While the slow group lags, the stream stays over its bound, and says why.
    let held = until_held_back("in", "slow").await;
    let first = first_id(&mut conn).await;
    let needed = slow_needs_from(&mut conn).await;
    assert!(
        first <= needed,
        "nothing the slow group has yet to handle was removed: the stream starts at {first:?}, the group needs {needed:?} on"
    );
    let handled = r#"sluice_events_total{handler="slow",outcome="ok"}"#;
    eventually(Duration::from_secs(120), "the slow handler caught up", || async {
        (metric(handled) == Some(total as f64)).then_some(())
    })
    .await;
    // Caught up: the next trims bring it to its bound, and keep it there.
    let at_bound = eventually(Duration::from_secs(20), "XLEN back at the bound", || {
        let mut c = conn.clone();
        async move {
            let len: u64 = redis::cmd("XLEN").arg("in").query_async(&mut c).await.unwrap();
            (len <= 1000).then_some(len)
        }
    })
    .await;
    assert_eq!(at_bound, 1000, "trimmed to the bound, not below it");
    assert_eq!(metric(&held), Some(0.0), "no longer held back");
    host.stop().await;
    assert_eq!(metric(handled), Some(total as f64), "the slow handler saw every event, once");
    assert_eq!(pending(&mut conn, "in", "slow").await, 0);
}

/// A group set back (`XGROUP SETID`, as a failover to a replica behind its
/// primary also does) reads again from where it was set, even while it still
/// has entries pending further on: the trim must keep everything from there,
/// not only from its oldest pending entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_stream_keeps_what_a_group_set_back_will_read_again() {
    let redis = RedisServer::start();
    let handlers = "[streams.\"setback\"]\nmax_len = 10\n\n\
        [handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"setback\"]\n";
    let fx = Fixture::new(&redis, "", handlers);
    let mut conn = redis.conn().await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(send(&mut conn, "setback", "t", json!({"action": "ok"})).await);
    }
    // Another program's group read all 100, finished the first 95, and was
    // then set back to the 10th: it reads entries 11 to 100 again.
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg("setback").arg("audit").arg("0").query_async(&mut conn).await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("c")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg("setback")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XACK").arg("setback").arg("audit").arg(&ids[..95]).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg("setback")
        .arg("audit")
        .arg(&ids[9])
        .query_async(&mut conn)
        .await
        .unwrap();
    let host = fx.start();
    until_finished(&conn, "setback", "h", 100).await;
    until_held_back("setback", "audit").await;
    host.stop().await;
    let left: Vec<String> = entries(&mut conn, "setback").await.into_iter().map(|e| e.id).collect();
    assert_eq!(left.first(), Some(&ids[10]), "the stream still starts where the group reads again");
    assert_eq!(left.len(), 90, "entries 11 to 100 kept");
}

/// `max_age_ms` cuts entries older than Redis's clock says, but never one a
/// group has yet to read: here another program's group stopped after an id
/// with the largest sequence number (the entry after it is the next
/// millisecond's first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_bound_cuts_old_entries_a_group_is_done_with() {
    let redis = RedisServer::start();
    let handlers = "[streams.\"aged\"]\nmax_age_ms = 600000\n\n\
        [handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"aged\"]\n";
    let fx = Fixture::new(&redis, "", handlers);
    let mut conn = redis.conn().await;
    let data = json!({"action": "ok"}).to_string();
    let last_read = "1000-18446744073709551615";
    for id in ["1000-1", last_read, "2000-1"] {
        let _: String = redis::cmd("XADD")
            .arg("aged")
            .arg(id)
            .arg("type")
            .arg("t")
            .arg("data")
            .arg(&data)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut recent = Vec::new();
    for _ in 0..3 {
        recent.push(send(&mut conn, "aged", "t", json!({"action": "ok"})).await);
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("aged")
        .arg("audit")
        .arg(last_read)
        .query_async(&mut conn)
        .await
        .unwrap();
    let host = fx.start();
    until_held_back("aged", "audit").await;
    host.stop().await;
    let left: Vec<String> = entries(&mut conn, "aged").await.into_iter().map(|e| e.id).collect();
    let mut expected = vec!["2000-1".to_owned()];
    expected.extend(recent);
    assert_eq!(left, expected, "what the group has read and is too old went; what it has yet to read stayed");
}

/// Dead letters are events no handler finished: a glob such as `"*"` bounds
/// a handler's streams but not its dead-letter streams, which only a table
/// naming them (or a glob ending in `:dlq`) bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_bound_does_not_trim_dead_letters() {
    let redis = RedisServer::start();
    let handlers = "[streams.\"*\"]\nmax_len = 2\n\n\
        [handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"globbed\", \"zz\"]\n";
    let fx = Fixture::new(&redis, "", handlers);
    let mut conn = redis.conn().await;
    for _ in 0..5 {
        send(&mut conn, "globbed", "t", json!({"action": "reject"})).await;
        send(&mut conn, "zz", "t", json!({"action": "ok"})).await;
    }
    let host = fx.start();
    until_entries(&conn, "globbed:dlq", 5).await;
    // Streams are trimmed in name order, "globbed:dlq" before "zz": once "zz"
    // is at its bound (the group finished it), a round has passed over the
    // dead letters too.
    eventually(Duration::from_secs(30), "zz trimmed to its bound", || {
        let mut c = conn.clone();
        async move {
            let len: u64 = redis::cmd("XLEN").arg("zz").query_async(&mut c).await.unwrap();
            (len <= 2).then_some(())
        }
    })
    .await;
    host.stop().await;
    let len: u64 = redis::cmd("XLEN").arg("globbed").query_async(&mut conn).await.unwrap();
    assert_eq!(len, 2, "the glob bounds the handler's stream");
    assert_eq!(entries(&mut conn, "globbed:dlq").await.len(), 5, "every dead letter kept");
}

/// Adds entries with the ids `ms-1` for each `ms` in `ids` to `stream`.
async fn add_numbered(conn: &mut redis::aio::MultiplexedConnection, stream: &str, ids: std::ops::RangeInclusive<u64>) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(10_000) {
        let mut pipe = redis::pipe();
        for ms in chunk {
            pipe.cmd("XADD").arg(stream).arg(format!("{ms}-1")).arg("n").arg(ms).ignore();
        }
        let _: () = pipe.query_async(conn).await.unwrap();
    }
}

/// Runs `work` and returns what it returned with how many entries each
/// script Redis ran meanwhile asked for, at most: the sum of the `COUNT`s of
/// its `XRANGE`s, as `MONITOR` shows them.
async fn entries_scripts_asked_for<T>(redis: &RedisServer, work: impl std::future::Future<Output = T>) -> (T, u64) {
    use futures::StreamExt;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut lines = client.get_async_monitor().await.unwrap().into_on_message::<String>();
    let out = work.await;
    let marker = "entries-scripts-asked-for: done";
    let _: String = redis::cmd("ECHO").arg(marker).query_async(&mut redis.conn().await).await.unwrap();
    let (mut asked, mut most) = (0, 0);
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next())
            .await
            .expect("MONITOR showed the marker")
            .expect("MONITOR still open");
        if line.contains(marker) {
            return (out, most.max(asked));
        }
        if line.contains("\"EVALSHA\"") || line.contains("\"EVAL\"") {
            most = most.max(asked);
            asked = 0;
        }
        if line.contains(" lua] \"XRANGE\"") {
            let words: Vec<&str> = line.split(' ').collect();
            let count = words.iter().position(|w| *w == "\"COUNT\"").expect("every XRANGE of a script has a COUNT");
            asked += words[count + 1].trim_matches('"').parse::<u64>().unwrap();
        }
    }
}

/// What a trim of `stream` to `max_len` did, and how many entries one call
/// of its script asked Redis for, at most.
async fn trim_to(redis: &RedisServer, stream: &str, max_len: u64) -> (sluice::stream::retention::Trimmed, u64) {
    let bound = sluice::stream::retention::Retention { max_len: Some(max_len), max_age: None };
    let mut conn = redis.conn().await;
    let (trimmed, asked) =
        entries_scripts_asked_for(redis, sluice::stream::retention::trim(&mut conn, stream, &bound)).await;
    (trimmed.unwrap(), asked)
}

/// The first id of `stream`.
async fn first_of(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> String {
    let first: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await.unwrap();
    first[0].0.clone()
}

/// The trim's check that a `max_len` cut removes nothing a group needs reads
/// few entries, whatever the stream's length. It once read every entry past
/// the floor (up to `max_len` of them) into Lua: with a group 600 000 entries
/// behind on a stream bounded at a million, that blocked Redis for 1.9 s and
/// took 188 MB, every 5 seconds while the group lagged. Here a group is 60 000
/// entries behind on a stream of 100 100 bounded at 100 000; the trim must cut
/// the 100 entries over the bound and ask for no more than a few thousand.
/// The other cases check that the cut still never passes the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_reads_few_entries_whatever_the_length_of_the_stream() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    // Reads `count` new entries for group g; with `noack`, none stay pending.
    let read = |stream: &'static str, count: u64, noack: bool| {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(count);
        if noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        cmd
    };
    let group = |stream: &'static str| redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("g").arg("0").clone();

    // A group far behind, but not so far that the bound cannot be met.
    add_numbered(&mut conn, "long", 1..=100_100).await;
    let _: () = group("long").query_async(&mut conn).await.unwrap();
    let _: redis::Value = read("long", 40_100, true).query_async(&mut conn).await.unwrap();
    let (trimmed, asked) = trim_to(&redis, "long", 100_000).await;
    assert_eq!((trimmed.removed, trimmed.length, trimmed.held_back_by), (100, 100_000, None));
    assert_eq!(first_of(&mut conn, "long").await, "101-1");
    assert!(asked <= 5_000, "the trim asked for {asked} entries to cut 100 from a stream of 100 100");

    // Further behind than the bound allows: cut at the floor, held there.
    let (trimmed, asked) = trim_to(&redis, "long", 50_000).await;
    assert_eq!((trimmed.removed, trimmed.length), (40_000, 60_000));
    assert_eq!(trimmed.held_back_by.as_deref(), Some("g"));
    assert_eq!(first_of(&mut conn, "long").await, "40101-1", "the first entry the group has yet to read");
    assert_eq!(asked, 0, "its lag alone says the bound cannot be met");

    // Caught up, with one old entry still pending: fewer entries lie before
    // that entry than the bound would cut, so the cut stops at it.
    add_numbered(&mut conn, "pending", 1..=3_000).await;
    let _: () = group("pending").query_async(&mut conn).await.unwrap();
    let _: redis::Value = read("pending", 3_000, false).query_async(&mut conn).await.unwrap();
    let acked: Vec<String> = (1..=3_000).filter(|ms| *ms != 1_000).map(|ms| format!("{ms}-1")).collect();
    let _: u64 = redis::cmd("XACK").arg("pending").arg("g").arg(&acked).query_async(&mut conn).await.unwrap();
    let (trimmed, _) = trim_to(&redis, "pending", 1_500).await;
    assert_eq!((trimmed.removed, trimmed.length), (999, 2_001));
    assert_eq!(trimmed.held_back_by.as_deref(), Some("g"));
    assert_eq!(first_of(&mut conn, "pending").await, "1000-1", "the pending entry and all after it kept");

    // A bound set on a long stream with an entry pending in its middle:
    // many entries on both sides of the floor, more past it than the bound.
    // Each call reads a bounded number, cuts what it found before the
    // floor, and the next goes on, until the cut reaches the floor.
    add_numbered(&mut conn, "middle", 1..=50_000).await;
    let _: () = group("middle").query_async(&mut conn).await.unwrap();
    let _: redis::Value = read("middle", 50_000, false).query_async(&mut conn).await.unwrap();
    let acked: Vec<String> = (1..=50_000).filter(|ms| *ms != 25_000).map(|ms| format!("{ms}-1")).collect();
    for chunk in acked.chunks(10_000) {
        let _: u64 = redis::cmd("XACK").arg("middle").arg("g").arg(chunk).query_async(&mut conn).await.unwrap();
    }
    let (trimmed, asked) = trim_to(&redis, "middle", 20_000).await;
    assert_eq!((trimmed.removed, trimmed.length), (24_999, 25_001));
    assert_eq!(trimmed.held_back_by.as_deref(), Some("g"));
    assert_eq!(first_of(&mut conn, "middle").await, "25000-1", "the pending entry and all after it kept");
    assert!(asked <= 20_000, "one call of the script asked for {asked} entries");

    // Caught up with nothing pending: the bound is met at once.
    add_numbered(&mut conn, "done", 1..=3_000).await;
    let _: () = group("done").query_async(&mut conn).await.unwrap();
    let _: redis::Value = read("done", 3_000, true).query_async(&mut conn).await.unwrap();
    let (trimmed, asked) = trim_to(&redis, "done", 10).await;
    assert_eq!((trimmed.removed, trimmed.length, trimmed.held_back_by), (2_990, 10, None));
    assert!(asked <= 1_000, "nothing past the floor to count, yet it asked for {asked} entries");
}

/// A stream id as numbers, to compare.
fn id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// The id of the first entry of `in`.
async fn first_id(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let first: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("in").arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await.unwrap();
    id(&first[0].0)
}

/// The first entry of `in` the slow group has not finished: its oldest
/// pending one, or else the one after its last delivered.
async fn slow_needs_from(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let summary: (u64, Option<String>, Option<String>, redis::Value) =
        redis::cmd("XPENDING").arg("in").arg("slow").query_async(conn).await.unwrap();
    if let Some(oldest) = summary.1 {
        return id(&oldest);
    }
    let groups: redis::streams::StreamInfoGroupsReply = redis::AsyncCommands::xinfo_groups(conn, "in").await.unwrap();
    let last = id(&groups.groups.iter().find(|g| g.name == "slow").unwrap().last_delivered_id);
    (last.0, last.1 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_left_by_stopped_and_killed_hosts_are_forgotten() {
    let redis = RedisServer::start();
    let admin = free_port();
    // The default consumer name, hostname-pid: every run is a new consumer.
    // The runs that leave consumers behind forget none themselves (a slow run
    // could otherwise forget an earlier one); the live host forgets after 1 s.
    let keep = "forget_consumers_after_ms = 3600000";
    let host_keys = format!("claim_idle_ms = 1000\n{keep}\nadmin = \"127.0.0.1:{admin}\"");
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nconcurrency = 2\ntimeout_ms = 900\n";
    let fx = Fixture::new(&redis, &host_keys, handlers);
    let mut conn = redis.conn().await;
    let events = 24;
    for n in 0..events {
        let publish = [json!({"stream": "out", "type": "n", "data": {"n": n}})];
        send(&mut conn, "in", "t", json!({"action": "busy", "ms": 150, "publish": publish})).await;
    }
    // Two runs stopped cleanly, then three killed with entries in flight.
    for _ in 0..2 {
        let mut host = fx.spawn_binary();
        until_pending(&conn, "in", "h", 2).await;
        terminate(&mut host).await;
    }
    for _ in 0..3 {
        let mut host = fx.spawn_binary();
        let before = entries(&mut conn, "out").await.len();
        eventually(SOON, "a new host at work", || {
            let mut c = conn.clone();
            async move {
                (entries(&mut c, "out").await.len() > before && pending(&mut c, "in", "h").await > 0).then_some(())
            }
        })
        .await;
        host.kill().unwrap(); // SIGKILL, with entries pending
        host.wait().unwrap();
    }
    let consumers = sluice::stream::hygiene::consumers(&mut conn, "in", "h").await.unwrap();
    assert_eq!(consumers.len(), 5, "each run left its consumer: {consumers:?}");

    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(&fx.config_path, text.replace(keep, "forget_consumers_after_ms = 1000")).unwrap();
    let mut live = fx.spawn_binary();
    let out = until_entries(&conn, "out", events).await;
    let mut numbers: Vec<String> = out.iter().map(|e| field(e, "data")).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), events, "every event handled, none published twice");
    let left = eventually(Duration::from_secs(20), "only the live host's consumer left", || {
        let mut c = conn.clone();
        async move {
            let left = sluice::stream::hygiene::consumers(&mut c, "in", "h").await.unwrap();
            (left.len() == 1).then_some(left)
        }
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics");
    let forgotten: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"sluice_consumers_forgotten_total{group="h"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    live.kill().unwrap();
    live.wait().unwrap();
    assert_eq!(forgotten, 5.0, "each forgotten consumer counted: {metrics}");
    assert_eq!(left[0].pending, 0);
}

/// Adds `n` `behave` events to `in`, each with `XADD MAXLEN max_len`, in one
/// transaction: no host can read between them.
async fn add_trimming(conn: &mut redis::aio::MultiplexedConnection, n: usize, max_len: u64) {
    let data = json!({"action": "ok"}).to_string();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for _ in 0..n {
        pipe.cmd("XADD")
            .arg("in")
            .arg("MAXLEN")
            .arg(max_len)
            .arg("*")
            .arg("type")
            .arg("t")
            .arg("data")
            .arg(&data)
            .ignore();
    }
    let _: () = pipe.query_async(conn).await.unwrap();
}

/// Reads `n` new entries of `in` for `group`.
async fn read_as(conn: &mut redis::aio::MultiplexedConnection, group: &str, n: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg("in")
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// Entries of `in` removed before group `g` read them: (removed since the
/// last count, in all), or `None` when Redis cannot tell.
async fn removed_unread(conn: &mut redis::aio::MultiplexedConnection) -> Option<(u64, u64)> {
    let found = sluice::stream::unread::removed_unread(conn, "in", "g").await.unwrap();
    found.map(|f| (f.new, f.total))
}

/// Entries another program removes from a stream before a group read them
/// (a producer's `XADD MAXLEN`, an `XDEL`) are counted from Redis's own
/// counters, whether the group is still behind the stream's first entry or
/// has read past it, and each removal is counted once, whoever asks next;
/// Sluice's own trim, which waits for groups, counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_removed_before_a_group_read_them_are_counted_once() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("in")
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    add_trimming(&mut conn, 10, 100).await;
    read_as(&mut conn, "g", 3).await;
    assert_eq!(removed_unread(&mut conn).await, Some((0, 0)), "nothing removed");
    // The producer keeps 5 of 20: the 12 after the 3 read are gone unread.
    add_trimming(&mut conn, 10, 5).await;
    assert_eq!(removed_unread(&mut conn).await, Some((12, 12)), "behind the stream's first entry");
    assert_eq!(removed_unread(&mut conn).await, Some((0, 12)), "told once");
    // Read past the gap, the loss is still in Redis's counters, not new.
    read_as(&mut conn, "g", 2).await;
    assert_eq!(removed_unread(&mut conn).await, Some((0, 12)), "read past the gap");
    // Removed while the group had read past the stream's first entry: it
    // has 3 left to read, and 2 of them go.
    let _: () = redis::cmd("XTRIM").arg("in").arg("MAXLEN").arg(1).query_async(&mut conn).await.unwrap();
    assert_eq!(removed_unread(&mut conn).await, Some((2, 14)), "an XTRIM past the group");
    // Sluice's own trim waits for the group: it removes only what the group
    // has read and acknowledged.
    read_as(&mut conn, "g", 10).await;
    add_trimming(&mut conn, 4, 100).await;
    let pending: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg("in").arg("g").arg("-").arg("+").arg(100).query_async(&mut conn).await.unwrap();
    for (id, ..) in pending {
        let _: u64 = redis::cmd("XACK").arg("in").arg("g").arg(id).query_async(&mut conn).await.unwrap();
    }
    let bound = sluice::stream::retention::Retention { max_len: Some(1), max_age: None };
    let trimmed = sluice::stream::retention::trim(&mut conn, "in", &bound).await.unwrap();
    assert_eq!(trimmed.removed, 1, "{trimmed:?}");
    assert_eq!(removed_unread(&mut conn).await, Some((0, 14)), "Sluice's trim removes nothing unread");
    // An XDEL of an unread entry is counted until the group reads on, when
    // Redis forgets how many the group has read.
    let last: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XREVRANGE").arg("in").arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn).await.unwrap();
    let _: u64 = redis::cmd("XDEL").arg("in").arg(&last[0].0).query_async(&mut conn).await.unwrap();
    assert_eq!(removed_unread(&mut conn).await, Some((1, 15)), "an XDEL of an unread entry");
    read_as(&mut conn, "g", 10).await;
    assert_eq!(removed_unread(&mut conn).await, None, "Redis no longer counts the group's reads");
    // A group further behind than the script counts, past the stream's
    // first entry: not counted this time.
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg("in").arg("far").arg("0").query_async(&mut conn).await.unwrap();
    add_trimming(&mut conn, 1200, 100_000).await;
    read_as(&mut conn, "far", 1).await;
    let far = sluice::stream::unread::removed_unread(&mut conn, "in", "far").await.unwrap();
    assert_eq!(far, None, "more than {} behind", sluice::stream::unread::MOST_COUNTED);
}

/// A running host warns of entries removed before its group read them (here
/// by a producer's `XADD MAXLEN` while no host ran, and again while one
/// does), naming the stream, group and handler, and a host that starts
/// later does not warn of them again; `sluice status` shows them, apart from
/// the lag. The group's count of entries read is
/// set when the host makes it: left to Redis, the loss before the group's
/// first read would not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_warns_once_of_entries_removed_before_its_group_read_them() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let fx = Fixture::new(&redis, "", "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n");
    // A first run makes the group, on an empty stream.
    let mut maker = fx.spawn_binary_logging_json("warn");
    eventually(SOON, "group h made", || {
        let mut c = conn.clone();
        async move { delivered(&mut c).await.map(|_| ()) }
    })
    .await;
    assert!(terminate(&mut maker).await.success());
    // No host runs: the producer keeps 5 of 20, the group has read none.
    add_trimming(&mut conn, 20, 5).await;
    let watcher = conn.clone();
    let told = |total: u64| {
        let conn = watcher.clone();
        move || {
            let mut c = conn.clone();
            async move {
                let key = sluice::stream::unread::record_key("in");
                let n: Option<u64> = redis::cmd("HGET").arg(&key).arg("h").query_async(&mut c).await.unwrap();
                (n == Some(total)).then_some(())
            }
        }
    };
    let upkeep = Duration::from_secs(30);
    let mut first = fx.spawn_binary_logging_json("warn");
    eventually(upkeep, "15 entries counted as removed unread", told(15)).await;
    assert!(terminate(&mut first).await.success());
    // The next host, with the loss recorded, warns only of what it sees go:
    // 9 of 10 added at once, in one transaction, before it can read them.
    let mut second = fx.spawn_binary_logging_json("warn");
    eventually(SOON, "the 5 left handled", || {
        let mut c = conn.clone();
        async move { (pending(&mut c, "in", "h").await == 0 && delivered(&mut c).await == Some(Some(5))).then_some(()) }
    })
    .await;
    add_trimming(&mut conn, 10, 1).await;
    eventually(upkeep, "9 more counted as removed unread", told(24)).await;
    assert!(terminate(&mut second).await.success());
    // Redis's lag counts the removed entries as not yet delivered; `sluice
    // status` shows them apart, and the lag as what is left to deliver.
    let status = sluice(&["status", "--json"], &fx.config_path);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["stream"] == "in").unwrap();
    assert_eq!((&row["lag"], &row["removed_unread"]), (&json!(0), &json!(24)), "{row:#}");
    for (host, removed) in [(first, 15), (second, 9)] {
        let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
        let warned: Vec<_> = lines
            .iter()
            .filter(|l| l["fields"]["message"].as_str().unwrap().contains("were removed before group h read them"))
            .collect();
        assert_eq!(warned.len(), 1, "one warning per host: {lines:#?}");
        let w = &warned[0];
        assert_eq!(
            (
                &w["level"],
                &w["fields"]["stream"],
                &w["fields"]["group"],
                &w["fields"]["handler"],
                &w["fields"]["removed"]
            ),
            (&json!("WARN"), &json!("in"), &json!("h"), &json!("h"), &json!(removed)),
            "{w:#}"
        );
    }
}

/// How many entries of `in` group `h` has read (`entries-read`), `None`
/// when Redis does not count them; `None` outside when there is no group.
async fn delivered(conn: &mut redis::aio::MultiplexedConnection) -> Option<Option<u64>> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg("in").query_async(conn).await.unwrap_or_default();
    let h = groups.iter().find(|g| g.get("name") == Some(&redis::Value::BulkString(b"h".to_vec())))?;
    Some(match h.get("entries-read") {
        Some(redis::Value::Int(n)) => Some(*n as u64),
        _ => None,
    })
}
