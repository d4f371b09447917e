//! The commit protocol: the transaction that finishes deliveries. A Lua
//! script (`commit.lua`) that, for each delivery of a batch, writes what it
//! produced (publishes, key-value writes, or the dead-letter copy) and
//! acknowledges its entry, all or nothing per delivery. The writes are typed
//! here ([`WriteKind`]), the script refuses any kind it does not know, and
//! each delivery's result is a value ([`Committed`]).
//!
//! A delivery that writes nothing (no publish, no key-value write, not
//! ordered by key: most of them) is finished by a plain `XACK` sent with the
//! script instead of through it ([`Commit::writes_nothing`]): the script's
//! checks guard writes, and Redis's cost of running a script is most of such
//! a delivery's. Its `XACK` acknowledges the entry whoever holds it.
//!
//! In a Redis Cluster one script can only touch keys of one slot. A write
//! whose key is in another slot than the entry's stream goes, in the same
//! script, to the stream's outbox ([`Commit::routed_for_cluster`]), and
//! [`super::relay`] moves it to its target exactly once.

use super::error::{Context, Error};
use super::read::Delivery;
use super::{order, reply, slot};
use crate::config::StreamRules;
use crate::dead_letter::{self, Failure};
use crate::event::{self, Entry, Lineage};
use crate::format::Format;
use crate::wasm::{Effects, KvWrite, Publish};
use redis::Value;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

static COMMIT: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(&[super::order::LIBRARY, include_str!("commit.lua")].concat()));

/// What became of one delivery's commit, when Redis ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Its writes landed and its entry was acknowledged.
    Done,
    /// Its entry was no longer pending: an earlier try of the same commit
    /// went through, or another consumer took the entry over and finished
    /// it first (or the group was deleted, made again or set back meanwhile:
    /// see [`super::entry_state`]). Nothing was written.
    AlreadyFinished,
    /// A write cannot be applied (a target holds something other than a
    /// stream); nothing was written and the entry is still pending. Trying
    /// again will not help until someone fixes the key.
    Refused(String),
    /// The entry is pending with another consumer, named here, which took
    /// it over (this host was presumed dead: paused, or cut off, past
    /// `claim_idle_ms`) and will finish it. Nothing was written. Or, the
    /// entry being ordered by key: the consumer named here took the key over
    /// (this host's lease lapsed) for an earlier entry, first in the key's
    /// queue; the entry stays pending and that consumer delivers it in its
    /// turn.
    TakenOver(String),
    /// Done (as [`Committed::Done`]), and the entry was ordered by key: the
    /// next entry of its key is now this consumer's to deliver
    /// ([`super::order`]).
    Next(Box<Delivery>),
    /// Nothing was written: the entry, ordered by key, is no longer its
    /// key's first. An earlier entry was queued ahead of it while it was
    /// handled (its group made again or set back, and the key's earlier
    /// entries delivered again); the entry stays pending and is delivered
    /// again in its turn. The key goes on from its first entry, named here,
    /// now this consumer's to deliver.
    OutOfTurn(Box<Delivery>),
}

/// What finishing one delivery writes: its entry's ack, and before it the
/// writes it produced. Owned, so it can wait in a batch.
#[derive(Debug)]
pub struct Commit {
    /// The stream the entry was read from.
    stream: String,
    id: String,
    /// Its ordering key and the key lease's time to live in ms, when its
    /// handler orders by key.
    order: Option<(Vec<u8>, u64)>,
    writes: Vec<Write>,
}

/// The kinds of write a commit makes, each one command in the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `XADD key * field value ...`: a publish, or a dead-letter copy.
    Xadd,
    /// `SET key value [PX ms]`: a key-value write.
    Set,
    /// `DEL key`: a key-value delete.
    Del,
    /// `XDEL key id`: an inbox entry done with.
    Xdel,
    /// `PEXPIRE key ms`: a reply stream's time to live.
    Pexpire,
}

impl WriteKind {
    /// Every kind.
    pub const ALL: [WriteKind; 5] =
        [WriteKind::Xadd, WriteKind::Set, WriteKind::Del, WriteKind::Xdel, WriteKind::Pexpire];

