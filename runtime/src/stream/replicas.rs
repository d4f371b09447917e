//! Waiting until a replica has a write, where the write's landing lets its
//! only other copy go. In a Redis Cluster the relay ([`super::relay`])
//! deletes an outbox entry once its write is in the target's slot, on
//! another master, and a redrive across slots ([`super::move_to_inbox`])
//! deletes a dead letter once its copy is in the inbox. Replication is
//! asynchronous: a master that fails over before a replica has the write
//! loses it, and with the first copy gone nothing would write it again. So
//! the writer sends its script with a request that the master wait
//! (`WAIT 1`, up to [`WAIT_TIMEOUT`]) until a replica has acknowledged
//! what was written there, both in one round trip on one connection
//! ([`Replicas::write_and_wait`]), and keeps the first copy of a write no
//! replica has yet.
//!
//! Which masters have replicas comes from the cluster's view (`CLUSTER
//! NODES`, leaving out the nodes the cluster has marked failed), not from
//! the replicas a master has connected: a replica whose link is down (cut,
//! or resynchronising) is still one a failover can promote. (`CLUSTER
//! SLOTS` would not do: it leaves out a replica that has not yet told the
//! others of any data, as in a cluster just made.) The view is asked again
//! every [`REFRESH`], every [`REFRESH_NONE`] while it shows a target's
//! master without a replica, and after a wait falls short, so a replica
//! that died stops being waited for once the cluster marks it failed (after
//! `cluster-node-timeout`).
//!
//! On one server there is nothing to wait for: a commit there writes
//! everything in one script, and no relay runs.

use super::conn::Conn;
use super::error::{Context, Error};
use super::script::{self, Invocation};
use redis::{FromRedisValue, Value};
use std::time::{Duration, Instant};

/// How long a master is asked to wait for a replica's acknowledgement.
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the cluster's view of which masters have replicas is kept.
const REFRESH: Duration = Duration::from_secs(10);
/// How long a view in which a master has no replica is trusted: a write
/// to it is not waited for, so that view is asked again sooner (a replica
/// just added, or a node that has not yet heard of it).
const REFRESH_NONE: Duration = Duration::from_secs(1);

/// The cluster's view of its replicas: for each range of slots (first and
/// last, inclusive), how many replicas its master has.
#[derive(Debug, Default)]
pub(crate) struct Replicas {
    ranges: Vec<(u16, u16, usize)>,
    asked: Option<Instant>,
}

/// What a wait for a replica came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// A replica has acknowledged every write the connection sent the master.
    Replicated,
    /// The master has no replica in the cluster's view: nothing to wait for.
    NoReplica,
    /// No replica acknowledged within [`WAIT_TIMEOUT`].
    NotYet,
}

impl Replicas {
    /// Asks the cluster which masters have replicas, if the view is older
    /// than [`REFRESH`] (than [`REFRESH_NONE`] when the master of one of
    /// `slots` has none in it), or `again`. Nothing on one server.
    pub(crate) async fn refresh(&mut self, conn: &mut Conn, slots: &[u16], again: bool) -> Result<(), Error> {
        if !matches!(conn, Conn::Cluster(_)) || !(again || self.stale(slots)) {
            return Ok(());
        }
        let what = || "CLUSTER NODES, to learn which masters have replicas".to_owned();
        let reply: Value = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await.context(what)?;
        let nodes: Option<String> = redis::from_redis_value_ref(&reply).ok();
        self.ranges = nodes.as_deref().and_then(parse).ok_or_else(|| Error::reply(what(), &reply))?;
        self.asked = Some(Instant::now());
        Ok(())
    }

    /// Whether the view is older than [`REFRESH`], or than [`REFRESH_NONE`]
    /// when the master of one of `slots` has no replica in it (or it was
    /// never asked).
    fn stale(&self, slots: &[u16]) -> bool {
        let keep = match slots.iter().any(|s| self.of(*s) == 0) {
            true => REFRESH_NONE,
            false => REFRESH,
        };
        self.asked.is_none_or(|t| t.elapsed() >= keep)
    }

    /// How many replicas the master serving `slot` has, as last asked.
    pub(crate) fn of(&self, slot: u16) -> usize {
        self.ranges.iter().find(|(first, last, _)| (*first..=*last).contains(&slot)).map_or(0, |r| r.2)
    }

