//! The command line: `sluice run`, `publish`, `check`, `invoke`, `new`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Sluice: Redis Streams events handled by sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: consume every configured stream until SIGINT/SIGTERM.
    /// Edits to the config and the plugins folder are applied live; SIGHUP
    /// forces a reload.
    ///
    /// Example: sluice run --config config.toml
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Do not watch the config and plugins for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
    },
    /// Add one event to a stream and print its entry id.
    ///
    /// Example: sluice publish orders --type order.created --data '{"order_id":"o-1","total":42.5}'
    Publish {
        /// The stream to add to.
        stream: String,
        /// The event type (the entry's `type` field).
        #[arg(long = "type", short = 't')]
        event_type: String,
        /// The payload (the entry's `data` field), JSON by convention.
        #[arg(long, short, default_value = "{}")]
        data: String,
        /// An extra field, e.g. --field correlation_id=c-1 (repeatable).
        #[arg(long = "field", short = 'f', value_parser = parse_field)]
        fields: Vec<(String, String)>,
        /// The config file (for the Redis to use).
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Run a handler once on one event, offline (no Redis), under the same
    /// sandbox and limits as `run`. Prints the verdict, what the handler
    /// logged, the publishes and key-value writes it would have committed,
    /// and what `run` would do with the entry. `kv.get` finds nothing.
    ///
    /// Exit code: 0 ok (or the type is not for this handler), 3 retry,
    /// 4 reject, 5 trap or limit hit, 1 could not run.
    ///
    /// The event file (`sluice dlq show --json` prints the same form):
    ///   {"stream": "orders", "id": "1700000000000-0", "type": "order.created",
    ///    "data": {"order_id": "o-1", "total": 42.5},
    ///    "fields": {"correlation_id": "c-1"}, "attempt": 1}
    /// `id`, `fields` and `attempt` are optional; `data` is any JSON value,
    /// or a string.
    ///
    /// Example: sluice invoke plugins/dist/payment.wasm --event order.json --config config.toml
    Invoke {
        /// The plugin (`.wasm` component).
        plugin: PathBuf,
        /// The event file.
        #[arg(long, short)]
        event: PathBuf,
        /// Take the handler's limits, grants and settings from this config.
        /// Without it: default limits, no publish grants, no settings.
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// The config's handler to run as (default: the one whose plugin is PLUGIN).
        #[arg(long = "handler", short = 'H')]
        handler: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a handler project: DIR/NAME/ with the handler's source, a
    /// build script (it builds into DIR/dist/NAME.wasm, the default plugins
    /// folder, installing its tools on first use), a sample event for
    /// `sluice invoke`, a README, and a copy of the WIT contract.
    ///
    /// Example: sluice new greeter --lang python && plugins/greeter/build.sh
    New {
        /// The handler's name: lowercase letters, digits, '-' and '_'.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: crate::scaffold::Language,
        /// The folder to create it in.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
    },
    /// Validate the config and load every plugin; exit 1 with the errors.
    ///
    /// Example: sluice check --config config.toml
    Check {
        /// The config file.
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.to_owned(), v.to_owned()))
}
