//! The host side of `wit/plugin.wit`, generated once here; everything else
//! imports the types from this module.

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
    },
    exports: { default: async },
});

pub use exports::sluice::plugin::handler::{Event, Failure};
pub use sluice::plugin::host::Level;
