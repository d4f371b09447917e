//! A plugin's entry point, found when it is loaded: Sluice's own
//! `sluice:plugin/handler@0.1.0` `handle`, or Spin's Redis trigger.
//!
//! # Spin Redis-trigger components
//!
//! A component that exports Spin's `fermyon:spin/inbound-redis`
//! (`handle-message: func(message: payload) -> result<_, error>`, the
//! interface Spin's Redis trigger calls) runs as a Sluice handler as it is,
//! without being rebuilt:
//!
//! - `message` is the event's `data`, the bytes a Sluice handler gets;
//! - `ok` acknowledges the event (a success with no effects);
//! - `err` (either case of Spin's `error` enum) is a retry with the reason
//!   [`SPIN_ERROR`], after the handler's backoff (Spin's error asks for no
//!   delay), so after the handler's `max_attempts` the event is
//!   dead-lettered, as for any handler;
//! - everything else is the same as for a Sluice handler, because only the
//!   call differs: the same `Store`, limits, epoch deadline, stdout/stderr
//!   logging and instance reuse.
//!
//! Sluice provides none of Spin's platform imports (`fermyon:spin/redis`,
//! `key-value`, `config`, `llm`, the SQL interfaces): a component that
//! imports one fails to load with [`super::PluginError::Link`], naming it.
//! Spin 3's async `spin:redis/inbound-redis@3.0.0` export is not run either.
//!
//! Spin's export is looked up by name and called as a typed function rather
//! than through a second `bindgen!`: one small, fixed signature does not
//! need generated bindings, and the host keeps one generated module
//! ([`super::bindings`]).

use super::bindings::sluice::plugin::types::RetryAfter;
use super::bindings::{Event, Failure, Handler, HandlerIndices};
use super::state::EventState;
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{ComponentExportIndex, ComponentType, Func, Instance, InstancePre, Lift, Type};

/// The interface a Spin Redis-trigger component exports.
pub const SPIN_INBOUND_REDIS: &str = "fermyon:spin/inbound-redis";

/// The function in [`SPIN_INBOUND_REDIS`] that Spin's trigger calls.
const HANDLE_MESSAGE: &str = "handle-message";

/// Spin 3's async successor of [`SPIN_INBOUND_REDIS`], named when refusing it.
const SPIN_3_INBOUND_REDIS: &str = "spin:redis/inbound-redis@3.0.0";

/// The retry reason when a Spin component's `handle-message` returns `err`.
pub const SPIN_ERROR: &str = "the Spin handler returned an error (fermyon:spin/inbound-redis handle-message)";

/// Spin's `fermyon:spin/redis-types.error`. Spin's Redis trigger treats
/// either case, returned as `err`, as a failure.
// Only wasmtime constructs the cases, when it lifts a result.
#[allow(dead_code)]
#[derive(ComponentType, Lift, Debug, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum SpinError {
    /// `success`: returned as `err`, still a failure to Spin.
    #[component(name = "success")]
    Success,
    /// `error`: the handler failed.
    #[component(name = "error")]
    Error,
}

/// `handle-message`'s parameters and results, as typed-function signatures.
type SpinParams<'a> = (&'a [u8],);
type SpinResults = (Result<(), SpinError>,);

/// Which entry point a plugin exports. Found once, at load, so a delivery
/// never looks anything up by name.
#[derive(Clone)]
pub enum Entry {
    /// A Sluice handler: the indices of `sluice:plugin/handler@0.1.0`.
    Sluice(HandlerIndices),
    /// A Spin Redis-trigger component: the index of its `handle-message`.
    Spin(ComponentExportIndex),
}

