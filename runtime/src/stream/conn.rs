//! Reaching Redis: one server, the primary that Redis Sentinel names, or a
//! Redis Cluster, over plain TCP, TLS (server-authenticated or mutual, with
//! the system roots or a private CA) or a Unix socket, as an ACL user or the
//! default one. Connections by role: a shared, auto-reconnecting one for
//! commands, and a dedicated one per blocking reader. Failures to connect
//! are explained in one line that names the URL (password masked). A
//! connection that reaches a replica (a failover that moved the address, as
//! managed Redis services do) is replaced, whichever its role ([`Shared`],
//! [`reached_a_replica`]); behind Sentinel, so is one that failed, and every
//! new connection goes to the primary the sentinels name then
//! ([`Sentinels`]).

use super::error::{Context, Error};
use crate::config::RedisSettings;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, Value,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Response timeout for ordinary commands (acks, publishes, claims).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection timeout for every connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is probed after this long without traffic, then every
/// [`KEEPALIVE_INTERVAL`], and dropped after [`KEEPALIVE_PROBES`] probes go
/// unanswered: a connection whose peer vanished (a failover that moved an
/// address, a NAT or load balancer that forgot it) fails instead of waiting
/// for the kernel's default of two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// See [`KEEPALIVE_IDLE`].
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
const KEEPALIVE_PROBES: u32 = 3;
/// A connection with data sent and not acknowledged by the peer's kernel for
/// this long is dropped (`TCP_USER_TIMEOUT`): without it, a half-open
/// connection keeps retransmitting for about 15 minutes, and every command
/// on it times out meanwhile. A busy Redis still acknowledges at once; only
/// a peer that is gone does not.
const USER_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a cluster command is retried (after MOVED, ASK, TRYAGAIN, or a
/// node that went away) before it fails.
const CLUSTER_RETRIES: u32 = 16;

/// A connection to Redis, whichever kind: every command in `stream` goes
/// through one of these.
#[derive(Clone)]
pub enum Conn {
    /// One server, multiplexed and auto-reconnecting.
    Managed(Arc<Shared>),
    /// One server, a connection of its own (a blocking reader).
    Dedicated(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node serving its keys'
    /// slot; MOVED, ASK and TRYAGAIN are followed, and the topology is
    /// refreshed when it changes (resharding, failover).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => Box::pin(c.command(cmd)),
            Conn::Dedicated(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => Box::pin(c.commands(cmd, offset, count)),
            Conn::Dedicated(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.current.load().get_db(),
            Conn::Dedicated(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Sends `pipe` to the master serving `slot` (on one server, to it)
    /// in one round trip on one connection, and returns each command's
    /// reply, error replies included. For a script followed by `WAIT`:
    /// redis-rs would send a `WAIT` alone to every master, and `WAIT` waits
    /// only for what the connection it comes on did, so it must share the
    /// script's connection, which a `WAIT` sent after it may not (redis-rs
    /// replaces a connection that failed).
    pub(crate) async fn at_master_of(&mut self, slot: u16, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let count = pipe.cmd_iter().count();
        match self {
            Conn::Cluster(c) => {
                let node = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                c.route_pipeline(pipe.clone(), 0, count, node).await
            }
            other => other.req_packed_commands(pipe, 0, count).await,
        }
    }
}

/// The connection every task shares to one server: redis-rs's
/// `ConnectionManager`, which opens a new connection when one fails, made
/// whole where it would not:
/// - a connection that reaches a replica (`READONLY`): a failover that
///   moved the server's address (a managed service's DNS name, a virtual
///   IP) leaves the old connection open to the demoted primary, where
///   every write is refused for as long as it stays open;
/// - a connection that could not be opened for a reason other than the
///   network (a login refused while an ACL user is being changed): the
///   manager keeps that failure and returns it to every later command,
///   without trying again;
/// - behind Sentinel, a connection that failed (refused, dropped, timed
///   out): the manager would open the next one to the same address, where
///   the primary may no longer be.
///
/// Either way the manager is replaced by a new one, which connects (and
/// resolves the address, or asks the sentinels where the primary is) afresh
/// on its first command. Commands in flight finish on the old one.
pub struct Shared {
    source: Source,
    config: ConnectionManagerConfig,
    /// `url`, password masked, for messages.
    shown: String,
    current: arc_swap::ArcSwap<ConnectionManager>,
}

impl Shared {
    /// A manager of connections to the server `source` names, connected now.
    async fn connect(source: Source, config: ConnectionManagerConfig, shown: String) -> RedisResult<Shared> {
        let manager = ConnectionManager::new_with_config(source.client_for_new().await?, config.clone()).await?;
        Ok(Shared { source, config, shown, current: arc_swap::ArcSwap::from_pointee(manager) })
    }

    /// One command, on the current connection.
    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let manager = self.current.load_full();
        let result = (*manager).clone().send_packed_command(cmd).await;
        self.replace_if_unusable(&manager, result.as_ref().map(std::slice::from_ref)).await;
        result
    }

    /// A pipeline, on the current connection.
    async fn commands(&self, cmd: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let manager = self.current.load_full();
        let result = (*manager).clone().send_packed_commands(cmd, offset, count).await;
        self.replace_if_unusable(&manager, result.as_ref().map(Vec::as_slice)).await;
        result
    }

    /// Replaces `manager` (unless another task has already) if `result`,
    /// which came from it, says its connection is of no more use. Behind
    /// Sentinel, a connection that failed is of no more use either: the
    /// manager would open the next one to the same address, where the
    /// primary may no longer be.
    async fn replace_if_unusable(
        &self,
        manager: &Arc<ConnectionManager>,
        result: Result<&[Value], &redis::RedisError>,
    ) {
        let replica = match result {
            Ok(replies) => replies.iter().any(|r| matches!(r, Value::ServerError(e) if e.code() == READONLY)),
            Err(e) => reached_a_replica(e),
        };
        let lost = matches!(self.source, Source::Sentinels(_)) && matches!(result, Err(e) if connection_failed(e));
        if !replica && !lost && !matches!(result, Err(e) if opening_failed(e)) {
            return;
        }
        if !Arc::ptr_eq(&self.current.load(), manager) {
            return; // another task has replaced it already
        }
        // Behind Sentinel: where the primary is since this failure.
        let client = match self.source.client(Instant::now()).await {
            Ok(client) => client,
            Err(e) => return debug!("asking the sentinels of {} where the primary is: {e}", self.shown),
        };
        let fresh = match ConnectionManager::new_lazy_with_config(client, self.config.clone()) {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => return debug!("a new connection manager for Redis at {}: {e}", self.shown),
        };
        let before = self.current.compare_and_swap(manager, fresh);
        if !Arc::ptr_eq(&before, manager) {
            return;
        }
        match replica {
            true => warn!(
                "the shared connection to Redis at {} reaches a replica (READONLY: a failover?); opening a new one",
                self.shown
            ),
            false => debug!(
                "the shared connection to Redis at {} failed or could not be opened; trying a new one",
                self.shown
            ),
        }
    }
}

/// Where connections to one server are opened: one address, or wherever
/// the sentinels say the primary is.
#[derive(Clone)]
// One per host, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    Fixed(Client),
    Sentinels(Arc<Sentinels>),
}

impl Source {
    /// A client of the server to connect to; behind Sentinel, where the
    /// sentinels named the primary at `asked_since` or later.
    async fn client(&self, asked_since: Instant) -> RedisResult<Client> {
        match self {
            Source::Fixed(client) => Ok(client.clone()),
            Source::Sentinels(s) => s.primary(asked_since).await,
        }
    }

    /// A client for a new connection: behind Sentinel, where the sentinels
    /// named the primary within the last [`SENTINELS_TRUSTED`].
    async fn client_for_new(&self) -> RedisResult<Client> {
        self.client(Instant::now().checked_sub(SENTINELS_TRUSTED).unwrap_or_else(Instant::now)).await
    }
}

/// How long the primary the sentinels named is used for new connections
/// without asking them again: long enough that connections opened at
/// once (a reply reader per request, readers after a failure) share one
/// question, short enough that a reader reconnecting after a failover
/// soon reaches the new primary.
const SENTINELS_TRUSTED: Duration = Duration::from_secs(1);

/// The sentinels of one primary (`[redis] sentinels`, with `url`'s host
/// the name they know it by): asked where the primary is when a connection
/// is opened (unless asked within [`SENTINELS_TRUSTED`]) and when the
/// shared one fails, so that after a failover connections reach the replica
/// the sentinels promoted. One question at a time: callers that wait for it
/// take its answer. redis-rs checks that the server they name says it is a
/// primary (`ROLE`) before it is used.
struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The primary's name.
    name: String,
    /// What they last answered.
    known: std::sync::Mutex<Option<Named>>,
}

/// A primary the sentinels named: a client of it, its address, and when.
struct Named {
    client: Client,
    at: String,
    asked: Instant,
}

impl Sentinels {
    /// The sentinels at `sentinels` (URLs, with their own credentials and
    /// TLS), of the primary that `url` names by its host, reached with
    /// `url`'s user, password, database and TLS; `certs` go to whichever
    /// of the two speaks TLS.
    fn new(url: &str, sentinels: &[String], certs: Option<TlsCertificates>) -> RedisResult<Sentinels> {
        let invalid =
            |what: &str| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "", what.to_owned()));
        let named = redis::parse_redis_url(url).ok_or_else(|| invalid("not a redis:// URL"))?;
        let name = named.host_str().ok_or_else(|| invalid("no primary name as the URL's host"))?.to_owned();
        let primary = connection_info(url)?;
        let infos = sentinels.iter().map(|s| s.as_str().into_connection_info()).collect::<RedisResult<Vec<_>>>()?;
        let tls = |addr: &redis::ConnectionAddr| matches!(addr, redis::ConnectionAddr::TcpTls { .. });
        let mut builder =
            SentinelClientBuilder::new(infos.iter().map(|i| i.addr().clone()), &name, SentinelServerType::Master)?
                .set_client_to_redis_tcp_settings(tcp_settings())
                .set_client_to_sentinel_tcp_settings(tcp_settings())
                .set_client_to_redis_db(primary.redis_settings().db())
                .set_client_to_redis_protocol(primary.redis_settings().protocol());
        if let Some(user) = primary.redis_settings().username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = primary.redis_settings().password() {
            builder = builder.set_client_to_redis_password(password);
        }
        // Certificates only for what speaks TLS: redis-rs refuses them for
        // plain TCP.
        if tls(primary.addr()) {
            builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = certs.clone() {
                builder = builder.set_client_to_redis_certificates(certs);
            }
        }
        // The sentinels' own credentials and TLS: the first URL's (the
        // config requires every sentinel URL to have the same).
        if let Some(first) = infos.first() {
            if let Some(user) = first.redis_settings().username() {
                builder = builder.set_client_to_sentinel_username(user);
            }
            if let Some(password) = first.redis_settings().password() {
                builder = builder.set_client_to_sentinel_password(password);
            }
            if tls(first.addr()) {
                builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                if let Some(certs) = certs {
                    builder = builder.set_client_to_sentinel_certificates(certs);
                }
            }
        }
        Ok(Sentinels { client: tokio::sync::Mutex::new(builder.build()?), name, known: Default::default() })
    }

    /// A client of the primary where the sentinels named it at `asked_since`
    /// or later: their last answer if it is that recent, else a new one
    /// (within [`CONNECT_TIMEOUT`] of this caller's turn to ask). Says so
    /// when it is somewhere new.
    async fn primary(&self, asked_since: Instant) -> RedisResult<Client> {
        let recent = || {
            let known = self.known.lock().unwrap();
            known.as_ref().filter(|n| n.asked >= asked_since).map(|n| n.client.clone())
        };
        if let Some(client) = recent() {
            return Ok(client);
        }
        let mut sentinels = self.client.lock().await;
        // Another caller may have asked while this one waited.
        if let Some(client) = recent() {
            return Ok(client);
        }
        let asked = Instant::now();
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, sentinels.async_get_client()).await {
            Ok(client) => client?,
            Err(_) => {
                let why = format!("no sentinel named the primary {} within {} s", self.name, CONNECT_TIMEOUT.as_secs());
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why).into());
            }
        };
        let at = client.get_connection_info().addr().to_string();
        let named = Named { client: client.clone(), at: at.clone(), asked };
        let before = self.known.lock().unwrap().replace(named);
        if let Some(before) = before.filter(|b| b.at != at) {
            warn!("the sentinels name a new primary for {}: {at} (was {}); connecting there", self.name, before.at);
        }
        Ok(client)
    }
}

