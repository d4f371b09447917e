//! `[schemas]`: a JSON Schema per event-type glob, checked when an event is
//! published (by `sluice publish` or a handler) and before a handler runs.
//!
//! An event's `data` must satisfy every schema whose glob matches its type;
//! types no glob matches are not checked. A failure is an ordinary outcome
//! ([`Invalid`], no backtrace): the consumer dead-letters the event with it
//! as the reason, without running the plugin.

use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Validation errors quoted in one reason; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 3;
/// Longest one quoted validation error may be (they quote the bad value).
const MAX_ERROR_CHARS: usize = 200;

/// Every schema of a config, compiled.
#[derive(Default)]
pub struct Schemas {
    schemas: Vec<Schema>,
    /// `schemas[i].pattern`, compiled: match `i` is schema `i`.
    globs: GlobSet,
}

/// One `"glob" = "file.json"` line.
struct Schema {
    /// The schema file as written in the config (for messages).
    shown: String,
    /// The schema file, resolved against the config's folder.
    file: PathBuf,
    validator: jsonschema::Validator,
}

/// Why a schema line was refused: the glob, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The glob the line maps (its key in `[schemas]`).
    pub pattern: String,
    /// What is wrong, naming the schema file as written in the config.
    pub message: String,
}

/// An event that fails its type's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The event's type.
    pub event_type: String,
    /// The schema file, as written in the config.
    pub schema: String,
    /// What is wrong: validation errors with their JSON pointers, or why the
    /// data is not JSON.
    pub errors: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} event: {} (schema {})", self.event_type, self.errors, self.schema)
    }
}

impl Schemas {
    /// Reads and compiles each schema file of `[schemas]`, resolving paths
    /// against `base`. Fails on the first glob, file or schema that is wrong.
    pub fn compile(base: &Path, lines: &BTreeMap<String, String>) -> Result<Schemas, SchemaError> {
        let mut globs = GlobSetBuilder::new();
        let mut schemas = Vec::with_capacity(lines.len());
        for (pattern, shown) in lines {
            let error = |message: String| SchemaError { pattern: pattern.clone(), message };
            let glob = Glob::new(pattern).map_err(|e| error(format!("bad glob {pattern:?}: {}", e.kind())))?;
            globs.add(glob);
            let file = base.join(shown);
            let validator = load(&file, shown).map_err(error)?;
            schemas.push(Schema { shown: shown.clone(), file, validator });
        }
        let globs = globs.build().map_err(|e| SchemaError { pattern: String::new(), message: e.to_string() })?;
        Ok(Schemas { schemas, globs })
    }

    /// Whether there are no schemas at all.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// The schema files, for the reloader to watch.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.schemas.iter().map(|s| s.file.as_path())
    }

    /// Checks `data` against every schema for `event_type`; the first that
    /// fails is the answer. Data that is not JSON fails any schema.
    pub fn check(&self, event_type: &str, data: &[u8]) -> Result<(), Invalid> {
        if self.schemas.is_empty() {
            return Ok(());
        }
        let matching = self.globs.matches(event_type);
        let Some(&first) = matching.first() else { return Ok(()) };
        let invalid = |i: usize, errors: String| Invalid {
            event_type: event_type.to_owned(),
            schema: self.schemas[i].shown.clone(),
            errors,
        };
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| invalid(first, format!("data is not JSON ({e})")))?;
        for i in matching {
            let validator = &self.schemas[i].validator;
            if !validator.is_valid(&value) {
                return Err(invalid(i, describe(validator.iter_errors(&value))));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.schemas.iter().map(|s| &s.shown)).finish()
    }
}

/// The schema in `file`, compiled. Formats (`email`, `date-time`, ...) are
/// checked, not just noted, whatever the schema's draft.
fn load(file: &Path, shown: &str) -> Result<jsonschema::Validator, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read schema file {shown}: {e}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("schema file {shown} is not JSON: {e}"))?;
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| format!("schema file {shown} is not a valid JSON Schema: {e}"))
}

