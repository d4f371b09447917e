//! The fault audit (issue 15, in the spirit of Jepsen): a numbered load
//! runs through several `sluice run` hosts (the real binary) while one fault
//! is injected, and afterwards every number is accounted for: handled (its
//! publish is in the output stream, [`Fault::output`]; for the events that
//! write nothing, whose commit is a plain `XACK`, a host logged it),
//! dead-lettered (it is in the dead-letter stream), lost (neither) or
//! duplicated (written more than once), with how long the output took to
//! grow again after the fault.
//!
//! `benches/faults.rs` runs every fault at full size and prints the table;
//! `tests/it/faults.rs` runs short versions and asserts on the account.
//! Shared by both, so it prints nothing and panics only when the setup
//! itself fails (a host that never starts): a fault's damage is counted,
//! not asserted, here.

use super::cluster::Cluster;
use super::proxy::Proxy;
use super::redis_server::{RedisServer, free_port};
use super::sentinel::SentinelSet;
use rand::{Rng, SeedableRng};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamId, StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The stream the load goes to, and the one its handled events publish to
/// ([`Fault::output`]): `out`, or for [`Fault::TargetCrash`] `relayed`,
/// whose slot (7022) is served by another master than the input's (15578)
/// in the test cluster, as `out`'s (16101) is not.
const INPUT: &str = "in";
const OUTPUT: &str = "out";
const RELAYED: &str = "relayed";
/// The handler (and so the consumer group) every host runs.
const GROUP: &str = "h";
/// One event in this many is rejected, so the dead-letter path runs too.
const REJECT_EVERY: usize = 100;
/// One event in this many writes nothing: its handler logs its number
/// ([`QUIET_LOG`]) instead of publishing it, so its commit is a plain
/// `XACK`, not the script. None of them is rejected:
const QUIET_EVERY: usize = 4;
const _: () = assert!(REJECT_EVERY.is_multiple_of(QUIET_EVERY) && (REJECT_EVERY - 1) % QUIET_EVERY != 1);
/// What the handler logs for an event that writes nothing, before its
/// number: the line is written before the delivery is committed, so an
/// entry acknowledged without it was acknowledged without its handler.
const QUIET_LOG: &str = "audit: handled quietly ";
/// What a host logs when the commit script wrote nothing because the entry
/// was no longer its own: pending with another consumer, or no longer
/// pending at all. (The host logs the second alike whether another consumer
/// finished the entry or its own earlier try did, its reply lost.)
pub const LATE_COMMIT_WARNINGS: [&str; 2] = ["lost the entry to consumer", "finished by another consumer meanwhile"];
/// The hosts' `RUST_LOG`, unless `SLUICE_FAULTS_RUST_LOG` gives another:
/// warnings, and info for the handler's own lines.
const HOST_LOG: &str = "warn,sluice::plugin=info";
/// How often the output's length is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// How often the group's progress is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// How long a [`Fault::Reset`] holds the bytes in transit before resetting.
const RESET_HOLD: Duration = Duration::from_millis(300);
/// The least time from one reset's end to the next one's start.
const RESETS_APART: Duration = Duration::from_secs(1);

/// One fault, injected on its own while the load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a host chosen at random, at `times` random moments of
    /// the load (each waiting, a second at most, until that host holds an
    /// entry), each started again at once under the same consumer name, as
    /// a supervisor would.
    Kill {
        /// How many kills.
        times: usize,
    },
    /// SIGSTOP of `host-0` for `hold` (make it longer than `claim_idle`, so
    /// the others take its entries over), then SIGCONT: its late commits
    /// must be refused.
    Pause {
        /// How long it stays stopped.
        hold: Duration,
    },
    /// `kill -9` of redis-server (AOF on, with this `appendfsync`), started
    /// again on the same port and data folder.
    RedisRestart(Fsync),
    /// Every connection between the hosts and Redis reset (RST) by the
    /// proxy, at `times` random moments (each at least a second after the
    /// last one ended); each time after holding the bytes in transit for a
    /// moment, so that replies Redis has sent (entries it delivered,
    /// commits it applied) are lost with the connections.
    Reset {
        /// How many resets.
        times: usize,
    },
    /// Every connection between the hosts and Redis stalled by the proxy
    /// (open, but nothing forwarded) for `hold`.
    Stall {
        /// How long nothing is forwarded.
        hold: Duration,
    },
    /// `latency` added by the proxy to every chunk in each direction
    /// between the hosts and Redis, for `hold`.
    Latency {
        /// The delay per chunk, each way.
        latency: Duration,
        /// How long it lasts.
        hold: Duration,
    },
    /// The master serving the input stream's slot of a Redis Cluster
    /// (three masters, three replicas) failed over to its replica.
    Failover,
    /// The master serving the input stream's slot (and the output's: the
    /// two slots share a master in the test cluster) killed with SIGKILL;
    /// the cluster promotes its replica, and it comes back as the new
    /// master's replica. Replication is asynchronous, so Redis may lose
    /// what the replica had not received: events the producer was told were
    /// added (counted as lost by Redis), and the group's deliveries and
    /// acknowledgements, which only deliver again (so an event may be
    /// handled twice, as at-least-once allows).
    MasterCrash,
    /// The master the relay writes to (the output's, on another master
    /// than the input's) loses its replica's link for `behind`, while the
    /// load goes on, and is then killed with SIGKILL; the cluster promotes
    /// the replica, which has none of the writes of that while, and the
    /// old master comes back as its replica. The outbox beside the input
    /// still holds every write no replica had acknowledged, and the relay
    /// writes them again on the new master.
    TargetCrash {
        /// How long the replica is cut off before the kill.
        behind: Duration,
    },
    /// The primary behind Redis Sentinel (a primary, its replica and a
    /// sentinel; the hosts have `[redis] sentinels`) killed with SIGKILL;
    /// the sentinel promotes the replica after a second without an answer.
    /// As with [`Fault::MasterCrash`], Redis may lose what the replica had
    /// not received (counted as lost by Redis, or delivered again).
    SentinelCrash,
}