    /// Its name in the scripts' arguments (`WRITES` in `commit.lua` and
    /// `relay.lua`).
    pub fn wire(self) -> &'static str {
        match self {
            WriteKind::Xadd => "xadd",
            WriteKind::Set => "set",
            WriteKind::Del => "del",
            WriteKind::Xdel => "xdel",
            WriteKind::Pexpire => "pexpire",
        }
    }

    /// The kind named `wire`.
    pub fn from_wire(wire: &str) -> Option<WriteKind> {
        WriteKind::ALL.into_iter().find(|k| k.wire() == wire)
    }
}

/// One write of a commit.
#[derive(Debug)]
struct Write {
    kind: WriteKind,
    key: String,
    args: Vec<Vec<u8>>,
}

impl Write {
    /// This write as an entry of `outbox` (see [`Relayed::parse`]).
    fn into_outbox(self, outbox: &str) -> Write {
        let mut args =
            vec![b"kind".to_vec(), self.kind.wire().as_bytes().to_vec(), b"key".to_vec(), self.key.into_bytes()];
        for a in self.args {
            args.extend([b"a".to_vec(), a]);
        }
        Write { kind: WriteKind::Xadd, key: outbox.to_owned(), args }
    }
}

impl Commit {
    /// Acknowledges `entry` of `stream` and applies `effects` (publishes,
    /// key-value writes under `kv_prefix`) of `handler`.
    /// Each publish is written in its stream's format (`formats`), carrying
    /// the lineage of `entry`, read in its own stream's format.
    pub fn ack(
        stream: &str,
        entry: &Entry,
        handler: &str,
        kv_prefix: &str,
        effects: Effects,
        formats: &StreamRules,
    ) -> Commit {
        let (origin, cause_id, lineage) = match effects.publishes.is_empty() && effects.reply.is_none() {
            true => Default::default(),
            false => {
                let (origin, cause_id) = dead_letter::origin(stream, entry);
                let lineage = Lineage::of(formats.format(&origin), entry);
                (origin, cause_id, lineage)
            }
        };
        let publish = |(i, p): (usize, &Publish)| {
            let format = formats.format(&p.stream);
            // The same publish, written again after a redelivery of its
            // cause, gets the same CloudEvents or LeanMQ id.
            let seed = (*format != Format::Sluice).then(|| format!("{handler}\n{origin}\n{cause_id}\n{i}"));
            let fields = event::published_fields(p, handler, &lineage, &cause_id, format, seed.as_deref());
            xadd(&p.stream, fields)
        };
        let publishes = effects.publishes.iter().enumerate().map(publish);
        let kv = effects.kv.into_iter().map(|w| kv_write(kv_prefix, w));
        let reply = effects.reply.iter().flat_map(|r| reply_writes(r, handler, &lineage, &cause_id));
        let writes = publishes.chain(reply).chain(kv).chain(delete_if_inbox(stream, &entry.id)).collect();
        Commit { stream: stream.to_owned(), id: entry.id.clone(), order: None, writes }
    }

    /// Copies `entry` of `stream`, which failed with `failure`, to
    /// `dead_letter_stream`, and acknowledges it. `format` is the format of
    /// the stream it came from: a LeanMQ message is kept as LeanMQ keeps
    /// its dead letters ([`Format::dead_letter_fields`]).
    pub fn dead_letter(
        dead_letter_stream: &str,
        stream: &str,
        entry: &Entry,
        failure: &Failure<'_>,
        format: &Format,
    ) -> Commit {
        let fields = match format.dead_letter_fields(entry, failure.reason, failure.failed_at_ms) {
            Some(own) => dead_letter::fields(&Entry { id: entry.id.clone(), fields: own }, failure),
            None => dead_letter::fields(entry, failure),
        };
        let error = error_reply(entry, failure.reason);
        let request_id = || dead_letter::origin(stream, entry).1;
        let lineage = || Lineage::of(format, entry);
        let reply = error.iter().flat_map(|r| reply_writes(r, failure.handler, &lineage(), &request_id()));
        let writes =
            std::iter::once(xadd(dead_letter_stream, fields)).chain(reply).chain(delete_if_inbox(stream, &entry.id));
        Commit { stream: stream.to_owned(), id: entry.id.clone(), order: None, writes: writes.collect() }
    }

