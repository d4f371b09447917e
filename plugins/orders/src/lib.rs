//! `orders`: the order service behind an API gateway (seed 000's pattern):
//! callers send requests (`sluice request`, or `POST /v1/streams/orders.api/
//! requests` on the HTTP ingress) and wait for the answer; the service keeps
//! each order's state in kv and follows the shop's own events.
//!
//! | event | data | what it does |
//! |---|---|---|
//! | `orders.create` (request) | `{customer, total, items}` | creates order `o-<entry id>` (status `created`), publishes `order.created` to `orders` so the shop's chain takes it, replies `order` with the order |
//! | `orders.status` (request) | `{order_id}` | replies `order` with the order, or `order.unknown` `{order_id}` |
//! | `payment.processed` | `{order_id}` | records that the order is paid |
//! | `order.shipped` | `{order_id, tracking_number}` | records that it shipped, with the tracking number |
//!
//! An order's status is the furthest step recorded: `created`, `paid`, `shipped`.
//!
//! Idempotent: the order id comes from the request's entry id, so a request
//! delivered twice creates the same order.

use serde_json::{Value, json};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{publish, reply};
use sluice::plugin::kv;
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// The handler; see the crate documentation.
struct Orders;

impl Guest for Orders {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Value = serde_json::from_slice(&event.data)
            .map_err(|e| Failure::Reject(format!("invalid JSON: {e}")))?;
        match event.event_type.as_str() {
            "orders.create" => create(&event.id, &data),
            "orders.status" => status(&data),
            "payment.processed" => advance(&data, "paid", None),
            "order.shipped" => advance(&data, "shipped", data.get("tracking_number").cloned()),
            other => Err(Failure::Reject(format!("orders does not handle {other} events"))),
        }
    }
}

fn create(id: &str, data: &Value) -> Result<(), Failure> {
    let order_id = format!("o-{id}");
    let order = json!({
        "order_id": order_id,
        "customer": data["customer"],
        "total": data["total"],
        "items": data["items"],
        "status": "created",
    });
    save(&order)?;
    let created = json!({"order_id": order_id, "customer": data["customer"], "total": data["total"], "items": data["items"]});
    publish("orders", "order.created", created.to_string().as_bytes()).map_err(Failure::Reject)?;
    reply("order", order.to_string().as_bytes()).map_err(Failure::Reject)
}

fn status(data: &Value) -> Result<(), Failure> {
    let order_id = data["order_id"].as_str().unwrap_or_default();
    let Some(mut order) = load(order_id)? else {
        return reply("order.unknown", json!({ "order_id": order_id }).to_string().as_bytes()).map_err(Failure::Reject);
    };
    // The furthest step reached is the status.
    for step in ["paid", "shipped"] {
        if let Some(done) = get(&format!("{step}:{order_id}"))? {
            order["status"] = json!(step);
            if let Some(tracking) = done["detail"].as_str() {
                order["tracking_number"] = json!(tracking);
            }
        }
    }
    reply("order", order.to_string().as_bytes()).map_err(Failure::Reject)
}

/// Records a step of a known order under a key of its own (`paid:<id>`,
/// `shipped:<id>`), never rewriting the order: payments and shipments are
/// different streams, so their events may be handled at the same time, and
/// a read-modify-write of one record would lose one of them. (`order_by`
/// orders the events of one stream.) Events about other orders (placed
/// without the gateway) are not this service's.
fn advance(data: &Value, step: &str, detail: Option<Value>) -> Result<(), Failure> {
    let order_id = data["order_id"].as_str().unwrap_or_default();
    if load(order_id)?.is_none() {
        return Ok(());
    }
    let value = json!({ "detail": detail }).to_string();
    kv::set(&format!("{step}:{order_id}"), value.as_bytes(), None);
    Ok(())
}

fn key(order_id: &str) -> String {
    format!("order:{order_id}")
}

fn load(order_id: &str) -> Result<Option<Value>, Failure> {
    get(&key(order_id))
}

/// The JSON stored under `key`; a kv error asks for a retry.
fn get(key: &str) -> Result<Option<Value>, Failure> {
    let stored = kv::get(key).map_err(|e| Failure::Retry(RetryAfter { reason: e, delay_ms: None }))?;
    Ok(stored.and_then(|v| serde_json::from_slice(&v).ok()))
}

fn save(order: &Value) -> Result<(), Failure> {
    kv::set(&key(order["order_id"].as_str().unwrap_or_default()), order.to_string().as_bytes(), None);
    Ok(())
}

export!(Orders);
