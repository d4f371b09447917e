//! Ordering by key (`order_by`): the events of one key (an account, an
//! order) are delivered one at a time, in stream order, by one consumer at
//! a time across every host in the group; events of different keys run
//! concurrently.
//!
//! Redis decides which consumer reads which entry, so the order is kept in
//! Redis, per (group, stream, key), in the stream's slot:
//! - a **queue**: a list of the key's pending entries, in id order;
//! - a **lease**: the consumer serving the key, with a time to live of
//!   `claim_idle_ms`, renewed while it serves it.
//!
//! The consumer holding a key's lease delivers the first entry of its queue,
//! and only that one. Every step that changes who delivers what is one
//! script, so no two consumers ever disagree:
//! - *reading* (`order_take.lua`, `read`) reads new entries with
//!   `XREADGROUP` and adds each keyed one to its key's queue; a key nobody
//!   holds is taken, and its queue's first entry (which may be older than the
//!   one just read, left by a crashed host) is claimed to deliver. A
//!   consumer takes no more keys than it has free permits: the others wait
//!   in a set (`P..waiting`) for a consumer with room, and a one-entry
//!   wake-up stream (`P..wake`), which idle consumers block on beside the
//!   source stream, tells them;
//! - *finishing* (`commit.lua`) acknowledges the entry, removes it from its
//!   queue, and claims the key's next entry for the same consumer, or gives
//!   the lease up when the queue is empty. A retry is not a finish: the key
//!   waits out the backoff with its entry. An entry that is not its queue's
//!   first (its group was made again or set back while it ran, and a read
//!   queued the key's earlier entries again) is out of turn: nothing is
//!   written, and the key goes on from its first entry;
//! - *taking back* this consumer's own entries after a restart (`own`), and
//!   *taking over* keys whose holder died (`idle`: an entry idle past
//!   `claim_idle_ms` whose key has no lease) go through the same queue;
//! - *renewing* the leases of the keys a consumer serves (`renew`), and
//!   *giving them up* (`release`) on shutdown, or when a key's chain of
//!   deliveries ends with no commit to hand it on (its group lost, or its
//!   entry gone before a retry).
//!
//! Entries without the key are delivered as they come. Costs and the
//! reasoning are in docs/delivery.md ("Ordering by key").

use super::error::{Context, Error};
use super::read::{Delivery, Page};
use super::reply;
use super::slot;
use crate::event::Entry;
use redis::Value;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use std::time::Duration;

/// The order scripts' shared functions, followed by taking entries in.
static TAKE: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(concat!(include_str!("order.lua"), include_str!("order_take.lua"))));

/// The order functions, in front of the commit script (which moves a key on
/// to its next entry).
pub(super) const LIBRARY: &str = include_str!("order.lua");

/// What an entry's ordering key is (`order_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderBy {
    /// An entry field: `order_by = "account"`.
    Field(String),
    /// A top-level key of the entry's JSON data: `order_by = "data.account_id"`.
    Data(String),
}

impl OrderBy {
    /// `order_by` as written: `data.NAME` for a key of the data, else a
    /// field name. The reason when it is neither.
    pub fn parse(s: &str) -> Result<OrderBy, String> {
        let bad = |why: &str| {
            Err(format!(
                "{why} (expected an entry field, like \"account\", or \"data.KEY\" for a top-level key of the JSON data)"
            ))
        };
        if s.is_empty() {
            return bad("is empty");
        }
        if s.chars().any(char::is_whitespace) {
            return bad(&format!("{s:?} has whitespace"));
        }
        match s.strip_prefix("data.") {
            Some("") => bad("names no key after \"data.\""),
            Some(key) => Ok(OrderBy::Data(key.to_owned())),
            None => Ok(OrderBy::Field(s.to_owned())),
        }
    }

    /// The scripts' arguments for it: the kind and the name.
    fn wire(&self) -> (&'static str, &str) {
        match self {
            OrderBy::Field(f) => ("field", f),
            OrderBy::Data(k) => ("data", k),
        }
    }
}

impl std::fmt::Display for OrderBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderBy::Field(name) => f.write_str(name),
            OrderBy::Data(key) => write!(f, "data.{key}"),
        }
    }
}

/// What the keys of `group`'s queues and leases on `stream` start with: in
/// the stream's slot, so that one script touches both.
pub fn prefix(group: &str, stream: &str) -> String {
    format!("sluice:order:{}:{group}:{stream}:", slot::tag_for(stream))
}

