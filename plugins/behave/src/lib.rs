//! `behave`: a test fixture whose behaviour is chosen by each event.
//!
//! The host's integration tests publish events whose `data` is a JSON object
//! with an `action` field, and check what the host does with the outcome.
//! Invalid JSON, or no `action`, means `ok`.
//!
//! | `action`     | other fields                        | what `handle` does                                            |
//! |--------------|-------------------------------------|---------------------------------------------------------------|
//! | `ok`         |                                     | returns `Ok`                                                  |
//! | `retry`      | `delay_ms`?                         | `Err(retry)`, reason `asked to retry`                         |
//! | `reject`     | `reason`?                           | `Err(reject)`, reason `reason` or `asked to reject`           |
//! | `trap`       |                                     | panics (`asked to trap`), which traps                         |
//! | `loop`       |                                     | spins forever, until the host's timeout                       |
//! | `alloc`      | `mb`? (default 1024)                | allocates and keeps `mb` MiB in 1 MiB chunks, then `Ok`       |
//! | `publish`    | `publish`: `[{stream, type, data}]`, `then`? | publishes each (`data` as JSON); a refused publish rejects with `publish refused: <reason>`; then `then` = `reject` rejects, `trap` panics, else `Ok` |
//! | `fail_until` | `n`, `delay_ms`?                    | `Err(retry)` (`attempt <a> of <n>`) while `attempt < n`, then `Ok` |
//! | `busy`       | `ms`, `publish`?, `log`?            | computes for `ms` milliseconds (no sleeping), publishes `publish` items like `publish`, logs `log` at info, then `Ok` |
//! | `kv_incr`    | `key`?, `ttl_ms`?, `out`?, `then`?  | adds 1 to the number under `key` (kv), checks it reads its own write, publishes `count` `{n}` to `out`, then ends as `then` says |
//! | `kv_delete`  | `key`?                              | deletes `key` and checks it reads its own delete              |
//! | `config`     | `key`                               | publishes `config` `{key: value}` to `out`; rejects if unset  |
//! | `log`        | `message`                           | logs `message` at info and prints it to stdout, then `Ok`     |
//! | `count`      | `out`                               | adds 1 to a counter in the instance's memory and publishes `count` `{n}` to `out` (1 every time in a fresh instance) |
//! | `reply`      | `type`?, `reply`                    | answers the request with `host.reply` (`type`, default `answer`; `reply` as JSON); a refused reply rejects with `reply refused: <reason>` |
//! | `ledger`     | `account`, `seq`, `amount`, `fail`?, `delay_ms`?, `ms`?, `out`? | `Err(retry)` while `attempt <= fail`; else computes for `ms` milliseconds, adds `amount` to kv `balance:<account>`, sets kv `seq:<account>` to `seq`, and publishes `entry` `{account, seq, after, balance}` to `out`, `after` being the `seq` it replaced (to check order) |
//!
//! Any other `action` is rejected with `unknown action <action>`.

use std::hint::black_box;

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log, publish};
use sluice::plugin::{config, kv};
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// Events `count` has seen in this instance.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One mebibyte, the size of each chunk `alloc` allocates.
const MIB: usize = 1 << 20;

/// The handler; see the crate documentation.
struct Behave;

impl Guest for Behave {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
        let delay_ms = data["delay_ms"].as_u64();
        match data["action"].as_str().unwrap_or("ok") {
            "ok" => Ok(()),
            "retry" => Err(retry("asked to retry".into(), delay_ms)),
            "reject" => Err(Failure::Reject(
                data["reason"].as_str().unwrap_or("asked to reject").into(),
            )),
            "trap" => panic!("asked to trap"),
            "loop" => spin(),
            "alloc" => {
                black_box(hog(data["mb"].as_u64().unwrap_or(1024) as usize));
                Ok(())
            }
            "publish" => {
                publish_each(&data)?;
                finish_as(&data)
            }
            "fail_until" => {
                let n = data["n"].as_u64().unwrap_or(0);
                if u64::from(event.attempt) < n {
                    Err(retry(format!("attempt {} of {n}", event.attempt), delay_ms))
                } else {
                    Ok(())
                }
            }
            "busy" => {
                busy_for(data["ms"].as_u64().unwrap_or(100));
                publish_each(&data)?;
                if let Some(message) = data["log"].as_str() {
                    log(Level::Info, message);
                }
                Ok(())
            }
            "kv_incr" => {
                // Counts deliveries under `key`, publishes the new count,
                // then finishes as `then` says (so failures can be tested).
                let key = data["key"].as_str().unwrap_or("count");
                let n = kv_number(key)? + 1;
                kv::set(key, n.to_string().as_bytes(), data["ttl_ms"].as_u64());
                if kv_number(key)? != n {
                    return Err(Failure::Reject("kv read did not see this delivery's own write".into()));
                }
                let out = serde_json::json!([{"stream": data["out"].as_str().unwrap_or("out"), "type": "count", "data": {"n": n}}]);
                publish_each(&serde_json::json!({ "publish": out }))?;
                finish_as(&data)
            }
            "kv_delete" => {
                kv::delete(data["key"].as_str().unwrap_or("count"));
                if kv_number(data["key"].as_str().unwrap_or("count"))? != 0 {
                    return Err(Failure::Reject("kv read did not see this delivery's own delete".into()));
                }
                Ok(())
            }
            "config" => {
                let key = data["key"].as_str().unwrap_or_default();
                let value = config::get(key).ok_or_else(|| Failure::Reject(format!("no config value {key}")))?;
                let out = serde_json::json!([{"stream": "out", "type": "config", "data": {key: value}}]);
                publish_each(&serde_json::json!({ "publish": out }))
            }
            "log" => {
                let message = data["message"].as_str().unwrap_or_default();
                log(Level::Info, message);
                println!("{message}");
                Ok(())
            }
            "count" => {
                let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let out = data["out"].as_str().unwrap_or("out");
                publish_each(&serde_json::json!({ "publish": [{"stream": out, "type": "count", "data": {"n": n}}] }))
            }
            "ledger" => ledger(&data, event.attempt, delay_ms),
            "reply" => {
                let body = serde_json::to_vec(&data["reply"]).expect("a Value serializes");
                sluice::plugin::host::reply(data["type"].as_str().unwrap_or("answer"), &body)
                    .map_err(|r| Failure::Reject(format!("reply refused: {r}")))
            }
            other => Err(Failure::Reject(format!("unknown action {other}"))),
        }
    }
}

