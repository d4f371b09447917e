//! Reading ranges of a stream (or its latest entries), and copying entries into a handler's inbox
//! (`sluice dlq redrive`, `sluice replay`) or deleting them (`dlq purge`).

use super::conn::Conn;
use super::error::{Context, Error, ErrorKind};
use super::replicas::{Replicas, Waited};
use super::reply;
use crate::event::Entry;
use redis::aio::ConnectionLike;

/// Entries per `XRANGE` page ([`range_page`]).
pub const RANGE_PAGE: usize = 500;

/// Every entry of `stream` from `start` to `end` (ids or `-`/`+`,
/// inclusive), in order, read a page at a time.
pub async fn range(conn: &mut impl ConnectionLike, stream: &str, start: &str, end: &str) -> Result<Vec<Entry>, Error> {
    let mut all = Vec::new();
    let mut from = start.to_owned();
    loop {
        let page = range_page(conn, stream, &from, end).await?;
        let full = page.len() == RANGE_PAGE;
        if let Some(last) = page.last() {
            from = format!("({}", last.id);
        }
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// One page (at most 500) of the entries of `stream` from `start` to `end`
/// (ids, `(id` to leave the first out, or `-`/`+`), in order: fewer than
/// 500 when the range ends there.
pub async fn range_page(
    conn: &mut impl ConnectionLike,
    stream: &str,
    start: &str,
    end: &str,
) -> Result<Vec<Entry>, Error> {
    let value: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(RANGE_PAGE)
        .query_async(conn)
        .await
        .context(|| format!("XRANGE on stream {stream}"))?;
    Ok(reply::entries(&value))
}

/// The last `count` entries of `stream`, newest first.
pub async fn latest(conn: &mut impl ConnectionLike, stream: &str, count: usize) -> Result<Vec<Entry>, Error> {
    let value: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
        .context(|| format!("XREVRANGE on stream {stream}"))?;
    Ok(reply::entries(&value))
}

/// How long the marker of a cross-slot redrive lives: far longer than any
/// redrive that was interrupted between its two steps takes to be run again.
const REDRIVE_MARKER_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Moves entry `id` of `dead_letter` into `inbox` as an entry with `fields`.
/// `None` if the entry was no longer there. In one script on one server, and
/// in a cluster when both streams share a slot; in a cluster where they do not,
/// the copy is added at most once (a marker beside the inbox remembers it)
/// and the dead-letter entry deleted after, once a replica of the inbox's
/// master has the copy (`stream/replicas.rs`), so an interrupted redrive run
/// again neither loses nor doubles it, nor does a failover between the two
/// steps lose it. `replicas` is the cluster's view of which masters have
/// replicas, asked when it is older than its refresh time: keep one for a
/// whole redrive. A copy no replica acknowledged fails the move
/// ([`super::ErrorKind::Unreplicated`]) and keeps the dead letter; `conn`
/// then waited up to a second, so give it a connection of its own where
/// other work shares one.
pub(crate) async fn move_to_inbox(
    conn: &mut Conn,
    replicas: &mut Replicas,
    dead_letter: &str,
    id: &str,
    inbox: &str,
    fields: &[(String, Vec<u8>)],
) -> Result<Option<String>, Error> {
    // (On one server a script may touch any key, whatever its slot.)
    if matches!(conn, Conn::Cluster(_)) && super::slot::of(dead_letter) != super::slot::of(inbox) {
        return move_across_slots(conn, replicas, dead_letter, id, inbox, fields).await;
    }
    static SCRIPT: std::sync::LazyLock<super::script::Script> =
        std::sync::LazyLock::new(|| super::script::Script::new(include_str!("copy.lua")));
    let mut invocation = SCRIPT.key(dead_letter);
    invocation.key(inbox).arg(id);
    for (k, v) in fields {
        invocation.arg(k).arg(v);
    }
    invocation.invoke_async(conn).await.context(|| format!("moving {dead_letter} {id} to {inbox}"))
}

/// [`move_to_inbox`] between two slots of a cluster.
async fn move_across_slots(
    conn: &mut Conn,
    replicas: &mut Replicas,
    dead_letter: &str,
    id: &str,
    inbox: &str,
    fields: &[(String, Vec<u8>)],
) -> Result<Option<String>, Error> {
    static SCRIPT: std::sync::LazyLock<super::script::Script> =
        std::sync::LazyLock::new(|| super::script::Script::new(include_str!("copy_once.lua")));
    if range(conn, dead_letter, id, id).await?.is_empty() {
        return Ok(None);
    }
    let marker = format!("sluice:redriven:{}:{dead_letter}:{id}", super::slot::tag_for(inbox));
    let mut invocation = SCRIPT.key(&marker);
    invocation.key(inbox).arg(REDRIVE_MARKER_TTL_MS);
    for (k, v) in fields {
        invocation.arg(k).arg(v);
    }
    let what = || format!("copying {dead_letter} {id} to {inbox}");
    let slot = super::slot::of(inbox);
    replicas.refresh(conn, &[slot], false).await?;
    let (copy, waited): (String, _) = replicas.write_and_wait(conn, slot, &invocation, what).await?;
    if waited == Waited::NotYet {
        return Err(Error::new(what(), ErrorKind::Unreplicated));
    }
    delete(conn, dead_letter, &[id.to_owned()]).await?;
    Ok(Some(copy))
}

/// Adds entries with `fields` to `inbox`, in one round trip: each one's id,
/// or why Redis refused it (the others are added all the same). An error
/// for the whole call leaves unknown which were added.
pub async fn add_to_inbox(
    conn: &mut impl ConnectionLike,
    inbox: &str,
    copies: &[Vec<(String, Vec<u8>)>],
) -> Result<Vec<Result<String, Error>>, Error> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for fields in copies {
        pipe.cmd("XADD").arg(inbox).arg("*");
        for (k, v) in fields {
            pipe.arg(k).arg(v);
        }
    }
    let what = || format!("XADD of {} entries to {inbox}", copies.len());
    let added: Vec<redis::RedisResult<String>> = pipe.query_async(conn).await.context(what)?;
    Ok(added.into_iter().map(|a| a.context(|| format!("XADD to {inbox}"))).collect())
}

/// Deletes entries `ids` of `stream`; how many were there.
pub async fn delete(conn: &mut impl ConnectionLike, stream: &str, ids: &[String]) -> Result<usize, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XDEL").arg(stream).arg(ids).query_async(conn).await.context(|| format!("XDEL on stream {stream}"))
}
