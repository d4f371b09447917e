//! The embedded Redis: when `[redis]` has no `url`, Sluice runs its own
//! `redis-server` on a Unix socket under `.sluice/` beside the config, with
//! its data kept there (AOF on), so a new user needs nothing else running.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a starting `redis-server` may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Unix socket path the kernel accepts (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A running embedded server. Dropping it does not stop it; call [`stop`](Self::stop).
pub struct EmbeddedRedis {
    /// `redis+unix://` URL of the socket.
    pub url: String,
    /// The server process, when this process started it (not when it found
    /// one already running, e.g. left by a killed host).
    child: Option<Child>,
}

impl EmbeddedRedis {
    /// Connects to the embedded server under `state_dir`, starting it if it
    /// is not running.
    pub async fn ensure(state_dir: &Path) -> anyhow::Result<EmbeddedRedis> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
        let state_dir = state_dir.canonicalize()?;
        let socket = state_dir.join("redis.sock");
        let url = socket_url(&socket)?;
        if ping(&url).await {
            return Ok(EmbeddedRedis { url, child: None });
        }
        let child = spawn(&state_dir, &socket)?;
        let mut redis = EmbeddedRedis { url, child: Some(child) };
        redis.wait_ready(&state_dir).await?;
        Ok(redis)
    }

    /// Whether this process started the server.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }

    async fn wait_ready(&mut self, state_dir: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ping(&self.url).await {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("redis-server exited ({status}); see {}", state_dir.join("redis.log").display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("redis-server did not answer within {START_TIMEOUT:?}; see {}", state_dir.join("redis.log").display())
    }

    /// Stops the server if this process started it (it writes its AOF and
    /// exits on SIGTERM); leaves it running otherwise.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

fn socket_url(socket: &Path) -> anyhow::Result<String> {
    let s = socket.to_str().context("the config's folder path is not UTF-8")?;
    if s.len() > MAX_SOCKET_PATH {
        bail!(
            "the embedded Redis socket path {s} is too long for a Unix socket; move the config to a shorter path or set [redis] url"
        );
    }
    Ok(format!("redis+unix://{s}"))
}

fn spawn(state_dir: &Path, socket: &Path) -> anyhow::Result<Child> {
    let log = state_dir.join("redis.log");
    Command::new("redis-server")
        .args(["--port", "0", "--unixsocketperm", "700", "--appendonly", "yes", "--save", "", "--daemonize", "no"])
        .arg("--unixsocket")
        .arg(socket)
        .arg("--dir")
        .arg(state_dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false)
        .spawn()
        .context("cannot start redis-server for the embedded Redis: is it installed (apt-get install redis-server)? Or set [redis] url in the config")
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
    else {
        return false;
    };
    redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
}

/// The Redis a config points at: its `url`, or the embedded server.
pub enum RedisTarget {
    /// `[redis] url`
    External(String),
    /// The embedded server.
    Embedded(EmbeddedRedis),
}

impl RedisTarget {
    /// Resolves the config's Redis, starting the embedded one if needed.
    pub async fn resolve(redis_url: Option<&str>, state_dir: &Path) -> anyhow::Result<RedisTarget> {
        Ok(match redis_url {
            Some(url) => RedisTarget::External(url.to_owned()),
            None => RedisTarget::Embedded(EmbeddedRedis::ensure(state_dir).await?),
        })
    }

    /// The URL to connect to.
    pub fn url(&self) -> &str {
        match self {
            RedisTarget::External(url) => url,
            RedisTarget::Embedded(e) => &e.url,
        }
    }

    /// Stops the embedded server if this process started it.
    pub async fn stop(self) {
        if let RedisTarget::Embedded(e) = self {
            e.stop().await;
        }
    }
}
