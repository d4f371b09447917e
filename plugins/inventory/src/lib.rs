//! `inventory`: reserves stock for a new order.
//!
//! Consumes `order.created`, like `payment`: two handlers on one stream each
//! get every entry, through their own consumer groups, and fail or succeed
//! independently.

use serde::Deserialize;
use serde::de::IgnoredAny;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log};
use sluice::plugin::types::{Event, Failure};

/// The fields of an `order.created` event this handler reads.
#[derive(Deserialize)]
struct Order {
    order_id: String,
    /// Only counted, so the items themselves are not parsed.
    #[serde(default)]
    items: Vec<IgnoredAny>,
}

/// The handler; see the crate documentation.
struct Inventory;

impl Guest for Inventory {
    fn handle(event: Event) -> Result<(), Failure> {
        if event.event_type != "order.created" {
            return Ok(());
        }
        let order: Order = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid order JSON: {e}")))?;
        log(
            Level::Info,
            &format!(
                "reserving {} item(s) for order {}",
                order.items.len(),
                order.order_id
            ),
        );
        Ok(())
    }
}

export!(Inventory);
