//! `sluice run`: load every plugin, connect to Redis, run one consumer per
//! handler (the `Fleet`), serve reloads ([`crate::reload`] changes the
//! fleet), and on shutdown drain in-flight work.

use crate::admin;
use crate::config::Config;
use crate::consumer::{Binding, Consumer};
use crate::embedded::RedisTarget;
use crate::reload::{ReloadReport, Reloader};
use crate::stream::{Redis, redact};
use crate::wasm::{ComponentCache, FuelMetering, Plugin, PluginError, Runtime};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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

/// The engines, linker and executor for `config`: pools sized from its
/// handlers' `concurrency`.
pub fn runtime_for(config: &Config) -> anyhow::Result<Runtime> {
    Runtime::with_pool(crate::limits::pool_instances(config.total_concurrency()))
}

/// The compiled-component cache for `config`, under `.sluice/cache/`.
pub fn cache_for(config: &Config) -> ComponentCache {
    ComponentCache::new(config.state_dir().join("cache"))
}

/// Compiles (or loads from `cache`) and links the plugin of every handler,
/// for the engine that counts fuel if the handler has a `fuel` budget.
pub fn load_plugins(
    runtime: &Runtime,
    cache: &ComponentCache,
    config: &Config,
) -> Result<Vec<Arc<Plugin>>, LoadErrors> {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for handler in &config.handlers {
        match Plugin::load(runtime, Some(cache), &handler.plugin, FuelMetering::for_budget(handler.limits.fuel)) {
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
/// in-flight deliveries finish (each bounded by its timeout, or a demoted
/// handler's by its patience), and returns.
pub async fn run_with(config: Config, shutdown: impl Future<Output = ()>, options: RunOptions) -> anyhow::Result<()> {
    // First: a SIGHUP's default action ends the process, and one sent while
    // the plugins compile or Redis is reached (say, by a deploy that edited
    // the config) must not. It reloads once the host runs.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let runtime = runtime_for(&config)?;
    // (Its idle lane is lifted once the host has stopped.)
    let executor = runtime.executor.clone();
    let cache = cache_for(&config);
    // The embedded Redis starts first: events published while the plugins
    // compile (seconds for Python or JavaScript) wait in it, rather than a
    // `sluice publish` meanwhile starting and stopping one of its own.
    let target = RedisTarget::resolve(config.redis.url.as_deref(), &config.state_dir()).await?;
    // A signal while the plugins compile stops the host there: nothing was
    // read yet.
    tokio::pin!(shutdown);
    let loaded = {
        let (runtime, cache, config) = (runtime.clone(), cache.clone(), config.clone());
        let loading = tokio::task::spawn_blocking(move || load_plugins(&runtime, &cache, &config));
        tokio::select! {
            loaded = loading => loaded,
            () = &mut shutdown => {
                info!("stopped while loading plugins");
                target.stop().await;
                return Ok(());
            }
        }
    };
    let plugins = match loaded.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)) {
        Ok(plugins) => plugins,
        Err(e) => {
            target.stop().await;
            return Err(e);
        }
    };
    let redis = Redis::connect(target.url(), &config.redis).await.map_err(anyhow::Error::from);
    let result = async {
        let redis = redis?;
        let current = Arc::new(ArcSwap::from_pointee(config.clone()));
        let log = Arc::new(crate::reload::ReloadLog::default());
        let mut fleet = Fleet::new(&config, redis.clone());
        let admin = start_admin(&config, &current, &redis, &fleet.live, &log).await?;
        let ingress = start_ingress(&config, &current, &redis).await?;
        ensure_groups(&redis, &config).await?;
        let upkeep_token = CancellationToken::new();
        let upkeep = crate::upkeep::Upkeep::new(redis.clone(), current.clone(), config.consumer.clone());
        let upkeep = tokio::spawn(upkeep.run(upkeep_token.clone()));
        fleet.start_all(&config, plugins);
        fleet.ensure_relays(&config);
        info!(redis = %redact(target.url()), consumer = %config.consumer, handlers = config.handlers.len(), "sluice is running");
        let (watch, reports, config_path) = (options.watch, options.reports, config.path.clone());
        let reloader = Reloader { runtime, cache, config_path, watch, reports, current, log };
        reloader.serve(&mut fleet, &config, shutdown, hup).await;
        fleet.stop_all().await;
        if let Err(e) = executor.lift_idle_lane() {
            debug!("cannot lift demoted handlers' threads to normal priority, for a quick exit on a busy machine: {e}");
        }
        upkeep_token.cancel();
        let _ = upkeep.await;
        admin.cancel();
        ingress.cancel();
        anyhow::Ok(())
    }
    .await;
    target.stop().await;
    result
}

/// Creates every handler's groups before anything runs, so that a Redis user
/// without a permission Sluice needs stops the host at once with Redis's
/// NOPERM error (naming the command), rather than retrying forever. Other
/// errors are left to each consumer, which tries again.
async fn ensure_groups(redis: &Redis, config: &Config) -> anyhow::Result<()> {
    let mut conn = redis.conn.clone();
    for h in &config.handlers {
        for s in h.read_streams() {
            match crate::stream::ensure_group(&mut conn, &s, &h.group).await {
                Err(e) if e.is_no_permission() => {
                    anyhow::bail!(
                        "{e} (handler {}; the Redis user needs the rule in docs/operating.md, ACL users)",
                        h.name
                    )
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Starts the admin listener if the config asks for one; cancel the token
/// to stop it.
async fn start_admin(
    config: &Config,
    current: &Arc<ArcSwap<Config>>,
    redis: &Redis,
    consumers: &LiveConsumers,
    reloads: &Arc<crate::reload::ReloadLog>,
) -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    if let Some(addr) = config.admin {
        let listener = admin::bind(addr).await?;
        let state = admin::AdminState::new(
            current.clone(),
            redis,
            consumers.clone(),
            reloads.clone(),
            config.admin_token.clone(),
        );
        tokio::spawn(admin::serve(listener, state, token.clone()));
    }
    Ok(token)
}

/// Starts the HTTP ingress if the config asks for one; cancel the token to
/// stop it.
async fn start_ingress(
    config: &Config,
    current: &Arc<ArcSwap<Config>>,
    redis: &Redis,
) -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    if let Some(settings) = &config.ingress {
        let listener = crate::ingress::bind(settings.addr).await?;
        let state = crate::ingress::IngressState::new(settings.clone(), current.clone(), redis.clone());
        tokio::spawn(crate::ingress::serve(listener, state, token.clone()));
    }
    Ok(token)
}

/// The running consumers by handler name, as the dashboard sees them.
pub type LiveConsumers = Arc<ArcSwap<BTreeMap<String, Arc<Consumer>>>>;

/// The consumers that are running, by handler name.
pub(crate) struct Fleet {
    redis: Redis,
    consumer_name: String,
    claim_idle: Duration,
    /// Parent of every consumer's token: cancelled on shutdown.
    shutdown: CancellationToken,
    running: BTreeMap<String, Running>,
    /// The running consumers, for the dashboard to read.
    live: LiveConsumers,
    /// In a cluster, the relay of each outbox, by outbox key.
    relays: BTreeMap<String, tokio::task::JoinHandle<()>>,
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
            live: LiveConsumers::default(),
            relays: BTreeMap::new(),
        }
    }

    /// Publishes the running consumers to [`Fleet::live`].
    fn publish_live(&self) {
        self.live.store(Arc::new(self.running.iter().map(|(n, r)| (n.clone(), r.consumer.clone())).collect()));
    }

    fn start_all(&mut self, config: &Config, plugins: Vec<Arc<Plugin>>) {
        for (handler, plugin) in config.handlers.iter().zip(plugins) {
            self.start(Binding::new(handler.clone(), plugin));
        }
    }

    /// In a cluster, runs a relay for the outbox of every stream `config`'s
    /// handlers read (one started earlier keeps running).
    pub(crate) fn ensure_relays(&mut self, config: &Config) {
        if !self.redis.is_cluster() {
            return;
        }
        for s in config.handlers.iter().flat_map(|h| h.read_streams()) {
            let outbox = crate::stream::outbox(&s);
            if !self.relays.contains_key(&outbox) {
                let relay = crate::stream::Relay::new(outbox.clone(), self.consumer_name.clone(), self.redis.clone());
                self.relays.insert(outbox, tokio::spawn(relay.run(self.shutdown.child_token())));
            }
        }
    }

    /// Starts a consumer for `binding`.
    pub(crate) fn start(&mut self, binding: Binding) {
        let h = &binding.handler;
        info!(handler = %h.name, plugin = %binding.plugin.file_name(), version = %binding.plugin.version, streams = ?h.streams, "handler started");
        let name = h.name.clone();
        let token = self.shutdown.child_token();
        let consumer =
            Consumer::new(binding, self.redis.clone(), self.consumer_name.clone(), self.claim_idle, token.clone());
        let task = tokio::spawn(consumer.clone().run());
        self.running.insert(name, Running { consumer, token, task });
        self.publish_live();
    }

    /// The names of the running handlers.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.running.keys()
    }

    /// The consumer of handler `name`, if it runs.
    pub(crate) fn consumer(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.running.get(name).map(|r| &r.consumer)
    }

    /// The bindings serving now.
    pub(crate) fn bindings(&self) -> BTreeMap<String, Arc<Binding>> {
        self.running.iter().map(|(n, r)| (n.clone(), r.consumer.binding())).collect()
    }

    /// Each running handler's plugin version.
    pub(crate) fn versions(&self) -> BTreeMap<String, String> {
        self.running.iter().map(|(n, r)| (n.clone(), r.consumer.binding().plugin.version.clone())).collect()
    }

    /// Stops the consumers of `names` and waits for them all to drain (at
    /// once: each drains on its own).
    pub(crate) async fn stop_each(&mut self, names: &[String]) {
        let stopping: Vec<_> = names.iter().filter_map(|n| self.running.remove(n)).collect();
        if stopping.is_empty() {
            return;
        }
        self.publish_live();
        for r in &stopping {
            r.token.cancel();
        }
        for r in stopping {
            let _ = r.task.await;
        }
    }

    async fn stop_all(mut self) {
        info!("shutting down: finishing in-flight events");
        self.shutdown.cancel();
        let running = std::mem::take(&mut self.running);
        self.publish_live();
        for (_, r) in running {
            let _ = r.task.await;
        }
        for (_, relay) in std::mem::take(&mut self.relays) {
            let _ = relay.await;
        }
        info!("stopped");
    }
}
