//! Stream formats, in one place: how an entry of a stream is read as an
//! event, and how an event is written to a stream, for each `format` a
//! `[streams."NAME"]` table can give (`config.toml`):
//!
//! - **`sluice`** (the default): the event type is the `type` field, the
//!   data the `data` field, and every field is the handler's.
//! - **`cloudevents`**: the `data` field holds a CloudEvent in structured
//!   mode (JSON), as Dapr's `pubsub.redis` writes it (beside a `metadata`
//!   field). The type is the CloudEvent's `type`, the data its `data` (or
//!   `data_base64`, decoded); its attributes are the handler's fields, its
//!   `correlationid` and `causationid` extensions Sluice's `correlation_id`
//!   and `causation_id`. Dapr's `expiration` extension is honoured.
//! - **`leanmq`**: the `data` field holds a JSON object, the message,
//!   with LeanMQ's `_metadata` (`id`, `timestamp`, `ttl`) in it. The type is
//!   the message's `type_key` (default `event_type`); the data is the
//!   message less `_metadata`. A message past its `ttl` is expired. Its
//!   dead letters are written as LeanMQ's `move_to_dlq` writes them, so
//!   LeanMQ's tools read and requeue them.
//!
//! An entry that does not parse as its stream's format is [`Malformed`]: it
//! is dead-lettered with that reason, without running the plugin
//! ([`crate::dispatch::admit`]). What Sluice writes (publishes, `sluice
//! publish`, the HTTP ingress) is written by [`Format::write`], so
//! producers and consumers of the same format read it.

use crate::event::{Entry, field, lossy};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// The key of a LeanMQ message that holds its event type, unless the
/// stream's `type_key` says otherwise (LeanMQ's own examples use it).
pub const DEFAULT_LEANMQ_TYPE_KEY: &str = "event_type";

/// LeanMQ's metadata object inside a message.
const LEANMQ_METADATA: &str = "_metadata";
/// LeanMQ's list of failures inside a dead-lettered message.
const LEANMQ_FAILURES: &str = "_failures";

/// The CloudEvents extension attributes Sluice's own fields map onto
/// (extension names may hold only lower-case letters and digits).
const CE_CORRELATION_ID: &str = "correlationid";
const CE_CAUSATION_ID: &str = "causationid";

/// How a stream's entries are laid out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// Sluice's own: `type`, `data` and more fields.
    #[default]
    Sluice,
    /// A CloudEvent in structured mode in the `data` field (Dapr).
    CloudEvents,
    /// A LeanMQ message in the `data` field.
    LeanMq {
        /// The message key that holds the event type.
        type_key: String,
    },
}

/// An entry read as an event: what its handler gets (less the stream, the
/// id and the attempt, which the entry's place tells).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The event type; empty when the entry has none.
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The handler's fields: the entry's, or the envelope's attributes.
    pub fields: Vec<(String, String)>,
    /// Its producer's time to live has passed: acknowledged unseen.
    pub expired: bool,
}

/// Why an entry is not an event of its stream's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {format} entry: {why}")]
pub struct Malformed {
    /// The format's name as `config.toml` spells it.
    pub format: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// An event to write to a stream, with Sluice's lineage.
#[derive(Debug, Clone, Default)]
pub struct Outgoing<'a> {
    /// The stream it goes to.
    pub stream: &'a str,
    /// Its event type.
    pub event_type: &'a str,
    /// Its payload (JSON by convention).
    pub data: &'a [u8],
    /// Who wrote it: the publishing handler.
    pub source: Option<&'a str>,
    /// The conversation it belongs to.
    pub correlation_id: Option<&'a str>,
    /// The id of the event whose handling wrote it.
    pub causation_id: Option<&'a str>,
    /// W3C Trace Context.
    pub traceparent: Option<&'a str>,
    /// More fields, in order (`sluice publish --field`, ingress headers):
    /// entry fields, or for a CloudEvent extension attributes.
    pub extra: &'a [(String, String)],
}

