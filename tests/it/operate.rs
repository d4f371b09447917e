//! Operating Sluice: `dlq list/show/redrive/purge`, `replay` and `status`
//! against a real Redis with real dead-lettered events.

use crate::support::*;
use serde_json::{Value, json};
use std::process::{Command, Output};

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Handlers `a` and `b` on stream `in`, both publishing to `out` (with
/// their name as `source`). The `config` action succeeds where the handler
/// has the key, so `b` fails what `a` handles until `b_key` is set.
fn two_handlers(b_key: bool) -> String {
    let b_config = if b_key { "[handlers.b.config]\nkey = \"v\"\n" } else { "" };
    format!(
        "[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 1\nconcurrency = 1\n[handlers.a.config]\nkey = \"v\"\n\
         [handlers.b]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 1\nconcurrency = 1\n{b_config}"
    )
}

fn config_event(n: usize) -> Value {
    json!({"action": "config", "key": "key", "n": n})
}

/// (source, causation_id) of each entry in `out`.
async fn seen(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, String)> {
    entries(conn, "out").await.iter().map(|e| (field(e, "source"), field(e, "causation_id"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_reaches_only_the_handler_that_failed_and_keeps_the_history() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &two_handlers(false));
    let mut conn = redis.conn().await;
    let host = fx.start();
    let ids = [send(&mut conn, "in", "t", config_event(1)).await, send(&mut conn, "in", "t", config_event(2)).await];
    until_entries(&conn, "in:dlq", 2).await;
    until_finished(&conn, "in", "a", 2).await;

    // Still broken: the redriven events fail again, with their history.
    let listed = ok(sluice(&["dlq", "list", "--handler", "b", "--json"], &fx.config_path));
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["event"]["id"], json!(ids[0]));
    assert!(listed[0]["reason"].as_str().unwrap().contains("no config value key"), "{listed:?}");
    ok(sluice(&["dlq", "redrive", "--handler", "b"], &fx.config_path));
    let again = eventually(SOON, "both failed again", || {
        let mut c = conn.clone();
        async move {
            let dl = entries(&mut c, "in:dlq").await;
            (dl.len() == 2 && dl.iter().all(|e| e.map.contains_key("sluice.history"))).then_some(dl)
        }
    })
    .await;
    let history: Value = serde_json::from_str(&field(&again[0], "sluice.history")).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["handler"], json!("b"));
    assert_eq!(field(&again[0], "sluice.origin_id"), ids[0], "the dead letter names the original entry");
    assert_eq!(field(&again[0], "sluice.attempts"), "1", "attempts start over");

    // Fixed: the second redrive succeeds, for b alone.
    host.stop().await;
    fx.rewrite_handlers(&two_handlers(true));
    let host = fx.start();
    let out = ok(sluice(&["dlq", "redrive", "--stream", "in"], &fx.config_path));
    assert!(out.contains("redrove 2 entr(ies)"), "{out}");
    eventually(SOON, "b handled both", || {
        let mut c = conn.clone();
        async move { (seen(&mut c).await.iter().filter(|(s, _)| s == "b").count() == 2).then_some(()) }
    })
    .await;
    host.stop().await;
    let mut all = seen(&mut conn).await;
    all.sort();
    let mut expected: Vec<_> =
        ["a", "b"].iter().flat_map(|h| ids.iter().map(|id| (h.to_string(), id.clone()))).collect();
    expected.sort();
    assert_eq!(all, expected, "a saw each event once; b's publishes name the original entries");
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
    // Each copy was deleted when b was done with it: dead-lettered again the
    // first time, acknowledged the second.
    assert!(entries(&mut conn, "sluice:inbox:b").await.is_empty(), "handled inbox copies are deleted");
}

/// Handlers `a` and `b` (`two_handlers(false)`) after 12 `config` events:
/// `a` handled them, `b` dead-lettered them to `in:dlq`. No host runs, so
/// what a redrive moves stays in the inbox to be counted.
async fn twelve_dead_letters(redis: &RedisServer) -> Fixture {
    let fx = Fixture::new(redis, "", &two_handlers(false));
    let mut conn = redis.conn().await;
    let host = fx.start();
    for n in 0..12 {
        send(&mut conn, "in", "t", config_event(n)).await;
    }
    until_entries(&conn, "in:dlq", 12).await;
    host.stop().await;
    fx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_redrive_loses_nothing_and_repeats_nothing() {
    let redis = RedisServer::start();
    let fx = twelve_dead_letters(&redis).await;
    let mut conn = redis.conn().await;
    let mut redrive = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dlq", "redrive", "--rate", "5", "--config"])
        .arg(&fx.config_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until_entries(&conn, "sluice:inbox:b", 3).await;
    redrive.kill().unwrap(); // SIGKILL, mid-way
    redrive.wait().unwrap();
    // A move it sent before it died still runs: Redis runs what a client
    // sent before it notices the connection closed. Counted once it has.
    eventually(SOON, "the killed redrive's connection closed", || {
        let mut c = conn.clone();
        async move {
            let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await.unwrap();
            (clients.lines().count() == 1).then_some(())
        }
    })
    .await;
    let moved = entries(&mut conn, "sluice:inbox:b").await.len();
    let left = entries(&mut conn, "in:dlq").await.len();
    assert!(moved < 12, "the redrive was interrupted before it finished ({moved} moved)");
    assert_eq!(moved + left, 12, "every event is in exactly one place");
    // On one server each move is one script, whatever the two streams'
    // slots: none went the cluster's two-step way, which leaves a marker.
    let markers: Vec<String> = redis::cmd("KEYS").arg("sluice:redriven:*").query_async(&mut conn).await.unwrap();
    assert!(markers.is_empty(), "moved in two steps: {markers:?}");

    // --limit moves that many and no more.
    let limit = left.min(2);
    ok(sluice(&["dlq", "redrive", "--limit", &limit.to_string()], &fx.config_path));
    assert_eq!(entries(&mut conn, "in:dlq").await.len(), left - limit);
    assert_eq!(entries(&mut conn, "sluice:inbox:b").await.len(), moved + limit);

    ok(sluice(&["dlq", "redrive"], &fx.config_path));
    let inbox = entries(&mut conn, "sluice:inbox:b").await;
    let mut origins: Vec<String> = inbox.iter().map(|e| field(e, "sluice.origin_id")).collect();
    origins.sort();
    origins.dedup();
    assert_eq!((inbox.len(), origins.len()), (12, 12), "each event queued again exactly once");
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

/// A redrive that fails part-way (here the inbox is made a string while it
/// runs) says how many it moved; the same redrive run again moves the rest,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_that_fails_part_way_says_how_many_went() {
    let redis = RedisServer::start();
    let fx = twelve_dead_letters(&redis).await;
    let mut conn = redis.conn().await;
    let inbox = "sluice:inbox:b";
    let redrive = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dlq", "redrive", "--rate", "5", "--config"])
        .arg(&fx.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until_entries(&conn, inbox, 3).await;
    // What it moved so far taken away, and the inbox made a string, at once.
    let (moved, ()): (redis::streams::StreamRangeReply, ()) = redis::pipe()
        .atomic()
        .cmd("XRANGE")
        .arg(inbox)
        .arg("-")
        .arg("+")
        .cmd("DEL")
        .arg(inbox)
        .ignore()
        .cmd("SET")
        .arg(inbox)
        .arg("in the way")
        .query_async(&mut conn)
        .await
        .unwrap();
    let moved = moved.ids;
    let failed = redrive.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success() && said.contains("WRONGTYPE"), "{said}");
    assert!(moved.len() < 12, "the redrive was still going: {}", moved.len());
    assert!(said.contains(&format!("redrove {} entr(ies) before this", moved.len())), "{said}");

    let () = redis::cmd("DEL").arg(inbox).query_async(&mut conn).await.unwrap();
    ok(sluice(&["dlq", "redrive"], &fx.config_path));
    let mut origins: Vec<String> =
        moved.iter().chain(&entries(&mut conn, inbox).await).map(|e| field(e, "sluice.origin_id")).collect();
    assert_eq!(origins.len(), 12, "{origins:?}");
    origins.sort();
    origins.dedup();
    assert_eq!(origins.len(), 12, "each event queued again exactly once");
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_exactly_the_time_range_to_one_handler() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &two_handlers(true));
    let mut conn = redis.conn().await;
    for ms in [1000, 2000, 2000, 3000, 4000] {
        let id = redis::cmd("XADD")
            .arg("in")
            .arg(format!("{ms}-*"))
            .arg("type")
            .arg("t")
            .arg("data")
            .arg(config_event(ms).to_string())
            .query_async::<String>(&mut conn)
            .await
            .unwrap();
        assert!(id.starts_with(&ms.to_string()));
    }
    let host = fx.start();
    until_entries(&conn, "out", 10).await;
    let dry = ok(sluice(
        &["replay", "--stream", "in", "--handler", "b", "--from", "2000", "--to", "3000", "--dry-run"],
        &fx.config_path,
    ));
    assert!(dry.contains("would replay 3 entr(ies)"), "{dry}");
    // A day or a month (UTC) as the end takes in all of it, not only its
    // first millisecond; a month is not read as the stream id 1970-01 (1.97 s in).
    for (from, to) in [("1970-01-01", "1970-01-01"), ("1970-01", "1970-01")] {
        let dry = ok(sluice(
            &["replay", "--stream", "in", "--handler", "b", "--from", from, "--to", to, "--dry-run"],
            &fx.config_path,
        ));
        assert!(dry.contains("would replay 5 entr(ies)"), "--from {from} --to {to}: {dry}");
    }
    let out = ok(sluice(
        &["replay", "--stream", "in", "--handler", "b", "--from", "1970-01-01T00:00:02Z", "--to", "3000"],
        &fx.config_path,
    ));
    assert!(out.contains("replayed 3 entr(ies) of in to b (2000-0 … 3000-0)"), "{out}");
    until_entries(&conn, "out", 13).await;
    host.stop().await;
    let all = seen(&mut conn).await;
    let replayed: Vec<&str> = all[10..]
        .iter()
        .map(|(s, id)| {
            assert_eq!(s, "b");
            id.as_str()
        })
        .collect();
    assert_eq!(replayed, ["2000-0", "2000-1", "3000-0"]);
    assert!(entries(&mut conn, "sluice:inbox:b").await.is_empty(), "handled inbox copies are deleted");

    let refused = sluice(&["replay", "--stream", "other", "--handler", "a", "--from", "-1h"], &fx.config_path);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not read stream \"other\""));
}

