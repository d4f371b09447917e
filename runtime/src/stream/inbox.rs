//! Reading ranges of a stream, and copying entries into a handler's inbox
//! (`sluice dlq redrive`, `sluice replay`) or deleting them (`dlq purge`).

use super::error::{Context, Error};
use super::reply;
use crate::event::Entry;
use redis::aio::ConnectionLike;

/// Entries per `XRANGE` page.
const PAGE: usize = 500;

/// Every entry of `stream` from `start` to `end` (ids or `-`/`+`,
/// inclusive), in order, read a page at a time.
pub async fn range(conn: &mut impl ConnectionLike, stream: &str, start: &str, end: &str) -> Result<Vec<Entry>, Error> {
    let mut all = Vec::new();
    let mut from = start.to_owned();
    loop {
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&from)
            .arg(end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await
            .context(|| format!("XRANGE on stream {stream}"))?;
        let page = reply::entries(&value);
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            from = format!("({}", last.id);
        }
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// Moves entry `id` of `dead_letter` into `inbox` as an entry with `fields`,
/// in one script. `None` if the entry was no longer there.
pub async fn move_to_inbox(
    conn: &mut impl ConnectionLike,
    dead_letter: &str,
    id: &str,
    inbox: &str,
    fields: &[(String, Vec<u8>)],
) -> Result<Option<String>, Error> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(include_str!("copy.lua")));
    let mut invocation = SCRIPT.key(dead_letter);
    invocation.key(inbox).arg(id);
    for (k, v) in fields {
        invocation.arg(k).arg(v);
    }
    invocation.invoke_async(conn).await.context(|| format!("moving {dead_letter} {id} to {inbox}"))
}

/// Adds entries with `fields` to `inbox`, in one round trip; their ids.
pub async fn add_to_inbox(
    conn: &mut impl ConnectionLike,
    inbox: &str,
    copies: &[Vec<(String, Vec<u8>)>],
) -> Result<Vec<String>, Error> {
    let mut pipe = redis::pipe();
    for fields in copies {
        pipe.cmd("XADD").arg(inbox).arg("*");
        for (k, v) in fields {
            pipe.arg(k).arg(v);
        }
    }
    pipe.query_async(conn).await.context(|| format!("XADD of {} entries to {inbox}", copies.len()))
}

/// Deletes entries `ids` of `stream`; how many were there.
pub async fn delete(conn: &mut impl ConnectionLike, stream: &str, ids: &[String]) -> Result<usize, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XDEL").arg(stream).arg(ids).query_async(conn).await.context(|| format!("XDEL on stream {stream}"))
}
