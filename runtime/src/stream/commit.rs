//! The transaction that finishes deliveries: a Lua script (`commit.lua`)
//! that, for each delivery of a batch, writes what it produced (publishes,
//! key-value writes, or the dead-letter copy) and acknowledges its entry, all
//! or nothing per delivery.

use crate::event::{self, DeadLetterInfo, Entry};
use crate::wasm::{Effects, KvWrite, kv_key};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("commit.lua")));

/// Why a commit did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// A target key holds something other than a stream: nothing was
    /// written and the entry is still pending. Trying again will not help
    /// until someone fixes the key.
    #[error("{0}")]
    WrongType(String),
    /// Redis could not be reached or failed; nothing was written.
    #[error("{0}")]
    Redis(String),
}

impl From<redis::RedisError> for CommitError {
    fn from(e: redis::RedisError) -> Self {
        CommitError::Redis(e.to_string())
    }
}

/// What finishing one delivery writes: its entry's ack, and before it the
/// writes it produced. Owned, so it can wait in a batch.
#[derive(Debug)]
pub struct Commit {
    /// The stream the entry was read from.
    stream: String,
    id: String,
    writes: Vec<Write>,
}

/// One write of a commit.
#[derive(Debug)]
struct Write {
    kind: &'static str,
    key: String,
    args: Vec<Vec<u8>>,
}

impl Commit {
    /// Acknowledges `entry` of `stream` and applies `effects` (publishes,
    /// key-value writes) of `handler`.
    pub fn ack(stream: &str, entry: &Entry, handler: &str, effects: Effects) -> Commit {
        let cause_id = match effects.publishes.is_empty() {
            true => String::new(),
            false => entry.origin(stream).1,
        };
        let publishes =
            effects.publishes.iter().map(|p| xadd(&p.stream, event::published_fields(p, handler, entry, &cause_id)));
        let kv = effects.kv.into_iter().map(|w| kv_write(handler, w));
        let writes = publishes.chain(kv).chain(delete_if_inbox(stream, &entry.id)).collect();
        Commit { stream: stream.to_owned(), id: entry.id.clone(), writes }
    }

    /// Copies `entry` of `stream` to `dead_letter_stream` with the reason,
    /// and acknowledges it.
    pub fn dead_letter(dead_letter_stream: &str, stream: &str, entry: &Entry, info: &DeadLetterInfo<'_>) -> Commit {
        let fields = event::dead_letter_fields(entry, info);
        let writes = std::iter::once(xadd(dead_letter_stream, fields)).chain(delete_if_inbox(stream, &entry.id));
        Commit { stream: stream.to_owned(), id: entry.id.clone(), writes: writes.collect() }
    }
}

/// For an entry of a handler's inbox, its deletion, in the same commit as
/// its ack: an inbox copy is done with once its handler is, and the
/// original stays in its own stream. Other streams keep their entries.
fn delete_if_inbox(stream: &str, id: &str) -> Option<Write> {
    event::is_inbox(stream).then(|| Write { kind: "xdel", key: stream.to_owned(), args: vec![id.as_bytes().to_vec()] })
}

/// Acknowledges entries the handler does not want (their type does not match
/// its `events` globs), without running it; inbox copies are deleted too.
pub async fn ack_unhandled(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    ids: &[String],
) -> redis::RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    if !event::is_inbox(stream) {
        return redis::cmd("XACK").arg(stream).arg(group).arg(ids).exec_async(conn).await;
    }
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
    pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
    pipe.exec_async(conn).await
}

/// Runs `commits` (entries read through `group`) in one script. On success,
/// one result per commit, in order: `Ok` when committed or no longer pending,
/// `Err(WrongType)` when refused. A Redis error means nothing was written.
pub async fn commit_batch<'a>(
    conn: &mut impl ConnectionLike,
    group: &str,
    commits: impl IntoIterator<Item = &'a Commit>,
) -> redis::RedisResult<Vec<Result<(), CommitError>>> {
    let mut call = COMMIT.prepare_invoke();
    call.arg(group);
    for c in commits {
        call.key(&c.stream).arg(&c.id).arg(c.writes.len());
        for w in &c.writes {
            call.key(&w.key).arg(w.kind).arg(w.args.len());
            for a in &w.args {
                call.arg(a.as_slice());
            }
        }
    }
    let replies: Vec<redis::Value> = call.invoke_async(conn).await?;
    Ok(replies.into_iter().map(result).collect())
}

/// Runs one commit on its own; see [`commit_batch`].
pub async fn commit_one(conn: &mut impl ConnectionLike, group: &str, commit: Commit) -> Result<(), CommitError> {
    let mut results = commit_batch(conn, group, [&commit]).await?;
    results.pop().expect("one result per commit")
}

fn result(reply: redis::Value) -> Result<(), CommitError> {
    match reply {
        redis::Value::BulkString(b) => {
            Err(CommitError::WrongType(String::from_utf8_lossy(&b).trim_start_matches("SLUICE_WRONGTYPE ").to_owned()))
        }
        _ => Ok(()),
    }
}

fn xadd(stream: &str, fields: Vec<(String, Vec<u8>)>) -> Write {
    let args = fields.into_iter().flat_map(|(k, v)| [k.into_bytes(), v]).collect();
    Write { kind: "xadd", key: stream.to_owned(), args }
}

fn kv_write(handler: &str, w: KvWrite) -> Write {
    match w {
        KvWrite::Set { key, value, ttl_ms } => {
            let mut args = vec![value];
            if let Some(ms) = ttl_ms {
                args.extend([b"PX".to_vec(), ms.to_string().into_bytes()]);
            }
            Write { kind: "set", key: kv_key(handler, &key), args }
        }
        KvWrite::Delete { key } => Write { kind: "del", key: kv_key(handler, &key), args: vec![] },
    }
}
