//! The arguments of every subcommand: `sluice run`, `publish`, `check`,
//! `invoke`, `new`, `dlq`, `replay`, `status`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The config file used when `--config` and `SLUICE_CONFIG` are both absent.
pub const DEFAULT_CONFIG: &str = "config.toml";

/// `--config FILE`: declared once, flattened into every subcommand that
/// reads a config.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The config file [default: config.toml; `invoke` runs without one]
    #[arg(long = "config", short = 'c', env = "SLUICE_CONFIG", value_name = "FILE")]
    pub given: Option<PathBuf>,
}

/// The event `publish` adds and `request` sends: declared once.
#[derive(Debug, Clone, clap::Args)]
pub struct EventArgs {
    /// The stream to add it to.
    pub stream: String,
    /// The event type (the entry's `type` field).
    #[arg(long = "type", short = 't')]
    pub event_type: String,
    /// The payload (the entry's `data` field), JSON by convention.
    #[arg(long, short, default_value = "{}")]
    pub data: String,
    /// An extra field, e.g. --field correlation_id=c-1 (repeatable).
    #[arg(long = "field", short = 'f', value_parser = parse_field)]
    pub fields: Vec<(String, String)>,
}

impl EventArgs {
    /// The event to add.
    pub fn into_event(self) -> crate::publish::NewEvent {
        crate::publish::NewEvent {
            stream: self.stream,
            event_type: self.event_type,
            data: self.data,
            fields: self.fields,
        }
    }
}

