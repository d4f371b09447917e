//! `profiles`: an event-sourced projection (seed 001's aggregate): folds each
//! user's `user.created`, `user.updated` and `user.deleted` events into one
//! record in kv, `user:<user_id>`, which `sluice kv get profiles
//! user:<user_id>` shows. Run with `order_by = "data.user_id"`, so one user's
//! events fold one at a time, in stream order, on any number of hosts.
//!
//! | event | data | the record after it |
//! |---|---|---|
//! | `user.created` | `{user_id, …}` | the data, with `version` 1 |
//! | `user.updated` | `{user_id, …}` | the record with the data's fields over it, `version` + 1; an unknown user is rejected |
//! | `user.deleted` | `{user_id}` | none |
//!
//! The fold only depends on the events, so `sluice replay` of the stream
//! rebuilds the records from scratch.

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::kv;
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// The handler; see the crate documentation.
struct Profiles;

impl Guest for Profiles {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Map<String, Value> = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("expected a JSON object: {e}")))?;
        let Some(user_id) = data.get("user_id").and_then(Value::as_str) else {
            return Err(Failure::Reject("the event has no user_id".into()));
        };
        let key = format!("user:{user_id}");
        match event.event_type.as_str() {
            "user.created" => {
                let mut record = data.clone();
                record.insert("version".into(), json!(1));
                save(&key, &record);
                Ok(())
            }
            "user.updated" => {
                let Some(mut record) = load(&key)? else {
                    return Err(Failure::Reject(format!("user {user_id} is unknown (no user.created before this update)")));
                };
                let version = record.get("version").and_then(Value::as_u64).unwrap_or(0);
                record.extend(data);
                record.insert("version".into(), json!(version + 1));
                save(&key, &record);
                Ok(())
            }
            "user.deleted" => {
                kv::delete(&key);
                Ok(())
            }
            other => Err(Failure::Reject(format!("profiles does not handle {other} events"))),
        }
    }
}

fn load(key: &str) -> Result<Option<Map<String, Value>>, Failure> {
    let stored = kv::get(key).map_err(|e| Failure::Retry(RetryAfter { reason: e, delay_ms: None }))?;
    Ok(stored.and_then(|v| serde_json::from_slice(&v).ok()))
}

fn save(key: &str, record: &Map<String, Value>) {
    kv::set(key, Value::Object(record.clone()).to_string().as_bytes(), None);
}

export!(Profiles);
