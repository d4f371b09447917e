//! Every limit a handler runs under, in one place: each setting with its
//! default and its range, the caps on what one delivery may output, and the
//! host-wide pool sizes derived from them. `config` validates against these,
//! `wasm` enforces them. The retry policy (attempts, backoff) is not a limit:
//! it lives in [`crate::retry`].
//!
//! | limit | key | default | range |
//! |---|---|---|---|
//! | time per delivery | `timeout_ms` | 2000 | 1 to 600 000 |
//! | linear memory | `memory_mb` | 64 | 1 to 4096 |
//! | CPU, deterministically | `fuel` | none | 1 and up |
//! | events in flight, per handler | `concurrency` | 64 | 1 to 512 |
//! | events in flight, all handlers | (sum of `concurrency`) | | up to 2048 |
//! | log lines / bytes per delivery | | 1000 / 1 MiB | |
//! | stdout, stderr per delivery | | 1 MiB each | |
//! | publishes per delivery | | 1024 events / 16 MiB | |
//! | kv writes per delivery | | 1000 / 16 MiB; keys 512 B, values 1 MiB, TTL 1 ms to a year | |
//! | table elements | | 20 000 | |
//! | deliveries per reused instance | | 1000 | |

use std::time::Duration;

/// A numeric setting a handler (or `[defaults]`) may give: its key, default
/// and accepted range. Validation and defaults both read it, so they cannot
/// drift apart.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The config key, e.g. `timeout_ms`.
    pub key: &'static str,
    /// The value when neither the handler nor `[defaults]` sets one.
    pub default: Option<u64>,
    /// The smallest value accepted.
    pub min: u64,
    /// The largest value accepted (`u64::MAX`: unbounded).
    pub max: u64,
    /// Said after the maximum in errors, e.g. ` (an hour)`.
    pub max_note: &'static str,
}

impl Setting {
    /// Whether `value` is in range; the error says the range.
    pub fn check(&self, value: u64) -> Result<(), String> {
        if (self.min..=self.max).contains(&value) {
            return Ok(());
        }
        Err(match (self.min, self.max) {
            (min, u64::MAX) => format!("must be at least {min}"),
            (0, max) => format!("must be at most {max}{}, got {value}", self.max_note),
            (min, max) => format!("must be between {min} and {max}, got {value}"),
        })
    }

    /// `value`, or the default.
    pub fn or_default(&self, value: Option<u64>) -> Option<u64> {
        value.or(self.default)
    }
}

/// `timeout_ms`: how long one delivery may run before it is stopped.
pub const TIMEOUT_MS: Setting = Setting { key: "timeout_ms", default: Some(2_000), min: 1, max: 600_000, max_note: "" };
/// `memory_mb`: the cap on a handler instance's linear memory, in MiB.
pub const MEMORY_MB: Setting = Setting { key: "memory_mb", default: Some(64), min: 1, max: 4_096, max_note: "" };
/// `fuel`: a deterministic CPU budget per delivery, in wasm fuel units; none by default.
pub const FUEL: Setting = Setting { key: "fuel", default: None, min: 1, max: u64::MAX, max_note: "" };
/// `concurrency`: events of one handler in flight at once. The default is
/// the smallest that gets a trivial handler within a few percent of its
/// best throughput on two cores (`cargo bench --bench throughput --
/// defaults`): fewer in flight means smaller reads and commit batches, and
/// more wake-ups per event.
pub const CONCURRENCY: Setting = Setting { key: "concurrency", default: Some(64), min: 1, max: 512, max_note: "" };

/// Most events all handlers together may have in flight: the largest
/// instance pool a host makes (32 handlers at the default `concurrency`).
pub const MAX_TOTAL_CONCURRENCY: usize = 2048;
/// Largest body the HTTP ingress takes (larger: 413).
pub const MAX_INGRESS_BODY: usize = 1 << 20;
/// Longest a request through the HTTP ingress may wait for its reply.
pub const MAX_INGRESS_WAIT_MS: u64 = 60_000;
/// How long a request through the HTTP ingress waits by default.
pub const INGRESS_WAIT_MS: u64 = 5_000;
/// Connections the HTTP ingress keeps open at once; more are closed at once.
pub const MAX_INGRESS_CONNECTIONS: usize = 256;
/// Requests (`/requests`) waiting for their reply at once through the HTTP
/// ingress (each holds a Redis connection); more get 503.
pub const MAX_INGRESS_WAITING: usize = 64;
/// How long the HTTP ingress waits for a request's headers, and then for its
/// body.
pub const INGRESS_READ_TIMEOUT_MS: u64 = 10_000;

