//! The host side of `wit/plugin.wit`, generated once here; everything else
//! imports the types from this module.

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
    exports: { default: async },
});

pub use exports::sluice::plugin::handler::{Event, Failure};
pub use sluice::plugin::host::Level;
