//! Sluice: an event runtime that reads Redis Streams through consumer groups
//! and hands each entry to a sandboxed WebAssembly component, the handler.
//!
//! # Layout
//! - [`config`]: the `config.toml` shape, defaults and validation.
//! - [`limits`]: every limit a handler runs under, with its default and range.
//! - [`event`]: stream entries, and the fields Sluice writes on publish.
//! - [`dead_letter`]: the dead-letter and inbox entry format, written and read.
//! - [`event_json`]: an event as JSON, for `sluice invoke` and `sluice dlq show`.
//! - [`schema`]: `[schemas]`, JSON Schemas that events of a type must satisfy.
//! - [`stream`]: everything that speaks Redis: groups, reads, claims, commit transactions.
//! - [`wasm`]: the engine, the one `bindgen!`, per-event stores, loading plugins.
//! - [`dispatch`]: the delivery decision (skip, ack, retry, dead-letter), in one place.
//! - [`retry`]: the retry policy: attempts and backoff.
//! - [`consumer`]: one handler's read/deliver/commit loop.
//! - [`host`]: `sluice run`: every consumer, reloads, and shutdown.
//! - [`reload`]: watching for changes and building the new state to swap in.
//! - [`metrics`], [`admin`]: Prometheus metrics, health and readiness over HTTP.
//! - [`upkeep`]: trimming bounded streams and forgetting idle consumers, one host at a time.
//! - [`embedded`]: the `redis-server` Sluice starts when no URL is configured.
//! - [`offline`]: `sluice invoke`, one delivery without Redis.
//! - [`scaffold`]: `sluice new`, a handler project to start from.
//! - [`ops`]: `sluice dlq`, `replay`, `status`: operating a running system.
//! - [`cli`]: the command line: arguments, what each subcommand does.
//! - [`publish`], [`logging`]: `sluice publish`; log output.
//! - [`request`]: request/reply over streams (`reply_to`, `host.reply`, `sluice request`).
//! - [`ingress`]: the HTTP ingress (`[host] ingress`): events and requests over HTTP.

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dashboard;
pub mod dead_letter;
pub mod dispatch;
pub mod embedded;
pub mod event;
pub mod event_json;
pub mod format;
pub mod host;
pub mod ingress;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod ops;
pub mod publish;
pub mod reload;
pub mod request;
pub mod retry;
pub mod scaffold;
pub mod schema;
pub mod stream;
pub mod upkeep;
pub mod wasm;
pub mod web;