/// Redis's `appendfsync` for [`Fault::RedisRestart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every write is fsynced before Redis replies: a crash loses nothing
    /// acknowledged.
    Always,
    /// fsync once a second: a crash of the machine may lose the last
    /// second of acknowledged writes. (A crash of redis-server alone does
    /// not, as long as the kernel has its writes.)
    Everysec,
}

impl Fsync {
    fn arg(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
        }
    }
}

impl Fault {
    /// Its row's label in the table.
    pub fn label(&self) -> String {
        let s = |d: &Duration| format!("{} s", d.as_secs_f64());
        match self {
            Fault::Kill { times } => format!("kill -9 of a host, {times}×"),
            Fault::Pause { hold } => format!("SIGSTOP of a host for {}, then SIGCONT", s(hold)),
            Fault::RedisRestart(f) => format!("Redis kill -9 + restart, appendfsync {}", f.arg()),
            Fault::Reset { times } => format!("connections reset, {times}×"),
            Fault::Stall { hold } => format!("connections stalled for {}", s(hold)),
            Fault::Latency { latency, hold } => format!("+{} ms per chunk for {}", latency.as_millis(), s(hold)),
            Fault::Failover => "Redis Cluster failover".to_owned(),
            Fault::MasterCrash => "kill -9 of a Redis Cluster master, its replica promoted".to_owned(),
            Fault::TargetCrash { behind } => {
                format!("kill -9 of the relay's target master, its replica {} behind, promoted", s(behind))
            }
            Fault::SentinelCrash => "kill -9 of the primary behind Redis Sentinel, its replica promoted".to_owned(),
        }
    }

    /// The stream the handler publishes to.
    fn output(&self) -> &'static str {
        match self {
            Fault::TargetCrash { .. } => RELAYED,
            _ => OUTPUT,
        }
    }

    /// How many times it strikes at random moments (kills, resets); 0 for
    /// the others, which strike once a third of the way into the load.
    fn times(&self) -> usize {
        match self {
            Fault::Kill { times } | Fault::Reset { times } => *times,
            _ => 0,
        }
    }

    /// Whether the hosts reach Redis through the proxy for this fault.
    fn needs_proxy(&self) -> bool {
        matches!(self, Fault::Reset { .. } | Fault::Stall { .. } | Fault::Latency { .. })
    }
}

/// One audit run: the load, the fleet, and the fault.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The fault.
    pub fault: Fault,
    /// Events in the load, numbered from 0.
    pub events: usize,
    /// Events published per second, steadily.
    pub rate: u32,
    /// `sluice run` hosts, `host-0`, `host-1`, ...
    pub hosts: usize,
    /// `[host] claim_idle_ms`.
    pub claim_idle: Duration,
    /// The handler's `concurrency`.
    pub concurrency: usize,
    /// When set, each event computes this long before it publishes
    /// (`behave`'s `busy`), so events are in flight when the fault hits.
    pub busy: Option<Duration>,
    /// How long the load may take to drain after its last event is
    /// published and the fault is over; what is not done by then counts.
    pub drain: Duration,
    /// Seeds the random moments of kills and resets.
    pub seed: u64,
    /// With `Some(keys)`, the handler orders by key (`order_by = "data.k"`),
    /// event `n` carrying key `n % keys`, and the account counts outputs
    /// committed out of their key's order ([`Account::out_of_order`]).
    pub keys: Option<usize>,
    /// The folder holding `behave.wasm`.
    pub plugins: PathBuf,
}

impl Plan {
    /// A plan for `fault` with `events` at `rate`/s, two hosts, a 5 s
    /// `claim_idle_ms`, concurrency 16, no busy time, a minute to drain and a
    /// random seed.
    pub fn new(fault: Fault, events: usize, rate: u32, plugins: &Path) -> Plan {
        Plan {
            fault,
            events,
            rate,
            hosts: 2,
            claim_idle: Duration::from_secs(5),
            concurrency: 16,
            busy: None,
            drain: Duration::from_secs(60),
            seed: rand::random(),
            keys: None,
            plugins: plugins.to_owned(),
        }
    }

    /// How long publishing the load takes.
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.events as f64 / f64::from(self.rate))
    }

    /// Each delivery's `timeout_ms`: under `claim_idle_ms`, as the config
    /// requires (keep the busy time well under it).
    fn timeout(&self) -> Duration {
        (self.claim_idle / 2).min(Duration::from_secs(2))
    }
}

/// The account of one run.
#[derive(Debug, Clone, Default)]
pub struct Account {
    /// The fault's label.
    pub fault: String,
    /// Numbers published: those Redis acknowledged to the producer.
    pub events: usize,
    /// Distinct numbers in the output stream, and of the events that write
    /// nothing, those a host logged.
    pub handled: usize,
    /// Distinct numbers in the dead-letter stream.
    pub dead_lettered: usize,
    /// Published numbers neither handled nor dead-lettered.
    pub lost: usize,
    /// Of [`Account::lost`], those whose input entry is gone from the input
    /// stream too: Redis acknowledged the publish and then lost it. The
    /// rest were lost by Sluice.
    pub lost_by_redis: usize,
    /// Numbers written more than once to the output and the dead-letter stream
    /// together: a publish (or dead letter) written twice.
    pub duplicated: usize,
    /// With [`Plan::keys`]: outputs that follow, in the output stream, an
    /// output of a later number of the same key (their key's commits out of
    /// order).
    pub out_of_order: usize,
    /// Numbers that ended up where they were not meant to: an event not
    /// rejected dead-lettered (attempts exhausted during the fault, say), a
    /// rejected one handled, or one that writes nothing published.
    pub misplaced: usize,
    /// Entries in flight when the fault struck: pending with the killed or
    /// stopped host just after (summed over the kills), or pending in the
    /// group just before, for the other faults. A fault that hit nothing in
    /// flight tested little.
    pub held: usize,
    /// From the end of the fault (each kill or reset) until the output
    /// grew again; the worst. `None` if it never did.
    pub recover: Option<Duration>,
    /// From the end of the fault (each kill or reset) until every event
    /// published before it was finished (acknowledged); the worst.
    pub caught_up: Option<Duration>,
    /// Commits the commit script refused because the entry was taken over
    /// or already finished, as the hosts logged them
    /// ([`LATE_COMMIT_WARNINGS`]): a paused host's late commits, and a
    /// commit retried after its reply was lost.
    pub late_commits: usize,
    /// Connections the proxy reset ([`Fault::Reset`]).
    pub connections_reset: usize,
    /// Whether the load drained before the deadline.
    pub drained: bool,
    /// How long the whole run took, setup included.
    pub elapsed: Duration,
    /// Anything else worth saying: how long Redis was down, connections
    /// reset, a host that exited badly, the seed.
    pub notes: Vec<String>,
    /// Each host's log (`RUST_LOG=warn`), across its restarts.
    pub logs: Vec<String>,
    /// Each host's `/metrics` once the load drained (`None` if it did not answer).
    pub metrics: Vec<Option<String>>,
}

