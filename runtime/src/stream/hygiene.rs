//! Consumer hygiene: a consumer name is left in every group by each host
//! that stops (a restarted host with the default name `hostname-pid` comes
//! back as a new consumer). A live host deletes those that have nothing
//! pending and have been idle past `[host] forget_consumers_after_ms`; one
//! with pending entries is left until they are taken over (after
//! `claim_idle_ms`), and deleted on a later round.

use super::error::{Context, Error};
use super::reply::{items, text};
use redis::Value;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use std::time::Duration;

static FORGET: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(include_str!("forget.lua")));

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Time since it last read or claimed.
    pub idle: Duration,
}

/// The consumers of `group` on `stream` (none if either does not exist).
pub async fn consumers(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<Vec<ConsumerInfo>, Error> {
    let what = || format!("XINFO CONSUMERS on stream {stream} group {group}");
    let reply: Result<Value, Error> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group).query_async(conn).await.context(what);
    let reply = match reply {
        Ok(v) => v,
        Err(e) if e.is_no_such_key() || e.is_no_group() => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(items(&reply)
        .iter()
        .filter_map(|c| {
            let fields = super::info::pairs(c);
            let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
            let number = |k: &str| match get(k) {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            Some(ConsumerInfo {
                name: get("name").and_then(text)?,
                pending: number("pending")?,
                idle: Duration::from_millis(number("idle")?),
            })
        })
        .collect())
}

/// Deletes the consumers of `group` on `stream`, other than `me`, that have
/// nothing pending and have been idle for at least `idle`; returns those
/// deleted. Each is checked again and deleted in one script.
pub async fn forget_idle(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    me: &str,
    idle: Duration,
) -> Result<Vec<ConsumerInfo>, Error> {
    let mut forgotten = Vec::new();
    for c in consumers(conn, stream, group).await? {
        if c.name == me || c.pending > 0 || c.idle < idle {
            continue;
        }
        let deleted: i64 = FORGET
            .key(stream)
            .arg(group)
            .arg(&c.name)
            .arg(idle.as_millis() as u64)
            .invoke_async(conn)
            .await
            .context(|| format!("XGROUP DELCONSUMER of {} on stream {stream} group {group}", c.name))?;
        if deleted == 1 {
            forgotten.push(c);
        }
    }
    Ok(forgotten)
}
