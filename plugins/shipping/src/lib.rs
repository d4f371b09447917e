//! `shipping`: ships an order once it is paid.
//!
//! Consumes `payment.processed` and publishes `order.shipped` to `shipments`.
//! The tracking number is derived from the order id, so a redelivery (delivery
//! is at-least-once) publishes the same shipment again rather than a new one.

use serde::Deserialize;
use serde_json::json;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log, publish};
use sluice::plugin::types::{Event, Failure};

/// The fields of a `payment.processed` event this handler reads.
#[derive(Deserialize)]
struct Payment {
    order_id: String,
}

/// The handler; see the crate documentation.
struct Shipping;

impl Guest for Shipping {
    fn handle(event: Event) -> Result<(), Failure> {
        if event.event_type != "payment.processed" {
            return Ok(());
        }
        let payment: Payment = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid payment JSON: {e}")))?;
        let tracking = format!("TRK-{}", payment.order_id.to_uppercase());
        let shipment = json!({
            "order_id": payment.order_id,
            "tracking_number": tracking,
            "carrier": "parcelpost",
        });
        publish("shipments", "order.shipped", shipment.to_string().as_bytes())
            .map_err(Failure::Reject)?;
        log(
            Level::Info,
            &format!("order {} handed to parcelpost as {tracking}", payment.order_id),
        );
        Ok(())
    }
}

export!(Shipping);
