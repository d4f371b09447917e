//! The relay of a Redis Cluster: moves the writes a commit put in a stream's
//! outbox (those whose keys live in another slot, see [`super::commit`]) to
//! their targets, in outbox order within each slot, each exactly once. Every
//! host runs a relay per outbox, and a lease lets one of them work at a
//! time. A round sends one script per target slot, all at once; a write
//! repeated by a relay that was interrupted, or that lost its lease while
//! paused, is recognised by the mark in its target's slot (`relay.lua`) and
//! skipped. An entry leaves the outbox only once a replica of its target's
//! master has the write too, where that master has replicas
//! ([`super::replicas`]): a failover cannot lose a write the outbox no
//! longer holds.

use super::backoff::Backoff;
use super::commit::Relayed;
use super::conn::{Conn, Redis};
use super::error::{Context, Error};
use super::lease::Lease;
use super::replicas::{Replicas, WAIT_TIMEOUT, Waited};
use super::{reply, slot};
use crate::event::Entry;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

static APPLY: LazyLock<super::script::Script> = LazyLock::new(|| super::script::Script::new(include_str!("relay.lua")));

/// How long a relay's lease lasts without renewal: how long an outbox waits
/// when its relay's host dies.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Outbox entries read at a time.
const BATCH: usize = 256;
/// How long one read waits for the outbox to fill.
const BLOCK: Duration = Duration::from_secs(1);
/// Pause after an error, or while another host holds the lease.
const PAUSE: Duration = Duration::from_millis(500);

/// The relay of one outbox.
pub struct Relay {
    outbox: String,
    lease: Lease,
    redis: Redis,
    /// Its own connection: for the blocking reads of the outbox, and for
    /// the writes to the targets, each group's with a `WAIT` behind it.
    own: Option<Conn>,
    /// Which targets' masters have replicas to wait for.
    replicas: Replicas,
    /// Rounds in a row in which a replica did not have every write.
    unreplicated: Backoff,
}

impl Relay {
    /// The relay of `outbox`, run by this host (`holder`, its consumer name).
    pub fn new(outbox: String, holder: String, redis: Redis) -> Relay {
        let lease_key = format!("sluice:relay-lease:{}", slot::tag_for(&outbox));
        Relay {
            lease: Lease::new(lease_key, holder, LEASE_TTL),
            outbox,
            redis,
            own: None,
            replicas: Replicas::default(),
            unreplicated: Backoff::new(),
        }
    }

