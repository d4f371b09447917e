//! `sluice invoke`: one delivery of one event to a handler, offline. The same
//! sandbox, limits and delivery decision as `sluice run`, no Redis: `kv.get`
//! finds nothing, and publishes and key-value writes are reported instead of
//! committed.

mod capture;
mod report;

pub use capture::LogLine;
pub use report::Report;

use crate::config::{Config, DEFAULT_CLAIM_IDLE_MS, Handler};
use crate::dispatch;
use crate::event::Entry;
use crate::event_json::EventJson;
use crate::format::{Format, Outgoing};
use crate::limits::MIN_POOL_INSTANCES;
use crate::stream::Delivery;
use crate::wasm::{self, ComponentCache, FuelMetering, Plugin, Sandbox};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::instrument::WithSubscriber;

/// What `sluice invoke` was asked to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The plugin file.
    pub plugin: PathBuf,
    /// The event file (see [`EventJson`]).
    pub event: PathBuf,
    /// A config to take the handler's limits, grants and settings from.
    pub config: Option<PathBuf>,
    /// Which of the config's handlers; by default the one whose plugin is
    /// `plugin`.
    pub handler: Option<String>,
}

/// Runs `invocation` and reports what happened and what `sluice run` would
/// do about it.
pub async fn invoke(invocation: &Invocation) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(&invocation.event)
        .with_context(|| format!("cannot read the event file {}", invocation.event.display()))?;
    let event: EventJson = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an event (see `sluice invoke --help`)", invocation.event.display()))?;
    let (config, handler) = resolve(invocation, &event)?;
    // Fuel counted as `sluice run` would for this handler, so it runs as
    // fast and the compiled cache entries are the host's.
    let runtime = wasm::Runtime::with_pool(MIN_POOL_INSTANCES)?;
    let cache = cache_dir(config.as_ref()).map(ComponentCache::new);
    let plugin =
        Plugin::load(&runtime, cache.as_ref(), &invocation.plugin, FuelMetering::for_budget(handler.limits.fuel))?;
    let entry = as_stream_entry(&event, handler.formats.format(&event.stream));
    let delivery = Delivery { stream: event.stream.clone(), entry, attempt: event.attempt(), key: None };
    let max_delay = Duration::from_millis(config.as_ref().map_or(DEFAULT_CLAIM_IDLE_MS, |c| c.claim_idle_ms)) / 2;
    let capture = capture::Capture::default();
    let sandbox = Sandbox::for_handler(&handler);
    let mut duration = Duration::ZERO;
    // The same turn as `sluice run`: admitted, run, decided by `dispatch`.
    let turn = dispatch::turn(&handler, &delivery, max_delay, async |event| {
        let started = Instant::now();
        let outcome = plugin.invoke_in_place(&sandbox, &event).with_subscriber(capture.dispatch()).await;
        duration = started.elapsed();
        outcome
    })
    .await;
    Ok(Report::new(&handler, &plugin, &event, delivery.attempt, turn, duration, capture.take()))
}

/// The entry `event` stands for on a stream of `format`: the entry as saved
/// (`sluice dlq show --json`), or, for an event file written by hand with
/// just a type and data, that event written as the stream's format writes
/// it (a CloudEvent, a LeanMQ message).
fn as_stream_entry(event: &EventJson, format: &Format) -> Entry {
    let entry = event.to_entry();
    // Saved, it reads as its stream's format, with the type it was saved
    // with; written by hand, it does not (a LeanMQ message would read with
    // no type, a CloudEvent not at all).
    let as_saved = format.read(&entry, 0).is_ok_and(|read| read.event_type == event.event_type);
    if *format == Format::Sluice || as_saved {
        return entry;
    }
    let data = match &event.data {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Data the format cannot hold: left as it is, which `admit` finds malformed.
    if format.check(data.as_bytes()).is_err() {
        return entry;
    }
    let extra: Vec<(String, String)> = event.fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let out = Outgoing {
        stream: &event.stream,
        event_type: &event.event_type,
        data: data.as_bytes(),
        extra: &extra,
        ..Default::default()
    };
    Entry { id: entry.id, fields: format.write(&out) }
}

/// The handler to run as: from the config, or the defaults.
fn resolve(invocation: &Invocation, event: &EventJson) -> anyhow::Result<(Option<Config>, Handler)> {
    let Some(path) = &invocation.config else {
        if let Some(name) = &invocation.handler {
            bail!("--handler {name} needs --config, the file that configures it");
        }
        return Ok((None, default_handler(&invocation.plugin, &event.stream)?));
    };
    let config = Config::load_unchecked(path)?;
    let handler = match &invocation.handler {
        Some(name) => config
            .handler(name)
            .cloned()
            .with_context(|| format!("{}: no handler {name:?} (it has: {})", path.display(), names(&config)))?,
        None => {
            let wanted = canonical(&invocation.plugin);
            let mut matching = config.handlers.iter().filter(|h| canonical(&h.plugin) == wanted);
            match (matching.next(), matching.next()) {
                (Some(h), None) => h.clone(),
                (Some(_), Some(_)) => bail!(
                    "{}: several handlers use {}; pick one with --handler",
                    path.display(),
                    invocation.plugin.display()
                ),
                (None, _) => bail!(
                    "{}: no handler uses {}; pick one with --handler NAME (it has: {})",
                    path.display(),
                    invocation.plugin.display(),
                    names(&config)
                ),
            }
        }
    };
    Ok((Some(config), handler))
}

/// A handler named after the plugin file with every default: no publish
/// grants, no settings, every event type.
fn default_handler(plugin: &Path, stream: &str) -> anyhow::Result<Handler> {
    if !plugin.is_file() {
        bail!("{}: no such plugin file", plugin.display());
    }
    let name = plugin.file_stem().and_then(|s| s.to_str()).unwrap_or("handler");
    // Absolute: a relative plugin path would be taken as inside the plugins folder.
    let plugin = std::path::absolute(plugin)?;
    let toml = format!(
        "[handlers.{}]\nplugin = {}\nstreams = [{}]\n",
        toml_string(name),
        toml_string(&plugin.to_string_lossy()),
        toml_string(stream)
    );
    let config = Config::parse(Path::new("(invoke defaults)"), &toml)?;
    Ok(config.handlers.into_iter().next().expect("one handler"))
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn names(config: &Config) -> String {
    config.handlers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

/// Where compiled components are kept: beside the config, or in the user's
/// cache folder (`$XDG_CACHE_HOME/sluice`, `~/.cache/sluice`).
fn cache_dir(config: Option<&Config>) -> Option<PathBuf> {
    if let Some(config) = config {
        return Some(config.state_dir().join("cache"));
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    xdg.or_else(home).map(|dir| dir.join("sluice"))
}