    /// Runs `call`, a script that writes to keys in `slot`, and waits up
    /// to [`WAIT_TIMEOUT`] until a replica of the slot's master has
    /// everything written there before it and by it. The `WAIT` goes right
    /// behind the script, in the same round trip on the same connection:
    /// Redis counts for a `WAIT` what the connection it comes on has done
    /// (the replication offset as of its last command, even one that wrote
    /// nothing, such as a script that finds its writes already made), so a
    /// `WAIT` sent on its own may reach a connection made since the script
    /// (redis-rs replaces one that failed), which has done nothing, and
    /// pass at once. A connection that fails under the pair fails both.
    /// The script's reply, as `T`, with what the wait came to; an error
    /// reply to either is an error for `what`.
    pub(crate) async fn write_and_wait<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        slot: u16,
        call: &Invocation<'_>,
        what: impl Fn() -> String,
    ) -> Result<(T, Waited), Error> {
        if self.of(slot) == 0 {
            return Ok((call.invoke_async(conn).await.context(what)?, Waited::NoReplica));
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(WAIT_TIMEOUT.as_millis() as u64);
        let mut by_body = false;
        loop {
            let mut pipe = redis::pipe();
            pipe.add_command(if by_body { call.by_body() } else { call.cmd() }).add_command(wait.clone());
            let replies = conn.at_master_of(slot, &pipe).await.context(&what)?;
            let [written, acknowledged]: [Value; 2] =
                replies.try_into().map_err(|r: Vec<Value>| Error::reply(what(), &Value::Array(r)))?;
            // Where the master does not have the script (a restart, a
            // failover), the pair is sent again with its body; the `WAIT`
            // that came with the refusal counts for nothing.
            let written = match written.extract_error() {
                Err(e) if !by_body && script::is_no_script(&e) => {
                    by_body = true;
                    continue;
                }
                written => {
                    let written = written.context(&what)?;
                    redis::from_redis_value_ref(&written).map_err(|_| Error::reply(what(), &written))?
                }
            };
            let what_wait = || format!("WAIT at the master of slot {slot}, after {}", what());
            return match acknowledged.extract_error().context(what_wait)? {
                Value::Int(n) if n >= 1 => Ok((written, Waited::Replicated)),
                Value::Int(_) => Ok((written, Waited::NotYet)),
                other => Err(Error::reply(what_wait(), &other)),
            };
        }
    }
}

/// The slot ranges of a `CLUSTER NODES` reply, each with how many replicas
/// its master has that the cluster has not marked failed. A line is a
/// node's id, address, flags, its master's id (`-` for a master), four
/// more fields, then the slots it serves (`first-last` or one slot; `[…]`
/// for a slot being moved, left out).
fn parse(nodes: &str) -> Option<Vec<(u16, u16, usize)>> {
    let lines: Vec<Vec<&str>> =
        nodes.lines().map(|l| l.split_whitespace().collect()).filter(|p: &Vec<&str>| !p.is_empty()).collect();
    let usable = |parts: &[&str]| {
        parts.get(2).is_some_and(|flags| !flags.split(',').any(|f| matches!(f, "fail" | "handshake" | "noaddr")))
    };
    let mut ranges = vec![];
    for master in &lines {
        if master.len() < 8 || !usable(master) || master[3] != "-" {
            continue;
        }
        let replicas = lines.iter().filter(|r| r.get(3) == Some(&master[0]) && usable(r)).count();
        for slots in master[8..].iter().filter(|s| !s.starts_with('[')) {
            let (first, last) = slots.split_once('-').unwrap_or((slots, slots));
            ranges.push((first.parse().ok()?, last.parse().ok()?, replicas));
        }
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Master `a` has a replica, `b` has one the cluster marked failed,
    /// `c` has two (one possibly failing, still counted) and is moving a
    /// slot; `d` failed, and its slots went to `c`.
    const NODES: &str = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16382 [16383->-a]
a2 127.0.0.1:7003@17003 slave a 0 0 1 connected
b2 127.0.0.1:7004@17004 slave,fail b 0 0 2 disconnected
c2 127.0.0.1:7005@17005 slave c 0 0 3 connected
c3 127.0.0.1:7006@17006 slave,fail? c 0 0 3 connected
d 127.0.0.1:7007@17007 master,fail - 0 0 4 disconnected
";

    #[test]
    fn each_range_counts_its_masters_replicas_not_marked_failed() {
        let replicas = Replicas { ranges: parse(NODES).unwrap(), asked: Some(Instant::now()) };
        assert_eq!([0, 5460, 5461, 10922, 10923, 16382].map(|s| replicas.of(s)), [1, 1, 0, 0, 2, 2]);
        assert_eq!(replicas.of(16383), 0, "a slot being moved is left out");
        assert_eq!(Replicas::default().of(0), 0, "one server: none");
        assert_eq!(parse("a 127.0.0.1:7000@17000 master - 0 0 1 connected x-y"), None, "slots that are not numbers");
    }

    #[test]
    fn a_view_in_which_a_target_has_no_replica_is_asked_again_sooner() {
        let asked = |ago: Duration| Replicas { ranges: parse(NODES).unwrap(), asked: Instant::now().checked_sub(ago) };
        // Slot 0's master has a replica in the view, slot 5461's has none
        // (only a failed one).
        assert!(Replicas::default().stale(&[0]), "never asked");
        assert!(!asked(Duration::ZERO).stale(&[0, 5461]), "just asked");
        let later = asked(REFRESH_NONE + Duration::from_millis(100));
        assert!(!later.stale(&[0]), "kept for {REFRESH:?} where every target's master has a replica");
        assert!(later.stale(&[0, 5461]), "kept for {REFRESH_NONE:?} where one has none");
        assert!(asked(REFRESH + Duration::from_millis(100)).stale(&[0]), "kept no longer than {REFRESH:?}");
    }
}
