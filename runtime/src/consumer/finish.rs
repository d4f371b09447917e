//! Running one delivery and finishing it: the turn ([`dispatch::turn`]) on
//! the wasm executor, then its decision carried out as a commit, a retry
//! timer, or a dead-letter.

use super::{Binding, Consumer};
use crate::dead_letter::{self, Failure};
use crate::dispatch::{self, Decision, Verdict};
use crate::event::field;
use crate::format::Format;
use crate::logging::{self, EventSpan, event_line};
use crate::stream::Backoff;
use crate::stream::{self, Commit, Committed, Delivery, EntryState};
use crate::wasm::{Lane, Outcome, Straggler, bindings::Event};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

/// Most tries of a commit that failed other than for a Redis away for now
/// ([`stream::Error::is_transient`]: those are tried until Redis takes them
/// or the host stops) before leaving the entry pending. Between them, the
/// pauses of a read loop ([`Backoff`]: 20 ms, doubling up to half a
/// second).
const COMMIT_TRIES: u32 = 8;

/// How long after its first failed try a commit may start another, when
/// it is not waiting for a Redis away for now, or the host is stopping.
/// Tries that each wait out the command timeout (a Redis that does not
/// answer) end the commit after two or so, not [`COMMIT_TRIES`]: a host
/// shutting down waits for its commits.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(2);

impl Consumer {
    /// Starts a delivery of `d`, taken up already ([`Consumer::take_up_all`]),
    /// on the wasm executor's normal lane, tracked for shutdown. (A demoted
    /// handler's too: only its wasm runs on the idle lane, see
    /// [`Consumer::run_plugin`].)
    pub(super) fn start_delivery(self: &Arc<Self>, d: Delivery, permit: OwnedSemaphorePermit) {
        let executor = self.binding.load().plugin.executor().clone();
        executor.spawn(self.tasks.track_future(self.clone().deliver(d, permit)));
    }

    /// Those of `found` not handled here already, now marked as handled here
    /// (and their keys as served).
    pub(super) fn take_up_all(&self, found: Vec<Delivery>) -> Vec<Delivery> {
        found.into_iter().filter(|d| self.take_up_one(d)).collect()
    }

    /// Marks `d` as handled here (and its key as served); `false` if it
    /// already was, and must not be delivered again.
    pub(super) fn take_up_one(&self, d: &Delivery) -> bool {
        if !self.hold(&d.stream, &d.entry.id) {
            return false;
        }
        if let Some(key) = &d.key {
            self.serve(&d.stream, key);
        }
        true
    }

