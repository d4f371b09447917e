//! Log output on stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]):
//! lines for people, or one JSON object per line for machines
//! (`--log-format json`).
//! Lines about an event carry its span: handler, stream, entry id, attempt
//! and correlation id.

use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`: Sluice's lines from `info` up, and only
/// errors of the `redis` crate, whose connection warnings Sluice reports
/// itself with what they mean (one line for a connection that cannot be
/// made, a warning naming the stream and group for a failing command).
pub const DEFAULT_FILTER: &str = "info,redis=error";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields.
    Json,
}

/// Installs the global subscriber. Safe to call more than once.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: not as escape codes in a log file or a
    // journal. (They also cost: every event's span is formatted when it is
    // created, logged or not, and the colouring was half of that.)
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