impl Format {
    /// The LeanMQ format with the default type key.
    pub fn leanmq() -> Format {
        Format::LeanMq { type_key: DEFAULT_LEANMQ_TYPE_KEY.to_owned() }
    }

    /// Its name, as `format = "..."` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Sluice => "sluice",
            Format::CloudEvents => "cloudevents",
            Format::LeanMq { .. } => "leanmq",
        }
    }

    /// `entry` as an event, at `now_ms` (Unix ms; decides expiry).
    pub fn read(&self, entry: &Entry, now_ms: u64) -> Result<Read, Malformed> {
        let malformed = |why: String| Malformed { format: self.name(), why };
        match self {
            Format::Sluice => Ok(Read {
                event_type: entry.event_type(),
                data: entry.data(),
                fields: entry.fields.iter().map(|(k, v)| (k.clone(), lossy(v))).collect(),
                expired: false,
            }),
            Format::CloudEvents => read_cloudevent(entry, now_ms).map_err(malformed),
            Format::LeanMq { type_key } => read_leanmq(entry, type_key, now_ms).map_err(malformed),
        }
    }

    /// Why `data` cannot be written as an event of this format, if it cannot
    /// (checked when a handler publishes, so the handler hears of it).
    pub fn check(&self, data: &[u8]) -> Result<(), String> {
        match self {
            Format::LeanMq { .. } => match serde_json::from_slice::<Value>(data) {
                Ok(Value::Object(_)) => Ok(()),
                _ => Err("a LeanMQ message is a JSON object, and this data is not one".into()),
            },
            Format::Sluice | Format::CloudEvents => Ok(()),
        }
    }

    /// The fields of `out` as an entry of this format, at `now_ms`.
    pub fn write(&self, out: &Outgoing, now_ms: u64) -> Vec<(String, Vec<u8>)> {
        match self {
            Format::Sluice => write_sluice(out),
            Format::CloudEvents => write_cloudevent(out, now_ms),
            Format::LeanMq { type_key } => write_leanmq(out, type_key, now_ms),
        }
    }

    /// The fields a dead letter keeps of `entry`, which failed for `reason`
    /// at `now_ms`: as they are, but a LeanMQ message gets LeanMQ's own
    /// record of the failure (`_failures`, fresh `_metadata`), as its
    /// `move_to_dlq` writes it.
    pub fn dead_letter_fields(&self, entry: &Entry, reason: &str, now_ms: u64) -> Option<Vec<(String, Vec<u8>)>> {
        let Format::LeanMq { .. } = self else { return None };
        let mut message = match entry.get(field::DATA).map(serde_json::from_slice::<Value>) {
            Some(Ok(Value::Object(m))) => m,
            _ => return None,
        };
        let id = message.get(LEANMQ_METADATA).and_then(|m| m.get("id")).cloned().unwrap_or_else(|| uuid().into());
        let failure = json!({"timestamp": unix_secs(now_ms), "reason": reason});
        match message.get_mut(LEANMQ_FAILURES) {
            Some(Value::Array(list)) => list.push(failure),
            _ => {
                message.insert(LEANMQ_FAILURES.into(), Value::Array(vec![failure]));
            }
        }
        message.insert(LEANMQ_METADATA.into(), json!({"id": id, "timestamp": unix_secs(now_ms), "ttl": null}));
        let data = Value::Object(message).to_string().into_bytes();
        let fields = entry
            .fields
            .iter()
            .map(|(k, v)| match k == field::DATA {
                true => (k.clone(), data.clone()),
                false => (k.clone(), v.clone()),
            })
            .collect();
        Some(fields)
    }
}

/// The lineage a handler's publishes carry from the event `read` it
/// handled: (its correlation id, its traceparent).
pub fn lineage(read_fields: &[(String, String)]) -> (Option<&str>, Option<&str>) {
    let get = |name: &str| read_fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    (get(field::CORRELATION_ID), get(field::TRACEPARENT))
}

