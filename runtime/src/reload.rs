//! Hot reload: noticing that the config or a plugin changed, and building
//! the complete new state (config validated, every changed plugin compiled
//! and linked) before anything is swapped. The swap itself is in [`crate::host`].

use crate::config::Config;
use crate::consumer::Binding;
use crate::wasm::{ComponentCache, Plugin, Runtime};
use notify::{EventKind, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Quiet time after the last file event before reloading: editors and copies
/// write in several steps, and a half-written file must not be loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the config file and the plugins folder.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

/// Starts watching; the receiver yields once per burst of relevant changes.
pub fn watch(config_path: &Path, plugins_dir: &Path) -> anyhow::Result<(Watcher, mpsc::Receiver<()>)> {
    let (raw_tx, raw_rx) = mpsc::channel(64);
    let relevant = Relevant::new(config_path, plugins_dir);
    let (config_dir, plugins_dir) = (relevant.config_dir.clone(), relevant.plugins_dir.clone());
    let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| relevant.matches(p))
        {
            tracing::debug!(paths = ?event.paths, "change noticed");
            let _ = raw_tx.try_send(()); // full: a reload is already due
        }
    })?;
    // Watch folders, not files: editors save by writing a new file and
    // renaming it over the old one.
    inner.watch(&config_dir, RecursiveMode::NonRecursive)?;
    if plugins_dir.is_dir() && plugins_dir != config_dir {
        inner.watch(&plugins_dir, RecursiveMode::NonRecursive)?;
    }
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(debounce(raw_rx, tx));
    Ok((Watcher { _inner: inner }, rx))
}

/// Which paths a reload cares about.
struct Relevant {
    config_dir: PathBuf,
    config_name: std::ffi::OsString,
    plugins_dir: PathBuf,
}

impl Relevant {
    fn new(config_path: &Path, plugins_dir: &Path) -> Relevant {
        let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        Relevant {
            config_dir: abs(crate::config::base_dir(config_path)),
            config_name: config_path.file_name().unwrap_or_default().to_owned(),
            plugins_dir: abs(plugins_dir),
        }
    }

    fn matches(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
        (dir == self.config_dir && name == self.config_name)
            || (dir == self.plugins_dir && path.extension().is_some_and(|e| e == "wasm"))
    }
}

/// Forwards one signal per burst of `raw` signals, once `DEBOUNCE` passes quietly.
async fn debounce(mut raw: mpsc::Receiver<()>, out: mpsc::Sender<()>) {
    while raw.recv().await.is_some() {
        loop {
            match tokio::time::timeout(DEBOUNCE, raw.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if out.send(()).await.is_err() {
            return;
        }
    }
}

/// A complete, validated state, ready to be swapped in.
pub struct NewState {
    pub config: Config,
    /// One per handler, by name.
    pub bindings: BTreeMap<String, Binding>,
}

/// Builds the state `config_path` describes now. Plugins whose contents did
/// not change are reused; changed ones are compiled (or loaded from the
/// cache). A plugin file that was deleted keeps its loaded version, with a
/// warning. Any error rejects the whole change.
pub async fn prepare(
    runtime: &Runtime,
    cache: &ComponentCache,
    config_path: &Path,
    current: &BTreeMap<String, Arc<Binding>>,
) -> anyhow::Result<NewState> {
    let config = Config::load_unchecked(config_path)?;
    let loaded: Vec<Arc<Plugin>> = current.values().map(|b| b.plugin.clone()).collect();
    let mut bindings = BTreeMap::new();
    for handler in &config.handlers {
        let plugin = match std::fs::read(&handler.plugin) {
            Ok(bytes) => plugin_for(runtime, cache, &handler.plugin, bytes, &loaded).await?,
            Err(_) => match current.get(&handler.name).filter(|b| b.plugin.path == handler.plugin) {
                Some(b) => {
                    warn!(handler = %handler.name, "plugin file {} is gone; still serving the loaded version {}", handler.plugin.display(), b.plugin.version);
                    b.plugin.clone()
                }
                None => return Err(config.plugin_missing(handler).into()),
            },
        };
        bindings.insert(handler.name.clone(), Binding::new(handler.clone(), plugin));
    }
    Ok(NewState { config, bindings })
}

/// The plugin whose file holds `bytes`: an already loaded one with the same
/// contents, else compiled now (on a blocking thread: it can take seconds).
async fn plugin_for(
    runtime: &Runtime,
    cache: &ComponentCache,
    path: &Path,
    bytes: Vec<u8>,
    loaded: &[Arc<Plugin>],
) -> anyhow::Result<Arc<Plugin>> {
    let digest = crate::wasm::hex(&Sha256::digest(&bytes));
    if let Some(p) = loaded.iter().find(|p| p.digest == digest) {
        return Ok(p.clone());
    }
    let (runtime, cache, path) = (runtime.clone(), cache.clone(), path.to_owned());
    let plugin =
        tokio::task::spawn_blocking(move || Plugin::from_bytes(&runtime, Some(&cache), &path, &bytes)).await??;
    Ok(Arc::new(plugin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_to_the_config_or_a_plugin_is_one_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let plugins = dir.path().join("plugins");
        std::fs::write(&config, "").unwrap();
        std::fs::create_dir(&plugins).unwrap();
        let (_w, mut rx) = watch(&config, &plugins).unwrap();
        for i in 0..5 {
            std::fs::write(&config, format!("# {i}")).unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "config write noticed");
        assert!(tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_err(), "one trigger per burst");
        std::fs::write(plugins.join("x.wasm"), "x").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "plugin write noticed");
        std::fs::write(plugins.join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        assert!(tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_err(), "other files are ignored");
    }
}
