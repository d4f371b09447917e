//! A `sluice run` process for the benchmark: the real binary, on a config of
//! the benchmark's own, so its memory is its own and its environment (e.g.
//! `RUST_BACKTRACE`) can differ between runs.

use redis::aio::ConnectionLike;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The folder the example and test plugins are built into.
pub fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist")
}

/// The `sluice` binary to run: this build's, or `SLUICE_BENCH_BIN` (to
/// compare another build on the same machine, in alternating runs).
fn binary() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")), PathBuf::from)
}

/// A running `sluice run`, stopped with SIGTERM on [`Host::stop`].
pub struct Host {
    child: Child,
    /// Its log (default level, as users run it).
    log: PathBuf,
}

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub now: f64,
    /// The most so far (`VmHWM`).
    pub peak: f64,
}

impl Host {
    /// Starts `sluice run --no-watch` with a config in `dir` (its
    /// compiled-component cache goes there too) holding `[handlers...]` text
    /// `handlers`, plugins from `plugins`, and `RUST_BACKTRACE` as given;
    /// returns once every stream in `streams` has its group.
    pub async fn start(
        dir: &Path,
        redis_url: &str,
        plugins: &Path,
        handlers: &str,
        backtrace: bool,
        streams: &[&str],
    ) -> Host {
        let mut conn = redis::Client::open(redis_url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let setup = Setup { redis: &format!("url = \"{redis_url}\""), host: "", plugins, handlers, backtrace };
        Host::start_with(dir, &setup, streams, &mut conn).await
    }

    /// [`Host::start`] with `[redis]` keys and `[host]` keys of its own
    /// (a cluster, a consumer name, an admin port), watching for the groups
    /// on `conn`.
    pub async fn start_with(dir: &Path, setup: &Setup<'_>, streams: &[&str], conn: &mut impl ConnectionLike) -> Host {
        let Setup { redis, host, plugins, handlers, backtrace } = *setup;
        let config = dir.join("config.toml");
        let text = format!("[redis]\n{redis}\n[host]\nplugins = \"{}\"\n{host}\n{handlers}", plugins.display());
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(binary());
        let log = dir.join("sluice.log");
        cmd.args(["run", "--no-watch", "--config"]).arg(&config).env_remove("RUST_LOG").stdin(Stdio::null());
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        if backtrace {
            cmd.env("RUST_BACKTRACE", "1");
        } else {
            cmd.env_remove("RUST_BACKTRACE");
        }
        let child = cmd.spawn().expect("spawn sluice");
        let host = Host { child, log };
        for s in streams {
            while !group_exists(conn, s).await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        host
    }

    /// Its resident memory now and at its peak.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        };
        let mib = |k: Option<f64>| k.unwrap_or(f64::NAN) / 1024.0;
        Memory { now: mib(kib("VmRSS:")), peak: mib(kib("VmHWM:")) }
    }

    /// CPU time it has used so far (user and system), in seconds.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// SIGTERM, then waits for it to drain and exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("sluice exited with {status}; its log:\n{log}");
        }
    }
}

/// What a host runs with, beyond its folder.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    /// The `[redis]` keys, as TOML.
    pub redis: &'a str,
    /// Extra `[host]` keys, as TOML.
    pub host: &'a str,
    /// The plugins folder.
    pub plugins: &'a Path,
    /// The `[handlers...]` tables.
    pub handlers: &'a str,
    /// Whether `RUST_BACKTRACE=1`.
    pub backtrace: bool,
}

/// CPU time process `pid` has used (user and system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: fields 14 and 15 are utime and stime.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Whether `stream` has a consumer group yet.
pub async fn group_exists(conn: &mut impl ConnectionLike, stream: &str) -> bool {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async::<redis::Value>(conn)
        .await
        .map(|v| matches!(v, redis::Value::Array(a) if !a.is_empty()))
        .unwrap_or(false)
}

/// Entries of `stream` its first group read and acknowledged.
pub async fn acked(conn: &mut impl ConnectionLike, stream: &str) -> usize {
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.unwrap();
    let g = &groups.groups[0];
    g.entries_read.unwrap_or(0).saturating_sub(g.pending)
}

/// Redis's own accounting since its last `CONFIG RESETSTAT`: per command
/// (lower case, as `INFO commandstats` names it), its calls and the µs
/// spent in it (a script's time includes the commands it calls).
pub async fn command_stats(conn: &mut impl ConnectionLike) -> std::collections::HashMap<String, (f64, f64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<f64> {
                fields.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// `n` copies of the plugins in [`dist`] (cycling through the loadable
/// Rust ones), each made distinct by a custom section, in a new folder: `n`
/// plugins that compile and load separately, as `n` different handlers would.
pub fn distinct_plugins(n: usize) -> (tempfile::TempDir, Vec<String>) {
    const SOURCES: [&str; 8] = [
        "payment.wasm",
        "shipping.wasm",
        "notification.wasm",
        "inventory.wasm",
        "audit.wasm",
        "behave.wasm",
        "webhook.wasm",
        "hostile.wasm",
    ];
    let dir = tempfile::tempdir().unwrap();
    let names = (0..n)
        .map(|i| {
            let mut bytes = std::fs::read(dist().join(SOURCES[i % SOURCES.len()])).unwrap();
            bytes.extend(custom_section("sluice-bench", format!("copy {i}").as_bytes()));
            let name = format!("p{i}.wasm");
            std::fs::write(dir.path().join(&name), bytes).unwrap();
            name
        })
        .collect();
    (dir, names)
}

/// A WebAssembly custom section (id 0): valid anywhere at a component's top level.
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = leb128(name.len());
    body.extend(name.as_bytes());
    body.extend(payload);
    let mut out = vec![0u8];
    out.extend(leb128(body.len()));
    out.extend(body);
    out
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
