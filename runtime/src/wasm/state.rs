//! The state of one delivery's `Store`: WASI (with nothing granted), the
//! memory limiter, output capture and limits, and the buffered effects.

use super::bindings::sluice::plugin::host::{self, Level};
use super::bindings::sluice::plugin::{config, kv, types};
use super::deadline::Deadline;
use super::effects::{Effects, KvWrite, Publish};
use super::http::HttpGrant;
use super::output::Captured;
use super::reuse::InstancePool;
use super::usage::Usage;
use crate::config::{Handler, Isolation};
use crate::limits::{
    MAX_HOST_RESOURCES, MAX_HTTP_FIELDS_BYTES, MAX_STDIO_BYTES, MAX_TABLE_ELEMENTS, idle_lane_patience,
};
use crate::logging::event_line;
use crate::schema::Schemas;
use crate::stream::Conn;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What a handler is allowed: fixed per handler, shared by its deliveries.
#[derive(Debug)]
pub struct Grants {
    /// The handler's name, for messages.
    pub handler: String,
    /// What its key-value keys start with.
    pub kv_prefix: String,
    /// Streams it may publish to.
    pub publish: Vec<String>,
    /// Linear memory cap, in bytes.
    pub memory_bytes: usize,
    /// Its `[handlers.NAME.config]` table, expanded.
    pub config: BTreeMap<String, String>,
    /// Hosts it may call over HTTP.
    pub http: HttpGrant,
    /// What the events it publishes must satisfy.
    pub schemas: Arc<Schemas>,
    /// The format of each stream it publishes to ([`crate::format`]).
    pub formats: Arc<crate::config::StreamRules>,
}

impl Grants {
    /// What `handler`'s configuration allows it.
    pub fn for_handler(handler: &Handler) -> Grants {
        Grants {
            handler: handler.name.clone(),
            kv_prefix: handler.kv_prefix.clone(),
            publish: handler.publish.clone(),
            memory_bytes: handler.limits.memory_bytes,
            config: handler.config.clone(),
            http: HttpGrant::new(handler.http.clone()),
            schemas: handler.schemas.clone(),
            formats: handler.formats.clone(),
        }
    }
}

/// What one handler's deliveries run under: its grants, its time limit and
/// its key-value store. Built once per handler (and per reload).
#[derive(Clone)]
pub struct Sandbox {
    /// What the handler is allowed.
    pub grants: Arc<Grants>,
    /// How long one delivery may run.
    pub timeout: Duration,
    /// Fuel per delivery; `None`: unlimited.
    pub fuel: Option<u64>,
    /// Where `kv.get` reads; `None` offline (reads then find nothing).
    pub kv: Option<KvReads>,
    /// How long a delivery of a demoted handler (on the idle lane, its
    /// `timeout_ms` counted in CPU time) may take in wall time.
    pub patience: Duration,
    /// Idle instances kept for reuse (`isolation = "reuse"`); `None`: a
    /// fresh instance per delivery.
    pub pool: Option<Arc<InstancePool>>,
}

impl Sandbox {
    /// The sandbox `handler`'s configuration asks for, without Redis.
    pub fn for_handler(handler: &Handler) -> Sandbox {
        let grants = Arc::new(Grants::for_handler(handler));
        let pool = (handler.isolation == Isolation::Reuse).then(Arc::default);
        let timeout = handler.limits.timeout;
        let patience = idle_lane_patience(timeout, Duration::MAX);
        Sandbox { grants, timeout, patience, fuel: handler.limits.fuel, kv: None, pool }
    }

    /// This sandbox on a host: key-value reads from `conn`, sent from `io`
    /// (the host's runtime), and a demoted delivery's wall time within the
    /// host's `claim_idle` (see [`idle_lane_patience`]).
    pub fn on_host(mut self, conn: Conn, io: tokio::runtime::Handle, claim_idle: Duration) -> Sandbox {
        self.kv = Some(KvReads { conn, io });
        self.patience = idle_lane_patience(self.timeout, claim_idle);
        self
    }
}

