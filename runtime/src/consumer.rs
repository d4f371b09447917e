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
use crate::stream::{self, CommitError, Delivery, Reader, Redis};
use crate::wasm::{Outcome, Plugin, Sandbox};
use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// After a timeout, a handler runs one event at a time for this many of its
/// timeouts (within the bounds below).
const THROTTLE_TIMEOUTS: u32 = 10;
const THROTTLE_MIN: Duration = Duration::from_secs(1);
const THROTTLE_MAX: Duration = Duration::from_secs(60);
/// Tries of a commit transaction before leaving the entry pending.
const COMMIT_TRIES: u32 = 4;

/// One handler as it runs now: its config, its plugin and its sandbox.
/// Swapped whole on reload; a delivery keeps the one it started with.
pub struct Binding {
    pub handler: Handler,
    pub plugin: Arc<Plugin>,
    pub sandbox: Sandbox,
}

impl Binding {
    /// `handler` running `plugin`.
    pub fn new(handler: Handler, plugin: Arc<Plugin>) -> Binding {
        let sandbox = Sandbox::for_handler(&handler);
        Binding { handler, plugin, sandbox }
    }

    /// This binding with its key-value reads going to `conn`.
    fn with_kv(self, conn: redis::aio::ConnectionManager) -> Binding {
        Binding { sandbox: self.sandbox.with_kv(conn), ..self }
    }
}

