//! Parsing stream replies into [`Entry`] values, keeping field order (the
//! typed replies of redis-rs use a `HashMap`, which loses it).

use crate::event::Entry;
use redis::Value;

/// Text of a bulk or simple string.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Bytes of a bulk or simple string (or an integer's digits).
pub(super) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// The elements of an array or set reply; empty for anything else.
pub(super) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// One `[id, [field, value, ...]]` pair. A claimed entry that was deleted
/// meanwhile comes back as `[id, nil]`: `None`.
pub fn entry(v: &Value) -> Option<Entry> {
    let [id, fields] = items(v) else { return None };
    let id = text(id)?;
    let fields = match fields {
        Value::Nil => return None,
        f => items(f).chunks_exact(2).filter_map(|kv| Some((text(&kv[0])?, bytes(&kv[1])?))).collect(),
    };
    Some(Entry { id, fields })
}

/// A list of entries (`XRANGE`, `XCLAIM`).
pub fn entries(v: &Value) -> Vec<Entry> {
    items(v).iter().filter_map(entry).collect()
}

/// An `XREADGROUP` reply: `[[stream, [entries]], ...]` (RESP2) or a map
/// (RESP3); `nil` when the block timed out.
pub fn read_reply(v: &Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Map(pairs) => pairs.iter().filter_map(|(k, e)| Some((text(k)?, entries(e)))).collect(),
        _ => items(v)
            .iter()
            .filter_map(|s| match items(s) {
                [k, e] => Some((text(k)?, entries(e))),
                _ => None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn keeps_field_order() {
        let v = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")])]);
        let e = entry(&v).unwrap();
        assert_eq!(e.fields[0].0, "b");
        assert_eq!(e.fields[1].0, "a");
    }

    #[test]
    fn deleted_entries_are_skipped() {
        let v = Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Nil])]);
        assert!(entries(&v).is_empty());
    }

    #[test]
    fn parses_xreadgroup() {
        let e = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("type"), bulk("t")])]);
        let v = Value::Array(vec![Value::Array(vec![bulk("orders"), Value::Array(vec![e])])]);
        let got = read_reply(&v);
        assert_eq!(got[0].0, "orders");
        assert_eq!(got[0].1[0].id, "1-0");
    }
}