/// Where a handler's `kv.get` reads: a connection, and the runtime that
/// drives it. A read is sent from that runtime, not from the wasm thread
/// that asks: a reconnect starts its connection's task on the runtime it is
/// made from, and a demoted handler's idle-priority threads must never end
/// up driving everyone's Redis connection.
#[derive(Clone)]
pub struct KvReads {
    conn: Conn,
    io: tokio::runtime::Handle,
}

impl KvReads {
    /// `GET key`.
    async fn get(&self, key: String) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let read = async move { redis::cmd("GET").arg(key).query_async(&mut conn).await };
        self.io.spawn(read).await.unwrap_or_else(|e| {
            Err(redis::RedisError::from((redis::ErrorKind::Io, "the read was cancelled", e.to_string())))
        })
    }
}

/// The data of one delivery's `Store`. Created fresh for every delivery, so
/// nothing survives from one event to the next.
pub struct EventState {
    /// Built on the guest's first WASI call: most deliveries of a handler
    /// that only computes make none, and building one is a tenth of a
    /// fresh instance's cost.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    grants: Arc<Grants>,
    kv: Option<KvReads>,
    http: WasiHttpCtx,
    http_grant: HttpGrant,
    /// Output counted against the per-delivery limits.
    pub usage: Usage,
    /// Set when the guest asked for more memory than `grants.memory_bytes`.
    pub memory_denied: bool,
    /// Linear memory in use across all of the instance's memories (a
    /// component can have several; the cap is on their sum).
    memory_total: usize,
    /// Publishes and key-value writes, committed only if the handler succeeds.
    pub effects: Effects,
    /// This delivery's own key-value writes, for read-your-writes.
    overlay: HashMap<String, Option<Vec<u8>>>,
    /// The event's `reply_to` field: where `host.reply` writes.
    pub reply_to: Option<String>,
    /// The guest's stdout and stderr.
    pub stdout: Captured,
    pub stderr: Captured,
    /// The last non-empty line the guest wrote to stderr (a panic message,
    /// usually), kept to explain a trap.
    pub last_stderr_line: Option<String>,
    /// When the current delivery's time is up.
    pub deadline: Deadline,
}

impl EventState {
    /// A state that grants nothing beyond `sandbox`: no files, no environment,
    /// no network, no arguments; stdout and stderr are captured. The
    /// delivery's time is up at `deadline`.
    pub fn new(sandbox: &Sandbox, deadline: Deadline) -> Self {
        let stdout = Captured::new("stdout", MAX_STDIO_BYTES);
        let stderr = Captured::new("stderr", MAX_STDIO_BYTES);
        EventState {
            wasi: None,
            table: bounded_table(),
            grants: sandbox.grants.clone(),
            kv: sandbox.kv.clone(),
            http: http_ctx(),
            http_grant: sandbox.grants.http.clone(),
            usage: Usage::default(),
            memory_denied: false,
            memory_total: 0,
            effects: Effects::default(),
            overlay: HashMap::new(),
            reply_to: None,
            stdout,
            stderr,
            last_stderr_line: None,
            deadline,
        }
    }

    /// Readies a reused instance's state for its next delivery: output,
    /// limits and effects start afresh; memory in use carries over (it is
    /// still there). Its time is up at `deadline`.
    pub fn next_delivery(&mut self, deadline: Deadline) {
        self.usage = Usage::default();
        self.memory_denied = false;
        self.effects = Effects::default();
        self.overlay.clear();
        self.reply_to = None;
        self.stdout.reset();
        self.stderr.reset();
        self.last_stderr_line = None;
        self.deadline = deadline;
    }

    /// The handler's memory cap, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.grants.memory_bytes
    }

    /// The output limit this delivery passed, if any.
    pub fn limit_exceeded(&self) -> Option<String> {
        self.usage.exceeded.clone().or_else(|| self.stdout.exceeded()).or_else(|| self.stderr.exceeded())
    }
}

/// A WASI context that grants nothing: no files, no environment, no
/// network, no arguments; stdout and stderr go to `stdout` and `stderr`.
fn no_grants(stdout: &Captured, stderr: &Captured) -> WasiCtx {
    WasiCtx::builder()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// A delivery's resource table: at most [`MAX_HOST_RESOURCES`] at once (a
/// plugin that makes more traps).
fn bounded_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_RESOURCES);
    table
}

