//! {{name}}: a Sluice event handler.
//!
//! Sluice calls `handle` once per delivery of an event. Return `Ok(())` and
//! the event is acknowledged; `Failure::Retry` delivers it again after a
//! backoff; `Failure::Reject` sends it to the dead-letter stream now. A panic
//! traps the instance and counts as a retry.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log};
use sluice::plugin::types::{Event, Failure};

struct Handler;

impl Guest for Handler {
    fn handle(event: Event) -> Result<(), Failure> {
        // Bad input never gets better: reject it, with a reason an operator
        // will read in the dead-letter entry.
        let data: serde_json::Value = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("data is not JSON: {e}")))?;
        let Some(object) = data.as_object() else {
            return Err(Failure::Reject("data is not a JSON object".into()));
        };
        log(
            Level::Info,
            &format!("{} {} (attempt {}): {} field(s)", event.event_type, event.id, event.attempt, object.len()),
        );
        // To publish, grant the stream in config.toml (publish = ["audit"]):
        //   sluice::plugin::host::publish("audit", "order.seen", &event.data)
        //       .map_err(|e| Failure::Reject(format!("cannot publish: {e}")))?;
        Ok(())
    }
}

export!(Handler);