impl Account {
    /// Numbers Sluice lost: published, kept by Redis, and in neither `out`
    /// nor the dead-letter stream.
    pub fn lost_by_sluice(&self) -> usize {
        self.lost - self.lost_by_redis
    }

    /// One line with every count, for assertion messages.
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
        format!(
            "{}: events {}, handled {}, dead-lettered {}, lost {} (by Redis {}), duplicated {}, out of key order {}, misplaced {}, in flight when struck {}, recover {}, caught up {}, commits refused as taken over or finished {}, drained {}, took {:.1} s; {}",
            self.fault,
            self.events,
            self.handled,
            self.dead_lettered,
            self.lost,
            self.lost_by_redis,
            self.duplicated,
            self.out_of_order,
            self.misplaced,
            self.held,
            ms(self.recover),
            ms(self.caught_up),
            self.late_commits,
            self.drained,
            self.elapsed.as_secs_f64(),
            self.notes.join("; ")
        )
    }

    /// Host `i`'s counter `name` for handler `h` in its last `/metrics` (0
    /// if absent), e.g. `sluice_ownership_lost_total`.
    pub fn counter(&self, i: usize, name: &str) -> f64 {
        let line = format!("{name}{{handler=\"{GROUP}\"}} ");
        let body = self.metrics.get(i).cloned().flatten().unwrap_or_default();
        body.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    }
}

/// Runs `plan`: starts Redis (and the proxy, or a cluster), the hosts, the
/// load and the fault; waits for the load to drain; stops the hosts and
/// counts. Needs a multi-threaded Tokio runtime (Redis restarts and cluster
/// failovers block a worker while they wait).
pub async fn run(plan: &Plan) -> Account {
    let started = Instant::now();
    let mut redis = tokio::task::block_in_place(|| Deployment::start(&plan.fault));
    if plan.fault.needs_proxy()
        && let Deployment::Single { server, proxy } = &mut redis
    {
        *proxy = Some(Proxy::start(server.port).await);
    }
    let probe = redis.probe().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut hosts: Vec<Host> = (0..plan.hosts).map(|i| Host::new(dir.path(), i, &redis, plan)).collect();
    for h in &mut hosts {
        h.spawn();
    }
    until_ready(&hosts).await;

    let load = Arc::new(Mutex::new(Load::new(plan.events)));
    let growth = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_output(probe.clone(), plan.fault.output(), redis.dead_letters(), growth.clone()));
    let marks = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_marks(probe.clone(), marks.clone()));
    let load_started = Instant::now();
    let producer = tokio::spawn(produce(probe.clone(), plan.clone(), load.clone(), load_started));
    let mut notes = Vec::new();
    let struck = inject(plan, &mut redis, &mut hosts, &probe, &load, &marks, load_started, &mut notes).await;
    if producer.is_finished() {
        notes.push("the fault outlasted the load".to_owned());
    }
    producer.await.expect("the producer panicked");

    let last = load.lock().unwrap().last.clone();
    let drained = match &last {
        Some(last) => until_finished(&probe, last, redis.is_cluster(), Instant::now() + plan.drain, &marks).await,
        None => true,
    };
    watcher.abort();
    sampler.abort();
    let marks = std::mem::take(&mut *marks.lock().unwrap());
    let grew = std::mem::take(&mut *growth.lock().unwrap());
    let worst = |took: &dyn Fn(&Mark) -> Option<Duration>| {
        marks.iter().map(took).try_fold(Duration::ZERO, |worst, t| t.map(|t| worst.max(t)))
    };
    let caught_up = worst(&|m| m.caught_up.map(|t| t - m.at));
    let recover = worst(&|m| grew.iter().find(|t| **t > m.at).map(|t| *t - m.at));

    let metrics = hosts.iter().map(Host::scrape).collect();
    for h in &mut hosts {
        if let Some(problem) = h.stop().await {
            notes.push(problem);
        }
    }
    let logs: Vec<String> = hosts.iter().map(|h| std::fs::read_to_string(&h.log).unwrap_or_default()).collect();
    let late_commits =
        logs.iter().flat_map(|l| l.lines()).filter(|l| LATE_COMMIT_WARNINGS.iter().any(|w| l.contains(w))).count();
    let published: Vec<bool> = load.lock().unwrap().ids.iter().map(Option::is_some).collect();
    let account = count(&probe, &redis, plan, &published, &logs, &mut notes).await;
    notes.push(format!("seed {}", plan.seed));
    Account {
        fault: plan.fault.label(),
        held: struck.held,
        connections_reset: struck.reset,
        recover: if marks.is_empty() { None } else { recover },
        caught_up: if marks.is_empty() { None } else { caught_up },
        late_commits,
        drained,
        elapsed: started.elapsed(),
        logs,
        metrics,
        notes,
        ..account
    }
}

/// Where Redis is: one server (behind a proxy for network faults), a
/// cluster, or a primary behind Sentinel (the hosts ask the sentinel; the
/// audit's own connection, `primary`, is moved to the new primary after a
/// failover).
enum Deployment {
    Single { server: RedisServer, proxy: Option<Proxy> },
    Sentinel { set: Box<SentinelSet>, primary: std::sync::OnceLock<Arc<arc_swap::ArcSwap<ConnectionManager>>> },
    Cluster(Cluster),
}

