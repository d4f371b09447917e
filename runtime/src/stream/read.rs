//! Getting entries to deliver: new ones with `XREADGROUP`, this consumer's
//! own leftovers with `XPENDING` + `XCLAIM`, and abandoned ones from dead
//! consumers with a script that does what `XAUTOCLAIM` does but spares the
//! caller's own entries (takeover.lua). Each comes with its attempt number,
//! which is Redis's delivery count, so it survives restarts.

use super::conn::Conn;
use super::error::{Context, Error};
use super::reply;
use crate::event::Entry;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

/// Entries fetched per `XPENDING` page, or looked at per takeover.
const PAGE: usize = 100;

static TAKE_OVER: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(include_str!("takeover.lua")));

/// One entry to deliver, and which delivery this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream it was read from.
    pub stream: String,
    /// The entry itself.
    pub entry: Entry,
    /// 1 on first delivery; Redis's delivery count.
    pub attempt: u32,
    /// Its ordering key, when its handler orders by key and it has one
    /// ([`super::order`]): bytes, as stored (a field need not be UTF-8).
    pub key: Option<Vec<u8>>,
}

/// A page of pending entries taken to deliver.
#[derive(Debug, Default)]
pub struct Page {
    /// The entries to deliver.
    pub found: Vec<Delivery>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
    /// Ids of entries that were pending but are deleted from the stream (an
    /// `XDEL`, or a trim by another program), before anyone finished them:
    /// Redis drops such an entry from the group when it is claimed, so it is
    /// neither handled nor dead-lettered, and the operator must hear of it.
    pub deleted: Vec<String>,
}

/// A consumer's blocking reader of new entries, on a connection of its own.
pub struct Reader {
    conn: Conn,
    /// The connection's `CLIENT ID`, to interrupt a blocked read; `None` in
    /// a cluster, where a read's connection is one per node (a shutdown then
    /// waits for the block to end).
    pub client_id: Option<i64>,
    group: String,
    consumer: String,
    streams: Vec<String>,
}

impl Reader {
    /// A reader for `consumer` of `group` on `streams`.
    pub async fn new(mut conn: Conn, group: &str, consumer: &str, streams: &[String]) -> Result<Reader, Error> {
        let client_id = match conn {
            Conn::Cluster(_) => None,
            _ => Some(redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await.context(|| "CLIENT ID".into())?),
        };
        Ok(Reader {
            conn,
            client_id,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            streams: streams.to_vec(),
        })
    }

    /// Up to `count` never-delivered entries across all streams, waiting at
    /// most `block` for the first one.
    pub async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<Delivery>, Error> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.consumer);
        cmd.arg("COUNT").arg(count).arg("BLOCK").arg(block.as_millis() as u64);
        cmd.arg("STREAMS").arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(">");
        }
        let what = || format!("XREADGROUP on streams {} group {}", self.streams.join(", "), self.group);
        let value: redis::Value = cmd.query_async(&mut self.conn).await.context(what)?;
        Ok(deliveries(&value))
    }
}

/// The first deliveries of the entries of an `XREADGROUP ... >` reply.
pub(super) fn deliveries(value: &redis::Value) -> Vec<Delivery> {
    reply::read_reply(value)
        .into_iter()
        .flat_map(|(stream, entries)| {
            entries.into_iter().map(move |entry| Delivery { stream: stream.clone(), entry, attempt: 1, key: None })
        })
        .collect()
}

impl Reader {
    /// Waits until one of `after`'s streams (keys of one slot) has an entry
    /// after the id given with it, or `block` passes. Takes nothing: for a
    /// consumer that reads by script ([`super::order`]).
    pub async fn wait_for_new(&mut self, after: &[(String, String)], block: Duration) -> Result<(), Error> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1).arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS");
        cmd.arg(after.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .arg(after.iter().map(|(_, id)| id).collect::<Vec<_>>());
        let what = || format!("XREAD on streams {}", self.streams.join(", "));
        let _: redis::Value = cmd.query_async(&mut self.conn).await.context(what)?;
        Ok(())
    }
}

/// One row of `XPENDING ... [consumer]`: an id and how often it was delivered.
struct PendingRow {
    id: String,
    delivered: u32,
}

async fn pending_rows(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    after: &str,
    end: &str,
    consumer: &str,
    count: usize,
) -> Result<Vec<PendingRow>, Error> {
    let value: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(after)
        .arg(end)
        .arg(count.clamp(1, PAGE))
        .arg(consumer)
        .query_async(conn)
        .await
        .context(|| format!("XPENDING on stream {stream} group {group}"))?;
    let rows = match value {
        redis::Value::Array(rows) => rows,
        _ => vec![],
    };
    Ok(rows.iter().filter_map(pending_row).collect())
}

fn pending_row(v: &redis::Value) -> Option<PendingRow> {
    let redis::Value::Array(cols) = v else {
        return None;
    };
    let id = reply::text(cols.first()?)?;
    let delivered = match cols.get(3)? {
        redis::Value::Int(n) => *n as u32,
        _ => return None,
    };
    Some(PendingRow { id, delivered })
}

