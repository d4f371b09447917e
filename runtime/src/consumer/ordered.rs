//! Intake for a handler that orders by key (`order_by`): reading, taking
//! back and taking over go through the key queues of
//! [`crate::stream::order`], and this consumer keeps the set of keys it
//! serves (to renew their leases, and so as not to take one twice). A key
//! is served from the delivery that took it until its chain of deliveries
//! ends (see `finish.rs`: each commit hands over the key's next entry).

use super::Consumer;
use crate::stream::order::{Ordering, Read};
use crate::stream::{self, Error, Reader};
use crate::stream::{Backoff, ERROR_PAUSE};
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Pending entries looked at per page when taking back or taking over.
const SCAN_PAGE: usize = 100;

impl Consumer {
    /// The keyed counterpart of `read_loop`: reads new entries of `streams`
    /// through the key queues, and waits with a blocking `XREAD` (which takes
    /// nothing) when there is nothing new.
    pub(super) async fn ordered_read_loop(self: Arc<Self>, order: Ordering, streams: Vec<String>) {
        let mut waiter: Option<Reader> = None;
        let mut backoff = Backoff::new();
        while !self.shutdown.is_cancelled() {
            if self.orphans.swap(false, AtomicOrdering::SeqCst) {
                self.recover_own(super::intake::RECOVER_MIN_IDLE).await;
            }
            // (Not counted in `waiting`, which only deliveries waiting for a
            // permit are: a key's chain of deliveries gives way to those
            // between two entries, not to this loop.)
            let Some(permit) = self.read_permit().await else { break };
            let room = self.permits.available_permits() + 1;
            // A full batch: most of it may go to the queues of keys being
            // served, which needs no permit.
            let count = super::intake::READ_BATCH;
            let read = order.read(&mut self.redis.conn.clone(), &streams, count, room).await;
            let read = read.map(|(read, deleted)| {
                for (s, ids) in super::intake::by_stream(deleted) {
                    self.found_deleted(&s, &ids);
                }
                read
            });
            match read {
                Ok(Read::Found(found)) => {
                    self.reading_again(&mut backoff);
                    self.hand_out(found, permit, None).await;
                }
                // (Not reset when idle: the wait that follows may fail every
                // time, say when Redis refuses new connections.)
                Ok(Read::Idle(last)) => {
                    drop(permit);
                    self.wait_for_new(&mut waiter, &streams, &last, &mut backoff).await;
                }
                Err(e) => {
                    drop(permit);
                    self.read_failed(e, &mut waiter, &mut backoff).await;
                }
            }
        }
    }

    /// Waits until one of the streams in `last` (`streams`, and their wake-up
    /// streams) has an entry after the id given (or the block ends, or
    /// shutdown begins). On an error, pauses (`backoff`) before the next read.
    async fn wait_for_new(
        &self,
        waiter: &mut Option<Reader>,
        streams: &[String],
        last: &[(String, String)],
        backoff: &mut Backoff,
    ) {
        let r = match waiter {
            Some(r) => r,
            None => match self.connect_reader(streams).await {
                Ok(r) => waiter.insert(r),
                Err(e) => {
                    self.read_trouble(backoff, format_args!("{e:#}; trying again"));
                    return self.pause(backoff.next()).await;
                }
            },
        };
        let waited = tokio::select! {
            result = r.wait_for_new(last, super::intake::READ_BLOCK) => Some(result),
            _ = self.shutdown.cancelled() => None,
        };
        match waited {
            Some(Ok(())) => self.reading_again(backoff),
            Some(Err(e)) => {
                self.read_trouble(backoff, format_args!("waiting for new entries failed: {e}; reconnecting"));
                *waiter = None;
                self.pause(backoff.next()).await;
            }
            // The wait is left blocked; its connection goes with it.
            None => *waiter = None,
        }
    }

    /// Takes pending entries through the key queues: this consumer's own
    /// (`own`; left by an earlier run or a lost reply) delivered at least
    /// `min_idle` ago, or anyone's idle that long whose key has no holder
    /// (its host is gone).
    pub(super) async fn take_pending_in_order(self: &Arc<Self>, order: &Ordering, own: bool, min_idle: Duration) {
        for s in self.streams.iter() {
            let mut start = "-".to_owned();
            loop {
                let Some(room) = self.room().await else { return };
                let (serving, held) = self.local_state(s);
                let page = (start.as_str(), SCAN_PAGE, room);
                let mut conn = self.redis.conn.clone();
                match order.scan(&mut conn, s, own, min_idle, page, &serving, &held).await {
                    Ok(stream::Page { found, next, deleted }) => {
                        self.found_deleted(s, &deleted);
                        if !found.is_empty() {
                            let what = if own {
                                "taking back this consumer's pending entries"
                            } else {
                                "taking over entries of keys whose holder is gone"
                            };
                            info!(stream = %s, count = found.len(), "{what}, in key order");
                        }
                        self.spawn_all(found).await;
                        match next {
                            Some(n) => start = n,
                            None => break,
                        }
                    }
                    Err(e) => return self.scan_failed(s, own, e).await,
                }
            }
        }
    }