    /// This commit for an entry ordered by `key` (`None`: it has none),
    /// whose lease lasts `ttl_ms`: it also moves the key on to its next
    /// entry ([`Committed::Next`]).
    pub fn in_key_order(self, key: Option<Vec<u8>>, ttl_ms: u64) -> Commit {
        Commit { order: key.map(|k| (k, ttl_ms)), ..self }
    }

    /// Whether it moves its entry's key on to the key's next entry (it is
    /// ordered by key): then only the script's own answer says which entry
    /// that is ([`Committed::Next`]).
    pub fn moves_key_on(&self) -> bool {
        self.order.is_some()
    }

    /// The ordering key of its entry, when its handler orders by key.
    pub fn key(&self) -> Option<&[u8]> {
        self.order.as_ref().map(|(key, _)| key.as_slice())
    }

    /// The entry it finishes: its stream and id.
    pub fn entry(&self) -> (&str, &str) {
        (&self.stream, &self.id)
    }

    /// Whether it only acknowledges its entry: no writes, and no key to move
    /// on. Such a commit is a plain `XACK` ([`commit_and_read`]), not part
    /// of the script: with nothing to write there is nothing for the
    /// script's checks to guard. It acknowledges the entry even if another
    /// consumer took it over meanwhile (this host presumed dead): its
    /// handler succeeded, and the other consumer's late commit finds the
    /// entry finished and writes nothing, so nothing is lost or written
    /// twice.
    pub fn writes_nothing(&self) -> bool {
        self.order.is_none() && self.writes.is_empty()
    }

    /// This commit for a Redis Cluster: every write whose key is not in
    /// the slot of the entry's stream becomes an entry of that stream's
    /// outbox, written in the same script as the ack, so the commit stays
    /// atomic in one slot.
    pub fn routed_for_cluster(mut self) -> Commit {
        let home = slot::of(&self.stream);
        if self.writes.iter().all(|w| slot::of(&w.key) == home) {
            return self;
        }
        let outbox = outbox(&self.stream);
        self.writes = self
            .writes
            .into_iter()
            .map(|w| if slot::of(&w.key) == home { w } else { w.into_outbox(&outbox) })
            .collect();
        self
    }

    /// Whether every write is in the slot of the entry's stream (the
    /// one-script path in a cluster; always, on one server).
    pub fn in_one_slot(&self) -> bool {
        let home = slot::of(&self.stream);
        self.writes.iter().all(|w| slot::of(&w.key) == home)
    }
}

/// The outbox of `stream` in a Redis Cluster: a stream of Sluice's own in
/// the same slot, holding writes to other slots until they are relayed.
pub fn outbox(stream: &str) -> String {
    format!("sluice:outbox:{}", slot::tag_for(stream))
}

/// A write waiting in an outbox: what to do, to which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The write's kind.
    pub kind: WriteKind,
    /// Its target key.
    pub key: String,
    /// Its arguments.
    pub args: Vec<Vec<u8>>,
}

impl Relayed {
    /// The write an outbox entry holds (`kind`, `key`, then `a` per
    /// argument); `None` if it holds something else.
    pub fn parse(entry: &Entry) -> Option<Relayed> {
        let mut fields = entry.fields.iter();
        let kind = match fields.next()? {
            (k, v) if k == "kind" => WriteKind::from_wire(std::str::from_utf8(v).ok()?)?,
            _ => return None,
        };
        let key = match fields.next()? {
            (k, v) if k == "key" => String::from_utf8(v.clone()).ok()?,
            _ => return None,
        };
        let args = fields.map(|(k, v)| (k == "a").then(|| v.clone())).collect::<Option<Vec<_>>>()?;
        Some(Relayed { kind, key, args })
    }
}

/// How long a reply stream lives after its reply is written: a caller that
/// vanished leaves nothing behind for longer.
pub const REPLY_TTL_MS: u64 = 5 * 60 * 1000;

/// The event type of the reply a failed request gets: its `data` is
/// `{"error": reason}`.
pub const ERROR_REPLY_TYPE: &str = "sluice.error";

