//! Short leases in Redis, so that one host at a time does a job that every
//! host is able to do (relaying an outbox, trimming streams): a key holding
//! the holder's name, with an expiry the holder keeps renewing. A holder
//! that stops (killed, paused, cut off) loses it when it expires, and
//! another host takes over. The jobs guarded this way are safe to run twice
//! for a moment: the lease keeps them from running everywhere all the time.

use super::error::{Context, Error};
use redis::aio::ConnectionLike;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

static TAKE: LazyLock<super::script::Script> = LazyLock::new(|| super::script::Script::new(include_str!("lease.lua")));
static RELEASE: LazyLock<super::script::Script> =
    LazyLock::new(|| super::script::Script::new(include_str!("release.lua")));

/// One lease, as its would-be holder sees it.
#[derive(Debug)]
pub struct Lease {
    /// The key that holds it.
    key: String,
    /// Who this host is (its consumer name).
    holder: String,
    /// How long it lasts without renewal.
    ttl: Duration,
    /// Until when this host knows it holds it (renewed a third of the way in).
    held_until: Option<Instant>,
}

impl Lease {
    /// The lease at `key`, for `holder`, lasting `ttl` after each renewal.
    pub fn new(key: String, holder: String, ttl: Duration) -> Lease {
        Lease { key, holder, ttl, held_until: None }
    }

    /// Whether this host holds the lease now: taken if free, renewed if a
    /// third of its time has passed, asked of Redis only then.
    pub async fn hold(&mut self, conn: &mut impl ConnectionLike) -> Result<bool, Error> {
        let now = Instant::now();
        if self.held_until.is_some_and(|until| now + self.ttl * 2 / 3 < until) {
            return Ok(true);
        }
        let held: i64 = TAKE
            .key(&self.key)
            .arg(&self.holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await
            .context(|| format!("taking the lease {}", self.key))?;
        self.held_until = (held == 1).then_some(now + self.ttl);
        Ok(held == 1)
    }

    /// Gives the lease back if this host holds it, so that another host can
    /// take it at once (on shutdown) rather than when it expires.
    pub async fn release(&mut self, conn: &mut impl ConnectionLike) -> Result<(), Error> {
        self.held_until = None;
        let _: i64 = RELEASE
            .key(&self.key)
            .arg(&self.holder)
            .invoke_async(conn)
            .await
            .context(|| format!("giving back the lease {}", self.key))?;
        Ok(())
    }

    /// Forgets that it was held, so the next [`Lease::hold`] asks Redis.
    pub fn lost(&mut self) {
        self.held_until = None;
    }
}