    /// Relays until `shutdown` is cancelled. Failures are warned about and
    /// tried again: an outbox entry leaves only once its write has landed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.relay_until(&shutdown).await;
        // Another host takes over at once, not when it expires.
        let _ = self.lease.release(&mut self.redis.conn).await;
        crate::metrics::relay_unreplicated(&self.outbox, 0);
    }

    async fn relay_until(&mut self, shutdown: &CancellationToken) {
        // Only for what is said: the pause stays PAUSE.
        let mut trouble = Backoff::new();
        while !shutdown.is_cancelled() {
            let pause = match self.step().await {
                Ok(more) => {
                    if let Some((errors, lasted)) = trouble.reset() {
                        info!(outbox = %self.outbox, "relaying writes to other cluster slots again, after {errors} failed tries over {} ms", lasted.as_millis());
                    }
                    match more {
                        true => continue,
                        false => PAUSE,
                    }
                }
                Err(e) => {
                    // A target that is not a stream fails every round until
                    // it is fixed: said once, then once a minute.
                    if trouble.warn_due() {
                        let (errors, lasted) = trouble.so_far();
                        warn!(outbox = %self.outbox, "relaying writes to other cluster slots failed: {e}; trying again (the outbox's writes wait behind it{})", match errors {
                            1 => String::new(),
                            _ => format!("; {errors} failed tries over {} s", lasted.as_secs()),
                        });
                    } else {
                        debug!(outbox = %self.outbox, "relaying writes to other cluster slots failed again: {e}");
                    }
                    self.own = None;
                    self.lease.lost();
                    PAUSE
                }
            };
            tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = shutdown.cancelled() => {} }
        }
    }

    /// One round: with the lease, reads what waits in the outbox (or waits
    /// up to [`BLOCK`] for something) and relays it. `false` when another
    /// host holds the lease.
    async fn step(&mut self) -> Result<bool, Error> {
        if !self.lease.hold(&mut self.redis.conn).await? {
            crate::metrics::relay_unreplicated(&self.outbox, 0);
            return Ok(false);
        }
        let waiting = self.read().await?;
        if waiting.is_empty() {
            return Ok(true);
        }
        // One script per slot, all at once; marks make a repeat of what
        // went through write nothing.
        let batches = self.by_slot(&waiting)?;
        let own = self.own_connection().await?;
        let slots: Vec<u16> = batches.iter().map(|b| b.slot).collect();
        self.replicas.refresh(&mut own.clone(), &slots, false).await?;
        let relayed = futures::future::join_all(batches.iter().map(|b| self.apply(b, own.clone()))).await;
        let relayed = relayed.into_iter().collect::<Result<Vec<Waited>, Error>>()?;
        let mut unreplicated: Vec<&Batch> =
            batches.iter().zip(relayed).filter(|(_, w)| *w == Waited::NotYet).map(|(b, _)| b).collect();
        if !unreplicated.is_empty() {
            // A replica that stopped acknowledging may have failed: if the
            // cluster says so, it is no longer waited for.
            self.replicas.refresh(&mut own.clone(), &[], true).await?;
            unreplicated.retain(|b| self.replicas.of(b.slot) > 0);
        }
        let done: Vec<String> = batches
            .iter()
            .filter(|b| !unreplicated.iter().any(|u| u.slot == b.slot))
            .flat_map(|b| b.writes.iter().map(|(id, _, _)| id.clone()))
            .collect();
        if !done.is_empty() {
            super::inbox::delete(&mut self.redis.conn, &self.outbox, &done).await?;
            debug!(outbox = %self.outbox, count = done.len(), "relayed");
        }
        self.said_of_replicas(&unreplicated);
        Ok(true)
    }

    /// Says when writes stay in the outbox because no replica of their
    /// master acknowledged them: once, then once a minute while it goes on,
    /// and when it ends; and how many, in `sluice_relay_unreplicated`.
    fn said_of_replicas(&mut self, unreplicated: &[&Batch]) {
        crate::metrics::relay_unreplicated(&self.outbox, unreplicated.iter().map(|b| b.writes.len()).sum());
        if unreplicated.is_empty() {
            if let Some((rounds, lasted)) = self.unreplicated.reset() {
                info!(outbox = %self.outbox, "a replica has the relayed writes again, after {rounds} round(s) over {} ms", lasted.as_millis());
            }
            return;
        }
        let targets: Vec<&str> = unreplicated.iter().flat_map(|b| b.targets.iter().map(String::as_str)).collect();
        let targets = targets.join(", ");
        if self.unreplicated.warn_due() {
            let (rounds, lasted) = self.unreplicated.so_far();
            warn!(outbox = %self.outbox, targets = %targets, "writes relayed to {targets} are not yet on a replica of their master (none acknowledged them within {} ms: its link is down, or it is resynchronising); they stay in the outbox and are written again (what landed is skipped) until a replica has them, so that a failover cannot lose them{}", WAIT_TIMEOUT.as_millis(), match rounds {
                1 => String::new(),
                _ => format!("; {rounds} rounds over {} s", lasted.as_secs()),
            });
        } else {
            debug!(outbox = %self.outbox, targets = %targets, "relayed writes still not on a replica");
        }
    }

    /// The relay's own connection, opened if need be.
    async fn own_connection(&mut self) -> Result<Conn, Error> {
        match &self.own {
            Some(c) => Ok(c.clone()),
            None => Ok(self.own.insert(self.redis.blocking_connection(BLOCK).await?).clone()),
        }
    }

    /// The oldest entries of the outbox, waiting up to [`BLOCK`] if it is empty.
    async fn read(&mut self) -> Result<Vec<Entry>, Error> {
        let mut conn = self.own_connection().await?;
        let conn = &mut conn;
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.outbox)
            .arg("0-0")
            .query_async(conn)
            .await
            .context(|| format!("XREAD on outbox {}", self.outbox))?;
        Ok(reply::read_reply(&reply).into_iter().flat_map(|(_, entries)| entries).collect())
    }

    /// The writes of `entries` grouped by the slot of their target, each
    /// group in outbox order.
    fn by_slot(&self, entries: &[Entry]) -> Result<Vec<Batch>, Error> {
        let mut batches: BTreeMap<u16, Batch> = BTreeMap::new();
        for entry in entries {
            let write = Relayed::parse(entry).ok_or_else(|| {
                Error::reply(format!("relaying outbox {} entry {}", self.outbox, entry.id), &redis::Value::Nil)
            })?;
            let batch = batches.entry(slot::of(&write.key)).or_insert_with_key(|s| Batch::new(*s));
            let target = match batch.targets.iter().position(|t| *t == write.key) {
                Some(i) => i,
                None => {
                    batch.targets.push(write.key.clone());
                    batch.targets.len() - 1
                }
            };
            batch.writes.push((entry.id.clone(), target, write));
        }
        Ok(batches.into_values().collect())
    }

    /// The script call that applies `batch`.
    fn call(&self, batch: &Batch) -> super::script::Invocation<'static> {
        let mut call = APPLY.prepare_invoke();
        call.key(&batch.mark).key(&batch.targets);
        call.arg(&self.outbox).arg(batch.writes.len());
        for (id, target, write) in &batch.writes {
            // KEYS[1] is the mark: targets start at KEYS[2] (Lua counts from 1).
            call.arg(id).arg(target + 2).arg(write.kind.wire()).arg(write.args.len());
            for a in &write.args {
                call.arg(a.as_slice());
            }
        }
        call
    }

    /// Applies one batch on the relay's own connection `conn` (by the
    /// script's body where Redis does not have it), and waits for a replica
    /// of the slot's master to have it, in the same round trip.
    async fn apply(&self, batch: &Batch, mut conn: Conn) -> Result<Waited, Error> {
        let what = || format!("relaying outbox {} to {}", self.outbox, batch.targets.join(", "));
        let call = self.call(batch);
        let (_applied, waited): (i64, _) = self.replicas.write_and_wait(&mut conn, batch.slot, &call, what).await?;
        Ok(waited)
    }
}

/// The writes to the targets of one slot from one round, in outbox order.
struct Batch {
    /// The slot of the targets.
    slot: u16,
    /// The slot's mark: `sluice:relayed:{<a tag of the slot>}`.
    mark: String,
    /// The keys written, each once.
    targets: Vec<String>,
    /// The outbox entry id, its target (an index in `targets`) and the write.
    writes: Vec<(String, usize, Relayed)>,
}

impl Batch {
    fn new(slot: u16) -> Batch {
        Batch { slot, mark: format!("sluice:relayed:{}", slot::slot_tag(slot)), targets: vec![], writes: vec![] }
    }
}
