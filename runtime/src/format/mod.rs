//! Stream formats, in one place: how an entry of a stream is read as an
//! event, and how an event is written to a stream, for each `format` a
//! `[streams."NAME"]` table can give (`config.toml`):
//!
//! - **`sluice`** (the default): the event type is the `type` field, the
//!   data the `data` field, and every field is the handler's.
//! - **`cloudevents`** ([`cloudevents`]): the `data` field holds a
//!   CloudEvent in structured mode (JSON), as Dapr's `pubsub.redis` writes
//!   it (beside a `metadata` field).
//! - **`leanmq`** ([`leanmq`]): the `data` field holds a JSON object, the
//!   message, with LeanMQ's `_metadata` (`id`, `timestamp`, `ttl`) in it.
//!
//! An entry that does not parse as its stream's format is [`Malformed`]: it
//! is dead-lettered with that reason, without running the plugin
//! ([`crate::dispatch::admit`]). What Sluice writes (publishes, `sluice
//! publish`, the HTTP ingress) is written by [`Format::write`], so
//! producers and consumers of the same format read it. Payloads pass
//! through as their producer wrote them: JSON values are copied, never
//! re-encoded, so key order and number precision are kept.

pub mod cloudevents;
pub mod leanmq;

pub use leanmq::DEFAULT_TYPE_KEY as DEFAULT_LEANMQ_TYPE_KEY;

use crate::event::{Entry, field, lossy};
use indexmap::IndexMap;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

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
    /// Its producer's time to live has passed.
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
    /// What names this event among all: a handler's publish is named by its
    /// handler, its cause and its place among the delivery's publishes. Its
    /// CloudEvents or LeanMQ id is derived from it, so the same publish
    /// written again (its cause delivered twice) has the same id, and a
    /// consumer can drop the duplicate. `None`: a random id.
    pub id_seed: Option<&'a str>,
}

impl Outgoing<'_> {
    /// Sluice's lineage fields that are set, by Sluice's names.
    fn lineage(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (field::SOURCE, self.source),
            (field::CORRELATION_ID, self.correlation_id),
            (field::CAUSATION_ID, self.causation_id),
            (field::TRACEPARENT, self.traceparent),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
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
            Format::CloudEvents => cloudevents::read(entry, now_ms).map_err(malformed),
            Format::LeanMq { type_key } => leanmq::read(entry, type_key, now_ms).map_err(malformed),
        }
    }

    /// Why `data` cannot be written as an event of this format, if it cannot
    /// (checked when a handler publishes, so the handler hears of it).
    pub fn check(&self, data: &[u8]) -> Result<(), String> {
        match self {
            Format::LeanMq { .. } => leanmq::check(data),
            Format::Sluice | Format::CloudEvents => Ok(()),
        }
    }

    /// The data a handler of this stream will get for an event of type
    /// `event_type` written with `data`: what a schema must accept. (A
    /// LeanMQ message holds its type.)
    pub fn delivered<'a>(&self, event_type: &str, data: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Format::LeanMq { type_key } => leanmq::delivered(type_key, event_type, data),
            Format::Sluice | Format::CloudEvents => Cow::Borrowed(data),
        }
    }

    /// The fields of `out` as an entry of this format.
    pub fn write(&self, out: &Outgoing) -> Vec<(String, Vec<u8>)> {
        match self {
            Format::Sluice => {
                let mut fields = vec![
                    (field::TYPE.into(), out.event_type.as_bytes().to_vec()),
                    (field::DATA.into(), out.data.to_vec()),
                ];
                fields.extend(out.lineage().map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec())));
                fields.extend(out.extra.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
                fields
            }
            Format::CloudEvents => cloudevents::write(out, crate::ops::time::now_ms()),
            Format::LeanMq { type_key } => leanmq::write(out, type_key, crate::ops::time::now_ms()),
        }
    }

    /// The fields a dead letter keeps of `entry`, which failed for `reason`
    /// at `now_ms`, when they differ from the entry's: a LeanMQ message
    /// gets LeanMQ's own record of the failure, as its `move_to_dlq`
    /// writes it.
    pub fn dead_letter_fields(&self, entry: &Entry, reason: &str, now_ms: u64) -> Option<Vec<(String, Vec<u8>)>> {
        match self {
            Format::LeanMq { .. } => leanmq::dead_letter_fields(entry, reason, now_ms),
            Format::Sluice | Format::CloudEvents => None,
        }
    }
}

/// The format an entry of a stream in Sluice's format seems to be in
/// instead, when it has no `type` field and its `data` holds a CloudEvent
/// or a LeanMQ message: its stream's `[streams]` table is likely missing.
pub fn looks_like(entry: &Entry) -> Option<&'static str> {
    if entry.get(field::TYPE).is_some() {
        return None;
    }
    let data = entry.get(field::DATA)?;
    let has = |key: &[u8]| data.windows(key.len()).any(|w| w == key);
    // The scan first: only data that names one of the keys is parsed.
    let (ce, leanmq) = (has(b"\"specversion\""), has(b"\"_metadata\""));
    if !ce && !leanmq {
        return None;
    }
    let object = object(data).ok()?;
    if ce && object.contains_key("specversion") {
        return Some("cloudevents");
    }
    (leanmq && object.contains_key("_metadata")).then_some("leanmq")
}

