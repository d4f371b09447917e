//! Stream entries as the host sees them, and the fields Sluice writes:
//! what a handler receives, what it publishes, what a dead-letter holds.

use crate::wasm::Publish;
use crate::wasm::bindings::Event;

/// Field names Sluice gives meaning to (CloudEvents-like).
pub mod field {
    pub const TYPE: &str = "type";
    pub const DATA: &str = "data";
    pub const SOURCE: &str = "source";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    /// W3C Trace Context: carried over, as a child, to what a handler publishes.
    pub const TRACEPARENT: &str = "traceparent";
    /// Prefix of the fields Sluice adds to a dead-letter entry.
    pub const SLUICE_PREFIX: &str = "sluice.";
    /// On a dead-letter entry: why, which handler, after how many
    /// deliveries, when (Unix ms) and on which plugin version it failed.
    pub const ERROR: &str = "sluice.error";
    pub const HANDLER: &str = "sluice.handler";
    pub const ATTEMPTS: &str = "sluice.attempts";
    pub const FAILED_AT: &str = "sluice.failed_at";
    pub const PLUGIN_VERSION: &str = "sluice.plugin_version";
    /// On a dead-letter entry, and on a copy in a handler's inbox: the
    /// stream and id of the entry it stands for.
    pub const ORIGIN_STREAM: &str = "sluice.origin_stream";
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

/// The inbox stream of `handler`.
pub fn inbox(handler: &str) -> String {
    format!("{INBOX_PREFIX}{handler}")
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

    /// Its fields without those Sluice added (`sluice.*`): the event as its
    /// producer wrote it.
    pub fn own_fields(&self) -> Vec<(String, Vec<u8>)> {
        self.fields.iter().filter(|(k, _)| !k.starts_with(field::SLUICE_PREFIX)).cloned().collect()
    }

    /// The stream and id this entry stands for: its own, or for a copy in
    /// an inbox, the original's (so handlers see, and key idempotency on,
    /// the event they failed before).
    pub fn origin(&self, stream: &str) -> (String, String) {
        if is_inbox(stream)
            && let (Some(s), Some(id)) = (self.get(field::ORIGIN_STREAM), self.get(field::ORIGIN_ID))
        {
            return (lossy(s), lossy(id));
        }
        (stream.to_owned(), self.id.clone())
    }

    /// The event a handler receives for this entry, read from `stream`, on
    /// delivery `attempt`.
    pub fn to_event(&self, stream: &str, attempt: u32) -> Event {
        let (stream, id) = self.origin(stream);
        Event {
            stream,
            id,
            event_type: self.event_type(),
            data: self.data(),
            fields: self.fields.iter().map(|(k, v)| (k.clone(), lossy(v))).collect(),
            attempt,
        }
    }

    /// The `data` field, or all fields as a JSON object when it is absent.
    fn data(&self) -> Vec<u8> {
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

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The fields of an entry `handler` publishes while handling `cause`, the
/// event with id `cause_id` (its own, or the original's for an inbox copy).
pub fn published_fields(p: &Publish, handler: &str, cause: &Entry, cause_id: &str) -> Vec<(String, Vec<u8>)> {
    let correlation = cause.get(field::CORRELATION_ID).map(lossy).unwrap_or_else(|| cause_id.to_owned());
    let mut fields = vec![
        (field::TYPE.into(), p.event_type.clone().into_bytes()),
        (field::DATA.into(), p.data.clone()),
        (field::SOURCE.into(), handler.as_bytes().to_vec()),
        (field::CORRELATION_ID.into(), correlation.into_bytes()),
        (field::CAUSATION_ID.into(), cause_id.as_bytes().to_vec()),
    ];
    if let Some(child) = cause.get(field::TRACEPARENT).and_then(child_traceparent) {
        fields.push((field::TRACEPARENT.into(), child.into_bytes()));
    }
    fields
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

/// Why and where an event failed, recorded on its dead-letter entry.
#[derive(Debug, Clone)]
pub struct DeadLetterInfo<'a> {
    pub handler: &'a str,
    /// The stream and id of the event (see [`Entry::origin`]).
    pub origin_stream: &'a str,
    pub origin_id: &'a str,
    pub reason: &'a str,
    pub attempts: u32,
    pub plugin_version: &'a str,
    /// Unix time in milliseconds.
    pub failed_at_ms: u64,
}

/// The fields of the dead-letter entry for `entry`: every original field
/// (minus `sluice.*` ones from an earlier failure, except its history), then
/// Sluice's own.
pub fn dead_letter_fields(entry: &Entry, info: &DeadLetterInfo) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(field::SLUICE_PREFIX) || k == field::HISTORY)
        .cloned()
        .collect();
    let ours = [
        (field::ERROR, info.reason.to_owned()),
        (field::HANDLER, info.handler.to_owned()),
        (field::ATTEMPTS, info.attempts.to_string()),
        (field::ORIGIN_STREAM, info.origin_stream.to_owned()),
        (field::ORIGIN_ID, info.origin_id.to_owned()),
        (field::FAILED_AT, info.failed_at_ms.to_string()),
        (field::PLUGIN_VERSION, info.plugin_version.to_owned()),
    ];
    fields.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v.into_bytes())));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry { id: "1-0".into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    #[test]
    fn data_defaults_to_all_fields_as_json() {
        let e = entry(&[("type", "t"), ("n", "1")]).to_event("s", 1);
        let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
        assert_eq!(v, serde_json::json!({"type": "t", "n": "1"}));
    }

    #[test]
    fn missing_type_is_empty() {
        assert_eq!(entry(&[("data", "{}")]).event_type(), "");
    }

    #[test]
    fn publishes_carry_correlation_and_causation() {
        let p = Publish { stream: "o".into(), event_type: "x".into(), data: b"{}".to_vec() };
        let fields = published_fields(&p, "h", &entry(&[("correlation_id", "c-9")]), "1-0");
        let e = Entry { id: "9-0".into(), fields };
        assert_eq!(e.get("correlation_id"), Some(&b"c-9"[..]));
        assert_eq!(e.get("causation_id"), Some(&b"1-0"[..]));
        assert_eq!(e.get("source"), Some(&b"h"[..]));
        let uncorrelated = published_fields(&p, "h", &entry(&[]), "1-0");
        assert_eq!(uncorrelated[3].1, b"1-0");
    }

    #[test]
    fn a_traceparent_continues_the_trace_with_a_new_parent() {
        let p = Publish { stream: "o".into(), event_type: "x".into(), data: b"{}".to_vec() };
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let fields = published_fields(&p, "h", &entry(&[("traceparent", parent)]), "1-0");
        let child = Entry { id: "2-0".into(), fields };
        let child = std::str::from_utf8(child.get("traceparent").unwrap()).unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child.ends_with("-01"), "{child}");
        assert_ne!(child, parent);
        for bad in ["garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            let fields = published_fields(&p, "h", &entry(&[("traceparent", bad)]), "1-0");
            assert!(!fields.iter().any(|(k, _)| k == "traceparent"), "{bad}");
        }
    }

    #[test]
    fn an_inbox_copy_stands_for_its_origin() {
        let copy = entry(&[("type", "t"), (field::ORIGIN_STREAM, "orders"), (field::ORIGIN_ID, "7-0")]);
        let e = copy.to_event(&inbox("h"), 1);
        assert_eq!((e.stream.as_str(), e.id.as_str()), ("orders", "7-0"));
        // Only in an inbox: elsewhere the fields are just fields.
        let e = copy.to_event("orders:dlq", 1);
        assert_eq!((e.stream.as_str(), e.id.as_str()), ("orders:dlq", "1-0"));
    }

    #[test]
    fn dead_letter_replaces_earlier_sluice_fields() {
        let e = entry(&[("type", "t"), ("sluice.error", "old")]);
        let info = DeadLetterInfo {
            handler: "h",
            origin_stream: "s",
            origin_id: "1-0",
            reason: "new",
            attempts: 3,
            plugin_version: "v",
            failed_at_ms: 5,
        };
        let fields = dead_letter_fields(&e, &info);
        let errors: Vec<_> = fields.iter().filter(|(k, _)| k == "sluice.error").collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1, b"new");
    }
}
