//! What `sluice invoke` prints: the handler's verdict, what it logged, what
//! it would have committed, and what `sluice run` would do with the entry.

use super::capture::LogLine;
use crate::config::Handler;
use crate::dispatch::{Decision, Turn, Verdict};
use crate::event_json::EventJson;
use crate::wasm::{KvWrite, Plugin};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// A publish the handler made, as it would be written.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub stream: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: String,
}

/// A key-value write the handler made: `value` is absent for a delete.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Everything about one offline delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The handler it ran as.
    pub handler: String,
    /// The plugin file.
    pub plugin: String,
    /// The plugin's version (the start of its SHA-256).
    pub plugin_version: String,
    /// The stream the event was (or would be) read from.
    pub stream: String,
    /// The event's entry id, a stand-in when the event file gives none.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Which delivery this was.
    pub attempt: u32,
    /// Deliveries before the event is dead-lettered.
    pub max_attempts: u32,
    /// How the turn ended ([`Verdict::label`]): the handler's outcome, or
    /// `skipped`, `invalid` or `exhausted` when the plugin did not run.
    #[serde(serialize_with = "label")]
    pub outcome: Verdict,
    /// The handler's reason (retry, reject), the trap or limit (crash), or
    /// why it was dead-lettered without running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What `run` would do ([`Decision::label`]).
    pub action: &'static str,
    /// For `retry`: the delay before the next delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// For `dead-letter`: where, and with what `sluice.error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,
    /// What the handler logged, through `host.log`, stdout and stderr.
    pub logs: Vec<LogLine>,
    /// Committed with the ack if it succeeds; nothing is committed otherwise.
    pub publishes: Vec<Published>,
    /// Committed with the ack, like the publishes.
    pub kv_writes: Vec<Written>,
    /// The reply to the request (`host.reply`), committed with the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Published>,
    /// How long the delivery took (instantiate + call).
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The handler's `events` globs, for the skipped message.
    #[serde(skip)]
    events: Vec<String>,
}

fn label<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.label())
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Report {
    /// The report of `turn`, one turn of `event` on `handler`, which took
    /// `duration` in the handler and logged `logs`.
    pub fn new(
        handler: &Handler,
        plugin: &Plugin,
        event: &EventJson,
        attempt: u32,
        turn: Turn,
        duration: Duration,
        logs: Vec<LogLine>,
    ) -> Report {
        let mut report = Report {
            handler: handler.name.clone(),
            plugin: plugin.path.display().to_string(),
            plugin_version: plugin.version.clone(),
            stream: event.stream.clone(),
            id: event.to_entry().id,
            event_type: event.event_type.clone(),
            attempt,
            max_attempts: handler.retry.max_attempts,
            outcome: turn.verdict,
            reason: None,
            action: turn.decision.label(),
            retry_in_ms: None,
            dead_letter_stream: None,
            logs,
            publishes: Vec::new(),
            kv_writes: Vec::new(),
            reply: None,
            duration,
            events: handler.events.clone(),
        };
        match turn.decision {
            Decision::Ack { effects } => {
                report.publishes = effects.publishes.into_iter().map(published).collect();
                report.kv_writes = effects.kv.into_iter().map(written).collect();
                report.reply = effects.reply.map(published);
            }
            Decision::Retry { delay, reason } => {
                report.retry_in_ms = Some(delay.as_millis() as u64);
                report.reason = Some(reason);
            }
            Decision::DeadLetter { reason } => {
                report.dead_letter_stream = Some(handler.dead_letter_stream(&event.stream));
                report.reason = Some(reason);
            }
        }
        report
    }

    /// The exit code `sluice invoke` ends with: 0 ok (or not for this
    /// handler), 3 retry, 4 reject, 5 trap or limit, 6 invalid (fails its
    /// schema), 7 exhausted (its last attempt was made already), 8
    /// malformed (not its stream's format). Expired: 0, like skipped.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Verdict::Ok | Verdict::Skipped | Verdict::Expired => 0,
            Verdict::Retry => 3,
            Verdict::Reject => 4,
            Verdict::Crash => 5,
            Verdict::Invalid => 6,
            Verdict::Exhausted => 7,
            Verdict::Malformed => 8,
        }
    }
}

fn published(p: crate::wasm::Publish) -> Published {
    Published { stream: p.stream, event_type: p.event_type, data: String::from_utf8_lossy(&p.data).into_owned() }
}

fn written(w: KvWrite) -> Written {
    match w {
        KvWrite::Set { key, value, ttl_ms } => {
            Written { key, value: Some(String::from_utf8_lossy(&value).into_owned()), ttl_ms }
        }
        KvWrite::Delete { key } => Written { key, value: None, ttl_ms: None },
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "handler   {} ({}, version {})", self.handler, self.plugin, self.plugin_version)?;
        writeln!(
            f,
            "event     {} {} {:?} (attempt {} of {})",
            self.stream, self.id, self.event_type, self.attempt, self.max_attempts
        )?;
        for line in &self.logs {
            writeln!(f, "{:<9} {:<5} {}", line.source, line.level, line.message)?;
        }
        for p in &self.publishes {
            writeln!(f, "publish   {} {:?} {}", p.stream, p.event_type, p.data)?;
        }
        if let Some(r) = &self.reply {
            writeln!(f, "reply     {} {:?} {}", r.stream, r.event_type, r.data)?;
        }
        for w in &self.kv_writes {
            match (&w.value, w.ttl_ms) {
                (Some(v), Some(ttl)) => writeln!(f, "kv set    {} = {v} (ttl {ttl} ms)", w.key)?,
                (Some(v), None) => writeln!(f, "kv set    {} = {v}", w.key)?,
                (None, _) => writeln!(f, "kv delete {}", w.key)?,
            }
        }
        let reason = self.reason.as_deref().unwrap_or("");
        let verdict = match self.outcome {
            Verdict::Skipped => {
                return writeln!(
                    f,
                    "result    skipped: the type matches none of the handler's events ({}); run would acknowledge it without a delivery",
                    self.events.join(", ")
                );
            }
            Verdict::Invalid => "invalid (the data fails its type's schema): the plugin did not run",
            Verdict::Exhausted => "exhausted (its last attempt was made already): the plugin did not run",
            Verdict::Malformed => "malformed (not an entry of its stream's format): the plugin did not run",
            Verdict::Expired => "expired (its time to live passed): the plugin did not run",
            Verdict::Crash => "trap",
            other => other.label(),
        };
        match self.outcome {
            Verdict::Invalid | Verdict::Exhausted | Verdict::Malformed | Verdict::Expired => {
                writeln!(f, "result    {verdict}")?
            }
            _ => writeln!(f, "result    {verdict} in {:.2} ms", self.duration.as_secs_f64() * 1000.0)?,
        }
        match self.action {
            "ack" => writeln!(
                f,
                "run would acknowledge the entry and commit {} publish(es) and {} key-value write(s) with it",
                self.publishes.len(),
                self.kv_writes.len()
            ),
            "retry" => writeln!(
                f,
                "run would deliver it again in {} ms (attempt {} of {}): {reason}",
                self.retry_in_ms.unwrap_or(0),
                self.attempt + 1,
                self.max_attempts
            ),
            _ => writeln!(
                f,
                "run would dead-letter it to {}: {reason}",
                self.dead_letter_stream.as_deref().unwrap_or("?")
            ),
        }
    }
}
