//! The dead-letter and inbox entry format, written and read here and nowhere
//! else.
//!
//! A **dead-letter entry** is a failed event: every field of the original
//! entry (less `sluice.*` fields from an earlier failure, except its
//! history), then `sluice.error`, `sluice.handler`, `sluice.attempts`,
//! `sluice.origin_stream`, `sluice.origin_id`, `sluice.failed_at` and
//! `sluice.plugin_version`.
//!
//! An **inbox entry** is a copy queued for one handler alone (in
//! `sluice:inbox:<handler>`) by `sluice dlq redrive` or `sluice replay`: the
//! original's own fields, its `sluice.origin_stream` and `sluice.origin_id`,
//! and for a redriven event its failures so far (`sluice.history`, a JSON
//! array). A handler sees an inbox entry as the original ([`origin`]).

use crate::event::{Entry, lossy};
use crate::event_json::EventJson;
use serde::Serialize;
use serde_json::Value;

/// The names of the fields Sluice adds.
pub mod field {
    /// Prefix of every field Sluice adds to a dead-letter or inbox entry.
    pub const SLUICE_PREFIX: &str = "sluice.";
    /// On a dead-letter entry: why it failed (the reject reason, or the last failure).
    pub const ERROR: &str = "sluice.error";
    /// On a dead-letter entry: the handler that failed it.
    pub const HANDLER: &str = "sluice.handler";
    /// On a dead-letter entry: deliveries before it was given up.
    pub const ATTEMPTS: &str = "sluice.attempts";
    /// On a dead-letter entry: when it failed, Unix ms.
    pub const FAILED_AT: &str = "sluice.failed_at";
    /// On a dead-letter entry: the version of the handler's plugin when it failed.
    pub const PLUGIN_VERSION: &str = "sluice.plugin_version";
    /// On a dead-letter entry, and on an inbox entry: the stream of the entry
    /// it stands for.
    pub const ORIGIN_STREAM: &str = "sluice.origin_stream";
    /// On a dead-letter entry, and on an inbox entry: the id of the entry it
    /// stands for, in that stream.
    pub const ORIGIN_ID: &str = "sluice.origin_id";
    /// Earlier failures of a redriven event, a JSON array; kept when it is
    /// dead-lettered again.
    pub const HISTORY: &str = "sluice.history";
}

/// Prefix of a handler's inbox: the stream `sluice dlq redrive` and `sluice
/// replay` copy entries into, read by that handler alone.
pub const INBOX_PREFIX: &str = "sluice:inbox:";

/// Whether `stream` is a handler's inbox.
pub fn is_inbox(stream: &str) -> bool {
    stream.starts_with(INBOX_PREFIX)
}

/// The inbox stream of `handler`: `sluice:inbox:<handler>`; with a hash
/// `tag` (in a cluster), `sluice:inbox:<tag>:<handler>`.
pub fn inbox(handler: &str, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("{INBOX_PREFIX}{tag}:{handler}"),
        None => format!("{INBOX_PREFIX}{handler}"),
    }
}

/// `entry`'s fields without those Sluice added (`sluice.*`): the event as
/// its producer wrote it.
pub fn own_fields(entry: &Entry) -> Vec<(String, Vec<u8>)> {
    entry.fields.iter().filter(|(k, _)| !k.starts_with(field::SLUICE_PREFIX)).cloned().collect()
}

/// The stream and id `entry`, read from `stream`, stands for: its own, or
/// for an inbox entry, the original's (so handlers see, and key idempotency
/// on, the event they failed before).
pub fn origin(stream: &str, entry: &Entry) -> (String, String) {
    if is_inbox(stream)
        && let (Some(s), Some(id)) = (entry.get(field::ORIGIN_STREAM), entry.get(field::ORIGIN_ID))
    {
        return (lossy(s), lossy(id));
    }
    (stream.to_owned(), entry.id.clone())
}

/// The stream `entry`, read from `stream`, stands for ([`origin`]), without
/// copying anything.
pub fn origin_stream<'a>(stream: &'a str, entry: &'a Entry) -> &'a str {
    if is_inbox(stream)
        && entry.get(field::ORIGIN_ID).is_some()
        && let Some(s) = entry.get(field::ORIGIN_STREAM).and_then(|s| std::str::from_utf8(s).ok())
    {
        return s;
    }
    stream
}

