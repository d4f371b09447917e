//! Redis connections by role: a shared, auto-reconnecting one for commands
//! and a dedicated one per blocking reader.

use super::error::{Context, Error};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use std::time::Duration;

/// Response timeout for ordinary commands (acks, publishes, claims).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection timeout for every connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server: a client to open connections with, and one shared
/// connection for everything that does not block.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    /// Multiplexed and auto-reconnecting; used by every task concurrently.
    pub conn: ConnectionManager,
}

impl Redis {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Redis, Error> {
        let what = || format!("connecting to Redis at {}", redact(url));
        let client = Client::open(url).context(what)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await.context(what)?;
        Ok(Redis { client, conn })
    }

    /// A connection of its own for `XREADGROUP BLOCK block`: its response
    /// timeout is the block plus `COMMAND_TIMEOUT` (the default 500 ms would
    /// cut every blocking read; none at all would hang on a dead connection).
    pub async fn blocking_connection(&self, block: Duration) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + COMMAND_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context(|| "opening a reader connection to Redis".into())
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
