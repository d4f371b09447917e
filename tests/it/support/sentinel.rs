//! A primary, its replica and a Redis Sentinel watching them, each a
//! `redis-server` of the test's own on a free port: what `[redis]
//! sentinels` is for. One sentinel alone decides a failover (quorum 1); of
//! three, two must agree. Each calls the primary down after a second without
//! an answer.

use super::redis_server::{RedisServer, conn_config, free_port};
use super::tls::Pki;
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

/// The name the sentinel knows the primary by.
pub const PRIMARY: &str = "primary";

/// A primary, its replica, and their sentinels.
pub struct SentinelSet {
    /// The two data servers; which one is the primary changes with a failover.
    pub servers: [RedisServer; 2],
    sentinels: Vec<RedisServer>,
    /// The CA's file and certificate, when the data servers speak only TLS.
    ca: Option<(String, Vec<u8>)>,
    /// Whether the sentinels speak only TLS too.
    sentinel_tls: bool,
    /// The client certificate and key files every TLS server requires
    /// (mutual TLS), if they do.
    client_cert: Option<(String, String)>,
    /// The sentinels' config files, which they rewrite.
    _dir: tempfile::TempDir,
    /// The database the host's `url` names and [`SentinelSet::conn`]
    /// selects: 0 unless a test sets another.
    pub db: u8,
}

impl SentinelSet {
    /// Starts the primary, its replica (in sync), and a sentinel that
    /// knows both. (Blocks.)
    pub fn start() -> SentinelSet {
        Self::start_as(None, false, 1, false)
    }

    /// The same with three sentinels, two of which must agree to fail the
    /// primary over, and which know each other before this returns.
    pub fn start_three() -> SentinelSet {
        Self::start_as(None, false, 3, false)
    }

    /// The same with data servers that speak only TLS, with `pki`'s server
    /// certificate (clients need not show one), and so does the sentinel if
    /// `sentinel_tls`. The replica and the sentinel reach the data servers
    /// over TLS.
    pub fn start_tls(pki: &Pki, sentinel_tls: bool) -> SentinelSet {
        Self::start_as(Some(pki), sentinel_tls, 1, false)
    }

    /// The same with the sentinel on TLS too, and every server requiring a
    /// client certificate signed by `pki`'s CA (mutual TLS). The replica and
    /// the sentinel show the server certificate (it is for clients too).
    pub fn start_mutual_tls(pki: &Pki) -> SentinelSet {
        Self::start_as(Some(pki), true, 1, true)
    }

