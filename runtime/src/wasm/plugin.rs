//! Loading a plugin file: compile it, find its entry point (a Sluice
//! handler's, or a Spin Redis-trigger component's: see [`super::entry`]),
//! and pre-instantiate it against the linker so each event only
//! instantiates.

use super::cache::{ComponentCache, Source, hex};
use super::engine::{FuelMetering, Runtime, Ticker};
use super::entry::Entry;
use super::executor::Executor;
use super::state::EventState;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, InstancePre};

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("{}: cannot read plugin: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// Not a WebAssembly component, or it does not compile.
    #[error("{}: not a valid WebAssembly component: {reason}", path.display())]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What the compiler said.
        reason: String,
    },
    /// It imports something the host does not provide.
    #[error("{}: imports something Sluice does not provide: {reason}", path.display())]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// The linker's error, naming the import.
        reason: String,
    },
    /// It exports neither `sluice:plugin/handler@0.1.0` nor Spin's
    /// `fermyon:spin/inbound-redis`.
    #[error(
        "{}: not a Sluice handler (it must export sluice:plugin/handler@0.1.0 or Spin's fermyon:spin/inbound-redis): {reason}",
        path.display()
    )]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// Why its exports match neither interface.
        reason: String,
    },
}

/// The SHA-256 of a plugin file's bytes, hex: tells whether a file changed.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The version a plugin with `digest` goes by: its first 12 hex digits.
pub fn version(digest: &str) -> String {
    digest[..12].to_owned()
}

/// A compiled, pre-instantiated handler plugin (a Sluice handler or a Spin
/// Redis-trigger component), ready to run events. The same `Plugin` serves
/// every handler that uses the same file; a copy of that file (the same
/// contents) shares its compiled component ([`Plugin::as_file`]).
#[derive(Clone)]
pub struct Plugin {
    /// The file it came from.
    pub path: PathBuf,
    /// The first 12 hex digits of the SHA-256 of the file: names this version
    /// in logs and dead-letter entries.
    pub version: String,
    /// The full SHA-256, hex: tells whether a file changed.
    pub digest: String,
    /// Whether it came from the compiled-component cache.
    pub source: Source,
    /// The component, linked: each delivery instantiates it.
    pub(super) pre: InstancePre<EventState>,
    /// What a delivery calls in the instance.
    pub(super) entry: Entry,
    /// Where its deliveries run.
    pub(super) executor: Executor,
    /// Whether its engine counts fuel.
    pub(super) fuel: FuelMetering,
    /// Its engine's epoch ticker, woken while a delivery runs.
    pub(super) ticker: Arc<Ticker>,
}

impl Plugin {
    /// Reads, compiles (or loads from `cache`) and links the plugin at `path`
    /// for the engine that counts fuel or the one that does not (`fuel`:
    /// [`FuelMetering::for_budget`] of its handler's budget). Compiling can
    /// take seconds: call this off the async executor.
    pub fn load(
        runtime: &Runtime,
        cache: Option<&ComponentCache>,
        path: &Path,
        fuel: FuelMetering,
    ) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_owned(), source })?;
        Self::from_bytes(runtime, cache, path, &bytes, fuel)
    }

    /// The same loaded code, as loaded from `path`, a copy of this
    /// plugin's file (the same contents): it shares the compiled component
    /// and says which file it is, so a handler whose file is a copy of
    /// another's is told about, and keeps serving after, its own file.
    pub fn as_file(&self, path: &Path) -> Plugin {
        Plugin { path: path.to_owned(), ..self.clone() }
    }

    /// [`Plugin::load`] for a file whose contents were already read.
    pub fn from_bytes(
        runtime: &Runtime,
        cache: Option<&ComponentCache>,
        path: &Path,
        bytes: &[u8],
        fuel: FuelMetering,
    ) -> Result<Plugin, PluginError> {
        let path = path.to_owned();
        let digest = digest(bytes);
        let flavour = runtime.flavour(fuel).map_err(|e| PluginError::Compile {
            path: path.clone(),
            reason: format!("cannot build the engine: {e:#}"),
        })?;
        let compiled = match cache {
            Some(cache) => cache.load(&flavour.engine, bytes, &digest),
            None => Component::new(&flavour.engine, bytes).map(|c| (c, Source::Compiled)),
        };
        let (component, source) =
            compiled.map_err(|e| PluginError::Compile { path: path.clone(), reason: format!("{e:#}") })?;
        let pre = flavour
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link { path: path.clone(), reason: format!("{e:#}") })?;
        let entry = Entry::find(&pre).map_err(|reason| PluginError::WrongWorld { path: path.clone(), reason })?;
        Ok(Plugin {
            version: version(&digest),
            digest,
            path,
            source,
            pre,
            entry,
            executor: runtime.executor.clone(),
            fuel,
            ticker: runtime.ticker.clone(),
        })
    }

    /// Whether it was compiled for the engine that counts fuel.
    pub fn fuel(&self) -> FuelMetering {
        self.fuel
    }

    /// Where this plugin's deliveries run.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The file name, for messages.
    pub fn file_name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    }
}
