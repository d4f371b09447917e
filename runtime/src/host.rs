//! `sluice run`: load every plugin, connect to Redis, run one consumer per
//! handler, apply reloads, and on shutdown drain in-flight work.

use crate::config::Config;
use crate::consumer::{Binding, Consumer};
use crate::embedded::RedisTarget;
use crate::reload::{self, NewState};
use crate::stream::{Redis, redact};
use crate::wasm::{ComponentCache, Plugin, PluginError, Runtime};
use crate::{admin, metrics};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Plugins that failed to load, one error each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<PluginError>);

/// How `run_with` behaves beyond the config.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Watch the config file and plugins folder and reload on change.
    /// (SIGHUP reloads either way.)
    pub watch: bool,
    /// Receives the result of every reload (for tests and tooling).
    pub reports: Option<mpsc::UnboundedSender<ReloadReport>>,
}

/// What became of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadReport {
    /// The host is serving and watching (sent once, first): each handler
    /// with its plugin version.
    Started { versions: BTreeMap<String, String> },
    /// The new state is serving: each handler with its plugin version.
    Applied { versions: BTreeMap<String, String> },
    /// The change was rejected; the running state keeps serving.
    Rejected { error: String },
}

/// The compiled-component cache for `config`, under `.sluice/cache/`.
pub fn cache_for(config: &Config, runtime: &Runtime) -> ComponentCache {
    ComponentCache::new(config.state_dir().join("cache"), &runtime.engine)
}

/// Compiles (or loads from `cache`) and links the plugin of every handler.
pub fn load_plugins(
    runtime: &Runtime,
    cache: &ComponentCache,
    config: &Config,
) -> Result<Vec<Arc<Plugin>>, LoadErrors> {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for handler in &config.handlers {
        match Plugin::load(runtime, Some(cache), &handler.plugin) {
            Ok(p) => ok.push(Arc::new(p)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(ok) } else { Err(LoadErrors(errors)) }
}

/// Runs the host, watching for changes, until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, shutdown, RunOptions { watch: true, reports: None }).await
}

/// Runs the host until `shutdown` completes: then stops reading, lets
/// in-flight deliveries finish (each bounded by its timeout), and returns.
pub async fn run_with(config: Config, shutdown: impl Future<Output = ()>, options: RunOptions) -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let cache = cache_for(&config, &runtime);
    let plugins = {
        let (runtime, cache, config) = (runtime.clone(), cache.clone(), config.clone());
        tokio::task::spawn_blocking(move || load_plugins(&runtime, &cache, &config)).await??
    };
    let target = RedisTarget::resolve(config.redis_url.as_deref(), &config.state_dir()).await?;
    let redis = Redis::connect(target.url()).await.map_err(anyhow::Error::from);
    let result = match redis {
        Ok(redis) => {
            let current = Arc::new(ArcSwap::from_pointee(config.clone()));
            let admin = start_admin(&config, &current, &redis).await?;
            let mut fleet = Fleet::new(&config, redis);
            fleet.start_all(&config, plugins);
            info!(redis = %redact(target.url()), consumer = %config.consumer, handlers = config.handlers.len(), "sluice is running");
            let reloader = Reloader { runtime, cache, config_path: config.path.clone(), options, current };
            reloader.serve(&mut fleet, &config, shutdown).await;
            fleet.stop_all().await;
            admin.cancel();
            Ok(())
        }
        Err(e) => Err(e),
    };
    target.stop().await;
    result
}

/// Starts the admin listener if the config asks for one; cancel the token
/// to stop it.
async fn start_admin(
    config: &Config,
    current: &Arc<ArcSwap<Config>>,
    redis: &Redis,
) -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    if let Some(addr) = config.admin {
        let listener = admin::bind(addr).await?;
        let state = admin::AdminState { config: current.clone(), conn: redis.conn.clone() };
        tokio::spawn(admin::serve(listener, state, token.clone()));
    }
    Ok(token)
}

/// The consumers that are running, by handler name.
struct Fleet {
    redis: Redis,
    consumer_name: String,
    claim_idle: Duration,
    /// Parent of every consumer's token: cancelled on shutdown.
    shutdown: CancellationToken,
    running: BTreeMap<String, Running>,
}

struct Running {
    consumer: Arc<Consumer>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    fn new(config: &Config, redis: Redis) -> Fleet {
        Fleet {
            redis,
            consumer_name: config.consumer.clone(),
            claim_idle: Duration::from_millis(config.claim_idle_ms),
            shutdown: CancellationToken::new(),
            running: BTreeMap::new(),
        }
    }

    fn start_all(&mut self, config: &Config, plugins: Vec<Arc<Plugin>>) {
        for (handler, plugin) in config.handlers.iter().zip(plugins) {
            self.start(Binding::new(handler.clone(), plugin));
        }
    }

