//! What `sluice invoke` prints: the handler's verdict, what it logged, what
//! it would have committed, and what `sluice run` would do with the entry.

use super::capture::LogLine;
use crate::config::Handler;
use crate::dispatch::Decision;
use crate::event_json::EventJson;
use crate::wasm::{KvWrite, Outcome, Plugin};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// What the handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// `handle` returned ok.
    Ok,
    /// `handle` asked to be tried again.
    Retry,
    /// `handle` rejected the event.
    Reject,
    /// It trapped or hit a limit.
    Crash,
    /// Its type matches none of the handler's `events`: not delivered.
    Skipped,
    /// Its data fails its type's schema: dead-lettered, the plugin not run.
    Invalid,
}

/// What `sluice run` would do with the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Ack,
    Retry,
    DeadLetter,
}

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
    pub handler: String,
    pub plugin: String,
    pub plugin_version: String,
    pub stream: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub outcome: Verdict,
    /// The handler's reason (retry, reject) or the trap or limit (crash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What `run` would do; absent when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// For `retry`: the delay before the next delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// For `dead-letter`: where, and with what `sluice.error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,
    pub logs: Vec<LogLine>,
    /// Committed with the ack if it succeeds; nothing is committed otherwise.
    pub publishes: Vec<Published>,
    pub kv_writes: Vec<Written>,
    /// How long the delivery took (instantiate + call).
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// Where `run` would dead-letter this entry.
    #[serde(skip)]
    dead_letter_target: String,
    #[serde(skip)]
    events: Vec<String>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Report {
    /// A report for `event` on `handler`, before it runs.
    pub fn new(handler: &Handler, plugin: &Plugin, event: &EventJson, attempt: u32) -> Report {
        let entry = event.to_entry();
        Report {
            handler: handler.name.clone(),
            plugin: plugin.path.display().to_string(),
            plugin_version: plugin.version.clone(),
            stream: event.stream.clone(),
            id: entry.id,
            event_type: event.event_type.clone(),
            attempt,
            max_attempts: handler.limits.max_attempts,
            outcome: Verdict::Skipped,
            reason: None,
            action: None,
            retry_in_ms: None,
            dead_letter_stream: None,
            logs: Vec::new(),
            publishes: Vec::new(),
            kv_writes: Vec::new(),
            duration: Duration::ZERO,
            dead_letter_target: handler.dead_letter_stream(&event.stream),
            events: handler.events.clone(),
        }
    }

    /// The event's type matches none of the handler's globs.
    pub fn skipped(mut self) -> Report {
        self.outcome = Verdict::Skipped;
        self
    }

    /// Fills in the outcome and what `run` would do about it.
    pub fn finish(mut self, outcome: Outcome, decision: Decision) -> Report {
        let (verdict, reason, effects) = match outcome {
            Outcome::Success { effects } => (Verdict::Ok, None, Some(effects)),
            Outcome::Retry { reason, .. } => (Verdict::Retry, Some(reason), None),
            Outcome::Reject { reason } => (Verdict::Reject, Some(reason), None),
            Outcome::Crash { reason, .. } => (Verdict::Crash, Some(reason), None),
        };
        self.outcome = verdict;
        self.reason = reason;
        if let Some(effects) = effects {
            self.publishes = effects.publishes.into_iter().map(published).collect();
            self.kv_writes = effects.kv.into_iter().map(written).collect();
        }
        self.act(decision);
        self
    }

    /// The event fails its type's schema, so the plugin did not run;
    /// `decision` is what `run` does about that.
    pub fn invalid(mut self, decision: Decision) -> Report {
        self.outcome = Verdict::Invalid;
        self.act(decision);
        self
    }

    /// Fills in what `run` would do.
    fn act(&mut self, decision: Decision) {
        self.action = Some(match decision {
            Decision::Ack { .. } => Action::Ack,
            Decision::Retry { delay, .. } => {
                self.retry_in_ms = Some(delay.as_millis() as u64);
                Action::Retry
            }
            Decision::DeadLetter { reason } => {
                self.dead_letter_stream = Some(self.dead_letter_target.clone());
                self.reason = Some(reason);
                Action::DeadLetter
            }
        });
    }

    /// The exit code `sluice invoke` ends with: 0 ok (or not for this
    /// handler), 3 retry, 4 reject, 5 trap or limit, 6 invalid (fails its
    /// schema).
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Verdict::Ok | Verdict::Skipped => 0,
            Verdict::Retry => 3,
            Verdict::Reject => 4,
            Verdict::Crash => 5,
            Verdict::Invalid => 6,
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
            Verdict::Invalid => "invalid (the data fails its type's schema): the plugin did not run".to_owned(),
            Verdict::Ok => "ok".to_owned(),
            Verdict::Retry => "retry".to_owned(),
            Verdict::Reject => "reject".to_owned(),
            Verdict::Crash => "trap".to_owned(),
        };
        match self.outcome {
            Verdict::Invalid => writeln!(f, "result    {verdict}")?,
            _ => writeln!(f, "result    {verdict} in {:.2} ms", self.duration.as_secs_f64() * 1000.0)?,
        }
        match self.action {
            Some(Action::Ack) => writeln!(
                f,
                "run would acknowledge the entry and commit {} publish(es) and {} key-value write(s) with it",
                self.publishes.len(),
                self.kv_writes.len()
            ),
            Some(Action::Retry) => writeln!(
                f,
                "run would deliver it again in {} ms (attempt {} of {}): {reason}",
                self.retry_in_ms.unwrap_or(0),
                self.attempt + 1,
                self.max_attempts
            ),
            Some(Action::DeadLetter) => writeln!(
                f,
                "run would dead-letter it to {}: {reason}",
                self.dead_letter_stream.as_deref().unwrap_or("?")
            ),
            None => Ok(()),
        }
    }
}