/// Whether `e` says the connection failed (refused, dropped, timed out),
/// not that the server answered with an error.
pub(crate) fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// The error code of a write sent to a replica.
const READONLY: &str = "READONLY";

/// Whether `e` says the server that answered is a replica, so writes (and
/// `XREADGROUP`) on this connection are refused until it is replaced: a
/// failover that kept the address of the server it demoted.
pub fn reached_a_replica(e: &redis::RedisError) -> bool {
    e.code() == Some(READONLY)
}

/// Whether `e` is a failure to open a connection that is not the network's
/// (redis-rs reports any error reply to its login as a failed
/// authentication).
fn opening_failed(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
}

/// How to open connections: to one server, or to a cluster.
#[derive(Clone)]
// One per host, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Connector {
    Server(Source),
    Cluster(Box<ClusterConnector>),
}

/// What opening cluster connections takes: a client for ordinary ones, and
/// the seed and certificates to build clients with longer timeouts.
#[derive(Clone)]
struct ClusterConnector {
    client: ClusterClient,
    url: String,
    certs: Option<TlsCertificates>,
}

/// A Redis deployment: how to open connections to it, and one shared
/// connection for everything that does not block.
#[derive(Clone)]
pub struct Redis {
    connector: Connector,
    /// `url`, password masked, for messages.
    shown: String,
    /// Shared by every task; reconnects on its own.
    pub conn: Conn,
}

