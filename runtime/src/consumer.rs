//! One handler's consumer: reads its streams through its group, runs each
//! delivery in its plugin, and carries out the [`Decision`].
//!
//! Sources of deliveries, in order: this consumer's own pending entries from
//! an earlier run (same consumer name), new entries (`XREADGROUP >`), entries
//! abandoned by dead consumers (`XAUTOCLAIM` after `claim_idle_ms`), and this
//! consumer's own retries (`XCLAIM` after the backoff).

use crate::config::Handler;
use crate::dispatch::{self, Decision};
use crate::event::DeadLetterInfo;
use crate::stream::{self, Delivery, Reader, Redis};
use crate::wasm::Plugin;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Most entries one `XREADGROUP` asks for.
const READ_BATCH: usize = 256;
/// How long one blocking read waits; also the longest a shutdown waits for
/// the reader to notice it.
const READ_BLOCK: Duration = Duration::from_millis(1_000);
/// Pause after a Redis error before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);
/// Tries of a commit transaction before leaving the entry pending.
const COMMIT_TRIES: u32 = 4;

/// Everything one handler's tasks share.
pub struct Consumer {
    handler: Handler,
    plugin: Plugin,
    redis: Redis,
    /// This host's consumer name in every group.
    name: String,
    /// Idle time after which another consumer's entry is taken over.
    claim_idle: Duration,
    /// One permit per event in flight (`concurrency`).
    permits: Arc<Semaphore>,
    /// Deliveries and retry timers, waited for on shutdown.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Consumer {
    /// A consumer for `handler`, running `plugin`, as `name`.
    pub fn new(
        handler: Handler,
        plugin: Plugin,
        redis: Redis,
        name: String,
        claim_idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Consumer> {
        let permits = Arc::new(Semaphore::new(handler.limits.concurrency));
        Arc::new(Consumer { handler, plugin, redis, name, claim_idle, permits, tasks: TaskTracker::new(), shutdown })
    }

    /// Consumes until shutdown, then lets in-flight deliveries finish.
    pub async fn run(self: Arc<Self>) {
        let span = info_span!("handler", handler = %self.handler.name);
        async {
            self.until_ready(|| self.ensure_groups()).await;
            self.recover_own().await;
            let claimer = tokio::spawn(self.clone().claim_loop().in_current_span());
            self.clone().read_loop().await;
            let _ = claimer.await;
            self.tasks.close();
            self.tasks.wait().await;
            debug!("stopped");
        }
        .instrument(span)
        .await
    }

    /// Retries `step` until it succeeds or shutdown begins.
    async fn until_ready<F: Future<Output = anyhow::Result<()>>>(&self, step: impl Fn() -> F) {
        while !self.shutdown.is_cancelled() {
            match step().await {
                Ok(()) => return,
                Err(e) => warn!("{e:#}; trying again"),
            }
            self.pause(ERROR_PAUSE).await;
        }
    }

    /// Sleeps for `d`, or less if shutdown begins.
    async fn pause(&self, d: Duration) {
        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = self.shutdown.cancelled() => {} }
    }

    async fn ensure_groups(&self) -> anyhow::Result<()> {
        let mut conn = self.redis.conn.clone();
        for s in &self.handler.streams {
            stream::ensure_group(&mut conn, s, &self.handler.group).await?;
        }
        Ok(())
    }

    /// Delivers again what this consumer left pending in an earlier run.
    async fn recover_own(self: &Arc<Self>) {
        for s in &self.handler.streams {
            let mut conn = self.redis.conn.clone();
            match stream::own_pending(&mut conn, s, &self.handler.group, &self.name).await {
                Ok(found) => {
                    if !found.is_empty() {
                        info!(stream = %s, count = found.len(), "taking back entries left pending by an earlier run");
                    }
                    self.spawn_all(found).await;
                }
                Err(e) => warn!("{e:#}; they will be claimed after claim_idle_ms"),
            }
        }
    }

