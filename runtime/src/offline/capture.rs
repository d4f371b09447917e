//! Collects what a handler logged (through `host.log`, stdout and stderr)
//! during an offline run, instead of sending it to the host's log.

use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One line the handler wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// `log` (through `host.log`), `stdout` or `stderr`.
    pub source: &'static str,
    /// `trace` … `error`.
    pub level: String,
    /// The text of the line.
    pub message: String,
}

/// A subscriber that keeps the handler's lines and drops everything else.
#[derive(Clone, Default)]
pub struct Capture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl Capture {
    /// A dispatcher to run the handler under (see `WithSubscriber`).
    pub fn dispatch(&self) -> tracing::Dispatch {
        tracing::Dispatch::new(tracing_subscriber::registry().with(self.clone()))
    }

    /// The lines collected so far.
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.lines.lock().unwrap())
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(rest) = event.metadata().target().strip_prefix("sluice::plugin") else { return };
        let source = match rest {
            "::stdout" => "stdout",
            "::stderr" => "stderr",
            _ => "log",
        };
        let mut message = Message(String::new());
        event.record(&mut message);
        if source != "log" && message.0.trim().is_empty() {
            return; // blank lines of output explain nothing
        }
        let level = level_name(*event.metadata().level()).to_owned();
        self.lines.lock().unwrap().push(LogLine { source, level, message: message.0 });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
