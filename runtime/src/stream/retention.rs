//! Bounded streams: `[streams."NAME"]` `max_len` and `max_age_ms`, applied
//! without ever removing an entry that a consumer group on the stream (any
//! group, Sluice's or not) has not read yet or still has pending. Redis 7.0
//! has no trim that respects acknowledgements, so the bound is computed here
//! and applied with `XTRIM MINID` or `XTRIM MAXLEN` in one script
//! (`trim.lua`) that checks the groups' floor first. When a lagging group
//! keeps a stream over its bound, the trim says which group.

use super::error::{Context, Error};
use super::reply::{items, text};
use redis::Value;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use std::time::Duration;

static TRIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("trim.lua")));

/// How much of a stream to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// At most this many entries.
    pub max_len: Option<u64>,
    /// None older than this.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Whether it bounds anything.
    pub fn is_bounded(&self) -> bool {
        self.max_len.is_some() || self.max_age.is_some()
    }
}

/// What one trim did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries removed.
    pub removed: u64,
    /// Entries left.
    pub length: u64,
    /// When the stream stays over its bound because a group has not read or
    /// acknowledged what the bound would remove: that group.
    pub held_back_by: Option<String>,
}

/// The floor a stream can be cut to: every entry before it has been read
/// and acknowledged by every group. `None` when no group reads the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Floor {
    /// The first entry id some group still needs (`XTRIM MINID` keeps it).
    id: String,
    /// That group.
    group: String,
    /// The most entries one group still needs at least (its lag plus its
    /// pending entries): a stream cannot be cut below this many.
    needed: u64,
}

/// Trims `stream` to `retention`, `now_ms` being the current Unix time.
pub async fn trim(
    conn: &mut impl ConnectionLike,
    stream: &str,
    retention: &Retention,
    now_ms: u64,
) -> Result<Trimmed, Error> {
    let Some(floor) = floor(conn, stream).await? else { return Ok(Trimmed::default()) };
    let age_cut = retention.max_age.map(|age| format!("{}-0", now_ms.saturating_sub(age.as_millis() as u64)));
    let max_len = retention.max_len.map(|n| n.to_string()).unwrap_or_default();
    let (floor_id, group, needed) = match &floor {
        Floor { id, group, needed } if !group.is_empty() => (id.as_str(), group.clone(), *needed),
        _ => ("+", String::new(), 0),
    };
    // A group that still needs more than the bound keeps the stream over
    // it: skip counting what lies past the floor (reading up to max_len
    // entries) and cut at the floor.
    let beyond = retention.max_len.is_some_and(|max| needed > max);
    let reply: Vec<u64> = TRIM
        .key(stream)
        .arg(floor_id)
        .arg(max_len)
        .arg(age_cut.unwrap_or_default())
        .arg(u8::from(beyond))
        .invoke_async(conn)
        .await
        .context(|| format!("trimming stream {stream}"))?;
    let [removed, length, held] = reply[..] else {
        return Err(Error::reply(format!("trimming stream {stream}"), &Value::Nil));
    };
    Ok(Trimmed { removed, length, held_back_by: (held == 1).then_some(group) })
}

/// The floor of `stream` over all its groups; `Some` with an empty group
/// when the stream exists but no group reads it, `None` when it does not exist.
async fn floor(conn: &mut impl ConnectionLike, stream: &str) -> Result<Option<Floor>, Error> {
    let Some(groups) = super::info::groups(conn, stream).await? else { return Ok(None) };
    let mut lowest: Option<Floor> = None;
    let mut needed = 0;
    for g in items(&groups) {
        let fields = super::info::pairs(g);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let Some(name) = get("name").and_then(text) else { continue };
        let number = |k: &str| match get(k) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let pending = number("pending").unwrap_or(0);
        let last = get("last-delivered-id").and_then(text).unwrap_or_else(|| "0-0".into());
        // Unknown lag (after deletions): assume the group needs everything.
        needed = needed.max(number("lag").unwrap_or(u64::MAX).saturating_add(pending));
        let id = match pending {
            0 => next_id(&last),
            _ => super::info::oldest_pending(conn, stream, &name).await?.unwrap_or_else(|| next_id(&last)),
        };
        if lowest.as_ref().is_none_or(|f| before(&id, &f.id)) {
            lowest = Some(Floor { id, group: name, needed: 0 });
        }
    }
    let mut floor = lowest.unwrap_or(Floor { id: String::new(), group: String::new(), needed: 0 });
    floor.needed = needed;
    Ok(Some(floor))
}

/// The smallest id after `id` (`ms-seq`): what `XTRIM MINID` must keep for
/// every entry up to `id` to go.
fn next_id(id: &str) -> String {
    match id.split_once('-').and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))) {
        Some((ms, seq)) => format!("{ms}-{}", seq + 1),
        None => "0-1".into(),
    }
}

/// Whether stream id `a` comes before `b`.
pub(super) fn before(a: &str, b: &str) -> bool {
    let parse =
        |id: &str| id.split_once('-').and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)));
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_numerically() {
        assert!(before("9-5", "10-0"));
        assert!(before("10-0", "10-1"));
        assert!(!before("10-1", "10-1"));
        assert_eq!(next_id("1700000000000-4"), "1700000000000-5");
    }
}