/// Log lines (`host.log`) per delivery.
pub const MAX_LOG_LINES: usize = 1_000;
/// Bytes of log messages per delivery.
pub const MAX_LOG_BYTES: usize = 1 << 20;
/// Publishes per delivery.
pub const MAX_PUBLISHES: usize = 1_024;
/// Bytes of published data per delivery.
pub const MAX_PUBLISH_BYTES: usize = 16 << 20;
/// Key-value writes (`set`, `delete`) per delivery.
pub const MAX_KV_WRITES: usize = 1_000;
/// Key-value reads (`get`) per delivery that go to Redis (a key this
/// delivery wrote is read from its own writes): each is a round trip on the
/// connection every handler shares.
pub const MAX_KV_READS: usize = 1_000;
/// Length of a key-value key, in bytes.
pub const MAX_KV_KEY: usize = 512;
/// Size of a key-value value, in bytes.
pub const MAX_KV_VALUE: usize = 1 << 20;
/// Bytes of key-value writes (keys and values) per delivery.
pub const MAX_KV_BYTES: usize = 16 << 20;
/// Longest key-value TTL, in milliseconds (a year).
pub const MAX_KV_TTL_MS: u64 = 365 * 24 * 3600 * 1000;
/// Bytes a delivery may write to stdout, and separately to stderr.
pub const MAX_STDIO_BYTES: usize = 1 << 20;
/// Table elements an instance may grow a table to; also the size of the
/// instance pool's table slots, so a table can never be capped by its slot
/// below what this promises (the pool's default, 20 000, was below the
/// 100 000 this said before).
pub const MAX_TABLE_ELEMENTS: usize = 20_000;
/// Resources a delivery may hold in the host at once (WASI streams and
/// pollables, HTTP header maps, requests and bodies): the host's memory
/// behind them is not the plugin's linear memory, which `memory_mb` bounds.
/// A handler that makes an HTTP call holds a few dozen.
pub const MAX_HOST_RESOURCES: usize = 1_000;
/// Bytes one HTTP header map (`wasi:http` fields) may take in the host's
/// memory (its in-memory size, somewhat more than on the wire; wasmtime's
/// default is 128 KiB). With [`MAX_HOST_RESOURCES`], what a delivery's
/// header maps can take is bounded at about 32 MiB.
pub const MAX_HTTP_FIELDS_BYTES: usize = 32 << 10;
/// Bytes kept of the reason a plugin gives for a reject or a retry: it goes
/// into the log and the dead letter, and the rest is cut ([`reason`]).
pub const MAX_REASON_BYTES: usize = 4 << 10;

/// A plugin's `reason`, cut to [`MAX_REASON_BYTES`] at a character boundary,
/// saying how much was cut.
pub fn reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let keep = reason.floor_char_boundary(MAX_REASON_BYTES);
        let cut = reason.len() - keep;
        reason.truncate(keep);
        reason.push_str(&format!("… ({cut} more bytes cut)"));
    }
    reason
}

/// Deliveries one reused instance (`isolation = "reuse"`) serves before it
/// is replaced.
pub const REUSE_MAX_DELIVERIES: u32 = 1_000;

/// A demoted handler's delivery (on the idle lane, its `timeout_ms` counted
/// in CPU time) is given up after this many times its `timeout_ms` of wall
/// time (or half of `claim_idle_ms`, if that is less), however little CPU
/// it got.
pub const IDLE_LANE_PATIENCE: u32 = 10;

/// How long, in wall time, a demoted delivery of a handler with `timeout`
/// may take on a host whose `claim_idle` is given: [`IDLE_LANE_PATIENCE`]
/// times its timeout, under half of `claim_idle` (so that no other host
/// takes over an entry whose delivery still runs), and never less than the
/// timeout itself.
pub fn idle_lane_patience(timeout: Duration, claim_idle: Duration) -> Duration {
    (timeout * IDLE_LANE_PATIENCE).min(claim_idle / 2).max(timeout)
}

/// The smallest instance pool: what tools that run one handler at a time
/// get, and what a host gets at least.
pub const MIN_POOL_INSTANCES: u32 = 512;

