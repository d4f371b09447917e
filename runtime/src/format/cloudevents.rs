//! The `cloudevents` format: a CloudEvent 1.0 in structured mode (JSON) in
//! the `data` field, as Dapr's `pubsub.redis` writes it (with the request's
//! metadata, as JSON, in a `metadata` field).
//!
//! Read: the type is the CloudEvent's `type`; the data its `data` (a JSON
//! value as written; a string as its text when `datacontenttype` is not
//! JSON) or `data_base64`, decoded; the fields its attributes, its
//! `correlationid` and `causationid` extensions also under Sluice's names
//! (`correlation_id`, `causation_id`), then the entry's other fields.
//! Dapr's `expiration` extension (RFC 3339) is honoured.
//!
//! Written: a CloudEvent with a fresh id, `source` the publishing handler,
//! `time`, `topic` the stream, Sluice's lineage as `traceparent`,
//! `correlationid` and `causationid`.

use super::{Object, Outgoing, Read, event_id, object_in_data, raw, rfc3339, text};
use crate::event::{Entry, field, lossy};
use base64::Engine as _;
use serde_json::value::RawValue;

/// The extension attributes Sluice's own fields map onto (extension names
/// may hold only lower-case letters and digits).
const CORRELATION_ID: &str = "correlationid";
const CAUSATION_ID: &str = "causationid";

/// The only CloudEvents version read (and the one written).
const SPEC_VERSION: &str = "1.0";

pub(super) fn read(entry: &Entry, now_ms: u64) -> Result<Read, String> {
    let mut ce = object_in_data(entry, "CloudEvent")?;
    for required in ["specversion", "id", "source", "type"] {
        match ce.get(required).map(|v| serde_json::from_str::<String>(v.get())) {
            Some(Ok(s)) if !s.is_empty() => {}
            Some(_) => return Err(format!("its CloudEvent's \"{required}\" is not a non-empty string")),
            None => {
                return Err(format!(
                    "its CloudEvent has no \"{required}\" (CloudEvents requires id, source, specversion and type)"
                ));
            }
        }
    }
    let version = text(&ce["specversion"]);
    if version != SPEC_VERSION {
        return Err(format!("its CloudEvent's specversion is {version:?}; Sluice reads CloudEvents 1.0"));
    }
    let data = data(&mut ce)?;
    // Only RFC 3339, as Dapr reads it; anything else never expires.
    let expired = match ce.get("expiration").map(|v| text(v)) {
        Some(at) => crate::ops::time::rfc3339(&at).is_ok_and(|at| at <= now_ms),
        None => false,
    };
    let mut fields: Vec<(String, String)> = ce.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    for (ext, name) in [(CORRELATION_ID, field::CORRELATION_ID), (CAUSATION_ID, field::CAUSATION_ID)] {
        if let Some(v) = ce.get(ext) {
            fields.push((name.to_owned(), text(v)));
        }
    }
    fields.extend(entry.fields.iter().filter(|(k, _)| k != field::DATA).map(|(k, v)| (k.clone(), lossy(v))));
    Ok(Read { event_type: text(&ce["type"]), data, fields, expired })
}

/// The payload of `ce`, taken out of it: `data_base64` decoded, or `data`
/// as written (a string as its text unless the content type is JSON).
fn data(ce: &mut Object) -> Result<Vec<u8>, String> {
    if let Some(b64) = ce.shift_remove("data_base64") {
        let b64 = serde_json::from_str::<String>(b64.get())
            .map_err(|_| "its CloudEvent's \"data_base64\" is not a string".to_owned())?;
        let data = ce.shift_remove("data");
        if data.is_some() {
            return Err("its CloudEvent has both \"data\" and \"data_base64\"".into());
        }
        return base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("its CloudEvent's \"data_base64\" is not base64 ({e})"));
    }
    let json = is_json_type(ce.get("datacontenttype").map(|v| text(v)).as_deref());
    Ok(match ce.shift_remove("data") {
        None => Vec::new(),
        Some(v) if v.get() == "null" => Vec::new(),
        Some(v) if !json && v.get().starts_with('"') => text(&v).into_bytes(),
        Some(v) => v.get().as_bytes().to_vec(),
    })
}

