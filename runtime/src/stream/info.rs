//! How far a consumer group has got: `XINFO GROUPS`, `XPENDING`, `XLEN`,
//! for `sluice status` and the metrics, and after a commit's rare outcomes
//! ([`entry_state`]).

use super::error::{Context, Error};
use super::reply::{items, text};
use redis::Value;
use redis::aio::ConnectionLike;

/// One group on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries not yet delivered to the group (`None` when Redis cannot tell,
    /// e.g. after entries were deleted), as Redis counts them: while it
    /// counts the group's reads ([`GroupInfo::entries_read`]), this includes
    /// entries removed before the group read them, which will never be
    /// delivered ([`super::unread`]).
    pub lag: Option<u64>,
    /// Entries the group has read, as Redis counts them (`None` when it
    /// cannot tell).
    pub entries_read: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Consumers known to the group.
    pub consumers: u64,
    /// The id of the oldest pending entry.
    pub oldest_pending: Option<String>,
}

/// The `XINFO GROUPS` reply of `stream`, or `None` when it does not exist.
pub(super) async fn groups(conn: &mut impl ConnectionLike, stream: &str) -> Result<Option<Value>, Error> {
    let groups: Result<Value, Error> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .context(|| format!("XINFO GROUPS on stream {stream}"));
    match groups {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_no_such_key() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `group`'s fields in `stream`'s `XINFO GROUPS` reply, or `None` when
/// either does not exist.
async fn group_fields(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Option<Vec<(String, Value)>>, Error> {
    let Some(groups) = groups(conn, stream).await? else { return Ok(None) };
    Ok(items(&groups).iter().map(pairs).find(|f| get(f, "name").and_then(text).as_deref() == Some(group)))
}

/// `group` on `stream`, or `None` when either does not exist yet.
pub async fn group_info(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<Option<GroupInfo>, Error> {
    let Some(fields) = group_fields(conn, stream, group).await? else { return Ok(None) };
    let number = |k: &str| match get(&fields, k) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let oldest = oldest_pending(conn, stream, group).await?;
    Ok(Some(GroupInfo {
        lag: number("lag"),
        entries_read: number("entries-read"),
        pending: number("pending").unwrap_or(0),
        consumers: number("consumers").unwrap_or(0),
        oldest_pending: oldest,
    }))
}

/// Where an entry stands in its consumer group, as Redis shows it now
/// ([`entry_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// The group, or its stream, no longer exists: deleted, or lost by
    /// Redis (a restart without persistence, a failover to a replica it had
    /// not reached).
    GroupMissing,
    /// The group has not delivered it (yet).
    NotDelivered,
    /// Delivered, and pending with some consumer.
    Pending,
    /// Delivered, and acknowledged.
    Acknowledged,
}

/// Where entry `id` of `stream` stands in `group` now. Asked only after a
/// commit's rare outcomes (an entry no longer pending, a missing group),
/// for what the host does next and tells the operator: an entry a commit
/// found no longer pending that is not delivered, or pending, again means
/// the group was made again or set back (`XGROUP CREATE` or `SETID`)
/// meanwhile, since nothing else delivers an acknowledged entry again.
pub async fn entry_state(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    id: &str,
) -> Result<EntryState, Error> {
    let Some(fields) = group_fields(conn, stream, group).await? else { return Ok(EntryState::GroupMissing) };
    let last = get(&fields, "last-delivered-id").and_then(text).unwrap_or_default();
    if super::retention::before(&last, id) {
        return Ok(EntryState::NotDelivered);
    }
    let pending: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(id)
        .arg(id)
        .arg(1)
        .query_async(conn)
        .await
        .context(|| format!("XPENDING of {id} on stream {stream} group {group}"))?;
    Ok(match items(&pending).is_empty() {
        true => EntryState::Acknowledged,
        false => EntryState::Pending,
    })
}

/// The number of entries in `stream` (0 if it does not exist).
pub async fn length(conn: &mut impl ConnectionLike, stream: &str) -> Result<u64, Error> {
    redis::cmd("XLEN").arg(stream).query_async(conn).await.context(|| format!("XLEN on stream {stream}"))
}

/// A RESP3 map or a RESP2 flat `[k, v, k, v]` array, as pairs.
pub(super) fn pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v.clone()))).collect(),
        other => items(other).chunks_exact(2).filter_map(|kv| Some((text(&kv[0])?, kv[1].clone()))).collect(),
    }
}

fn get<'a>(fields: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The id of `group`'s oldest pending entry on `stream`.
pub(super) async fn oldest_pending(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Option<String>, Error> {
    let summary: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .context(|| format!("XPENDING on stream {stream} group {group}"))?;
    Ok(items(&summary).get(1).and_then(text))
}