    fn start_as(pki: Option<&Pki>, sentinel_tls: bool, count: usize, mutual: bool) -> SentinelSet {
        // (No 5 s wait before the replica's first sync.)
        let plain = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"].map(String::from);
        // The TLS settings as "name value" pairs, for arguments and config files alike.
        let tls: Vec<(&str, String)> = match pki {
            Some(pki) => vec![
                ("tls-cert-file", pki.file("server.pem")),
                ("tls-key-file", pki.file("server.key")),
                ("tls-ca-cert-file", pki.file("ca.pem")),
                ("tls-auth-clients", if mutual { "yes" } else { "no" }.to_owned()),
                ("tls-replication", "yes".to_owned()),
            ],
            None => vec![],
        };
        let scheme = if pki.is_some() { "rediss" } else { "redis" };
        let data_server = |replica_of: Option<u16>| {
            RedisServer::start_on(free_port, scheme, |port| {
                let mut args = plain.to_vec();
                let ports = match pki {
                    Some(_) => [("port", "0".to_owned()), ("tls-port", port.to_string())].to_vec(),
                    None => [("port", port.to_string())].to_vec(),
                };
                for (name, value) in ports.iter().chain(&tls) {
                    args.extend([format!("--{name}"), value.clone()]);
                }
                if let Some(primary) = replica_of {
                    args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), primary.to_string()]);
                }
                args
            })
        };
        let primary = data_server(None);
        let replica = data_server(Some(primary.port));
        let dir = tempfile::tempdir().expect("temp dir");
        let watched = primary.port;
        let quorum = count / 2 + 1;
        let sentinel_scheme = if sentinel_tls { "rediss" } else { "redis" };
        let tls: String = tls.iter().map(|(name, value)| format!("{name} {value}\n")).collect();
        let sentinels = (0..count)
            .map(|i| {
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                RedisServer::start_on(free_port, sentinel_scheme, |port| {
                    let ports = match sentinel_tls {
                        true => format!("port 0\ntls-port {port}\n"),
                        false => format!("port {port}\n"),
                    };
                    let text = format!(
                        "{ports}{tls}sentinel monitor {PRIMARY} 127.0.0.1 {watched} {quorum}\n\
                         sentinel down-after-milliseconds {PRIMARY} 1000\nsentinel failover-timeout {PRIMARY} 10000\n"
                    );
                    std::fs::write(&conf, text).expect("write sentinel.conf");
                    vec![conf.display().to_string(), "--sentinel".to_owned()]
                })
            })
            .collect();
        let ca = pki.map(|pki| (pki.file("ca.pem"), std::fs::read(pki.path("ca.pem")).expect("the CA")));
        let client_cert = (pki.filter(|_| mutual)).map(|pki| (pki.file("client.pem"), pki.file("client.key")));
        let set =
            SentinelSet { servers: [primary, replica], sentinels, ca, sentinel_tls, client_cert, _dir: dir, db: 0 };
        set.until(Duration::from_secs(30), "the sentinel sees the replica, in sync", || {
            let replicas: Vec<Vec<String>> = set.ask(&["SENTINEL", "REPLICAS", PRIMARY]);
            replicas.iter().any(|r| field(r, "master-link-status") == Some("ok")).then_some(())
        });
        // (They find each other through the primary, every 2 s.)
        set.until(Duration::from_secs(30), "the sentinels know each other", || {
            (0..count)
                .all(|i| set.ask_at::<Vec<redis::Value>>(i, &["SENTINEL", "SENTINELS", PRIMARY]).len() == count - 1)
                .then_some(())
        });
        set
    }

    /// A client of the server at `port`: over TLS trusting the CA if `tls`.
    fn client(&self, port: u16, tls: bool) -> redis::Client {
        self.client_of_db(port, tls, 0)
    }

    /// The same, selecting database `db`.
    fn client_of_db(&self, port: u16, tls: bool, db: u8) -> redis::Client {
        match (&self.ca, tls) {
            (Some((_, ca)), true) => {
                let read = |file: &String| std::fs::read(file).expect("a client certificate file");
                let client_tls = (self.client_cert.as_ref())
                    .map(|(cert, key)| redis::ClientTlsConfig { client_cert: read(cert), client_key: read(key) });
                let certs = redis::TlsCertificates { client_tls, root_cert: Some(ca.clone()) };
                redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/{db}"), certs).expect("a TLS client")
            }
            _ => redis::Client::open(format!("redis://127.0.0.1:{port}/{db}")).expect("a client"),
        }
    }

    /// A connection to the data server on `port`, as its `default` user, to
    /// the set's database ([`SentinelSet::db`]).
    pub async fn conn(&self, port: u16) -> MultiplexedConnection {
        self.conn_to_db(port, self.db).await
    }

    /// The same to database `db`.
    pub async fn conn_to_db(&self, port: u16, db: u8) -> MultiplexedConnection {
        let client = self.client_of_db(port, self.ca.is_some(), db);
        client.get_multiplexed_async_connection_with_config(&conn_config()).await.expect("connect to a data server")
    }

    /// The `[redis]` keys of a host behind the sentinel.
    pub fn host_keys(&self) -> String {
        self.host_keys_as("", "")
    }

    /// The same, logging in to the data servers with `data` and to the
    /// sentinel with `sentinel` (each `user:password@`, or "" for none).
    pub fn host_keys_as(&self, data: &str, sentinel: &str) -> String {
        let scheme = |tls: bool| if tls { "rediss" } else { "redis" };
        let at: Vec<String> = (self.sentinels.iter())
            .map(|s| format!("\"{}://{sentinel}127.0.0.1:{}\"", scheme(self.sentinel_tls), s.port))
            .collect();
        let db = if self.db == 0 { String::new() } else { format!("/{}", self.db) };
        let url = format!("{}://{data}{PRIMARY}{db}", scheme(self.ca.is_some()));
        let ca = self.ca.as_ref().map(|(file, _)| format!("\nca_file = \"{file}\"")).unwrap_or_default();
        let cert = (self.client_cert.as_ref())
            .map(|(cert, key)| format!("\ncert_file = \"{cert}\"\nkey_file = \"{key}\""))
            .unwrap_or_default();
        format!("url = \"{url}\"\nsentinels = [{}]{ca}{cert}", at.join(", "))
    }

    /// A connection to the first sentinel, as its `default` user.
    pub async fn sentinel_conn(&self) -> MultiplexedConnection {
        let client = self.client(self.sentinels[0].port, self.sentinel_tls);
        client.get_multiplexed_async_connection_with_config(&conn_config()).await.expect("connect to the sentinel")
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
        self.conn(self.primary_port()).await
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
                let mut c = self.client(new, self.ca.is_some()).get_connection().ok()?;
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
                redis::from_redis_value_ref::<String>(role.first()?).ok()
            };
            (new != old && role().as_deref() == Some("master")).then_some(new)
        })
    }

    /// Kills sentinel `i` (SIGKILL); it stays down.
    pub fn kill_sentinel(&mut self, i: usize) {
        self.sentinels[i].kill();
    }

    /// One command to the first sentinel that is up, its reply as `T`.
    fn ask<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let up = (0..self.sentinels.len()).find(|&i| self.sentinel_sync_conn(i).is_some());
        self.ask_at(up.expect("a sentinel is up"), args)
    }

    /// One command to sentinel `i`, its reply as `T`.
    fn ask_at<T: redis::FromRedisValue>(&self, i: usize, args: &[&str]) -> T {
        let mut c = self.sentinel_sync_conn(i).expect("connect to the sentinel");
        redis::cmd(args[0]).arg(&args[1..]).query(&mut c).expect("the sentinel answers")
    }

    /// A blocking connection to sentinel `i`; `None` if it is down.
    fn sentinel_sync_conn(&self, i: usize) -> Option<redis::Connection> {
        let client = self.client(self.sentinels[i].port, self.sentinel_tls);
        client.get_connection_with_timeout(Duration::from_secs(5)).ok()
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