/// `ledger`: one posting to an account's balance, in kv (see the table).
fn ledger(data: &Value, attempt: u32, delay_ms: Option<u64>) -> Result<(), Failure> {
    let account = match &data["account"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if u64::from(attempt) <= data["fail"].as_u64().unwrap_or(0) {
        return Err(retry(format!("posting to {account} failed on attempt {attempt}"), delay_ms));
    }
    busy_for(data["ms"].as_u64().unwrap_or(0));
    let (seq_key, balance_key) = (format!("seq:{account}"), format!("balance:{account}"));
    let after = kv_number(&seq_key)?;
    let balance = kv_number(&balance_key)? + data["amount"].as_u64().unwrap_or(0);
    let seq = data["seq"].as_u64().unwrap_or(0);
    kv::set(&seq_key, seq.to_string().as_bytes(), None);
    kv::set(&balance_key, balance.to_string().as_bytes(), None);
    let entry = serde_json::json!({"account": account, "seq": seq, "after": after, "balance": balance});
    let out = data["out"].as_str().unwrap_or("out");
    publish_each(&serde_json::json!({ "publish": [{"stream": out, "type": "entry", "data": entry}] }))
}

/// Publishes each item of `data.publish` (`{stream, type, data}`, `data` sent
/// as JSON); a refused publish becomes a `reject` with the host's reason.
fn publish_each(data: &Value) -> Result<(), Failure> {
    for item in data["publish"].as_array().into_iter().flatten() {
        let body = serde_json::to_vec(&item["data"]).expect("a Value serializes");
        publish(
            item["stream"].as_str().unwrap_or_default(),
            item["type"].as_str().unwrap_or_default(),
            &body,
        )
        .map_err(|r| Failure::Reject(format!("publish refused: {r}")))?;
    }
    Ok(())
}

/// Ends as `data.then` says: `reject` rejects, `trap` panics, else `Ok`.
fn finish_as(data: &Value) -> Result<(), Failure> {
    match data["then"].as_str() {
        Some("reject") => Err(Failure::Reject("rejected after publishing".into())),
        Some("trap") => panic!("asked to trap after publishing"),
        _ => Ok(()),
    }
}

/// The number stored under `key` (0 when absent); a kv error asks for a retry.
fn kv_number(key: &str) -> Result<u64, Failure> {
    let value = kv::get(key).map_err(|e| retry(e, None))?;
    Ok(value.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// A `retry` failure with `reason` and an optional fixed delay.
fn retry(reason: String, delay_ms: Option<u64>) -> Failure {
    Failure::Retry(RetryAfter { reason, delay_ms })
}

/// Computes (without sleeping) until `ms` milliseconds have passed.
fn busy_for(ms: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut n = 0u64;
    while std::time::Instant::now() < until {
        n = black_box(n.wrapping_add(1));
    }
}

/// Loops forever; `black_box` keeps the optimizer from removing the loop.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates `mb` MiB in 1 MiB chunks, writing to every page of each so the
/// memory is really used, and returns them all.
fn hog(mb: usize) -> Vec<Vec<u8>> {
    (0..mb)
        .map(|_| {
            let mut chunk = vec![0u8; MIB];
            for byte in chunk.iter_mut().step_by(4096) {
                *byte = 1;
            }
            black_box(chunk)
        })
        .collect()
}

export!(Behave);
