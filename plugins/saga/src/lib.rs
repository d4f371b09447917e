//! `saga`: an order saga with compensation (seed 001's and 003's pattern),
//! in three roles chosen by event type, each run as its own handler:
//!
//! - the **orchestrator** (reads `checkout` and `saga.events`) keeps each
//!   order's saga state in kv (`saga:<order_id>`) and sends the next command:
//!   `checkout.started` → `inventory.reserve`; `inventory.reserved` →
//!   `payment.charge`; `payment.charged` → `order.confirmed` (to
//!   `orders.done`); `payment.failed` → `inventory.release` (the
//!   compensation); `inventory.released` → `order.cancelled` (to
//!   `orders.done`);
//! - the **inventory** participant (reads `inventory.commands`) holds stock
//!   in kv (`stock:<sku>`, starting at 10): reserve takes `qty`, release puts
//!   it back; it answers on `saga.events`;
//! - the **payment** participant (reads `payment.commands`) charges, or fails
//!   when the card is `declined`; it answers on `saga.events`.
//!
//! Every message carries `order_id`, so the orchestrator orders by it; the
//! inventory participant orders by `sku`, since its stock is per item and
//! two orders of one item must not read and write it at once.

use serde_json::{Value, json};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::publish;
use sluice::plugin::kv;
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// Stock every item starts with.
const INITIAL_STOCK: i64 = 10;

/// The handler; see the crate documentation.
struct Saga;

impl Guest for Saga {
    fn handle(event: Event) -> Result<(), Failure> {
        let order: Value = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid JSON: {e}")))?;
        let id = order["order_id"].as_str().ok_or_else(|| Failure::Reject("no order_id".into()))?.to_owned();
        match event.event_type.as_str() {
            // The orchestrator.
            "checkout.started" => step(&id, &order, "reserving", "inventory.commands", "inventory.reserve"),
            "inventory.reserved" => step(&id, &order, "charging", "payment.commands", "payment.charge"),
            "payment.charged" => step(&id, &order, "confirmed", "orders.done", "order.confirmed"),
            "payment.failed" => step(&id, &order, "compensating", "inventory.commands", "inventory.release"),
            "inventory.released" => step(&id, &order, "cancelled", "orders.done", "order.cancelled"),
            // The participants.
            "inventory.reserve" => stock(&order, -1, "inventory.reserved"),
            "inventory.release" => stock(&order, 1, "inventory.released"),
            "payment.charge" => {
                let outcome = if order["card"] == "declined" { "payment.failed" } else { "payment.charged" };
                send("saga.events", outcome, &order)
            }
            other => Err(Failure::Reject(format!("saga does not handle {other} events"))),
        }
    }
}

/// Records the saga of order `id` as `state` and sends the next message.
fn step(id: &str, order: &Value, state: &str, stream: &str, next: &str) -> Result<(), Failure> {
    let mut saga = order.clone();
    saga["state"] = json!(state);
    kv::set(&format!("saga:{id}"), saga.to_string().as_bytes(), None);
    send(stream, next, order)
}

/// Moves `qty` of the order's `sku` out of (`sign` -1) or back into (+1)
/// stock, and answers `reply` on `saga.events`.
fn stock(order: &Value, sign: i64, reply: &str) -> Result<(), Failure> {
    let key = format!("stock:{}", order["sku"].as_str().unwrap_or("unknown"));
    let stored = kv::get(&key).map_err(|e| Failure::Retry(RetryAfter { reason: e, delay_ms: None }))?;
    let left = stored.and_then(|v| String::from_utf8(v).ok()?.parse().ok()).unwrap_or(INITIAL_STOCK);
    let left = left + sign * order["qty"].as_i64().unwrap_or(1);
    if left < 0 {
        return Err(Failure::Reject(format!("out of stock for {key}")));
    }
    kv::set(&key, left.to_string().as_bytes(), None);
    send("saga.events", reply, order)
}

fn send(stream: &str, event_type: &str, order: &Value) -> Result<(), Failure> {
    publish(stream, event_type, order.to_string().as_bytes()).map_err(Failure::Reject)
}

export!(Saga);
