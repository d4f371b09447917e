//! Taking entries in: this consumer's own leftovers, new entries, and
//! entries abandoned by dead consumers; each spawned as a delivery when a
//! permit is free. New entries come from the read loop, and under load
//! from the committer's batches, which read for the permits their finished
//! deliveries give back ([`Refiller`]). (Whether an entry is delivered at
//! all is the delivery decision's to say, in [`crate::dispatch`].)

use super::Consumer;
use super::gate::Pass;
use crate::stream::{self, Delivery, Error, Reader, Refill, Room};
use crate::stream::{Backoff, ERROR_PAUSE};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

/// How long an entry of this consumer's must have waited since it was
/// delivered before, once reading has started, it is taken for one whose
/// reply was lost, where the reads in flight are not known
/// ([`super::gate`]): by the periodic recovery, which finds losses that no
/// error reported, and for a handler that orders by key. Lost replies are
/// noticed by an error; for a handler ordered by key, its entries are taken
/// back once they have waited that long ([`Consumer::recover_own_soon`]).
pub(super) const RECOVER_MIN_IDLE: Duration = ERROR_PAUSE;
/// Most entries one `XREADGROUP` asks for.
pub(super) const READ_BATCH: usize = 256;
/// How long one blocking read waits; also the longest a shutdown waits for
/// the reader to notice it.
pub(super) const READ_BLOCK: Duration = Duration::from_millis(1_000);

impl Consumer {
    /// Delivers again what is pending with this consumer and not being
    /// handled here: left by an earlier run under the same name, or read by
    /// a reply that a lost connection never brought. Pages by free permits:
    /// a claimed entry that waited past claim_idle would be claimed again
    /// elsewhere. `min_idle` spares entries delivered more recently: once
    /// reading has started, a read's reply may be on its way, its entries
    /// not yet held by the delivery that will handle them.
    pub(super) async fn recover_own(self: &Arc<Self>, min_idle: Duration) {
        self.take_back_own(min_idle, true).await
    }

    /// Takes back at once what lost replies left pending here (a handler
    /// that does not order by key): closes the gate to reads and claims,
    /// waits for those in flight to come in (their entries then held), and
    /// takes back everything pending here and not held, however recently
    /// delivered. A read still in flight after [`RECOVER_MIN_IDLE`] (a
    /// blocking read of another slot's read loop, in a cluster) is spared
    /// as before: the entries delivered that recently stay.
    async fn recover_lost(self: &Arc<Self>) {
        let closed = self.reads.close(RECOVER_MIN_IDLE).await;
        let min_idle = if closed.empty { Duration::ZERO } else { RECOVER_MIN_IDLE };
        self.take_back_own(min_idle, false).await;
        drop(closed);
    }

    /// [`Consumer::recover_own`]; each page through the gate to reads if
    /// `through_gate` (unless the caller has closed it).
    async fn take_back_own(self: &Arc<Self>, min_idle: Duration, through_gate: bool) {
        if let Some(order) = &self.ordering {
            return self.take_pending_in_order(order, true, min_idle).await;
        }
        for s in self.streams.iter() {
            let mut after = "-".to_owned();
            loop {
                let Some(room) = self.room().await else { return };
                let pass = match through_gate {
                    true => Some(self.reads.pass().await),
                    false => None,
                };
                let mut conn = self.redis.conn.clone();
                let skip = |id: &str| self.holds(s, id);
                match stream::own_pending(&mut conn, s, &self.group, &self.name, (&after, room), min_idle, skip).await {
                    Ok(stream::Page { found, next, deleted }) => {
                        if !found.is_empty() {
                            info!(stream = %s, count = found.len(), "taking back entries pending with this consumer (an earlier run, or a lost reply)");
                        }
                        self.found_deleted(s, &deleted);
                        let found = self.take_up_all(found);
                        drop(pass);
                        self.start_held(found).await;
                        match next {
                            Some(n) => after = n,
                            None => break,
                        }
                    }
                    Err(e) => {
                        // (Out of the gate first: the recovery this asks
                        // for would wait for it.)
                        drop(pass);
                        // Tried again on the read loop's next turn.
                        warn!("{e:#}; taking back this consumer's pending entries again shortly");
                        self.orphans.store(true, Ordering::SeqCst);
                        self.pause(ERROR_PAUSE).await;
                        return;
                    }
                }
            }
        }
    }

    /// Waits until at least one permit is free and returns how many are;
    /// `None` on shutdown.
    pub(super) async fn room(&self) -> Option<usize> {
        let permit = self.permit().await?;
        let room = self.permits.available_permits() + 1;
        drop(permit);
        Some(room)
    }

