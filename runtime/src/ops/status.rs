//! `sluice status`: for each handler and stream, how far its group has got
//! and what has piled up.

use super::session::Session;
use super::time;
use crate::config::Config;
use crate::dead_letter;
use crate::stream;
use crate::wasm;
use redis::aio::ConnectionLike;
use serde::Serialize;

/// A group this many entries behind the end of its stream is falling behind.
pub const BEHIND_LAG: u64 = 1000;

/// One handler on one stream.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The handler.
    pub handler: String,
    /// A stream it reads, or its inbox.
    pub stream: String,
    /// Whether the group exists (it is created when the handler first runs).
    pub consuming: bool,
    /// Entries not yet delivered to the handler.
    pub lag: Option<u64>,
    /// Entries removed from the stream before the handler's group read them
    /// (by another program; as last counted by the upkeep, every 5 s).
    pub removed_unread: u64,
    /// Delivered, not yet acknowledged (in flight or waiting to be retried).
    pub pending: u64,
    /// Age of the oldest pending entry, ms.
    pub oldest_pending_ms: Option<u64>,
    /// Consumers known to the handler's group on this stream.
    pub consumers: u64,
    /// Entries in this stream's dead-letter stream (all handlers').
    pub dead_letters: u64,
    /// Entries in the stream now.
    pub length: u64,
    /// Its `[streams]` bound: at most this many entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
    /// Its `[streams]` bound: none older than this, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// The plugin file's version now (first 12 hex digits of its SHA-256);
    /// filled in by [`status`] only, so a metrics scrape reads no plugin files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// Lag past [`BEHIND_LAG`], or an entry pending longer than `claim_idle_ms`.
    pub behind: bool,
}

/// A row for every handler and stream of the session's config, its inbox
/// included, with the plugin versions on disk.
pub async fn status(session: &mut Session) -> anyhow::Result<Vec<Row>> {
    let mut rows = rows(&mut session.conn, &session.config).await?;
    for h in &session.config.handlers {
        let version = std::fs::read(&h.plugin).map(|b| wasm::version(&wasm::digest(&b)));
        let version = version.unwrap_or_else(|_| "missing".into());
        for r in rows.iter_mut().filter(|r| r.handler == h.name) {
            r.plugin_version = Some(version.clone());
        }
    }
    Ok(rows)
}

/// A row for every handler and stream of `config`, its inbox included.
pub async fn rows(conn: &mut impl ConnectionLike, config: &Config) -> Result<Vec<Row>, stream::Error> {
    let now = time::now_ms();
    let mut rows = Vec::new();
    for h in &config.handlers {
        for s in h.read_streams() {
            let info = stream::group_info(conn, &s, &h.group).await?;
            let dead_letters = match dead_letter::is_inbox(&s) {
                true => 0,
                false => stream::length(conn, &h.dead_letter_stream(&s)).await?,
            };
            let consuming = info.is_some();
            let info = info.unwrap_or_default();
            let removed_unread = stream::unread::recorded(conn, &s, &h.group).await?;
            // While Redis counts the group's reads, its lag counts entries
            // removed unread too, though they will never be delivered.
            let lag = match info.entries_read {
                Some(_) => info.lag.map(|l| l.saturating_sub(removed_unread)),
                None => info.lag,
            };
            let length = stream::length(conn, &s).await?;
            let bound = config.streams.retention(&s).unwrap_or_default();
            let oldest = info.oldest_pending.as_deref().and_then(time::of_id).map(|t| now.saturating_sub(t));
            let behind = lag.is_some_and(|l| l > BEHIND_LAG) || oldest.is_some_and(|age| age > config.claim_idle_ms);
            rows.push(Row {
                handler: h.name.clone(),
                stream: s,
                consuming,
                lag,
                removed_unread,
                pending: info.pending,
                oldest_pending_ms: oldest,
                consumers: info.consumers,
                dead_letters,
                length,
                max_len: bound.max_len,
                max_age_ms: bound.max_age.map(|a| a.as_millis() as u64),
                plugin_version: None,
                behind,
            });
        }
    }
    Ok(rows)
}

/// [`rows`], or why not, within `wait`: what the admin listener's scrapes,
/// readiness checks and dashboard samples read.
pub async fn rows_within(
    conn: &mut impl ConnectionLike,
    config: &Config,
    wait: std::time::Duration,
) -> Result<Vec<Row>, String> {
    match tokio::time::timeout(wait, rows(conn, config)).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(format!("Redis: {e}")),
        Err(_) => Err(format!("Redis did not answer within {} ms", wait.as_millis())),
    }
}

/// The rows as a table; what is falling behind is marked. `LENGTH` is the
/// stream's, with its `[streams]` bound after the slash (`-`: none).
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:>7} {:>8} {:>7} {:>5} {:>5} {:>17}  {:<12} {}\n",
        "HANDLER", "STREAM", "LAG", "PENDING", "OLDEST", "CONS", "DLQ", "LENGTH/BOUND", "VERSION", "STATE"
    );
    for r in rows {
        let oldest = r.oldest_pending_ms.map_or("-".into(), |ms| time::age(time::now_ms() - ms, time::now_ms()));
        let state = match (r.consuming, r.behind) {
            (false, _) => "no group yet (never run)",
            (true, true) => "BEHIND",
            (true, false) => "ok",
        };
        let state = match r.removed_unread {
            0 => state.to_owned(),
            n => format!("{state}, {n} removed unread"),
        };
        let len = r.max_len.map(|n| n.to_string());
        let age =
            r.max_age_ms.map(|ms| format!("{}", humantime::format_duration(std::time::Duration::from_millis(ms))));
        let bound = len.into_iter().chain(age).collect::<Vec<_>>().join(",");
        let length = format!("{}/{}", r.length, if bound.is_empty() { "-" } else { &bound });
        out.push_str(&format!(
            "{:<16} {:<22} {:>7} {:>8} {:>7} {:>5} {:>5} {:>17}  {:<12} {}\n",
            r.handler,
            r.stream,
            r.lag.map_or("?".into(), |l| l.to_string()),
            r.pending,
            oldest,
            r.consumers,
            r.dead_letters,
            length,
            r.plugin_version.as_deref().unwrap_or("-"),
            state
        ));
    }
    out
}