/// A replay copies 500 entries at a time as it reads them. One that fails
/// part-way (here Redis runs out of memory in its second page) says how
/// many went and the `--from` to go on with; going on from there (a stream
/// id, exact within its millisecond) replays the rest, so that every entry
/// reaches the inbox once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_part_way_says_how_to_go_on_and_going_on_repeats_nothing() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &two_handlers(true));
    let mut conn = redis.conn().await;
    // 1 500 entries of 2 KB, many in each millisecond.
    let data = json!({"action": "ok", "pad": "x".repeat(2000)}).to_string();
    let mut pipe = redis::pipe();
    for _ in 0..1500 {
        pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("data").arg(&data);
    }
    let ids: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
    // Room for about a page and a half of copies.
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used + 1_600_000).query_async(&mut conn).await.unwrap();
    let failed = sluice(&["replay", "--stream", "in", "--handler", "b", "--from", "0", "--to", "now"], &fx.config_path);
    let said = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("OOM"), "Redis's reason: {said}");
    let go_on = said.lines().find_map(|l| l.split_once("To go on: sluice ")).map(|(_, c)| c.to_owned());
    let go_on = go_on.unwrap_or_else(|| panic!("how to go on: {said}"));
    let inbox = "sluice:inbox:b";
    let copied = entries(&mut conn, inbox).await.len();
    assert!((500..1500).contains(&copied), "the first page went, not all: {copied}");
    assert!(
        said.contains(&format!("replayed {copied} entr(ies) of in to b ({} … {})", ids[0], ids[copied - 1])),
        "{said}"
    );
    assert!(go_on.contains(&format!("--from {} ", ids[copied])), "from the first entry not replayed: {go_on}");

    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await.unwrap();
    let args: Vec<&str> = go_on.split(' ').collect();
    let rest = ok(sluice(&args, &fx.config_path));
    assert!(rest.contains(&format!("replayed {} entr(ies)", 1500 - copied)), "{rest}");
    let origins: Vec<String> = entries(&mut conn, inbox).await.iter().map(|e| field(e, "sluice.origin_id")).collect();
    assert_eq!(origins, ids, "every entry in the inbox once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_dead_letter_runs_offline_to_the_same_reason() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &two_handlers(false));
    let mut conn = redis.conn().await;
    let host = fx.start();
    send(&mut conn, "in", "t", config_event(1)).await;
    let dl = until_entries(&conn, "in:dlq", 1).await;
    host.stop().await;
    let shown = ok(sluice(&["dlq", "show", &dl[0].id], &fx.config_path));
    assert!(shown.contains("handler      b") && shown.contains("\"action\": \"config\""), "{shown}");
    let saved = ok(sluice(&["dlq", "show", &dl[0].id, "--json"], &fx.config_path));
    let file = fx.dir.path().join("failed.json");
    std::fs::write(&file, &saved).unwrap();
    let offline = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["invoke", plugins_dir().join("behave.wasm").to_str().unwrap(), "--handler", "b", "--json", "--event"])
        .arg(&file)
        .arg("--config")
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(report["reason"].as_str().unwrap(), field(&dl[0], "sluice.error"));

    let recent = ok(sluice(&["dlq", "list", "--since", "-1h", "--error-contains", "no config value"], &fx.config_path));
    assert!(recent.contains(&dl[0].id) && recent.ends_with("1 entry\n"), "{recent}");
    let since = ok(sluice(&["dlq", "list", "--since", "2000-01-01T00:00:00Z"], &fx.config_path));
    assert!(since.ends_with("1 entry\n"), "{since}");
    // Half an hour ago, written at UTC+05:00: an offset read with the wrong
    // sign would put it in the future, and list nothing.
    let ago = sluice::ops::time::now_ms() - 30 * 60_000;
    let local = sluice::ops::time::format(ago + 5 * 3_600_000).replace('Z', "+05:00");
    let since = ok(sluice(&["dlq", "list", "--since", &local], &fx.config_path));
    assert!(since.ends_with("1 entry\n"), "--since {local}: {since}");
    let future = ok(sluice(&["dlq", "list", "--since", "2999-01-01T00:00:00+02:00"], &fx.config_path));
    assert!(future.ends_with("0 entries\n"), "{future}");
    let none = ok(sluice(&["dlq", "list", "--error-contains", "gateway"], &fx.config_path));
    assert!(none.ends_with("0 entries\n"), "{none}");
    let out = ok(sluice(&["dlq", "purge", "--handler", "b"], &fx.config_path));
    assert!(out.contains("1 dead-letter entr(ies) match; add --yes"), "{out}");
    ok(sluice(&["dlq", "purge", "--handler", "b", "--yes"], &fx.config_path));
    assert!(entries(&mut conn, "in:dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lag_pending_and_dead_letters_per_handler() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &two_handlers(false));
    let mut conn = redis.conn().await;
    let host = fx.start();
    send(&mut conn, "in", "t", config_event(1)).await;
    until_entries(&conn, "in:dlq", 1).await;
    until_finished(&conn, "in", "a", 1).await;
    host.stop().await;
    send(&mut conn, "in", "t", config_event(2)).await; // not read yet: lag 1
    let rows: Vec<Value> = serde_json::from_str(&ok(sluice(&["status", "--json"], &fx.config_path))).unwrap();
    let row = |h: &str, s: &str| rows.iter().find(|r| r["handler"] == h && r["stream"] == s).unwrap().clone();
    let a = row("a", "in");
    assert_eq!(
        (&a["consuming"], &a["lag"], &a["pending"], &a["dead_letters"]),
        (&json!(true), &json!(1), &json!(0), &json!(1)),
        "{a}"
    );
    assert_eq!(row("b", "sluice:inbox:b")["consuming"], json!(true));
    let table = ok(sluice(&["status"], &fx.config_path));
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains(" in ") && l.ends_with("ok")), "{table}");

    // Past 1000 entries of lag, a group is falling behind.
    let mut pipe = redis::pipe();
    for n in 0..1000 {
        pipe.cmd("XADD").arg("in").arg("*").arg("type").arg("t").arg("n").arg(n).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let rows: Vec<Value> = serde_json::from_str(&ok(sluice(&["status", "--json"], &fx.config_path))).unwrap();
    let a = rows.iter().find(|r| r["handler"] == "a" && r["stream"] == "in").unwrap();
    assert_eq!((&a["lag"], &a["behind"]), (&json!(1001), &json!(true)), "{a}");
    let table = ok(sluice(&["status"], &fx.config_path));
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains(" in ") && l.ends_with("BEHIND")), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_entries_leave_the_inbox_whether_handled_or_not_wanted() {
    let redis = RedisServer::start();
    let c = "[handlers.c]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\nevents = [\"t\"]\n";
    let fx = Fixture::new(&redis, "", c);
    let mut conn = redis.conn().await;
    send(&mut conn, "in", "t", json!({"action": "ok"})).await;
    send(&mut conn, "in", "not-for-c", json!({"action": "ok"})).await;
    let host = fx.start();
    until_finished(&conn, "in", "c", 2).await;
    let out =
        ok(sluice(&["replay", "--stream", "in", "--handler", "c", "--from", "0", "--to", "now"], &fx.config_path));
    assert!(out.contains("replayed 2 entr(ies)"), "{out}");
    eventually(SOON, "the inbox emptied", || {
        let mut c = conn.clone();
        async move { entries(&mut c, "sluice:inbox:c").await.is_empty().then_some(()) }
    })
    .await;
    host.stop().await;
    assert_eq!(pending(&mut conn, "sluice:inbox:c", "c").await, 0);
}
