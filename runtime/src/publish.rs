//! `sluice publish`: add one event to a stream and print its entry id.

use crate::format::{Format, Outgoing};
use crate::schema::Schemas;
use anyhow::Context;

/// One event to add.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The stream to add it to.
    pub stream: String,
    /// Its event type.
    pub event_type: String,
    /// Its data, JSON by convention.
    pub data: String,
    /// Extra fields (`correlation_id`, ...), in order.
    pub fields: Vec<(String, String)>,
}

impl NewEvent {
    /// Whether it may be written to its stream, of `format`: why not, if the
    /// format cannot hold its data or the data its stream's handlers would
    /// get fails its type's schema.
    pub fn check(&self, format: &Format, schemas: &Schemas) -> Result<(), String> {
        format
            .check(self.data.as_bytes())
            .map_err(|why| format!("stream {} is in {} format: {why}", self.stream, format.name()))?;
        let delivered = format.delivered(&self.event_type, self.data.as_bytes());
        schemas.check(&self.event_type, &delivered).map_err(|invalid| invalid.to_string())
    }

    /// Its fields as an entry of a stream of `format`; why it cannot be one
    /// (a LeanMQ message must be a JSON object).
    pub fn fields(&self, format: &Format) -> Result<Vec<(String, Vec<u8>)>, String> {
        format
            .check(self.data.as_bytes())
            .map_err(|why| format!("stream {} is in {} format: {why}", self.stream, format.name()))?;
        let out = Outgoing {
            stream: &self.stream,
            event_type: &self.event_type,
            data: self.data.as_bytes(),
            extra: &self.fields,
            ..Outgoing::default()
        };
        Ok(format.write(&out))
    }
}

/// Adds `event` with `XADD` on `conn`, written in its stream's `format`,
/// and returns the new entry's id.
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    event: &NewEvent,
    format: &Format,
) -> anyhow::Result<String> {
    let fields = event.fields(format).map_err(anyhow::Error::msg)?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&event.stream).arg("*");
    for (k, v) in &fields {
        cmd.arg(k).arg(v);
    }
    cmd.query_async(conn).await.with_context(|| format!("XADD to stream {}", event.stream))
}