/// Why and where an event failed: what its dead-letter entry records.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The handler that failed it.
    pub handler: &'a str,
    /// The stream of the event (see [`origin`]).
    pub origin_stream: &'a str,
    /// The event's id in that stream.
    pub origin_id: &'a str,
    /// Why: the reject reason, or the last failure.
    pub reason: &'a str,
    /// Deliveries before it was given up.
    pub attempts: u32,
    /// The version of the handler's plugin.
    pub plugin_version: &'a str,
    /// Unix time in milliseconds.
    pub failed_at_ms: u64,
}

/// The fields of the dead-letter entry for `entry`, which failed with
/// `failure`: every original field (less `sluice.*` ones from an earlier
/// failure, except its history), then Sluice's own.
pub fn fields(entry: &Entry, failure: &Failure) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(field::SLUICE_PREFIX) || k == field::HISTORY)
        .cloned()
        .collect();
    let ours = [
        (field::ERROR, failure.reason.to_owned()),
        (field::HANDLER, failure.handler.to_owned()),
        (field::ATTEMPTS, failure.attempts.to_string()),
        (field::ORIGIN_STREAM, failure.origin_stream.to_owned()),
        (field::ORIGIN_ID, failure.origin_id.to_owned()),
        (field::FAILED_AT, failure.failed_at_ms.to_string()),
        (field::PLUGIN_VERSION, failure.plugin_version.to_owned()),
    ];
    fields.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v.into_bytes())));
    fields
}

/// One dead-letter entry, read back.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The dead-letter stream.
    pub dead_letter_stream: String,
    /// The entry's id there.
    pub id: String,
    /// The handler that failed it.
    pub handler: String,
    /// The version of its plugin then.
    pub plugin_version: String,
    /// Deliveries before it was given up.
    pub attempts: u32,
    /// Why: the reject reason, or the last failure.
    pub reason: String,
    /// When it failed, Unix ms.
    pub failed_at: u64,
    /// Earlier failures, for an event that was redriven before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Value>,
    /// The event as the handler saw it (the form `sluice invoke` reads).
    pub event: EventJson,
    /// The `sluice.*` fields, as stored.
    #[serde(skip)]
    failure_fields: Vec<(String, String)>,
}

impl DeadLetter {
    /// Reads dead-letter entry `entry` of stream `stream`.
    pub fn from_entry(stream: &str, entry: &Entry) -> DeadLetter {
        let text = |k: &str| entry.get(k).map(lossy).unwrap_or_default();
        let origin_stream = text(field::ORIGIN_STREAM);
        let original = Entry { id: text(field::ORIGIN_ID), fields: own_fields(entry) };
        DeadLetter {
            dead_letter_stream: stream.to_owned(),
            id: entry.id.clone(),
            handler: text(field::HANDLER),
            plugin_version: text(field::PLUGIN_VERSION),
            attempts: text(field::ATTEMPTS).parse().unwrap_or(0),
            reason: text(field::ERROR),
            failed_at: text(field::FAILED_AT).parse().unwrap_or(0),
            history: serde_json::from_str(&text(field::HISTORY)).unwrap_or_default(),
            event: EventJson::from_entry(&origin_stream, &original, None),
            failure_fields: entry
                .fields
                .iter()
                .filter(|(k, _)| k.starts_with(field::SLUICE_PREFIX))
                .map(|(k, v)| (k.clone(), lossy(v)))
                .collect(),
        }
    }

    /// This dead letter with its event's type as the format of the stream it
    /// came from reads it (a CloudEvent's `type`, a LeanMQ message's type
    /// key), for display; its fields stay as stored.
    pub fn read_as(mut self, format: &crate::format::Format) -> DeadLetter {
        if *format != crate::format::Format::Sluice
            && let Ok(read) = format.read(&self.event.to_entry(), 0)
        {
            self.event.event_type = read.event_type;
        }
        self
    }

    /// The event with its `sluice.*` fields too: what `dlq show --json`
    /// prints, to save and run offline with `sluice invoke --event`.
    pub fn saved_event(&self) -> EventJson {
        let mut event = self.event.clone();
        event.fields.extend(self.failure_fields.iter().cloned());
        event
    }