/// The writes of `reply` to a request, `entry` of `stream`: the reply entry
/// (with `request_id`, and the fields of any publish) and its stream's time
/// to live.
fn reply_writes(reply: &Publish, handler: &str, lineage: &Lineage, request_id: &str) -> [Write; 2] {
    // Reply streams are Sluice's own: always its format.
    let mut fields = event::published_fields(reply, handler, lineage, request_id, &Format::Sluice, None);
    fields.push((event::field::REQUEST_ID.into(), request_id.as_bytes().to_vec()));
    let expire = Write {
        kind: WriteKind::Pexpire,
        key: reply.stream.clone(),
        args: vec![REPLY_TTL_MS.to_string().into_bytes()],
    };
    [xadd(&reply.stream, fields), expire]
}

/// The error reply to `entry`, if it is a request: it is dead-lettered for
/// `reason`, and its caller hears so at once rather than waiting out its
/// timeout.
fn error_reply(entry: &Entry, reason: &str) -> Option<Publish> {
    let reply_to =
        entry.get(event::field::REPLY_TO).filter(|v| v.starts_with(crate::request::REPLY_PREFIX.as_bytes()))?;
    Some(Publish {
        stream: String::from_utf8_lossy(reply_to).into_owned(),
        event_type: ERROR_REPLY_TYPE.into(),
        data: serde_json::json!({ "error": reason }).to_string().into_bytes(),
    })
}

/// For an entry of a handler's inbox, its deletion, in the same commit as
/// its ack: an inbox copy is done with once its handler is, and the
/// original stays in its own stream. Other streams keep their entries.
fn delete_if_inbox(stream: &str, id: &str) -> Option<Write> {
    dead_letter::is_inbox(stream).then(|| Write {
        kind: WriteKind::Xdel,
        key: stream.to_owned(),
        args: vec![id.as_bytes().to_vec()],
    })
}

/// Finishes `commits` (entries read through `group` by `consumer`) in one
/// round trip: those that write through one script, those that write
/// nothing by a plain `XACK` each ([`Commit::writes_nothing`]). One result
/// per commit, in order. An error (a write Redis failed although the
/// script's checks passed, or the connection) may come after some commits
/// of the batch were made: those are written and acknowledged together, so
/// trying the batch again finds them already finished, and the others are
/// untouched or, at worst, partly written and still pending.
pub async fn commit_batch<'a>(
    conn: &mut impl ConnectionLike,
    group: &str,
    consumer: &str,
    commits: impl IntoIterator<Item = &'a Commit>,
) -> Result<Vec<Committed>, Error> {
    commit_and_read(conn, group, consumer, commits, ReadAfter::NOTHING).await?.committed.into_iter().collect()
}

/// What a batch reads once its script has finished the batch's deliveries
/// (see [`commit_and_read`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadAfter<'a> {
    /// The streams to read new entries of: the committing consumer's own
    /// (in a cluster, all in the slot of the commits' streams).
    pub streams: &'a [String],
    /// The most entries to read of each stream (`COUNT` is per stream).
    pub count: usize,
}

impl ReadAfter<'_> {
    /// Reads nothing.
    pub const NOTHING: ReadAfter<'static> = ReadAfter { streams: &[], count: 0 };
}

/// What one batch's round trip brought back ([`commit_and_read`]).
#[derive(Debug)]
pub struct CommitAndRead {
    /// One result per commit, in order: those of the script's commits, or
    /// its error for each of them (see [`commit_batch`]); each plain
    /// `XACK`'s own.
    pub committed: Vec<Result<Committed, Error>>,
    /// The new entries read, now pending with the consumer: they stand
    /// whatever the script answered.
    pub found: Vec<Delivery>,
    /// (stream, id) of the entries of keys the script found deleted from
    /// their stream while pending, as it handed keys on: acknowledged, since
    /// there is nothing to deliver, but neither handled nor dead-lettered.
    pub deleted: Vec<(String, String)>,
}