impl Redis {
    /// Connects to the Redis at `url` (from `[redis] url`, or the embedded
    /// server's) as `settings` say: one server, the primary its sentinels
    /// name, or a cluster seed; TLS certificates. Fails with one line
    /// naming the URL and the reason.
    pub async fn connect(url: &str, settings: &RedisSettings) -> Result<Redis, Error> {
        let shown = match settings.sentinels.is_empty() {
            true => redact(url),
            false => format!("{} (the primary its sentinels name)", redact(url)),
        };
        let what = || format!("connecting to Redis at {shown}");
        let certs = certificates(settings).map_err(|e| Error::new(what(), e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        let (connector, conn) = match settings.cluster {
            false => {
                let source = match settings.sentinels.is_empty() {
                    true => Source::Fixed(client(url, certs).context(what)?),
                    false => {
                        Source::Sentinels(Arc::new(Sentinels::new(url, &settings.sentinels, certs).context(what)?))
                    }
                };
                let conn =
                    Shared::connect(source.clone(), config, shown.clone()).await.map_err(|e| explained(what(), e))?;
                (Connector::Server(source), Conn::Managed(Arc::new(conn)))
            }
            true => {
                let client = cluster_client(url, certs.clone(), COMMAND_TIMEOUT).context(what)?;
                let conn = match client.get_async_connection().await {
                    Ok(conn) => conn,
                    Err(e) => return Err(explained(what(), seed_error(url, certs).await.unwrap_or(e))),
                };
                (
                    Connector::Cluster(Box::new(ClusterConnector { client, url: url.to_owned(), certs })),
                    Conn::Cluster(conn),
                )
            }
        };
        let mut redis = Redis { connector, shown, conn };
        redis.ping().await?;
        Ok(redis)
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connector, Connector::Cluster(_))
    }

    /// The URL, password masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `PING`, on the shared connection: fails with the reason (a wrong
    /// password, a user without the permission, a dead server).
    pub async fn ping(&mut self) -> Result<(), Error> {
        let what = || format!("PING to Redis at {}", self.shown);
        let reply: Result<String, redis::RedisError> = redis::cmd("PING").query_async(&mut self.conn).await;
        reply.map(drop).map_err(|e| explained(what(), e))
    }

    /// A connection of its own for blocking reads of up to `block`: its
    /// response timeout is the block plus the command timeout (the default
    /// 500 ms would cut every blocking read; none at all would hang on a
    /// dead connection).
    pub async fn blocking_connection(&self, block: Duration) -> Result<Conn, Error> {
        let what = || format!("opening a reader connection to Redis at {}", self.shown);
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        match &self.connector {
            Connector::Server(source) => {
                let client = source.client_for_new().await.context(what)?;
                Ok(Conn::Dedicated(client.get_multiplexed_async_connection_with_config(&config).await.context(what)?))
            }
            Connector::Cluster(c) => {
                let client = cluster_client(&c.url, c.certs.clone(), block + COMMAND_TIMEOUT).context(what)?;
                Ok(Conn::Cluster(client.get_async_connection().await.context(what)?))
            }
        }
    }

    /// A fresh cluster client's connection, or a new multiplexed one: for a
    /// caller that wants a connection of its own without blocking reads.
    pub async fn own_connection(&self) -> Result<Conn, Error> {
        let what = || format!("opening a connection to Redis at {}", self.shown);
        match &self.connector {
            Connector::Server(source) => {
                let client = source.client_for_new().await.context(what)?;
                Ok(Conn::Dedicated(client.get_multiplexed_async_connection().await.context(what)?))
            }
            Connector::Cluster(c) => Ok(Conn::Cluster(c.client.get_async_connection().await.context(what)?)),
        }
    }
}

/// How every connection's socket is set: no Nagle delay (a command is sent
/// at once, not held back while an earlier one is unacknowledged), and the
/// keepalive and user timeout above.
fn tcp_settings() -> TcpSettings {
    let keepalive =
        TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES);
    TcpSettings::default().set_nodelay(true).set_keepalive(keepalive).set_user_timeout(USER_TIMEOUT)
}