impl Entry {
    /// The entry point `pre`'s component exports: Sluice's handler first,
    /// then Spin's. The error says what is missing.
    pub fn find(pre: &InstancePre<EventState>) -> Result<Entry, String> {
        let sluice = match HandlerIndices::new(pre) {
            Ok(indices) => return Ok(Entry::Sluice(indices)),
            Err(e) => e,
        };
        let component = pre.component();
        if let Some(interface) = component.get_export_index(None, SPIN_INBOUND_REDIS) {
            let Some(index) = component.get_export_index(Some(&interface), HANDLE_MESSAGE) else {
                return Err(format!("its {SPIN_INBOUND_REDIS} export has no `{HANDLE_MESSAGE}` function"));
            };
            // Checked now, so that a wrong signature is refused at load
            // rather than failing every delivery.
            spin_signature(pre)?;
            return Ok(Entry::Spin(index));
        }
        if component.get_export_index(None, SPIN_3_INBOUND_REDIS).is_some() {
            return Err(format!("it exports Spin 3's async {SPIN_3_INBOUND_REDIS}, which Sluice does not run"));
        }
        Err(format!("{sluice:#}"))
    }

    /// This entry point in `instance`, an instance of the plugin it was
    /// found in.
    pub fn bind(&self, store: &mut Store<EventState>, instance: &Instance) -> wasmtime::Result<Bound> {
        match self {
            Entry::Sluice(indices) => Ok(Bound::Sluice(indices.load(store, instance)?)),
            Entry::Spin(index) => match instance.get_func(store, index) {
                Some(func) => Ok(Bound::Spin(func)),
                None => Err(wasmtime::format_err!("no {SPIN_INBOUND_REDIS} {HANDLE_MESSAGE} export")),
            },
        }
    }
}

/// Whether `pre`'s `handle-message` is Spin's:
/// `func(message: list<u8>) -> result<_, error>`, `error` an enum.
fn spin_signature(pre: &InstancePre<EventState>) -> Result<(), String> {
    let engine = pre.engine();
    let component = pre.component().component_type();
    let func = match component.get_export(engine, SPIN_INBOUND_REDIS).map(|e| e.ty) {
        Some(ComponentItem::ComponentInstance(i)) => i.get_export(engine, HANDLE_MESSAGE).map(|e| e.ty),
        _ => None,
    };
    let Some(ComponentItem::ComponentFunc(func)) = func else {
        return Err(format!("its {SPIN_INBOUND_REDIS} `{HANDLE_MESSAGE}` is not a function"));
    };
    let params: Vec<Type> = func.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = func.results().collect();
    let bytes = matches!(params.as_slice(), [Type::List(l)] if l.ty() == Type::U8);
    let result =
        matches!(results.as_slice(), [Type::Result(r)] if r.ok().is_none() && matches!(r.err(), Some(Type::Enum(_))));
    match bytes && result && !func.async_() {
        true => Ok(()),
        false => Err(format!(
            "its {SPIN_INBOUND_REDIS} `{HANDLE_MESSAGE}` is not Spin's `func(message: list<u8>) -> result<_, error>`"
        )),
    }
}

/// An instance's entry point, ready to call.
pub enum Bound {
    /// A Sluice handler instance.
    Sluice(Handler),
    /// A Spin component's `handle-message`.
    Spin(Func),
}

impl Bound {
    /// Delivers `event`, with Spin's result mapped onto Sluice's (see the
    /// module documentation).
    pub async fn call(&self, store: &mut Store<EventState>, event: &Event) -> wasmtime::Result<Result<(), Failure>> {
        match self {
            Bound::Sluice(handler) => handler.sluice_plugin_handler().call_handle(store, event).await,
            Bound::Spin(func) => {
                let handle_message = func.typed::<SpinParams<'_>, SpinResults>(&*store)?;
                let (result,) = handle_message.call_async(store, (event.data.as_slice(),)).await?;
                Ok(result.map_err(|_| spin_failure()))
            }
        }
    }
}

/// What a Spin `err` is to Sluice: a retry, after the usual backoff.
fn spin_failure() -> Failure {
    Failure::Retry(RetryAfter { reason: SPIN_ERROR.to_owned(), delay_ms: None })
}