/// The lineage a handler's publishes carry from the event it handled, given
/// the fields that event was read with: (its correlation id, its
/// traceparent).
pub fn lineage(read_fields: &[(String, String)]) -> (Option<&str>, Option<&str>) {
    let get = |name: &str| read_fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    (get(field::CORRELATION_ID), get(field::TRACEPARENT))
}

/// A JSON object whose values are kept as written, in order.
type Object = IndexMap<String, Box<RawValue>>;

/// The `data` field as a JSON object (`what` it holds), or why it is not.
fn object_in_data(entry: &Entry, what: &str) -> Result<Object, String> {
    let raw = entry.get(field::DATA).ok_or_else(|| format!("it has no \"data\" field (which holds the {what})"))?;
    object(raw).map_err(|why| format!("its \"data\" field {why} (the {what} is a JSON object)"))
}

/// `raw` as a JSON object, or what it is instead.
fn object(raw: &[u8]) -> Result<Object, String> {
    serde_json::from_slice::<Object>(raw).map_err(|_| match serde_json::from_slice::<&RawValue>(raw) {
        Ok(_) => "is JSON but not an object".to_owned(),
        Err(e) => format!("is not JSON ({e})"),
    })
}

/// `value` as a raw JSON value.
fn raw(value: impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(&value).expect("plain values serialise")
}

/// `raw` as text for a field: a string's contents, else its JSON.
fn text(raw: &RawValue) -> String {
    serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned())
}

/// A random (version 4) UUID, as CloudEvents and LeanMQ ids are.
fn uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(&b)
}

/// The id of `out`: derived from its [`Outgoing::id_seed`] (a version 8,
/// name-based UUID from its SHA-256), else random.
fn event_id(out: &Outgoing) -> String {
    let Some(seed) = out.id_seed else { return uuid() };
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes());
    let mut b: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(&b)
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h = crate::wasm::hex(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Unix milliseconds as fractional seconds, as LeanMQ's timestamps are.
fn unix_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Unix milliseconds as RFC 3339, as CloudEvents' `time` is.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with `fields`, as stored.
    pub(super) fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry { id: "7-0".into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    /// The value of field `name` of `read`.
    pub(super) fn get<'a>(read: &'a Read, name: &str) -> Option<&'a str> {
        read.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// An event with every lineage field set.
    pub(super) fn out<'a>(stream: &'a str, event_type: &'a str, data: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            stream,
            event_type,
            data,
            source: Some("h"),
            correlation_id: Some("c-1"),
            causation_id: Some("1-0"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            extra: &[],
            id_seed: None,
        }
    }

    #[test]
    fn sluice_entries_are_read_and_written_as_before() {
        let fields = Format::Sluice.write(&out("o", "x", b"{}"));
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["type", "data", "source", "correlation_id", "causation_id", "traceparent"]);
        let read = Format::Sluice.read(&Entry { id: "8-0".into(), fields }, 0).unwrap();
        assert_eq!((read.event_type.as_str(), read.data.as_slice()), ("x", &b"{}"[..]));
        let untyped = Format::Sluice.read(&entry(&[("type", "t"), ("n", "1")]), 0).unwrap();
        let data: serde_json::Value = serde_json::from_slice(&untyped.data).unwrap();
        assert_eq!(data, serde_json::json!({"type": "t", "n": "1"}), "no data field: all fields as JSON");
    }

    #[test]
    fn objects_keep_their_values_and_order_as_written() {
        let o = object(br#"{"z": 1, "a": 12345678901234567890123, "m": 0.10000000000000000001}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"z":1,"a":12345678901234567890123,"m":0.10000000000000000001}"#
        );
        assert_eq!(object(b"[1]").unwrap_err(), "is JSON but not an object");
        assert!(object(b"nope").unwrap_err().starts_with("is not JSON"));
    }

    #[test]
    fn an_envelope_in_a_sluice_stream_is_recognised() {
        let ce = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        assert_eq!(looks_like(&entry(&[("data", ce), ("metadata", "{}")])), Some("cloudevents"));
        assert_eq!(looks_like(&entry(&[("data", r#"{"a":1,"_metadata":{}}"#)])), Some("leanmq"));
        assert_eq!(looks_like(&entry(&[("type", "t"), ("data", ce)])), None, "typed: Sluice's own");
        assert_eq!(looks_like(&entry(&[("data", r#"{"note":"_metadata"}"#)])), None);
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn a_publish_written_again_has_the_same_id() {
        let id = |seed: Option<&str>| event_id(&Outgoing { id_seed: seed, ..Default::default() });
        let first = id(Some("h\norders\n1-0\n0"));
        assert_eq!(first, id(Some("h\norders\n1-0\n0")));
        assert_eq!(&first[14..15], "8", "{first}");
        assert_ne!(first, id(Some("h\norders\n1-0\n1")), "the next publish of the same delivery");
        assert_ne!(id(None), id(None));
        for format in [Format::CloudEvents, Format::leanmq()] {
            let o = Outgoing { stream: "s", event_type: "t", data: b"{}", id_seed: Some("x"), ..Default::default() };
            let read = format.read(&Entry { id: "1-0".into(), fields: format.write(&o) }, 0).unwrap();
            let key = if format == Format::CloudEvents { "id" } else { "leanmq_id" };
            assert_eq!(get(&read, key), Some(id(Some("x")).as_str()), "{}", format.name());
        }
    }
}
