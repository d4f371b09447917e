//! Carrying out `sluice dlq`, `replay`, `status` and `kv`: parse the
//! arguments, open a session (closed on every path), print a table or JSON.

use super::{DlqCommand, DlqFilter, KvCommand};
use crate::ops::dlq::{self, Filter};
use crate::ops::redrive::{self, Pace};
use crate::ops::{Session, status, time};
use anyhow::anyhow;
use std::path::Path;

/// Runs one `sluice dlq` subcommand.
pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { filter, json, config } => {
            let filter = filter_from(&filter)?;
            let found = Session::with(&config.path(), async |s| dlq::list(s, &filter).await).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&found)?),
                false => print!("{}", dlq::table(&found)),
            }
        }
        DlqCommand::Show { id, json, config } => {
            let d = Session::with(&config.path(), async |s| dlq::show(s, &id).await).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&d.saved_event())?),
                false => print!("{}", dlq::details(&d)),
            }
        }
        DlqCommand::Redrive { filter, dry_run, limit, rate, config } => {
            let filter = filter_from(&filter)?;
            let done = Session::with(&config.path(), async |s| {
                let found = dlq::list(s, &filter).await?;
                redrive::redrive(s, &found, Pace { dry_run, limit, rate }).await
            })
            .await?;
            report_redrive(&done, dry_run);
        }
        DlqCommand::Purge { filter, yes, config } => {
            let filter = filter_from(&filter)?;
            let (found, purged) = Session::with(&config.path(), async |s| {
                let found = dlq::list(s, &filter).await?;
                let purged = match yes {
                    true => Some(dlq::purge(s, &found).await?),
                    false => None,
                };
                Ok((found.len(), purged))
            })
            .await?;
            match purged {
                Some(n) => println!("purged {n} dead-letter entr(ies)"),
                None => println!("{found} dead-letter entr(ies) match; add --yes to delete them"),
            }
        }
    }
    Ok(())
}

/// Runs `sluice replay`.
pub async fn replay(
    config: &Path,
    stream: &str,
    handler: &str,
    range: (&str, &str),
    dry_run: bool,
) -> anyhow::Result<()> {
    let now = time::now_ms();
    // Each end: the stream id given, exactly; or a time, in Unix ms (the
    // whole millisecond), and how to show it.
    let bound = |s: &str, end: bool| -> Result<(String, String), String> {
        if let Some(id) = time::stream_id(s) {
            return Ok((id.to_owned(), id.to_owned()));
        }
        let ms = if end { time::parse_end(s, now) } else { time::parse(s, now) }?;
        Ok((ms.to_string(), time::format(ms)))
    };
    let (from, from_shown) = bound(range.0, false).map_err(|e| anyhow!("--from {e}"))?;
    let (to, to_shown) = bound(range.1, true).map_err(|e| anyhow!("--to {e}"))?;
    let done =
        Session::with(config, async |s| redrive::replay(s, stream, handler, (&from, &to), dry_run).await).await?;
    let span = match (&done.first, &done.last) {
        (Some(a), Some(b)) => format!(" ({a} … {b})"),
        _ => String::new(),
    };
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!("{verb} {} entr(ies) of {stream} to {handler}{span}, {from_shown} to {to_shown}", done.count);
    Ok(())
}

/// Runs one `sluice kv` subcommand; `false` when the key holds nothing.
pub async fn kv(command: KvCommand) -> anyhow::Result<bool> {
    let KvCommand::Get { handler, key, config } = command;
    let value = Session::with(&config.path(), async |s| {
        let Some(h) = s.config.handlers.iter().find(|h| h.name == handler) else {
            let known: Vec<&str> = s.config.handlers.iter().map(|h| h.name.as_str()).collect();
            anyhow::bail!("no handler {handler:?} in the config (handlers: {})", known.join(", "));
        };
        let full = format!("{}{key}", h.kv_prefix);
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(&full).query_async(&mut s.conn).await?;
        Ok(value)
    })
    .await?;
    match value {
        Some(v) => {
            println!("{}", String::from_utf8_lossy(&v));
            Ok(true)
        }
        None => {
            eprintln!("handler {handler} has nothing under {key:?}");
            Ok(false)
        }
    }
}

/// Runs `sluice status`.
pub async fn status(config: &Path, json: bool) -> anyhow::Result<()> {
    let rows = Session::with(config, async |s| status::status(s).await).await?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&rows)?),
        false => print!("{}", status::table(&rows)),
    }
    Ok(())
}

fn filter_from(f: &DlqFilter) -> anyhow::Result<Filter> {
    let since =
        f.since.as_deref().map(|t| time::parse(t, time::now_ms())).transpose().map_err(|e| anyhow!("--since {e}"))?;
    Ok(Filter { handler: f.handler.clone(), stream: f.stream.clone(), since, error_contains: f.error_contains.clone() })
}

fn report_redrive(done: &[redrive::Redriven], dry_run: bool) {
    for r in done {
        match (&r.inbox_id, &r.still_invalid, dry_run) {
            (_, Some(why), _) => println!("left {}: still {why}", r.dead_letter_id),
            (_, None, true) => println!("would redrive {} to {}", r.dead_letter_id, r.handler),
            (Some(id), None, false) => println!("redrove {} to {} (inbox entry {id})", r.dead_letter_id, r.handler),
            (None, None, false) => println!("skipped {}: no longer in the dead-letter stream", r.dead_letter_id),
        }
    }
    let invalid = done.iter().filter(|r| r.still_invalid.is_some()).count();
    let sent = done.iter().filter(|r| r.inbox_id.is_some()).count();
    match dry_run {
        true => println!("{} entr(ies) would be redriven", done.len() - invalid),
        false => println!("redrove {sent} entr(ies)"),
    }
    if invalid > 0 {
        println!(
            "left {invalid} entr(ies) whose data still fails its type's schema: the handler would dead-letter them again at once. Fix the schema, then redrive again"
        );
    }
}
