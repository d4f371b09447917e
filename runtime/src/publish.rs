//! `sluice publish`: add one event to a stream and print its entry id.

use crate::event::field;
use anyhow::Context;

/// One event to add.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The stream to add it to.
    pub stream: String,
    /// Its `type` field.
    pub event_type: String,
    /// Its `data` field, JSON by convention.
    pub data: String,
    /// Extra fields (`correlation_id`, ...), in order.
    pub fields: Vec<(String, String)>,
}

/// Adds `event` with `XADD` on `conn` and returns the new entry's id.
pub async fn publish(conn: &mut impl redis::aio::ConnectionLike, event: &NewEvent) -> anyhow::Result<String> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&event.stream).arg("*");
    cmd.arg(field::TYPE).arg(&event.event_type).arg(field::DATA).arg(&event.data);
    for (k, v) in &event.fields {
        cmd.arg(k).arg(v);
    }
    cmd.query_async(conn).await.with_context(|| format!("XADD to stream {}", event.stream))
}
