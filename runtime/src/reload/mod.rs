//! Hot reload, in one place: noticing a change ([`watch`]), building the
//! complete new state before anything is swapped ([`prepare`]), and
//! swapping it in, handler by handler, while in-flight deliveries finish on
//! the old one (`apply`), and remembering the last ones ([`ReloadLog`]). [`crate::host`] holds the fleet of consumers and
//! `run`; this module changes it.

mod apply;
mod history;
mod prepare;
mod watch;

pub use apply::ReloadReport;
pub(crate) use apply::Reloader;
pub use history::{ReloadLog, ReloadRecord};
pub use prepare::{NewState, prepare};
pub use watch::{DEBOUNCE, Watcher, named_schema_files, watch};
