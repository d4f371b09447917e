//! The TOML shape of `config.toml`, exactly as users write it.
//!
//! Every table rejects unknown keys so a typo is an error, not a silently
//! ignored setting. Defaults are the named constants below, and for the
//! limits and the retry policy in [`crate::limits`] and [`crate::retry`];
//! the shipped `config.toml` documents each key.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Default `[host] plugins`: the folder of `*.wasm` files, relative to the config.
pub const DEFAULT_PLUGINS_DIR: &str = "plugins/dist";
/// Default `[host] forget_consumers_after_ms`: an hour.
pub const DEFAULT_FORGET_CONSUMERS_AFTER_MS: u64 = 3_600_000;
/// Default `[host] claim_idle_ms`: how long another consumer's entry must sit
/// unacknowledged before this host takes it over.
pub const DEFAULT_CLAIM_IDLE_MS: u64 = 30_000;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[redis]`
    #[serde(default)]
    pub redis: RawRedis,
    /// `[host]`
    #[serde(default)]
    pub host: RawHost,
    /// `[defaults]`
    #[serde(default)]
    pub defaults: RawLimits,
    /// `[handlers.NAME]`
    #[serde(default)]
    pub handlers: BTreeMap<String, RawHandler>,
    /// `[schemas]`: event-type glob → JSON Schema file, relative to the config.
    /// ```toml
    /// [schemas]
    /// "order.*" = "schemas/order.json"
    /// ```
    #[serde(default)]
    pub schemas: BTreeMap<String, String>,
    /// `[streams."NAME"]`: per stream (a name or a glob), how much to keep.
    #[serde(default)]
    pub streams: BTreeMap<String, RawStream>,
}

/// `[streams."NAME"]`: a stream name or glob, its retention and its format.
/// ```toml
/// [streams."orders"]
/// max_len = 1000000
/// max_age_ms = 604800000
/// format = "cloudevents"
/// ```
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Keep at most this many entries.
    pub max_len: Option<u64>,
    /// And none older than this, in milliseconds.
    pub max_age_ms: Option<u64>,
    /// How its entries are laid out ([`crate::format`]); absent: `sluice`.
    pub format: Option<RawFormat>,
    /// For `format = "leanmq"`: the message key holding the event type
    /// (default [`crate::format::DEFAULT_LEANMQ_TYPE_KEY`]).
    pub type_key: Option<String>,
}

/// `format = "..."` of a `[streams."NAME"]` table.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawFormat {
    /// Sluice's own fields.
    Sluice,
    /// A CloudEvent in structured mode (Dapr's `pubsub.redis`).
    CloudEvents,
    /// A LeanMQ message.
    LeanMq,
}

/// `[redis]`
/// ```toml
/// [redis]
/// url = "rediss://sluice:${REDIS_PASSWORD}@cache.example.com:6380"
/// cluster = false
/// # Behind Redis Sentinel: url's host is the name the sentinels know the primary by.
/// # sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
/// ca_file = "certs/ca.pem"
/// cert_file = "certs/client.pem"
/// key_file = "certs/client.key"
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`, with
    /// `user:password@` for an ACL user. Absent: Sluice starts and owns a
    /// local `redis-server`.
    pub url: Option<String>,
    /// Whether `url` is one seed node of a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Redis Sentinel: the sentinels (`redis://` or `rediss://`, with the
    /// sentinels' own `user:password@` if they require one) to ask where
    /// the primary is. `url`'s host is then the name they know it by.
    pub sentinels: Option<Vec<String>>,
    /// For `rediss://`: the CA to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// For mutual TLS: the client certificate, with `key_file`.
    pub cert_file: Option<String>,
    /// For mutual TLS: the client certificate's private key, with `cert_file`.
    pub key_file: Option<String>,
}

/// `[host]`
/// ```toml
/// [host]
/// plugins = "plugins/dist"
/// consumer = "host-a"
/// claim_idle_ms = 30000
/// admin = "127.0.0.1:9464"
/// admin_token = "${SLUICE_ADMIN_TOKEN}"
/// forget_consumers_after_ms = 3600000
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    /// The folder of `*.wasm` plugins, relative to the config; absent: [`DEFAULT_PLUGINS_DIR`].
    pub plugins: Option<String>,
    /// This host's consumer name in every group; absent: `hostname-pid`.
    pub consumer: Option<String>,
    /// How long another consumer's entry must sit unacknowledged before this
    /// host takes it over; absent: [`DEFAULT_CLAIM_IDLE_MS`].
    pub claim_idle_ms: Option<u64>,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, the
    /// dashboard at `/` and its `/api`); absent: none.
    pub admin: Option<String>,
    /// The Bearer token the dashboard's actions (redrive, purge) require;
    /// absent: actions are disabled, the dashboard is read-only.
    pub admin_token: Option<String>,
    /// Address of the HTTP ingress ([`crate::ingress`]); absent: none.
    pub ingress: Option<String>,
    /// The Bearer token the ingress requires; needed when it binds beyond
    /// loopback.
    pub ingress_token: Option<String>,
    /// Globs of the only streams the ingress writes.
    #[serde(default)]
    pub ingress_streams: Vec<String>,
    /// How long a consumer with nothing pending must have been idle before
    /// a live host deletes it from its group; absent:
    /// [`DEFAULT_FORGET_CONSUMERS_AFTER_MS`].
    pub forget_consumers_after_ms: Option<u64>,
}

