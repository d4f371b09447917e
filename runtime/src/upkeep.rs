//! Upkeep for a deployment that runs for months, done by one host at a time
//! (a short lease in Redis, so that N hosts do not do it N times): every few
//! seconds, each stream with a `[streams]` bound is trimmed without losing
//! what a group still needs ([`crate::stream::retention`]), and each stream
//! a handler reads is checked for entries another program removed before
//! the handler's group read them ([`crate::stream::unread`]); every minute,
//! consumers that left their groups are forgotten
//! ([`crate::stream::hygiene`]). Each logs what an operator must know and
//! counts it in metrics.

use crate::config::Config;
use crate::metrics;
use crate::stream::{Lease, Redis, hygiene, retention, unread};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often streams are trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// How often idle consumers are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// How long the upkeep lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a stream held over its bound by the same group, or losing
/// entries before the same group reads them, is warned about.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The upkeep task of one host.
pub struct Upkeep {
    redis: Redis,
    /// The config in force (swapped on reload).
    config: Arc<ArcSwap<Config>>,
    lease: Lease,
    /// This host's consumer name, never forgotten.
    me: String,
    /// When each (stream, group) holding a stream over its bound was last warned about.
    warned: BTreeMap<(String, String), Instant>,
    last_forget: Option<Instant>,
    /// Per (stream, group), entries removed unread that no warning has named
    /// yet, and when one last did.
    unread: BTreeMap<(String, String), (u64, Option<Instant>)>,
    /// The dead-letter streams last said to be spared by a glob.
    spared: Vec<(String, String)>,
}

impl Upkeep {
    /// Upkeep for the streams of `config`, by this host (`me`, its consumer name).
    pub fn new(redis: Redis, config: Arc<ArcSwap<Config>>, me: String) -> Upkeep {
        let lease = Lease::new("sluice:upkeep-lease".into(), me.clone(), LEASE_TTL);
        Upkeep {
            redis,
            config,
            lease,
            me,
            warned: BTreeMap::new(),
            last_forget: None,
            unread: BTreeMap::new(),
            spared: Vec::new(),
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TRIM_EVERY) => {}
                _ = shutdown.cancelled() => {
                    // Another host takes over at once, not when it expires.
                    let _ = self.lease.release(&mut self.redis.conn).await;
                    return;
                }
            }
            match self.lease.hold(&mut self.redis.conn).await {
                Ok(true) => self.round().await,
                Ok(false) => {}
                Err(e) => warn!("upkeep (trimming streams, forgetting idle consumers) cannot take its lease: {e}"),
            }
        }
    }

    /// One round: trim every bounded stream, and now and then forget idle consumers.
    async fn round(&mut self) {
        let config = self.config.load_full();
        let spared = dead_letters_spared(&config);
        if spared != self.spared {
            for (dlq, glob) in &spared {
                info!(stream = %dlq, "dead-letter stream {dlq} is kept whole: [streams.\"{glob}\"] bounds streams, not dead letters; a table naming it (or a glob ending in \":dlq\") bounds it");
            }
            self.spared = spared;
        }
        for (stream, bound) in bounded_streams(&config) {
            self.trim(&stream, &bound).await;
        }
        self.removed_unread(&config).await;
        if self.last_forget.is_none_or(|t| t.elapsed() >= FORGET_EVERY) {
            self.last_forget = Some(Instant::now());
            self.forget(&config).await;
        }
    }

    async fn trim(&mut self, stream: &str, bound: &retention::Retention) {
        match retention::trim(&mut self.redis.conn, stream, bound).await {
            Ok(t) => {
                metrics::stream_trimmed(stream, t.removed, t.length, t.held_back_by.as_deref());
                if let Some(group) = t.held_back_by {
                    let key = (stream.to_owned(), group);
                    if self.warned.get(&key).is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        self.warned.insert(key.clone(), Instant::now());
                        warn!(stream, group = %key.1, length = t.length, "stream {stream} stays over its bound ({}): group {} has not yet read or acknowledged the entries the bound would remove, so they are kept", describe(bound), key.1);
                    }
                }
            }
            Err(e) => warn!(stream, "cannot trim stream {stream}: {e}"),
        }
    }

    /// Counts, warns about and records the entries of each stream a handler
    /// reads that were removed before its group read them. A warning names
    /// what was removed since the last one, at most once a minute per
    /// stream and group; the metric counts at once.
    async fn removed_unread(&mut self, config: &Config) {
        let mut seen = BTreeSet::new();
        for h in &config.handlers {
            for stream in h.read_streams() {
                if !seen.insert((stream.clone(), h.group.clone())) {
                    continue;
                }
                let found = match unread::removed_unread(&mut self.redis.conn, &stream, &h.group).await {
                    Ok(Some(found)) => found,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(stream, group = %h.group, handler = %h.name, "cannot count entries removed before group {} read them: {e}", h.group);
                        continue;
                    }
                };
                metrics::entries_removed_unread(&h.name, &stream, found.new);
                let (untold, warned) = self.unread.entry((stream.clone(), h.group.clone())).or_default();
                *untold += found.new;
                if *untold == 0 || warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
                    continue;
                }
                let now = match &found.first {
                    Some(first) => format!("it now begins at {first}"),
                    None => "it is now empty".to_owned(),
                };
                warn!(stream, group = %h.group, handler = %h.name, removed = *untold, "{} entr(ies) of stream {stream} were removed before group {} read them, by another program (an XADD MAXLEN or XTRIM that does not wait for consumer groups, or an XDEL): they were neither handled nor dead-lettered ({} in all; the group has read up to {}, {now}). A [streams] max_len or max_age_ms bound in the config trims without removing what a group has not read", *untold, h.group, found.total, found.last_read);
                *untold = 0;
                *warned = Some(Instant::now());
            }
        }
    }

    async fn forget(&mut self, config: &Config) {
        let idle = Duration::from_millis(config.forget_consumers_after_ms);
        for h in &config.handlers {
            for stream in h.read_streams() {
                match hygiene::forget_idle(&mut self.redis.conn, &stream, &h.group, &self.me, idle).await {
                    Ok(gone) => {
                        for c in gone {
                            metrics::consumer_forgotten(&h.group);
                            info!(stream, group = %h.group, consumer = %c.name, "forgot consumer {} of group {} on {stream}: idle {} s with nothing pending", c.name, h.group, c.idle.as_secs());
                        }
                    }
                    Err(e) => warn!(stream, group = %h.group, "cannot look for idle consumers: {e}"),
                }
            }
        }
    }
}

