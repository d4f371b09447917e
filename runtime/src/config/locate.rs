//! Finding where a dotted key sits in the config source, for error messages.

use toml_edit::{Document, Item};

/// Byte offset of the value at `path` (e.g. `["handlers", "payment", "plugin"]`)
/// in `source`; the deepest enclosing key that exists when the full path does
/// not (a missing key points at its table).
pub fn offset_of(source: &str, path: &[&str]) -> Option<usize> {
    let doc = Document::parse(source).ok()?;
    let mut item: &Item = doc.as_item();
    let mut best = None;
    for (depth, key) in path.iter().enumerate() {
        let Some(next) = item.get(*key) else { break };
        if let Some(span) = next.span() {
            best = Some(span.start);
        } else if let Some(span) = key_span(item, key) {
            best = Some(span);
        }
        item = next;
        // An array element: index with the following path segment.
        if let (Some(arr), Some(idx)) = (item.as_array(), path.get(depth + 1))
            && let Some(v) = idx.parse::<usize>().ok().and_then(|i| arr.get(i))
        {
            return v.span().map(|s| s.start).or(best);
        }
    }
    best
}

/// The dotted key of the `key = value` line holding byte `offset`, with its
/// table header, e.g. `handlers.payment.timeout_ms`. Works on text that may
/// not parse, so it is a line-based approximation: inline tables and
/// multi-line values give `None` or the nearest key.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = source[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let header = source[..line_start].lines().rev().map(str::trim).find(|l| l.starts_with('[') && l.ends_with(']'));
    Some(match header {
        Some(h) => format!("{}.{key}", h.trim_matches(|c| c == '[' || c == ']').trim()),
        None => key.to_owned(),
    })
}

/// Offset of `key` itself inside the table `item`.
fn key_span(item: &Item, key: &str) -> Option<usize> {
    let table = item.as_table_like()?;
    let (k, _) = table.get_key_value(key)?;
    k.span().map(|s| s.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_and_array_elements() {
        let src = "[handlers.pay]\nplugin = \"p.wasm\"\nstreams = [\"a\", \"b\"]\n";
        assert_eq!(offset_of(src, &["handlers", "pay", "plugin"]), Some(24));
        let b = src.find("\"b\"").unwrap();
        assert_eq!(offset_of(src, &["handlers", "pay", "streams", "1"]), Some(b));
    }

    #[test]
    fn key_at_names_the_line_key_under_its_table() {
        let src = "[redis]\nurl = 1\n\n[handlers.pay]\ntimeout_ms = \"x\"\n";
        let at = src.find("\"x\"").unwrap();
        assert_eq!(key_at(src, at).as_deref(), Some("handlers.pay.timeout_ms"));
        assert_eq!(key_at(src, src.find("url").unwrap()).as_deref(), Some("redis.url"));
        assert_eq!(key_at(src, 0), None);
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let src = "[handlers.pay]\nplugin = \"p.wasm\"\n";
        let at = offset_of(src, &["handlers", "pay", "group"]);
        assert!(at.is_some());
    }
}
