//! Request/reply over streams: a request is an entry with a `reply_to`
//! field naming a stream of its caller's own; the handler answers it with
//! `host.reply`, which writes one entry there (with `request_id`) in the
//! same commit as the ack. A request that is dead-lettered gets an error
//! reply (type [`ERROR_REPLY_TYPE`], data `{"error": reason}`) in the
//! dead-letter commit, so its caller hears at once rather than waiting out
//! its timeout. Every reply stream expires [`REPLY_TTL_MS`] after its reply
//! is written, so the streams of callers that vanished do not pile up.

use crate::event::{Entry, field};
use crate::publish::{NewEvent, publish};
use crate::stream::{Conn, Redis};
pub use crate::stream::{ERROR_REPLY_TYPE, REPLY_TTL_MS};
use anyhow::Context;
use std::time::Duration;

/// What a request's caller got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The handler replied: the reply's type and data.
    Reply {
        /// The reply's `type`.
        event_type: String,
        /// The reply's `data`.
        data: String,
    },
    /// The request was dead-lettered: why.
    Failed(String),
    /// No reply came within the wait.
    TimedOut,
}

/// A request sent: where it went and where its reply is awaited.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The request's entry id.
    pub id: String,
    /// The reply stream.
    pub reply_to: String,
}

/// What every reply stream's name starts with. `host.reply` writes only to
/// such a stream: `reply_to` comes from whoever produced the request, and a
/// reply (with its time to live) must never land in, or expire, a stream
/// that holds anything else.
pub const REPLY_PREFIX: &str = "sluice:reply:";

/// A fresh reply stream name, unique to one request.
pub fn reply_stream() -> String {
    format!("{REPLY_PREFIX}{:016x}{:08x}", rand::random::<u64>(), std::process::id())
}

/// Sends `event` as a request and waits up to `timeout` for its answer;
/// deletes the reply stream in every case.
/// `format` is the format of the event's stream.
pub async fn request(
    redis: &Redis,
    event: &NewEvent,
    format: &crate::format::Format,
    timeout: Duration,
) -> anyhow::Result<(Sent, Answer)> {
    let reply_to = reply_stream();
    let mut request = event.clone();
    request.fields.push((field::REPLY_TO.into(), reply_to.clone()));
    let mut conn = redis.conn.clone();
    let id = publish(&mut conn, &request, format).await?;
    let answer = wait(redis, &reply_to, timeout).await;
    // A stream left behind expires anyway: its reply set its time to live.
    let deleted: redis::RedisResult<i64> = redis::cmd("DEL").arg(&reply_to).query_async(&mut conn).await;
    if let Err(e) = deleted {
        tracing::warn!("deleting reply stream {reply_to} failed: {e}; it expires in {} s", REPLY_TTL_MS / 1000);
    }
    let answer = answer.with_context(|| format!("request {id} was sent to stream {}, but", event.stream))?;
    Ok((Sent { id, reply_to }, answer))
}

/// Waits up to `timeout` for the reply on `reply_to`.
async fn wait(redis: &Redis, reply_to: &str, timeout: Duration) -> anyhow::Result<Answer> {
    let mut conn: Conn = redis.blocking_connection(timeout).await?;
    let reply: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(timeout.as_millis().max(1) as u64)
        .arg("STREAMS")
        .arg(reply_to)
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .with_context(|| format!("waiting for a reply on stream {reply_to}"))?;
    let entries = crate::stream::read_reply(&reply);
    let Some(entry) = entries.into_iter().flat_map(|(_, e)| e).next() else { return Ok(Answer::TimedOut) };
    Ok(answer(&entry))
}

/// The answer a reply entry holds.
fn answer(entry: &Entry) -> Answer {
    let text = |name| entry.get(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let (event_type, data) = (text(field::TYPE), text(field::DATA));
    if event_type == ERROR_REPLY_TYPE {
        let reason = serde_json::from_str::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(data);
        return Answer::Failed(reason);
    }
    Answer::Reply { event_type, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reply_reads_as_a_failure_and_anything_else_as_the_reply() {
        let entry = |t: &str, d: &str| Entry {
            id: "1-0".into(),
            fields: vec![("type".into(), t.as_bytes().to_vec()), ("data".into(), d.as_bytes().to_vec())],
        };
        assert_eq!(answer(&entry(ERROR_REPLY_TYPE, r#"{"error":"no stock"}"#)), Answer::Failed("no stock".into()));
        let ok = Answer::Reply { event_type: "order.status".into(), data: r#"{"s":1}"#.into() };
        assert_eq!(answer(&entry("order.status", r#"{"s":1}"#)), ok);
        assert_ne!(reply_stream(), reply_stream());
    }
}
