//! Sending events back to one handler: dead-letter entries (`sluice dlq
//! redrive`) or a time range of a stream (`sluice replay`). Both go through
//! the handler's inbox, which only that handler reads, so the other
//! handlers on the stream never see them again.

use super::dlq::DeadLetter;
use super::session::Session;
use crate::dead_letter::replay_fields;
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
    // Which cluster masters have replicas, asked once for many moves.
    let mut replicas = stream::Replicas::default();
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
                let fields = d.inbox_fields();
                let moved = stream::move_to_inbox(
                    &mut session.conn,
                    &mut replicas,
                    &d.dead_letter_stream,
                    &d.id,
                    inbox,
                    &fields,
                );
                moved.await.map_err(|e| {
                    let before = done.iter().filter(|r: &&Redriven| r.inbox_id.is_some()).count();
                    anyhow::anyhow!(
                        "{e}\nredrove {before} entr(ies) before this; {} and the rest are still dead letters. Each move is atomic: running the same redrive again moves them, and nothing twice",
                        d.id
                    )
                })?
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

/// What a replay did: how many entries it added to the inbox (on a dry
/// run, would add), and the first and last of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// How many.
    pub count: usize,
    /// The first one's id in the stream.
    pub first: Option<String>,
    /// The last one's id in the stream.
    pub last: Option<String>,
}

impl Replayed {
    fn add(&mut self, id: &str) {
        self.count += 1;
        self.first.get_or_insert_with(|| id.to_owned());
        self.last = Some(id.to_owned());
    }
}

/// Copies every entry of `stream_name` from `start` to `end` (XRANGE
/// bounds, inclusive: an id, or Unix ms for the whole millisecond) into
/// `handler`'s inbox, 500 at a time, as they are read. A replay that fails
/// part-way says how many it added and the id to go on from (`--from`);
/// going on from there adds nothing twice, unless Redis refused an entry in
/// the middle of a page and took the ones after it (those are counted, and
/// the error says so).
pub async fn replay(
    session: &mut Session,
    stream_name: &str,
    handler: &str,
    (start, end): (&str, &str),
    dry_run: bool,
) -> anyhow::Result<Replayed> {
    let Some(h) = session.config.handler(handler) else {
        bail!("{}: no handler {handler:?}", session.config.path.display());
    };
    if !h.streams.iter().any(|s| s == stream_name) {
        bail!("handler {handler:?} does not read stream {stream_name:?} (it reads {})", h.streams.join(", "));
    }
    let inbox = h.inbox.clone();
    let mut done = Replayed::default();
    let mut from = start.to_owned();
    // Why it stopped, and the first entry not replayed; then how many after
    // that one were added all the same.
    let stopped = |done: &Replayed, e: &dyn std::fmt::Display, next: &str, again: usize| {
        let span = match (&done.first, &done.last) {
            (Some(a), Some(b)) => format!(" ({a} … {b})"),
            _ => String::new(),
        };
        let again = match again {
            0 => String::new(),
            n => {
                format!("; {n} entr(ies) after {next} were added all the same, and going on from there adds them again")
            }
        };
        anyhow::anyhow!(
            "{e}\nreplayed {} entr(ies) of {stream_name} to {handler}{span} before this; the rest, from {next} on, were not{again}. To go on: sluice replay --stream {stream_name} --handler {handler} --from {next} --to {end}",
            done.count
        )
    };
    loop {
        let page = match stream::range_page(&mut session.conn, stream_name, &from, end).await {
            Ok(page) => page,
            Err(e) => {
                let next = done.last.as_deref().map_or_else(|| start.to_owned(), next_id);
                return Err(stopped(&done, &e, &next, 0));
            }
        };
        let Some(last) = page.last() else { break };
        let full = page.len() == stream::RANGE_PAGE;
        from = format!("({}", last.id);
        if dry_run {
            page.iter().for_each(|e| done.add(&e.id));
        } else {
            let copies: Vec<_> = page.iter().map(|e| replay_fields(stream_name, e)).collect();
            let added = match stream::add_to_inbox(&mut session.conn, &inbox, &copies).await {
                Ok(added) => added,
                // Which of the page went is not known: from its first on.
                Err(e) => return Err(stopped(&done, &e, &page[0].id, 0)),
            };
            if let Some(refused) = added.iter().position(Result::is_err) {
                page[..refused].iter().for_each(|e| done.add(&e.id));
                let again = added[refused..].iter().filter(|a| a.is_ok()).count();
                let e = added[refused].as_ref().expect_err("refused");
                return Err(stopped(&done, e, &page[refused].id, again));
            }
            page.iter().for_each(|e| done.add(&e.id));
        }
        if !full {
            break;
        }
    }
    Ok(done)
}

/// The smallest stream id after `id`.
fn next_id(id: &str) -> String {
    match id.split_once('-').map(|(ms, seq)| (ms.parse::<u64>(), seq.parse::<u64>())) {
        Some((Ok(ms), Ok(u64::MAX))) => format!("{}-0", ms + 1),
        Some((Ok(ms), Ok(seq))) => format!("{ms}-{}", seq + 1),
        _ => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_id_is_the_smallest_after() {
        assert_eq!(next_id("5-3"), "5-4");
        assert_eq!(next_id("5-18446744073709551615"), "6-0");
    }
}