impl Deployment {
    /// The Redis `fault` needs: AOF on for restarts, a cluster for a
    /// failover, else one server without persistence. (Blocks.)
    fn start(fault: &Fault) -> Deployment {
        match fault {
            Fault::Failover | Fault::MasterCrash | Fault::TargetCrash { .. } => Deployment::Cluster(Cluster::start()),
            Fault::RedisRestart(fsync) => {
                let args = ["--save", "", "--appendonly", "yes", "--appendfsync", fsync.arg()];
                Deployment::Single { server: RedisServer::start_with(&args), proxy: None }
            }
            Fault::SentinelCrash => {
                Deployment::Sentinel { set: Box::new(SentinelSet::start()), primary: Default::default() }
            }
            _ => Deployment::Single { server: RedisServer::start(), proxy: None },
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Deployment::Cluster(_))
    }

    /// The `[redis]` keys the hosts use: through the proxy if there is one.
    fn host_keys(&self) -> String {
        match self {
            Deployment::Single { proxy: Some(p), .. } => format!("url = \"{}\"", p.url()),
            Deployment::Single { server, .. } => format!("url = \"{}\"", server.url()),
            Deployment::Cluster(c) => format!("url = \"{}\"\ncluster = true", c.url()),
            Deployment::Sentinel { set, .. } => set.host_keys(),
        }
    }

    /// The default dead-letter stream of the input: in a cluster it shares
    /// the input's slot.
    fn dead_letters(&self) -> &'static str {
        match self {
            Deployment::Single { .. } | Deployment::Sentinel { .. } => "in:dlq",
            Deployment::Cluster(_) => "{in}:dlq",
        }
    }

    /// A connection straight to Redis (never through the proxy) for the
    /// producer and the checks; it reconnects after a restart.
    async fn probe(&self) -> Probe {
        match self {
            Deployment::Single { server, .. } => Probe::Single(manager(&server.url()).await),
            Deployment::Sentinel { set, primary } => {
                if let Some(current) = primary.get() {
                    return Probe::Moving(current.clone());
                }
                let current = manager(&set.server(set.primary_port()).url()).await;
                Probe::Moving(primary.get_or_init(|| Arc::new(arc_swap::ArcSwap::from_pointee(current))).clone())
            }
            Deployment::Cluster(c) => Probe::Cluster(c.conn().await),
        }
    }
}

/// A connection manager to the server at `url`, which reconnects after a
/// restart.
async fn manager(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(200));
    let client = redis::Client::open(url).unwrap();
    ConnectionManager::new_with_config(client, config).await.expect("connect to redis")
}

/// The audit's own connection to Redis: one server's, a cluster's, or the
/// primary's behind Sentinel (moved to the new one after a failover).
#[derive(Clone)]
enum Probe {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Moving(Arc<arc_swap::ArcSwap<ConnectionManager>>),
}