/// `url`'s connection info, with [`tcp_settings`].
fn connection_info(url: &str) -> Result<ConnectionInfo, redis::RedisError> {
    Ok(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

/// A client of the one server at `url`, with `certs` if any.
fn client(url: &str, certs: Option<TlsCertificates>) -> Result<Client, redis::RedisError> {
    let info = connection_info(url)?;
    match certs {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
}

/// A client of the cluster `url` is a seed node of, whose commands wait up
/// to `response_timeout`.
fn cluster_client(
    url: &str,
    certs: Option<TlsCertificates>,
    response_timeout: Duration,
) -> Result<ClusterClient, redis::RedisError> {
    let mut builder = ClusterClientBuilder::new([connection_info(url)?])
        .tcp_settings(tcp_settings())
        .retries(CLUSTER_RETRIES)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    builder.build()
}

/// Why the seed node `url` of a cluster refuses a connection of its own,
/// if it does. The cluster client reports only the text of its nodes'
/// errors; this one keeps their causes (a TLS alert, a certificate
/// problem), for [`explained`].
async fn seed_error(url: &str, certs: Option<TlsCertificates>) -> Option<redis::RedisError> {
    let connected = match client(url, certs) {
        Ok(client) => tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection()).await.ok()?,
        Err(e) => Err(e),
    };
    connected.err()
}

/// The certificates `settings` name, read from their files; `None` when
/// there are none (a `rediss://` URL then trusts the system roots).
fn certificates(settings: &RedisSettings) -> Result<Option<TlsCertificates>, redis::RedisError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
        })
    };
    let root_cert = settings.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        _ => None,
    };
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
}