    /// Reads new entries of `streams` while there is room for them, until
    /// shutdown. One server: one loop reads every stream. A cluster: one
    /// loop per slot, since one read can only name keys of one slot.
    pub(super) async fn read_loop(self: Arc<Self>, streams: Vec<String>) {
        let mut reader: Option<Reader> = None;
        let mut backoff = Backoff::new();
        while !self.shutdown.is_cancelled() {
            // A reply lost with its connection (a read's, a claim's) left
            // entries pending here that nothing handles: take them back now
            // rather than after claim_idle_ms.
            if self.orphans.swap(false, Ordering::SeqCst) {
                self.recover_lost().await;
            }
            let Some(permit) = self.read_permit().await else { break };
            // (After the permit: a read loop waiting for one with a pass in
            // hand would keep a recovery waiting, and one waiting for the
            // gate with a permit in hand could keep it from its permits.)
            let Some(pass) = self.reads.try_pass() else {
                drop(permit);
                drop(self.reads.pass().await);
                continue;
            };
            let r = match reader.as_mut() {
                Some(r) => r,
                None => match self.connect_reader(&streams).await {
                    Ok(r) => reader.insert(r),
                    Err(e) => {
                        self.read_trouble(&mut backoff, format_args!("{e:#}; trying again"));
                        self.pause(backoff.next()).await;
                        continue;
                    }
                },
            };
            let room = (self.permits.available_permits() + 1).min(READ_BATCH);
            match self.read_until_cancelled(r, room).await {
                Ok(found) => {
                    self.reading_again(&mut backoff);
                    self.hand_out(found, permit, Some(pass)).await;
                }
                Err(e) => {
                    drop((permit, pass));
                    self.read_failed(e, &mut reader, &mut backoff).await;
                }
            }
        }
    }

    pub(super) async fn connect_reader(&self, streams: &[String]) -> Result<Reader, Error> {
        let conn = self.redis.blocking_connection(READ_BLOCK).await?;
        Reader::new(conn, &self.group, &self.name, streams).await
    }