/// The queue and the lease of `key`, under `prefix`.
pub(super) fn queue_and_lease(prefix: &str, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let named = |kind: &str| [prefix.as_bytes(), kind.as_bytes(), key].concat();
    (named("queue:"), named("lease:"))
}

/// What a read found, besides the entries it found deleted.
#[derive(Debug)]
pub enum Read {
    /// Entries to deliver now (possibly none: what was read waits in the
    /// queues of keys others serve).
    Found(Vec<Delivery>),
    /// Nothing new: (key, id) of each stream and wake-up stream to wait on
    /// (`XREAD`) for an entry after `id`.
    Idle(Vec<(String, String)>),
}

/// One consumer's view of ordering: its group and name, the key, and the
/// lease time.
#[derive(Debug, Clone)]
pub struct Ordering {
    /// What the key is.
    pub by: OrderBy,
    group: String,
    consumer: String,
    /// How long a lease lasts unless renewed (`claim_idle_ms`).
    ttl: Duration,
    /// The streams hold CloudEvents ([`crate::format`]): a `data.KEY` is a
    /// key of the CloudEvent's data.
    cloudevents: bool,
}

impl Ordering {
    /// Ordering by `by` for `consumer` of `group`, leases lasting `ttl`,
    /// on streams that hold CloudEvents if `cloudevents`.
    pub fn new(by: OrderBy, group: &str, consumer: &str, ttl: Duration, cloudevents: bool) -> Ordering {
        Ordering { by, group: group.to_owned(), consumer: consumer.to_owned(), ttl, cloudevents }
    }

    /// The lease time, in ms, as the scripts take it.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    fn invocation(&self, mode: &str) -> super::script::Invocation<'static> {
        let mut call = TAKE.prepare_invoke();
        let (by, name) = match self.by.wire() {
            ("data", name) if self.cloudevents => ("cedata", name),
            wire => wire,
        };
        call.arg(mode).arg(&self.group).arg(&self.consumer).arg(by).arg(name).arg(self.ttl_ms());
        call
    }

    /// Reads up to `count` new entries of `streams` (one slot), queues the
    /// keyed ones, takes at most `room` keys (first those left waiting by
    /// others), and returns what to deliver now, with the (stream, id) of
    /// each entry found deleted from its stream while still pending (a
    /// key's queued entry; acknowledged, since there is nothing to deliver).
    pub async fn read(
        &self,
        conn: &mut impl ConnectionLike,
        streams: &[String],
        count: usize,
        room: usize,
    ) -> Result<(Read, Vec<(String, String)>), Error> {
        let mut call = self.invocation("read");
        call.arg(count).arg(room);
        for s in streams {
            call.key(s).arg(prefix(&self.group, s));
        }
        let what = || format!("ordered read on streams {} group {}", streams.join(", "), self.group);
        let reply: Value = call.invoke_async(conn).await.context(what)?;
        let [found, last, gone] = reply::items(&reply) else { return Err(Error::reply(what(), &reply)) };
        let read = match last {
            Value::Nil => Read::Found(deliveries(found)),
            pairs => {
                let texts: Vec<String> = reply::items(pairs).iter().filter_map(reply::text).collect();
                Read::Idle(texts.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect())
            }
        };
        Ok((read, deleted(gone)))
    }

    /// One page of pending entries of `stream` to take: this consumer's own
    /// (`own`: true; idle at least `min_idle`) or anyone's idle at least
    /// `min_idle` (keys whose holder is gone); at most `count` looked at, and
    /// the page ends once `room` are taken. `serving`: the keys this consumer
    /// serves now; `held`: the ids it is delivering. Returns what to deliver,
    /// where the next page starts, and the entries found deleted from the
    /// stream (dropped from the group, or acknowledged: nothing to deliver).
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        conn: &mut impl ConnectionLike,
        stream: &str,
        own: bool,
        min_idle: Duration,
        (start, count, room): (&str, usize, usize),
        serving: &[Vec<u8>],
        held: &[String],
    ) -> Result<Page, Error> {
        let mut call = self.invocation(if own { "own" } else { "idle" });
        call.key(stream).arg(prefix(&self.group, stream)).arg(min_idle.as_millis() as u64).arg(start).arg(count.max(1));
        call.arg(room.max(1)).arg(serving.len()).arg(serving).arg(held);
        let what = || format!("taking pending entries of stream {stream} group {} in key order", self.group);
        let reply: Value = call.invoke_async(conn).await.context(what)?;
        let [found, next, gone] = reply::items(&reply) else { return Err(Error::reply(what(), &reply)) };
        let deleted = deleted(gone).into_iter().map(|(_, id)| id).collect();
        Ok(Page { found: deliveries(found), next: reply::text(next), deleted })
    }

    /// Renews the leases of `keys` of `stream` (taking back a lapsed one no
    /// one took if its first entry is among `delivering`, the ids this
    /// consumer is delivering); returns how many another consumer took
    /// over while this one delivers their first entry.
    pub async fn renew(
        &self,
        conn: &mut impl ConnectionLike,
        stream: &str,
        keys: &[Vec<u8>],
        delivering: &[String],
    ) -> Result<usize, Error> {
        let mut call = self.invocation("renew");
        call.key(stream).arg(prefix(&self.group, stream)).arg(keys.len()).arg(keys).arg(delivering);
        let what = || format!("renewing key leases on stream {stream} group {}", self.group);
        let reply: Value = call.invoke_async(conn).await.context(what)?;
        Ok(reply::items(&reply).len())
    }

    /// Gives up this consumer's leases of `keys` of `stream` (on shutdown, so
    /// that another host may take them at once; or once a key's chain of
    /// deliveries ended with no commit to hand it on).
    pub async fn release(&self, conn: &mut impl ConnectionLike, stream: &str, keys: &[Vec<u8>]) -> Result<(), Error> {
        let mut call = self.invocation("release");
        call.key(stream).arg(prefix(&self.group, stream)).arg(keys);
        let what = || format!("giving up key leases on stream {stream} group {}", self.group);
        let _: Value = call.invoke_async(conn).await.context(what)?;
        Ok(())
    }
}