impl ConfigArg {
    /// The config file: the one given, or [`DEFAULT_CONFIG`].
    pub fn path(&self) -> PathBuf {
        self.given.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

/// Sluice: Redis Streams events handled by sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines for people (text) or machines (json, one object per line).
    #[arg(long, global = true, value_enum, default_value = "text", env = "SLUICE_LOG_FORMAT")]
    pub log_format: crate::logging::LogFormat,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: consume every configured stream until SIGINT/SIGTERM.
    /// Edits to the config, the plugins folder and the schema files are
    /// applied live; SIGHUP forces a reload.
    ///
    /// Example: sluice run --config config.toml
    Run {
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
        /// Do not watch the config, plugins and schemas for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
    },
    /// Add one event to a stream and print its entry id. An event whose data
    /// fails the JSON Schema the config gives its type (`[schemas]`) is
    /// refused with the validation error, and nothing is added.
    ///
    /// Example: sluice publish orders --type order.created --data '{"order_id":"o-1","customer":"ada","total":42.5,"items":[{"sku":"mug","qty":2}]}'
    Publish {
        /// The event.
        #[command(flatten)]
        event: EventArgs,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Send a request and wait for its reply: publishes the event with a
    /// `reply_to` field naming a fresh reply stream, prints the reply's data
    /// when a handler answers (`host.reply`), and deletes the reply stream.
    ///
    /// Exit code: 0 answered, 1 no reply within the wait (or could not
    /// send), 2 the request failed (it was dead-lettered; the reason is
    /// printed).
    Request {
        /// The request.
        #[command(flatten)]
        event: EventArgs,
        /// How long to wait for the reply, in ms.
        #[arg(long = "timeout-ms", default_value_t = 5000)]
        timeout_ms: u64,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a handler once on one event, offline (no Redis), under the same
    /// sandbox and limits as `run`. Prints the verdict, what the handler
    /// logged, the publishes and key-value writes it would have committed,
    /// and what `run` would do with the entry. `kv.get` finds nothing.
    ///
    /// Exit code: 0 ok (or the type is not for this handler), 3 retry,
    /// 4 reject, 5 trap or limit hit, 6 invalid (the data fails its type's
    /// schema, so the plugin did not run), 7 exhausted (its attempt is past
    /// max_attempts: its last attempt was made already, so the plugin did
    /// not run), 8 malformed (not an entry of its stream's format), 1 could
    /// not run. An expired event (its time to live passed) exits 0.
    ///
    /// The event file (`sluice dlq show --json` prints the same form):
    ///   {"stream": "orders", "id": "1700000000000-0", "type": "order.created",
    ///    "data": {"order_id": "o-1", "customer": "ada", "total": 42.5, "items": [{"sku": "mug", "qty": 2}]},
    ///    "fields": {"correlation_id": "c-1"}, "attempt": 1}
    /// `id`, `fields` and `attempt` are optional; `data` is any JSON value,
    /// or a string.
    ///
    /// With --config, the handler's limits, grants and settings come from
    /// that config; without it, default limits, no publish grants, no
    /// settings.
    ///
    /// Example: sluice invoke plugins/dist/payment.wasm --event order.json --config config.toml
    Invoke {
        /// The plugin (`.wasm` component).
        plugin: PathBuf,
        /// The event file.
        #[arg(long, short)]
        event: PathBuf,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
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
    /// A handler's key-value state, read-only.
    Kv {
        /// What to read.
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Dead-lettered events: list, show, send back, purge.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Deliver a time range of a stream again to one handler, and to no
    /// other. Times: RFC 3339 (2026-11-22T10:00:00Z), a day or month
    /// (2026-11-22, 2026-11, UTC: all of it as --to), relative (-1h, -15m,
    /// now), Unix milliseconds, or a stream id (1700000000000-3: from or to
    /// that entry exactly). Both ends are included. Entries go to the
    /// inbox 500 at a time as they are read; a replay that fails part-way
    /// says how many went and the --from to go on with.
    ///
    /// Example: sluice replay --stream orders --handler payment --from -2h --to -1h
    Replay {
        /// The stream to read the range from (one the handler reads).
        #[arg(long)]
        stream: String,
        /// The handler to deliver to.
        #[arg(long)]
        handler: String,
        /// Start of the range (RFC 3339, 2026-11-22, -2h, Unix ms, or a stream id).
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// End of the range (RFC 3339, 2026-11-22, -1h, now, Unix ms, or a stream id).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// Only count what would be delivered.
        #[arg(long)]
        dry_run: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Per handler and stream: group lag, pending entries and the oldest
    /// one's age, consumers, dead-letter depth, plugin version; marks what
    /// is falling behind.
    ///
    /// Example: sluice status --config config.toml
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the Redis ACL rule for the user Sluice runs as: the least
    /// commands it needs, on the keys this config names. Replace PASSWORD,
    /// run it as an admin, and put the user in [redis] url
    /// (rediss://sluice:PASSWORD@host:port). docs/operating.md says why each
    /// command is needed.
    ///
    /// Example: sluice acl --config config.toml
    Acl {
        /// The user's name.
        #[arg(long, default_value = "sluice")]
        user: String,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the config, load every plugin and connect to Redis; exit 1
    /// with the errors (a bad TLS certificate or password shows here, before
    /// `run`). For a Redis Cluster, says which handlers commit in one script
    /// and which through an outbox.
    ///
    /// Example: sluice check --config config.toml
    Check {
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
        /// Do not connect to Redis.
        #[arg(long)]
        offline: bool,
    },
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// `sluice kv ...`
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Prints the value a handler stored under KEY (as `kv.get` in the
    /// handler reads it); exits 1 when there is none.
    ///
    /// Example: sluice kv get profiles user:u-1
    Get {
        /// The handler whose state to read.
        handler: String,
        /// The key, as the handler names it.
        key: String,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `sluice dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// A table of dead-lettered events: origin, handler, attempts, age,
    /// plugin version, reason.
    ///
    /// Example: sluice dlq list --handler payment --since -1d --error-contains timeout
    List {
        /// Which dead-lettered events.
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One dead-lettered event in full. With --json, the event in the form
    /// `sluice invoke --event` reads, so it can be saved and run offline.
    ///
    /// Example: sluice dlq show 1700000000000-0 --json > failed.json
    Show {
        /// Its id in the dead-letter stream.
        id: String,
        /// Print the event as JSON, the form `sluice invoke --event` reads.
        #[arg(long)]
        json: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Send dead-lettered events back to the handler that failed them, and
    /// only to it. Attempts start over; earlier reasons are kept on the
    /// event (sluice.history). Each entry leaves the dead-letter stream in
    /// the same step that queues it again. Entries whose data still fails
    /// its type's JSON Schema are left, and counted.
    ///
    /// Example: sluice dlq redrive --handler payment --error-contains gateway --rate 50
    Redrive {
        /// Which dead-lettered events.
        #[command(flatten)]
        filter: DlqFilter,
        /// Only list what would be sent.
        #[arg(long)]
        dry_run: bool,
        /// At most this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many events per second.
        #[arg(long)]
        rate: Option<f64>,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete dead-lettered events for good.
    ///
    /// Example: sluice dlq purge --handler audit --yes
    Purge {
        /// Which dead-lettered events.
        #[command(flatten)]
        filter: DlqFilter,
        /// Really delete (without it, only count).
        #[arg(long)]
        yes: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Which dead-lettered events a `dlq` command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqFilter {
    /// Failed by this handler.
    #[arg(long)]
    pub handler: Option<String>,
    /// Originally read from this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Failed at or after this time (RFC 3339, 2026-11-22, -1h, or Unix ms).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Whose reason contains this text.
    #[arg(long)]
    pub error_contains: Option<String>,
}
