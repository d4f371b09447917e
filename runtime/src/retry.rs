//! The retry policy: how many deliveries an event gets (`max_attempts`) and
//! how long it waits between them (`backoff_ms`, doubled each attempt, with
//! jitter, capped). The delivery decision ([`crate::dispatch`]) applies it.

use crate::limits::Setting;
use rand::Rng;
use std::time::Duration;

/// `max_attempts`: deliveries before an event is dead-lettered.
pub const MAX_ATTEMPTS: Setting =
    Setting { key: "max_attempts", default: Some(5), min: 1, max: u64::MAX, max_note: "" };
/// `backoff_ms`: the first retry delay (it doubles each attempt).
pub const BACKOFF_MS: Setting =
    Setting { key: "backoff_ms", default: Some(200), min: 0, max: 3_600_000, max_note: " (an hour)" };

/// One handler's retry policy, every default applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before an event is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubled each attempt, with jitter.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The policy from the values a handler (or its defaults) set; `None`
    /// takes each setting's default. The values must already be checked.
    pub fn from_settings(max_attempts: Option<u32>, backoff_ms: Option<u64>) -> RetryPolicy {
        let attempts = MAX_ATTEMPTS.or_default(max_attempts.map(u64::from)).expect("a default");
        RetryPolicy {
            max_attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            backoff: Duration::from_millis(BACKOFF_MS.or_default(backoff_ms).expect("a default")),
        }
    }

    /// The delay before delivery `attempt + 1` after delivery `attempt`
    /// failed: `backoff * 2^(attempt-1)`, capped at `max`, then scaled by a
    /// random factor in 0.8..=1.2 so that events failing together do not
    /// retry together.
    pub fn delay(&self, attempt: u32, max: Duration) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let raw = self.backoff.saturating_mul(1u32 << exp).min(max);
        raw.mul_f64(rand::rng().random_range(0.8..=1.2)).min(max)
    }
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy::from_settings(None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff_ms: u64) -> RetryPolicy {
        RetryPolicy { max_attempts: 5, backoff: Duration::from_millis(backoff_ms) }
    }

    #[test]
    fn doubles_each_attempt_within_jitter() {
        let max = Duration::from_secs(60);
        for (attempt, nominal) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
            let d = policy(100).delay(attempt, max).as_millis() as u64;
            assert!((nominal * 8 / 10..=nominal * 12 / 10).contains(&d), "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn never_exceeds_the_cap() {
        let max = Duration::from_secs(1);
        for attempt in 1..100 {
            assert!(policy(300).delay(attempt, max) <= max);
        }
    }

    #[test]
    fn defaults_apply_where_nothing_is_set() {
        assert_eq!(RetryPolicy::default(), RetryPolicy { max_attempts: 5, backoff: Duration::from_millis(200) });
    }
}