/// The first few validation errors, each with where in the data it is.
fn describe<'a>(errors: impl Iterator<Item = jsonschema::ValidationError<'a>>) -> String {
    let mut shown = Vec::with_capacity(MAX_ERRORS_SHOWN);
    let mut more = 0;
    for e in errors {
        if shown.len() == MAX_ERRORS_SHOWN {
            more += 1;
            continue;
        }
        let message = shorten(e.to_string());
        let at = e.instance_path().as_str();
        shown.push(if at.is_empty() { message } else { format!("{at}: {message}") });
    }
    let mut text = shown.join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

fn shorten(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, Result<Schemas, SchemaError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = BTreeMap::new();
        for (pattern, name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
            lines.insert(pattern.to_string(), name.to_string());
        }
        let compiled = Schemas::compile(dir.path(), &lines);
        (dir, compiled)
    }

    const ORDER: &str = r#"{"type": "object", "required": ["order_id", "total"],
        "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}, "email": {"format": "email"}}}"#;

    #[test]
    fn checks_only_the_types_its_globs_match() {
        let (_d, s) = schemas(&[("order.*", "order.json", ORDER)]);
        let s = s.unwrap();
        assert_eq!(s.check("order.created", br#"{"order_id": "o-1", "total": 4.5}"#), Ok(()));
        assert_eq!(s.check("user.created", b"not even json"), Ok(()));
        let bad = s.check("order.created", br#"{"order_id": 7, "total": "x"}"#).unwrap_err();
        assert_eq!(bad.schema, "order.json");
        assert_eq!(bad.errors, r#"/order_id: 7 is not of type "string"; /total: "x" is not of type "number""#);
        assert_eq!(
            bad.to_string(),
            r#"invalid order.created event: /order_id: 7 is not of type "string"; /total: "x" is not of type "number" (schema order.json)"#
        );
    }

    #[test]
    fn every_matching_schema_applies() {
        let strict = r#"{"required": ["currency"]}"#;
        let (_d, s) = schemas(&[("order.*", "order.json", ORDER), ("*.created", "created.json", strict)]);
        let s = s.unwrap();
        let bad = s.check("order.created", br#"{"order_id": "o-1", "total": 1}"#).unwrap_err();
        assert_eq!(bad.schema, "created.json");
        assert_eq!(bad.errors, r#""currency" is a required property"#);
        assert_eq!(s.check("order.paid", br#"{"order_id": "o-1", "total": 1}"#), Ok(()));
        let bad = s.check("order.created", br#"{"currency": "EUR"}"#).unwrap_err();
        assert_eq!(bad.schema, "order.json", "the second matching schema is checked too");
    }

    #[test]
    fn data_that_is_not_json_fails_and_formats_are_checked() {
        let (_d, s) = schemas(&[("order.*", "order.json", ORDER)]);
        let s = s.unwrap();
        let bad = s.check("order.created", b"{oops").unwrap_err();
        assert!(bad.errors.starts_with("data is not JSON (key must be a string at line 1 column 2"), "{}", bad.errors);
        let bad = s.check("order.created", br#"{"order_id": "o", "total": 1, "email": "nope"}"#).unwrap_err();
        assert_eq!(bad.errors, r#"/email: "nope" is not a "email""#);
    }

    #[test]
    fn many_errors_are_counted_and_long_ones_cut() {
        let (_d, s) = schemas(&[("t", "t.json", r#"{"items": {"type": "string"}}"#)]);
        let s = s.unwrap();
        let long = format!("[1, 2, 3, 4, 5, [\"{}\"]]", "x".repeat(500));
        let bad = s.check("t", long.as_bytes()).unwrap_err();
        assert!(bad.errors.ends_with("; and 3 more"), "{}", bad.errors);
        let (_d, s) = schemas(&[("t", "t.json", r#"{"type": "string"}"#)]);
        let bad = s.unwrap().check("t", long.as_bytes()).unwrap_err();
        assert!(bad.errors.chars().count() <= MAX_ERROR_CHARS + 1, "{}", bad.errors);
        assert!(bad.errors.ends_with('…'));
    }

    #[test]
    fn refs_reach_only_within_the_file_and_older_drafts_work() {
        let local = r##"{"$defs": {"id": {"type": "string"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}"##;
        let (_d, s) = schemas(&[("t", "t.json", local)]);
        assert_eq!(s.unwrap().check("t", br#"{"id": 1}"#).unwrap_err().errors, r#"/id: 1 is not of type "string""#);
        for outside in ["other.json", "https://example.com/s.json"] {
            let (_d, s) = schemas(&[("t", "t.json", &format!(r#"{{"$ref": "{outside}"}}"#))]);
            let e = s.err().unwrap_or_else(|| panic!("{outside} resolved"));
            assert!(e.message.contains("is not a valid JSON Schema"), "{}", e.message);
        }
        let draft7 = r#"{"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}"#;
        let (_d, s) = schemas(&[("t", "t.json", draft7)]);
        assert!(s.unwrap().check("t", b"[1]").is_err(), "draft 7 tuple items");
    }

    #[test]
    fn bad_files_name_the_glob_the_file_and_the_reason() {
        let (_d, s) = schemas(&[("order.*", "order.json", "{\n  \"type\": \"object\",\n}")]);
        let e = s.unwrap_err();
        assert_eq!(e.pattern, "order.*");
        assert!(e.message.starts_with("schema file order.json is not JSON: trailing comma at line 3"), "{}", e.message);
        let (_d, s) = schemas(&[("order.*", "order.json", r#"{"type": 12}"#)]);
        let e = s.unwrap_err();
        assert!(e.message.starts_with("schema file order.json is not a valid JSON Schema: "), "{}", e.message);
        let dir = tempfile::tempdir().unwrap();
        let lines = BTreeMap::from([("a".to_owned(), "missing.json".to_owned())]);
        let e = Schemas::compile(dir.path(), &lines).unwrap_err();
        assert!(e.message.starts_with("cannot read schema file missing.json: "), "{}", e.message);
    }
}