/// A connection failure of `what`, with its cause said plainly where Sluice
/// can tell it (a TLS problem, a refused login) and Redis's own words after.
fn explained(what: String, e: redis::RedisError) -> Error {
    // A plain-text server waits for more of the "command" a TLS hello looks
    // like, so the handshake times out.
    if what.contains("rediss://") && e.is_timeout() && !e.to_string().contains("no sentinel named") {
        let why = "no TLS answer in time: is this a plain-text port (use redis:// for it), or is the host unreachable?";
        return Error::new(format!("{what}: {why}"), e);
    }
    match explanation(&e) {
        Some(why) => Error::new(format!("{what}: {why}"), e),
        None => Error::new(what, e),
    }
}

/// What a connection failure means, when it is one a user can fix.
fn explanation(e: &redis::RedisError) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError, Error as Tls};
    if let Some(code) = e.code() {
        return match code {
            "WRONGPASS" => Some("the user name or password is wrong"),
            "NOAUTH" => Some("the server requires a password: put user:password in the URL"),
            "NOPERM" => Some("the user lacks a permission Sluice needs (docs/operating.md, ACL users)"),
            _ => None,
        };
    }
    if let Some(tls) = find::<Tls>(e) {
        return Some(match tls {
            Tls::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                "the server's TLS certificate is not signed by a CA Sluice trusts (ca_file, or the system roots)"
            }
            Tls::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => "the server's TLS certificate is not for this host name (hostname verification is always on)",
            Tls::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                "the server's TLS certificate has expired"
            }
            Tls::InvalidCertificate(_) => "the server's TLS certificate is not valid",
            Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => {
                "the server did not answer in TLS: is this a plain-text port? (use redis:// for it)"
            }
            Tls::AlertReceived(AlertDescription::CertificateRequired | AlertDescription::BadCertificate) => {
                "the server wants a client certificate it trusts (cert_file and key_file)"
            }
            Tls::AlertReceived(AlertDescription::UnknownCA) => {
                "the server does not trust the client certificate (cert_file): its CA did not sign it"
            }
            _ => "the TLS handshake failed",
        });
    }
    None
}

