//! `sluice run`: load every plugin, connect to Redis, run one consumer per
//! handler until the shutdown signal, then drain in-flight work.

use crate::config::Config;
use crate::consumer::Consumer;
use crate::embedded::RedisTarget;
use crate::stream::{Redis, redact};
use crate::wasm::{Plugin, PluginError, Runtime};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Every handler's plugin failed to load: the errors, one per plugin.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<PluginError>);

/// Compiles and links the plugin of every handler in `config`.
pub fn load_plugins(runtime: &Runtime, config: &Config) -> Result<Vec<Plugin>, LoadErrors> {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for handler in &config.handlers {
        match Plugin::load(runtime, handler) {
            Ok(p) => ok.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(ok) } else { Err(LoadErrors(errors)) }
}

/// Runs the host until `shutdown` completes: stops reading, lets in-flight
/// deliveries finish (each bounded by its timeout), and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let plugins = load_plugins(&runtime, &config)?;
    let target = RedisTarget::resolve(config.redis_url.as_deref(), &config.state_dir()).await?;
    let result = serve(&config, plugins, target.url(), shutdown).await;
    target.stop().await;
    result
}

async fn serve(
    config: &Config,
    plugins: Vec<Plugin>,
    url: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let redis = Redis::connect(url).await?;
    let token = CancellationToken::new();
    let claim_idle = Duration::from_millis(config.claim_idle_ms);
    let mut consumers = tokio::task::JoinSet::new();
    for (handler, plugin) in config.handlers.iter().zip(plugins) {
        info!(handler = %handler.name, plugin = %plugin.file_name(), version = %plugin.version, streams = ?handler.streams, "handler ready");
        let consumer =
            Consumer::new(handler.clone(), plugin, redis.clone(), config.consumer.clone(), claim_idle, token.clone());
        consumers.spawn(consumer.run());
    }
    info!(redis = %redact(url), consumer = %config.consumer, handlers = config.handlers.len(), "sluice is running");
    shutdown.await;
    info!("shutting down: finishing in-flight events");
    token.cancel();
    while consumers.join_next().await.is_some() {}
    info!("stopped");
    Ok(())
}
