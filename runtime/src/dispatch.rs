//! The delivery decision, in one place: whether an entry is delivered at all
//! (its stream's format, its type, its expiry, its attempts, its schema)
//! and, once its handler has run, what
//! becomes of it (acknowledged with its effects, tried again after a delay,
//! or dead-lettered with a reason). `sluice run` ([`crate::consumer`]) and
//! `sluice invoke` ([`crate::offline`]) both go through [`turn`], so they
//! cannot disagree.
//!
//! The vocabulary: the handler's call comes to an [`Outcome`]; a turn ends
//! in a [`Verdict`] (the outcome, or the rule that settled the entry before
//! the plugin ran), and the verdict leads to a [`Decision`]. Metrics, logs
//! and `sluice invoke` name them by [`Verdict::label`] and
//! [`Decision::label`].

use crate::config::Handler;
use crate::format::Format;
use crate::retry::RetryPolicy;
use crate::stream::Delivery;
use crate::wasm::bindings::Event;
use crate::wasm::{Effects, Outcome};
use std::future::Future;
use std::time::Duration;

/// How one turn of an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The handler returned ok.
    Ok,
    /// The handler asked to be tried again.
    Retry,
    /// The handler rejected the event for good.
    Reject,
    /// The handler trapped or hit a limit.
    Crash,
    /// Not delivered: its type matches none of the handler's `events`.
    Skipped,
    /// Not delivered: its data fails its type's JSON Schema.
    Invalid,
    /// Not delivered: its last attempt was made already and never finished
    /// (its host stopped or crashed during it, or was too slow and another
    /// host took it over).
    Exhausted,
    /// Not delivered: it does not parse as its stream's format
    /// ([`crate::format`]).
    Malformed,
    /// Not delivered: its producer's time to live passed (LeanMQ's `ttl`,
    /// a CloudEvent's `expiration`).
    Expired,
}

impl Verdict {
    /// The verdict of a handler's `outcome`.
    pub fn of(outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Success { .. } => Verdict::Ok,
            Outcome::Retry { .. } => Verdict::Retry,
            Outcome::Reject { .. } => Verdict::Reject,
            Outcome::Crash { .. } => Verdict::Crash,
        }
    }

    /// Its name in metrics (`outcome="..."`), logs and `sluice invoke`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Retry => "retry",
            Verdict::Reject => "reject",
            Verdict::Crash => "crash",
            Verdict::Skipped => "skipped",
            Verdict::Invalid => "invalid",
            Verdict::Exhausted => "exhausted",
            Verdict::Malformed => "malformed",
            Verdict::Expired => "expired",
        }
    }

    /// Every verdict, for metrics that list each one.
    pub const ALL: [Verdict; 9] = [
        Verdict::Ok,
        Verdict::Retry,
        Verdict::Reject,
        Verdict::Crash,
        Verdict::Skipped,
        Verdict::Invalid,
        Verdict::Exhausted,
        Verdict::Malformed,
        Verdict::Expired,
    ];
}

/// What happens to an entry after its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge it, committing its publishes and key-value writes (none
    /// when it was not delivered) in the same transaction.
    Ack {
        /// The publishes and key-value writes to commit with the ack.
        effects: Effects,
    },
    /// Leave it pending and deliver it again after `delay`.
    Retry {
        /// How long to wait before the next delivery.
        delay: Duration,
        /// Why it failed this time.
        reason: String,
    },
    /// Write it to the dead-letter stream and acknowledge it, in one transaction.
    DeadLetter {
        /// Why it is given up: recorded as `sluice.error`.
        reason: String,
    },
}

impl Decision {
    /// Its name in logs and `sluice invoke` (`action`).
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Ack { .. } => "ack",
            Decision::Retry { .. } => "retry",
            Decision::DeadLetter { .. } => "dead-letter",
        }
    }
}

/// One turn of an entry: how it ended and what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// How it ended.
    pub verdict: Verdict,
    /// What happens to the entry next.
    pub decision: Decision,
}

/// Before the plugin runs: the event to deliver, or the turn that settles
/// the entry without running it.
#[derive(Debug)]
pub enum Admission {
    /// Run the handler on this event.
    Deliver(Event),
    /// Do not run it.
    Settled(Turn),
}

