//! Everything that runs WebAssembly: the engine, the one `bindgen!`, the
//! per-event store state, loading plugins and invoking a handler once.

pub mod bindings;
mod cache;
mod engine;
mod invoke;
mod output;
mod plugin;
mod state;

pub use cache::{ComponentCache, Source, hex};
pub use engine::Runtime;
pub use invoke::{Outcome, Publish};
pub use plugin::{Plugin, PluginError};
pub use state::{Grants, Sandbox};
