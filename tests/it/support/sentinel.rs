//! A primary, its replica and a Redis Sentinel watching them, each a
//! `redis-server` of the test's own on a free port: what `[redis]
//! sentinels` is for. The sentinel alone decides a failover (quorum 1) and
//! calls the primary down after a second without an answer.

use super::redis_server::{RedisServer, free_port};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

/// The name the sentinel knows the primary by.
pub const PRIMARY: &str = "primary";

/// A primary, its replica, and their sentinel.
pub struct SentinelSet {
    /// The two data servers; which one is the primary changes with a failover.
    pub servers: [RedisServer; 2],
    sentinel: RedisServer,
    /// The sentinel's config file, which it rewrites.
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the primary, its replica (in sync), and a sentinel that
    /// knows both. (Blocks.)
    pub fn start() -> SentinelSet {
        // (No 5 s wait before the replica's first sync.)
        let plain = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"];
        let primary = RedisServer::start_with(&plain);
        let of_primary = ["--replicaof", "127.0.0.1", &primary.port.to_string()];
        let replica = RedisServer::start_with(&[&plain[..], &of_primary].concat());
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("sentinel.conf");
        let watched = primary.port;
        let sentinel = RedisServer::start_on(free_port, "redis", |port| {
            let text = format!(
                "port {port}\nsentinel monitor {PRIMARY} 127.0.0.1 {watched} 1\n\
                 sentinel down-after-milliseconds {PRIMARY} 1000\nsentinel failover-timeout {PRIMARY} 10000\n"
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            vec![conf.display().to_string(), "--sentinel".to_owned()]
        });
        let set = SentinelSet { servers: [primary, replica], sentinel, _dir: dir };
        set.until(Duration::from_secs(30), "the sentinel sees the replica, in sync", || {
            let replicas: Vec<Vec<String>> = set.ask(&["SENTINEL", "REPLICAS", PRIMARY]);
            replicas.iter().any(|r| field(r, "master-link-status") == Some("ok")).then_some(())
        });
        set
    }

    /// The `[redis]` keys of a host behind the sentinel.
    pub fn host_keys(&self) -> String {
        self.host_keys_as("", "")
    }

    /// The same, logging in to the data servers with `data` and to the
    /// sentinel with `sentinel` (each `user:password@`, or "" for none).
    pub fn host_keys_as(&self, data: &str, sentinel: &str) -> String {
        let at = format!("redis://{sentinel}127.0.0.1:{}", self.sentinel.port);
        format!("url = \"redis://{data}{PRIMARY}\"\nsentinels = [\"{at}\"]")
    }

    /// A connection to the sentinel, as its `default` user.
    pub async fn sentinel_conn(&self) -> MultiplexedConnection {
        self.sentinel.conn().await
    }

    /// The port of the server the sentinel names as the primary.
    pub fn primary_port(&self) -> u16 {
        let addr: Vec<String> = self.ask(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY]);
        addr.get(1).and_then(|p| p.parse().ok()).expect("the sentinel names a primary")
    }

    /// The data server on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers.iter().find(|s| s.port == port).expect("one of the two servers")
    }

    /// A connection to the server that is the primary now.
    pub async fn primary_conn(&self) -> MultiplexedConnection {
        self.server(self.primary_port()).conn().await
    }

    /// Has the sentinel fail the primary over to the replica (`SENTINEL
    /// FAILOVER`, which the sentinel runs on its own: the replica is
    /// promoted, the old primary made its replica), and waits until the
    /// sentinel names the replica and the replica says it is a primary.
    /// Returns the new primary's port.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        let () = self.ask(&["SENTINEL", "FAILOVER", PRIMARY]);
        self.until_promoted(old, Duration::from_secs(30))
    }

    /// Kills the primary (SIGKILL), as a crash would, and waits until the
    /// sentinel, after a second without an answer, has promoted the
    /// replica. Returns the new primary's port; the old one stays down.
    pub fn crash_primary(&mut self) -> u16 {
        let old = self.primary_port();
        self.servers.iter_mut().find(|s| s.port == old).expect("one of the two servers").kill();
        self.until_promoted(old, Duration::from_secs(30))
    }

    /// Waits until the sentinel names another primary than `old`, and it
    /// says it is one.
    fn until_promoted(&self, old: u16, within: Duration) -> u16 {
        self.until(within, "the replica promoted", || {
            let new = self.primary_port();
            let role = || {
                let mut c = redis::Client::open(self.server(new).url()).ok()?.get_connection().ok()?;
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
                redis::from_redis_value_ref::<String>(role.first()?).ok()
            };
            (new != old && role().as_deref() == Some("master")).then_some(new)
        })
    }

    /// One command to the sentinel, its reply as `T`.
    fn ask<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.sentinel.url()).expect("the sentinel's URL");
        let mut c = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connect to the sentinel");
        redis::cmd(args[0]).arg(&args[1..]).query(&mut c).expect("the sentinel answers")
    }

    /// Polls `check` until it gives a value; panics with `what` after `within`.
    fn until<T>(&self, within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Field `name` of a sentinel's reply about one server (names and values).
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields.chunks(2).find(|p| p[0] == name).and_then(|p| p.get(1)).map(String::as_str)
}
