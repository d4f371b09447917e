//! `notification`: tells the customer their order has shipped.
//!
//! Consumes `order.shipped` and publishes nothing: the "notification" is a log
//! line, standing in for an email or a push message.

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log};
use sluice::plugin::types::{Event, Failure};

/// The fields of an `order.shipped` event this handler reads.
#[derive(Deserialize)]
struct Shipment {
    order_id: String,
    carrier: String,
    tracking_number: String,
}

/// The handler; see the crate documentation.
struct Notification;

impl Guest for Notification {
    fn handle(event: Event) -> Result<(), Failure> {
        if event.event_type != "order.shipped" {
            return Ok(());
        }
        let s: Shipment = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid shipment JSON: {e}")))?;
        log(
            Level::Info,
            &format!(
                "order {} shipped with {}, tracking {}",
                s.order_id, s.carrier, s.tracking_number
            ),
        );
        Ok(())
    }
}

export!(Notification);
