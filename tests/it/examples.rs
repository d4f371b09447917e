//! The flows users bring from the seed documents, run end to end with the
//! example plugins (docs/examples.md).

use crate::support::*;
use serde_json::{Value, json};

/// `sluice request` with `fx`'s config; its stdout as JSON.
fn request(fx: &Fixture, stream: &str, event_type: &str, data: Value) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["request", stream, "--type", event_type, "--data", &data.to_string(), "--timeout-ms", "10000"])
        .arg("--config")
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(said.trim()).unwrap_or_else(|e| panic!("{e}: {said}"))
}

/// One POST to the ingress on `port`; (status, JSON body).
fn post(port: u16, path: &str, body: Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap())
}

/// The API gateway (LeanMQ's pattern): orders.create and orders.status
/// requests answered by the order service, through `sluice request` and
/// through HTTP; the order it creates goes through the shop's own chain
/// (payment, shipping), which the service follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_answers_requests_from_the_cli_and_over_http() {
    let redis = RedisServer::start();
    let port = free_port();
    let host = format!("ingress = \"127.0.0.1:{port}\"\ningress_streams = [\"orders.api\"]");
    let handlers = "[handlers.orders]\nplugin = \"orders.wasm\"\nstreams = [\"orders.api\", \"payments\", \"shipments\"]\n\
        events = [\"orders.create\", \"orders.status\", \"payment.processed\", \"order.shipped\"]\npublish = [\"orders\"]\norder_by = \"data.order_id\"\n\
        [handlers.payment]\nplugin = \"payment.wasm\"\nstreams = [\"orders\"]\nevents = [\"order.created\"]\npublish = [\"payments\"]\n\
        [handlers.shipping]\nplugin = \"shipping.wasm\"\nstreams = [\"payments\"]\nevents = [\"payment.processed\"]\npublish = [\"shipments\"]\n";
    let fx = Fixture::new(&redis, &host, handlers);
    let running = fx.start();
    let created = request(
        &fx,
        "orders.api",
        "orders.create",
        json!({"customer": "kim", "total": 12, "items": [{"sku": "cap", "qty": 1}]}),
    );
    assert_eq!(created["status"], "created", "{created}");
    let id = created["order_id"].as_str().unwrap().to_owned();
    // The chain pays and ships it; the service follows.
    let shipped = eventually(SOON, "the order shipped", || {
        let fx = &fx;
        let id = id.clone();
        async move {
            let s = request(fx, "orders.api", "orders.status", json!({"order_id": id}));
            (s["status"] == "shipped").then_some(s)
        }
    })
    .await;
    assert!(shipped["tracking_number"].as_str().unwrap().starts_with("TRK-"), "{shipped}");
    // The same over HTTP.
    let (code, answer) =
        post(port, "/v1/streams/orders.api/requests", json!({"type": "orders.status", "data": {"order_id": id}}));
    assert_eq!(
        (code, &answer["type"], &answer["data"]["status"]),
        (200, &json!("order"), &json!("shipped")),
        "{answer}"
    );
    let (code, answer) =
        post(port, "/v1/streams/orders.api/requests", json!({"type": "orders.status", "data": {"order_id": "o-none"}}));
    assert_eq!((code, &answer["type"]), (200, &json!("order.unknown")), "{answer}");
    let body =
        json!({"type": "orders.create", "data": {"customer": "lu", "total": 3, "items": [{"sku": "pen", "qty": 3}]}});
    let (code, answer) = post(port, "/v1/streams/orders.api/requests", body);
    assert_eq!((code, &answer["data"]["status"]), (200, &json!("created")), "{answer}");
    running.stop().await;
}
