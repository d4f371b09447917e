//! Stream entries as the host sees them, Sluice's field names, and the
//! lineage (correlation, causation, trace) a handler's publishes carry. How
//! an entry is read as an event and how an event is written, per stream
//! `format`, is [`crate::format`]'s; dead-letter and inbox entries have
//! their own format, in [`crate::dead_letter`].

use crate::format::{Format, Outgoing};
use crate::wasm::Publish;
use crate::wasm::bindings::Event;

/// Field names Sluice gives meaning to (CloudEvents-like).
pub mod field {
    /// The event type, which handlers' `events` globs and `[schemas]` match.
    pub const TYPE: &str = "type";
    /// The payload, JSON by convention.
    pub const DATA: &str = "data";
    /// On a published event: the handler that published it.
    pub const SOURCE: &str = "source";
    /// The conversation an event belongs to: carried over to what a handler
    /// publishes, or the cause's id when the cause has none.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// On a published event: the id of the event whose handling published it.
    pub const CAUSATION_ID: &str = "causation_id";
    /// W3C Trace Context: carried over, as a child, to what a handler publishes.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a request: the stream its reply goes to (`host.reply`).
    pub const REPLY_TO: &str = "reply_to";
    /// On a reply: the entry id of the request it answers.
    pub const REQUEST_ID: &str = "request_id";
}

/// One entry of a stream, as read: its id and its fields in stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The id Redis assigned, e.g. `1700000000000-0`.
    pub id: String,
    /// Every field, in the order stored. Values are bytes: Redis does not
    /// promise UTF-8.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// The `type` field, `""` when absent.
    pub fn event_type(&self) -> String {
        self.get(field::TYPE).map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default()
    }

    /// The event a handler receives for this entry of a Sluice-format
    /// stream, read from `stream`, on delivery `attempt` (tools and tests;
    /// the host reads each stream in its format, [`crate::dispatch::admit`]).
    pub fn to_event(&self, stream: &str, attempt: u32) -> Event {
        let (stream, id) = crate::dead_letter::origin(stream, self);
        let read = Format::Sluice.read(self, 0).expect("every entry reads as Sluice's format");
        Event { stream, id, event_type: read.event_type, data: read.data, fields: read.fields, attempt }
    }

    /// The `data` field, or all fields as a JSON object when it is absent.
    pub fn data(&self) -> Vec<u8> {
        match self.get(field::DATA) {
            Some(d) => d.to_vec(),
            None => {
                let map: serde_json::Map<String, serde_json::Value> =
                    self.fields.iter().map(|(k, v)| (k.clone(), lossy(v).into())).collect();
                serde_json::to_vec(&map).unwrap_or_default()
            }
        }
    }
}

/// `v` as text, invalid UTF-8 replaced.
pub fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// What a handler's publishes carry over from the event it handled: its
/// correlation id and its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The cause's `correlation_id`, if it has one.
    pub correlation_id: Option<String>,
    /// The cause's `traceparent`, if it has one.
    pub traceparent: Option<String>,
}

impl Lineage {
    /// The lineage of `cause`, an entry of a stream of `format`.
    pub fn of(format: &Format, cause: &Entry) -> Lineage {
        if *format == Format::Sluice {
            return Lineage {
                correlation_id: cause.get(field::CORRELATION_ID).map(lossy),
                traceparent: cause.get(field::TRACEPARENT).map(lossy),
            };
        }
        let Ok(read) = format.read(cause, 0) else { return Lineage::default() };
        let (correlation_id, traceparent) = crate::format::lineage(&read.fields);
        Lineage { correlation_id: correlation_id.map(str::to_owned), traceparent: traceparent.map(str::to_owned) }
    }
}

/// The fields of the entry `handler` publishes while handling the event with
/// id `cause_id` (its own, or the original's for an inbox copy), whose
/// lineage is `cause`; written in the `format` of the stream it goes to.
/// `id_seed` names this publish among all (see [`Outgoing::id_seed`]).
pub fn published_fields(
    p: &Publish,
    handler: &str,
    cause: &Lineage,
    cause_id: &str,
    format: &Format,
    id_seed: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    let traceparent = cause.traceparent.as_deref().and_then(|t| child_traceparent(t.as_bytes()));
    let out = Outgoing {
        stream: &p.stream,
        event_type: &p.event_type,
        data: &p.data,
        source: Some(handler),
        correlation_id: Some(cause.correlation_id.as_deref().unwrap_or(cause_id)),
        causation_id: Some(cause_id),
        traceparent: traceparent.as_deref(),
        extra: &[],
        id_seed,
    };
    format.write(&out)
}

/// A W3C `traceparent` for a child of `parent` (`00-<trace-id>-<parent-id>-<flags>`):
/// the same trace, a new random parent id. `None` if `parent` is not one.
fn child_traceparent(parent: &[u8]) -> Option<String> {
    let parent = std::str::from_utf8(parent).ok()?;
    let parts: Vec<&str> = parent.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let [version, trace, span, flags] = parts.as_slice() else { return None };
    if !(hex(version, 2) && *version != "ff" && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') {
        return None;
    }
    let id: u64 = rand::random::<u64>().max(1);
    Some(format!("00-{trace}-{id:016x}-{flags}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry { id: "1-0".into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    #[test]
    fn missing_type_is_empty() {
        assert_eq!(entry(&[("data", "{}")]).event_type(), "");
    }

    #[test]
    fn publishes_carry_correlation_and_causation() {
        let p = Publish { stream: "o".into(), event_type: "x".into(), data: b"{}".to_vec() };
        let of = |e: &Entry| Lineage::of(&Format::Sluice, e);
        let fields = published_fields(&p, "h", &of(&entry(&[("correlation_id", "c-9")])), "1-0", &Format::Sluice, None);
        let e = Entry { id: "9-0".into(), fields };
        assert_eq!(e.get("correlation_id"), Some(&b"c-9"[..]));
        assert_eq!(e.get("causation_id"), Some(&b"1-0"[..]));
        assert_eq!(e.get("source"), Some(&b"h"[..]));
        let uncorrelated = published_fields(&p, "h", &of(&entry(&[])), "1-0", &Format::Sluice, None);
        assert_eq!(uncorrelated[3].1, b"1-0");
    }

    #[test]
    fn a_traceparent_continues_the_trace_with_a_new_parent() {
        let p = Publish { stream: "o".into(), event_type: "x".into(), data: b"{}".to_vec() };
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let of = |e: &Entry| Lineage::of(&Format::Sluice, e);
        let fields = published_fields(&p, "h", &of(&entry(&[("traceparent", parent)])), "1-0", &Format::Sluice, None);
        let child = Entry { id: "2-0".into(), fields };
        let child = std::str::from_utf8(child.get("traceparent").unwrap()).unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child.ends_with("-01"), "{child}");
        assert_ne!(child, parent);
        for bad in ["garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            let fields = published_fields(&p, "h", &of(&entry(&[("traceparent", bad)])), "1-0", &Format::Sluice, None);
            assert!(!fields.iter().any(|(k, _)| k == "traceparent"), "{bad}");
        }
    }
}