/// A delivery's `wasi:http` context: header maps of at most
/// [`MAX_HTTP_FIELDS_BYTES`] each (a larger one is refused to the plugin).
fn http_ctx() -> WasiHttpCtx {
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
    http
}

impl WasiView for EventState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (stdout, stderr) = (&self.stdout, &self.stderr);
        let ctx = self.wasi.get_or_insert_with(|| no_grants(stdout, stderr));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

impl WasiHttpView for EventState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_grant }
    }
}

impl ResourceLimiter for EventState {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_total - current.min(self.memory_total) + desired;
        let allowed = total <= self.grants.memory_bytes;
        if allowed {
            self.memory_total = total;
        }
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl types::Host for EventState {}

impl host::Host for EventState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.usage.log(message.len())?;
        match level {
            Level::Trace => event_line!(TRACE, target: "sluice::plugin", "{message}"),
            Level::Debug => event_line!(DEBUG, target: "sluice::plugin", "{message}"),
            Level::Info => event_line!(INFO, target: "sluice::plugin", "{message}"),
            Level::Warn => event_line!(WARN, target: "sluice::plugin", "{message}"),
            Level::Error => event_line!(ERROR, target: "sluice::plugin", "{message}"),
        }
        Ok(())
    }

    fn publish(&mut self, stream: String, event_type: String, data: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !self.grants.publish.contains(&stream) {
            let h = &self.grants.handler;
            return Ok(Err(format!(
                "stream {stream:?} is not granted to handler {h:?} (add it to handlers.{h}.publish in the config)"
            )));
        }
        self.usage.publish(data.len() + event_type.len())?;
        let format = self.grants.formats.format(&stream);
        if let Err(why) = format.check(&data) {
            return Ok(Err(format!("stream {stream:?} is in {} format: {why}", format.name())));
        }
        // The data its stream's handlers will get (a LeanMQ message holds
        // its type), so a schema passes here exactly when it passes there.
        if let Err(invalid) = self.grants.schemas.check(&event_type, &format.delivered(&event_type, &data)) {
            return Ok(Err(invalid.to_string()));
        }
        self.effects.publishes.push(Publish { stream, event_type, data });
        Ok(Ok(()))
    }

    fn reply(&mut self, event_type: String, data: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let Some(stream) = self.reply_to.clone() else {
            return Ok(Err(
                "this event has no reply_to field: it is not a request, so there is no one to reply to".into()
            ));
        };
        if !stream.starts_with(crate::request::REPLY_PREFIX) {
            let prefix = crate::request::REPLY_PREFIX;
            return Ok(Err(format!(
                "reply_to {stream:?} is not a reply stream (its name must start with {prefix}): not replying there"
            )));
        }
        if self.effects.reply.is_some() {
            return Ok(Err("this request was answered already: one reply per request".into()));
        }
        self.usage.publish(data.len() + event_type.len())?;
        self.effects.reply = Some(Publish { stream, event_type, data });
        Ok(Ok(()))
    }
}

impl kv::Host for EventState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        self.usage.kv_read(&key)?;
        if let Some(buffered) = self.overlay.get(&key) {
            return Ok(Ok(buffered.clone()));
        }
        let Some(kv) = &self.kv else { return Ok(Ok(None)) };
        self.usage.kv_fetch()?;
        let value = kv.get(format!("{}{key}", self.grants.kv_prefix)).await;
        Ok(value.map_err(|e| format!("kv unavailable: {e}")))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        self.usage.kv_write(&key, value.len())?;
        self.usage.kv_ttl(ttl_ms)?;
        self.overlay.insert(key.clone(), Some(value.clone()));
        self.effects.kv.push(KvWrite::Set { key, value, ttl_ms });
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.usage.kv_write(&key, 0)?;
        self.overlay.insert(key.clone(), None);
        self.effects.kv.push(KvWrite::Delete { key });
        Ok(())
    }
}

impl config::Host for EventState {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).cloned()
    }
}
