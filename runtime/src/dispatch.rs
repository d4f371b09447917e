//! The delivery decision: what happens to an entry after a delivery. Every
//! rule about acks, retries and dead-letters lives here and nowhere else.

use crate::backoff;
use crate::config::Limits;
use crate::schema::Invalid;
use crate::wasm::{Effects, Outcome};
use std::time::Duration;

/// What to do with an entry after one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge it, committing its publishes and key-value writes in the
    /// same transaction.
    Ack { effects: Effects },
    /// Leave it pending and deliver it again after `delay`.
    Retry { delay: Duration, reason: String },
    /// Write it to the dead-letter stream and acknowledge it, in one transaction.
    DeadLetter { reason: String },
}

/// The decision for `outcome` of delivery number `attempt`. Retry delays are
/// capped at `max_delay` (so a waiting retry is never mistaken for an
/// abandoned entry by other hosts).
pub fn decide(outcome: Outcome, attempt: u32, limits: &Limits, max_delay: Duration) -> Decision {
    let reason = match outcome {
        Outcome::Success { effects } => return Decision::Ack { effects },
        Outcome::Reject { reason } => return Decision::DeadLetter { reason },
        Outcome::Retry { reason, delay: Some(delay) } if attempt < limits.max_attempts => {
            return Decision::Retry { delay: delay.min(max_delay), reason };
        }
        Outcome::Retry { reason, .. } | Outcome::Crash { reason, .. } => reason,
    };
    if attempt >= limits.max_attempts {
        let reason = format!("{reason} (gave up after {attempt} attempts)");
        return Decision::DeadLetter { reason };
    }
    Decision::Retry { delay: backoff::delay(limits.backoff, attempt, max_delay), reason }
}

/// The decision for an event that fails its type's schema: dead-lettered at
/// once, without running the plugin; no retry would make it valid.
pub fn invalid(invalid: &Invalid) -> Decision {
    Decision::DeadLetter { reason: invalid.to_string() }
}

/// The decision for an entry found already delivered `attempt - 1` times
/// whose last delivery never finished (the host stopped or crashed during
/// it): give up if that used the last attempt, else deliver it.
pub fn exhausted_before_delivery(attempt: u32, limits: &Limits) -> Option<Decision> {
    (attempt > limits.max_attempts).then(|| Decision::DeadLetter {
        reason: format!(
            "gave up after {} attempts; the last one never finished (the host stopped or crashed while handling it)",
            attempt - 1
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_attempts: u32) -> Limits {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 20,
            max_attempts,
            backoff: Duration::from_millis(100),
            concurrency: 1,
            fuel: None,
        }
    }
    const MAX: Duration = Duration::from_secs(10);

    fn retry(delay: Option<u64>) -> Outcome {
        Outcome::Retry { reason: "flaky".into(), delay: delay.map(Duration::from_millis) }
    }

    #[test]
    fn success_acks_with_its_publishes() {
        let d = decide(Outcome::Success { effects: Effects::default() }, 1, &limits(3), MAX);
        assert_eq!(d, Decision::Ack { effects: Effects::default() });
    }

    #[test]
    fn reject_dead_letters_at_once() {
        let d = decide(Outcome::Reject { reason: "bad".into() }, 1, &limits(3), MAX);
        assert_eq!(d, Decision::DeadLetter { reason: "bad".into() });
    }

    #[test]
    fn retry_backs_off_until_the_last_attempt() {
        assert!(matches!(decide(retry(None), 2, &limits(3), MAX), Decision::Retry { .. }));
        let last = decide(retry(None), 3, &limits(3), MAX);
        assert_eq!(last, Decision::DeadLetter { reason: "flaky (gave up after 3 attempts)".into() });
    }

    #[test]
    fn crash_counts_as_a_failed_attempt() {
        let crash = || Outcome::Crash { reason: "timeout after 1000 ms".into(), timed_out: true };
        assert!(matches!(decide(crash(), 1, &limits(2), MAX), Decision::Retry { .. }));
        assert!(matches!(decide(crash(), 2, &limits(2), MAX), Decision::DeadLetter { .. }));
    }

    #[test]
    fn handler_delay_is_honoured_but_capped() {
        let d = decide(retry(Some(50)), 1, &limits(3), MAX);
        assert_eq!(d, Decision::Retry { delay: Duration::from_millis(50), reason: "flaky".into() });
        let d = decide(retry(Some(999_999)), 1, &limits(3), MAX);
        assert_eq!(d, Decision::Retry { delay: MAX, reason: "flaky".into() });
    }

    #[test]
    fn an_unfinished_last_attempt_is_dead_lettered() {
        assert!(exhausted_before_delivery(3, &limits(3)).is_none());
        assert!(exhausted_before_delivery(4, &limits(3)).is_some());
    }
}
