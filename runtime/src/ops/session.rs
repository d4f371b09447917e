//! What every operator command starts from: the config and a connection to
//! its Redis (the embedded one is started if it is not running, and stopped
//! again when the command ends, on every path).

use crate::config::Config;
use crate::embedded::RedisTarget;
use crate::stream::{Conn, Redis};
use std::path::Path;

/// A loaded config and a connection to its Redis.
pub struct Session {
    /// The config, validated (its plugin files need not exist).
    pub config: Config,
    /// The connection to the config's Redis.
    pub conn: Conn,
}

impl Session {
    /// Loads `config_path`, connects, runs `work` on the session, and closes
    /// it whatever `work` returns: an embedded Redis this command started is
    /// stopped on errors too.
    pub async fn with<T>(
        config_path: &Path,
        work: impl AsyncFnOnce(&mut Session) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let config = Config::load_unchecked(config_path)?;
        let target = RedisTarget::resolve(config.redis.url.as_deref(), &config.state_dir()).await?;
        let result = async {
            let conn = Redis::connect(target.url(), &config.redis).await?.conn;
            work(&mut Session { config, conn }).await
        }
        .await;
        target.stop().await;
        result
    }

    /// Every dead-letter stream the config's handlers write to, once each.
    pub fn dead_letter_streams(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.config.handlers.iter().flat_map(|h| h.streams.iter().map(|s| h.dead_letter_stream(s))).collect();
        all.sort();
        all.dedup();
        all
    }
}