fn write_sluice(out: &Outgoing) -> Vec<(String, Vec<u8>)> {
    let mut fields =
        vec![(field::TYPE.into(), out.event_type.as_bytes().to_vec()), (field::DATA.into(), out.data.to_vec())];
    let lineage = [
        (field::SOURCE, out.source),
        (field::CORRELATION_ID, out.correlation_id),
        (field::CAUSATION_ID, out.causation_id),
        (field::TRACEPARENT, out.traceparent),
    ];
    fields.extend(lineage.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?.as_bytes().to_vec()))));
    fields.extend(out.extra.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    fields
}

/// The `data` field as JSON, or why it is not there or not JSON.
fn envelope(entry: &Entry, what: &str) -> Result<Map<String, Value>, String> {
    let raw = entry.get(field::DATA).ok_or_else(|| format!("it has no \"data\" field (which holds the {what})"))?;
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("its \"data\" field is JSON but not an object (the {what} is one)")),
        Err(e) => Err(format!("its \"data\" field is not JSON ({e})")),
    }
}

fn read_cloudevent(entry: &Entry, now_ms: u64) -> Result<Read, String> {
    let mut ce = envelope(entry, "CloudEvent")?;
    for required in ["specversion", "id", "source", "type"] {
        match ce.get(required) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(format!("its CloudEvent's \"{required}\" is not a non-empty string")),
            None => {
                return Err(format!(
                    "its CloudEvent has no \"{required}\" (CloudEvents requires id, source, specversion and type)"
                ));
            }
        }
    }
    let data = match (ce.remove("data_base64"), ce.remove("data")) {
        (Some(Value::String(b64)), _) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("its CloudEvent's \"data_base64\" is not base64 ({e})"))?,
        (Some(_), _) => return Err("its CloudEvent's \"data_base64\" is not a string".into()),
        (None, Some(Value::String(s))) if !is_json_type(ce.get("datacontenttype")) => s.into_bytes(),
        (None, Some(value)) => value.to_string().into_bytes(),
        (None, None) => Vec::new(),
    };
    let expired = match ce.get("expiration").and_then(Value::as_str) {
        Some(at) => crate::ops::time::parse(at, now_ms).is_ok_and(|at| at <= now_ms),
        None => false,
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut fields: Vec<(String, String)> = ce.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    for (ext, name) in [(CE_CORRELATION_ID, field::CORRELATION_ID), (CE_CAUSATION_ID, field::CAUSATION_ID)] {
        if let Some(v) = ce.get(ext) {
            fields.push((name.to_owned(), text(v)));
        }
    }
    fields.extend(entry.fields.iter().filter(|(k, _)| k != field::DATA).map(|(k, v)| (k.clone(), lossy(v))));
    let event_type = text(&ce["type"]);
    Ok(Read { event_type, data, fields, expired })
}

/// Whether a CloudEvent's `datacontenttype` says its data is JSON (absent:
/// JSON, as the JSON format's spec has it).
fn is_json_type(content_type: Option<&Value>) -> bool {
    match content_type.and_then(Value::as_str) {
        None => true,
        Some(t) => {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t == "application/json" || t == "text/json" || t.ends_with("+json")
        }
    }
}

