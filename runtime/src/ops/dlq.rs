//! Dead-letter entries as operators see them: listing with filters, one
//! entry in full, and purging.

use super::session::Session;
use super::time;
use crate::event::{Entry, field};
use crate::event_json::EventJson;
use crate::stream;
use serde::Serialize;
use serde_json::Value;

/// One dead-letter entry, read back.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The dead-letter stream and the entry's id there.
    pub dead_letter_stream: String,
    pub id: String,
    /// The handler that failed it, and the version of its plugin then.
    pub handler: String,
    pub plugin_version: String,
    /// Deliveries before it was given up.
    pub attempts: u32,
    /// Why: the reject reason, or the last failure.
    pub reason: String,
    /// When it failed, Unix ms.
    pub failed_at: u64,
    /// Earlier failures, for an event that was redriven before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Value>,
    /// The event as the handler saw it (the form `sluice invoke` reads).
    pub event: EventJson,
    /// The `sluice.*` fields, as stored.
    #[serde(skip)]
    failure_fields: Vec<(String, String)>,
}

impl DeadLetter {
    /// Reads the `sluice.*` fields of `entry` of `stream`.
    pub fn from_entry(stream: &str, entry: &Entry) -> DeadLetter {
        let text = |k: &str| entry.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        let origin_stream = text(field::ORIGIN_STREAM);
        let original = Entry { id: text(field::ORIGIN_ID), fields: entry.own_fields() };
        DeadLetter {
            dead_letter_stream: stream.to_owned(),
            id: entry.id.clone(),
            handler: text(field::HANDLER),
            plugin_version: text(field::PLUGIN_VERSION),
            attempts: text(field::ATTEMPTS).parse().unwrap_or(0),
            reason: text(field::ERROR),
            failed_at: text(field::FAILED_AT).parse().unwrap_or(0),
            history: serde_json::from_str(&text(field::HISTORY)).unwrap_or_default(),
            event: EventJson::from_entry(&origin_stream, &original, None),
            failure_fields: entry
                .fields
                .iter()
                .filter(|(k, _)| k.starts_with(field::SLUICE_PREFIX))
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }

    /// The event with its `sluice.*` fields too: what `dlq show --json`
    /// prints, to save and run offline with `sluice invoke --event`.
    pub fn saved_event(&self) -> EventJson {
        let mut event = self.event.clone();
        event.fields.extend(self.failure_fields.iter().cloned());
        event
    }

    /// The original entry's fields plus where it came from and its failures
    /// so far (this one last): what a redrive puts in the handler's inbox.
    pub fn inbox_fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut history = self.history.clone();
        history.push(serde_json::json!({
            "reason": self.reason,
            "handler": self.handler,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "plugin_version": self.plugin_version,
        }));
        let mut fields = self.event.to_entry().fields;
        fields.push((field::ORIGIN_STREAM.into(), self.event.stream.clone().into_bytes()));
        fields.push((field::ORIGIN_ID.into(), self.event.id.clone().unwrap_or_default().into_bytes()));
        fields.push((field::HISTORY.into(), Value::Array(history).to_string().into_bytes()));
        fields
    }
}

/// Which dead-letter entries a command works on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Failed by this handler.
    pub handler: Option<String>,
    /// Read from this stream originally.
    pub stream: Option<String>,
    /// Failed at or after this time (Unix ms).
    pub since: Option<u64>,
    /// Whose reason contains this text.
    pub error_contains: Option<String>,
}

impl Filter {
    fn keeps(&self, d: &DeadLetter) -> bool {
        self.handler.as_ref().is_none_or(|h| *h == d.handler)
            && self.stream.as_ref().is_none_or(|s| *s == d.event.stream)
            && self.since.is_none_or(|t| d.failed_at >= t)
            && self.error_contains.as_ref().is_none_or(|x| d.reason.contains(x.as_str()))
    }
}

/// Every dead-letter entry the filter keeps, oldest first within each
/// dead-letter stream.
pub async fn list(session: &mut Session, filter: &Filter) -> anyhow::Result<Vec<DeadLetter>> {
    let mut found = Vec::new();
    for dl in session.dead_letter_streams() {
        let entries = stream::range(&mut session.conn, &dl, "-", "+").await?;
        found.extend(entries.iter().map(|e| DeadLetter::from_entry(&dl, e)).filter(|d| filter.keeps(d)));
    }
    Ok(found)
}

/// The dead-letter entry with id `id`, in whichever dead-letter stream holds it.
pub async fn show(session: &mut Session, id: &str) -> anyhow::Result<DeadLetter> {
    for dl in session.dead_letter_streams() {
        if let Some(e) = stream::range(&mut session.conn, &dl, id, id).await?.first() {
            return Ok(DeadLetter::from_entry(&dl, e));
        }
    }
    anyhow::bail!("no dead-letter entry {id} in {}", session.dead_letter_streams().join(", "))
}

/// Deletes `entries` from their dead-letter streams; how many were there.
pub async fn purge(session: &mut Session, entries: &[DeadLetter]) -> anyhow::Result<usize> {
    let mut by_stream: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for d in entries {
        by_stream.entry(&d.dead_letter_stream).or_default().push(d.id.clone());
    }
    let mut deleted = 0;
    for (dl, ids) in by_stream {
        deleted += stream::delete(&mut session.conn, dl, &ids).await?;
    }
    Ok(deleted)
}

/// A table of `entries`, one line each.
pub fn table(entries: &[DeadLetter]) -> String {
    let now = time::now_ms();
    let mut out = format!(
        "{:<17} {:<16} {:<14} {:<14} {:>3} {:>5}  {:<12} {}\n",
        "ID", "DEAD-LETTER", "ORIGIN", "HANDLER", "ATT", "AGE", "VERSION", "REASON"
    );
    for d in entries {
        out.push_str(&format!(
            "{:<17} {:<16} {:<14} {:<14} {:>3} {:>5}  {:<12} {}\n",
            d.id,
            d.dead_letter_stream,
            d.event.stream,
            d.handler,
            d.attempts,
            time::age(d.failed_at, now),
            d.plugin_version,
            d.reason
        ));
    }
    out.push_str(&format!("{} entr{}\n", entries.len(), if entries.len() == 1 { "y" } else { "ies" }));
    out
}

/// One entry in full, for people: every field, the payload pretty-printed.
pub fn details(d: &DeadLetter) -> String {
    let mut out = format!(
        "id           {} in {}\norigin       {} {}\ntype         {}\nhandler      {} (plugin version {})\nattempts     {}\nfailed at    {}\nreason       {}\n",
        d.id,
        d.dead_letter_stream,
        d.event.stream,
        d.event.id.as_deref().unwrap_or("?"),
        d.event.event_type,
        d.handler,
        d.plugin_version,
        d.attempts,
        time::format(d.failed_at),
        d.reason
    );
    for (i, h) in d.history.iter().enumerate() {
        out.push_str(&format!("earlier #{}   {}\n", i + 1, h));
    }
    for (k, v) in &d.event.fields {
        out.push_str(&format!("field        {k} = {v}\n"));
    }
    let data = serde_json::to_string_pretty(&d.event.data).unwrap_or_default();
    out.push_str(&format!("data\n{data}\n"));
    out
}