/// The limits and retry policy a handler runs under; `[defaults]` and each
/// handler may set them (ranges and defaults: [`crate::limits`], [`crate::retry`]).
/// ```toml
/// [defaults]
/// timeout_ms = 2000
/// memory_mb = 64
/// max_attempts = 5
/// backoff_ms = 200
/// concurrency = 64
/// ```
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time per delivery ([`crate::limits::TIMEOUT_MS`]).
    pub timeout_ms: Option<u64>,
    /// Linear memory cap, in MiB ([`crate::limits::MEMORY_MB`]).
    pub memory_mb: Option<u64>,
    /// Deliveries before an event is dead-lettered ([`crate::retry::MAX_ATTEMPTS`]).
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled each attempt ([`crate::retry::BACKOFF_MS`]).
    pub backoff_ms: Option<u64>,
    /// Events in flight at once ([`crate::limits::CONCURRENCY`]).
    pub concurrency: Option<u32>,
    /// Wasm fuel per delivery, a deterministic CPU budget ([`crate::limits::FUEL`]).
    pub fuel: Option<u64>,
}

/// `[handlers.NAME]`
/// ```toml
/// [handlers.payment]
/// plugin = "payment.wasm"
/// streams = ["orders"]
/// events = ["order.created"]
/// publish = ["payments"]
/// group = "payment"
/// dead_letter = "orders:dlq"
/// timeout_ms = 500
/// http = ["api.example.com"]
/// isolation = "per-event"
/// order_by = "data.order_id"
/// [handlers.payment.config]
/// gateway_key = "${GATEWAY_KEY}"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    /// The plugin file, relative to the plugins folder.
    pub plugin: String,
    /// Streams the handler consumes.
    pub streams: Vec<String>,
    /// Globs of the event types it wants; absent: every type.
    pub events: Option<Vec<String>>,
    /// Streams it may publish to; empty: none.
    #[serde(default)]
    pub publish: Vec<String>,
    /// The consumer group it reads through; absent: the handler's name.
    pub group: Option<String>,
    /// One dead-letter stream for all its streams; absent: `<stream>:dlq`.
    pub dead_letter: Option<String>,
    /// Hosts the handler may call over HTTP: `host` or `host:port`.
    #[serde(default)]
    pub http: Vec<String>,
    /// `[handlers.NAME.config]`: values the handler reads with `config.get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Fresh instance per delivery (the default) or reused instances.
    #[serde(default)]
    pub isolation: Isolation,
    /// What orders its events: an entry field, or `data.KEY` for a
    /// top-level key of the JSON data ([`crate::stream::order`]); absent:
    /// no order across concurrent deliveries.
    pub order_by: Option<String>,
    // The limits are spelled out rather than flattened: serde cannot combine
    // `flatten` with `deny_unknown_fields`.
    /// Time per delivery ([`crate::limits::TIMEOUT_MS`]).
    pub timeout_ms: Option<u64>,
    /// Linear memory cap, in MiB ([`crate::limits::MEMORY_MB`]).
    pub memory_mb: Option<u64>,
    /// Deliveries before an event is dead-lettered ([`crate::retry::MAX_ATTEMPTS`]).
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled each attempt ([`crate::retry::BACKOFF_MS`]).
    pub backoff_ms: Option<u64>,
    /// Events in flight at once ([`crate::limits::CONCURRENCY`]).
    pub concurrency: Option<u32>,
    /// Wasm fuel per delivery, a deterministic CPU budget ([`crate::limits::FUEL`]).
    pub fuel: Option<u64>,
}

impl RawHandler {
    /// The limits this handler sets itself.
    pub fn limits(&self) -> RawLimits {
        RawLimits {
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff_ms,
            concurrency: self.concurrency,
            fuel: self.fuel,
        }
    }
}

impl RawLimits {
    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &RawLimits) -> RawLimits {
        RawLimits {
            timeout_ms: self.timeout_ms.or(fallback.timeout_ms),
            memory_mb: self.memory_mb.or(fallback.memory_mb),
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            backoff_ms: self.backoff_ms.or(fallback.backoff_ms),
            concurrency: self.concurrency.or(fallback.concurrency),
            fuel: self.fuel.or(fallback.fuel),
        }
    }
}

/// How a handler's deliveries get their instance (`isolation = ...`).
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A fresh instance for every delivery: nothing a handler keeps in memory
    /// survives from one event to the next.
    #[default]
    PerEvent,
    /// An instance serves up to [`crate::limits::REUSE_MAX_DELIVERIES`] deliveries, one at a
    /// time, and is discarded after any trap or limit hit, on reload, and at
    /// that count. Its memory (globals, caches, leaks) carries over between
    /// those deliveries. For languages whose instances are costly to start
    /// (Python, JavaScript).
    Reuse,
}