/// Deliveries as the scripts return them: `[stream, id, fields, attempt,
/// key or nil]` each.
fn deliveries(v: &Value) -> Vec<Delivery> {
    reply::items(v).iter().filter_map(delivery).collect()
}

/// The `gone` list the scripts return: (stream, id) pairs.
pub(super) fn deleted(v: &Value) -> Vec<(String, String)> {
    reply::items(v)
        .iter()
        .filter_map(|pair| match reply::items(pair) {
            [s, id] => Some((reply::text(s)?, reply::text(id)?)),
            _ => None,
        })
        .collect()
}

/// One delivery as the scripts return it; `None` for anything else.
pub(super) fn delivery(v: &Value) -> Option<Delivery> {
    let [stream, id, fields, attempt, key] = reply::items(v) else { return None };
    let pair = Value::Array(vec![id.clone(), fields.clone()]);
    let entry: Entry = reply::entry(&pair)?;
    let attempt = match attempt {
        Value::Int(n) => (*n).max(1) as u32,
        _ => return None,
    };
    Some(Delivery { stream: reply::text(stream)?, entry, attempt, key: reply::bytes(key) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_names_a_field_or_a_data_key() {
        assert_eq!(OrderBy::parse("account"), Ok(OrderBy::Field("account".into())));
        assert_eq!(OrderBy::parse("data.account_id"), Ok(OrderBy::Data("account_id".into())));
        assert_eq!(OrderBy::parse("data.a.b"), Ok(OrderBy::Data("a.b".into())));
        assert_eq!(OrderBy::parse("data"), Ok(OrderBy::Field("data".into())));
        for bad in ["", "data.", "my key"] {
            let e = OrderBy::parse(bad).unwrap_err();
            assert!(e.contains("expected an entry field"), "{bad:?}: {e}");
        }
        assert_eq!(OrderBy::parse("data.account_id").unwrap().to_string(), "data.account_id");
    }

    #[test]
    fn queues_and_leases_share_their_streams_slot() {
        for (group, stream) in [("ledger", "payments"), ("g", "{shop}:orders"), ("g", "x}{y")] {
            let (q, l) = queue_and_lease(&prefix(group, stream), b"acct-1");
            let (q, l) = (String::from_utf8(q).unwrap(), String::from_utf8(l).unwrap());
            assert_eq!(slot::of(&q), slot::of(stream), "{q}");
            assert_eq!(slot::of(&l), slot::of(stream), "{l}");
        }
    }
}