/// Whether a CloudEvent's `datacontenttype` says its data is JSON (absent:
/// JSON, as the JSON format's spec has it).
fn is_json_type(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(t) => {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t == "application/json" || t == "text/json" || t.ends_with("+json")
        }
    }
}

pub(super) fn write(out: &Outgoing, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let mut ce = Object::new();
    ce.insert("specversion".into(), raw(SPEC_VERSION));
    ce.insert("id".into(), raw(event_id(out)));
    ce.insert("source".into(), raw(out.source.unwrap_or("sluice")));
    ce.insert("type".into(), raw(out.event_type));
    ce.insert("time".into(), raw(rfc3339(now_ms)));
    ce.insert("topic".into(), raw(out.stream));
    let json = std::str::from_utf8(out.data).ok().and_then(|s| RawValue::from_string(s.trim().to_owned()).ok());
    match (json, std::str::from_utf8(out.data)) {
        (Some(value), _) => {
            ce.insert("datacontenttype".into(), raw("application/json"));
            ce.insert("data".into(), value);
        }
        (None, Ok(text)) => {
            ce.insert("datacontenttype".into(), raw("text/plain"));
            ce.insert("data".into(), raw(text));
        }
        (None, Err(_)) => {
            ce.insert("datacontenttype".into(), raw("application/octet-stream"));
            ce.insert("data_base64".into(), raw(base64::engine::general_purpose::STANDARD.encode(out.data)));
        }
    }
    for (k, v) in out.lineage().filter(|(k, _)| *k != field::SOURCE) {
        ce.insert(attribute_name(k).to_owned(), raw(v));
    }
    // A field that is no attribute name (`reply_to`) rides beside the
    // envelope, as an entry field.
    let mut beside = Vec::new();
    for (k, v) in out.extra {
        let k = attribute_name(k);
        match is_attribute_name(k) {
            true => drop(ce.entry(k.to_owned()).or_insert_with(|| raw(v))),
            false => beside.push((k.to_owned(), v.clone().into_bytes())),
        }
    }
    let envelope = serde_json::to_vec(&ce).expect("raw values serialise");
    let mut fields = vec![(field::DATA.into(), envelope)];
    fields.extend(beside);
    fields
}

/// CloudEvents' name for Sluice's field `name`.
fn attribute_name(name: &str) -> &str {
    match name {
        field::CORRELATION_ID => CORRELATION_ID,
        field::CAUSATION_ID => CAUSATION_ID,
        other => other,
    }
}

