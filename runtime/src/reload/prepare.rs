//! Building the complete new state a change describes (config validated,
//! every changed plugin compiled and linked) before anything is swapped.

use crate::config::Config;
use crate::consumer::Binding;
use crate::wasm::{ComponentCache, FuelMetering, Plugin, Runtime};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tracing::warn;

/// A complete, validated state, ready to be swapped in.
pub struct NewState {
    /// The new config, validated.
    pub config: Config,
    /// One per handler, by name.
    pub bindings: BTreeMap<String, Binding>,
}

/// Builds the state `config_path` describes now. Plugins whose contents did
/// not change are reused; changed ones are compiled (or loaded from the
/// cache). A plugin file that was deleted keeps its loaded version, with a
/// warning, as long as that version suits the handler's `fuel` budget (or
/// the same file is loaded, by another handler, for the budget's engine).
/// Any error rejects the whole change.
pub async fn prepare(
    runtime: &Runtime,
    cache: &ComponentCache,
    config_path: &Path,
    current: &BTreeMap<String, Arc<Binding>>,
) -> anyhow::Result<NewState> {
    let config = Config::load_unchecked(config_path)?;
    let (total, room) = (in_flight_while_switching(&config, current), runtime.pool_instances as usize);
    anyhow::ensure!(
        total <= room,
        "{}: the handlers' concurrency adds up to {total} (for a handler already running, the larger of its old and new concurrency: its running events finish first), but this host's instance pool, sized when it started, has room for {room}: restart the host to apply this change",
        config_path.display()
    );
    let loaded: Vec<Arc<Plugin>> = current.values().map(|b| b.plugin.clone()).collect();
    let mut bindings = BTreeMap::new();
    for handler in &config.handlers {
        let plugin = match std::fs::read(&handler.plugin) {
            Ok(bytes) => {
                let fuel = FuelMetering::for_budget(handler.limits.fuel);
                plugin_for(runtime, cache, &handler.plugin, bytes, fuel, &loaded).await?
            }
            Err(_) => match current.get(&handler.name).filter(|b| b.plugin.path == handler.plugin) {
                // The loaded version, or (when the handler's budget changes)
                // the same file loaded by another handler for the engine the
                // budget needs: it cannot be compiled without the file.
                Some(b) => {
                    let fuel = FuelMetering::for_budget(handler.limits.fuel);
                    let version = loaded_as(&loaded, &b.plugin.digest, fuel, Some(&handler.plugin))
                        .ok_or_else(|| config.plugin_gone_for_budget(handler))?;
                    warn!(handler = %handler.name, "plugin file {} is gone; still serving the loaded version {}", handler.plugin.display(), version.version);
                    version
                }
                None => return Err(config.plugin_missing(handler).into()),
            },
        };
        bindings.insert(handler.name.clone(), Binding::new(handler.clone(), plugin));
    }
    Ok(NewState { config, bindings })
}

/// The most events the handlers may have in flight while the host switches
/// from `current` to `config`: a raised concurrency applies at once, a
/// lowered one as running events finish, and removed handlers drain.
fn in_flight_while_switching(config: &Config, current: &BTreeMap<String, Arc<Binding>>) -> usize {
    let mut most: BTreeMap<&str, usize> =
        current.iter().map(|(name, b)| (name.as_str(), b.handler.limits.concurrency)).collect();
    for h in &config.handlers {
        let n = most.entry(h.name.as_str()).or_default();
        *n = (*n).max(h.limits.concurrency);
    }
    most.values().sum()
}

/// The plugin with contents `digest` among `loaded`, compiled for the
/// engine `fuel` asks for (and, given `path`, loaded from that file), if
/// there is one.
fn loaded_as(loaded: &[Arc<Plugin>], digest: &str, fuel: FuelMetering, path: Option<&Path>) -> Option<Arc<Plugin>> {
    loaded.iter().find(|p| p.digest == digest && p.fuel() == fuel && path.is_none_or(|path| p.path == path)).cloned()
}

/// The plugin whose file holds `bytes`, for the engine that counts fuel or
/// the one that does not: an already loaded one with the same contents and
/// engine (from this file, else from a copy of it, then recorded as this
/// file's), else compiled now (on a blocking thread: it can take seconds).
/// So a budget added to, or removed from, a handler whose plugin did not
/// change moves it to the other engine.
async fn plugin_for(
    runtime: &Runtime,
    cache: &ComponentCache,
    path: &Path,
    bytes: Vec<u8>,
    fuel: FuelMetering,
    loaded: &[Arc<Plugin>],
) -> anyhow::Result<Arc<Plugin>> {
    let digest = crate::wasm::digest(&bytes);
    if let Some(p) = loaded_as(loaded, &digest, fuel, Some(path)) {
        return Ok(p);
    }
    if let Some(p) = loaded_as(loaded, &digest, fuel, None) {
        return Ok(Arc::new(p.as_file(path)));
    }
    let (runtime, cache, path) = (runtime.clone(), cache.clone(), path.to_owned());
    let plugin =
        tokio::task::spawn_blocking(move || Plugin::from_bytes(&runtime, Some(&cache), &path, &bytes, fuel)).await??;
    Ok(Arc::new(plugin))
}
