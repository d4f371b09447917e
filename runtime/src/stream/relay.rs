//! The relay of a Redis Cluster: moves the writes a commit put in a stream's
//! outbox (those whose keys live in another slot, see [`super::commit`]) to
//! their targets, in order, each exactly once. Every host runs a relay per
//! outbox, and a lease lets one of them work at a time; a write repeated by
//! a relay that was interrupted, or that lost its lease while paused, is
//! recognised by the mark beside its target (`relay.lua`) and skipped.

use super::commit::Relayed;
use super::conn::{Conn, Redis};
use super::error::{Context, Error};
use super::lease::Lease;
use super::{reply, slot};
use crate::event::Entry;
use std::sync::LazyLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

static APPLY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("relay.lua")));

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
    /// Its own connection for blocking reads.
    reader: Option<Conn>,
}

impl Relay {
    /// The relay of `outbox`, run by this host (`holder`, its consumer name).
    pub fn new(outbox: String, holder: String, redis: Redis) -> Relay {
        let lease_key = format!("sluice:relay-lease:{}", slot::tag_for(&outbox));
        Relay { lease: Lease::new(lease_key, holder, LEASE_TTL), outbox, redis, reader: None }
    }

    /// Relays until `shutdown` is cancelled. Failures are warned about and
    /// tried again: an outbox entry leaves only once its write has landed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.relay_until(&shutdown).await;
        // Another host takes over at once, not when it expires.
        let _ = self.lease.release(&mut self.redis.conn).await;
    }

    async fn relay_until(&mut self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            let pause = match self.step().await {
                Ok(true) => continue,
                Ok(false) => PAUSE,
                Err(e) => {
                    warn!(outbox = %self.outbox, "relaying writes to other cluster slots failed: {e}; trying again");
                    self.reader = None;
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
            return Ok(false);
        }
        let waiting = self.read().await?;
        let batches = self.by_target(&waiting)?;
        // One script per target, all in one pipeline; one at a time if that
        // fails (the script not loaded on a node yet, say), which also loads
        // it. Marks make a repeat of what went through write nothing.
        if self.apply_all(&batches).await.is_err() {
            for batch in &batches {
                self.apply(batch).await?;
            }
        }
        let done: Vec<String> = waiting.iter().map(|e| e.id.clone()).collect();
        if !done.is_empty() {
            super::inbox::delete(&mut self.redis.conn, &self.outbox, &done).await?;
            debug!(outbox = %self.outbox, count = done.len(), "relayed");
        }
        Ok(true)
    }

    /// The oldest entries of the outbox, waiting up to [`BLOCK`] if it is empty.
    async fn read(&mut self) -> Result<Vec<Entry>, Error> {
        let conn = match self.reader.as_mut() {
            Some(c) => c,
            None => self.reader.insert(self.redis.blocking_connection(BLOCK).await?),
        };
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

    /// The writes of `entries` grouped by target, each group in outbox order.
    fn by_target(&self, entries: &[Entry]) -> Result<Vec<Batch>, Error> {
        let mut batches: Vec<Batch> = Vec::new();
        for entry in entries {
            let write = Relayed::parse(entry).ok_or_else(|| {
                Error::reply(format!("relaying outbox {} entry {}", self.outbox, entry.id), &redis::Value::Nil)
            })?;
            match batches.iter_mut().find(|b| b.target == write.key) {
                Some(b) => b.writes.push((entry.id.clone(), write)),
                None => batches.push(Batch { target: write.key.clone(), writes: vec![(entry.id.clone(), write)] }),
            }
        }
        Ok(batches)
    }

    /// The script call that applies `batch`.
    fn call(&self, batch: &Batch) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(APPLY.get_hash()).arg(2).arg(format!("sluice:relayed:{}", slot::tag_for(&batch.target)));
        cmd.arg(&batch.target).arg(format!("{}|{}", self.outbox, batch.target)).arg(batch.writes.len());
        for (id, write) in &batch.writes {
            cmd.arg(id).arg(write.kind.wire()).arg(write.args.len());
            for a in &write.args {
                cmd.arg(a.as_slice());
            }
        }
        cmd
    }

    /// Applies every batch in one pipeline.
    async fn apply_all(&mut self, batches: &[Batch]) -> Result<(), Error> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for batch in batches {
            pipe.add_command(self.call(batch)).ignore();
        }
        let what = || format!("relaying outbox {} to {} targets", self.outbox, batches.len());
        pipe.exec_async(&mut self.redis.conn).await.context(what)
    }

    /// Applies one batch, loading the script where Redis does not have it.
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        let what = || format!("relaying outbox {} to {}", self.outbox, batch.target);
        let reply: Result<i64, redis::RedisError> = self.call(batch).query_async(&mut self.redis.conn).await;
        match reply {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let _: String = APPLY.prepare_invoke().load_async(&mut self.redis.conn).await.context(what)?;
                let _: i64 = self.call(batch).query_async(&mut self.redis.conn).await.context(what)?;
                Ok(())
            }
            other => other.map(drop).context(what),
        }
    }
}

/// The writes one target gets from one round, in outbox order.
struct Batch {
    target: String,
    writes: Vec<(String, Relayed)>,
}
