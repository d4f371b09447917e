//! Log output on stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]):
//! lines for people, or one JSON object per line for machines
//! (`--log-format json`).
//! Lines about an event carry its span: handler, stream, entry id, attempt
//! and correlation id. That span is made only when the first line about the
//! event is logged ([`EventSpan`], `event_line!`), since most events log
//! nothing; from then on every line logged while the delivery runs is
//! inside it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
    EAGER.store(std::env::var("RUST_LOG").is_ok_and(|f| f.contains('[')), Ordering::Relaxed);
    // Colours only on a terminal: not as escape codes in a log file or a
    // journal. (They also cost: a span is formatted when it is made, logged
    // or not, and the colouring was half of that.)
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Whether every event's span is made when its delivery starts: when
/// `RUST_LOG` filters by span (`[event{handler=orders}]=debug`), since such a
/// filter can only see a span that exists.
static EAGER: AtomicBool = AtomicBool::new(false);

/// What the log lines about one event name: its handler, stream, entry id,
/// attempt and correlation id, kept as values until the first such line,
/// which makes the span that carries them. Making a span formats its fields
/// at once, logged or not: a tenth of a trivial event's whole cost in the
/// host, for events that mostly log nothing.
///
/// A delivery runs [`within`] its event; the code it runs logs with
/// `event_line!`, or [`EventSpan::in_scope`] where it holds the event.
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
        let event = Arc::new(EventSpan {
            handler: handler.to_owned(),
            stream: stream.to_owned(),
            id: id.to_owned(),
            attempt,
            correlation_id,
            span: OnceLock::new(),
        });
        if EAGER.load(Ordering::Relaxed) {
            event.span();
        }
        event
    }

    /// The event's span, made now if no line about the event was logged yet.
    fn span(&self) -> &Span {
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

    /// Whether the event's span was made (by a line, or at once).
    pub fn is_made(&self) -> bool {
        self.span.get().is_some()
    }
}

/// Logs a line about the event whose delivery this thread is running, as
/// `tracing::event!` would at `$level` (`TRACE` to `ERROR`), inside the
/// event's span. The span is made by the event's first line that is
/// enabled; a line that is not makes nothing. Off a delivery, a plain line.
///
/// With `in: event` first, a line about `event` (an [`EventSpan`]) logged
/// away from its delivery's task.
///
/// ```ignore
/// event_line!(WARN, "attempt {} failed: {reason}", d.attempt);
/// event_line!(INFO, target: "sluice::plugin", "{message}");
/// event_line!(in: event, DEBUG, publishes, "handled");
/// ```
macro_rules! event_line {
    (in: $event:expr, $level:ident, $($arg:tt)+) => {{
        let event: &$crate::logging::EventSpan = $event;
        // Once made, the span's own filtering decides (`RUST_LOG` may
        // enable lines by span).
        if event.is_made() || tracing::enabled!(tracing::Level::$level) {
            event.in_scope(|| tracing::event!(tracing::Level::$level, $($arg)+));
        }
    }};
    ($level:ident, target: $target:expr, $($arg:tt)+) => {
        if tracing::enabled!(target: $target, tracing::Level::$level) {
            $crate::logging::open_event_span();
            tracing::event!(target: $target, tracing::Level::$level, $($arg)+);
        }
    };
    ($level:ident, $($arg:tt)+) => {
        if tracing::enabled!(tracing::Level::$level) {
            $crate::logging::open_event_span();
            tracing::event!(tracing::Level::$level, $($arg)+);
        }
    };
}
pub(crate) use event_line;

/// The event a thread is delivering, and whether its span is entered there.
struct Delivering {
    event: Arc<EventSpan>,
    entered: bool,
}

thread_local! {
    /// The event whose delivery this thread is running, if any.
    static CURRENT: RefCell<Option<Delivering>> = const { RefCell::new(None) };
}

/// Makes the span of the event whose delivery this thread is running, if it
/// has none yet, and enters it for as long as the delivery runs: every line
/// logged there from now on is inside it, including lines of libraries that
/// cannot use `event_line!` (a handler's outbound HTTP). Nothing off a
/// delivery.
pub fn open_event_span() {
    CURRENT.with(|c| {
        if let Some(d) = c.borrow_mut().as_mut().filter(|d| !d.entered) {
            d.event.span().with_subscriber(|(id, subscriber)| subscriber.enter(id));
            d.entered = true;
        }
    });
}

/// The event whose delivery this thread is running, if any: to log about it
/// from another task later.
pub fn current_event() -> Option<Arc<EventSpan>> {
    CURRENT.with(|c| c.borrow().as_ref().map(|d| d.event.clone()))
}

