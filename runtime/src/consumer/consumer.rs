//! The consumer of one handler: its shared state, its life cycle (run until
//! shutdown, drain), live updates from reloads. (Demotion after timeouts: `demotion.rs`.)

use super::Binding;
use super::demotion::Demotion;
use super::gate::ReadGate;
use crate::config::Handler;
use crate::metrics::HandlerMetrics;
use crate::stream::{self, Committer, ERROR_PAUSE, Redis};
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error_span, warn};

/// Everything one handler's tasks share.
pub struct Consumer {
    /// The handler as configured now (swapped by [`Consumer::update`]).
    pub(super) binding: ArcSwap<Binding>,
    /// The handler's name, streams (its own, then its inbox, see
    /// [`Handler::read_streams`]) and group: fixed for a consumer's life (a reload
    /// that changes the streams or group replaces the consumer).
    pub(super) handler_name: String,
    pub(super) streams: Arc<[String]>,
    pub(super) group: String,
    pub(super) redis: Redis,
    /// Where deliveries' commits are batched and sent.
    pub(super) committer: Committer,
    /// This host's consumer name in every group.
    pub(super) name: String,
    /// Idle time after which another consumer's entry is taken over.
    pub(super) claim_idle: Duration,
    /// One permit per event in flight (`concurrency`).
    pub(super) permits: Arc<Semaphore>,
    /// The number of permits `permits` is meant to have now.
    pub(super) concurrency: AtomicUsize,
    /// How many wait for a permit other than the read loops (a claim, a
    /// retry, a smaller `concurrency`, a key's chain between two entries):
    /// while any do, the committer's batches read nothing and finished
    /// deliveries give their permits back ([`super::intake::Refiller`]), and
    /// a key's chain gives its permit back between two entries
    /// ([`Consumer::deliver`]).
    pub(super) waiting: Arc<AtomicUsize>,
    /// Whether the handler runs at idle priority after its deliveries ran
    /// out of time.
    pub(super) demotion: Demotion,
    /// The handler's counters.
    pub(super) metrics: HandlerMetrics,
    /// Deliveries and retry timers, waited for on shutdown.
    pub(super) tasks: TaskTracker,
    /// The host's runtime, which drives Redis I/O: retry timers run here
    /// (and hand the delivery to the lane the handler is on then).
    pub(super) io: tokio::runtime::Handle,
    /// The entries (stream, id) this consumer is delivering or waiting to
    /// retry: pending with it in Redis, but not to be taken back from there
    /// again (as after a reconnect, which takes back the rest).
    pub(super) held: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Set when a reply from Redis may have been lost (a read, a claim or a
    /// commit failed): entries may be pending here that nothing handles.
    /// The read loop then takes them back ([`Consumer::recover_own`]).
    pub(super) orphans: AtomicBool,
    /// Reads in flight (and claims) of a handler that does not order by
    /// key, which the recovery after a lost reply waits for.
    pub(super) reads: ReadGate,
    /// Whether it warned already that a stream's entries look like another
    /// format than the stream's (once per consumer).
    pub(super) format_warned: AtomicBool,
    /// How its events are ordered by key, if they are (`order_by`): fixed
    /// for a consumer's life, like its streams.
    pub(super) ordering: Option<stream::order::Ordering>,
    /// The keys (stream, key) this consumer serves, each with its number of
    /// chains of deliveries here (one, but for a moment when one chain ends
    /// as another takes the key again): it is delivering, or waiting to
    /// deliver or retry, their first entries, and holds their leases (or a
    /// renewal takes a lapsed one back, see `order_take.lua`'s `renew`).
    pub(super) serving: std::sync::Mutex<std::collections::HashMap<(String, Vec<u8>), usize>>,
    pub(super) shutdown: CancellationToken,
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
        Arc::new_cyclic(|me| Consumer::with_refill(binding, redis, name, claim_idle, shutdown, me.clone()))
    }

    /// A consumer whose committer reads for `me` (unless it orders by key).
    fn with_refill(
        binding: Binding,
        redis: Redis,
        name: String,
        claim_idle: Duration,
        shutdown: CancellationToken,
        me: std::sync::Weak<Consumer>,
    ) -> Consumer {
        let concurrency = binding.handler.limits.concurrency;
        let io = tokio::runtime::Handle::current();
        let binding = binding.on_host(redis.conn.clone(), io.clone(), claim_idle);
        let h = &binding.handler;
        // All or none of its streams hold CloudEvents when it orders by a key
        // of the data (checked in the config).
        let cloudevents = h.streams.iter().all(|s| *h.formats.format(s) == crate::format::Format::CloudEvents);
        let ordering =
            (h.order_by.clone()).map(|by| stream::order::Ordering::new(by, &h.group, &name, claim_idle, cloudevents));
        // (Ordered by key, batches read nothing: `Refiller::room` says so.)
        let refill: Option<Box<dyn stream::Refill>> = Some(Box::new(super::intake::Refiller(me)));
        let group = binding.handler.group.clone();
        Consumer {
            ordering,
            serving: Default::default(),
            handler_name: binding.handler.name.clone(),
            metrics: HandlerMetrics::new(&binding.handler.name),
            streams: binding.handler.read_streams().into(),
            committer: Committer::start(redis.conn.clone(), group.clone(), name.clone(), refill),
            group,
            binding: ArcSwap::from_pointee(binding),
            redis,
            name,
            claim_idle,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
            waiting: Arc::new(AtomicUsize::new(0)),
            demotion: Demotion::default(),
            tasks: TaskTracker::new(),
            io,
            held: Default::default(),
            orphans: AtomicBool::new(false),
            reads: ReadGate::default(),
            format_warned: AtomicBool::new(false),
            shutdown,
        }
    }

