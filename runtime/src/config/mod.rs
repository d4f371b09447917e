//! The `config.toml` file: its shape, its defaults, loading and validation.
//!
//! [`model`] is the TOML as users write it (serde, unknown keys rejected);
//! [`Config::load`] parses, expands `${ENV}` references, checks everything and
//! resolves each handler into a [`Handler`] with every default applied. Errors
//! name the file, line, column and key ([`ConfigError`]).

mod env;
mod error;
mod handler;
mod locate;
pub mod model;
mod streams;
mod validate;

pub use error::ConfigError;
pub use handler::Handler;
pub use model::{DEFAULT_CLAIM_IDLE_MS, DEFAULT_FORGET_CONSUMERS_AFTER_MS, DEFAULT_PLUGINS_DIR, Isolation};
pub use streams::{StreamRule, StreamRules};

use crate::schema::Schemas;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[redis]`, resolved: where Redis is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSettings {
    /// The URL with `${ENV}` expanded; `None` means the embedded server
    /// under `.sluice/`.
    pub url: Option<String>,
    /// Whether `url` is one seed node of a Redis Cluster (the other nodes
    /// are discovered). Sluice then names its own keys so that one script
    /// can finish a delivery wherever the streams allow (docs/delivery.md).
    pub cluster: bool,
    /// Redis Sentinel: the sentinels to ask where the primary is (`${ENV}`
    /// expanded), with `url`'s host the name they know it by; empty
    /// without Sentinel.
    pub sentinels: Vec<String>,
    /// The CA to trust for `rediss://` instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate for mutual TLS (always with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (always with `cert_file`).
    pub key_file: Option<PathBuf>,
}

/// A loaded, validated configuration with every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its text, to point at keys in later errors.
    source: Arc<str>,
    /// Where Redis is and how to reach it.
    pub redis: RedisSettings,
    /// The folder holding the `*.wasm` plugins, already resolved against the
    /// config file's folder.
    pub plugins_dir: PathBuf,
    /// The consumer name this host uses in every group.
    pub consumer: String,
    /// How long an entry must sit unacknowledged with another consumer
    /// before this host claims it.
    pub claim_idle_ms: u64,
    /// Where the admin listener serves `/metrics`, `/healthz`, `/readyz`
    /// and the dashboard; `None`: no listener.
    pub admin: Option<std::net::SocketAddr>,
    /// The Bearer token the dashboard's actions require, `${ENV}` expanded;
    /// `None`: actions are disabled.
    pub admin_token: Option<String>,
    /// The HTTP ingress, if the config asks for one.
    pub ingress: Option<IngressSettings>,
    /// Every handler, sorted by name.
    pub handlers: Vec<Handler>,
    /// `[streams]`: how much of each stream to keep.
    pub streams: Arc<StreamRules>,
    /// How long a consumer with nothing pending must be idle before a live
    /// host deletes it from its group.
    pub forget_consumers_after_ms: u64,
    /// `[schemas]`, compiled; each handler holds the same set.
    pub schemas: Arc<Schemas>,
}

/// `[host] ingress`, `ingress_token`, `ingress_streams`, checked.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The Bearer token it requires, `${ENV}` expanded; `None`: none (only
    /// on loopback).
    pub token: Option<String>,
    /// The stream globs as written.
    pub streams: Vec<String>,
    /// `streams`, compiled.
    pub allowed: globset::GlobSet,
}

impl Config {
    /// Reads, parses and validates the config file at `path`, including that
    /// every plugin file exists.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::load_unchecked(path)?;
        config.check_plugin_files()?;
        Ok(config)
    }

    /// [`Config::load`] without checking that plugin files exist (a reload
    /// keeps serving a deleted plugin's loaded version).
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let source =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse_unchecked(path, &source)
    }

    /// Parses and validates `source` as if read from `path` (which locates the
    /// plugins folder and names the file in errors).
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let config = Self::parse_unchecked(path, source)?;
        config.check_plugin_files()?;
        Ok(config)
    }

    /// [`Config::parse`] without checking that plugin files exist.
    pub fn parse_unchecked(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: model::RawConfig =
            toml::from_str(source).map_err(|err| ConfigError::parse(path, source, err.span(), err.message()))?;
        validate::resolve(path, source, raw)
    }

    /// Where the value of the dotted key `key` (e.g. `["handlers", "a",
    /// "timeout_ms"]`) is in the config file, for a later error: the file,
    /// and the line and column when the key is written there.
    pub fn location_of(&self, key: &[&str]) -> error::Location {
        error::Location::at(&self.path, &self.source, locate::offset_of(&self.source, key))
    }

    /// The handlers' `concurrency` added up: the most events they may have
    /// in flight at once.
    pub fn total_concurrency(&self) -> usize {
        self.handlers.iter().map(|h| h.limits.concurrency).sum()
    }

    /// Fails on the first handler whose plugin file does not exist.
    pub fn check_plugin_files(&self) -> Result<(), ConfigError> {
        match self.handlers.iter().find(|h| !h.plugin.is_file()) {
            Some(h) => Err(self.plugin_missing(h)),
            None => Ok(()),
        }
    }

    /// The error for `handler`'s plugin file not existing, with its location.
    pub fn plugin_missing(&self, handler: &Handler) -> ConfigError {
        validate::plugin_missing(self, handler)
    }

    /// The error for `handler`'s plugin file not existing when a reload
    /// gives it a `fuel` budget or takes its budget away: the version still
    /// loaded was compiled for the other case.
    pub fn plugin_gone_for_budget(&self, handler: &Handler) -> ConfigError {
        validate::plugin_gone_for_budget(self, handler)
    }

    /// The folder that holds the config file; relative paths start here.
    pub fn base_dir(&self) -> &Path {
        base_dir(&self.path)
    }

    /// The folder for Sluice's own files beside the config (`.sluice/`).
    pub fn state_dir(&self) -> PathBuf {
        self.base_dir().join(".sluice")
    }

    /// The handler called `name`, if configured.
    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.handlers.iter().find(|h| h.name == name)
    }
}

/// The folder holding `config_path`, `.` for a bare file name.
pub fn base_dir(config_path: &Path) -> &Path {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
