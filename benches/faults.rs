//! The fault audit at full size (issue 15, in the spirit of Jepsen): for
//! each fault, two `sluice run` hosts (the real binary) consume a numbered
//! load published at a steady rate, the fault strikes under that load, and
//! once the load has drained every number is accounted for: handled (its
//! publish is in `out`), dead-lettered (one event in a hundred is rejected
//! on purpose), lost, or duplicated; with the time the output took to grow
//! again after the fault, and the time until everything published before
//! the fault's end was finished. The logic is `tests/it/support/audit.rs`,
//! shared with the short versions in `tests/it/faults.rs`.
//!
//! `cargo bench --bench faults [-- FAULT...]` (or `scripts/faults`). Faults,
//! each on its own, all by default:
//!
//! - `kill`: `kill -9` of a host at 20 random moments, each restarted at once;
//! - `pause`: SIGSTOP of a host for twice `claim_idle_ms`, then SIGCONT;
//! - `always`, `everysec`: `kill -9` of redis-server (AOF on, that
//!   `appendfsync`), started again on the same port and data;
//! - `reset`: every connection between the hosts and Redis reset (RST) by a
//!   proxy on loopback, at 5 random moments;
//! - `stall`: every such connection stalled for 2 s;
//! - `latency`: 50 ms added to every chunk, each way, for 5 s;
//! - `failover`: a Redis Cluster (3 masters, 3 replicas) fails the input
//!   stream's master over to its replica;
//! - `crash`: `kill -9` of that master instead; the cluster promotes its
//!   replica (Redis may lose what the replica had not received, counted as
//!   lost by Redis, and acknowledgements, which deliver events again), and
//!   the old master comes back as a replica;
//! - `crash-target`: the master the relay writes to (the output is on
//!   another master than the input here) has its replica cut off for 3 s
//!   under the load, then is killed with `kill -9`; the replica promoted has
//!   none of the writes of that while, and the relay must write them again;
//! - `sentinel`: `kill -9` of the primary behind Redis Sentinel (a primary,
//!   its replica and a sentinel; the hosts ask the sentinel where the
//!   primary is), which promotes the replica a second or so later.
//!
//! Columns: events (acknowledged to the producer), handled, dead-lettered,
//! lost, duplicated; time to recover (from the end of the fault, or each
//! kill or reset, until the output grew again; the worst), caught up (from
//! then until every event published before it was acknowledged; the
//! worst), and in flight when struck (entries pending with the killed or
//! stopped host, or in the group, when the fault hit). The notes count
//! commits the script refused because their entry was taken over or already
//! finished, events that ended up in the wrong place, and what Redis lost.
//!
//! Prints one markdown table, a row per fault, and writes it as JSON to
//! `SLUICE_FAULTS_OUT` (default `target/bench/faults.json`). Environment:
//! `SLUICE_FAULTS_EVENTS` (default 20000), `SLUICE_FAULTS_RATE` (events/s,
//! default 1000), `SLUICE_FAULTS_SEED` (the kills' and resets' moments; random
//! by default, and printed so a run can be repeated), `SLUICE_FAULTS_KEYS`
//! (the handler orders by key, over this many keys, and each row counts the
//! outputs committed out of their key's order; unset: no `order_by`),
//! `SLUICE_FAULTS_LOGS` (a folder: each row's host logs are written there
//! as `FAULT-host-N.log`, to find out what a slow recovery waited for),
//! `SLUICE_FAULTS_RUST_LOG` (the hosts' `RUST_LOG`; default
//! `warn,sluice::plugin=info`, and the account needs that `info`).

#[path = "../tests/it/support/audit.rs"]
#[allow(dead_code)]
mod audit;
#[path = "../tests/it/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "../tests/it/support/proxy.rs"]
#[allow(dead_code)]
mod proxy;
#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../tests/it/support/sentinel.rs"]
#[allow(dead_code)]
mod sentinel;
#[path = "../tests/it/support/tls.rs"]
#[allow(dead_code)]
mod tls;

use audit::{Account, Fault, Fsync, Plan};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `claim_idle_ms` of every host: short enough for the runs to stay short,
/// long enough to be well above a delivery's time.
const CLAIM_IDLE: Duration = Duration::from_secs(5);

/// Each fault's name on the command line, and the fault.
fn faults() -> Vec<(&'static str, Fault)> {
    vec![
        ("kill", Fault::Kill { times: 20 }),
        ("pause", Fault::Pause { hold: CLAIM_IDLE * 2 }),
        ("always", Fault::RedisRestart(Fsync::Always)),
        ("everysec", Fault::RedisRestart(Fsync::Everysec)),
        ("reset", Fault::Reset { times: 5 }),
        ("stall", Fault::Stall { hold: Duration::from_secs(2) }),
        ("latency", Fault::Latency { latency: Duration::from_millis(50), hold: Duration::from_secs(5) }),
        ("failover", Fault::Failover),
        ("crash", Fault::MasterCrash),
        ("crash-target", Fault::TargetCrash { behind: Duration::from_secs(3) }),
        ("sentinel", Fault::SentinelCrash),
    ]
}