    /// One blocking read. On shutdown the block is interrupted (`CLIENT
    /// UNBLOCK`) rather than abandoned, so whatever it already took is still
    /// dispatched and nothing is left pending unseen. (In a cluster it runs
    /// to the end of its block.)
    async fn read_until_cancelled(&self, r: &mut Reader, room: usize) -> Result<Vec<Delivery>, Error> {
        let client_id = r.client_id;
        let read = r.read_new(room, READ_BLOCK);
        tokio::pin!(read);
        let Some(client_id) = client_id else { return read.await };
        tokio::select! {
            result = &mut read => result,
            _ = self.shutdown.cancelled() => {
                // Repeated: an unblock that reaches Redis before the read
                // does has nothing to interrupt. Bounded: the read's own
                // response timeout ends it in any case.
                for _ in 0..50 {
                    if let Err(e) = stream::unblock(&mut self.redis.conn.clone(), client_id).await {
                        debug!("CLIENT UNBLOCK failed: {e}");
                    }
                    tokio::select! {
                        result = &mut read => return result,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                read.await
            }
        }
    }

    /// A read failed with `e`: makes the group again if it is missing, or
    /// pauses (`backoff`) before the next read, dropping `reader` if its
    /// connection failed. A reply lost with its connection may have left
    /// entries pending here: taken back once they are old enough not to be
    /// those of a read still on its way ([`Consumer::recover_own_soon`]).
    /// A server that became a replica has its connection replaced. Redis
    /// answering with another error (a permission refused, loading its
    /// data, out of memory, a cluster down) leaves the connection as it is:
    /// a new one would meet the same, and in a cluster each costs a new
    /// client (the layout asked for, a TLS handshake per node).
    pub(super) async fn read_failed(self: &Arc<Self>, e: Error, reader: &mut Option<Reader>, backoff: &mut Backoff) {
        if e.is_no_group() {
            // The stream or group went away (deleted, or Redis lost its data).
            warn!("consumer group missing; creating it again");
            self.until_ready(|| self.ensure_groups()).await;
        } else if e.reply_lost() {
            self.read_trouble(backoff, format_args!("reading from Redis failed: {e}; reconnecting"));
            *reader = None;
            self.recover_own_soon();
        } else if e.reached_a_replica() {
            // A new connection finds the new primary where the address now
            // leads (the refused read took nothing).
            self.read_trouble(
                backoff,
                format_args!("reading from Redis failed: {e}; the server became a replica (a failover?): reconnecting"),
            );
            *reader = None;
        } else {
            self.read_trouble(backoff, format_args!("reading from Redis failed: {e}; trying again"));
        }
        // (Paused after NOGROUP too: a read that keeps meeting it, though
        // the groups were made, must not spin.)
        self.pause(backoff.next()).await;
    }

    /// Says that a read (or opening a reader's connection) failed:
    /// `message`, naming this consumer's streams and group, as a warning
    /// for the first failure of a run and once a minute after
    /// ([`Backoff::warn_due`]), else as a debug line.
    pub(super) fn read_trouble(&self, backoff: &mut Backoff, message: std::fmt::Arguments<'_>) {
        let streams = self.streams.join(", ");
        if backoff.warn_due() {
            let (errors, lasted) = backoff.so_far();
            match errors {
                1 => warn!(streams, group = %self.group, "{message}"),
                _ => {
                    warn!(streams, group = %self.group, "{message} (still failing: {errors} tries over {} s)", lasted.as_secs())
                }
            }
        } else {
            debug!(streams, group = %self.group, "{message}");
        }
    }

    /// A read went through: says so if it ends a run of failures.
    pub(super) fn reading_again(&self, backoff: &mut Backoff) {
        if let Some((errors, lasted)) = backoff.reset() {
            info!(group = %self.group, "reading from Redis again, after {errors} failed tries over {} ms", lasted.as_millis());
        }
    }

    /// Spawns a delivery for each of `found`, read with `permit` in hand
    /// (and `pass`, given up once they are held).
    pub(super) async fn hand_out(
        self: &Arc<Self>,
        found: Vec<Delivery>,
        permit: OwnedSemaphorePermit,
        pass: Option<Pass>,
    ) {
        // Held at once, not once a permit is free: nothing else here may
        // take them up meanwhile (a recovery of this consumer's own).
        let found = self.take_up_all(found);
        drop(pass);
        let mut first = Some(permit);
        for d in found {
            // Not cancelled by shutdown: these entries are already read (and
            // pending with this consumer), and the read asked for only as
            // many as there were permits, so they start soon.
            let permit = match first.take() {
                Some(p) => p,
                None => self.permit_for_held().await,
            };
            self.start_delivery(d, permit);
        }
    }

    /// Spawns a delivery for each of `found`, as permits allow.
    pub(super) async fn spawn_all(self: &Arc<Self>, found: Vec<Delivery>) {
        let found = self.take_up_all(found);
        self.start_held(found).await
    }

    /// Spawns a delivery for each of `found`, held here already, as permits
    /// allow.
    async fn start_held(self: &Arc<Self>, found: Vec<Delivery>) {
        let mut found = found.into_iter();
        while let Some(d) = found.next() {
            let Some(permit) = self.permit().await else {
                // Left pending as shutdown begins: delivered again later.
                for d in std::iter::once(d).chain(found) {
                    self.let_go(&d);
                }
                return;
            };
            self.start_delivery(d, permit);
        }
    }

    /// Takes over entries idle too long with any consumer, every half
    /// `claim_idle`, until shutdown.
    pub(super) async fn claim_loop(self: Arc<Self>) {
        let every = (self.claim_idle / 2).max(Duration::from_millis(50));
        loop {
            self.pause(every).await;
            if self.shutdown.is_cancelled() {
                return;
            }
            // Entries pending here that nothing handles (a lost reply that
            // no error reported): taken back before others' are taken over.
            self.recover_own(RECOVER_MIN_IDLE).await;
            if let Some(order) = &self.ordering {
                self.take_pending_in_order(order, false, self.claim_idle).await;
                continue;
            }
            for s in self.streams.iter() {
                self.claim_stream(s).await;
            }
        }
    }

    /// Warns of entries of `stream` found deleted (an `XDEL`, or another
    /// program's trim) while pending with this group, before anyone finished
    /// them: they were neither handled nor dead-lettered, and nothing here
    /// can bring them back.
    pub(super) fn found_deleted(&self, stream: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.metrics.deleted_unfinished(ids.len());
        let shown = ids.iter().take(10).map(String::as_str).collect::<Vec<_>>().join(", ");
        let more = if ids.len() > 10 { format!(" and {} more", ids.len() - 10) } else { String::new() };
        // (The handler named here too: the committer's task, which reports
        // what a key's hand-on found, runs outside the handler's span.)
        warn!(stream, group = %self.group, handler = %self.handler_name, count = ids.len(), "{} entr(ies) pending with group {} were deleted from stream {stream} before they were finished ({shown}{more}), by an XDEL or by a trim that does not wait for consumer groups (another program's XTRIM or XADD MAXLEN): they were neither handled nor dead-lettered, and Redis has dropped them from the group", ids.len(), self.group);
    }

    async fn claim_stream(self: &Arc<Self>, s: &str) {
        let mut cursor = "0-0".to_owned();
        loop {
            let mut conn = self.redis.conn.clone();
            // Only as many as can start now: a claimed entry that waited for
            // a permit past claim_idle would be claimed again elsewhere.
            let room = self.permits.available_permits().max(1);
            let pass = self.reads.pass().await;
            let claimed =
                stream::take_over(&mut conn, s, &self.group, &self.name, self.claim_idle, &cursor, room).await;
            match claimed {
                Ok(stream::Page { found, next, deleted }) => {
                    if !found.is_empty() {
                        info!(stream = %s, count = found.len(), "claimed entries idle for over {} ms", self.claim_idle.as_millis());
                    }
                    self.found_deleted(s, &deleted);
                    let found = self.take_up_all(found);
                    drop(pass);
                    self.start_held(found).await;
                    match next {
                        Some(next) if !self.shutdown.is_cancelled() => cursor = next,
                        _ => return,
                    }
                }
                Err(e) => {
                    // A host that cannot take over abandoned entries leaves
                    // them stuck: the operator must hear of it.
                    self.metrics.claim_failed();
                    return warn!(stream = %s, group = %self.group, "cannot take over entries abandoned by other consumers: {e}; trying again in {} ms", (self.claim_idle / 2).as_millis());
                }
            }
        }
    }
}

/// A consumer's [`Refill`]: its committer's batches read new entries for
/// the permits their finished deliveries give back, and those entries run
/// here at once, on those permits. Under load, reading so takes the place of
/// the read loop's own `XREADGROUP` calls; it stops whenever anything else
/// waits for a permit, so claims, retries and a smaller `concurrency` get
/// theirs as before, and when the streams run dry the read loop takes over.
pub(super) struct Refiller(pub(super) Weak<Consumer>);

impl Refill for Refiller {
    fn room(&self, finishing: usize) -> Option<Room> {
        // Ordered by key, reads go through the key queues (ordered.rs).
        let c = self.0.upgrade().filter(|c| finishing > 0 && c.ordering.is_none())?;
        // Taken before shutdown is checked: once it is seen not to have
        // begun, the consumer's tasks cannot have been waited for yet, and
        // this keeps them from being until what the batch reads is started.
        let tracked = c.tasks.token();
        let others_first = c.waiting.load(Ordering::SeqCst) > 0 || c.orphans.load(Ordering::SeqCst);
        if others_first || c.shutdown.is_cancelled() {
            return None;
        }
        let in_flight = Box::new(c.reads.try_pass()?);
        Some(Room { streams: c.streams.clone(), count: finishing.min(READ_BATCH), tracked, in_flight })
    }

    fn found(&self, room: Room, found: Vec<Delivery>, permits: Vec<OwnedSemaphorePermit>) {
        if let Some(c) = self.0.upgrade() {
            c.refilled(found, permits);
        }
        drop(room);
    }

    fn lost(&self, room: Room) {
        if let Some(c) = self.0.upgrade() {
            c.recover_own_soon();
        }
        drop(room);
    }

    fn deleted(&self, deleted: Vec<(String, String)>) {
        if let Some(c) = self.0.upgrade() {
            for (s, ids) in by_stream(deleted) {
                c.found_deleted(&s, &ids);
            }
        }
    }
}

/// (stream, id) pairs grouped by stream, in the order each stream first
/// comes.
pub(super) fn by_stream(pairs: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (s, id) in pairs {
        match out.iter_mut().find(|(t, _)| *t == s) {
            Some((_, ids)) => ids.push(id),
            None => out.push((s, vec![id])),
        }
    }
    out
}

impl Consumer {
    /// Has the read loop take back this consumer's pending entries that
    /// nothing here handles: at once (see [`Consumer::recover_lost`]), or,
    /// for a handler ordered by key, once entries delivered now are old
    /// enough for it: its recovery spares entries delivered more recently
    /// than [`RECOVER_MIN_IDLE`].
    pub(super) fn recover_own_soon(self: &Arc<Self>) {
        if self.ordering.is_none() {
            self.orphans.store(true, Ordering::SeqCst);
            return;
        }
        let me = self.clone();
        self.io.spawn(async move {
            tokio::time::sleep(RECOVER_MIN_IDLE).await;
            me.orphans.store(true, Ordering::SeqCst);
        });
    }

    /// Starts deliveries of `found`, read by a commit's batch, on `permits`
    /// given back by the deliveries it finished. Any beyond them (when the
    /// batch also finished commits that hold no permit) start as permits
    /// come back. As with a read's entries, shutdown does not stop them:
    /// they are read, and pending here.
    fn refilled(self: &Arc<Self>, found: Vec<Delivery>, permits: Vec<OwnedSemaphorePermit>) {
        let mut found = found.into_iter();
        for permit in permits {
            let Some(d) = found.by_ref().find(|d| self.take_up_one(d)) else { break };
            self.start_delivery(d, permit);
        }
        let rest = self.take_up_all(found.collect());
        if !rest.is_empty() {
            let me = self.clone();
            self.tasks.spawn_on(
                async move {
                    for d in rest {
                        let permit = me.permit_for_held().await;
                        me.start_delivery(d, permit);
                    }
                },
                &self.io,
            );
        }
    }
}
