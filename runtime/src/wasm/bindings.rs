//! The host side of `wit/plugin.wit`, generated once here; everything else
//! imports the types from this module. The world is called `plugin`, so the
//! generated world type is named [`Handler`] here, and its pre-instantiated
//! form [`HandlerPre`]: `Plugin` means a loaded plugin file ([`super::Plugin`]).

// Generated code cannot carry doc comments; `wit/plugin.wit` documents the contract.
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "plugin",
        imports: {
            // Reads Redis.
            "sluice:plugin/kv.get": async | trappable,
            // May stop the guest when it passes an output limit.
            "sluice:plugin/kv.set": trappable,
            "sluice:plugin/kv.delete": trappable,
            "sluice:plugin/host.log": trappable,
            "sluice:plugin/host.publish": trappable,
            "sluice:plugin/host.reply": trappable,
        },
        exports: { default: async },
    });
}

/// An instance of a handler component (the generated world type).
pub use generated::Plugin as Handler;
/// Where a handler component's exports are, found before instantiating it.
pub use generated::PluginIndices as HandlerIndices;
/// A handler component linked and ready to instantiate.
pub use generated::PluginPre as HandlerPre;
pub use generated::exports::sluice::plugin::handler::{Event, Failure};
pub use generated::sluice;
pub use generated::sluice::plugin::host::Level;