    async fn scan_failed(&self, stream: &str, own: bool, e: Error) {
        if own {
            warn!("{e:#}; taking back this consumer's pending entries again shortly");
            self.orphans.store(true, AtomicOrdering::SeqCst);
            self.pause(ERROR_PAUSE).await;
        } else {
            self.metrics.claim_failed();
            warn!(stream = %stream, group = %self.group, "cannot take over keys abandoned by other consumers: {e}; trying again in {} ms", (self.claim_idle / 2).as_millis());
        }
    }

    /// Renews the leases of the keys this consumer serves, every third of
    /// their time to live, until shutdown. A task of its own: it must not
    /// wait for permits, or a busy host would lose its keys.
    pub(super) async fn renew_loop(self: Arc<Self>, order: Ordering) {
        let every = (self.claim_idle / 3).max(Duration::from_millis(20));
        loop {
            self.pause(every).await;
            if self.shutdown.is_cancelled() {
                return;
            }
            for s in self.streams.iter() {
                let (serving, held) = self.local_state(s);
                if serving.is_empty() {
                    continue;
                }
                match order.renew(&mut self.redis.conn.clone(), s, &serving, &held).await {
                    Ok(0) => {}
                    Ok(lost) => {
                        warn!(stream = %s, group = %self.group, "{lost} key(s) taken over by another consumer: this host was presumed dead (slow, or cut off from Redis, past claim_idle_ms)")
                    }
                    Err(e) => {
                        warn!(stream = %s, group = %self.group, "renewing key leases failed: {e}; trying again in {} ms", every.as_millis())
                    }
                }
            }
        }
    }

    /// On shutdown, gives up the leases of the keys still served here (their
    /// entries stay pending): another host can take them at once.
    pub(super) async fn release_keys(&self, order: &Ordering) {
        for s in self.streams.iter() {
            let (serving, _) = self.local_state(s);
            if serving.is_empty() {
                continue;
            }
            if let Err(e) = order.release(&mut self.redis.conn.clone(), s, &serving).await {
                debug!(stream = %s, "giving up key leases failed: {e}; they run out after claim_idle_ms");
            }
        }
        self.serving.lock().expect("never poisoned").clear();
    }

    /// Gives up this consumer's lease of `key` of `stream` (unless another
    /// chain here serves the key too) when the chain delivering the key
    /// ends with no commit to hand it on: its group went missing or was made
    /// again, or its entry was gone before a retry. Nothing would renew or
    /// hand on the lease. Once the group delivers the key's entries again,
    /// the read finds the key free and serves it at once, where a lease left
    /// behind kept them waiting for it to run out (`claim_idle_ms`) or, on
    /// this host, for the next claim scan (every `claim_idle_ms / 2`). If
    /// that read came first, this host takes them back soon
    /// ([`Consumer::recover_own_soon`]).
    pub(super) async fn give_up_key(self: &Arc<Self>, stream: &str, key: &[u8]) {
        let Some(order) = &self.ordering else { return };
        let chains = self.serving.lock().expect("never poisoned").get(&(stream.to_owned(), key.to_vec())).copied();
        if chains.unwrap_or(0) > 1 {
            return;
        }
        if let Err(e) = order.release(&mut self.redis.conn.clone(), stream, &[key.to_vec()]).await {
            debug!(stream = %stream, "giving up a key's lease failed: {e}; it runs out after claim_idle_ms");
        }
        self.recover_own_soon();
    }

    /// The keys this consumer serves on `stream`, and the ids it holds there.
    fn local_state(&self, stream: &str) -> (Vec<Vec<u8>>, Vec<String>) {
        let serving = self.serving.lock().expect("never poisoned");
        let keys = serving.keys().filter(|(s, _)| s == stream).map(|(_, k)| k.clone()).collect();
        let held = self.held.lock().expect("never poisoned");
        (keys, held.iter().filter(|(s, _)| s == stream).map(|(_, id)| id.clone()).collect())
    }

    /// Key `key` of `stream` is served here by one more chain of deliveries.
    pub(super) fn serve(&self, stream: &str, key: &[u8]) {
        *self.serving.lock().expect("never poisoned").entry((stream.to_owned(), key.to_vec())).or_default() += 1;
    }

    /// A chain of deliveries of key `key` of `stream` ended here.
    pub(super) fn unserve(&self, stream: &str, key: &[u8]) {
        let mut serving = self.serving.lock().expect("never poisoned");
        let k = (stream.to_owned(), key.to_vec());
        if let Some(n) = serving.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                serving.remove(&k);
            }
        }
    }
}