/// Every stream `config` knows (those its handlers read, publish to and
/// dead-letter into, and their inboxes) that a `[streams]` table bounds,
/// with its bound. A dead-letter stream counts only when a table names it or
/// a glob ends in `:dlq` (`config/streams.rs`).
pub fn bounded_streams(config: &Config) -> Vec<(String, retention::Retention)> {
    let (mut names, mut dead_letters) = (BTreeSet::new(), BTreeSet::new());
    for h in &config.handlers {
        for s in &h.streams {
            names.insert(s.clone());
            dead_letters.insert(h.dead_letter_stream(s));
        }
        names.insert(h.inbox.clone());
        names.extend(h.publish.iter().cloned());
    }
    // A stream one handler publishes to may be another's dead letters.
    names.retain(|s| !dead_letters.contains(s));
    let streams = names.into_iter().filter_map(|s| config.streams.retention(&s).map(|r| (s, r)));
    let dead_letters =
        dead_letters.into_iter().filter_map(|s| config.streams.dead_letter_retention(&s).map(|r| (s, r)));
    let mut all: Vec<_> = streams.chain(dead_letters).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The dead-letter streams of `config` that a glob would bound were they
/// other streams, with that glob: they are kept whole.
pub fn dead_letters_spared(config: &Config) -> Vec<(String, String)> {
    let mut spared = BTreeMap::new();
    for h in &config.handlers {
        for s in &h.streams {
            let dlq = h.dead_letter_stream(s);
            if let Some(glob) = config.streams.glob_sparing_dead_letters(&dlq) {
                spared.insert(dlq.clone(), glob.to_owned());
            }
        }
    }
    spared.into_iter().collect()
}

/// `bound` in words, for the log.
fn describe(bound: &retention::Retention) -> String {
    let len = bound.max_len.map(|n| format!("max_len {n}"));
    let age = bound.max_age.map(|a| format!("max_age_ms {}", a.as_millis()));
    len.into_iter().chain(age).collect::<Vec<_>>().join(", ")
}
