//! Counting one delivery's output against the caps in [`crate::limits`]:
//! what it may log, publish and write to its key-value state. Passing one
//! stops the delivery with a reason that names the limit.

use crate::limits::{
    MAX_KV_BYTES, MAX_KV_KEY, MAX_KV_READS, MAX_KV_TTL_MS, MAX_KV_VALUE, MAX_KV_WRITES, MAX_LOG_BYTES, MAX_LOG_LINES,
    MAX_PUBLISH_BYTES, MAX_PUBLISHES,
};

/// Counts one delivery's output against the caps.
#[derive(Debug, Default)]
pub struct Usage {
    log_lines: usize,
    log_bytes: usize,
    publishes: usize,
    publish_bytes: usize,
    kv_writes: usize,
    kv_bytes: usize,
    kv_reads: usize,
    /// The first limit passed, as the failure reason.
    pub exceeded: Option<String>,
}

/// The marker error a host call returns to stop a guest that passed a limit
/// (the reason itself is kept in [`Usage::exceeded`]).
#[derive(Debug)]
pub struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output limit exceeded")
    }
}

impl std::error::Error for LimitExceeded {}

impl Usage {
    /// Records one log line of `len` bytes.
    pub fn log(&mut self, len: usize) -> Result<(), LimitExceeded> {
        self.log_lines += 1;
        self.log_bytes += len;
        self.check(self.log_lines <= MAX_LOG_LINES, || format!("log limit exceeded: more than {MAX_LOG_LINES} lines"))?;
        self.check(self.log_bytes <= MAX_LOG_BYTES, || {
            format!("log limit exceeded: more than {} MiB", MAX_LOG_BYTES >> 20)
        })
    }

    /// Records one publish of `len` bytes.
    pub fn publish(&mut self, len: usize) -> Result<(), LimitExceeded> {
        self.publishes += 1;
        self.publish_bytes += len;
        self.check(self.publishes <= MAX_PUBLISHES, || {
            format!("publish limit exceeded: more than {MAX_PUBLISHES} events")
        })?;
        self.check(self.publish_bytes <= MAX_PUBLISH_BYTES, || {
            format!("publish limit exceeded: more than {} MiB", MAX_PUBLISH_BYTES >> 20)
        })
    }

    /// Records one key-value write of a `key` and `value_len` bytes.
    pub fn kv_write(&mut self, key: &str, value_len: usize) -> Result<(), LimitExceeded> {
        self.kv_writes += 1;
        self.kv_bytes += key.len() + value_len;
        self.check(self.kv_bytes <= MAX_KV_BYTES, || {
            format!("kv limit exceeded: more than {} MiB written", MAX_KV_BYTES >> 20)
        })?;
        self.check(self.kv_writes <= MAX_KV_WRITES, || format!("kv limit exceeded: more than {MAX_KV_WRITES} writes"))?;
        self.check(key.len() <= MAX_KV_KEY, || format!("kv limit exceeded: key longer than {MAX_KV_KEY} bytes"))?;
        self.check(value_len <= MAX_KV_VALUE, || {
            format!("kv limit exceeded: value larger than {} MiB", MAX_KV_VALUE >> 20)
        })
    }

    /// Checks a key-value TTL.
    pub fn kv_ttl(&mut self, ttl_ms: Option<u64>) -> Result<(), LimitExceeded> {
        let ok = ttl_ms.is_none_or(|t| (1..=MAX_KV_TTL_MS).contains(&t));
        self.check(ok, || format!("kv limit exceeded: ttl must be between 1 and {MAX_KV_TTL_MS} ms"))
    }

    /// Records a key-value read of `key`.
    pub fn kv_read(&mut self, key: &str) -> Result<(), LimitExceeded> {
        self.check(key.len() <= MAX_KV_KEY, || format!("kv limit exceeded: key longer than {MAX_KV_KEY} bytes"))
    }

    /// Records a key-value read that goes to Redis.
    pub fn kv_fetch(&mut self) -> Result<(), LimitExceeded> {
        self.kv_reads += 1;
        self.check(self.kv_reads <= MAX_KV_READS, || format!("kv limit exceeded: more than {MAX_KV_READS} reads"))
    }

    fn check(&mut self, ok: bool, reason: impl FnOnce() -> String) -> Result<(), LimitExceeded> {
        if ok {
            return Ok(());
        }
        self.exceeded.get_or_insert_with(reason);
        Err(LimitExceeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_limit_passed_is_the_reason() {
        let mut u = Usage::default();
        for _ in 0..MAX_LOG_LINES {
            u.log(1).unwrap();
        }
        assert!(u.log(1).is_err());
        assert!(u.publish(MAX_PUBLISH_BYTES + 1).is_err());
        assert_eq!(u.exceeded.as_deref(), Some("log limit exceeded: more than 1000 lines"));
    }

    #[test]
    fn kv_ttl_and_total_bytes_are_bounded() {
        let mut u = Usage::default();
        assert!(u.kv_ttl(None).is_ok() && u.kv_ttl(Some(1)).is_ok() && u.kv_ttl(Some(MAX_KV_TTL_MS)).is_ok());
        assert!(Usage::default().kv_ttl(Some(0)).is_err());
        assert!(Usage::default().kv_ttl(Some(MAX_KV_TTL_MS + 1)).is_err());
        let mut u = Usage::default();
        for _ in 0..MAX_KV_BYTES / MAX_KV_VALUE - 1 {
            u.kv_write("k", MAX_KV_VALUE).unwrap();
        }
        assert!(u.kv_write("k", MAX_KV_VALUE).is_err(), "the total passes 16 MiB");
        assert_eq!(u.exceeded.as_deref(), Some("kv limit exceeded: more than 16 MiB written"));
    }

    #[test]
    fn kv_keys_and_values_are_bounded() {
        let mut u = Usage::default();
        assert!(u.kv_write("k", MAX_KV_VALUE).is_ok());
        assert!(u.kv_write(&"k".repeat(MAX_KV_KEY + 1), 1).is_err());
        assert!(Usage::default().kv_write("k", MAX_KV_VALUE + 1).is_err());
    }
}
