//! Noticing that the config, a plugin or a schema file changed: folders
//! watched, relevant paths filtered (a symlink swapped under a file, as a
//! Kubernetes ConfigMap is updated, included), bursts debounced into one
//! trigger.

use crate::config::Config;
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Quiet time after the last file event before reloading: editors and copies
/// write in several steps, and a half-written file must not be loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the config file, the plugins folder and the schema files.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    relevant: Arc<RwLock<Relevant>>,
}

/// Starts watching the config file, the plugins folder and every schema
/// file `config` names; the receiver yields once per burst of relevant
/// changes.
pub fn watch(config: &Config) -> anyhow::Result<(Watcher, mpsc::Receiver<()>)> {
    let (raw_tx, raw_rx) = mpsc::channel(64);
    let relevant = Arc::new(RwLock::new(Relevant::new(&config.path, &config.plugins_dir)));
    let seen = relevant.clone();
    let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| seen.read().expect("never poisoned").matches(p))
        {
            tracing::debug!(paths = ?event.paths, "change noticed");
            let _ = raw_tx.try_send(()); // full: a reload is already due
        }
    })?;
    let mut watcher = Watcher { inner, relevant };
    let (config_dir, plugins_dir) = {
        let r = watcher.relevant.read().expect("never poisoned");
        (r.config_dir.clone(), r.plugins_dir.clone())
    };
    // Watch folders, not files: editors save by writing a new file and
    // renaming it over the old one.
    watcher.inner.watch(&config_dir, RecursiveMode::NonRecursive)?;
    if plugins_dir.is_dir() && plugins_dir != config_dir {
        watcher.inner.watch(&plugins_dir, RecursiveMode::NonRecursive)?;
    }
    watcher.follow_schemas(config.schemas.files().map(Path::to_owned));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(debounce(raw_rx, tx));
    Ok((watcher, rx))
}

impl Watcher {
    /// Watches `files` (schema files), in place of those followed before.
    /// Their folders are watched again each time: one deleted and made again
    /// (a checkout, a deploy by rename) is a new folder to the kernel. A
    /// folder that does not exist is warned about and tried again on the
    /// next reload; its own creation triggers one when its parent is watched.
    pub fn follow_schemas(&mut self, files: impl IntoIterator<Item = PathBuf>) {
        let files: BTreeSet<PathBuf> = files.into_iter().map(|f| absolute(&f)).collect();
        let folders: BTreeSet<PathBuf> = files.iter().filter_map(|f| f.parent()).map(Path::to_owned).collect();
        for folder in &folders {
            if let Err(e) = self.inner.watch(folder, RecursiveMode::NonRecursive) {
                warn!("cannot watch {} for schema changes: {e}", folder.display());
            }
        }
        let mut relevant = self.relevant.write().expect("never poisoned");
        relevant.schema_files = files;
        relevant.schema_folders = folders;
    }
}

/// The schema files the config at `config_path` names now, read leniently:
/// a config that does not load (a schema file not written yet, say) still
/// says which files its fix will come in. Empty when it cannot be read.
pub fn named_schema_files(config_path: &Path) -> Vec<PathBuf> {
    let Some(table) = std::fs::read_to_string(config_path).ok().and_then(|t| t.parse::<toml::Table>().ok()) else {
        return Vec::new();
    };
    let base = crate::config::base_dir(config_path);
    let lines = table.get("schemas").and_then(|s| s.as_table());
    lines.into_iter().flatten().filter_map(|(_, file)| file.as_str()).map(|f| base.join(f)).collect()
}

/// Which paths a reload cares about.
struct Relevant {
    config_dir: PathBuf,
    config_name: std::ffi::OsString,
    plugins_dir: PathBuf,
    /// The schema files, each with its folder made absolute.
    schema_files: BTreeSet<PathBuf>,
    /// Their folders: made again, they are watched again on the reload it triggers.
    schema_folders: BTreeSet<PathBuf>,
}

impl Relevant {
    fn new(config_path: &Path, plugins_dir: &Path) -> Relevant {
        Relevant {
            config_dir: absolute(crate::config::base_dir(config_path)),
            config_name: config_path.file_name().unwrap_or_default().to_owned(),
            plugins_dir: absolute(plugins_dir),
            schema_files: BTreeSet::new(),
            schema_folders: BTreeSet::new(),
        }
    }

    fn matches(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
        (dir == self.config_dir && name == self.config_name)
            || (dir == self.plugins_dir && path.extension().is_some_and(|e| e == "wasm"))
            || self.schema_files.contains(path)
            || self.schema_folders.contains(path)
            || self.swapped_link(dir, name)
    }

