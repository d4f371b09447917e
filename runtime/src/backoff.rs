//! Retry delays: exponential from the handler's `backoff_ms`, with jitter, capped.

use rand::Rng;
use std::time::Duration;

/// The delay before delivery `attempt + 1` after delivery `attempt` failed:
/// `base * 2^(attempt-1)`, capped at `max`, then scaled by a random factor in
/// 0.8..=1.2 so that events failing together do not retry together.
pub fn delay(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    raw.mul_f64(rand::rng().random_range(0.8..=1.2)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_each_attempt_within_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(60);
        for (attempt, nominal) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
            let d = delay(base, attempt, max).as_millis() as u64;
            assert!((nominal * 8 / 10..=nominal * 12 / 10).contains(&d), "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn never_exceeds_the_cap() {
        let max = Duration::from_secs(1);
        for attempt in 1..100 {
            assert!(delay(Duration::from_millis(300), attempt, max) <= max);
        }
    }
}
