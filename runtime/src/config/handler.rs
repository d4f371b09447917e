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
    /// The config's `[schemas]`: what the events it consumes and publishes
    /// must satisfy.
    pub schemas: Arc<Schemas>,
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

    /// The dead-letter stream for events read from `stream`.
    pub fn dead_letter_stream(&self, stream: &str) -> String {
        match &self.dead_letter {
            Some(dl) => dl.clone(),
            None => format!("{stream}:dlq"),
        }
    }
}