/// Runs `commits` as [`commit_batch`] does, then reads new entries for
/// `consumer` as `read` says (the next deliveries of the permits the batch's
/// finished deliveries give back): an `XREADGROUP` sent with the script and
/// the `XACK`s, in one round trip, which Redis runs right after them. The
/// read stands whatever the commits' results, the script's error included.
/// If a stream lacks the group, nothing is read (the consumer's reader
/// meets that error). An error here means the reply was lost: entries may
/// have been read (pending with `consumer`) that nothing knows of, as with
/// a lost read.
pub async fn commit_and_read<'a>(
    conn: &mut impl ConnectionLike,
    group: &str,
    consumer: &str,
    commits: impl IntoIterator<Item = &'a Commit>,
    read: ReadAfter<'_>,
) -> Result<CommitAndRead, Error> {
    let commits: Vec<&Commit> = commits.into_iter().collect();
    let reads = !read.streams.is_empty() && read.count > 0;
    if commits.is_empty() && !reads {
        return Ok(CommitAndRead { committed: Vec::new(), found: Vec::new(), deleted: Vec::new() });
    }
    let (acks, scripted): (Vec<&Commit>, Vec<&Commit>) = commits.iter().partition(|c| c.writes_nothing());
    // Names the batch (or its script's part) in errors.
    let batch = |n: usize| format!("commit of {n} deliveries through group {group}");
    let what = || batch(scripted.len());
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if !scripted.is_empty() {
        pipe.add_command(script_call(group, consumer, &scripted));
    }
    for c in &acks {
        pipe.cmd("XACK").arg(&c.stream).arg(group).arg(&c.id);
    }
    if reads {
        pipe.cmd("XREADGROUP").arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(read.count);
        pipe.arg("STREAMS").arg(read.streams);
        for _ in read.streams {
            pipe.arg(">");
        }
    }
    let all = || batch(commits.len());
    let replies: Vec<Value> = pipe.query_async(conn).await.context(all)?;
    if replies.len() != usize::from(!scripted.is_empty()) + acks.len() + usize::from(reads) {
        // Not one reply per command: none can be trusted to be whose it
        // seems, so the batch's reply counts as lost.
        return Err(Error::reply(all(), &Value::Array(replies)));
    }
    let mut replies = replies.into_iter();
    let script = match scripted.is_empty() {
        true => Ok((Vec::new(), Vec::new())),
        false => match replies.next().unwrap_or(Value::Nil) {
            Value::Array(replies) => results(replies, scripted.len(), what),
            Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                // Redis lost its scripts (a restart), or this node never had
                // them: run again by body. The rest ran all the same, and
                // what the read found goes on.
                let call = COMMIT.by_body(pipe.cmd_iter().next().expect("the script's call"));
                let replies = call.query_async(conn).await;
                replies.context(what).and_then(|replies| results(replies, scripted.len(), what))
            }
            Value::ServerError(e) => Err(Error::new(what(), redis::RedisError::from(e))),
            other => Err(Error::reply(what(), &other)),
        },
    };
    let (script, deleted) = match script {
        Ok((results, deleted)) => (Ok(results), deleted),
        Err(e) => (Err(e), Vec::new()),
    };
    let acked: Vec<_> = acks.iter().map(|c| acked(c, group, replies.next().unwrap_or(Value::Nil))).collect();
    let found = match replies.next() {
        None | Some(Value::ServerError(_)) => Vec::new(),
        Some(found) => super::read::deliveries(&found),
    };
    // Back in the batch's order.
    let (mut script, mut acked) = (script.map(Vec::into_iter), acked.into_iter());
    let committed = commits
        .iter()
        .map(|c| match (c.writes_nothing(), &mut script) {
            (true, _) => acked.next().expect("one result per XACK"),
            (false, Ok(results)) => Ok(results.next().expect("one result per commit of the script")),
            (false, Err(e)) => Err(e.clone()),
        })
        .collect();
    Ok(CommitAndRead { committed, found, deleted })
}

/// What the plain `XACK` of `commit` answered, `reply`, means: done if it
/// acknowledged the entry, already finished if the entry was no longer
/// pending.
fn acked(commit: &Commit, group: &str, reply: Value) -> Result<Committed, Error> {
    let what = || format!("XACK of {} {} through group {group}", commit.stream, commit.id);
    match reply {
        Value::Int(1) => Ok(Committed::Done),
        Value::Int(0) => Ok(Committed::AlreadyFinished),
        Value::ServerError(e) => Err(Error::new(what(), redis::RedisError::from(e))),
        other => Err(Error::reply(what(), &other)),
    }
}