/// Takes entries `ids` of `stream` for `consumer` if they have been idle at
/// least `min_idle`; each claim counts as a delivery. Entries deleted
/// meanwhile, or taken by someone else, are left out.
pub async fn claim(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[String],
) -> Result<Vec<Entry>, Error> {
    let value: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(ids)
        .query_async(conn)
        .await
        .context(|| format!("XCLAIM on stream {stream} group {group}"))?;
    Ok(reply::entries(&value))
}

/// Up to `count` entries still pending for `consumer` itself on `stream`
/// (left over by an earlier run under the same name, or read by a reply
/// that was lost) after id `after` (`-` to start), except those `skip`
/// says it is handling already and those delivered less than `min_idle`
/// ago, claimed again as fresh deliveries; the cursor for the next page;
/// and those found deleted from the stream.
pub async fn own_pending(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    (after, count): (&str, usize),
    min_idle: Duration,
    skip: impl Fn(&str) -> bool,
) -> Result<Page, Error> {
    let mut rows = pending_rows(conn, stream, group, after, "+", consumer, count).await?;
    let Some(last) = rows.last() else { return Ok(Page::default()) };
    let next = (rows.len() == count).then(|| format!("({}", last.id));
    rows.retain(|r| !skip(&r.id));
    if rows.is_empty() {
        return Ok(Page { next, ..Page::default() });
    }
    let counts: HashMap<String, u32> = rows.iter().map(|r| (r.id.clone(), r.delivered)).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let entries = claim(conn, stream, group, consumer, min_idle, &ids).await?;
    // An id asked for and not claimed was delivered too recently, or is
    // deleted from the stream (and now dropped from the group by XCLAIM).
    let missing: Vec<&String> = ids.iter().filter(|id| !entries.iter().any(|e| e.id == **id)).collect();
    let deleted = deleted_of(conn, stream, &missing).await?;
    let found = entries
        .into_iter()
        .map(|entry| {
            let attempt = counts.get(&entry.id).copied().unwrap_or(0) + 1;
            Delivery { stream: stream.to_owned(), entry, attempt, key: None }
        })
        .collect();
    Ok(Page { found, next, deleted })
}

/// Those of `ids` that are no longer in `stream`.
async fn deleted_of(conn: &mut impl ConnectionLike, stream: &str, ids: &[&String]) -> Result<Vec<String>, Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XRANGE").arg(stream).arg(*id).arg(*id);
    }
    let found: Vec<redis::Value> =
        pipe.query_async(conn).await.context(|| format!("XRANGE on stream {stream} for entries not claimed"))?;
    Ok(ids.iter().zip(&found).filter(|(_, f)| reply::entries(f).is_empty()).map(|(id, _)| (*id).clone()).collect())
}

/// Takes over up to `count` entries of `stream` that have sat with another
/// consumer for at least `min_idle` (their consumer is presumed dead),
/// looking at up to `PAGE` (100) pending entries from `cursor` (`0-0` to
/// start). Returns them with their attempt numbers, the cursor for the next
/// page (`None` when the scan is complete), and the pending entries it found
/// deleted from the stream. Unlike `XAUTOCLAIM`, it leaves `consumer`'s own
/// entries alone (takeover.lua says why).
pub async fn take_over(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> Result<Page, Error> {
    let what = || format!("the takeover script on stream {stream} group {group}");
    let value: redis::Value = TAKE_OVER
        .key(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(cursor)
        .arg(count.clamp(1, PAGE))
        .arg(PAGE)
        .invoke_async(conn)
        .await
        .context(what)?;
    let [next, claimed, attempts, deleted] = reply::items(&value) else {
        return Err(Error::reply(what(), &value));
    };
    let (claimed, attempts) = (reply::items(claimed), reply::items(attempts));
    if claimed.len() != attempts.len() {
        return Err(Error::reply(what(), &value));
    }
    // (Paired before any entry is parsed, so that one that would not parse
    // cannot shift the attempt numbers of those after it.)
    let mut found = Vec::with_capacity(claimed.len());
    for (entry, attempt) in claimed.iter().zip(attempts) {
        let redis::Value::Int(attempt) = attempt else { return Err(Error::reply(what(), &value)) };
        let attempt = u32::try_from(*attempt).unwrap_or(u32::MAX);
        if let Some(entry) = reply::entry(entry) {
            found.push(Delivery { stream: stream.to_owned(), entry, attempt, key: None });
        }
    }
    Ok(Page { found, next: reply::text(next), deleted: reply::items(deleted).iter().filter_map(reply::text).collect() })
}

/// Makes the blocked read of client `client_id` return at once, as if its
/// block had timed out.
pub async fn unblock(conn: &mut impl ConnectionLike, client_id: i64) -> Result<(), Error> {
    redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(client_id)
        .exec_async(conn)
        .await
        .context(|| format!("CLIENT UNBLOCK {client_id}"))
}