    /// Runs `d`, and after it each next entry of its key that its commit
    /// hands over (ordering by key), on the same permit; but if a delivery
    /// here waits for a permit meanwhile (a retry, an entry held for one,
    /// a smaller `concurrency` after a reload), the permit goes to it first
    /// and the key's next entry queues for another, so that a key whose
    /// queue keeps filling does not keep the others waiting.
    pub(super) async fn deliver(self: Arc<Self>, d: Delivery, permit: OwnedSemaphorePermit) {
        // Taken by a commit that finishes without this task ([`Consumer::hand_off`]).
        let mut permit = Some(permit);
        let mut next = Some(d);
        while let Some(d) = next.take() {
            next = self.clone().deliver_one(d, &mut permit).await;
            if next.is_some() && permit.is_none() {
                // (Kept by a straggler: see [`Consumer::hold_permit_for`].)
                permit = Some(self.permit_for_held().await);
            }
            if next.is_some() && self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                // (The semaphore is fair: the waiters queued first go
                // first. Counted in `waiting` itself, so that the next chain
                // to reach the end of an entry gives way to this one in
                // turn: when keys with queued entries outnumber the
                // permits, they take turns, rather than this one waiting
                // for a chain to run out of entries.)
                drop(permit.take());
                permit = Some(self.permit_for_held().await);
            }
        }
        drop(permit);
    }

    /// Runs one turn of `d` and carries out its decision; returns the next
    /// entry of its key to deliver, if its commit handed one over.
    async fn deliver_one(self: Arc<Self>, d: Delivery, permit: &mut Option<OwnedSemaphorePermit>) -> Option<Delivery> {
        let correlation_id = d.entry.get(field::CORRELATION_ID).map(|c| String::from_utf8_lossy(c).into_owned());
        let event = EventSpan::new(&self.handler_name, &d.stream, &d.entry.id, d.attempt, correlation_id);
        let delivery = async move {
            // The version this delivery runs on, even if a reload swaps it meanwhile.
            let b = self.binding.load_full();
            // A demoted delivery given up while its wasm still waits for CPU.
            let straggler = std::sync::Mutex::new(None);
            let (me, binding, slot) = (&self, &b, &straggler);
            let run = move |event| me.run_plugin(binding, event, slot);
            let turn = dispatch::turn(&b.handler, &d, self.max_retry_delay(), run).await;
            self.metrics.counted(turn.verdict);
            if turn.verdict == Verdict::Skipped {
                event_line!(DEBUG, "not for this handler: acknowledged without a delivery");
                self.warn_if_another_format(&d, &b);
            }
            // The permit covers the commit too: with `concurrency = 1` the
            // next event must see this one's state and publishes.
            let (stream, id, key) = (d.stream.clone(), d.entry.id.clone(), d.key.clone());
            let after = self.carry_out(d, turn.decision, &b, permit).await;
            if let Some(straggler) = straggler.into_inner().expect("never poisoned") {
                // (Only an acknowledgement hands its permit off, and a
                // delivery given up is a failed attempt.)
                debug_assert!(permit.is_some(), "a failed attempt keeps its permit");
                if let Some(permit) = permit.take() {
                    self.hold_permit_for(straggler, permit);
                }
            }
            if matches!(after, After::Retrying | After::HandedOff) {
                return None;
            }
            self.release(&stream, &id);
            let next = match after {
                After::Next(next) if !self.shutdown.is_cancelled() => next,
                // Left pending, with its key still served here: its lease is
                // given up when the consumer stops.
                After::Next(_) => return None,
                _ => {
                    if let Some(key) = &key {
                        self.unserve(&stream, key);
                    }
                    return None;
                }
            };
            // Held already: another path took it up, and goes on with the
            // key (and this chain's count of it ends).
            if self.hold(&next.stream, &next.entry.id) {
                return Some(*next);
            }
            if let Some(key) = &key {
                self.unserve(&stream, key);
            }
            None
        };
        logging::within(Some(event), delivery).await
    }

    /// Warns, once, when `d` was skipped for want of a type on a stream in
    /// Sluice's format but looks like an entry of another format: most
    /// likely its `[streams]` table is missing, and the handler skips every
    /// such entry.
    fn warn_if_another_format(&self, d: &Delivery, b: &Binding) {
        if self.format_warned.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let stream = dead_letter::origin_stream(&d.stream, &d.entry);
        if *b.handler.formats.format(stream) != Format::Sluice {
            return;
        }
        let Some(likely) = crate::format::looks_like(&d.entry) else { return };
        if !self.format_warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            event_line!(
                WARN,
                stream, group = %self.group,
                "entries of stream {stream} look like {likely} entries, but its format is sluice: they have no type, so handler {} skips them. Set [streams.\"{stream}\"] format = \"{likely}\" in the config (docs/migrating.md)",
                self.handler_name
            );
        }
    }

    /// Runs the plugin on `event`, timed; demotes the handler if it ran out
    /// of time (or promotes it once it behaves again). A demoted handler's
    /// delivery runs its wasm on the idle lane, but its time limit, and then
    /// its commit or retry, stay here at normal priority: the idle lane may
    /// get no CPU at all while the machine is busy, and an entry held past
    /// `claim_idle_ms` is taken over by another host.
    /// A delivery given up while its wasm waits for the idle lane's CPU is
    /// left in `straggler`.
    async fn run_plugin(
        self: &Arc<Self>,
        b: &Binding,
        event: Event,
        straggler: &std::sync::Mutex<Option<Straggler>>,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = if self.demotion.lane() == Lane::Idle {
            event_line!(DEBUG, "running at idle priority");
            let (outcome, given_up) = b.plugin.invoke_demoted(&b.sandbox, event).await;
            *straggler.lock().expect("never poisoned") = given_up;
            outcome
        } else {
            b.plugin.invoke(&b.sandbox, event).await
        };
        self.metrics.took(started.elapsed());
        // Only the version serving now counts: a reload's new version starts
        // afresh, whatever the old one's last deliveries do.
        if b.plugin.digest == self.binding.load().plugin.digest {
            self.record_timing(matches!(outcome, Outcome::Crash { timed_out: true, .. }));
        }
        outcome
    }

    /// Retry delays stay under `claim_idle`, so a waiting retry is never
    /// taken for an abandoned entry.
    fn max_retry_delay(&self) -> Duration {
        self.claim_idle / 2
    }

    /// Carries out `decision` for `d`. An acknowledgement of an entry not
    /// ordered by key takes `permit` and finishes without this task
    /// ([`Consumer::hand_off`]).
    async fn carry_out(
        self: &Arc<Self>,
        d: Delivery,
        decision: Decision,
        b: &Arc<Binding>,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> After {
        match decision {
            Decision::Ack { effects } => {
                let counts = (effects.publishes.len(), effects.kv.len());
                let (name, kv_prefix, formats) = (&self.handler_name, &b.handler.kv_prefix, &b.handler.formats);
                let commit = Commit::ack(&d.stream, &d.entry, name, kv_prefix, effects, formats);
                let commit = self.for_redis(self.in_key_order(commit, &d));
                // (Ordered by key, the delivery keeps its permit: its
                // key's next entry runs on it.)
                if self.ordering.is_none()
                    && let Some(permit) = permit.take()
                {
                    self.hand_off(d, b.clone(), commit, counts, permit);
                    return After::HandedOff;
                }
                let committed = self.commit("ack", commit, None).await;
                self.acked(d, committed, b, counts).await
            }
            Decision::Retry { delay, reason } => {
                event_line!(WARN, "attempt {} failed: {reason}; retrying in {} ms", d.attempt, delay.as_millis());
                self.metrics.retried();
                // On the host's runtime: the timer and the claim are Redis
                // work, and the retry then runs on the handler's lane of that
                // moment.
                self.tasks.spawn_on(self.clone().retry_later(d, delay), &self.io);
                After::Retrying
            }
            Decision::DeadLetter { reason } => self.dead_letter(&d, &reason, b).await,
        }
    }

    /// Hands the acknowledgement `commit` of `d` to the committer, which
    /// finishes the delivery when Redis answers: for a commit that went
    /// through, on the committer's task (the delivery's task has ended by
    /// then, and no thread wakes up for it); otherwise in a task on the
    /// host's runtime that goes on as [`Consumer::carry_out`] would have.
    /// `permit` is given back, and shutdown waits, until it is finished; a
    /// commit that went through hands `permit` on to an entry its batch read
    /// ([`super::intake::Refiller`]).
    fn hand_off(
        self: &Arc<Self>,
        d: Delivery,
        b: Arc<Binding>,
        commit: Arc<Commit>,
        (publishes, kv_writes): (usize, usize),
        permit: OwnedSemaphorePermit,
    ) {
        let (me, event, unfinished) = (self.clone(), logging::current_event(), self.tasks.token());
        self.committer.commit_then(commit.clone(), move |first| {
            if let Ok(Committed::Done) = first {
                if let Some(event) = &event {
                    event_line!(in: event, DEBUG, publishes, kv_writes, "handled");
                }
                me.release(&d.stream, &d.entry.id);
                drop(unfinished);
                return Some(permit);
            }
            let io = me.io.clone();
            io.spawn(logging::within(event, async move {
                let (stream, id) = (d.stream.clone(), d.entry.id.clone());
                let committed = me.commit("ack", commit, Some(first)).await;
                if me.acked(d, committed, &b, (publishes, kv_writes)).await != After::Retrying {
                    me.release(&stream, &id);
                }
                drop((permit, unfinished));
            }));
            None
        });
    }

    /// What follows the acknowledgement of `d`, `committed` (`None`: it
    /// failed and the entry stays pending).
    async fn acked(
        self: &Arc<Self>,
        d: Delivery,
        committed: Option<Committed>,
        b: &Arc<Binding>,
        (publishes, kv_writes): (usize, usize),
    ) -> After {
        match committed {
            Some(Committed::Done) => {
                event_line!(DEBUG, publishes, kv_writes, "handled");
            }
            Some(Committed::Next(next)) => {
                event_line!(DEBUG, publishes, kv_writes, "handled; the next entry of its key follows");
                return After::Next(next);
            }
            Some(Committed::OutOfTurn(first)) => return self.out_of_turn(first),
            Some(Committed::AlreadyFinished) => self.already_finished(&d).await,
            Some(Committed::TakenOver(by)) => self.taken_over(&by),
            // The handler's output cannot be written: a failed attempt.
            Some(Committed::Refused(why)) => {
                let policy = &b.handler.retry;
                let decision = dispatch::commit_refused(&why, d.attempt, policy, self.max_retry_delay());
                return Box::pin(self.carry_out(d, decision, b, &mut None)).await;
            }
            None => {}
        }
        After::Finished
    }

    /// `commit` of `d`, moving its key on to its next entry if it has one.
    fn in_key_order(&self, commit: Commit, d: &Delivery) -> Commit {
        match &self.ordering {
            Some(order) => commit.in_key_order(d.key.clone(), order.ttl_ms()),
            None => commit,
        }
    }

    async fn dead_letter(self: &Arc<Self>, d: &Delivery, reason: &str, b: &Binding) -> After {
        let (origin_stream, origin_id) = dead_letter::origin(&d.stream, &d.entry);
        let target = b.handler.dead_letter_stream(&origin_stream);
        let failure = Failure {
            handler: &self.handler_name,
            origin_stream: &origin_stream,
            origin_id: &origin_id,
            reason,
            attempts: d.attempt,
            plugin_version: &b.plugin.version,
            failed_at_ms: unix_ms(),
        };
        let format = b.handler.formats.format(&origin_stream);
        let commit = Commit::dead_letter(&target, &d.stream, &d.entry, &failure, format);
        match self.commit("dead-letter", self.for_redis(self.in_key_order(commit, d)), None).await {
            Some(done @ (Committed::Done | Committed::Next(_))) => {
                self.metrics.dead_lettered();
                event_line!(ERROR, dead_letter = %target, "dead-lettered after {} attempt(s): {reason}", d.attempt);
                if let Committed::Next(next) = done {
                    return After::Next(next);
                }
            }
            Some(Committed::OutOfTurn(first)) => return self.out_of_turn(first),
            Some(Committed::AlreadyFinished) => self.already_finished(d).await,
            Some(Committed::TakenOver(by)) => self.taken_over(&by),
            Some(Committed::Refused(why)) => event_line!(
                ERROR,
                "cannot dead-letter ({why}); the entry stays pending and is tried again after claim_idle_ms. Failure: {reason}"
            ),
            None => {}
        }
        After::Finished
    }

    /// The commit of `d` found its entry no longer pending in the group, so
    /// nothing was written. Usually another consumer finished the entry
    /// first: it took the entry over from this host (presumed dead: paused,
    /// or cut off from Redis past `claim_idle_ms`), or this host took it
    /// over from that consumer, which then finished its own delivery of it.
    /// Redis is asked which (a rare outcome): the group may also have been
    /// made again or set back meanwhile, or be missing.
    async fn already_finished(&self, d: &Delivery) {
        match self.entry_state(&d.stream, &d.entry.id).await {
            // (Ordered by key, the script gave the key's lease up already:
            // an entry no longer pending ends the key's chain there.)
            Ok(EntryState::GroupMissing) => self.group_missing(),
            Ok(EntryState::NotDelivered | EntryState::Pending) => self.group_set_back(),
            Err(e) => event_line!(
                WARN,
                group = %self.group,
                "the entry was no longer pending (finished by another consumer, or its group made again, set back or deleted); this delivery's output was not written. Asking Redis which failed: {e}"
            ),
            // (Or, after the group was made again or set back, by this
            // host's own second delivery of an entry it held: the group
            // delivered it again while this one ran.)
            Ok(EntryState::Acknowledged) => {
                self.metrics.already_finished();
                event_line!(
                    WARN,
                    group = %self.group,
                    "the entry was finished by another consumer meanwhile (one of the two took it over from the other after claim_idle_ms); this delivery's output was not written"
                );
            }
        }
    }

    /// Where entry `id` of `stream` stands in the group now.
    async fn entry_state(&self, stream: &str, id: &str) -> Result<EntryState, stream::Error> {
        stream::entry_state(&mut self.redis.conn.clone(), stream, &self.group, id).await
    }

    /// The group was made again or set back while this delivery ran. It may
    /// have delivered the entry again to this consumer meanwhile, and that
    /// copy, met while this delivery held the entry, is pending here with
    /// nothing running it: taken back soon, not at the next scan.
    fn group_set_back(&self) {
        event_line!(
            WARN,
            group = %self.group,
            "the consumer group was made again or set back (XGROUP CREATE or SETID, or a failover to a replica behind) while this entry was handled: the entry was no longer pending, and the group delivers it again; this delivery's output was not written"
        );
        self.orphans.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The consumer group, or its stream, is gone: nothing can be
    /// acknowledged. The reader, meeting the same error, makes the group
    /// again from the stream's start.
    fn group_missing(&self) {
        event_line!(
            WARN,
            group = %self.group,
            "the consumer group is missing (deleted, or lost by Redis: a restart without persistence, a failover to a replica it had not reached); nothing was acknowledged or written. The group is made again from the stream's start (with the stream, if that is gone too), so every entry still in the stream is delivered again"
        );
    }

    /// The entry of this delivery, ordered by key, is no longer its key's
    /// first: an earlier entry was queued ahead of it while it was handled
    /// (its group made again or set back, and the key's earlier entries
    /// delivered again). Nothing was written; the entry waits, pending, for
    /// its turn, and the key goes on here from `first`.
    fn out_of_turn(&self, first: Box<Delivery>) -> After {
        event_line!(
            WARN,
            group = %self.group,
            "an earlier entry of its key was queued ahead of this one while it was handled (most likely the consumer group was made again or set back: XGROUP CREATE or SETID, or a failover to a replica behind): this delivery's output was not written, and the entry is delivered again after the earlier ones, in its key's order"
        );
        After::Next(first)
    }

    /// Another consumer took the entry over while this host worked on it:
    /// this host was presumed dead (paused, or cut off from Redis, past
    /// `claim_idle_ms`). It leaves the entry to its new owner.
    fn taken_over(&self, by: &str) {
        self.metrics.ownership_lost();
        event_line!(
            WARN,
            group = %self.group,
            owner = by,
            "this host lost the entry to consumer {by}, which took it over after claim_idle_ms (this host was presumed dead); not committing: {by} will"
        );
    }

    /// `commit` as this consumer's Redis takes it (in a cluster, with its
    /// writes to other slots routed through the outbox).
    fn for_redis(&self, commit: Commit) -> Arc<Commit> {
        Arc::new(match self.redis.is_cluster() {
            true => commit.routed_for_cluster(),
            false => commit,
        })
    }

    /// Runs a commit (in the consumer's next batch), trying again on Redis
    /// errors. Gives up (`None`) after [`COMMIT_TRIES`]: the entry stays
    /// pending and is claimed again later, so nothing is lost (at worst it
    /// is handled twice). `first`: the result of a first try already made.
    async fn commit(
        self: &Arc<Self>,
        what: &str,
        commit: Arc<Commit>,
        mut first: Option<Result<Committed, stream::Error>>,
    ) -> Option<Committed> {
        let mut backoff = Backoff::new();
        // When the first try failed, if one did.
        let mut failing_since: Option<Instant> = None;
        // Whether an earlier try may have gone through (its reply was lost).
        let mut unsure = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match first.take() {
                Some(result) => result,
                None => self.committer.commit(commit.clone()).await,
            };
            // The script call met a missing group: this commit's own, or
            // another stream's that shared the call, which may have made
            // this commit before it failed.
            if let Err(e) = &result
                && e.is_no_group()
            {
                let (stream, id) = commit.entry();
                match self.entry_state(stream, id).await {
                    Ok(EntryState::GroupMissing) => {
                        self.group_missing();
                        if let Some(key) = commit.key() {
                            self.give_up_key(stream, key).await;
                        }
                        break;
                    }
                    Ok(EntryState::NotDelivered) => {
                        self.group_set_back();
                        if let Some(key) = commit.key() {
                            self.give_up_key(stream, key).await;
                        }
                        break;
                    }
                    // Made, and its key moved on to a next entry that is
                    // now this consumer's, which only the script's answer
                    // names: sent again at once (while tries are left; on
                    // the last, done, and this host takes that entry back
                    // soon). The script finds the entry finished and
                    // answers as after a lost reply.
                    Ok(EntryState::Acknowledged) if commit.moves_key_on() && attempt < COMMIT_TRIES => {
                        event_line!(
                            DEBUG,
                            "{what}: made by the call before it met a missing group; asking for its key's next entry"
                        );
                        unsure = true;
                        continue;
                    }
                    // Made (or, as after a lost reply, finished by another
                    // consumer meanwhile). On the last try of a commit that
                    // moved its key on, the key's next entry is this
                    // consumer's with no chain to run it: taken back soon.
                    Ok(EntryState::Acknowledged) => {
                        event_line!(DEBUG, "{what}: made by the call before it met a missing group");
                        if commit.moves_key_on() {
                            self.recover_own_soon();
                        }
                        return Some(Committed::Done);
                    }
                    // Not made: tried again.
                    Ok(EntryState::Pending) | Err(_) => {}
                }
            }
            match result {
                Ok(Committed::AlreadyFinished) if unsure => {
                    event_line!(DEBUG, "{what}: an earlier try went through (its reply was lost)");
                    return Some(Committed::Done);
                }
                Ok(committed) => {
                    if failing_since.is_some() {
                        event_line!(INFO, "{what} went through on try {attempt}");
                    }
                    return Some(committed);
                }
                Err(e) if e.is_no_permission() => {
                    event_line!(
                        ERROR,
                        "{what} refused: {e}; the Redis user needs the rule in docs/operating.md (ACL users). The entry stays pending"
                    );
                    break;
                }
                Err(e) => {
                    let first_failure = failing_since.is_none();
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    // Redis away for now (restarting, failing over, out of
                    // memory): the handler's result is kept and sent until
                    // Redis takes it, not thrown away to run the handler
                    // again (a new attempt each time, and at the end a dead
                    // letter for an event the handler finished). Until the
                    // host stops.
                    let waiting = e.is_transient() && !self.shutdown.is_cancelled();
                    if !waiting && (attempt >= COMMIT_TRIES || since.elapsed() >= COMMIT_RETRY_FOR) {
                        event_line!(ERROR, "{what} failed: {e}; the entry stays pending and will be delivered again");
                        self.orphans.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    // Said once per commit; the tries after it, at debug.
                    if first_failure && e.is_transient() {
                        event_line!(WARN, "{what} failed: {e}; trying again until Redis takes it");
                    } else if first_failure {
                        event_line!(WARN, "{what} failed: {e}; trying again");
                    } else {
                        event_line!(DEBUG, "{what} failed again (try {attempt}): {e}");
                    }
                    unsure |= e.reply_lost();
                    let pause = backoff.next();
                    if self.shutdown.is_cancelled() {
                        tokio::time::sleep(pause).await;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.shutdown.cancelled() => {}
                        }
                    }
                }
            }
        }
        None
    }

    /// After `delay`, takes the entry back (a new delivery in Redis's count)
    /// and starts delivering it again. If it was taken over meanwhile,
    /// leaves it. (Boxed: a retry starts a delivery, and a delivery may
    /// schedule a retry.)
    fn retry_later(self: Arc<Self>, d: Delivery, delay: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.pause(delay).await;
            // Still pending if this ends early: delivered again after a
            // restart, or taken back after a reconnect.
            let permit = match self.permit().await {
                Some(p) if !self.shutdown.is_cancelled() => p,
                _ => return self.let_go(&d),
            };
            let mut conn = self.redis.conn.clone();
            let ids = [d.entry.id.clone()];
            match stream::claim(&mut conn, &d.stream, &self.group, &self.name, delay, &ids).await {
                Ok(mut claimed) if !claimed.is_empty() => {
                    let next =
                        Delivery { stream: d.stream, entry: claimed.remove(0), attempt: d.attempt + 1, key: d.key };
                    self.start_delivery(next, permit);
                }
                Ok(_) => {
                    warn!(
                        id = %d.entry.id, stream = %d.stream, group = %self.group,
                        "the entry waiting for its retry was no longer this host's to claim: another consumer took it over (this host was presumed dead: slow, or cut off from Redis, past claim_idle_ms), or it was deleted, or its group made again; left to them"
                    );
                    self.retry_lost(&d).await
                }
                Err(e) if e.is_no_group() => {
                    // (The read loop, meeting the same, warns and makes the group again.)
                    debug!(id = %d.entry.id, "the consumer group went missing before this entry's retry");
                    self.retry_lost(&d).await;
                }
                Err(e) => {
                    warn!(id = %d.entry.id, "claiming for retry failed: {e}; taking it back shortly");
                    self.let_go(&d);
                    self.orphans.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    }

    /// The entry `d` waiting for its retry is no longer this consumer's to
    /// claim: taken over, deleted, or its group lost. It is let go, with its
    /// key's lease; the group may have delivered it (and its key's other
    /// entries) here again meanwhile, and those are taken back soon.
    async fn retry_lost(self: &Arc<Self>, d: &Delivery) {
        match &d.key {
            Some(key) => self.give_up_key(&d.stream, key).await,
            None => self.recover_own_soon(),
        }
        self.let_go(d);
    }
}

/// What became of a delivery once its decision was carried out.
#[derive(Debug, PartialEq, Eq)]
enum After {
    /// Finished, or left pending for later: nothing more to do here.
    Finished,
    /// A retry is scheduled; the entry (and its key) stay held here.
    Retrying,
    /// Its acknowledgement was handed to the committer, which finishes it
    /// ([`Consumer::hand_off`]).
    HandedOff,
    /// Finished, and the next entry of its key is this consumer's to
    /// deliver now.
    Next(Box<Delivery>),
}

impl Consumer {
    /// `d` is no longer handled here, nor its key served: left pending. (On
    /// shutdown its key stays counted as served, so that its lease is given
    /// up when the consumer stops.)
    pub(super) fn let_go(&self, d: &Delivery) {
        self.release(&d.stream, &d.entry.id);
        if let (Some(key), false) = (&d.key, self.shutdown.is_cancelled()) {
            self.unserve(&d.stream, key);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
