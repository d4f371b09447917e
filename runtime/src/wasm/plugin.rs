//! Loading a plugin file: compile it, check it is a Sluice handler, and
//! pre-instantiate it against the linker so each event only instantiates.

use super::bindings::PluginPre;
use super::engine::Runtime;
use super::state::{EventState, Grants};
use crate::config::Handler;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Component;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("{}: cannot read plugin: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a WebAssembly component, or it does not compile.
    #[error("{}: not a valid WebAssembly component: {reason}", path.display())]
    Compile { path: PathBuf, reason: String },
    /// It imports something the host does not provide.
    #[error("{}: imports something Sluice does not provide: {reason}", path.display())]
    Link { path: PathBuf, reason: String },
    /// It does not export `sluice:plugin/handler@0.1.0`.
    #[error("{}: not a Sluice handler (it must export sluice:plugin/handler@0.1.0): {reason}", path.display())]
    WrongWorld { path: PathBuf, reason: String },
}

/// A compiled, pre-instantiated handler plugin, ready to run events.
#[derive(Clone)]
pub struct Plugin {
    /// The file it came from.
    pub path: PathBuf,
    /// A short hash of the file's bytes, to tell versions apart.
    pub version: String,
    pub(super) pre: PluginPre<EventState>,
    pub(super) grants: Arc<Grants>,
    pub(super) timeout: std::time::Duration,
}

impl Plugin {
    /// Reads, compiles and links the plugin `handler` uses.
    pub fn load(runtime: &Runtime, handler: &Handler) -> Result<Plugin, PluginError> {
        let path = handler.plugin.clone();
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Read { path: path.clone(), source })?;
        let component = Component::new(&runtime.engine, &bytes)
            .map_err(|e| PluginError::Compile { path: path.clone(), reason: format!("{e:#}") })?;
        let instance_pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link { path: path.clone(), reason: format!("{e:#}") })?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| PluginError::WrongWorld { path: path.clone(), reason: format!("{e:#}") })?;
        let grants = Grants {
            handler: handler.name.clone(),
            publish: handler.publish.clone(),
            memory_bytes: handler.limits.memory_bytes,
        };
        Ok(Plugin { version: version_of(&bytes), path, pre, grants: Arc::new(grants), timeout: handler.limits.timeout })
    }

    /// The file name, for messages.
    pub fn file_name(&self) -> &str {
        file_name(&self.path)
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
}

/// A short content hash (the first 12 hex digits of SHA-256) that names
/// this version of a plugin in logs and dead-letter entries.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