/// Whether `handler` gets delivery `d`, read as its stream's format: not if
/// it does not parse as that format (dead-lettered), not if its type is not
/// wanted or it has expired (both acknowledged as they are), not if its last
/// attempt was made already and never finished, not if its data fails its
/// type's schema (both dead-lettered).
pub fn admit(handler: &Handler, d: &Delivery) -> Admission {
    let settled = |verdict, decision| Admission::Settled(Turn { verdict, decision });
    // An inbox copy is read as the stream it came from.
    let format = handler.formats.format(crate::dead_letter::origin_stream(&d.stream, &d.entry));
    // Sluice's own format: the type is a field, checked before anything is
    // copied (most entries a handler skips cost only this).
    if *format == Format::Sluice && !handler.wants(&d.entry.event_type()) {
        return settled(Verdict::Skipped, Decision::Ack { effects: Effects::default() });
    }
    let read = match format.read(&d.entry, crate::ops::time::now_ms()) {
        Ok(read) => read,
        Err(malformed) => return settled(Verdict::Malformed, Decision::DeadLetter { reason: malformed.to_string() }),
    };
    if *format != Format::Sluice && !handler.wants(&read.event_type) {
        return settled(Verdict::Skipped, Decision::Ack { effects: Effects::default() });
    }
    // An operator sent an inbox copy back on purpose (redrive, replay):
    // it runs, however old.
    if read.expired && !crate::dead_letter::is_inbox(&d.stream) {
        return settled(Verdict::Expired, Decision::Ack { effects: Effects::default() });
    }
    let (stream, id) = crate::dead_letter::origin(&d.stream, &d.entry);
    if d.attempt > handler.retry.max_attempts {
        let reason = format!(
            "gave up after {} attempts; the last one never finished (its host stopped or crashed while handling it, or was too slow to finish it within claim_idle_ms and another host took it over)",
            d.attempt - 1
        );
        return settled(Verdict::Exhausted, Decision::DeadLetter { reason });
    }
    let event =
        Event { stream, id, event_type: read.event_type, data: read.data, fields: read.fields, attempt: d.attempt };
    if let Err(invalid) = handler.schemas.check(&event.event_type, &event.data) {
        // No retry would make it valid.
        return settled(Verdict::Invalid, Decision::DeadLetter { reason: invalid.to_string() });
    }
    Admission::Deliver(event)
}

/// The decision for `outcome` of delivery number `attempt`. Retry delays are
/// capped at `max_delay` (so a waiting retry is never mistaken for an
/// abandoned entry by other hosts).
pub fn decide(outcome: Outcome, attempt: u32, policy: &RetryPolicy, max_delay: Duration) -> Decision {
    let reason = match outcome {
        Outcome::Success { effects } => return Decision::Ack { effects },
        Outcome::Reject { reason } => return Decision::DeadLetter { reason },
        Outcome::Retry { reason, delay: Some(delay) } if attempt < policy.max_attempts => {
            return Decision::Retry { delay: delay.min(max_delay), reason };
        }
        Outcome::Retry { reason, .. } | Outcome::Crash { reason, .. } => reason,
    };
    if attempt >= policy.max_attempts {
        let reason = format!("{reason} (gave up after {attempt} attempts)");
        return Decision::DeadLetter { reason };
    }
    Decision::Retry { delay: policy.delay(attempt, max_delay), reason }
}

/// One whole turn of delivery `d` to `handler`: [`admit`], then `run` the
/// handler on the event, then [`decide`]. `max_delay` caps retry delays.
pub async fn turn<F, Fut>(handler: &Handler, d: &Delivery, max_delay: Duration, run: F) -> Turn
where
    F: FnOnce(Event) -> Fut,
    Fut: Future<Output = Outcome>,
{
    match admit(handler, d) {
        Admission::Settled(turn) => turn,
        Admission::Deliver(event) => {
            let outcome = run(event).await;
            let verdict = Verdict::of(&outcome);
            Turn { verdict, decision: decide(outcome, d.attempt, &handler.retry, max_delay) }
        }
    }
}

