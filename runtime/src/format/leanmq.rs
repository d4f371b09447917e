//! The `leanmq` format: the `data` field holds a JSON object, the message,
//! as the `leanmq` Python package's `send_message` writes it, with its
//! `_metadata` (`id`, `timestamp` in fractional Unix seconds, `ttl` in
//! seconds or null) in it.
//!
//! Read: the type is the message's type key (default `event_type`); the
//! data is the message less LeanMQ's bookkeeping (`_metadata`, and the
//! `_failures` and `_requeues` its dead-letter tools add); the fields are
//! the type, the entry's other fields and the message id (`leanmq_id`). A
//! message read after `timestamp + ttl` is expired.
//!
//! Written: the data (a JSON object) with the type under the type key and a
//! fresh `_metadata`, as `send_message` writes; Sluice's lineage rides in
//! fields beside `data`, which LeanMQ does not read. A dead letter is
//! written as LeanMQ's `move_to_dlq` writes one: the failure appended to
//! `_failures`, a fresh `_metadata` keeping the message id.

use super::{Object, Outgoing, Read, event_id, object, object_in_data, raw, text, unix_secs, uuid};
use crate::event::{Entry, field, lossy};
use serde_json::json;
use std::borrow::Cow;

/// The key of a message that holds its event type, unless the stream's
/// `type_key` says otherwise (LeanMQ's own examples use it).
pub const DEFAULT_TYPE_KEY: &str = "event_type";

/// LeanMQ's metadata object inside a message.
const METADATA: &str = "_metadata";
/// LeanMQ's list of failures inside a dead-lettered message.
const FAILURES: &str = "_failures";
/// LeanMQ's list of requeues inside a requeued message.
const REQUEUES: &str = "_requeues";

pub(super) fn read(entry: &Entry, type_key: &str, now_ms: u64) -> Result<Read, String> {
    let mut message = object_in_data(entry, "LeanMQ message")?;
    let metadata = message.shift_remove(METADATA).and_then(|m| serde_json::from_str::<Object>(m.get()).ok());
    message.shift_remove(FAILURES);
    message.shift_remove(REQUEUES);
    let event_type = match message.get(type_key).map(|v| v.get()) {
        None | Some("null") => String::new(),
        Some(v) => serde_json::from_str::<String>(v)
            .map_err(|_| format!("its \"{type_key}\" (the event type) is not a string but {v}"))?,
    };
    let number = |key: &str| metadata.as_ref()?.get(key).and_then(|v| serde_json::from_str::<f64>(v.get()).ok());
    let expired = match (number("timestamp"), number("ttl")) {
        (Some(sent), Some(ttl)) => (sent + ttl) * 1000.0 <= now_ms as f64,
        _ => false,
    };
    let mut fields = vec![(field::TYPE.to_owned(), event_type.clone())];
    fields.extend(entry.fields.iter().filter(|(k, _)| k != field::DATA).map(|(k, v)| (k.clone(), lossy(v))));
    if let Some(id) = metadata.as_ref().and_then(|m| m.get("id")) {
        fields.push(("leanmq_id".to_owned(), text(id)));
    }
    let data = serde_json::to_vec(&message).expect("raw values serialise");
    Ok(Read { event_type, data, fields, expired })
}

pub(super) fn check(data: &[u8]) -> Result<(), String> {
    object(data).map(drop).map_err(|why| format!("a LeanMQ message is a JSON object, and this data {why}"))
}

pub(super) fn delivered<'a>(type_key: &str, event_type: &str, data: &'a [u8]) -> Cow<'a, [u8]> {
    match object(data) {
        Ok(mut message) if !event_type.is_empty() => {
            message.insert(type_key.to_owned(), raw(event_type));
            Cow::Owned(serde_json::to_vec(&message).expect("raw values serialise"))
        }
        _ => Cow::Borrowed(data),
    }
}

pub(super) fn write(out: &Outgoing, type_key: &str, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let mut message = match object(out.data) {
        Ok(m) => m,
        // Refused before it gets here ([`check`]); kept whole if not.
        Err(_) => Object::from_iter([("data".to_owned(), raw(lossy(out.data)))]),
    };
    if !out.event_type.is_empty() {
        message.insert(type_key.to_owned(), raw(out.event_type));
    }
    message.insert(METADATA.into(), raw(json!({"id": event_id(out), "timestamp": unix_secs(now_ms), "ttl": null})));
    let mut fields = vec![(field::DATA.to_owned(), serde_json::to_vec(&message).expect("raw values serialise"))];
    fields.extend(out.lineage().map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec())));
    fields.extend(out.extra.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    fields
}

