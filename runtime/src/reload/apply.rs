//! Applying reloads to the running host: the loop that turns file changes
//! and SIGHUP into reloads, the settings a reload cannot change, and the
//! swap, handler by handler.

use super::prepare::NewState;
use crate::config::Config;
use crate::host::Fleet;
use crate::metrics;
use crate::wasm::{ComponentCache, Runtime};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// What became of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadReport {
    /// The host is serving and watching (sent once, first): each handler
    /// with its plugin version.
    Started {
        /// Handler name → plugin version.
        versions: BTreeMap<String, String>,
    },
    /// The new state is serving: each handler with its plugin version.
    Applied {
        /// Handler name → plugin version.
        versions: BTreeMap<String, String>,
    },
    /// The change was rejected; the running state keeps serving.
    Rejected {
        /// Why the change was rejected.
        error: String,
    },
}

/// Turns file changes and SIGHUP into reloads.
pub(crate) struct Reloader {
    pub runtime: Runtime,
    pub cache: ComponentCache,
    pub config_path: PathBuf,
    /// Watch for changes (SIGHUP reloads either way).
    pub watch: bool,
    /// Where every reload's result is sent.
    pub reports: Option<mpsc::UnboundedSender<ReloadReport>>,
    /// The config in force, for the admin listener.
    pub current: Arc<ArcSwap<Config>>,
    /// Every reload's result, for the dashboard.
    pub log: Arc<super::ReloadLog>,
}

impl Reloader {
    /// Serves reloads until `shutdown` completes; on a change the watcher
    /// reports, and on each SIGHUP `hup` receives (installed by the caller
    /// when it starts).
    pub async fn serve(
        &self,
        fleet: &mut Fleet,
        config: &Config,
        shutdown: impl Future<Output = ()>,
        mut hup: Option<tokio::signal::unix::Signal>,
    ) {
        let (mut watcher, mut changes) = match self.watch {
            true => match super::watch(config) {
                Ok((w, rx)) => {
                    info!(config = %config.path.display(), plugins = %config.plugins_dir.display(), "watching for changes");
                    (Some(w), rx)
                }
                Err(e) => {
                    warn!("cannot watch for changes ({e:#}); reload with SIGHUP");
                    (None, mpsc::channel(1).1)
                }
            },
            false => (None, mpsc::channel(1).1),
        };
        tokio::pin!(shutdown);
        let fixed = HostSettings::of(config);
        self.report(ReloadReport::Started { versions: fleet.versions() });
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                Some(()) = changes.recv() => {}
                Some(()) = next_signal(&mut hup) => info!("SIGHUP: reloading"),
            }
            if let Some(w) = watcher.as_mut() {
                // Before the schemas are read: an edit while they compile
                // is then noticed, and so is a fix for a rejected config.
                let serving = self.current.load().schemas.files().map(Path::to_owned).collect::<Vec<_>>();
                w.follow_schemas(serving.into_iter().chain(super::named_schema_files(&self.config_path)));
            }
            // Stopping does not wait for plugins to compile (a Python
            // plugin takes seconds): nothing is changed until they have. It
            // waits for a reload that is being applied, which drains the
            // consumers it stops.
            let bindings = fleet.bindings();
            let prepared = tokio::select! {
                _ = &mut shutdown => return,
                prepared = super::prepare(&self.runtime, &self.cache, &self.config_path, &bindings) => prepared,
            };
            self.reload(fleet, &fixed, prepared).await;
        }
    }

    async fn reload(&self, fleet: &mut Fleet, fixed: &HostSettings, prepared: anyhow::Result<super::NewState>) {
        let report = match prepared.and_then(|new| fixed.check(new)) {
            Ok(new) => {
                fixed.warn_if_changed(&new.config);
                self.current.store(Arc::new(new.config.clone()));
                let config = new.config.clone();
                let versions = apply(fleet, new).await;
                fleet.ensure_relays(&config);
                info!(versions = ?versions, "reloaded");
                metrics::reloaded(true);
                ReloadReport::Applied { versions }
            }
            Err(e) => {
                error!("reload rejected, still serving the previous version: {e:#}");
                metrics::reloaded(false);
                ReloadReport::Rejected { error: format!("{e:#}") }
            }
        };
        self.report(report);
    }

    fn report(&self, report: ReloadReport) {
        self.log.record(&report, crate::ops::time::now_ms());
        if let Some(tx) = &self.reports {
            let _ = tx.send(report);
        }
    }
}

