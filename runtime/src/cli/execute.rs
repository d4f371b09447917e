//! What each subcommand does, on top of the library.

use super::Command;
use super::operate;
use crate::config::Config;
use crate::embedded::RedisTarget;
use crate::publish::{NewEvent, publish};
use crate::request::{Answer, request};
use crate::stream::Redis;
use crate::{host, offline, scaffold};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Runs one subcommand to completion; returns the exit code.
pub async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, no_watch } => {
            let options = host::RunOptions { watch: !no_watch, reports: None };
            host::run_with(Config::load(&config.path())?, shutdown_signal(), options).await?;
        }
        Command::Publish { event, config } => publish_with(&config.path(), &event.into_event()).await?,
        Command::Request { event, timeout_ms, config } => {
            return request_with(&config.path(), &event.into_event(), Duration::from_millis(timeout_ms)).await;
        }
        Command::Check { config, offline } => check(&config.path(), offline).await?,
        Command::Acl { user, config } => {
            println!("{}", crate::stream::acl::rule(&Config::load_unchecked(&config.path())?, &user));
        }
        Command::Dlq { command } => operate::dlq(command).await?,
        Command::Kv { command } => {
            if !operate::kv(command).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Replay { stream, handler, from, to, dry_run, config } => {
            operate::replay(&config.path(), &stream, &handler, (&from, &to), dry_run).await?;
        }
        Command::Status { json, config } => operate::status(&config.path(), json).await?,
        Command::New { name, lang, dir } => {
            let project = scaffold::create(&name, lang, &dir)?;
            print!("{}", scaffold::next_steps(&name, &project));
        }
        Command::Invoke { plugin, event, config, handler, json } => {
            let report = offline::invoke(&offline::Invocation { plugin, event, config: config.given, handler }).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => print!("{report}"),
            }
            return Ok(ExitCode::from(report.exit_code()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish_with(config_path: &Path, event: &NewEvent) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let format = config.streams.format(&event.stream);
    if let Err(invalid) = event.check(format, &config.schemas) {
        anyhow::bail!("refused, nothing was published: {invalid}");
    }
    let target = RedisTarget::resolve(config.redis.url.as_deref(), &config.state_dir()).await?;
    let result =
        async { publish(&mut Redis::connect(target.url(), &config.redis).await?.conn, event, format).await }.await;
    target.stop().await;
    println!("{}", result?);
    Ok(())
}

/// `sluice request`: sends `event` as a request and prints its answer.
async fn request_with(config_path: &Path, event: &NewEvent, timeout: Duration) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let format = config.streams.format(&event.stream);
    if let Err(invalid) = event.check(format, &config.schemas) {
        anyhow::bail!("refused, nothing was sent: {invalid}");
    }
    let target = RedisTarget::resolve(config.redis.url.as_deref(), &config.state_dir()).await?;
    let result =
        async { request(&Redis::connect(target.url(), &config.redis).await?, event, format, timeout).await }.await;
    target.stop().await;
    let (sent, answer) = result?;
    match answer {
        Answer::Reply { data, .. } => {
            println!("{data}");
            Ok(ExitCode::SUCCESS)
        }
        Answer::Failed(reason) => {
            eprintln!("error: request {} on stream {} failed: {reason}", sent.id, event.stream);
            Ok(ExitCode::from(2))
        }
        Answer::TimedOut => anyhow::bail!(
            "no reply to request {} on stream {} within {} ms (waited on stream {}; is a handler consuming {} and calling host.reply?)",
            sent.id,
            event.stream,
            timeout.as_millis(),
            sent.reply_to,
            event.stream
        ),
    }
}

/// `sluice check`: the config, every plugin, and (unless `offline`) the
/// connection to Redis; in a cluster, how each handler's deliveries commit.
async fn check(config_path: &Path, offline: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let runtime = host::runtime_for(&config)?;
    let plugins = host::load_plugins(&runtime, &host::cache_for(&config), &config)?;
    for (h, p) in config.handlers.iter().zip(&plugins) {
        let ordered = h.order_by.as_ref().map(|by| format!("  ordered by {by}")).unwrap_or_default();
        println!("ok  {:<16} {} ({})  streams: {}{ordered}", h.name, p.file_name(), p.version, h.streams.join(", "));
    }
    println!("{}: {} handler(s), all plugins load", config_path.display(), plugins.len());
    if let (Some(url), false) = (&config.redis.url, offline) {
        let redis = Redis::connect(url, &config.redis).await?;
        let kind = if redis.is_cluster() { "a Redis Cluster" } else { "Redis" };
        println!("ok  connected to {kind} at {}", redis.shown());
    }
    if config.redis.cluster {
        for h in &config.handlers {
            match h.cross_slot_writes().as_slice() {
                [] => println!("one script   {:<16} every write of a delivery shares its stream's slot", h.name),
                away => {
                    let each: Vec<String> = away.iter().map(|(s, t)| format!("{s} -> {}", t.join(", "))).collect();
                    println!("via outbox   {:<16} {}", h.name, each.join("; "));
                }
            }
        }
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled: a signal that comes
/// while the host is still starting (compiling plugins, reading its first
/// events) neither kills the process nor is lost, but stops the host, its
/// in-flight events drained, as soon as it runs.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