fn main() {
    let names: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let all = faults();
    if let Some(unknown) = names.iter().find(|n| !all.iter().any(|(name, _)| name == n)) {
        let known: Vec<&str> = all.iter().map(|(name, _)| *name).collect();
        eprintln!("no fault named {unknown}; the faults are: {}", known.join(" "));
        std::process::exit(2);
    }
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    if !plugins.join("behave.wasm").exists() {
        eprintln!("{} is missing: run scripts/build-plugins first", plugins.join("behave.wasm").display());
        std::process::exit(2);
    }
    let events: usize = env_or("SLUICE_FAULTS_EVENTS", 20_000);
    let rate: u32 = env_or("SLUICE_FAULTS_RATE", 1_000);
    let seed: u64 = env_or("SLUICE_FAULTS_SEED", rand::random());
    let keys: Option<usize> = std::env::var("SLUICE_FAULTS_KEYS").ok().and_then(|v| v.parse().ok());
    let ordered = keys.map_or(String::new(), |k| format!(", ordered by key over {k} keys"));
    println!(
        "fault audit: {events} events at {rate}/s, 2 hosts, claim_idle_ms {}{ordered}, seed {seed}",
        CLAIM_IDLE.as_millis()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, (name, fault)) in all.into_iter().enumerate() {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let plan = Plan {
            claim_idle: CLAIM_IDLE,
            drain: Duration::from_secs(120),
            // Each run its own moments, all from the one seed.
            seed: seed.wrapping_add(i as u64),
            // Some events in flight when the host stops: each computes 1 ms.
            busy: matches!(fault, Fault::Pause { .. }).then_some(Duration::from_millis(1)),
            keys,
            ..Plan::new(fault, events, rate, &plugins)
        };
        let account = rt.block_on(audit::run(&plan));
        println!("{name}: {}", account.summary());
        if let Some(dir) = std::env::var_os("SLUICE_FAULTS_LOGS").map(PathBuf::from) {
            keep_logs(&dir, name, &account.logs);
        }
        rows.push(account);
    }
    println!("\n{}", markdown(&rows, keys.is_some()));
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    let meta = serde_json::json!({
        "events": events,
        "rate": rate,
        "hosts": 2,
        "claim_idle_ms": CLAIM_IDLE.as_millis() as u64,
        "seed": seed,
        "keys": keys,
        "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    });
    println!("written to {}", write(&rows, meta).display());
}

/// Writes each host's log of fault `name` into `dir`.
fn keep_logs(dir: &Path, name: &str, logs: &[String]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("SLUICE_FAULTS_LOGS {}: {e}", dir.display()));
    for (i, log) in logs.iter().enumerate() {
        let path = dir.join(format!("{name}-host-{i}.log"));
        std::fs::write(&path, log).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A time in ms, or `-` when there is none (the output never grew again).
fn ms(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()))
}

/// The table, one row per fault; with `ordered`, a column of the outputs
/// committed out of their key's order.
fn markdown(rows: &[Account], ordered: bool) -> String {
    let (head, rule) = if ordered { (" out of key order |", "---:|") } else { ("", "") };
    let mut t = format!(
        "| fault | events | handled | dead-lettered | lost | duplicated |{head} time to recover | caught up | in flight when struck | notes |\n\
         |---|---:|---:|---:|---:|---:|{rule}---:|---:|---:|---|\n",
    );
    for a in rows {
        let lost = match a.lost_by_redis {
            0 => a.lost.to_string(),
            by_redis => format!("{} ({by_redis} by Redis)", a.lost),
        };
        let out_of_order = if ordered { format!(" {} |", a.out_of_order) } else { String::new() };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |{out_of_order} {} | {} | {} | {} |\n",
            a.fault,
            a.events,
            a.handled,
            a.dead_lettered,
            lost,
            a.duplicated,
            ms(a.recover),
            ms(a.caught_up),
            a.held,
            notes(a)
        ));
    }
    t
}

/// What else a row should say: commits refused as taken over or finished,
/// events that ended up in the wrong place, a load that did not drain, and
/// the run's own notes.
fn notes(a: &Account) -> String {
    let mut notes = Vec::new();
    if a.late_commits > 0 {
        notes.push(format!("{} commits refused as taken over or finished", a.late_commits));
    }
    if a.misplaced > 0 {
        notes.push(format!("{} misplaced", a.misplaced));
    }
    if !a.drained {
        notes.push("did not drain".to_owned());
    }
    notes.extend(a.notes.iter().filter(|n| !n.starts_with("seed ")).cloned());
    notes.join("; ")
}

/// Writes the rows as JSON to `SLUICE_FAULTS_OUT` or
/// `target/bench/faults.json`; returns the path.
fn write(rows: &[Account], meta: serde_json::Value) -> PathBuf {
    let path = std::env::var_os("SLUICE_FAULTS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/faults.json"));
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let rows: Vec<_> = rows
        .iter()
        .map(|a| {
            serde_json::json!({
                "fault": a.fault,
                "events": a.events,
                "handled": a.handled,
                "dead_lettered": a.dead_lettered,
                "lost": a.lost,
                "lost_by_redis": a.lost_by_redis,
                "duplicated": a.duplicated,
                "out_of_order": a.out_of_order,
                "misplaced": a.misplaced,
                "recover_ms": ms(a.recover),
                "caught_up_ms": ms(a.caught_up),
                "in_flight_when_struck": a.held,
                "connections_reset": a.connections_reset,
                "commits_refused_taken_over_or_finished": a.late_commits,
                "drained": a.drained,
                "elapsed_s": a.elapsed.as_secs_f64(),
                "notes": a.notes,
            })
        })
        .collect();
    let doc = serde_json::json!({"meta": meta, "rows": rows});
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    path
}
