//! Log output on stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]):
//! lines for people, or one JSON object per line for machines
//! (`--log-format json`).
//! Lines about an event carry its span: handler, stream, entry id, attempt
//! and correlation id. That span is made only when the first line about the
//! event is logged ([`EventSpan`]), since most events log nothing.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tracing::{Span, error_span};
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

/// What the log lines about one event name: its handler, stream, entry id,
/// attempt and correlation id, kept as values until the first such line,
/// which makes the span that carries them. Making a span formats its fields
/// at once, logged or not: a tenth of a trivial event's whole cost in the
/// host, for events that mostly log nothing.
///
/// A delivery runs [`within`] its event; the code it runs logs through
/// [`in_event`], or [`EventSpan::in_scope`] where it holds the event.
#[derive(Debug)]
pub struct EventSpan {
    handler: String,
    stream: String,
    id: String,
    attempt: u32,
    /// `None`: the entry's id is its correlation id.
    correlation_id: Option<String>,
    span: OnceLock<Span>,
}

impl EventSpan {
    /// The log context of delivering `id` of `stream` to `handler`.
    pub fn new(handler: &str, stream: &str, id: &str, attempt: u32, correlation_id: Option<String>) -> Arc<EventSpan> {
        Arc::new(EventSpan {
            handler: handler.to_owned(),
            stream: stream.to_owned(),
            id: id.to_owned(),
            attempt,
            correlation_id,
            span: OnceLock::new(),
        })
    }

    /// The event's span, made now if no line about the event was logged yet.
    pub fn span(&self) -> &Span {
        self.span.get_or_init(|| {
            let (handler, stream, id, attempt) = (&self.handler, &self.stream, &self.id, self.attempt);
            let correlation_id = self.correlation_id.as_deref().unwrap_or(id);
            // At ERROR level so that it is enabled whenever any line is: a
            // RUST_LOG=warn host still says which event an error is about.
            error_span!(parent: None, "event", handler = %handler, stream = %stream, id = %id, attempt, correlation_id)
        })
    }

    /// Runs `log` inside the event's span: for lines about the event logged
    /// away from its delivery's task.
    pub fn in_scope<R>(&self, log: impl FnOnce() -> R) -> R {
        self.span().in_scope(log)
    }
}

thread_local! {
    /// The event whose delivery this thread is running, if any.
    static CURRENT: RefCell<Option<Arc<EventSpan>>> = const { RefCell::new(None) };
}

/// Runs `log` inside the span of the event whose delivery this thread is
/// running (see [`within`]), or as is on other threads. Its caller should
/// check that its line is enabled first if the line is frequent and its
/// level low: the first call makes the span.
pub fn in_event<R>(log: impl FnOnce() -> R) -> R {
    match current_event() {
        Some(event) => event.in_scope(log),
        None => log(),
    }
}

/// The event whose delivery this thread is running, if any: to log about it
/// from another task later.
pub fn current_event() -> Option<Arc<EventSpan>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `work` as the delivery of `event`: while it runs, [`in_event`] logs
/// inside the event's span, and once that span exists, every line logged
/// there is inside it.
/// (`None`: no event, as for work that is about none.)
pub fn within<F: Future>(event: Option<Arc<EventSpan>>, work: F) -> Within<F> {
    Within { event, span: Span::none(), work }
}

/// `work` inside the span of the event the caller is delivering, if any
/// (as [`within`]); otherwise inside the caller's current span. For work
/// that may move to another thread.
pub fn in_caller_span<F: Future>(work: F) -> Within<F> {
    match current_event() {
        Some(event) => within(Some(event), work),
        None => Within { event: None, span: Span::current(), work },
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`] and [`in_caller_span`].
    pub struct Within<F> {
        event: Option<Arc<EventSpan>>,
        // Entered while `work` runs (none when there is an event).
        span: Span,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outer = this.event.as_ref().map(|event| CURRENT.with(|c| c.replace(Some(event.clone()))));
        let _span = this.span.enter();
        let _event = this.event.as_ref().and_then(|event| event.span.get()).map(Span::enter);
        let polled = this.work.poll(cx);
        if let Some(outer) = outer {
            CURRENT.with(|c| *c.borrow_mut() = outer);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    /// Records the spans made and, for each line, its message and the span it is in.
    #[derive(Clone, Default)]
    struct Seen {
        spans: Arc<Mutex<Vec<String>>>,
        lines: Arc<Mutex<Vec<Line>>>,
    }

    /// A line's message, and the name of the span it is in.
    type Line = (String, Option<String>);

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: LayerContext<'_, S>) {
            self.spans.lock().unwrap().push(attrs.metadata().name().to_owned());
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let span = ctx.event_span(event).map(|s| s.name().to_owned());
            self.lines.lock().unwrap().push((message.0, span));
        }
    }

    /// What `run` logged, with the subscriber of this thread recording it.
    fn seen(run: impl FnOnce()) -> Seen {
        let seen = Seen::default();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(seen.clone()), run);
        seen
    }

    /// Runs `work` to its end as the delivery of an event.
    fn deliver<T>(work: impl Future<Output = T>) -> T {
        futures::executor::block_on(within(Some(EventSpan::new("h", "in", "1-1", 1, None)), work))
    }

    #[test]
    fn an_event_that_logs_nothing_makes_no_span() {
        let seen = seen(|| deliver(async { tracing::info!("not about the event") }));
        assert_eq!(*seen.spans.lock().unwrap(), Vec::<String>::new());
        assert_eq!(*seen.lines.lock().unwrap(), [("not about the event".to_owned(), None)]);
    }

    #[test]
    fn the_first_line_makes_the_span_and_later_lines_are_in_it() {
        let seen = seen(|| {
            let event = deliver(async {
                in_event(|| tracing::warn!("first"));
                tokio::task::yield_now().await;
                // Not through in_event: the span exists now, and is entered
                // whenever the delivery runs.
                tracing::info!("later");
                current_event().expect("delivering an event")
            });
            // As a commit handed over finishes the delivery.
            event.in_scope(|| tracing::info!("after"));
        });
        assert_eq!(*seen.spans.lock().unwrap(), ["event"]);
        let in_event = |m: &str| (m.to_owned(), Some("event".to_owned()));
        assert_eq!(*seen.lines.lock().unwrap(), [in_event("first"), in_event("later"), in_event("after")]);
    }

    #[test]
    fn work_moved_off_the_delivery_keeps_its_event() {
        let seen = seen(|| {
            let mut moved = None;
            deliver(async { moved = Some(in_caller_span(async { in_event(|| tracing::info!("moved")) })) });
            assert!(current_event().is_none(), "no event outside a delivery");
            futures::executor::block_on(moved.unwrap());
        });
        assert_eq!(*seen.lines.lock().unwrap(), [("moved".to_owned(), Some("event".to_owned()))]);
    }
}
