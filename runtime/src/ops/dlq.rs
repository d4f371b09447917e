//! Dead-letter entries as operators see them: listing with filters, one
//! entry in full, and purging.

use super::session::Session;
use super::time;
pub use crate::dead_letter::DeadLetter;
use crate::stream;

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

/// Dead-letter entry `e` of stream `dl`, its event read in the format of
/// the stream it came from.
fn read(session: &Session, dl: &str, e: &crate::event::Entry) -> DeadLetter {
    let d = DeadLetter::from_entry(dl, e);
    let format = session.config.streams.format(&d.event.stream).clone();
    d.read_as(&format)
}

/// Every dead-letter entry the filter keeps, oldest first within each
/// dead-letter stream.
pub async fn list(session: &mut Session, filter: &Filter) -> anyhow::Result<Vec<DeadLetter>> {
    let mut found = Vec::new();
    for dl in session.dead_letter_streams() {
        let entries = stream::range(&mut session.conn, &dl, "-", "+").await?;
        found.extend(entries.iter().map(|e| read(session, &dl, e)).filter(|d| filter.keeps(d)));
    }
    Ok(found)
}

/// The newest `n` dead-letter entries of all the config's dead-letter
/// streams, newest first.
pub async fn latest(session: &mut Session, n: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let mut found = Vec::new();
    for dl in session.dead_letter_streams() {
        let entries = stream::latest(&mut session.conn, &dl, n).await?;
        found.extend(entries.iter().map(|e| read(session, &dl, e)));
    }
    found.sort_by(|a, b| b.failed_at.cmp(&a.failed_at).then_with(|| b.id.cmp(&a.id)));
    found.truncate(n);
    Ok(found)
}

/// The dead-letter entry with id `id`, in whichever dead-letter stream holds it.
pub async fn show(session: &mut Session, id: &str) -> anyhow::Result<DeadLetter> {
    for dl in session.dead_letter_streams() {
        if let Some(e) = stream::range(&mut session.conn, &dl, id, id).await?.first() {
            return Ok(read(session, &dl, e));
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