    /// Whether `name`, in the watched folder `dir`, is a link or folder that
    /// a watched file's symlink leads through. A Kubernetes ConfigMap
    /// mounted as a folder holds `config.toml` → `..data/config.toml`, and
    /// an update renames a new `..data` link over the old one: no event
    /// names the file itself.
    fn swapped_link(&self, dir: &Path, name: &std::ffi::OsStr) -> bool {
        if dir == self.config_dir && leads_through(&dir.join(&self.config_name), name) {
            return true;
        }
        if dir == self.plugins_dir {
            let Ok(files) = std::fs::read_dir(dir) else { return false };
            let plugins = files.flatten().map(|f| f.path()).filter(|p| p.extension().is_some_and(|e| e == "wasm"));
            if plugins.into_iter().any(|p| leads_through(&p, name)) {
                return true;
            }
        }
        self.schema_files.iter().any(|f| f.parent() == Some(dir) && leads_through(f, name))
    }
}

/// Whether `file` is a symlink whose relative target starts with `name`, a
/// link or folder beside it, and goes on into it (`..data/config.toml`).
fn leads_through(file: &Path, name: &std::ffi::OsStr) -> bool {
    let Ok(target) = std::fs::read_link(file) else { return false };
    let mut parts = target.components();
    let first = parts.next();
    target.is_relative() && first.is_some_and(|c| c.as_os_str() == name) && parts.next().is_some()
}

/// `path` with its folder canonical (symlinks resolved), as notify reports
/// paths under a watched folder; as given when that folder does not exist.
fn absolute(path: &Path) -> PathBuf {
    let canonical = |p: &Path| p.canonicalize().ok();
    if let Some(p) = canonical(path).filter(|p| p.is_dir()) {
        return p;
    }
    match (path.parent().and_then(canonical), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_to_the_config_a_plugin_or_a_schema_is_one_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let plugins = dir.path().join("plugins");
        let schemas = dir.path().join("schemas");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::create_dir(&schemas).unwrap();
        std::fs::write(schemas.join("order.json"), "{}").unwrap();
        let text = "[host]\nplugins = \"plugins\"\n[schemas]\n\"order.*\" = \"schemas/order.json\"\n";
        std::fs::write(&config, text).unwrap();
        let (_w, mut rx) = watch(&Config::load(&config).unwrap()).unwrap();
        let noticed = async |rx: &mut mpsc::Receiver<()>, what: &str| {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
            assert!(matches!(got, Ok(Some(()))), "{what} noticed");
        };
        for i in 0..5 {
            std::fs::write(&config, format!("{text}# {i}")).unwrap();
        }
        noticed(&mut rx, "config write").await;
        assert!(tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_err(), "one trigger per burst");
        std::fs::write(plugins.join("x.wasm"), "x").unwrap();
        noticed(&mut rx, "plugin write").await;
        std::fs::write(schemas.join("order.json"), "{\"type\": \"object\"}").unwrap();
        noticed(&mut rx, "schema write").await;
        std::fs::write(plugins.join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        std::fs::write(schemas.join("other.json"), "x").unwrap();
        assert!(tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_err(), "other files are ignored");
    }

    /// Waits for one trigger, then for quiet: nothing left over to be
    /// taken for the next change's trigger.
    async fn settle(rx: &mut mpsc::Receiver<()>, what: &str) {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "{what} noticed");
        while tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_ok() {}
    }

    #[tokio::test]
    async fn followed_schemas_in_new_folders_and_remade_folders_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let (mut w, mut rx) = watch(&Config::load(&config).unwrap()).unwrap();
        let folder = dir.path().join("more");
        std::fs::create_dir(&folder).unwrap();
        let file = folder.join("x.json");
        w.follow_schemas([file.clone()]);
        std::fs::write(&file, "{}").unwrap();
        settle(&mut rx, "a write to a followed schema in a new folder").await;

        std::fs::remove_dir_all(&folder).unwrap();
        settle(&mut rx, "the schema folder removed").await;
        std::fs::create_dir(&folder).unwrap();
        settle(&mut rx, "the schema folder made again").await;
        w.follow_schemas([file.clone()]); // as the host does before reloading
        std::fs::write(&file, "{}").unwrap();
        settle(&mut rx, "a write in the remade folder").await;
    }

    #[test]
    fn named_schema_files_are_read_from_a_config_that_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "[schemas]\n\"a.*\" = \"s/a.json\"\n[handlers.x]\nunknown = 1\n").unwrap();
        assert_eq!(named_schema_files(&config), [dir.path().join("s/a.json")]);
        std::fs::write(&config, "[schemas\n").unwrap();
        assert!(named_schema_files(&config).is_empty());
    }
}
