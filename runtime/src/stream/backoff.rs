//! Pauses between Redis errors in a row, and what is said of them: one
//! home for every loop that talks to Redis until it stops (read loops,
//! commits, the relay).

use std::time::{Duration, Instant};

/// Pause after a Redis error before trying again; the longest pause of a
/// [`Backoff`].
pub(crate) const ERROR_PAUSE: Duration = Duration::from_millis(500);
/// A [`Backoff`]'s first pause.
const FIRST_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// How often a run of errors that goes on is warned of again.
const WARN_AGAIN: Duration = Duration::from_secs(60);

/// The pauses of a read loop between Redis errors in a row: short at
/// first, so that it reads again soon after Redis is back (a restart, a
/// failover, a reset connection), then doubling up to [`ERROR_PAUSE`], so
/// that a Redis that stays away is not asked in a tight loop. Also what is
/// said of the run: its first error is a warning, and one every
/// [`WARN_AGAIN`] while it lasts (the others are debug lines), so that a
/// Redis refusing every read for an hour says so 60 times, not 7200.
#[derive(Debug)]
pub(crate) struct Backoff {
    pause: Duration,
    run: Option<Run>,
}

/// A run of errors in a row.
#[derive(Debug)]
struct Run {
    since: Instant,
    warned: Instant,
    errors: u64,
}

impl Backoff {
    /// Before any error.
    pub(crate) fn new() -> Backoff {
        Backoff { pause: FIRST_ERROR_PAUSE, run: None }
    }

    /// The pause after one more error in a row.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(ERROR_PAUSE);
        pause
    }

    /// Counts one more error in a row: whether to warn of it (the first of
    /// a run, or [`WARN_AGAIN`] after the last warning).
    pub(crate) fn warn_due(&mut self) -> bool {
        let now = Instant::now();
        match &mut self.run {
            None => {
                self.run = Some(Run { since: now, warned: now, errors: 1 });
                true
            }
            Some(run) => {
                run.errors += 1;
                let due = now.duration_since(run.warned) >= WARN_AGAIN;
                if due {
                    run.warned = now;
                }
                due
            }
        }
    }

    /// The errors of the run so far, and how long it has lasted.
    pub(crate) fn so_far(&self) -> (u64, Duration) {
        self.run.as_ref().map_or((0, Duration::ZERO), |r| (r.errors, r.since.elapsed()))
    }

    /// Redis answered: the next error starts a new run. The run this ends,
    /// if any: its errors and how long it lasted.
    pub(crate) fn reset(&mut self) -> Option<(u64, Duration)> {
        self.pause = FIRST_ERROR_PAUSE;
        self.run.take().map(|r| (r.errors, r.since.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_starts_short_doubles_up_to_the_error_pause_and_starts_again_after_an_answer() {
        let mut b = Backoff::new();
        let pauses: Vec<u128> = (0..7).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 500, 500]);
        b.reset();
        assert_eq!(b.next().as_millis(), 20);
    }

    #[test]
    fn a_run_of_errors_is_warned_of_once_then_counted_until_it_ends() {
        let mut b = Backoff::new();
        assert_eq!(b.reset(), None, "no run yet");
        let warned: Vec<bool> = (0..5).map(|_| b.warn_due()).collect();
        assert_eq!(warned, [true, false, false, false, false]);
        assert_eq!(b.so_far().0, 5);
        assert_eq!(b.reset().map(|(errors, _)| errors), Some(5));
        assert!(b.warn_due(), "a new run is warned of again");
    }
}