pub(super) fn dead_letter_fields(entry: &Entry, reason: &str, now_ms: u64) -> Option<Vec<(String, Vec<u8>)>> {
    let mut message = object(entry.get(field::DATA)?).ok()?;
    let metadata = message.get(METADATA).and_then(|m| serde_json::from_str::<Object>(m.get()).ok());
    let id = metadata.and_then(|m| m.get("id").map(|id| text(id))).unwrap_or_else(uuid);
    let mut failures: Vec<serde_json::Value> =
        message.get(FAILURES).and_then(|f| serde_json::from_str(f.get()).ok()).unwrap_or_default();
    failures.push(json!({"timestamp": unix_secs(now_ms), "reason": reason}));
    message.insert(FAILURES.into(), raw(failures));
    message.insert(METADATA.into(), raw(json!({"id": id, "timestamp": unix_secs(now_ms), "ttl": null})));
    let data = serde_json::to_vec(&message).expect("raw values serialise");
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

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::tests::{entry, get, out};
    use crate::event::Entry;
    use serde_json::{Value, json};

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_leanmq_message_reads_as_its_type_and_payload() {
        let m = r#"{"order_id":"o-1","event_type":"order.created","n":12345678901234567890123,"_metadata":{"id":"u-1","timestamp":1799999999.5,"ttl":null}}"#;
        let read = Format::leanmq().read(&entry(&[("data", m)]), NOW).unwrap();
        assert_eq!(read.event_type, "order.created");
        assert_eq!(read.data, br#"{"order_id":"o-1","event_type":"order.created","n":12345678901234567890123}"#);
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
        let err = Format::leanmq().read(&entry(&[("data", "not json")]), NOW).unwrap_err();
        assert!(err.to_string().contains("is not JSON"), "{err}");
    }

    #[test]
    fn a_requeued_message_is_read_without_leanmqs_bookkeeping() {
        let m = r#"{"event_type":"t","n":1,"_failures":[{"timestamp":1.0,"reason":"x"}],"_requeues":[{}],"_metadata":{"id":"u"}}"#;
        let read = Format::leanmq().read(&entry(&[("data", m)]), NOW).unwrap();
        assert_eq!(read.data, br#"{"event_type":"t","n":1}"#);
    }

    #[test]
    fn a_leanmq_message_written_reads_back_and_dead_letters_as_leanmq_does() {
        let format = Format::leanmq();
        assert!(format.check(b"[1]").is_err() && format.check(b"{}").is_ok());
        assert_eq!(
            format.delivered("order.created", br#"{"n":1}"#).as_ref(),
            br#"{"n":1,"event_type":"order.created"}"#
        );
        let fields = super::write(&out("mq:orders", "order.created", br#"{"n":1}"#), "event_type", NOW);
        let written = Entry { id: "8-0".into(), fields };
        let message: Value = serde_json::from_slice(written.get("data").unwrap()).unwrap();
        assert_eq!(message["_metadata"]["timestamp"], json!(1_800_000_000.0));
        assert_eq!(message["_metadata"]["ttl"], Value::Null);
        assert_eq!(written.get("correlation_id"), Some(&b"c-1"[..]));
        let read = format.read(&written, NOW).unwrap();
        assert_eq!(read.event_type, "order.created");
        assert_eq!(read.data, br#"{"n":1,"event_type":"order.created"}"#);
        let dead = format.dead_letter_fields(&written, "asked to reject", NOW + 1000).unwrap();
        let dead = Entry { id: "9-0".into(), fields: dead };
        let message: Value = serde_json::from_slice(dead.get("data").unwrap()).unwrap();
        assert_eq!(message["_failures"], json!([{"timestamp": 1_800_000_001.0, "reason": "asked to reject"}]));
        assert_eq!(message["_metadata"]["id"], json!(get(&read, "leanmq_id").unwrap()));
        let again = format.dead_letter_fields(&dead, "again", NOW + 2000).unwrap();
        let again: Value = serde_json::from_slice(&again.iter().find(|(k, _)| k == "data").unwrap().1).unwrap();
        assert_eq!(again["_failures"].as_array().unwrap().len(), 2);
        assert_eq!(Format::Sluice.dead_letter_fields(&written, "x", NOW), None);
    }
}