/// Whether `name` may name a CloudEvents attribute: lower-case ASCII
/// letters and digits.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{entry, get, out};
    use super::super::{Format, Outgoing};
    use crate::event::Entry;

    const NOW: u64 = 1_800_000_000_000;

    fn stored(fields: Vec<(String, Vec<u8>)>) -> Entry {
        Entry { id: "8-0".into(), fields }
    }

    #[test]
    fn a_dapr_envelope_reads_as_its_type_and_data() {
        let ce = r#"{"specversion":"1.0","id":"e-1","source":"checkout","type":"order.created","datacontenttype":"application/json","data":{"order_id":"o-1","n":12345678901234567890123},"topic":"orders","pubsubname":"pubsub","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","correlationid":"c-9","time":"2026-11-26T10:00:00Z"}"#;
        let read = Format::CloudEvents.read(&entry(&[("data", ce), ("metadata", "{}")]), NOW).unwrap();
        assert_eq!(read.event_type, "order.created");
        assert_eq!(read.data, br#"{"order_id":"o-1","n":12345678901234567890123}"#, "as written");
        assert_eq!(get(&read, "source"), Some("checkout"));
        assert_eq!(get(&read, "id"), Some("e-1"));
        assert_eq!(get(&read, "correlation_id"), Some("c-9"));
        assert_eq!(get(&read, "metadata"), Some("{}"));
        assert!(!read.expired);
        assert_eq!(
            super::super::lineage(&read.fields).1,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }

    #[test]
    fn cloudevent_data_of_every_kind_reads_as_its_bytes() {
        let with = |rest: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"t"{rest}}}"#);
        let read = |rest: &str| Format::CloudEvents.read(&entry(&[("data", &with(rest))]), NOW);
        let data = |rest: &str| read(rest).unwrap().data;
        assert_eq!(data(r#","datacontenttype":"text/plain","data":"hi""#), b"hi");
        assert_eq!(data(r#","data":"hi""#), br#""hi""#, "no content type: JSON");
        assert_eq!(data(r#","data_base64":"AAEC""#), [0, 1, 2]);
        assert_eq!(data(""), b"");
        assert_eq!(data(r#","data":null"#), b"");
        let expired = |at: &str| read(&format!(r#","expiration":"{at}""#)).unwrap().expired;
        assert!(expired("2020-01-01T00:00:00Z"));
        assert!(expired("2020-01-01T01:00:00+01:00"));
        assert!(!expired("2099-01-01T00:00:00Z"));
        for not_rfc3339 in ["now", "3600", "-1h", "1-0", "soon"] {
            assert!(!expired(not_rfc3339), "{not_rfc3339}: only RFC 3339 expires an event");
        }
        let err = read(r#","data_base64":"AA==","data":1"#).unwrap_err();
        assert!(err.why.contains("both"), "{err}");
    }

    #[test]
    fn what_is_not_a_cloudevent_is_malformed_and_says_why() {
        for (fields, why) in [
            (vec![("type", "t")], "no \"data\" field"),
            (vec![("data", "nope")], "is not JSON"),
            (vec![("data", "[1]")], "is JSON but not an object"),
            (vec![("data", r#"{"specversion":"1.0","id":"1","type":"t"}"#)], "no \"source\""),
            (
                vec![("data", r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#)],
                "Sluice reads CloudEvents 1.0",
            ),
        ] {
            let err = Format::CloudEvents.read(&entry(&fields), NOW).unwrap_err();
            assert_eq!(err.format, "cloudevents");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn a_cloudevent_written_reads_back() {
        for data in [&br#"{"n":1,"a":0.10000000000000000001}"#[..], b"plain text", &[0xff, 0x00]] {
            let fields = Format::CloudEvents.write(&out("orders", "order.created", data));
            assert_eq!(fields.len(), 1);
            let read = Format::CloudEvents.read(&stored(fields), NOW).unwrap();
            assert_eq!((read.event_type.as_str(), read.data.as_slice()), ("order.created", data));
            assert_eq!(get(&read, "source"), Some("h"));
            assert_eq!(get(&read, "causation_id"), Some("1-0"));
            assert_eq!(get(&read, "topic"), Some("orders"));
            assert!(get(&read, "time").unwrap().ends_with('Z'));
        }
        let time = super::write(&out("o", "t", b"{}"), NOW);
        let read = Format::CloudEvents.read(&stored(time), NOW).unwrap();
        assert_eq!(get(&read, "time"), Some("2027-01-15T08:00:00.000Z"));
    }

    #[test]
    fn fields_that_are_no_attribute_names_ride_beside_the_cloudevent() {
        let extra =
            [("correlation_id".to_owned(), "c-2".to_owned()), ("reply_to".to_owned(), "sluice:reply:1".to_owned())];
        let o = Outgoing { stream: "s", event_type: "t", data: b"{}", extra: &extra, ..Default::default() };
        let entry = stored(Format::CloudEvents.write(&o));
        assert_eq!(entry.get("reply_to"), Some(&b"sluice:reply:1"[..]));
        let read = Format::CloudEvents.read(&entry, NOW).unwrap();
        assert_eq!(get(&read, "correlation_id"), Some("c-2"));
        assert_eq!(get(&read, "correlationid"), Some("c-2"));
        assert_eq!(get(&read, "source"), Some("sluice"), "a source is required; Sluice's own without a handler");
        assert_eq!(get(&read, "reply_to"), Some("sluice:reply:1"));
    }
}