    /// The inbox entry that sends this event back to its handler: the
    /// original's fields, where it came from, and its failures so far (this
    /// one last).
    pub fn inbox_fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut history = self.history.clone();
        history.push(serde_json::json!({
            "reason": self.reason,
            "handler": self.handler,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "plugin_version": self.plugin_version,
        }));
        let mut fields = self.event.to_entry().fields;
        fields.push((field::ORIGIN_STREAM.into(), self.event.stream.clone().into_bytes()));
        fields.push((field::ORIGIN_ID.into(), self.event.id.clone().unwrap_or_default().into_bytes()));
        fields.push((field::HISTORY.into(), Value::Array(history).to_string().into_bytes()));
        fields
    }
}

/// The inbox entry that replays `entry` of `stream` to one handler: its own
/// fields and where it came from.
pub fn replay_fields(stream: &str, entry: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut fields = own_fields(entry);
    fields.push((field::ORIGIN_STREAM.into(), stream.as_bytes().to_vec()));
    fields.push((field::ORIGIN_ID.into(), entry.id.clone().into_bytes()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        Entry { id: id.into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    fn stored(id: &str, fields: Vec<(String, Vec<u8>)>) -> Entry {
        Entry { id: id.into(), fields }
    }

    fn failure<'a>(reason: &'a str, origin: (&'a str, &'a str)) -> Failure<'a> {
        Failure {
            handler: "pay",
            origin_stream: origin.0,
            origin_id: origin.1,
            reason,
            attempts: 3,
            plugin_version: "abc123",
            failed_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_dead_letter_reads_back_as_written() {
        let original = entry("7-0", &[("type", "order.created"), ("data", r#"{"n":1}"#), ("correlation_id", "c-1")]);
        let written = stored("9-0", fields(&original, &failure("boom", ("orders", "7-0"))));
        let d = DeadLetter::from_entry("orders:dlq", &written);
        assert_eq!((d.handler.as_str(), d.reason.as_str(), d.attempts), ("pay", "boom", 3));
        assert_eq!((d.plugin_version.as_str(), d.failed_at), ("abc123", 1_700_000_000_000));
        assert_eq!((d.event.stream.as_str(), d.event.id.as_deref()), ("orders", Some("7-0")));
        assert_eq!(d.event.to_entry(), original, "the original entry, field for field");
        assert!(d.history.is_empty());
    }

    #[test]
    fn a_redriven_event_stands_for_its_origin_and_keeps_its_history_when_it_fails_again() {
        let original = entry("7-0", &[("type", "t"), ("data", "{}")]);
        let first = DeadLetter::from_entry(
            "orders:dlq",
            &stored("9-0", fields(&original, &failure("first", ("orders", "7-0")))),
        );
        let copy = stored("11-0", first.inbox_fields());
        assert_eq!(origin(&inbox("pay", None), &copy), ("orders".to_owned(), "7-0".to_owned()));
        assert_eq!(origin("elsewhere", &copy), ("elsewhere".to_owned(), "11-0".to_owned()), "only in an inbox");

        let again = stored("12-0", fields(&copy, &failure("second", ("orders", "7-0"))));
        let second = DeadLetter::from_entry("orders:dlq", &again);
        assert_eq!(second.reason, "second");
        assert_eq!(second.history.len(), 1);
        assert_eq!(second.history[0]["reason"], "first");
        assert_eq!(second.event.to_entry(), original);
        let errors = again.fields.iter().filter(|(k, _)| k == field::ERROR).count();
        assert_eq!(errors, 1, "earlier sluice.* fields are replaced, not repeated");
    }

    #[test]
    fn a_replayed_copy_stands_for_its_origin() {
        let original = entry("7-0", &[("type", "t"), ("data", "{}"), ("sluice.error", "stale")]);
        let copy = stored("11-0", replay_fields("orders", &original));
        assert_eq!(origin(&inbox("audit", None), &copy), ("orders".to_owned(), "7-0".to_owned()));
        assert_eq!(own_fields(&copy), own_fields(&original));
    }
}
