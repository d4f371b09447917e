//! A handler as it runs now: config, plugin and sandbox, swapped whole.

use crate::config::Handler;
use crate::wasm::{Plugin, Sandbox};
use std::sync::Arc;

/// One handler as it runs now: its config, its plugin and its sandbox.
/// Swapped whole on reload; a delivery keeps the one it started with.
pub struct Binding {
    /// The handler's config, every default applied.
    pub handler: Handler,
    /// The compiled plugin it runs.
    pub plugin: Arc<Plugin>,
    /// What its deliveries run under: grants, time limit, key-value store.
    pub sandbox: Sandbox,
}

impl Binding {
    /// `handler` running `plugin`.
    pub fn new(handler: Handler, plugin: Arc<Plugin>) -> Binding {
        let sandbox = Sandbox::for_handler(&handler);
        Binding { handler, plugin, sandbox }
    }

    /// This binding on a host: key-value reads from `conn`, a demoted
    /// delivery's patience within `claim_idle` (see [`Sandbox::on_host`]).
    pub(super) fn on_host(
        self,
        conn: crate::stream::Conn,
        io: tokio::runtime::Handle,
        claim_idle: std::time::Duration,
    ) -> Binding {
        Binding { sandbox: self.sandbox.on_host(conn, io, claim_idle), ..self }
    }
}
