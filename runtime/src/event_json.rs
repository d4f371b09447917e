//! The JSON form of one event: what `sluice invoke --event` reads and
//! `sluice dlq show --json` prints, so a failed event can be saved and run
//! again offline.
//!
//! ```json
//! {"stream": "orders", "id": "1700000000000-0", "type": "order.created",
//!  "data": {"order_id": "o-1"}, "fields": {"correlation_id": "c-1"}, "attempt": 1}
//! ```
//! `id`, `fields` and `attempt` are optional. `data` is any JSON value, or a
//! string for a payload that is not JSON (or is a JSON string).

use crate::event::{Entry, field};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The id an event file without one gets.
pub const DEFAULT_ID: &str = "0-1";

/// One event as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// The stream it was (or would be) read from.
    pub stream: String,
    /// Its entry id; [`DEFAULT_ID`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `type` field.
    #[serde(rename = "type", default)]
    pub event_type: String,
    /// The `data` field: parsed JSON, or the raw text when it is not JSON
    /// or is itself a JSON string (so the bytes survive a round trip).
    #[serde(default)]
    pub data: Value,
    /// Every other field of the entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Which delivery this is; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl EventJson {
    /// The JSON form of `entry`, read from `stream`.
    pub fn from_entry(stream: &str, entry: &Entry, attempt: Option<u32>) -> EventJson {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let fields = entry
            .fields
            .iter()
            .filter(|(k, _)| k != field::TYPE && k != field::DATA)
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let data = match entry.get(field::DATA) {
            Some(raw) => match serde_json::from_slice::<Value>(raw) {
                Ok(v) if !v.is_string() => v,
                _ => Value::String(text(raw)),
            },
            None => Value::Null,
        };
        EventJson {
            stream: stream.to_owned(),
            id: Some(entry.id.clone()),
            event_type: entry.event_type(),
            data,
            fields,
            attempt,
        }
    }

    /// The entry this event stands for: `type`, `data` (unless null), then
    /// the other fields.
    pub fn to_entry(&self) -> Entry {
        let mut fields = vec![(field::TYPE.to_owned(), self.event_type.clone().into_bytes())];
        match &self.data {
            Value::Null => {}
            Value::String(s) => fields.push((field::DATA.to_owned(), s.clone().into_bytes())),
            other => fields.push((field::DATA.to_owned(), other.to_string().into_bytes())),
        }
        fields.extend(self.fields.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
        Entry { id: self.id.clone().unwrap_or_else(|| DEFAULT_ID.to_owned()), fields }
    }

    /// Which delivery this is (1 when not given).
    pub fn attempt(&self) -> u32 {
        self.attempt.unwrap_or(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry { id: "5-0".into(), fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect() }
    }

    #[test]
    fn the_issue_example_parses_with_optional_keys_absent() {
        let e: EventJson =
            serde_json::from_str(r#"{"stream": "orders", "type": "order.created", "data": {"total": 42.5}}"#).unwrap();
        let entry = e.to_entry();
        assert_eq!(entry.id, DEFAULT_ID);
        assert_eq!(entry.get("data"), Some(&br#"{"total":42.5}"#[..]));
        assert_eq!(e.attempt(), 1);
    }

    #[test]
    fn entries_survive_a_round_trip_byte_for_byte() {
        for data in [r#"{"a":1}"#, "not json", r#""a json string""#, "[1,2]"] {
            let original = entry(&[("type", "t"), ("data", data), ("correlation_id", "c-1")]);
            let json = serde_json::to_string(&EventJson::from_entry("s", &original, Some(2))).unwrap();
            let back: EventJson = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_entry(), original, "{json}");
            assert_eq!(back.attempt(), 2);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_json::from_str::<EventJson>(r#"{"stream": "s", "payload": 1}"#).is_err());
    }
}
