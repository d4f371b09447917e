//! Everything that runs WebAssembly: the engine, the one `bindgen!`, the
//! per-event store state, loading plugins and invoking a handler once.

pub mod bindings;
mod cache;
mod deadline;
mod effects;
mod engine;
mod entry;
mod executor;
mod http;
mod invoke;
mod output;
mod plugin;
mod reuse;
mod state;
mod usage;

pub use cache::{ComponentCache, Source, hex};
pub use effects::{Effects, KvWrite, Publish, kv_prefix};
pub use engine::{FuelMetering, Runtime};
pub use executor::{Executor, Lane, Straggler, Waited};
pub use http::HttpGrant;
pub use invoke::Outcome;
pub use plugin::{Plugin, PluginError, digest, version};
pub use state::{Grants, KvReads, Sandbox};
