//! Sluice as a Redis ACL user with the least it needs: a user made from the
//! rule `sluice acl` prints (the one docs/operating.md shows) runs the whole
//! path. Anything the rule lacks shows as Redis's own NOPERM entry in
//! `ACL LOG`, which names the command and key, and fails the test.

use crate::support::*;
use serde_json::{Value, json};
use sluice::config::Config;
use std::process::Command;

/// Polls `check` until it returns `Some`; after [`SOON`], fails with what
/// Redis refused the ACL user meanwhile (its NOPERM errors, naming the
/// command and key).
async fn until<T>(
    conn: &mut redis::aio::MultiplexedConnection,
    what: &str,
    check: impl AsyncFn(&mut redis::aio::MultiplexedConnection) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        if let Some(v) = check(conn).await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}; refused by Redis: {:#?}", acl_refusals(conn).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

fn sluice(args: &[&str], fx: &Fixture) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).arg("--config").arg(&fx.config_path).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sluice {args:?} as the ACL user failed:\n{stdout}{stderr}");
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_rule_is_enough_for_the_whole_path() {
    let redis = RedisServer::start();
    let admin = free_port();
    let url = format!("redis://sluice:s3cret@127.0.0.1:{}", redis.port);
    // Claims, trimming and consumer hygiene run too.
    // And a handler ordered by key, on a stream of its own.
    let handlers = "[streams.\"out\"]\nmax_len = 1\n[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\nmax_attempts = 2\nbackoff_ms = 10\ntimeout_ms = 500\n\
        [handlers.o]\nplugin = \"behave.wasm\"\nstreams = [\"in2\"]\npublish = [\"ledger\"]\norder_by = \"data.account\"\nmax_attempts = 2\nbackoff_ms = 10\ntimeout_ms = 500\n";
    let host_keys = format!("admin = \"127.0.0.1:{admin}\"\nclaim_idle_ms = 1000\nforget_consumers_after_ms = 1000");
    let fx = Fixture::with_redis(&format!("url = \"{url}\""), &host_keys, handlers);
    let rule = sluice(&["acl", "--user", "sluice"], &fx);
    let mut root = redis.conn().await;
    let words: Vec<String> = rule.trim().replace(">PASSWORD", ">s3cret").split(' ').map(String::from).collect();
    let _: () = redis::cmd(&words[0]).arg(&words[1..]).query_async(&mut root).await.unwrap();
    let _: () = redis::cmd("ACL").arg("LOG").arg("RESET").query_async(&mut root).await.unwrap();
    // A consumer a stopped host left behind.
    sluice::stream::ensure_group(&mut root, "in", "h").await.unwrap();
    let _: i64 =
        redis::cmd("XGROUP").arg("CREATECONSUMER").arg("in").arg("h").arg("gone").query_async(&mut root).await.unwrap();
    assert!(Config::load(&fx.config_path).unwrap().redis.url.unwrap().starts_with("redis://sluice:"));

    let host = fx.start();
    let publish = json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {}}]});
    let events = [
        publish,
        json!({"action": "kv_incr", "key": "k", "out": "out"}),
        json!({"action": "fail_until", "n": 2, "delay_ms": 10}),
        json!({"action": "reject", "reason": "no"}),
    ];
    for data in &events {
        send(&mut root, "in", "t", data.clone()).await;
    }
    let posting = |seq: u64, fail: u64| json!({"action": "ledger", "account": "k", "seq": seq, "amount": 1, "fail": fail, "out": "ledger"});
    for data in [posting(1, 1), posting(2, 0), json!({"action": "reject", "account": "k"})] {
        send(&mut root, "in2", "t", data).await;
    }
    let why = |log: &[String]| format!("refused by Redis: {log:#?}");
    until(&mut root, "every event handled as the ACL user", async |c| {
        let plain = finished(c, "in", "h").await == 4 && entries(c, "in:dlq").await.len() == 1;
        let ordered = finished(c, "in2", "o").await == 3 && entries(c, "in2:dlq").await.len() == 1;
        (plain && ordered).then_some(())
    })
    .await;
    assert_eq!(entries(&mut root, "ledger").await.len(), 2, "{}", why(&acl_refusals(&mut root).await));
    assert_eq!(entries(&mut root, "out").await.len(), 2, "{}", why(&acl_refusals(&mut root).await));
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(admin, "/metrics");
    assert!(code == 200 && metrics.contains("sluice_pending"), "{metrics}");

    assert!(sluice(&["status"], &fx).contains("ok"));
    let listed = sluice(&["dlq", "list"], &fx);
    assert!(listed.contains("in:dlq") && listed.contains("in2:dlq"), "{listed}");
    sluice(&["dlq", "redrive", "--handler", "h"], &fx);
    sluice(&["replay", "--stream", "in", "--handler", "h", "--from", "-1h"], &fx);
    let replayed = until(&mut root, "the redrive and the replay handled", async |c| {
        let dead = entries(c, "in:dlq").await;
        let history = dead.len() == 2 && dead.iter().any(|e| e.map.contains_key("sluice.history"));
        let inbox_done = entries(c, "sluice:inbox:h").await.is_empty();
        (history && inbox_done).then_some(dead)
    })
    .await;
    until(&mut root, "out trimmed to its bound, and the idle consumer forgotten", async |c| {
        let consumers = sluice::stream::hygiene::consumers(c, "in", "h").await.unwrap();
        (entries(c, "out").await.len() == 1 && !consumers.iter().any(|c| c.name == "gone")).then_some(())
    })
    .await;
    host.stop().await;
    let shown: Vec<Value> = serde_json::from_str(&sluice(&["dlq", "list", "--json"], &fx)).unwrap();
    assert_eq!(shown.len(), replayed.len() + entries(&mut root, "in2:dlq").await.len());
    let refused = acl_refusals(&mut root).await;
    assert!(refused.is_empty(), "{}", why(&refused));
}