/// The decision when Redis refused to commit a successful delivery's output
/// (a publish target that is not a stream, say): a failed attempt, like a
/// trap.
pub fn commit_refused(why: &str, attempt: u32, policy: &RetryPolicy, max_delay: Duration) -> Decision {
    let reason = format!("cannot commit the handler's output: {why}");
    decide(Outcome::Crash { reason, timed_out: false }, attempt, policy, max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::Entry;
    use std::path::Path;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy { max_attempts, backoff: Duration::from_millis(100) }
    }
    const MAX: Duration = Duration::from_secs(10);

    fn retry(delay: Option<u64>) -> Outcome {
        Outcome::Retry { reason: "flaky".into(), delay: delay.map(Duration::from_millis) }
    }

    #[test]
    fn success_acks_with_its_publishes() {
        let d = decide(Outcome::Success { effects: Effects::default() }, 1, &policy(3), MAX);
        assert_eq!(d, Decision::Ack { effects: Effects::default() });
    }

    #[test]
    fn reject_dead_letters_at_once() {
        let d = decide(Outcome::Reject { reason: "bad".into() }, 1, &policy(3), MAX);
        assert_eq!(d, Decision::DeadLetter { reason: "bad".into() });
    }

    #[test]
    fn retry_backs_off_until_the_last_attempt() {
        assert!(matches!(decide(retry(None), 2, &policy(3), MAX), Decision::Retry { .. }));
        let last = decide(retry(None), 3, &policy(3), MAX);
        assert_eq!(last, Decision::DeadLetter { reason: "flaky (gave up after 3 attempts)".into() });
    }

    #[test]
    fn crash_counts_as_a_failed_attempt() {
        let crash = || Outcome::Crash { reason: "timeout after 1000 ms".into(), timed_out: true };
        assert!(matches!(decide(crash(), 1, &policy(2), MAX), Decision::Retry { .. }));
        assert!(matches!(decide(crash(), 2, &policy(2), MAX), Decision::DeadLetter { .. }));
    }

    #[test]
    fn a_refused_commit_is_a_failed_attempt() {
        assert!(matches!(commit_refused("x holds a string", 1, &policy(2), MAX), Decision::Retry { .. }));
        let last = commit_refused("x holds a string", 2, &policy(2), MAX);
        let reason = "cannot commit the handler's output: x holds a string (gave up after 2 attempts)";
        assert_eq!(last, Decision::DeadLetter { reason: reason.into() });
    }

    #[test]
    fn handler_delay_is_honoured_but_capped() {
        let d = decide(retry(Some(50)), 1, &policy(3), MAX);
        assert_eq!(d, Decision::Retry { delay: Duration::from_millis(50), reason: "flaky".into() });
        let d = decide(retry(Some(999_999)), 1, &policy(3), MAX);
        assert_eq!(d, Decision::Retry { delay: MAX, reason: "flaky".into() });
    }

    fn handler(extra: &str) -> Handler {
        let toml = format!(
            "[handlers.h]\nplugin = \"/nonexistent.wasm\"\nstreams = [\"s\"]\nevents = [\"order.*\"]\nmax_attempts = 3\n{extra}"
        );
        Config::parse_unchecked(Path::new("test.toml"), &toml).unwrap().handlers.remove(0)
    }

    fn delivery(event_type: &str, attempt: u32) -> Delivery {
        let fields = vec![("type".to_owned(), event_type.as_bytes().to_vec()), ("data".to_owned(), b"{}".to_vec())];
        Delivery { stream: "s".into(), entry: Entry { id: "1-0".into(), fields }, attempt, key: None }
    }

    fn settled(a: Admission) -> Option<Verdict> {
        match a {
            Admission::Settled(t) => Some(t.verdict),
            Admission::Deliver(_) => None,
        }
    }

    #[test]
    fn admission_skips_unwanted_types_and_settles_an_unfinished_last_attempt() {
        let h = handler("");
        assert_eq!(settled(admit(&h, &delivery("user.created", 1))), Some(Verdict::Skipped));
        assert_eq!(settled(admit(&h, &delivery("order.created", 3))), None, "the last attempt is delivered");
        assert_eq!(settled(admit(&h, &delivery("order.created", 4))), Some(Verdict::Exhausted));
        // Unwanted comes first: an unwanted entry is acknowledged whatever its count.
        assert_eq!(settled(admit(&h, &delivery("user.created", 9))), Some(Verdict::Skipped));
    }

    #[tokio::test]
    async fn a_settled_turn_never_runs_the_handler() {
        let h = handler("");
        let turn = turn(&h, &delivery("order.created", 4), MAX, |_| async { panic!("must not run") }).await;
        assert_eq!(turn.verdict, Verdict::Exhausted);
        assert!(
            matches!(turn.decision, Decision::DeadLetter { reason } if reason.starts_with("gave up after 3 attempts"))
        );
    }

    #[test]
    fn an_entry_is_read_in_its_streams_format_an_inbox_copy_in_its_origins() {
        // The handler reads stream `s`, whose format is LeanMQ's.
        let h = handler("[streams.\"s\"]\nformat = \"leanmq\"\n");
        let message = br#"{"event_type":"order.created","n":1,"_metadata":{"id":"u","timestamp":1.0,"ttl":null}}"#;
        let entry = |extra: &[(&str, &str)]| {
            let mut fields = vec![("data".to_owned(), message.to_vec())];
            fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
            Entry { id: "5-0".into(), fields }
        };
        let origin = [("sluice.origin_stream", "s"), ("sluice.origin_id", "1-0"), ("type", "")];
        for (stream, e) in [("s", entry(&[])), ("sluice:inbox:h", entry(&origin))] {
            let d = Delivery { stream: stream.into(), entry: e, attempt: 1, key: None };
            let Admission::Deliver(event) = admit(&h, &d) else { panic!("{stream}: not delivered") };
            assert_eq!((event.stream.as_str(), event.event_type.as_str()), ("s", "order.created"), "{stream}");
            assert_eq!(event.data, br#"{"event_type":"order.created","n":1}"#, "{stream}");
        }
        let bad =
            Delivery { stream: "s".into(), entry: Entry { id: "6-0".into(), fields: vec![] }, attempt: 1, key: None };
        let Admission::Settled(turn) = admit(&h, &bad) else { panic!("a malformed entry was delivered") };
        assert_eq!(turn.verdict, Verdict::Malformed);
        assert!(
            matches!(&turn.decision, Decision::DeadLetter { reason } if reason.starts_with("not a leanmq entry: it has no \"data\" field")),
            "{:?}",
            turn.decision
        );
    }

    #[test]
    fn an_expired_entry_is_acknowledged_unseen_but_an_inbox_copy_of_it_runs() {
        let h = handler("[streams.\"s\"]\nformat = \"leanmq\"\n");
        // Sent at Unix second 1 with a 5 s time to live: long expired.
        let message = br#"{"event_type":"order.created","_metadata":{"id":"u","timestamp":1.0,"ttl":5}}"#;
        let entry = |extra: &[(&str, &str)]| {
            let mut fields = vec![("data".to_owned(), message.to_vec())];
            fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
            Entry { id: "5-0".into(), fields }
        };
        let read = Delivery { stream: "s".into(), entry: entry(&[]), attempt: 1, key: None };
        let Admission::Settled(turn) = admit(&h, &read) else { panic!("an expired entry was delivered") };
        assert_eq!((turn.verdict, turn.decision), (Verdict::Expired, Decision::Ack { effects: Effects::default() }));
        // Sent back by an operator (redrive, replay): it runs.
        let origin = [("sluice.origin_stream", "s"), ("sluice.origin_id", "1-0")];
        let copy = Delivery { stream: "sluice:inbox:h".into(), entry: entry(&origin), attempt: 1, key: None };
        assert!(matches!(admit(&h, &copy), Admission::Deliver(_)));
    }

    #[test]
    fn all_lists_every_verdict_in_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "metrics index counters by `verdict as usize`");
        }
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> = Verdict::ALL.iter().map(|v| v.label()).collect();
        assert_eq!(labels.len(), Verdict::ALL.len());
    }
}