/// The next delivery of `signal`; never, without one.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Settings that only take effect on restart.
struct HostSettings {
    redis: crate::config::RedisSettings,
    consumer: String,
    claim_idle_ms: u64,
    plugins_dir: PathBuf,
    /// The listeners, as written: address, token, streams.
    listeners: String,
}

impl HostSettings {
    fn of(c: &Config) -> HostSettings {
        HostSettings {
            redis: c.redis.clone(),
            consumer: c.consumer.clone(),
            claim_idle_ms: c.claim_idle_ms,
            plugins_dir: c.plugins_dir.clone(),
            listeners: listeners(c),
        }
    }

    /// Rejects a new state the running host cannot honour: a timeout that
    /// reaches the claim_idle it runs with (a changed claim_idle applies only
    /// on restart).
    fn check(&self, new: NewState) -> anyhow::Result<NewState> {
        let claim_idle = Duration::from_millis(self.claim_idle_ms);
        if let Some(h) = new.config.handlers.iter().find(|h| h.limits.timeout >= claim_idle) {
            let at = new.config.location_of(&["handlers", &h.name, "timeout_ms"]);
            anyhow::bail!(
                "{at}: handlers.{}.timeout_ms must stay below the running host's claim_idle_ms ({}); restart to change claim_idle_ms",
                h.name,
                self.claim_idle_ms
            );
        }
        Ok(new)
    }

    fn warn_if_changed(&self, c: &Config) {
        let changed = self.redis != c.redis
            || self.consumer != c.consumer
            || self.claim_idle_ms != c.claim_idle_ms
            || self.plugins_dir != c.plugins_dir
            || self.listeners != listeners(c);
        if changed {
            warn!(
                "[redis] and [host] changes (including admin, admin_token and the ingress, its token and streams) take effect on restart; handlers were reloaded"
            );
        }
    }
}

/// The admin and ingress settings of `c`, to notice a change.
fn listeners(c: &Config) -> String {
    let ingress = c.ingress.as_ref().map(|i| (i.addr, i.token.clone(), i.streams.clone()));
    format!("{:?} {:?} {:?}", c.admin, c.admin_token, ingress)
}

/// Makes `fleet`'s consumers match `new`; each handler's plugin version
/// now. Every consumer that stops (its handler removed, or its streams,
/// group or `order_by` changed) is drained before any starts: a consumer
/// that starts takes back what is pending under this host's consumer name
/// in its group, and that group may be one a stopping consumer still reads
/// (a handler added with a removed one's group, or two handlers swapping
/// groups), whose in-flight entries it would run a second time.
async fn apply(fleet: &mut Fleet, new: NewState) -> BTreeMap<String, String> {
    let mut stopping = vec![];
    for name in fleet.names() {
        match new.bindings.get(name) {
            None => info!(handler = %name, "handler removed from the config; stopping it (its group stays in Redis)"),
            Some(b) if !fleet.consumer(name).is_some_and(|c| c.can_update_to(&b.handler)) => {
                info!(handler = %name, "streams, group or order_by changed; restarting the handler")
            }
            Some(_) => continue,
        }
        stopping.push(name.clone());
    }
    fleet.stop_each(&stopping).await;
    let mut versions = BTreeMap::new();
    for (name, binding) in new.bindings {
        versions.insert(name.clone(), binding.plugin.version.clone());
        match fleet.consumer(&name) {
            Some(c) => c.update(binding),
            None => fleet.start(binding),
        }
    }
    versions
}
