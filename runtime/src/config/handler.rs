//! A handler binding as the host uses it: every default applied, globs compiled.

use super::model::Isolation;
use crate::limits::Limits;
use crate::retry::RetryPolicy;
use crate::schema::Schemas;
use globset::GlobSet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One `[handlers.NAME]` table, resolved.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The table's name; also the default consumer group and the `source` of
    /// everything this handler publishes.
    pub name: String,
    /// The plugin file, resolved against the plugins folder.
    pub plugin: PathBuf,
    /// Streams this handler consumes.
    pub streams: Vec<String>,
    /// The event-type globs as written (for display).
    pub events: Vec<String>,
    /// `events`, compiled.
    pub event_filter: GlobSet,
    /// Streams this handler may publish to.
    pub publish: Vec<String>,
    /// The consumer group this handler reads through, on every stream.
    pub group: String,
    /// One dead-letter stream for all streams, or `None` for `<stream>:dlq`.
    pub dead_letter: Option<String>,
    /// Its inbox: the stream `sluice dlq redrive` and `sluice replay` put
    /// events in for it alone ([`crate::dead_letter::inbox`]).
    pub inbox: String,
    /// What its key-value keys start with ([`crate::wasm::kv_prefix`]).
    pub kv_prefix: String,
    /// Whether Redis is a cluster: its default dead-letter streams are then
    /// named to share their stream's slot.
    pub cluster: bool,
    /// What each delivery runs under.
    pub limits: Limits,
    /// How often a failed event is delivered again, and when.
    pub retry: RetryPolicy,
    /// Hosts it may call over HTTP (`host` or `host:port`); empty: none.
    pub http: Vec<String>,
    /// `[handlers.NAME.config]`, with `${ENV}` expanded: what `config.get` returns.
    pub config: BTreeMap<String, String>,
    /// Fresh instance per delivery, or reused instances.
    pub isolation: Isolation,
    /// What orders its events by key, if anything (`order_by`).
    pub order_by: Option<crate::stream::order::OrderBy>,
    /// The config's `[schemas]`: what the events it consumes and publishes
    /// must satisfy.
    pub schemas: Arc<Schemas>,
    /// The config's `[streams]`: the format of each stream it reads and
    /// writes ([`crate::format`]).
    pub formats: Arc<super::StreamRules>,
}

impl Handler {
    /// Whether an event of type `event_type` is for this handler.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_filter.is_match(event_type)
    }

    /// Whether this handler may publish to `stream`.
    pub fn may_publish(&self, stream: &str) -> bool {
        self.publish.iter().any(|s| s == stream)
    }

    /// The dead-letter stream for events read from `stream`: `dead_letter`,
    /// or `<stream>:dlq`; in a cluster, `{<stream>}:dlq` for a stream without
    /// a hash tag, so that it shares the stream's slot.
    pub fn dead_letter_stream(&self, stream: &str) -> String {
        match &self.dead_letter {
            Some(dl) => dl.clone(),
            None if self.cluster && crate::stream::slot::hash_tag(stream).is_none() => {
                format!("{}:dlq", crate::stream::slot::tag_for(stream))
            }
            None => format!("{stream}:dlq"),
        }
    }

    /// In a cluster: for each stream it reads whose deliveries may write to
    /// another slot, those targets (they go through the stream's outbox,
    /// see `stream::relay`). Empty: every delivery commits in one script.
    pub fn cross_slot_writes(&self) -> Vec<(String, Vec<String>)> {
        use crate::stream::slot;
        let kv = format!("{}*", self.kv_prefix);
        self.read_streams()
            .into_iter()
            .filter_map(|s| {
                let dead_letters = match s == self.inbox {
                    true => self.streams.iter().map(|t| self.dead_letter_stream(t)).collect(),
                    false => vec![self.dead_letter_stream(&s)],
                };
                let targets = self.publish.iter().cloned().chain(dead_letters).chain([kv.clone()]);
                let away: Vec<String> = targets.filter(|t| slot::of(t) != slot::of(&s)).collect();
                (!away.is_empty()).then_some((s, away))
            })
            .collect()
    }

    /// Its own streams, then its inbox: what its consumer reads.
    pub fn read_streams(&self) -> Vec<String> {
        self.streams.iter().cloned().chain([self.inbox.clone()]).collect()
    }
}
