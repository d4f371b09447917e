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
}

/// `[redis]`
/// ```toml
/// [redis]
/// url = "redis://:${REDIS_PASSWORD}@127.0.0.1:6379"
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Absent: Sluice starts and owns a local `redis-server`.
    pub url: Option<String>,
}

/// `[host]`
/// ```toml
/// [host]
/// plugins = "plugins/dist"
/// consumer = "host-a"
/// claim_idle_ms = 30000
/// admin = "127.0.0.1:9464"
/// ```
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub plugins: Option<String>,
    pub consumer: Option<String>,
    pub claim_idle_ms: Option<u64>,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`); absent: none.
    pub admin: Option<String>,
}

/// The limits and retry policy a handler runs under; `[defaults]` and each
/// handler may set them (ranges and defaults: [`crate::limits`], [`crate::retry`]).
/// ```toml
/// [defaults]
/// timeout_ms = 2000
/// memory_mb = 64
/// max_attempts = 5
/// backoff_ms = 200
/// concurrency = 16
/// ```
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub concurrency: Option<u32>,
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
/// [handlers.payment.config]
/// gateway_key = "${GATEWAY_KEY}"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub plugin: String,
    pub streams: Vec<String>,
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub publish: Vec<String>,
    pub group: Option<String>,
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
    // The limits are spelled out rather than flattened: serde cannot combine
    // `flatten` with `deny_unknown_fields`.
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub concurrency: Option<u32>,
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
