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
/// How long a stopping `redis-server` may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Unix socket path the kernel accepts (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A running embedded server, started by this process or found running.
/// Dropping it does not stop it; call [`stop`](Self::stop).
///
/// Several `sluice` processes may share one server (a host, and the
/// `publish` or `kv get` commands run beside it), whichever started it: the
/// last one to leave stops it.
pub struct EmbeddedRedis {
    /// `redis+unix://` URL of the socket.
    pub url: String,
    /// Its folder (`.sluice/`), holding the lock file.
    state_dir: std::path::PathBuf,
    /// The server process, when this process started it (not when it found
    /// one already running, e.g. left by a killed host).
    child: Option<Child>,
    /// This process's presence: a connection named [`PRESENCE`], held until
    /// [`stop`](Self::stop), and its client id.
    presence: (redis::aio::MultiplexedConnection, i64),
}

/// The client name each `sluice` process using the embedded server gives
/// one connection, so the last to leave can tell it is the last.
const PRESENCE: &str = "sluice";

impl EmbeddedRedis {
    /// Connects to the embedded server under `state_dir`, starting it if it
    /// is not running.
    pub async fn ensure(state_dir: &Path) -> anyhow::Result<EmbeddedRedis> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
        let state_dir = state_dir.canonicalize()?;
        let socket = state_dir.join("redis.sock");
        let url = socket_url(&socket)?;
        // Held while starting and joining, and while leaving: two processes
        // never both start a server, and none stops it while another joins.
        let _lock = lock(&state_dir).await?;
        let child = if ping(&url).await {
            None
        } else {
            let mut child = spawn(&state_dir, &socket)?;
            wait_ready(&url, &mut child, &state_dir).await?;
            Some(child)
        };
        let presence =
            announce(&url).await.with_context(|| format!("cannot connect to the embedded Redis at {url}"))?;
        Ok(EmbeddedRedis { url, state_dir, child, presence })
    }

    /// Whether this process started the server.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server (it writes its AOF and exits), unless another
    /// `sluice` process is using it: the last one to leave stops it,
    /// whichever started it. A `sluice run` that connected to a server a
    /// `sluice publish` started keeps its Redis when the publish exits, and
    /// stops it when it stops.
    pub async fn stop(mut self) {
        let Ok(_lock) = lock(&self.state_dir).await else { return };
        if others_present(&mut self.presence.0, self.presence.1).await {
            return;
        }
        match self.child.take() {
            Some(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
                }
                if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            None => {
                // Not our child: ask it to shut down (it fsyncs its AOF), and
                // wait until it has, so a process starting next starts anew.
                let shutdown = redis::cmd("SHUTDOWN");
                let _ = tokio::time::timeout(STOP_TIMEOUT, shutdown.query_async::<()>(&mut self.presence.0)).await;
                let deadline = Instant::now() + STOP_TIMEOUT;
                while Instant::now() < deadline && ping(&self.url).await {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// An exclusive lock on `state_dir/redis.lock`, released when dropped.
async fn lock(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("redis.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await?
        .with_context(|| format!("cannot lock {}", path.display()))
}

/// Waits until the server `child` started answers on `url`.
async fn wait_ready(url: &str, child: &mut Child, state_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if ping(url).await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("redis-server exited ({status}); see {}", state_dir.join("redis.log").display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("redis-server did not answer within {START_TIMEOUT:?}; see {}", state_dir.join("redis.log").display())
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
        // Its own process group: a Ctrl-C meant for the `sluice` that
        // started it must not stop a server other processes use.
        .process_group(0)
        .spawn()
        .context("cannot start redis-server for the embedded Redis: is it installed (apt-get install redis-server)? Or set [redis] url in the config")
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await??)
}

/// A connection to `url` named [`PRESENCE`], and its client id.
async fn announce(url: &str) -> anyhow::Result<(redis::aio::MultiplexedConnection, i64)> {
    let mut conn = connect(url).await?;
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg(PRESENCE).query_async(&mut conn).await?;
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
    Ok((conn, id))
}

/// Whether another `sluice` process (a connection named [`PRESENCE`] other
/// than `me`) is using the server; true when that cannot be told: better a
/// server left running than one stopped under a host.
async fn others_present(conn: &mut redis::aio::MultiplexedConnection, me: i64) -> bool {
    let list = tokio::time::timeout(Duration::from_secs(2), redis::cmd("CLIENT").arg("LIST").query_async(conn)).await;
    let Ok(Ok::<String, _>(list)) = list else { return true };
    list.lines().any(|line| {
        let mut fields = line.split(' ').filter_map(|f| f.split_once('='));
        let (mut id, mut name) = (None, None);
        for (k, v) in fields.by_ref() {
            match k {
                "id" => id = v.parse::<i64>().ok(),
                "name" => name = Some(v),
                _ => {}
            }
        }
        name == Some(PRESENCE) && id != Some(me)
    })
}

async fn ping(url: &str) -> bool {
    let Ok(mut conn) = connect(url).await else {
        return false;
    };
    redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
}

/// The Redis a config points at: its `url`, or the embedded server.
pub enum RedisTarget {
    /// `[redis] url`
    External(String),
    /// The embedded server.
    Embedded(Box<EmbeddedRedis>),
}

impl RedisTarget {
    /// Resolves the config's Redis, starting the embedded one if needed.
    pub async fn resolve(redis_url: Option<&str>, state_dir: &Path) -> anyhow::Result<RedisTarget> {
        Ok(match redis_url {
            Some(url) => RedisTarget::External(url.to_owned()),
            None => RedisTarget::Embedded(Box::new(EmbeddedRedis::ensure(state_dir).await?)),
        })
    }

    /// The URL to connect to.
    pub fn url(&self) -> &str {
        match self {
            RedisTarget::External(url) => url,
            RedisTarget::Embedded(e) => &e.url,
        }
    }

    /// Stops the embedded server if no other `sluice` process uses it
    /// ([`EmbeddedRedis::stop`]).
    pub async fn stop(self) {
        if let RedisTarget::Embedded(e) = self {
            e.stop().await;
        }
    }
}