    fn start(&mut self, binding: Binding) {
        let h = &binding.handler;
        info!(handler = %h.name, plugin = %binding.plugin.file_name(), version = %binding.plugin.version, streams = ?h.streams, "handler started");
        let name = h.name.clone();
        let token = self.shutdown.child_token();
        let consumer =
            Consumer::new(binding, self.redis.clone(), self.consumer_name.clone(), self.claim_idle, token.clone());
        let task = tokio::spawn(consumer.clone().run());
        self.running.insert(name, Running { consumer, token, task });
    }

    /// The bindings serving now.
    fn bindings(&self) -> BTreeMap<String, Arc<Binding>> {
        self.running.iter().map(|(n, r)| (n.clone(), r.consumer.binding())).collect()
    }

    /// Each running handler's plugin version.
    fn versions(&self) -> BTreeMap<String, String> {
        self.running.iter().map(|(n, r)| (n.clone(), r.consumer.binding().plugin.version.clone())).collect()
    }

    /// Stops `name`'s consumer and waits for it to drain.
    async fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            r.token.cancel();
            let _ = r.task.await;
        }
    }

    /// Makes the running consumers match `new`, handler by handler.
    async fn apply(&mut self, new: NewState) -> BTreeMap<String, String> {
        let gone: Vec<String> = self.running.keys().filter(|n| !new.bindings.contains_key(*n)).cloned().collect();
        for name in gone {
            // Drained before anything starts: a new handler with the same
            // group would take back this one's in-flight entries.
            info!(handler = %name, "handler removed from the config; stopping it (its group stays in Redis)");
            self.stop(&name).await;
        }
        let mut versions = BTreeMap::new();
        for (name, binding) in new.bindings {
            versions.insert(name.clone(), binding.plugin.version.clone());
            match self.running.get(&name) {
                Some(r) if r.consumer.can_update_to(&binding.handler) => r.consumer.update(binding),
                Some(_) => {
                    // Drain first: the new consumer takes back this consumer
                    // name's pending entries, which must not still be in flight.
                    info!(handler = %name, "streams or group changed; restarting the handler");
                    self.stop(&name).await;
                    self.start(binding);
                }
                None => self.start(binding),
            }
        }
        versions
    }

    async fn stop_all(mut self) {
        info!("shutting down: finishing in-flight events");
        self.shutdown.cancel();
        for (_, r) in std::mem::take(&mut self.running) {
            let _ = r.task.await;
        }
        info!("stopped");
    }
}

/// Turns file changes and SIGHUP into reloads.
struct Reloader {
    runtime: Runtime,
    cache: ComponentCache,
    config_path: PathBuf,
    options: RunOptions,
    /// The config in force, for the admin listener.
    current: Arc<ArcSwap<Config>>,
}

impl Reloader {
    /// Serves reloads until `shutdown` completes.
    async fn serve(&self, fleet: &mut Fleet, config: &Config, shutdown: impl Future<Output = ()>) {
        let (mut watcher, mut changes) = match self.options.watch {
            true => match reload::watch(config) {
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
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
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
                w.follow_schemas(serving.into_iter().chain(reload::named_schema_files(&self.config_path)));
            }
            self.reload(fleet, &fixed).await;
        }
    }

    async fn reload(&self, fleet: &mut Fleet, fixed: &HostSettings) {
        let prepared = reload::prepare(&self.runtime, &self.cache, &self.config_path, &fleet.bindings()).await;
        let report = match prepared.and_then(|new| fixed.check(new)) {
            Ok(new) => {
                fixed.warn_if_changed(&new.config);
                self.current.store(Arc::new(new.config.clone()));
                let versions = fleet.apply(new).await;
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
        if let Some(tx) = &self.options.reports {
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
    redis_url: Option<String>,
    consumer: String,
    claim_idle_ms: u64,
    plugins_dir: PathBuf,
}

impl HostSettings {
    fn of(c: &Config) -> HostSettings {
        HostSettings {
            redis_url: c.redis_url.clone(),
            consumer: c.consumer.clone(),
            claim_idle_ms: c.claim_idle_ms,
            plugins_dir: c.plugins_dir.clone(),
        }
    }

    /// Rejects a new state the running host cannot honour: a timeout that
    /// reaches the claim_idle it runs with (a changed claim_idle applies only
    /// on restart).
    fn check(&self, new: NewState) -> anyhow::Result<NewState> {
        let claim_idle = Duration::from_millis(self.claim_idle_ms);
        if let Some(h) = new.config.handlers.iter().find(|h| h.limits.timeout >= claim_idle) {
            anyhow::bail!(
                "handlers.{}.timeout_ms must stay below the running host's claim_idle_ms ({}); restart to change claim_idle_ms",
                h.name,
                self.claim_idle_ms
            );
        }
        Ok(new)
    }

    fn warn_if_changed(&self, c: &Config) {
        let changed = self.redis_url != c.redis_url
            || self.consumer != c.consumer
            || self.claim_idle_ms != c.claim_idle_ms
            || self.plugins_dir != c.plugins_dir;
        if changed {
            warn!("[redis] and [host] changes take effect on restart; handlers were reloaded");
        }
    }
}
