//! A Redis Cluster of a test's own: three masters and three replicas
//! (`redis-server --cluster-enabled yes` six times, then `redis-cli --cluster
//! create`), on free ports whose cluster-bus ports (port + 10000) are free
//! too; in plain text, or all in TLS (clients, replication and the bus).
//! Killed on drop.

use super::redis_server::{RESPONSE_TIMEOUT, RedisServer, free_port};
use super::tls::Pki;
use redis::cluster_async::ClusterConnection;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Cluster {
    /// Every node, masters first as created (their roles change on failover).
    pub nodes: Vec<RedisServer>,
    /// What `redis-cli` needs to reach the nodes: `--tls --cacert …` for TLS.
    cli_tls: Vec<String>,
}

impl Cluster {
    /// Starts six nodes and joins them: three masters, each with a replica.
    pub fn start() -> Cluster {
        Self::join((0..6).map(|_| node(&[])).collect(), vec![])
    }

    /// [`Cluster::start`], every node speaking only TLS with `pki`'s
    /// server certificate (for `localhost` and 127.0.0.1), to clients, to its
    /// replica and on the cluster bus.
    #[allow(dead_code)]
    pub fn start_tls(pki: &Pki) -> Cluster {
        let mut tls: Vec<String> =
            ["--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "no"].map(String::from).into();
        for (flag, file) in
            [("--tls-cert-file", "server.pem"), ("--tls-key-file", "server.key"), ("--tls-ca-cert-file", "ca.pem")]
        {
            tls.extend([flag.to_owned(), pki.file(file)]);
        }
        let nodes = (0..6).map(|_| node(&tls)).collect();
        Self::join(nodes, vec!["--tls".to_owned(), "--cacert".to_owned(), pki.file("ca.pem")])
    }

    fn join(nodes: Vec<RedisServer>, cli_tls: Vec<String>) -> Cluster {
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed: apt-get install -y redis-server");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Cluster { nodes, cli_tls };
        cluster.until_settled();
        cluster
    }

    /// `redis://127.0.0.1:PORT` of one node: the seed Sluice discovers the rest from.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// A cluster connection, following redirections.
    pub async fn conn(&self) -> ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClientBuilder::new(urls)
            .retries(10)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .unwrap()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(&self.cli_tls).args(["-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The lines of `CLUSTER NODES` as one node sees them.
    fn nodes_view(&self, port: u16) -> Vec<NodeLine> {
        self.cli(port, &["CLUSTER", "NODES"]).lines().filter_map(NodeLine::parse).collect()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self.cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
        let view = self.nodes_view(self.nodes[0].port);
        view.iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master for slot {slot}"))
    }

    /// The ports of the masters.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes_view(self.nodes[0].port).iter().filter(|n| n.master).map(|n| n.port).collect()
    }

    /// Fails `master` over to its replica (`CLUSTER FAILOVER` on the
    /// replica, which waits for it to catch up first) and waits until the
    /// cluster agrees. Returns the new master's port.
    pub fn failover(&self, master: u16) -> u16 {
        let replica = self.replica_of(master);
        assert_eq!(self.cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
        self.until_promoted(replica, master, None, Duration::from_secs(20));
        self.until_settled();
        replica
    }

    /// Waits, up to `within`, until every node (but `dead`) sees `replica`
    /// of `master` as a master serving slots.
    fn until_promoted(&self, replica: u16, master: u16, dead: Option<u16>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let promoted =
                self.nodes.iter().filter(|n| Some(n.port) != dead).all(|n| {
                    self.nodes_view(n.port).iter().any(|l| l.port == replica && l.master && !l.slots.is_empty())
                });
            if promoted {
                return;
            }
            assert!(Instant::now() < deadline, "replica {replica} of {master} not promoted within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills `master` (SIGKILL), as a crash would, and waits until the
    /// other nodes have promoted its replica (after `cluster-node-timeout`
    /// and an election). What the replica had not received when the master
    /// died is gone: Redis replicates asynchronously. Returns the new
    /// master's port and how long after the kill it was promoted;
    /// [`Cluster::restart_node`] brings the killed node back.
    pub fn crash_master(&mut self, master: u16) -> (u16, Duration) {
        let replica = self.replica_of(master);
        let killed = self.nodes.iter().position(|n| n.port == master).expect("a node of the cluster");
        let at = Instant::now();
        self.nodes[killed].kill();
        self.until_promoted(replica, master, Some(master), Duration::from_secs(30));
        (replica, at.elapsed())
    }

    /// Starts node `port` again on its data (after
    /// [`Cluster::crash_master`]: it comes back as a replica), and waits
    /// until the cluster settles.
    pub fn restart_node(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node of the cluster").restart();
        self.until_settled();
    }

    /// The port of a replica of `master`, as `master` sees it.
    pub fn replica_of(&self, master: u16) -> u16 {
        let view = self.nodes_view(master);
        let id = &view.iter().find(|n| n.port == master).unwrap().id;
        view.iter().find(|n| n.master_id.as_deref() == Some(id)).expect("a replica").port
    }

    /// Cuts `master`'s replica off from it, as a broken link would, and
    /// waits until the replica says so: the master refuses its default
    /// user (the replica's) the replication commands and drops the link,
    /// so the replica's tries to come back fail. Returns the replica's port.
    pub fn cut_off_replica(&self, master: u16) -> u16 {
        let replica = self.replica_of(master);
        let refused = self.cli(master, &["ACL", "SETUSER", "default", "-psync", "-sync", "-replconf"]);
        assert_eq!(refused.trim(), "OK");
        self.cli(master, &["CLIENT", "KILL", "TYPE", "replica"]);
        self.until_link(replica, "down");
        replica
    }

    /// Lets the replica [`Cluster::cut_off_replica`] cut off back, and
    /// waits until it says its link is up. The link is dropped once more
    /// after the rule changes, so that the replica comes back with a whole
    /// handshake: one of its tries may have been refused only in part
    /// (REPLCONF refused, PSYNC let through once the rule changed), which
    /// leaves a replica that never catches up.
    pub fn let_replica_back(&self, master: u16, replica: u16) {
        let allowed = self.cli(master, &["ACL", "SETUSER", "default", "+psync", "+sync", "+replconf"]);
        assert_eq!(allowed.trim(), "OK");
        self.cli(master, &["CLIENT", "KILL", "TYPE", "replica"]);
        self.until_link(replica, "up");
    }

    /// Stops `master`'s replica from applying what the master sends, with
    /// its link kept up (`CLIENT PAUSE … WRITE` on the replica, which holds
    /// up its replication stream too; it still answers reads): the master
    /// counts it online, and it acknowledges only the offset it had, as a
    /// replica that lags does. Returns the replica's port;
    /// [`Cluster::resume_replica`] lets it catch up.
    pub fn pause_replica(&self, master: u16) -> u16 {
        let replica = self.replica_of(master);
        self.until_link(replica, "up");
        assert_eq!(self.cli(replica, &["CLIENT", "PAUSE", "60000", "WRITE"]).trim(), "OK");
        replica
    }

    /// Lets the replica [`Cluster::pause_replica`] paused catch up.
    pub fn resume_replica(&self, replica: u16) {
        assert_eq!(self.cli(replica, &["CLIENT", "UNPAUSE"]).trim(), "OK");
    }

    /// Waits until `replica` reports its link to its master `state` (`up`, `down`).
    fn until_link(&self, replica: u16, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let wanted = format!("master_link_status:{state}");
        while !self.cli(replica, &["INFO", "replication"]).contains(&wanted) {
            assert!(Instant::now() < deadline, "replica {replica}'s link not {state} within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap()
    }

    /// Moves slot `slot`, with its keys, to master `to`, as `redis-cli
    /// --cluster reshard` does: the slot is marked importing and migrating,
    /// its keys are moved with MIGRATE (clients meanwhile get ASK, and
    /// TRYAGAIN for scripts whose keys are split), then every master is
    /// told its new owner (clients get MOVED). Waits until the cluster agrees.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.masters().into_iter().find(|m| self.serves(*m, slot)).expect("a master serves the slot");
        let id = |port: u16| self.nodes_view(port).into_iter().find(|n| n.port == port).unwrap().id;
        let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
        assert_eq!(self.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]).trim(), "OK");
        assert_eq!(self.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]).trim(), "OK");
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.cli(from, &args);
            assert!(out.trim() == "OK" || out.trim() == "NOKEY", "MIGRATE: {out}");
        }
        // The new owner first, then the old one (which then redirects to
        // it), then the rest, as redis-cli does.
        let rest = self.masters().into_iter().filter(|m| *m != to && *m != from);
        for master in [to, from].into_iter().chain(rest) {
            assert_eq!(self.cli(master, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).trim(), "OK");
        }
        self.until_settled();
    }

    /// Whether master `port` serves `slot`.
    fn serves(&self, port: u16, slot: u16) -> bool {
        let view = self.nodes_view(port);
        view.iter().any(|n| n.port == port && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
    }

    /// Waits until every node says the cluster is ok, with every slot
    /// served and every node known, and sees a replica of each master
    /// (what Sluice's relay asks before it waits for one).
    fn until_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = self.nodes.iter().all(|n| {
                let info = self.cli(n.port, &["CLUSTER", "INFO"]);
                let view = self.nodes_view(n.port);
                let replicated = view
                    .iter()
                    .filter(|m| m.master && !m.slots.is_empty())
                    .all(|m| view.iter().any(|r| r.master_id.as_deref() == Some(m.id.as_str())));
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                    && replicated
            });
            let check = Command::new("redis-cli")
                .args(&self.cli_tls)
                .args(["--cluster", "check", &format!("127.0.0.1:{}", self.nodes[0].port)])
                .output()
                .is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("[ERR]"));
            if ok && check {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not settle within 30 s");
    }
}

/// One node, not yet joined; TLS only when `tls` holds its arguments.
fn node(tls: &[String]) -> RedisServer {
    let scheme = if tls.is_empty() { "redis" } else { "rediss" };
    RedisServer::start_on(bus_free_port, scheme, |port| {
        let port = port.to_string();
        let (plain, secure) = if tls.is_empty() { (port.as_str(), "0") } else { ("0", port.as_str()) };
        let args = [
            "--port",
            plain,
            "--tls-port",
            secure,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica syncs at once, not after the default 5 s that lets
            // others join one diskless transfer: until it has, a write
            // relayed to its master waits for it.
            "--repl-diskless-sync-delay",
            "0",
            // DEBUG RELOAD, to make a node load its data as a restart does.
            "--enable-debug-command",
            "local",
        ];
        args.iter().map(|s| s.to_string()).chain(tls.iter().cloned()).collect()
    })
}

/// A free port whose cluster-bus port (port + 10000) is free too.
fn bus_free_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    /// For a replica, its master's id.
    master_id: Option<String>,
    /// Slot ranges served, inclusive.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let port = parts.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        let master = parts.get(2)?.contains("master");
        let master_id = parts.get(3).filter(|m| **m != "-").map(|m| m.to_string());
        let slots = parts
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        Some(NodeLine { id: parts[0].to_owned(), port, master, master_id, slots })
    }
}