    /// Reads new entries while there is room for them, until shutdown.
    async fn read_loop(self: Arc<Self>) {
        let mut reader: Option<Reader> = None;
        while !self.shutdown.is_cancelled() {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = self.shutdown.cancelled() => break,
            };
            let r = match reader.as_mut() {
                Some(r) => r,
                None => match self.redis.blocking_connection().await {
                    Ok(conn) => {
                        reader.insert(Reader::new(conn, &self.handler.group, &self.name, &self.handler.streams))
                    }
                    Err(e) => {
                        warn!("{e:#}; trying again");
                        self.pause(ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let room = (self.permits.available_permits() + 1).min(READ_BATCH);
            match r.read_new(room, READ_BLOCK).await {
                Ok(found) => self.dispatch(found, permit).await,
                Err(e) => {
                    drop(permit);
                    self.read_failed(e, &mut reader).await;
                }
            }
        }
    }

    async fn read_failed(&self, e: redis::RedisError, reader: &mut Option<Reader>) {
        if e.code() == Some("NOGROUP") {
            // The stream or group went away (deleted, or Redis lost its data).
            warn!("consumer group missing; creating it again");
            self.until_ready(|| self.ensure_groups()).await;
        } else {
            warn!("reading from Redis failed: {e}; reconnecting");
            *reader = None;
            self.pause(ERROR_PAUSE).await;
        }
    }

    /// Acks at once what the handler does not want; spawns the rest.
    async fn dispatch(self: &Arc<Self>, found: Vec<Delivery>, permit: OwnedSemaphorePermit) {
        let (wanted, unwanted): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|d| self.handler.wants(&d.entry.event_type()));
        self.ack_unwanted(unwanted).await;
        let mut first = Some(permit);
        for d in wanted {
            let permit = match first.take() {
                Some(p) => p,
                None => self.permits.clone().acquire_owned().await.expect("semaphore never closed"),
            };
            self.tasks.spawn(self.clone().deliver(d, permit));
        }
    }

    async fn ack_unwanted(&self, unwanted: Vec<Delivery>) {
        for s in &self.handler.streams {
            let ids: Vec<String> = unwanted.iter().filter(|d| &d.stream == s).map(|d| d.entry.id.clone()).collect();
            let mut conn = self.redis.conn.clone();
            if let Err(e) = stream::ack_unhandled(&mut conn, s, &self.handler.group, &ids).await {
                warn!(stream = %s, "acknowledging {} unwanted entries failed: {e}; they will come back", ids.len());
            }
        }
    }

    /// Spawns a delivery for each of `found`, as permits allow.
    async fn spawn_all(self: &Arc<Self>, found: Vec<Delivery>) {
        for d in found {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            if self.handler.wants(&d.entry.event_type()) {
                self.tasks.spawn(self.clone().deliver(d, permit));
            } else {
                self.ack_unwanted(vec![d]).await;
            }
        }
    }

    /// Takes over entries idle too long with any consumer, every half
    /// `claim_idle`, until shutdown.
    async fn claim_loop(self: Arc<Self>) {
        let every = (self.claim_idle / 2).max(Duration::from_millis(50));
        loop {
            self.pause(every).await;
            if self.shutdown.is_cancelled() {
                return;
            }
            for s in &self.handler.streams {
                self.claim_stream(s).await;
            }
        }
    }

    async fn claim_stream(self: &Arc<Self>, s: &str) {
        let mut cursor = "0-0".to_owned();
        loop {
            let mut conn = self.redis.conn.clone();
            let claimed =
                stream::autoclaim(&mut conn, s, &self.handler.group, &self.name, self.claim_idle, &cursor).await;
            match claimed {
                Ok((found, next)) => {
                    if !found.is_empty() {
                        info!(stream = %s, count = found.len(), "claimed entries idle for over {} ms", self.claim_idle.as_millis());
                    }
                    self.spawn_all(found).await;
                    if next == "0-0" || self.shutdown.is_cancelled() {
                        return;
                    }
                    cursor = next;
                }
                Err(e) => return debug!("{e:#}"),
            }
        }
    }

    /// Runs one delivery and carries out the decision.
    async fn deliver(self: Arc<Self>, d: Delivery, permit: OwnedSemaphorePermit) {
        let span = info_span!("event", handler = %self.handler.name, stream = %d.stream, id = %d.entry.id, attempt = d.attempt);
        async move {
            let decision = match dispatch::exhausted_before_delivery(d.attempt, &self.handler.limits) {
                Some(decision) => decision,
                None => {
                    let outcome = self.plugin.invoke(&d.entry.to_event(&d.stream, d.attempt)).await;
                    dispatch::decide(outcome, d.attempt, &self.handler.limits, self.max_retry_delay())
                }
            };
            drop(permit);
            self.carry_out(d, decision).await;
        }
        .instrument(span)
        .await
    }

    /// Retry delays stay under `claim_idle`, so a waiting retry is never
    /// taken for an abandoned entry.
    fn max_retry_delay(&self) -> Duration {
        self.claim_idle / 2
    }

    async fn carry_out(self: &Arc<Self>, d: Delivery, decision: Decision) {
        match decision {
            Decision::Ack { publishes } => {
                let (s, g, name, entry, pubs) =
                    (&d.stream, &self.handler.group, &self.handler.name, &d.entry, &publishes[..]);
                let tx = || {
                    let mut conn = self.redis.conn.clone();
                    async move { stream::ack(&mut conn, s, g, entry, name, pubs).await }
                };
                if self.commit("ack", tx).await {
                    debug!(publishes = pubs.len(), "handled");
                }
            }
            Decision::Retry { delay, reason } => {
                warn!("attempt {} failed: {reason}; retrying in {} ms", d.attempt, delay.as_millis());
                self.tasks.spawn(self.clone().retry_later(d, delay));
            }
            Decision::DeadLetter { reason } => self.dead_letter(&d, &reason).await,
        }
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) {
        let target = self.handler.dead_letter_stream(&d.stream);
        let info = DeadLetterInfo {
            handler: &self.handler.name,
            origin_stream: &d.stream,
            reason,
            attempts: d.attempt,
            plugin_version: &self.plugin.version,
            failed_at_ms: unix_ms(),
        };
        let (g, target, entry, info) = (&self.handler.group, &target, &d.entry, &info);
        let tx = || {
            let mut conn = self.redis.conn.clone();
            async move { stream::dead_letter(&mut conn, g, target, entry, info).await }
        };
        let done = self.commit("dead-letter", tx).await;
        if done {
            error!(dead_letter = %target, "dead-lettered after {} attempt(s): {reason}", d.attempt);
        }
    }

    /// Runs a commit transaction, trying again on Redis errors. Gives up
    /// after [`COMMIT_TRIES`]: the entry stays pending and is claimed again
    /// later, so nothing is lost (at worst it is handled twice).
    async fn commit<F: Future<Output = redis::RedisResult<()>>>(&self, what: &str, tx: impl Fn() -> F) -> bool {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=COMMIT_TRIES {
            match tx().await {
                Ok(()) => return true,
                Err(e) if attempt == COMMIT_TRIES => {
                    error!("{what} failed: {e}; the entry stays pending and will be delivered again");
                }
                Err(e) => {
                    warn!("{what} failed: {e}; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 3;
                }
            }
        }
        false
    }

    /// After `delay`, takes the entry back (a new delivery in Redis's count)
    /// and delivers it again. If it was taken over meanwhile, leaves it.
    /// (Boxed: a retry delivers, and a delivery may schedule a retry.)
    fn retry_later(self: Arc<Self>, d: Delivery, delay: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.pause(delay).await;
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = self.shutdown.cancelled() => return,
            };
            if self.shutdown.is_cancelled() {
                return; // still pending: delivered again after a restart
            }
            let mut conn = self.redis.conn.clone();
            let ids = [d.entry.id.clone()];
            match stream::claim(&mut conn, &d.stream, &self.handler.group, &self.name, delay, &ids).await {
                Ok(mut claimed) if !claimed.is_empty() => {
                    let next = Delivery { stream: d.stream, entry: claimed.remove(0), attempt: d.attempt + 1 };
                    self.deliver(next, permit).await;
                }
                Ok(_) => debug!(id = %d.entry.id, "entry taken over or deleted before its retry"),
                Err(e) => {
                    warn!(id = %d.entry.id, "claiming for retry failed: {e}; it will be claimed after claim_idle_ms")
                }
            }
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
