//! Entries removed from a stream before a consumer group read them. Sluice's
//! own trim never removes them ([`super::retention`]), but another program
//! can: a producer's `XADD MAXLEN` (LeanMQ's and Dapr's producers trim that
//! way), an `XTRIM`, an `XDEL`. Redis then skips them without a word, and
//! the events are neither handled nor dead-lettered. Redis counts the
//! entries ever added to a stream and those a group has read, so one script
//! (`unread.lua`) finds how many were removed unread, and records the count
//! in the stream's slot (`sluice:removed-unread:{tag}:STREAM`, one field
//! per group), so that each removal is told once, by whichever host asks.

use super::error::{Context, Error};
use super::slot;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

static UNREAD: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(&[super::script::IDS, include_str!("unread.lua")].concat()));

/// How far behind its stream a group may be for its entries to be counted
/// (the script reads that many entries at most). A group further behind is
/// counted once it has caught up, or has fallen behind the stream's first
/// entry.
pub const MOST_COUNTED: u64 = 1000;

/// Entries of a stream removed before a group read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedUnread {
    /// Removed since the last count recorded (by any host).
    pub new: u64,
    /// Removed in all, as far as Redis can tell.
    pub total: u64,
    /// The last entry the group has read.
    pub last_read: String,
    /// The stream's first entry now, if it has any.
    pub first: Option<String>,
}

/// The record of what was told for `stream`, in its slot.
pub fn record_key(stream: &str) -> String {
    format!("sluice:removed-unread:{}:{stream}", slot::tag_for(stream))
}

/// The entries of `stream` last recorded as removed before `group` read
/// them (the upkeep counts every 5 s; 0 before any count).
pub async fn recorded(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<u64, Error> {
    let n: Option<u64> = redis::cmd("HGET")
        .arg(record_key(stream))
        .arg(group)
        .query_async(conn)
        .await
        .context(|| format!("HGET of the entries of stream {stream} removed before group {group} read them"))?;
    Ok(n.unwrap_or(0))
}

/// The entries of `stream` removed before `group` read them, or `None` when
/// Redis cannot tell now: the stream or the group does not exist, Redis has
/// lost the group's count of entries read (after an `XDEL` of an entry it
/// had not read, or a set-back), or the group is more than
/// [`MOST_COUNTED`] entries behind and has read past the stream's first
/// entry.
pub async fn removed_unread(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Option<RemovedUnread>, Error> {
    let (counted, new, total, last_read, first): (u8, u64, u64, String, String) = UNREAD
        .key(stream)
        .key(record_key(stream))
        .arg(group)
        .arg(MOST_COUNTED)
        .invoke_async(conn)
        .await
        .context(|| format!("counting entries of stream {stream} removed before group {group} read them"))?;
    Ok((counted == 1).then(|| RemovedUnread { new, total, last_read, first: (!first.is_empty()).then_some(first) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script writes the record with the stream's own entries, so in a
    /// Redis Cluster both must be in one slot, whatever the stream's name.
    #[test]
    fn the_record_is_in_the_streams_slot() {
        for stream in ["orders", "{shop}:orders", "a{}b", "x{y", "sluice:inbox:h"] {
            assert_eq!(slot::of(&record_key(stream)), slot::of(stream), "{stream}");
        }
    }
}
