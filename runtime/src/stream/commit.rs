//! The transactions that finish a delivery. Each is one `MULTI`/`EXEC`, so
//! the acknowledgement and what it depends on (publishes, the dead-letter
//! copy) happen together or not at all.

use crate::event::{self, DeadLetterInfo, Entry};
use crate::wasm::{Effects, KvWrite, kv_key};
use redis::aio::ConnectionLike;

/// Acknowledges `entry` and applies `effects` (publishes, key-value
/// writes), atomically.
pub async fn ack(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    entry: &Entry,
    handler: &str,
    effects: &Effects,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for p in &effects.publishes {
        xadd(&mut pipe, &p.stream, &event::published_fields(p, handler, entry));
    }
    for w in &effects.kv {
        kv_write(&mut pipe, handler, w);
    }
    pipe.cmd("XACK").arg(stream).arg(group).arg(&entry.id).ignore();
    pipe.query_async(conn).await
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
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    xadd(&mut pipe, dead_letter_stream, &event::dead_letter_fields(entry, info));
    pipe.cmd("XACK").arg(info.origin_stream).arg(group).arg(&entry.id).ignore();
    pipe.query_async(conn).await
}

fn kv_write(pipe: &mut redis::Pipeline, handler: &str, write: &KvWrite) {
    match write {
        KvWrite::Set { key, value, ttl_ms } => {
            let cmd = pipe.cmd("SET").arg(kv_key(handler, key)).arg(value.as_slice());
            if let Some(ms) = ttl_ms {
                cmd.arg("PX").arg(*ms);
            }
            cmd.ignore();
        }
        KvWrite::Delete { key } => {
            pipe.cmd("DEL").arg(kv_key(handler, key)).ignore();
        }
    }
}

fn xadd(pipe: &mut redis::Pipeline, stream: &str, fields: &[(String, Vec<u8>)]) {
    let cmd = pipe.cmd("XADD").arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v.as_slice());
    }
    cmd.ignore();
}