/// The `EVALSHA` of the commit script for `commits` (see `commit.lua` for
/// its keys and arguments).
fn script_call(group: &str, consumer: &str, commits: &[&Commit]) -> redis::Cmd {
    let mut call = redis::cmd("EVALSHA");
    let keys: usize = commits.iter().map(|c| 1 + if c.order.is_some() { 2 } else { 0 } + c.writes.len()).sum();
    call.arg(COMMIT.hash()).arg(keys);
    for c in commits {
        call.arg(&c.stream);
        if let Some((key, _)) = &c.order {
            let (queue, lease) = order::queue_and_lease(&order::prefix(group, &c.stream), key);
            call.arg(queue).arg(lease);
        }
        for w in &c.writes {
            call.arg(&w.key);
        }
    }
    call.arg(group).arg(consumer);
    for c in commits {
        call.arg(&c.id);
        match &c.order {
            Some((key, ttl_ms)) => call.arg("1").arg(key).arg(ttl_ms),
            None => call.arg("0"),
        };
        call.arg(c.writes.len());
        for w in &c.writes {
            call.arg(w.kind.wire()).arg(w.args.len());
            for a in &w.args {
                call.arg(a.as_slice());
            }
        }
    }
    call
}

/// A commit script's results, one per commit, and the (stream, id) of the
/// entries it found deleted.
type ScriptResults = (Vec<Committed>, Vec<(String, String)>);

/// The script's `replies` as one result for each of `count` commits, and
/// the entries it found deleted (its last reply, when there were any).
fn results(mut replies: Vec<Value>, count: usize, what: impl Fn() -> String) -> Result<ScriptResults, Error> {
    let mut deleted = Vec::new();
    if replies.len() == count + 1
        && let Some(Value::Array(last)) = replies.last()
        && let [tag, gone] = &last[..]
        && reply::text(tag).as_deref() == Some("gone")
    {
        deleted = order::deleted(gone);
        replies.pop();
    }
    if replies.len() != count {
        return Err(Error::reply(what(), &Value::Array(replies)));
    }
    let results = replies.iter().map(|r| result(r).ok_or_else(|| Error::reply(what(), r))).collect::<Result<_, _>>()?;
    Ok((results, deleted))
}

/// Runs one commit on its own; see [`commit_batch`].
pub async fn commit_one(
    conn: &mut impl ConnectionLike,
    group: &str,
    consumer: &str,
    commit: Commit,
) -> Result<Committed, Error> {
    let mut results = commit_batch(conn, group, consumer, [&commit]).await?;
    Ok(results.pop().expect("one result per commit"))
}

/// One delivery's result as the script returns it (see `commit.lua`);
/// `None` for anything else.
fn result(reply: &Value) -> Option<Committed> {
    match reply {
        Value::Int(1) => Some(Committed::Done),
        Value::Int(0) => Some(Committed::AlreadyFinished),
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(-1), Value::BulkString(reason)] => {
                Some(Committed::Refused(String::from_utf8_lossy(reason).into_owned()))
            }
            [Value::Int(-2), Value::BulkString(owner)] => {
                Some(Committed::TakenOver(String::from_utf8_lossy(owner).into_owned()))
            }
            [Value::Int(3), next] => order::delivery(next).map(|d| Committed::Next(Box::new(d))),
            [Value::Int(4), first] => order::delivery(first).map(|d| Committed::OutOfTurn(Box::new(d))),
            _ => None,
        },
        _ => None,
    }
}

fn xadd(stream: &str, fields: Vec<(String, Vec<u8>)>) -> Write {
    let args = fields.into_iter().flat_map(|(k, v)| [k.into_bytes(), v]).collect();
    Write { kind: WriteKind::Xadd, key: stream.to_owned(), args }
}