/// The first error of type `T` among `err` and its causes, looking inside
/// the wrappers redis-rs and std use (an `Arc` of an error, an `io::Error`
/// around another), whose `source()` skips what they wrap.
fn find<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    if let Some(found) = err.downcast_ref::<T>() {
        return Some(found);
    }
    if let Some(found) = err.downcast_ref::<Shared>().and_then(|inner| find::<T>(inner.as_ref())) {
        return Some(found);
    }
    let io = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = io.and_then(|inner| find::<T>(inner)) {
        return Some(found);
    }
    err.source().and_then(find::<T>)
}

/// `url` without its password, for messages: the password of `user:pass@`,
/// a lone `name@` (a password written where the user name goes, which
/// Redis would take as the user), and a `pass=` parameter (the way a
/// `redis+unix://` URL gives it).
pub fn redact(url: &str) -> String {
    let Some(mut u) = redis::parse_redis_url(url) else { return url.to_owned() };
    let mut masked = false;
    if u.password().is_some() {
        masked = u.set_password(Some("***")).is_ok();
    } else if !u.username().is_empty() {
        masked = u.set_username("***").is_ok();
    }
    if u.query_pairs().any(|(k, _)| k == "pass") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| (k.to_string(), if k == "pass" { "***".to_owned() } else { v.into_owned() }))
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        masked = true;
    }
    if masked { u.to_string() } else { url.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("rediss://sluice:s3cret@cache.example.com:6380"),
            "rediss://sluice:***@cache.example.com:6380"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://s3cret@cache:6379"), "redis://***@cache:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=2&pass=s3cret&user=sluice"),
            "redis+unix:///run/redis.sock?db=2&pass=***&user=sluice"
        );
    }
}