/// Everything one handler's tasks share.
pub struct Consumer {
    /// The handler as configured now (swapped by [`Consumer::update`]).
    binding: ArcSwap<Binding>,
    /// The handler's name, streams and group: fixed for a consumer's life
    /// (a reload that changes the streams or group replaces the consumer).
    handler_name: String,
    streams: Vec<String>,
    group: String,
    redis: Redis,
    /// This host's consumer name in every group.
    name: String,
    /// Idle time after which another consumer's entry is taken over.
    claim_idle: Duration,
    /// One permit per event in flight (`concurrency`).
    permits: Arc<Semaphore>,
    /// The number of permits `permits` is meant to have now.
    concurrency: AtomicUsize,
    /// Whether the handler is running one event at a time after a timeout.
    throttled: AtomicBool,
    /// Deliveries and retry timers, waited for on shutdown.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Consumer {
    /// A consumer for `binding`, as `name`, stopping when `shutdown` is cancelled.
    pub fn new(
        binding: Binding,
        redis: Redis,
        name: String,
        claim_idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Consumer> {
        let concurrency = binding.handler.limits.concurrency;
        let binding = binding.with_kv(redis.conn.clone());
        Arc::new(Consumer {
            handler_name: binding.handler.name.clone(),
            streams: binding.handler.streams.clone(),
            group: binding.handler.group.clone(),
            binding: ArcSwap::from_pointee(binding),
            redis,
            name,
            claim_idle,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
            throttled: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// The binding new deliveries use.
    pub fn binding(&self) -> Arc<Binding> {
        self.binding.load_full()
    }

    /// Whether `handler` can be served by swapping this consumer's binding
    /// (same streams and group), rather than by a new consumer.
    pub fn can_update_to(&self, handler: &Handler) -> bool {
        handler.streams == self.streams && handler.group == self.group
    }

    /// Serves new deliveries with `binding`; running ones finish on the old
    /// one. Concurrency changes take effect as permits come back.
    pub fn update(&self, binding: Binding) {
        let want = binding.handler.limits.concurrency;
        let had = self.concurrency.swap(want, Ordering::SeqCst);
        if want > had {
            self.permits.add_permits(want - had);
        } else if want < had {
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned((had - want) as u32).await {
                    p.forget();
                }
            });
        }
        self.binding.store(Arc::new(binding.with_kv(self.redis.conn.clone())));
    }

    /// Consumes until shutdown, then lets in-flight deliveries finish.
    pub async fn run(self: Arc<Self>) {
        let span = info_span!("handler", handler = %self.handler_name);
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
        for s in &self.streams {
            stream::ensure_group(&mut conn, s, &self.group).await?;
        }
        Ok(())
    }

    /// Delivers again what this consumer left pending in an earlier run.
    async fn recover_own(self: &Arc<Self>) {
        for s in &self.streams {
            let mut conn = self.redis.conn.clone();
            match stream::own_pending(&mut conn, s, &self.group, &self.name).await {
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
                None => match self.connect_reader().await {
                    Ok(r) => reader.insert(r),
                    Err(e) => {
                        warn!("{e:#}; trying again");
                        self.pause(ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let room = (self.permits.available_permits() + 1).min(READ_BATCH);
            match self.read_until_cancelled(r, room).await {
                Ok(found) => self.dispatch(found, permit).await,
                Err(e) => {
                    drop(permit);
                    self.read_failed(e, &mut reader).await;
                }
            }
        }
    }

    async fn connect_reader(&self) -> anyhow::Result<Reader> {
        let conn = self.redis.blocking_connection(READ_BLOCK).await?;
        Ok(Reader::new(conn, &self.group, &self.name, &self.streams).await?)
    }

    /// One blocking read. On shutdown the block is interrupted (`CLIENT
    /// UNBLOCK`) rather than abandoned, so whatever it already took is still
    /// dispatched and nothing is left pending unseen.
    async fn read_until_cancelled(&self, r: &mut Reader, room: usize) -> redis::RedisResult<Vec<Delivery>> {
        let client_id = r.client_id;
        let read = r.read_new(room, READ_BLOCK);
        tokio::pin!(read);
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
            found.into_iter().partition(|d| self.binding.load().handler.wants(&d.entry.event_type()));
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
        for s in &self.streams {
            let ids: Vec<String> = unwanted.iter().filter(|d| &d.stream == s).map(|d| d.entry.id.clone()).collect();
            let mut conn = self.redis.conn.clone();
            if let Err(e) = stream::ack_unhandled(&mut conn, s, &self.group, &ids).await {
                warn!(stream = %s, "acknowledging {} unwanted entries failed: {e}; they will come back", ids.len());
            }
        }
    }

    /// Spawns a delivery for each of `found`, as permits allow.
    async fn spawn_all(self: &Arc<Self>, found: Vec<Delivery>) {
        for d in found {
            // Left pending if shutdown comes first: delivered again later.
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = self.shutdown.cancelled() => return,
            };
            if self.binding.load().handler.wants(&d.entry.event_type()) {
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
            for s in &self.streams {
                self.claim_stream(s).await;
            }
        }
    }

    async fn claim_stream(self: &Arc<Self>, s: &str) {
        let mut cursor = "0-0".to_owned();
        loop {
            let mut conn = self.redis.conn.clone();
            // Only as many as can start now: a claimed entry that waited for
            // a permit past claim_idle would be claimed again elsewhere.
            let room = self.permits.available_permits().max(1);
            let claimed =
                stream::autoclaim(&mut conn, s, &self.group, &self.name, self.claim_idle, &cursor, room).await;
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
        let span = info_span!("event", handler = %self.handler_name, stream = %d.stream, id = %d.entry.id, attempt = d.attempt);
        async move {
            // The version this delivery runs on, even if a reload swaps it meanwhile.
            let b = self.binding.load_full();
            let limits = &b.handler.limits;
            let decision = match dispatch::exhausted_before_delivery(d.attempt, limits) {
                Some(decision) => decision,
                None => {
                    let outcome = b.plugin.invoke_isolated(&b.sandbox, d.entry.to_event(&d.stream, d.attempt)).await;
                    if matches!(outcome, Outcome::Crash { timed_out: true, .. }) {
                        self.throttle(limits.timeout);
                    }
                    dispatch::decide(outcome, d.attempt, limits, self.max_retry_delay())
                }
            };
            drop(permit);
            self.carry_out(d, decision, &b).await;
        }
        .instrument(span)
        .await
    }

    /// After a delivery ran into its timeout, runs this handler's events one
    /// at a time for a while: a handler whose events spin until their
    /// deadline would otherwise hold every core, and every other handler
    /// would stall behind it.
    fn throttle(self: &Arc<Self>, timeout: Duration) {
        if self.throttled.swap(true, Ordering::SeqCst) {
            return;
        }
        // Below half of claim_idle, so events waiting out the cooldown are
        // not taken for abandoned.
        let cooldown = (timeout * THROTTLE_TIMEOUTS).clamp(THROTTLE_MIN, THROTTLE_MAX).min(self.claim_idle / 2);
        let hold = self.concurrency.load(Ordering::SeqCst).saturating_sub(1) as u32;
        warn!("a delivery ran out of time: handling one event at a time for {} ms", cooldown.as_millis());
        let me = self.clone();
        self.tasks.spawn(async move {
            // The semaphore is fair: this waits for in-flight events, ahead
            // of new ones.
            if let (true, Ok(held)) = (hold > 0, me.permits.clone().acquire_many_owned(hold).await) {
                me.pause(cooldown).await;
                drop(held);
            }
            me.throttled.store(false, Ordering::SeqCst);
        });
    }

    /// Retry delays stay under `claim_idle`, so a waiting retry is never
    /// taken for an abandoned entry.
    fn max_retry_delay(&self) -> Duration {
        self.claim_idle / 2
    }

    async fn carry_out(self: &Arc<Self>, d: Delivery, decision: Decision, b: &Binding) {
        match decision {
            Decision::Ack { effects } => {
                let (s, g, name, entry, fx) = (&d.stream, &self.group, &self.handler_name, &d.entry, &effects);
                let tx = || {
                    let mut conn = self.redis.conn.clone();
                    async move { stream::ack(&mut conn, s, g, entry, name, fx).await }
                };
                match self.commit("ack", tx).await {
                    Committed::Done => debug!(publishes = fx.publishes.len(), kv_writes = fx.kv.len(), "handled"),
                    // The handler's output cannot be written: a failed attempt.
                    Committed::Refused(why) => {
                        let reason = format!("cannot commit the handler's output: {why}");
                        let outcome = Outcome::Crash { reason, timed_out: false };
                        let decision = dispatch::decide(outcome, d.attempt, &b.handler.limits, self.max_retry_delay());
                        Box::pin(self.carry_out(d, decision, b)).await;
                    }
                    Committed::GaveUp => {}
                }
            }
            Decision::Retry { delay, reason } => {
                warn!("attempt {} failed: {reason}; retrying in {} ms", d.attempt, delay.as_millis());
                self.tasks.spawn(self.clone().retry_later(d, delay));
            }
            Decision::DeadLetter { reason } => self.dead_letter(&d, &reason, b).await,
        }
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str, b: &Binding) {
        let target = b.handler.dead_letter_stream(&d.stream);
        let info = DeadLetterInfo {
            handler: &self.handler_name,
            origin_stream: &d.stream,
            reason,
            attempts: d.attempt,
            plugin_version: &b.plugin.version,
            failed_at_ms: unix_ms(),
        };
        let (g, target, entry, info) = (&self.group, &target, &d.entry, &info);
        let tx = || {
            let mut conn = self.redis.conn.clone();
            async move { stream::dead_letter(&mut conn, g, target, entry, info).await }
        };
        match self.commit("dead-letter", tx).await {
            Committed::Done => error!(dead_letter = %target, "dead-lettered after {} attempt(s): {reason}", d.attempt),
            Committed::Refused(why) => error!(
                "cannot dead-letter ({why}); the entry stays pending and is tried again after claim_idle_ms. Failure: {reason}"
            ),
            Committed::GaveUp => {}
        }
    }

    /// Runs a commit, trying again on Redis errors. Gives up after
    /// [`COMMIT_TRIES`]: the entry stays pending and is claimed again later,
    /// so nothing is lost (at worst it is handled twice).
    async fn commit<F: Future<Output = Result<(), CommitError>>>(&self, what: &str, tx: impl Fn() -> F) -> Committed {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=COMMIT_TRIES {
            match tx().await {
                Ok(()) => return Committed::Done,
                Err(CommitError::WrongType(why)) => return Committed::Refused(why),
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
        Committed::GaveUp
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
            match stream::claim(&mut conn, &d.stream, &self.group, &self.name, delay, &ids).await {
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

/// What became of a commit.
enum Committed {
    Done,
    /// Redis refused it as a whole (nothing written), e.g. a target key
    /// that is not a stream.
    Refused(String),
    /// Redis kept failing; the entry stays pending.
    GaveUp,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
