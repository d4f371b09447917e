//! Bounded streams: `[streams."NAME"]` `max_len` and `max_age_ms`, applied
//! without ever removing an entry that a consumer group on the stream (any
//! group, Sluice's or not) has not read yet or still has pending. Redis 7.0
//! has no trim that respects acknowledgements, so one script (`trim.lua`)
//! finds the groups' floor and applies the bound with `XTRIM MINID` or
//! `XTRIM MAXLEN`, in one atomic step. A group's floor is the earlier of its
//! oldest pending entry and the entry after its last delivered one: a group
//! set back (`XGROUP SETID`, or a replica promoted behind its primary) reads
//! again from there. When a lagging group keeps a stream over its bound, the
//! trim says which group.

use super::error::{Context, Error};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use std::time::Duration;

static TRIM: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(&[super::script::IDS, include_str!("trim.lua")].concat()));

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

/// How many calls of the script one trim makes at most. Each reads at most
/// 20 000 entries to check a `max_len` cut, so that no call holds Redis
/// long; a check that needs more leaves the rest to the next call.
const CALLS: usize = 10;

/// Trims `stream` to `retention`. The floor (the first entry some group on
/// the stream still needs) is found by the script itself, in the same
/// atomic step, and ages are measured by Redis's clock. A long check is
/// spread over several calls (at most 10; the next trim goes on).
pub async fn trim(conn: &mut impl ConnectionLike, stream: &str, retention: &Retention) -> Result<Trimmed, Error> {
    let max_len = retention.max_len.map(|n| n.to_string()).unwrap_or_default();
    let max_age = retention.max_age.map(|a| a.as_millis().to_string()).unwrap_or_default();
    let mut trimmed = Trimmed::default();
    for _ in 0..CALLS {
        let (removed, length, held, group, partial): (u64, u64, u8, String, u8) = TRIM
            .key(stream)
            .arg(&max_len)
            .arg(&max_age)
            .invoke_async(conn)
            .await
            .context(|| format!("trimming stream {stream}"))?;
        trimmed = Trimmed { removed: trimmed.removed + removed, length, held_back_by: (held == 1).then_some(group) };
        if partial == 0 {
            break;
        }
    }
    Ok(trimmed)
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
    }
}
