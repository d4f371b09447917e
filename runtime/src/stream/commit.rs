//! The transaction that finishes a delivery: a Lua script (`commit.lua`)
//! that writes what the delivery produced (publishes, key-value writes, or
//! the dead-letter copy) and acknowledges the entry, all or nothing.

use crate::event::{self, DeadLetterInfo, Entry};
use crate::wasm::{Effects, KvWrite, kv_key};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("commit.lua")));

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A target key holds something other than a stream: nothing was
    /// written and the entry is still pending. Trying again will not help
    /// until someone fixes the key.
    #[error("{0}")]
    WrongType(String),
    /// Redis could not be reached or failed; nothing was written.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// One write of a commit.
struct Write<'a> {
    kind: &'static str,
    key: String,
    args: Vec<&'a [u8]>,
}

/// Acknowledges `entry` and applies `effects` (publishes, key-value
/// writes), atomically.
pub async fn ack(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    entry: &Entry,
    handler: &str,
    effects: &Effects,
) -> Result<(), CommitError> {
    let published: Vec<_> = effects.publishes.iter().map(|p| (p, event::published_fields(p, handler, entry))).collect();
    let mut writes: Vec<Write> = published.iter().map(|(p, fields)| xadd(&p.stream, fields)).collect();
    let ttls: Vec<String> = effects.kv.iter().map(ttl_arg).collect();
    writes.extend(effects.kv.iter().zip(&ttls).map(|(w, ttl)| kv_write(handler, w, ttl)));
    run(conn, stream, group, &entry.id, &writes).await
}

/// Acknowledges entries the handler does not want (their type does not match
/// its `events` globs), without running it.
pub async fn ack_unhandled(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    ids: &[String],
) -> redis::RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK").arg(stream).arg(group).arg(ids).exec_async(conn).await
}

/// Copies `entry` to `dead_letter_stream` with the reason, and acknowledges
/// it, atomically.
pub async fn dead_letter(
    conn: &mut impl ConnectionLike,
    group: &str,
    dead_letter_stream: &str,
    entry: &Entry,
    info: &DeadLetterInfo<'_>,
) -> Result<(), CommitError> {
    let fields = event::dead_letter_fields(entry, info);
    run(conn, info.origin_stream, group, &entry.id, &[xadd(dead_letter_stream, &fields)]).await
}

async fn run(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    id: &str,
    writes: &[Write<'_>],
) -> Result<(), CommitError> {
    let mut call = COMMIT.prepare_invoke();
    call.key(stream).arg(group).arg(id);
    for w in writes {
        call.key(&w.key).arg(w.kind).arg(w.args.len());
        for a in &w.args {
            call.arg(*a);
        }
    }
    match call.invoke_async::<i64>(conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("SLUICE_WRONGTYPE") => {
            Err(CommitError::WrongType(e.detail().unwrap_or("a target is not a stream").to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

fn xadd<'a>(stream: &str, fields: &'a [(String, Vec<u8>)]) -> Write<'a> {
    let args = fields.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_slice()]).collect();
    Write { kind: "xadd", key: stream.to_owned(), args }
}

fn ttl_arg(w: &KvWrite) -> String {
    match w {
        KvWrite::Set { ttl_ms: Some(ms), .. } => ms.to_string(),
        _ => String::new(),
    }
}

fn kv_write<'a>(handler: &str, w: &'a KvWrite, ttl: &'a str) -> Write<'a> {
    match w {
        KvWrite::Set { key, value, ttl_ms } => {
            let mut args = vec![value.as_slice()];
            if ttl_ms.is_some() {
                args.extend([b"PX".as_slice(), ttl.as_bytes()]);
            }
            Write { kind: "set", key: kv_key(handler, key), args }
        }
        KvWrite::Delete { key } => Write { kind: "del", key: kv_key(handler, key), args: vec![] },
    }
}