fn write_cloudevent(out: &Outgoing, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let mut ce = Map::new();
    ce.insert("specversion".into(), "1.0".into());
    ce.insert("id".into(), uuid().into());
    ce.insert("source".into(), out.source.unwrap_or("sluice").into());
    ce.insert("type".into(), out.event_type.into());
    ce.insert("time".into(), rfc3339(now_ms).into());
    ce.insert("topic".into(), out.stream.into());
    match serde_json::from_slice::<Value>(out.data) {
        Ok(value) => {
            ce.insert("datacontenttype".into(), "application/json".into());
            ce.insert("data".into(), value);
        }
        Err(_) => match std::str::from_utf8(out.data) {
            Ok(text) => {
                ce.insert("datacontenttype".into(), "text/plain".into());
                ce.insert("data".into(), text.into());
            }
            Err(_) => {
                ce.insert("datacontenttype".into(), "application/octet-stream".into());
                ce.insert("data_base64".into(), base64::engine::general_purpose::STANDARD.encode(out.data).into());
            }
        },
    }
    let lineage = [
        ("traceparent", out.traceparent),
        (CE_CORRELATION_ID, out.correlation_id),
        (CE_CAUSATION_ID, out.causation_id),
    ];
    for (k, v) in lineage {
        if let Some(v) = v {
            ce.insert(k.into(), v.into());
        }
    }
    // Sluice's names for what CloudEvents spells without underscores. A
    // field that is no attribute name (`reply_to`) rides beside the envelope.
    let mut beside = Vec::new();
    for (k, v) in out.extra {
        let k = match k.as_str() {
            field::CORRELATION_ID => CE_CORRELATION_ID,
            field::CAUSATION_ID => CE_CAUSATION_ID,
            other => other,
        };
        match is_attribute_name(k) {
            true => drop(ce.entry(k.to_owned()).or_insert_with(|| v.clone().into())),
            false => beside.push((k.to_owned(), v.clone().into_bytes())),
        }
    }
    let mut fields = vec![(field::DATA.into(), Value::Object(ce).to_string().into_bytes())];
    fields.extend(beside);
    fields
}

/// Whether `name` may name a CloudEvents attribute: lower-case ASCII
/// letters and digits.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn read_leanmq(entry: &Entry, type_key: &str, now_ms: u64) -> Result<Read, String> {
    let mut message = envelope(entry, "LeanMQ message")?;
    let metadata = message.remove(LEANMQ_METADATA);
    let event_type = match message.get(type_key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("its \"{type_key}\" (the event type) is not a string but {other}")),
    };
    let number = |key: &str| metadata.as_ref().and_then(|m| m.get(key)).and_then(Value::as_f64);
    let expired = match (number("timestamp"), number("ttl")) {
        (Some(sent), Some(ttl)) => (sent + ttl) * 1000.0 <= now_ms as f64,
        _ => false,
    };
    let mut fields = vec![(field::TYPE.to_owned(), event_type.clone())];
    fields.extend(entry.fields.iter().filter(|(k, _)| k != field::DATA).map(|(k, v)| (k.clone(), lossy(v))));
    if let Some(id) = metadata.as_ref().and_then(|m| m.get("id")).and_then(Value::as_str) {
        fields.push(("leanmq_id".to_owned(), id.to_owned()));
    }
    Ok(Read { event_type, data: Value::Object(message).to_string().into_bytes(), fields, expired })
}

fn write_leanmq(out: &Outgoing, type_key: &str, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let mut message = match serde_json::from_slice::<Value>(out.data) {
        Ok(Value::Object(m)) => m,
        // Refused before it gets here ([`Format::check`]); kept whole if not.
        Ok(other) => Map::from_iter([("data".to_owned(), other)]),
        Err(_) => Map::from_iter([("data".to_owned(), lossy(out.data).into())]),
    };
    if !out.event_type.is_empty() {
        message.insert(type_key.to_owned(), out.event_type.into());
    }
    message.insert(LEANMQ_METADATA.into(), json!({"id": uuid(), "timestamp": unix_secs(now_ms), "ttl": null}));
    // LeanMQ reads only `data`; the lineage rides beside it for Sluice.
    let mut fields = vec![(field::DATA.to_owned(), Value::Object(message).to_string().into_bytes())];
    let lineage = [
        (field::SOURCE, out.source),
        (field::CORRELATION_ID, out.correlation_id),
        (field::CAUSATION_ID, out.causation_id),
        (field::TRACEPARENT, out.traceparent),
    ];
    fields.extend(lineage.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?.as_bytes().to_vec()))));
    fields.extend(out.extra.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    fields
}

