//! What every operator command starts from: the config and a connection to
//! its Redis (the embedded one is started if it is not running).

use crate::config::Config;
use crate::embedded::RedisTarget;
use anyhow::Context;
use redis::aio::MultiplexedConnection;
use std::path::Path;

/// A loaded config and a connection to its Redis.
pub struct Session {
    pub config: Config,
    pub conn: MultiplexedConnection,
    target: RedisTarget,
}

impl Session {
    /// Loads `config_path` and connects.
    pub async fn open(config_path: &Path) -> anyhow::Result<Session> {
        let config = Config::load_unchecked(config_path)?;
        let target = RedisTarget::resolve(config.redis_url.as_deref(), &config.state_dir()).await?;
        let client = redis::Client::open(target.url())?;
        let conn = client.get_multiplexed_async_connection().await.context("cannot connect to Redis")?;
        Ok(Session { config, conn, target })
    }

    /// Every dead-letter stream the config's handlers write to, once each.
    pub fn dead_letter_streams(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.config.handlers.iter().flat_map(|h| h.streams.iter().map(|s| h.dead_letter_stream(s))).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Stops the embedded Redis if this command started it.
    pub async fn close(self) {
        self.target.stop().await;
    }
}