    /// The streams each read loop reads: all together on one server; in a
    /// cluster, those of each slot together.
    fn read_groups(&self) -> Vec<Vec<String>> {
        if !self.redis.is_cluster() {
            return vec![self.streams.to_vec()];
        }
        let mut by_slot: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for s in self.streams.iter() {
            by_slot.entry(stream::slot::of(s)).or_default().push(s.clone());
        }
        by_slot.into_values().collect()
    }

    /// The binding new deliveries use.
    pub fn binding(&self) -> Arc<Binding> {
        self.binding.load_full()
    }

    /// Whether `handler` can be served by swapping this consumer's binding
    /// (same streams, group and `order_by`), rather than by a new consumer.
    pub fn can_update_to(&self, handler: &Handler) -> bool {
        *handler.read_streams() == *self.streams
            && handler.group == self.group
            && handler.order_by == self.ordering.as_ref().map(|o| o.by.clone())
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
            let waiting = Waiting::on(&self.waiting);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned((had - want) as u32).await {
                    p.forget();
                }
                drop(waiting);
            });
        }
        let new_version = binding.plugin.digest != self.binding.load().plugin.digest;
        self.binding.store(Arc::new(binding.on_host(self.redis.conn.clone(), self.io.clone(), self.claim_idle)));
        // After the swap: a delivery of the old version that times out
        // meanwhile no longer counts (`run_plugin`), so it cannot demote
        // the new version once promoted.
        if new_version {
            self.promote_new_version();
        }
    }

    /// Consumes until shutdown, then lets in-flight deliveries finish.
    pub async fn run(self: Arc<Self>) {
        // ERROR level: enabled whenever any line is (see the event span).
        let span = error_span!("handler", handler = %self.handler_name);
        async {
            self.until_ready(|| self.ensure_groups()).await;
            // Nothing read yet: all that is pending here is left over.
            self.recover_own(Duration::ZERO).await;
            let claimer = tokio::spawn(self.clone().claim_loop().in_current_span());
            let renewer = self.ordering.clone().map(|o| tokio::spawn(self.clone().renew_loop(o).in_current_span()));
            let readers: Vec<_> = self
                .read_groups()
                .into_iter()
                .map(|streams| match self.ordering.clone() {
                    Some(order) => tokio::spawn(self.clone().ordered_read_loop(order, streams).in_current_span()),
                    None => tokio::spawn(self.clone().read_loop(streams).in_current_span()),
                })
                .collect();
            for reader in readers {
                let _ = reader.await;
            }
            let _ = claimer.await;
            self.tasks.close();
            self.tasks.wait().await;
            self.metrics.set_demoted(false);
            if let (Some(renewer), Some(order)) = (renewer, &self.ordering) {
                let _ = renewer.await;
                self.release_keys(order).await;
            }
            debug!("stopped");
        }
        .instrument(span)
        .await
    }

    /// Retries `step` until it succeeds or shutdown begins.
    pub(super) async fn until_ready<F: Future<Output = Result<(), stream::Error>>>(&self, step: impl Fn() -> F) {
        while !self.shutdown.is_cancelled() {
            match step().await {
                Ok(()) => return,
                Err(e) => warn!("{e}; trying again"),
            }
            self.pause(ERROR_PAUSE).await;
        }
    }

    /// Marks entry `id` of `stream` as being handled here; `false` if it
    /// already was (then it must not be delivered again).
    pub(super) fn hold(&self, stream: &str, id: &str) -> bool {
        self.held.lock().expect("never poisoned").insert((stream.to_owned(), id.to_owned()))
    }

    /// Whether entry `id` of `stream` is being handled here.
    pub(super) fn holds(&self, stream: &str, id: &str) -> bool {
        self.held.lock().expect("never poisoned").contains(&(stream.to_owned(), id.to_owned()))
    }

    /// Entry `id` of `stream` is done with here (finished, or left to Redis).
    pub(super) fn release(&self, stream: &str, id: &str) {
        self.held.lock().expect("never poisoned").remove(&(stream.to_owned(), id.to_owned()));
    }

    /// One permit to run an event, or `None` if shutdown begins first.
    /// Counted in `waiting` meanwhile.
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let _waiting = Waiting::on(&self.waiting);
        self.read_permit().await
    }

    /// One permit for an entry read and held here already, whatever
    /// happens meanwhile (shutdown included: it is pending here). Counted in
    /// `waiting`.
    pub(super) async fn permit_for_held(&self) -> OwnedSemaphorePermit {
        let _waiting = Waiting::on(&self.waiting);
        self.permits.clone().acquire_owned().await.expect("semaphore never closed")
    }

    /// One permit for the read loop, or `None` if shutdown begins first.
    /// Not counted in `waiting`: under load, the committer's reads
    /// ([`super::intake::Refiller`]) take the read loop's place.
    pub(super) async fn read_permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            p = self.permits.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Sleeps for `d`, or less if shutdown begins.
    pub(super) async fn pause(&self, d: Duration) {
        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = self.shutdown.cancelled() => {} }
    }

    pub(super) async fn ensure_groups(&self) -> Result<(), stream::Error> {
        let mut conn = self.redis.conn.clone();
        for s in self.streams.iter() {
            stream::ensure_group(&mut conn, s, &self.group).await?;
        }
        Ok(())
    }
}

/// One more waiting in a count, for as long as it lives.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn on(count: &Arc<AtomicUsize>) -> Waiting {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
