//! A config written for one test, and hosts run from it: in-process (with an
//! injected shutdown) or as the real `sluice` binary (to kill it).

use super::{RedisServer, plugins_dir};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use sluice::config::Config;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A temp folder holding a `config.toml` that points at a test's Redis and
/// the built plugins.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub redis_url: String,
}

impl Fixture {
    /// A config with `[host]` keys `host` (may be empty) and the given
    /// handler tables.
    pub fn new(redis: &RedisServer, host: &str, handlers: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        let text = format!(
            "[redis]\nurl = \"{}\"\n\n[host]\nplugins = \"{}\"\n{host}\n\n{handlers}\n",
            redis.url(),
            plugins_dir().display()
        );
        std::fs::write(&config_path, text).unwrap();
        Fixture { dir, config_path, redis_url: redis.url() }
    }

    /// The parsed config.
    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the host in this process until [`RunningHost::stop`].
    pub fn start(&self) -> RunningHost {
        let config = self.config();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice::host::run(config, async {
            let _ = rx.await;
        }));
        RunningHost { stop: Some(tx), task }
    }

    /// Runs the real `sluice run` binary on this config.
    pub fn spawn_binary(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sluice")
    }
}

/// A host running in this process.
pub struct RunningHost {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningHost {
    /// Signals shutdown and waits for the host to drain and return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.expect("host task panicked").expect("host failed");
    }
}

/// Adds an entry with `fields` to `stream`.
pub async fn xadd(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &str)]) -> String {
    conn.xadd(stream, "*", fields).await.unwrap()
}

/// Adds a `behave` event: type `event_type`, data `data` (JSON).
pub async fn send(conn: &mut MultiplexedConnection, stream: &str, event_type: &str, data: serde_json::Value) -> String {
    xadd(conn, stream, &[("type", event_type), ("data", &data.to_string())]).await
}

/// Every entry of `stream`.
pub async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<StreamId> {
    let reply: StreamRangeReply = conn.xrange_all(stream).await.unwrap();
    reply.ids
}

/// Field `name` of `entry` as a string, panicking if missing.
pub fn field(entry: &StreamId, name: &str) -> String {
    entry.get::<String>(name).unwrap_or_else(|| panic!("entry {} has no field {name}: {:?}", entry.id, entry.map))
}

/// How many entries of `stream` are pending in `group` (0 if the group does
/// not exist yet).
pub async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> usize {
    let v: redis::RedisResult<redis::Value> = redis::cmd("XPENDING").arg(stream).arg(group).query_async(conn).await;
    match v {
        Ok(redis::Value::Array(parts)) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

/// How many entries `group` has finished with: those up to its last
/// delivered id, minus those still pending.
pub async fn finished(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> usize {
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = conn.xinfo_groups(stream).await;
    let Ok(groups) = groups else { return 0 }; // the host has not created the stream yet
    let Some(g) = groups.groups.iter().find(|g| g.name == group) else { return 0 };
    let delivered: StreamRangeReply = conn.xrange(stream, "-", &g.last_delivered_id).await.unwrap();
    delivered.ids.len().saturating_sub(g.pending)
}

/// Waits until `group` has finished `n` entries of `stream`.
pub async fn until_finished(conn: &MultiplexedConnection, stream: &str, group: &str, n: usize) {
    let what = format!("{n} entries of {stream} finished by {group}");
    super::eventually(super::SOON, &what, || {
        let mut c = conn.clone();
        async move { (finished(&mut c, stream, group).await == n).then_some(()) }
    })
    .await
}

/// Waits until `stream` holds at least `n` entries and returns them all.
pub async fn until_entries(conn: &MultiplexedConnection, stream: &str, n: usize) -> Vec<StreamId> {
    super::eventually(super::SOON, &format!("{n} entries in {stream}"), || {
        let mut c = conn.clone();
        async move {
            let e = entries(&mut c, stream).await;
            (e.len() >= n).then_some(e)
        }
    })
    .await
}

/// Waits until exactly `n` entries of `stream` are pending in `group`.
pub async fn until_pending(conn: &MultiplexedConnection, stream: &str, group: &str, n: usize) {
    let what = format!("{n} entries of {stream} pending in {group}");
    super::eventually(super::SOON, &what, || {
        let mut c = conn.clone();
        async move { (pending(&mut c, stream, group).await == n).then_some(()) }
    })
    .await
}