fn kv_write(kv_prefix: &str, w: KvWrite) -> Write {
    match w {
        KvWrite::Set { key, value, ttl_ms } => {
            let mut args = vec![value];
            if let Some(ms) = ttl_ms {
                args.extend([b"PX".to_vec(), ms.to_string().into_bytes()]);
            }
            Write { kind: WriteKind::Set, key: format!("{kv_prefix}{key}"), args }
        }
        KvWrite::Delete { key } => Write { kind: WriteKind::Del, key: format!("{kv_prefix}{key}"), args: vec![] },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_kind_is_one_the_script_knows() {
        let script = include_str!("commit.lua");
        for kind in WriteKind::ALL {
            assert!(script.contains(&format!("  {} = function(key, i, j)", kind.wire())), "{kind:?}");
        }
    }

    #[test]
    fn a_write_to_another_slot_goes_through_the_outbox_and_reads_back() {
        let entry = Entry { id: "1-0".into(), fields: vec![("type".into(), b"t".to_vec())] };
        let publish =
            |stream: &str| crate::wasm::Publish { stream: stream.into(), event_type: "x".into(), data: b"{}".to_vec() };
        let effects =
            Effects { publishes: vec![publish("{shop}:payments"), publish("elsewhere")], kv: vec![], reply: None };
        let commit = Commit::ack("{shop}:orders", &entry, "h", "sluice:kv:{shop}:h:", effects, &StreamRules::default());
        assert!(!commit.in_one_slot());
        let routed = commit.routed_for_cluster();
        assert!(routed.in_one_slot(), "{routed:?}");
        let keys: Vec<&str> = routed.writes.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["{shop}:payments", "sluice:outbox:{shop}"]);
        let queued = &routed.writes[1];
        let fields =
            queued.args.chunks(2).map(|kv| (String::from_utf8(kv[0].clone()).unwrap(), kv[1].clone())).collect();
        let relayed = Relayed::parse(&Entry { id: "2-0".into(), fields }).unwrap();
        assert_eq!((relayed.kind, relayed.key.as_str()), (WriteKind::Xadd, "elsewhere"));
        assert_eq!(relayed.args[..2], [b"type".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn the_results_parse_and_anything_else_is_refused() {
        assert_eq!(result(&Value::Int(1)), Some(Committed::Done));
        assert_eq!(result(&Value::Int(0)), Some(Committed::AlreadyFinished));
        let refused = Value::Array(vec![Value::Int(-1), Value::BulkString(b"x holds a string".to_vec())]);
        assert_eq!(result(&refused), Some(Committed::Refused("x holds a string".into())));
        let taken = Value::Array(vec![Value::Int(-2), Value::BulkString(b"host-b".to_vec())]);
        assert_eq!(result(&taken), Some(Committed::TakenOver("host-b".into())));
        let a1 = Value::Array(vec![
            Value::BulkString(b"in".to_vec()),
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![Value::BulkString(b"type".to_vec()), Value::BulkString(b"t".to_vec())]),
            Value::Int(1),
            Value::BulkString(b"a".to_vec()),
        ]);
        let delivery = Box::new(order::delivery(&a1).unwrap());
        assert_eq!(result(&Value::Array(vec![Value::Int(3), a1.clone()])), Some(Committed::Next(delivery.clone())));
        assert_eq!(result(&Value::Array(vec![Value::Int(4), a1])), Some(Committed::OutOfTurn(delivery)));
        assert_eq!(result(&Value::BulkString(b"SLUICE_WRONGTYPE x".to_vec())), None);
        assert_eq!(result(&Value::Int(2)), None);
    }

    #[test]
    fn entries_found_deleted_follow_the_results() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let pair = |s: &str, id: &str| Value::Array(vec![bulk(s), bulk(id)]);
        let gone = Value::Array(vec![bulk("gone"), Value::Array(vec![pair("in", "5-0"), pair("in", "6-0")])]);
        let what = || "batch".to_owned();
        let (results, deleted) = results(vec![Value::Int(1), gone.clone()], 1, what).unwrap();
        assert_eq!(results, [Committed::Done]);
        assert_eq!(deleted, [("in".to_owned(), "5-0".to_owned()), ("in".to_owned(), "6-0".to_owned())]);
        assert_eq!(results_of(vec![Value::Int(1)]), Some(0), "none found");
        assert_eq!(results_of(vec![Value::Int(1), Value::Int(0)]), None, "one result too many is no list of them");
        assert_eq!(results_of(vec![gone]), None, "no result");
    }

    /// How many entries found deleted `replies` to one commit hold, if they
    /// are read as such.
    fn results_of(replies: Vec<Value>) -> Option<usize> {
        results(replies, 1, || "batch".to_owned()).ok().map(|(_, deleted)| deleted.len())
    }
}