/// `work` as the delivery of `event` (`None`: work about no event): while it
/// runs, `event_line!` logs inside the event's span, and once that span
/// exists, every line logged there is inside it.
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
        // The event `work` delivers, if any. (Plain comments: the macro
        // takes no doc comments on fields.)
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
        let _span = this.span.enter();
        let _restore = Restore::set(this.event.clone());
        if this.event.as_ref().is_some_and(|event| event.span.get().is_some()) {
            open_event_span();
        }
        this.work.poll(cx)
    }
}

/// Puts the thread's outer delivery back when a poll ends, a panic
/// included, leaving the event's span if the poll entered it.
struct Restore(Option<Delivering>);

impl Restore {
    fn set(event: Option<Arc<EventSpan>>) -> Restore {
        let inner = event.map(|event| Delivering { event, entered: false });
        Restore(CURRENT.with(|c| c.replace(inner)))
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let mut outer = self.0.take();
        let inner = CURRENT.with(|c| c.borrow_mut().take());
        if let Some(Delivering { event, entered: true }) = inner {
            match outer.as_mut() {
                // The same event one level up (work run in place): it stays
                // entered for the rest of that poll, which leaves it.
                Some(o) if !o.entered && Arc::ptr_eq(&o.event, &event) => o.entered = true,
                _ => {
                    if let Some(span) = event.span.get() {
                        span.with_subscriber(|(id, subscriber)| subscriber.exit(id));
                    }
                }
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = outer);
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

    /// What `run` logged from `DEBUG` up, with the subscriber of this thread
    /// recording it.
    fn seen(run: impl FnOnce()) -> Seen {
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::DEBUG).with(seen.clone());
        tracing::subscriber::with_default(subscriber, run);
        seen
    }

    /// Runs `work` to its end as the delivery of an event.
    fn deliver<T>(work: impl Future<Output = T>) -> T {
        futures::executor::block_on(within(Some(EventSpan::new("h", "in", "1-1", 1, None)), work))
    }

    #[test]
    fn an_event_that_logs_nothing_makes_no_span() {
        let seen = seen(|| {
            deliver(async {
                tracing::info!("not about the event");
                // Disabled by the subscriber's level: makes nothing either.
                event_line!(TRACE, "off");
            })
        });
        assert_eq!(*seen.spans.lock().unwrap(), Vec::<String>::new());
        assert_eq!(*seen.lines.lock().unwrap(), [("not about the event".to_owned(), None)]);
    }

    #[test]
    fn the_first_line_makes_the_span_and_later_lines_are_in_it() {
        let seen = seen(|| {
            let event = deliver(async {
                event_line!(WARN, "first");
                // Not through event_line!, as a library logs: the span
                // exists now, and is entered while the delivery runs.
                tracing::info!("same poll");
                tokio::task::yield_now().await;
                tracing::info!("next poll");
                current_event().expect("delivering an event")
            });
            // As a commit handed over finishes the delivery.
            event_line!(in: &event, INFO, "after");
            tracing::info!("not about the event");
        });
        assert_eq!(*seen.spans.lock().unwrap(), ["event"]);
        let in_event = |m: &str| (m.to_owned(), Some("event".to_owned()));
        let outside = ("not about the event".to_owned(), None);
        let want = [in_event("first"), in_event("same poll"), in_event("next poll"), in_event("after"), outside];
        assert_eq!(*seen.lines.lock().unwrap(), want);
    }

    #[test]
    fn work_moved_off_the_delivery_keeps_its_event_and_work_about_none_has_none() {
        let seen = seen(|| {
            let mut moved = None;
            deliver(async {
                moved = Some(in_caller_span(async { event_line!(INFO, "moved") }));
                within(None, async { event_line!(INFO, "about no event") }).await;
            });
            assert!(current_event().is_none(), "no event outside a delivery");
            futures::executor::block_on(moved.unwrap());
        });
        let lines = seen.lines.lock().unwrap().clone();
        assert_eq!(lines, [("about no event".to_owned(), None), ("moved".to_owned(), Some("event".to_owned()))]);
    }

    #[test]
    fn a_delivery_that_panics_leaves_no_event_behind() {
        let seen = seen(|| {
            let panicked = std::panic::catch_unwind(|| {
                deliver(async {
                    event_line!(WARN, "before the panic");
                    panic!("a delivery panics");
                })
            });
            assert!(panicked.is_err());
            assert!(current_event().is_none(), "the panicking delivery's event stayed current");
            event_line!(WARN, "afterwards");
        });
        let lines = seen.lines.lock().unwrap().clone();
        assert_eq!(lines, [("before the panic".to_owned(), Some("event".to_owned())), ("afterwards".to_owned(), None)]);
    }
}