impl ConnectionLike for Probe {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Probe::Single(c) => c.req_packed_command(cmd),
            Probe::Cluster(c) => c.req_packed_command(cmd),
            Probe::Moving(c) => {
                let mut current = ConnectionManager::clone(&c.load());
                Box::pin(async move { current.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Probe::Single(c) => c.req_packed_commands(cmd, offset, count),
            Probe::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Probe::Moving(c) => {
                let mut current = ConnectionManager::clone(&c.load());
                Box::pin(async move { current.req_packed_commands(cmd, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Probe::Single(c) => c.get_db(),
            Probe::Cluster(c) => c.get_db(),
            Probe::Moving(c) => c.load().get_db(),
        }
    }
}

/// One `sluice run` process (the real binary), restartable, killed on drop.
struct Host {
    name: String,
    config: PathBuf,
    /// Its stderr, appended to across restarts.
    log: PathBuf,
    /// Its admin listener (`/metrics`).
    admin: u16,
    child: Option<Child>,
}

impl Host {
    /// Writes `host-<i>`'s config in `dir`: one `behave` handler `h` on
    /// `in`, publishing to the fault's output (ordered by key with
    /// [`Plan::keys`]).
    fn new(dir: &Path, i: usize, redis: &Deployment, plan: &Plan) -> Host {
        let name = format!("host-{i}");
        let admin = free_port();
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "[redis]\n{redis}\n\n[host]\nplugins = \"{plugins}\"\nconsumer = \"{name}\"\nclaim_idle_ms = {claim}\nadmin = \"127.0.0.1:{admin}\"\n\n\
             [handlers.{GROUP}]\nplugin = \"behave.wasm\"\nstreams = [\"{INPUT}\"]\npublish = [\"{output}\"]\nconcurrency = {concurrency}\ntimeout_ms = {timeout}\nbackoff_ms = 50\n{order_by}",
            order_by = if plan.keys.is_some() { "order_by = \"data.k\"\n" } else { "" },
            redis = redis.host_keys(),
            output = plan.fault.output(),
            plugins = plan.plugins.display(),
            claim = plan.claim_idle.as_millis(),
            concurrency = plan.concurrency,
            timeout = plan.timeout().as_millis(),
        );
        std::fs::write(&config, text).unwrap();
        Host { log: dir.join(format!("{name}.log")), name, config, admin, child: None }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--no-watch", "--config"])
            .arg(&self.config)
            // Info for the handler's own lines: the quiet events' numbers
            // (which a level given in `SLUICE_FAULTS_RUST_LOG` must keep).
            .env("RUST_LOG", std::env::var("SLUICE_FAULTS_RUST_LOG").unwrap_or(HOST_LOG.to_owned()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
    }

    /// SIGKILL, and waits for it to go.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) with `kill`.
    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            send_signal(child.id(), signal);
        }
    }

    /// Its `/metrics`, if it answers.
    fn scrape(&self) -> Option<String> {
        self.get("/metrics").map(|(_, body)| body)
    }

    /// (status, body) of `GET path` from its admin listener, if it answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let code = reply.split(' ').nth(1)?.parse().ok()?;
        reply.split_once("\r\n\r\n").map(|(_, body)| (code, body.to_owned()))
    }

    /// SIGTERM, and waits up to 30 s for it to drain and exit (then
    /// SIGKILL); says what went wrong, if anything did.
    async fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return None,
                Ok(Some(status)) => return Some(format!("{} exited with {status}", self.name)),
                _ if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Some(format!("{} did not stop within 30 s of SIGTERM", self.name));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Sends `signal` to process `pid` with `kill`.
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill9();
    }
}

/// Waits until every host says it is ready (`/readyz`: Redis answers and
/// its group exists), so the load starts with the whole fleet up. (A host
/// that blocks on an empty stream does not show in `XINFO CONSUMERS` yet.)
async fn until_ready(hosts: &[Host]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hosts.iter().all(|h| h.get("/readyz").is_some_and(|(code, _)| code == 200)) {
        if Instant::now() > deadline {
            let logs: Vec<String> = hosts.iter().map(|h| std::fs::read_to_string(&h.log).unwrap_or_default()).collect();
            panic!("the hosts were not ready within 60 s; their logs:\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The data of event `n`: reject it (one in [`REJECT_EVERY`]), or after
/// computing for `busy`, log it (one in [`QUIET_EVERY`]: it writes nothing)
/// or publish `{"n": n}` to `output`. Each carries `n` itself, so its dead
/// letter names it too, and with `keys`, its key `k`, `n % keys`.
fn event(n: usize, busy: Option<Duration>, keys: Option<usize>, output: &str) -> String {
    let ms = busy.map_or(0, |ms| ms.as_millis() as u64);
    let publish = json!([{"stream": output, "type": "n", "data": {"n": n}}]);
    let mut data = if n % REJECT_EVERY == REJECT_EVERY - 1 {
        json!({"action": "reject", "reason": "audit: rejected on purpose", "n": n})
    } else if quiet(n) {
        json!({"action": "busy", "ms": ms, "log": format!("{QUIET_LOG}{n}"), "n": n})
    } else if busy.is_some() {
        json!({"action": "busy", "ms": ms, "publish": publish, "n": n})
    } else {
        json!({"action": "publish", "publish": publish, "n": n})
    };
    if let Some(keys) = keys {
        data["k"] = json!(n % keys);
    }
    data.to_string()
}

/// How many outputs in `out` (`outputs`, numbers in stream order) follow an
/// output of a later number of their key (`n % keys`).
fn out_of_order(outputs: &[usize], keys: usize) -> usize {
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    let mut behind = 0;
    for &n in outputs {
        match last.get(&(n % keys)) {
            Some(&before) if before > n => behind += 1,
            _ => {
                last.insert(n % keys, n);
            }
        }
    }
    behind
}

/// What the producer has published: each number's entry id (`None` if
/// not yet, or never acknowledged), and the last id.
struct Load {
    ids: Vec<Option<String>>,
    last: Option<String>,
}

impl Load {
    fn new(events: usize) -> Load {
        Load { ids: vec![None; events], last: None }
    }
}

/// Publishes the load to `in` at the plan's rate, one event at a time.
/// An event whose reply did not come (Redis restarting, a connection cut)
/// may have landed: it is published again only if the input's last entry
/// is not it, so the input holds each number once.
async fn produce(mut probe: Probe, plan: Plan, load: Arc<Mutex<Load>>, started: Instant) {
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate));
    for n in 0..plan.events {
        tokio::time::sleep_until(started + period * n as u32).await;
        let data = event(n, plan.busy, plan.keys, plan.fault.output());
        let give_up = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(INPUT)
                .arg("*")
                .arg("type")
                .arg("n")
                .arg("data")
                .arg(&data)
                .query_async(&mut probe)
                .await;
            match added {
                Ok(id) => break Some(id),
                // Redirected or refused by a cluster mid-failover: not applied.
                Err(e) if e.redirect_node().is_some() || matches!(e.code(), Some("TRYAGAIN" | "CLUSTERDOWN")) => {}
                Err(_) => {
                    if let Some(id) = landed(&mut probe, n, give_up).await {
                        break Some(id);
                    }
                }
            }
            if Instant::now() > give_up {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut l = load.lock().unwrap();
        if let Some(id) = &id {
            l.last = Some(id.clone());
        }
        l.ids[n] = id;
    }
}

/// The id of event `n` if it is the input's last entry (the producer is
/// the input's only writer), asking until Redis answers or `give_up`.
async fn landed(probe: &mut Probe, n: usize, give_up: Instant) -> Option<String> {
    while Instant::now() < give_up {
        let last: redis::RedisResult<StreamRangeReply> =
            redis::cmd("XREVRANGE").arg(INPUT).arg("+").arg("-").arg("COUNT").arg(1).query_async(probe).await;
        match last {
            Ok(reply) => return reply.ids.first().filter(|e| number(e) == Some(n)).map(|e| e.id.clone()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

/// The `n` in an entry's data (a published `{"n": n}`, or an input event,
/// or its dead letter, which carry it too).
fn number(e: &StreamId) -> Option<usize> {
    let data: String = e.get("data")?;
    let v: serde_json::Value = serde_json::from_str(&data).ok()?;
    v["n"].as_u64().map(|n| n as usize)
}

/// Samples the length of `output` plus the dead-letter stream until
/// aborted, noting each moment it grew.
async fn sample_output(
    mut probe: Probe,
    output: &'static str,
    dead_letters: &'static str,
    growth: Arc<Mutex<Vec<Instant>>>,
) {
    let mut last = 0usize;
    loop {
        let out: redis::RedisResult<usize> = redis::cmd("XLEN").arg(output).query_async(&mut probe).await;
        let dead: redis::RedisResult<usize> = redis::cmd("XLEN").arg(dead_letters).query_async(&mut probe).await;
        if let (Ok(out), Ok(dead)) = (out, dead) {
            let now = out + dead;
            if now > last {
                growth.lock().unwrap().push(Instant::now());
            }
            // Lower after a Redis restart that lost writes: growth counts from there.
            last = now;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// When a fault ended (each kill or reset is one), the last entry
/// published by then, and when every entry up to it was finished.
struct Mark {
    at: Instant,
    upto: Option<(u64, u64)>,
    caught_up: Option<Instant>,
}

/// What a fault hit: [`Account::held`] and [`Account::connections_reset`].
#[derive(Default)]
struct Struck {
    held: usize,
    reset: usize,
}

/// Injects the plan's fault into the running load, adding a [`Mark`] to
/// `marks` each time it ends; returns when it is over, with what it hit.
#[allow(clippy::too_many_arguments)]
async fn inject(
    plan: &Plan,
    redis: &mut Deployment,
    hosts: &mut [Host],
    probe: &Probe,
    load: &Mutex<Load>,
    marks: &Mutex<Vec<Mark>>,
    started: Instant,
    notes: &mut Vec<String>,
) -> Struck {
    let mark = || {
        let upto = load.lock().unwrap().last.as_deref().map(parse_id);
        let at = Instant::now();
        marks.lock().unwrap().push(Mark { at, upto, caught_up: upto.is_none().then_some(at) });
    };
    let length = plan.duration();
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    // Random moments between a tenth and four fifths of the load, so that
    // each has load before and after it.
    let mut moments: Vec<Duration> =
        (0..plan.fault.times()).map(|_| length.mul_f64(rng.random_range(0.1..0.8))).collect();
    moments.sort();
    // A single fault starts a third of the way in.
    let third = started + length / 3;
    let mut struck = Struck::default();
    match plan.fault {
        Fault::Kill { .. } => {
            for at in moments {
                tokio::time::sleep_until(started + at).await;
                let i = rng.random_range(0..hosts.len());
                // Each kill hits entries in flight, if any come within a second.
                until_holding(probe, &hosts[i].name).await;
                hosts[i].kill9();
                mark();
                struck.held += holding(probe, Some(&hosts[i].name)).await;
                hosts[i].spawn();
            }
        }
        Fault::Pause { hold } => {
            tokio::time::sleep_until(third).await;
            until_holding(probe, &hosts[0].name).await;
            hosts[0].signal("STOP");
            struck.held = holding(probe, Some(&hosts[0].name)).await;
            tokio::time::sleep(hold).await;
            hosts[0].signal("CONT");
            mark();
        }
        Fault::RedisRestart(_) => {
            tokio::time::sleep_until(third).await;
            let Deployment::Single { server, .. } = redis else { unreachable!("one server") };
            struck.held = holding(probe, None).await;
            let down = Instant::now();
            tokio::task::block_in_place(|| server.restart());
            mark();
            notes.push(format!("Redis down {} ms", down.elapsed().as_millis()));
            if plan.fault == Fault::RedisRestart(Fsync::Everysec) {
                // Said with the row, whatever it lost: what everysec may lose is
                // Redis's promise, not Sluice's.
                notes.push(
                    "everysec may lose ~1 s of acknowledged writes if the machine crashes; \
                     a kill -9 of redis-server alone leaves its writes with the kernel"
                        .to_owned(),
                );
            }
        }
        Fault::Reset { .. } => {
            // A reset struck while the hosts recover from the one before
            // (two moments within its hold) would count in that one's
            // recovery, and be a fault the row does not name.
            let mut free_at = started;
            for at in moments {
                tokio::time::sleep_until((started + at).max(free_at)).await;
                struck.held += holding(probe, None).await;
                proxy(redis).stall();
                tokio::time::sleep(RESET_HOLD).await;
                struck.reset += proxy(redis).reset();
                proxy(redis).resume();
                mark();
                free_at = Instant::now() + RESETS_APART;
            }
            notes.push(format!("{} connections reset", struck.reset));
        }
        Fault::Stall { hold } => {
            tokio::time::sleep_until(third).await;
            struck.held = holding(probe, None).await;
            proxy(redis).stall();
            tokio::time::sleep(hold).await;
            proxy(redis).resume();
            mark();
        }
        Fault::Latency { latency, hold } => {
            tokio::time::sleep_until(third).await;
            struck.held = holding(probe, None).await;
            proxy(redis).set_latency(latency);
            tokio::time::sleep(hold).await;
            proxy(redis).set_latency(Duration::ZERO);
            mark();
        }
        Fault::Failover => {
            tokio::time::sleep_until(third).await;
            let Deployment::Cluster(cluster) = redis else { unreachable!("a cluster") };
            struck.held = holding(probe, None).await;
            let begun = Instant::now();
            tokio::task::block_in_place(|| cluster.failover(cluster.master_of(INPUT)));
            mark();
            notes.push(format!("failover and settling took {} ms", begun.elapsed().as_millis()));
        }
        Fault::MasterCrash => {
            tokio::time::sleep_until(third).await;
            let Deployment::Cluster(cluster) = redis else { unreachable!("a cluster") };
            struck.held = holding(probe, None).await;
            let master = tokio::task::block_in_place(|| cluster.master_of(INPUT));
            let (_, promoted_after) = tokio::task::block_in_place(|| cluster.crash_master(master));
            mark();
            notes.push(format!("replica promoted {} ms after the kill", promoted_after.as_millis()));
            // The killed master comes back as the new one's replica.
            tokio::task::block_in_place(|| cluster.restart_node(master));
        }
        Fault::TargetCrash { behind } => {
            tokio::time::sleep_until(third).await;
            let Deployment::Cluster(cluster) = redis else { unreachable!("a cluster") };
            struck.held = holding(probe, None).await;
            let master = tokio::task::block_in_place(|| {
                let master = cluster.master_of(RELAYED);
                assert_ne!(master, cluster.master_of(INPUT), "{RELAYED} and {INPUT} on one master");
                cluster.cut_off_replica(master);
                master
            });
            tokio::time::sleep(behind).await;
            let (_, promoted_after) = tokio::task::block_in_place(|| cluster.crash_master(master));
            mark();
            notes.push(format!(
                "replica cut off {} ms before the kill, promoted {} ms after it",
                behind.as_millis(),
                promoted_after.as_millis()
            ));
            // The killed master comes back as the new one's replica, with
            // the rule that cut it off gone (ACL rules set at run time).
            tokio::task::block_in_place(|| cluster.restart_node(master));
        }
        Fault::SentinelCrash => {
            tokio::time::sleep_until(third).await;
            let Deployment::Sentinel { set, primary } = redis else { unreachable!("Sentinel") };
            struck.held = holding(probe, None).await;
            let killed = Instant::now();
            let promoted = tokio::task::block_in_place(|| set.crash_primary());
            mark();
            let moved = manager(&set.server(promoted).url()).await;
            primary.get().expect("the probe was made").store(Arc::new(moved));
            notes.push(format!("replica promoted {} ms after the kill", killed.elapsed().as_millis()));
        }
    }
    struck
}

/// Entries pending in the group: with consumer `name`, or with any.
async fn holding(probe: &Probe, name: Option<&str>) -> usize {
    let pending: redis::RedisResult<StreamPendingReply> =
        redis::cmd("XPENDING").arg(INPUT).arg(GROUP).query_async(&mut probe.clone()).await;
    match (pending, name) {
        (Ok(StreamPendingReply::Data(p)), Some(name)) => {
            p.consumers.iter().find(|c| c.name == name).map_or(0, |c| c.pending)
        }
        (Ok(StreamPendingReply::Data(p)), None) => p.count,
        _ => 0,
    }
}

/// Waits (a second at most) until consumer `name` has an entry pending that
/// was delivered within the last few milliseconds: one that has most of its
/// handling still ahead, so a fault struck now finds it in flight (an entry
/// found late in its run may be committed before the fault lands).
async fn until_holding(probe: &Probe, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !holding_fresh(probe, name).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether consumer `name` has an entry pending delivered at most 3 ms ago.
async fn holding_fresh(probe: &Probe, name: &str) -> bool {
    let rows: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
        .arg(INPUT)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg(name)
        .query_async(&mut probe.clone())
        .await;
    rows.is_ok_and(|rows| rows.iter().any(|(_, _, idle_ms, _)| *idle_ms <= 3))
}

fn proxy(redis: &Deployment) -> &Proxy {
    match redis {
        Deployment::Single { proxy: Some(p), .. } => p,
        _ => unreachable!("network faults run behind the proxy"),
    }
}

/// Parses `ms-seq`.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// How far the group has finished the input: every entry up to the first
/// is read, and the second is the first still pending, if any.
async fn progress(probe: &mut Probe) -> Option<((u64, u64), Option<(u64, u64)>)> {
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO").arg("GROUPS").arg(INPUT).query_async(probe).await.ok()?;
    let group = groups.groups.into_iter().find(|g| g.name == GROUP)?;
    let pending: StreamPendingReply = redis::cmd("XPENDING").arg(INPUT).arg(GROUP).query_async(probe).await.ok()?;
    let first_pending = match pending {
        StreamPendingReply::Data(p) if p.count > 0 => Some(parse_id(&p.start_id)),
        _ => None,
    };
    Some((parse_id(&group.last_delivered_id), first_pending))
}

/// Whether every entry up to `upto` is finished, by [`progress`].
fn finished(progress: ((u64, u64), Option<(u64, u64)>), upto: (u64, u64)) -> bool {
    let (read, first_pending) = progress;
    read >= upto && first_pending.is_none_or(|p| p > upto)
}

/// Notes in each mark not caught up yet whether `progress` shows its
/// entries all finished now.
fn note_caught_up(marks: &Mutex<Vec<Mark>>, progress: ((u64, u64), Option<(u64, u64)>)) {
    let now = Instant::now();
    for m in marks.lock().unwrap().iter_mut().filter(|m| m.caught_up.is_none()) {
        if m.upto.is_some_and(|upto| finished(progress, upto)) {
            m.caught_up = Some(now);
        }
    }
}

/// Notes, until aborted, when each mark's entries are all finished.
async fn watch_marks(mut probe: Probe, marks: Arc<Mutex<Vec<Mark>>>) {
    loop {
        if let Some(p) = progress(&mut probe).await {
            note_caught_up(&marks, p);
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Waits until the group has finished every input entry up to `upto` (and,
/// with `outbox`, a cluster's outbox is relayed), noting marks that catch up
/// meanwhile; `false` at `deadline`.
async fn until_finished(probe: &Probe, upto: &str, outbox: bool, deadline: Instant, marks: &Mutex<Vec<Mark>>) -> bool {
    let (upto, outbox_key) = (parse_id(upto), format!("sluice:outbox:{{{INPUT}}}"));
    let mut probe = probe.clone();
    loop {
        if let Some(p) = progress(&mut probe).await {
            note_caught_up(marks, p);
            let relayed = async {
                let queued: redis::RedisResult<usize> =
                    redis::cmd("XLEN").arg(&outbox_key).query_async(&mut probe).await;
                !outbox || queued == Ok(0)
            };
            if finished(p, upto) && relayed.await {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Every entry of `key`, read a page at a time.
async fn all_entries(probe: &Probe, key: &str) -> Vec<StreamId> {
    let mut all = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut probe.clone())
            .await
            .unwrap_or_else(|e| panic!("XRANGE {key}: {e}"));
        let Some(last) = page.ids.last() else { return all };
        from = format!("({}", last.id);
        all.extend(page.ids);
    }
}

/// How often each number occurs in `key`.
async fn numbers(probe: &Probe, key: &str, notes: &mut Vec<String>) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    let mut unnumbered = 0;
    for e in all_entries(probe, key).await {
        match number(&e) {
            Some(n) => *seen.entry(n).or_default() += 1,
            None => unnumbered += 1,
        }
    }
    if unnumbered > 0 {
        notes.push(format!("{unnumbered} entries of {key} carry no number"));
    }
    seen
}

/// Whether event `n` writes nothing (see [`QUIET_EVERY`]).
fn quiet(n: usize) -> bool {
    n % QUIET_EVERY == 1
}

/// The numbers of the events that write nothing that the hosts' `logs`
/// say were handled: the handler logged the number ([`QUIET_LOG`], its
/// last act before it returns), and the host did not count that delivery
/// (its host, entry id and attempt) a failure after all (a deadline that
/// passed as it returned, say). Failures are logged before anything is
/// committed, so a delivery acknowledged after failing is not counted.
fn handled_quietly(logs: &[String]) -> std::collections::BTreeSet<usize> {
    // The entry id and attempt of the event span a line was logged in.
    let delivery = |line: &str| -> Option<(String, u32)> {
        let field = |name: &str| {
            let at = line.find(&format!(" {name}="))? + name.len() + 2;
            line[at..].split([' ', '}']).next()
        };
        Some((field("id")?.to_owned(), field("attempt")?.parse().ok()?))
    };
    let digits = |text: &str| -> Option<usize> {
        text[..text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len())].parse().ok()
    };
    let mut handled = std::collections::BTreeSet::new();
    for log in logs {
        let failed: std::collections::BTreeSet<(String, u32)> = log
            .lines()
            .filter_map(|line| delivery(line).map(|(id, attempt)| (line, id, attempt)))
            .filter(|(line, _, attempt)| {
                line.contains(&format!("attempt {attempt} failed:"))
                    || line.contains("dead-lettered after")
                    || line.contains("cannot dead-letter")
            })
            .map(|(_, id, attempt)| (id, attempt))
            .collect();
        for line in log.lines().filter(|l| l.contains(" sluice::plugin: ")) {
            let Some(at) = line.find(QUIET_LOG) else { continue };
            let (Some(n), Some(d)) = (digits(&line[at + QUIET_LOG.len()..]), delivery(line)) else { continue };
            if !failed.contains(&d) {
                handled.insert(n);
            }
        }
    }
    handled
}

/// Counts: which published numbers were handled (reached the output, or
/// were logged if they write nothing) or reached the dead-letter stream,
/// how often, and which are gone from the input too.
async fn count(
    probe: &Probe,
    redis: &Deployment,
    plan: &Plan,
    published: &[bool],
    logs: &[String],
    notes: &mut Vec<String>,
) -> Account {
    let (input, output) = (numbers(probe, INPUT, notes).await, plan.fault.output());
    let out_of_order = match plan.keys {
        Some(keys) => {
            out_of_order(&all_entries(probe, output).await.iter().filter_map(number).collect::<Vec<_>>(), keys)
        }
        None => 0,
    };
    let out = numbers(probe, output, notes).await;
    let logged = handled_quietly(logs);
    let dead = numbers(probe, redis.dead_letters(), notes).await;
    let twice_in = input.values().filter(|c| **c > 1).count();
    if twice_in > 0 {
        notes.push(format!("{twice_in} numbers in the input twice (the producer's doing)"));
    }
    let never = published.iter().filter(|p| !**p).count();
    if never > 0 {
        notes.push(format!("{never} events never acknowledged to the producer (not counted)"));
    }
    let times = |m: &BTreeMap<usize, usize>, n: usize| m.get(&n).copied().unwrap_or(0);
    let handled = out.keys().chain(&logged).collect::<std::collections::BTreeSet<_>>().len();
    let mut a = Account { handled, dead_lettered: dead.len(), out_of_order, ..Account::default() };
    for (n, _) in published.iter().enumerate().filter(|(_, p)| **p) {
        a.events += 1;
        // An event that writes nothing may be logged more than once (run
        // again after a fault, as at-least-once allows); nothing is written
        // twice.
        let o = match quiet(n) {
            true => usize::from(logged.contains(&n)) + times(&out, n),
            false => times(&out, n),
        };
        let d = times(&dead, n);
        if o + d == 0 {
            a.lost += 1;
            if times(&input, n) == 0 {
                a.lost_by_redis += 1;
            }
        }
        if o + d > 1 {
            a.duplicated += 1;
        }
        let rejected = n % REJECT_EVERY == REJECT_EVERY - 1;
        if (rejected && o > 0) || (!rejected && d > 0) || (quiet(n) && times(&out, n) > 0) {
            a.misplaced += 1;
        }
    }
    let strays =
        out.keys().chain(dead.keys()).chain(&logged).filter(|n| !published.get(**n).copied().unwrap_or(false)).count();
    if strays > 0 {
        notes.push(format!("{strays} outputs for numbers the producer never saw acknowledged"));
    }
    a
}

#[test]
fn an_output_behind_a_later_one_of_its_key_is_out_of_order() {
    // Keys of 3: 0, 3 and 6 share key 0; 4 shares key 1 with 1 and 7.
    assert_eq!(out_of_order(&[0, 1, 3, 4, 6, 7], 3), 0);
    assert_eq!(out_of_order(&[0, 6, 3, 1, 4], 3), 1);
    assert_eq!(out_of_order(&[6, 3, 0, 7, 4, 1], 3), 4);
}

#[test]
fn a_quiet_event_counts_as_handled_only_for_a_delivery_that_did_not_fail() {
    let line = |level: &str, id: &str, attempt: u32, target: &str, message: &str| {
        format!(
            "2026-11-27T20:05:24.066853Z  {level} event{{handler=h stream=in id={id} attempt={attempt} correlation_id=\"{id}\"}}: {target}: {message}\n"
        )
    };
    let host = [
        // Logged, then failed on return (a deadline that passed): not handled.
        line("INFO", "1-0", 1, "sluice::plugin", &format!("{QUIET_LOG}5")),
        line("WARN", "1-0", 1, "sluice::consumer::finish", "attempt 1 failed: timed out; retrying in 50 ms"),
        // Another number that 5 begins: handled.
        line("INFO", "2-0", 1, "sluice::plugin", &format!("{QUIET_LOG}51")),
        // A commit that failed once after the handler succeeded is not a
        // failed attempt.
        line("INFO", "3-0", 1, "sluice::plugin", &format!("{QUIET_LOG}9")),
        line("WARN", "3-0", 1, "sluice::consumer::finish", "ack failed: connection reset; trying again"),
        // The number in the event's data, echoed elsewhere: not handled.
        line("WARN", "4-0", 1, "sluice::consumer::finish", &format!("data {{\"log\":\"{QUIET_LOG}13\"}}")),
    ]
    .concat();
    assert_eq!(handled_quietly(std::slice::from_ref(&host)), [9, 51].into());
    // The same number handled on a later attempt, on another host.
    let other = line("INFO", "1-0", 2, "sluice::plugin", &format!("{QUIET_LOG}5"));
    assert_eq!(handled_quietly(&[host, other]), [5, 9, 51].into());
}
