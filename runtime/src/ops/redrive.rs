//! Sending events back to one handler: dead-letter entries (`sluice dlq
//! redrive`) or a time range of a stream (`sluice replay`). Both go through
//! the handler's inbox, which only that handler reads, so the other
//! handlers on the stream never see them again.

use super::dlq::DeadLetter;
use super::session::Session;
use crate::dead_letter::replay_fields;
use crate::event::Entry;
use crate::stream;
use anyhow::bail;
use std::time::Duration;

/// How a redrive runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Only say what would be sent.
    pub dry_run: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// At most this many entries per second.
    pub rate: Option<f64>,
}

/// What happened to one dead-letter entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Redriven {
    /// Its id in the dead-letter stream.
    pub dead_letter_id: String,
    /// The handler that failed it, whose inbox it goes to.
    pub handler: String,
    /// The new entry in the handler's inbox; `None` on a dry run, when the
    /// entry was gone (redriven or purged meanwhile), or when it was left.
    pub inbox_id: Option<String>,
    /// Why it was left where it is: its data still fails its type's schema,
    /// so the handler would dead-letter it again at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub still_invalid: Option<String>,
}

/// Moves each of `entries` (up to the limit, at the rate) into the inbox of
/// the handler that failed it. Each move is one atomic script: the
/// dead-letter entry is deleted together with its copy being added, so an
/// interrupted redrive loses nothing and repeats nothing. Entries whose data
/// still fails its type's schema are left, and reported.
pub async fn redrive(session: &mut Session, entries: &[DeadLetter], pace: Pace) -> anyhow::Result<Vec<Redriven>> {
    for d in entries {
        if session.config.handler(&d.handler).is_none() {
            bail!(
                "{} was failed by handler {:?}, which {} no longer configures: nothing would read it (filter with --handler)",
                d.id,
                d.handler,
                session.config.path.display()
            );
        }
    }
    let gap = pace.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let (mut done, mut sent) = (Vec::new(), 0);
    for d in entries {
        if sent == pace.limit.unwrap_or(usize::MAX) {
            break;
        }
        if let Err(invalid) = still_valid(session, d) {
            let (dead_letter_id, handler) = (d.id.clone(), d.handler.clone());
            done.push(Redriven { dead_letter_id, handler, inbox_id: None, still_invalid: Some(invalid) });
            continue;
        }
        if let (Some(gap), true) = (gap, sent > 0) {
            tokio::time::sleep(gap).await;
        }
        sent += 1;
        let inbox_id = match pace.dry_run {
            true => None,
            false => {
                let inbox = &session.config.handler(&d.handler).expect("checked above").inbox;
                stream::move_to_inbox(&mut session.conn, &d.dead_letter_stream, &d.id, inbox, &d.inbox_fields()).await?
            }
        };
        done.push(Redriven { dead_letter_id: d.id.clone(), handler: d.handler.clone(), inbox_id, still_invalid: None });
    }
    Ok(done)
}

/// Whether `d`'s data, as its handler would see it, passes its type's schema.
fn still_valid(session: &Session, d: &DeadLetter) -> Result<(), String> {
    let format = session.config.streams.format(&d.event.stream);
    let event = format.read(&d.event.to_entry(), 0).map_err(|malformed| malformed.to_string())?;
    session.config.schemas.check(&event.event_type, &event.data).map_err(|invalid| invalid.to_string())
}

/// Copies every entry of `stream` from `from` to `to` (Unix ms, inclusive)
/// into `handler`'s inbox; returns the entries (all of them on a dry run).
pub async fn replay(
    session: &mut Session,
    stream_name: &str,
    handler: &str,
    (from, to): (u64, u64),
    dry_run: bool,
) -> anyhow::Result<Vec<Entry>> {
    let Some(h) = session.config.handler(handler) else {
        bail!("{}: no handler {handler:?}", session.config.path.display());
    };
    if !h.streams.iter().any(|s| s == stream_name) {
        bail!("handler {handler:?} does not read stream {stream_name:?} (it reads {})", h.streams.join(", "));
    }
    let entries = stream::range(&mut session.conn, stream_name, &from.to_string(), &to.to_string()).await?;
    if !dry_run {
        for chunk in entries.chunks(500) {
            let copies: Vec<_> = chunk.iter().map(|e| replay_fields(stream_name, e)).collect();
            stream::add_to_inbox(&mut session.conn, &h.inbox, &copies).await?;
        }
    }
    Ok(entries)
}