/// A random (version 4) UUID, as CloudEvents and LeanMQ ids are.
fn uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::wasm::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn unix_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry { id: "7-0".into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    fn stored(fields: Vec<(String, Vec<u8>)>) -> Entry {
        Entry { id: "8-0".into(), fields }
    }

    fn get<'a>(read: &'a Read, name: &str) -> Option<&'a str> {
        read.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn out<'a>(stream: &'a str, event_type: &'a str, data: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            stream,
            event_type,
            data,
            source: Some("h"),
            correlation_id: Some("c-1"),
            causation_id: Some("1-0"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            extra: &[],
        }
    }

    #[test]
    fn a_dapr_envelope_reads_as_its_type_and_data() {
        let ce = r#"{"specversion":"1.0","id":"e-1","source":"checkout","type":"order.created","datacontenttype":"application/json","data":{"order_id":"o-1"},"topic":"orders","pubsubname":"pubsub","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","correlationid":"c-9","time":"2026-11-26T10:00:00Z"}"#;
        let read = Format::CloudEvents.read(&entry(&[("data", ce), ("metadata", "{}")]), NOW).unwrap();
        assert_eq!(read.event_type, "order.created");
        assert_eq!(read.data, br#"{"order_id":"o-1"}"#);
        assert_eq!(get(&read, "source"), Some("checkout"));
        assert_eq!(get(&read, "id"), Some("e-1"));
        assert_eq!(get(&read, "correlation_id"), Some("c-9"));
        assert_eq!(get(&read, "metadata"), Some("{}"));
        assert!(!read.expired);
        assert_eq!(lineage(&read.fields).1, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    }

    #[test]
    fn cloudevent_data_of_every_kind_reads_as_its_bytes() {
        let with = |rest: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"t"{rest}}}"#);
        let data = |rest: &str| Format::CloudEvents.read(&entry(&[("data", &with(rest))]), NOW).unwrap().data;
        assert_eq!(data(r#","datacontenttype":"text/plain","data":"hi""#), b"hi");
        assert_eq!(data(r#","data":"hi""#), br#""hi""#, "no content type: JSON");
        assert_eq!(data(r#","data_base64":"AAEC""#), [0, 1, 2]);
        assert_eq!(data(""), b"");
        let expired = with(r#","expiration":"2020-01-01T00:00:00Z""#);
        assert!(Format::CloudEvents.read(&entry(&[("data", &expired)]), NOW).unwrap().expired);
    }

    #[test]
    fn what_is_not_a_cloudevent_is_malformed_and_says_why() {
        for (fields, why) in [
            (vec![("type", "t")], "no \"data\" field"),
            (vec![("data", "nope")], "not JSON"),
            (vec![("data", "[1]")], "not an object"),
            (vec![("data", r#"{"specversion":"1.0","id":"1","type":"t"}"#)], "no \"source\""),
        ] {
            let err = Format::CloudEvents.read(&entry(&fields), NOW).unwrap_err();
            assert_eq!(err.format, "cloudevents");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn a_cloudevent_written_reads_back() {
        for data in [&br#"{"n":1}"#[..], b"plain text", &[0xff, 0x00]] {
            let fields = Format::CloudEvents.write(&out("orders", "order.created", data), NOW);
            assert_eq!(fields.len(), 1);
            let read = Format::CloudEvents.read(&stored(fields), NOW).unwrap();
            assert_eq!((read.event_type.as_str(), read.data.as_slice()), ("order.created", data));
            assert_eq!(get(&read, "source"), Some("h"));
            assert_eq!(get(&read, "causation_id"), Some("1-0"));
            assert_eq!(get(&read, "time"), Some("2027-01-15T08:00:00.000Z"));
        }
    }

    #[test]
    fn fields_that_are_no_attribute_names_ride_beside_the_cloudevent() {
        let extra =
            [("correlation_id".to_owned(), "c-2".to_owned()), ("reply_to".to_owned(), "sluice:reply:1".to_owned())];
        let o = Outgoing { stream: "s", event_type: "t", data: b"{}", extra: &extra, ..Default::default() };
        let entry = stored(Format::CloudEvents.write(&o, NOW));
        assert_eq!(entry.get("reply_to"), Some(&b"sluice:reply:1"[..]));
        let read = Format::CloudEvents.read(&entry, NOW).unwrap();
        assert_eq!(get(&read, "correlation_id"), Some("c-2"));
        assert_eq!(get(&read, "correlationid"), Some("c-2"));
        assert_eq!(get(&read, "source"), Some("sluice"), "a source is required; Sluice's own without a handler");
        assert_eq!(get(&read, "reply_to"), Some("sluice:reply:1"));
    }

    #[test]
    fn a_leanmq_message_reads_as_its_type_and_payload() {
        let m = r#"{"order_id":"o-1","event_type":"order.created","_metadata":{"id":"u-1","timestamp":1799999999.5,"ttl":null}}"#;
        let read = Format::leanmq().read(&entry(&[("data", m)]), NOW).unwrap();
        assert_eq!(read.event_type, "order.created");
        assert_eq!(read.data, br#"{"event_type":"order.created","order_id":"o-1"}"#);
        assert_eq!(get(&read, "leanmq_id"), Some("u-1"));
        assert!(!read.expired);
        let ttl = r#"{"_metadata":{"id":"u-2","timestamp":1799999990.0,"ttl":5}}"#;
        let read = Format::leanmq().read(&entry(&[("data", ttl)]), NOW).unwrap();
        assert!(read.expired);
        assert_eq!(read.event_type, "", "no type key: no type");
        let custom = Format::LeanMq { type_key: "kind".into() };
        assert_eq!(custom.read(&entry(&[("data", r#"{"kind":"k"}"#)]), NOW).unwrap().event_type, "k");
        let err = Format::leanmq().read(&entry(&[("data", r#"{"event_type":3}"#)]), NOW).unwrap_err();
        assert!(err.to_string().starts_with("not a leanmq entry: its \"event_type\""), "{err}");
    }

    #[test]
    fn a_leanmq_message_written_reads_back_and_dead_letters_as_leanmq_does() {
        let format = Format::leanmq();
        assert!(format.check(b"[1]").is_err() && format.check(b"{}").is_ok());
        let fields = format.write(&out("mq:orders", "order.created", br#"{"n":1}"#), NOW);
        let written = stored(fields);
        let message: Value = serde_json::from_slice(written.get("data").unwrap()).unwrap();
        assert_eq!(message["_metadata"]["timestamp"], json!(1_800_000_000.0));
        assert_eq!(message["_metadata"]["ttl"], Value::Null);
        assert_eq!(written.get("correlation_id"), Some(&b"c-1"[..]));
        let read = format.read(&written, NOW).unwrap();
        assert_eq!(
            (read.event_type.as_str(), read.data.as_slice()),
            ("order.created", &br#"{"event_type":"order.created","n":1}"#[..])
        );
        let dead = stored(format.dead_letter_fields(&written, "asked to reject", NOW + 1000).unwrap());
        let message: Value = serde_json::from_slice(dead.get("data").unwrap()).unwrap();
        assert_eq!(message["_failures"], json!([{"timestamp": 1_800_000_001.0, "reason": "asked to reject"}]));
        assert_eq!(message["_metadata"]["id"], json!(get(&read, "leanmq_id").unwrap()));
        assert_eq!(Format::Sluice.dead_letter_fields(&written, "x", NOW), None);
    }

    #[test]
    fn sluice_entries_are_read_and_written_as_before() {
        let fields = Format::Sluice.write(&out("o", "x", b"{}"), NOW);
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["type", "data", "source", "correlation_id", "causation_id", "traceparent"]);
        let read = Format::Sluice.read(&stored(fields), NOW).unwrap();
        assert_eq!((read.event_type.as_str(), read.data.as_slice()), ("x", &b"{}"[..]));
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