#[test]
fn operating_md_shows_the_rule_for_the_shipped_config() {
    let config = Config::load_unchecked(&repo().join("config.toml")).unwrap();
    let rule = sluice::stream::acl::rule(&config, "sluice");
    let doc = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    assert!(
        doc.contains(&rule),
        "docs/operating.md must show, verbatim, what `sluice acl` prints for config.toml:\n{rule}"
    );
    for (command, _) in sluice::stream::acl::COMMANDS {
        assert!(doc.contains(&format!("`{command}`")), "docs/operating.md should say why Sluice needs `{command}`");
    }
}

/// Makes user `sluice` (password `s3cret`) from the rule `sluice acl`
/// prints for `fx`, less `command`; an admin's connection.
async fn user_lacking(redis: &RedisServer, fx: &Fixture, command: &str) -> redis::aio::MultiplexedConnection {
    let rule = sluice(&["acl", "--user", "sluice"], fx);
    let lacking = rule.trim().replace(">PASSWORD", ">s3cret").replace(&format!(" +{command}"), "");
    assert_ne!(lacking, rule.trim().replace(">PASSWORD", ">s3cret"), "the rule has {command}");
    let words: Vec<&str> = lacking.split(' ').collect();
    let mut root = redis.conn().await;
    let _: () = redis::cmd(words[0]).arg(&words[1..]).query_async(&mut root).await.unwrap();
    root
}

/// A user the rule does not let make consumer groups: `sluice run` stops at
/// start with Redis's NOPERM, naming the command and where the rule is,
/// rather than retrying forever. The group is made by a script, whose own
/// error would not name the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_cannot_make_groups_is_told_at_start_which_command_it_lacks() {
    let redis = RedisServer::start();
    let url = format!("redis://sluice:s3cret@127.0.0.1:{}", redis.port);
    let fx = Fixture::with_redis(
        &format!("url = \"{url}\""),
        "",
        "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\n",
    );
    user_lacking(&redis, &fx, "xgroup|create").await;
    let mut run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&fx.config_path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + STARTED;
    let stopped = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            let stderr = String::from_utf8_lossy(&run.wait_with_output().unwrap().stderr).into_owned();
            panic!("sluice run did not stop at start:\n{stderr}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let stderr = String::from_utf8_lossy(&run.wait_with_output().unwrap().stderr).into_owned();
    assert!(!stopped.success(), "{stderr}");
    let named = "no permissions to run the 'xgroup|create' command";
    assert!(stderr.contains(named) && stderr.contains("docs/operating.md"), "{stderr}");
}

/// A user the rule lets run the commit script but not a command it calls
/// (here `xadd`, for a delivery that publishes): Redis refuses the command
/// inside the script with an error of its own ("The user executing the
/// script can't run this command or subcommand"), not NOPERM. The host
/// must take it as the refusal it is: one error naming the rule, the entry
/// left pending, and no commit tried again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_inside_its_script_is_an_error_once_and_left_pending() {
    let redis = RedisServer::start();
    let url = format!("redis://sluice:s3cret@127.0.0.1:{}", redis.port);
    let handlers = "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"in\"]\npublish = [\"out\"]\n";
    let fx = Fixture::with_redis(&format!("url = \"{url}\""), "", handlers);
    let mut root = user_lacking(&redis, &fx, "xadd").await;
    let mut host = fx.spawn_binary_logging_json("warn");
    let publish = json!({"action": "publish", "publish": [{"stream": "out", "type": "done", "data": {}}]});
    send(&mut root, "in", "t", publish).await;
    // Each call of the commit script is refused at its XADD, which Redis
    // counts there.
    let refused = async |c: &mut redis::aio::MultiplexedConnection| {
        command_stat(&command_stats(c).await, "xadd", "rejected_calls")
    };
    until(&mut root, "the commit script refused", async |c| (refused(c).await > 0).then_some(())).await;
    // No second try, while one would be refused again. An absence cannot be
    // polled for: held for 1.5 s, well past the first pauses between tries.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(refused(&mut root).await, 1, "one refused call of the commit script");
    assert_eq!(pending(&mut root, "in", "h").await, 1, "the entry stays pending");
    assert!(entries(&mut root, "out").await.is_empty());
    assert!(terminate(&mut host).await.success());
    let lines = json_log_lines(&host.wait_with_output().unwrap().stderr);
    let refused: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(refused.len(), 1, "{lines:#?}");
    let message = refused[0]["fields"]["message"].as_str().unwrap();
    assert!(message.contains("refused") && message.contains("docs/operating.md"), "{message}");
    // Redis's own words name no command: the line says where to look.
    assert!(message.contains("can't run this command") && message.contains("ACL LOG"), "{message}");
}
