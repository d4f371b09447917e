//! The state of one delivery's `Store`: WASI (with nothing granted), the
//! memory limiter, the output capture and the buffered publishes.

use super::bindings::sluice::plugin::host::{self, Level};
use super::bindings::sluice::plugin::types;
use super::invoke::Publish;
use super::output::Captured;
use crate::config::Handler;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most publishes one delivery may buffer.
pub const MAX_PUBLISHES: usize = 1_024;
/// Most table elements an instance may grow a table to.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a handler is allowed: fixed per handler, shared by its deliveries.
#[derive(Debug)]
pub struct Grants {
    /// The handler's name, for messages.
    pub handler: String,
    /// Streams it may publish to.
    pub publish: Vec<String>,
    /// Linear memory cap, in bytes.
    pub memory_bytes: usize,
}

impl Grants {
    /// What `handler`'s configuration allows it.
    pub fn for_handler(handler: &Handler) -> Grants {
        Grants {
            handler: handler.name.clone(),
            publish: handler.publish.clone(),
            memory_bytes: handler.limits.memory_bytes,
        }
    }
}

/// What one handler's deliveries run under: its grants and its time limit.
/// Built once per handler (and per reload), shared by its deliveries.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub grants: Arc<Grants>,
    /// How long one delivery may run.
    pub timeout: Duration,
}

impl Sandbox {
    /// The sandbox `handler`'s configuration asks for.
    pub fn for_handler(handler: &Handler) -> Sandbox {
        Sandbox { grants: Arc::new(Grants::for_handler(handler)), timeout: handler.limits.timeout }
    }
}

/// The data of one delivery's `Store`. Created fresh for every delivery, so
/// nothing survives from one event to the next.
pub struct EventState {
    wasi: WasiCtx,
    table: ResourceTable,
    grants: Arc<Grants>,
    /// Set when the guest asked for more memory than `grants.memory_bytes`.
    pub memory_denied: bool,
    /// Publishes made so far, written only if the handler succeeds.
    pub publishes: Vec<Publish>,
    /// The guest's stdout and stderr.
    pub stdout: Captured,
    pub stderr: Captured,
    /// The last non-empty line the guest wrote to stderr (a panic message,
    /// usually), kept to explain a trap.
    pub last_stderr_line: Option<String>,
}

impl EventState {
    /// A state that grants nothing beyond `grants`: no files, no environment,
    /// no network, no arguments; stdout and stderr are captured.
    pub fn new(grants: Arc<Grants>) -> Self {
        let stdout = Captured::default();
        let stderr = Captured::default();
        let wasi = WasiCtx::builder().stdout(stdout.clone()).stderr(stderr.clone()).build();
        EventState {
            wasi,
            table: ResourceTable::new(),
            grants,
            memory_denied: false,
            publishes: Vec::new(),
            stdout,
            stderr,
            last_stderr_line: None,
        }
    }

    /// The handler's memory cap, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.grants.memory_bytes
    }
}

impl WasiView for EventState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for EventState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.grants.memory_bytes;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl types::Host for EventState {}

impl host::Host for EventState {
    fn log(&mut self, level: Level, message: String) {
        match level {
            Level::Trace => tracing::trace!(target: "sluice::plugin", "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::plugin", "{message}"),
            Level::Info => tracing::info!(target: "sluice::plugin", "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin", "{message}"),
            Level::Error => tracing::error!(target: "sluice::plugin", "{message}"),
        }
    }

    fn publish(&mut self, stream: String, event_type: String, data: Vec<u8>) -> Result<(), String> {
        if !self.grants.publish.iter().any(|s| *s == stream) {
            return Err(format!(
                "stream {stream:?} is not granted to handler {:?} (add it to handlers.{}.publish in the config)",
                self.grants.handler, self.grants.handler
            ));
        }
        if self.publishes.len() >= MAX_PUBLISHES {
            return Err(format!("at most {MAX_PUBLISHES} publishes per event"));
        }
        self.publishes.push(Publish { stream, event_type, data });
        Ok(())
    }
}
