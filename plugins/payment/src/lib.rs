//! `payment`: charges an order when it is created.
//!
//! Consumes `order.created` and publishes `payment.processed` to `payments`.
//! Shows the three outcomes a handler can choose:
//!
//! - a bad order (invalid JSON, a negative total) is *rejected*: retrying
//!   cannot fix it, so it goes straight to the dead-letter stream;
//! - a flaky payment gateway (simulated with `flaky_attempts`) asks for a
//!   *retry*: the host delivers the event again after a backoff;
//! - otherwise it publishes and returns `Ok`, and the host writes the
//!   publish and acknowledges the order in one transaction.

use serde::Deserialize;
use serde_json::{Number, json};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log, publish};
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// The fields of an `order.created` event this handler reads.
#[derive(Deserialize)]
struct Order {
    order_id: String,
    /// Kept as a JSON number so the amount is published exactly as received.
    total: Number,
    /// Simulates a flaky gateway: the first `flaky_attempts` deliveries fail.
    #[serde(default)]
    flaky_attempts: u32,
}

/// The handler; see the crate documentation.
struct Payment;

impl Guest for Payment {
    fn handle(event: Event) -> Result<(), Failure> {
        if event.event_type != "order.created" {
            return Ok(());
        }
        let order: Order = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid order JSON: {e}")))?;
        if order.total.as_f64().is_some_and(|t| t < 0.0) {
            return Err(Failure::Reject(format!(
                "order {} has a negative total ({})",
                order.order_id, order.total
            )));
        }
        if event.attempt <= order.flaky_attempts {
            return Err(Failure::Retry(RetryAfter {
                reason: "payment gateway timed out (simulated)".into(),
                delay_ms: None,
            }));
        }
        let payment = json!({
            "order_id": order.order_id,
            "payment_id": format!("pay-{}", order.order_id),
            "amount": order.total,
        });
        publish("payments", "payment.processed", payment.to_string().as_bytes())
            .map_err(Failure::Reject)?;
        log(
            Level::Info,
            &format!("charged {} for order {}", order.total, order.order_id),
        );
        Ok(())
    }
}

export!(Payment);