/// Component instances the pooling allocator of a host whose handlers'
/// `concurrency` adds up to `total` keeps room for: twice that, so that a
/// reload can add handlers, within [`MIN_POOL_INSTANCES`] and
/// [`MAX_TOTAL_CONCURRENCY`]. A slot costs no memory until it is used, but
/// each reserves about 8 GiB of address space (its memories), and a
/// process has 128 TiB: a host sized for everything at once would leave
/// room for few others in one process (the tests run many).
pub fn pool_instances(total: usize) -> u32 {
    (total.saturating_mul(2)).clamp(MIN_POOL_INSTANCES as usize, MAX_TOTAL_CONCURRENCY) as u32
}
/// Core wasm instances one component may hold (a component from
/// componentize-py holds 14, from componentize-js 4, from Rust 3). A plugin
/// with more is rejected when it is loaded. The pool keeps this many per
/// component instance, so no handler's plugin can use up the core instances
/// its neighbours' deliveries need: the pool's core instances are a count,
/// and cost nothing until used.
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one component may define: one per component composed
/// into it (every plugin built here has one). A plugin with more is rejected
/// when it is loaded. The pool keeps this many per component instance, for
/// the same reason as [`CORE_INSTANCES_PER_COMPONENT`]; each reserves
/// address space, so the bound stays small.
pub const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may define (every plugin built here has two). As
/// for [`MEMORIES_PER_COMPONENT`].
pub const TABLES_PER_COMPONENT: u32 = 4;
/// Largest linear memory the pool reserves address space for: the largest
/// `memory_mb`.
pub const POOL_MAX_MEMORY: usize = (MEMORY_MB.max as usize) << 20;

/// The limits one handler's deliveries run under, every default applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long one delivery may run before it is stopped.
    pub timeout: Duration,
    /// Cap on linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wasm fuel per delivery (a deterministic CPU budget); `None`: unlimited.
    pub fuel: Option<u64>,
    /// Events in flight at once.
    pub concurrency: usize,
}

impl Limits {
    /// The limits from the values a handler (or its defaults) set; `None`
    /// takes each setting's default. The values must already be checked.
    pub fn from_settings(
        timeout_ms: Option<u64>,
        memory_mb: Option<u64>,
        fuel: Option<u64>,
        concurrency: Option<u32>,
    ) -> Limits {
        let value = |s: &Setting, v: Option<u64>| s.or_default(v).expect("a setting with a default");
        Limits {
            timeout: Duration::from_millis(value(&TIMEOUT_MS, timeout_ms)),
            memory_bytes: (value(&MEMORY_MB, memory_mb) << 20) as usize,
            fuel: FUEL.or_default(fuel),
            concurrency: value(&CONCURRENCY, concurrency.map(u64::from)) as usize,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_settings(None, None, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        assert_eq!(reason("short".into()), "short");
        let long = format!("{}é", "x".repeat(MAX_REASON_BYTES - 1));
        let cut = reason(long);
        assert!(cut.starts_with(&"x".repeat(MAX_REASON_BYTES - 1)));
        assert!(cut.ends_with("… (2 more bytes cut)"), "{cut}");
    }

    #[test]
    fn settings_name_their_range() {
        assert_eq!(TIMEOUT_MS.check(0).unwrap_err(), "must be between 1 and 600000, got 0");
        assert!(TIMEOUT_MS.check(600_000).is_ok());
        assert_eq!(FUEL.check(0).unwrap_err(), "must be at least 1");
        let backoff = Setting { key: "b", default: Some(1), min: 0, max: 10, max_note: " (ten)" };
        assert_eq!(backoff.check(11).unwrap_err(), "must be at most 10 (ten), got 11");
    }

    #[test]
    fn defaults_apply_where_nothing_is_set() {
        let l = Limits::default();
        assert_eq!((l.timeout, l.memory_bytes, l.fuel, l.concurrency), (Duration::from_secs(2), 64 << 20, None, 64));
        assert_eq!(POOL_MAX_MEMORY, 4 << 30);
        assert_eq!((pool_instances(1), pool_instances(704), pool_instances(2048)), (512, 1408, 2048));
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        assert_eq!(idle_lane_patience(ms(150), s(30)), ms(1500));
        assert_eq!(idle_lane_patience(s(5), s(30)), s(15));
        assert_eq!(idle_lane_patience(s(20), s(30)), s(20));
        assert_eq!(idle_lane_patience(ms(150), Duration::MAX), ms(1500));
    }
}
