//! The HTTP ingress, over real HTTP: events in (201), requests answered
//! (200), failed (502) and unanswered (504), and every refusal: malformed
//! JSON (400), no or a wrong token (401), a stream not allowed (403), an
//! unknown path or method (404, 405), a body too large (413), data that
//! fails its schema (422). Headers become fields; metrics count answers.

use crate::support::*;
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token";

/// One HTTP/1.1 request to the ingress; (status, JSON body or text).
fn post(port: u16, path: &str, body: Value) -> (u16, Value) {
    http_json(port, "POST", path, &[("Authorization", &format!("Bearer {TOKEN}"))], body.to_string().as_bytes())
}

/// A host with the ingress (token set) writing `orders` and `users.*`,
/// order.created checked against the demo's schema, and a `behave` handler
/// on `users.requests`.
fn fixture(redis: &RedisServer, ingress: u16, admin: u16) -> Fixture {
    let schema = repo().join("schemas/order.created.json");
    let host = format!(
        "ingress = \"127.0.0.1:{ingress}\"\ningress_token = \"{TOKEN}\"\ningress_streams = [\"orders\", \"users.*\"]\nadmin = \"127.0.0.1:{admin}\""
    );
    let handlers = format!(
        "[schemas]\n\"order.created\" = \"{}\"\n[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"users.requests\"]\nmax_attempts = 1\n",
        schema.display()
    );
    Fixture::new(redis, &host, &handlers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_requests_go_through_and_every_bad_input_is_refused() {
    let redis = RedisServer::start();
    let (port, admin) = (free_port(), free_port());
    let fx = fixture(&redis, port, admin);
    let host = fx.start();
    let mut conn = redis.conn().await;
    eventually(SOON, "the ingress listening", || async { std::net::TcpStream::connect(("127.0.0.1", port)).ok() })
        .await;

    // An event: 201 with its id; the correlation and trace headers are fields.
    let order = json!({"order_id": "o-1", "customer": "ada", "total": 42.5, "items": [{"sku": "mug", "qty": 2}]});
    let body = json!({"type": "order.created", "data": order, "fields": {"channel": "web"}});
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("X-Correlation-Id", "c-42"), ("traceparent", trace)];
    let (code, answer) = http_json(port, "POST", "/v1/streams/orders/events", &headers, body.to_string().as_bytes());
    assert_eq!(code, 201, "{answer}");
    // A web page whose domain was rebound to 127.0.0.1 cannot post.
    let rebound = [("Authorization", auth.as_str()), ("Host", "rebound.example")];
    let (code, refused) = http_json(port, "POST", "/v1/streams/orders/events", &rebound, body.to_string().as_bytes());
    assert_eq!(code, 421, "{refused}");
    let added = entries(&mut conn, "orders").await;
    assert_eq!(added.len(), 1);
    assert_eq!(answer["id"], added[0].id.as_str());
    assert_eq!(field(&added[0], "type"), "order.created");
    assert_eq!(serde_json::from_str::<Value>(&field(&added[0], "data")).unwrap(), order);
    assert_eq!(field(&added[0], "correlation_id"), "c-42");
    assert_eq!(field(&added[0], "traceparent"), trace);
    assert_eq!(field(&added[0], "channel"), "web");

    // A request answered by the handler: 200 with the reply.
    let ask = json!({"type": "user.lookup", "data": {"action": "reply", "type": "user", "reply": {"name": "ada"}}});
    let (code, answer) = post(port, "/v1/streams/users.requests/requests?timeout_ms=10000", ask);
    assert_eq!((code, &answer["type"], &answer["data"]), (200, &json!("user"), &json!({"name": "ada"})), "{answer}");
    // A request that fails: 502 with the reason, at once.
    let fail = json!({"type": "user.lookup", "data": {"action": "reject", "reason": "no such user"}});
    let (code, answer) = post(port, "/v1/streams/users.requests/requests?timeout_ms=10000", fail);
    assert_eq!((code, &answer["error"]), (502, &json!("no such user")), "{answer}");
    // A request nobody answers: 504.
    let (code, answer) = post(port, "/v1/streams/users.nobody/requests?timeout_ms=200", json!({"type": "t"}));
    assert_eq!(code, 504, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("200 ms"), "{answer}");

    // Refusals, each naming what is wrong; nothing more is written.
    let refused = [
        (
            http_json(port, "POST", "/v1/streams/orders/events", &[("Authorization", &auth)], b"{not json"),
            400,
            "not JSON",
        ),
        (post(port, "/v1/streams/orders/events", json!({"data": {}})), 400, "\"type\""),
        (http_json(port, "POST", "/v1/streams/orders/events", &[], b"{}"), 401, "Bearer"),
        (
            http_json(port, "POST", "/v1/streams/orders/events", &[("Authorization", "Bearer nope")], b"{}"),
            401,
            "wrong",
        ),
        (post(port, "/v1/streams/payments/events", json!({"type": "t"})), 403, "ingress_streams"),
        // Matched by users.*, but a dead-letter stream, or Sluice's own.
        (post(port, "/v1/streams/users.created:dlq/events", json!({"type": "t"})), 403, "dead-letter"),
        (post(port, "/v1/streams/sluice:reply:x/events", json!({"type": "t"})), 403, "Sluice's own"),
        (
            post(port, "/v1/streams/orders/events", json!({"type": "t", "fields": {"sluice.error": "x"}})),
            400,
            "Sluice sets it",
        ),
        (post(port, "/v1/other", json!({})), 404, "not found"),
        (http_json(port, "GET", "/v1/streams/orders/events", &[("Authorization", &auth)], b""), 405, "POST"),
        (post(port, "/v1/streams/orders/events", json!({"type": "t", "data": "x".repeat(2 << 20)})), 413, "bytes"),
        (
            post(port, "/v1/streams/orders/events", json!({"type": "order.created", "data": {"order_id": ""}})),
            422,
            "invalid order.created event",
        ),
    ];
    for ((code, answer), want, says) in refused {
        assert_eq!(code, want, "{answer}");
        let text = answer["error"].as_str().unwrap_or_default();
        assert!(text.contains(says), "{want}: {answer}");
    }
    assert_eq!(entries(&mut conn, "orders").await.len(), 1);
    assert!(entries(&mut conn, "payments").await.is_empty());

    let (_, metrics) = http_get(admin, "/metrics");
    for line in [r#"route="events",status="201""#, r#"route="requests",status="504""#, r#"route="events",status="413""#]
    {
        assert!(metrics.contains(&format!("sluice_ingress_requests_total{{{line}}} 1")), "{line} in\n{metrics}");
    }
    host.stop().await;
}

#[test]
fn an_ingress_beyond_loopback_needs_a_token_and_its_keys_need_an_address() {
    let check = |host: &str| {
        let text = format!("[host]\nplugins = \"{}\"\n{host}\n", plugins_dir().display());
        match sluice::config::Config::parse(std::path::Path::new("bad.toml"), &text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    };
    let err = check("ingress = \"0.0.0.0:8080\"\ningress_streams = [\"orders\"]");
    assert!(err.starts_with("bad.toml:3:11: host.ingress:") && err.contains("ingress_token"), "{err}");
    let err = check("ingress_token = \"t\"");
    assert!(err.contains("host.ingress_token") && err.contains("needs [host] ingress"), "{err}");
    let err = check("ingress = \"127.0.0.1:8080\"");
    assert!(err.contains("ingress_streams"), "{err}");
    // Braces in a glob are a hash tag, as in the stream names, not a choice.
    let text = format!(
        "[host]\nplugins = \"{}\"\ningress = \"127.0.0.1:8080\"\ningress_streams = [\"{{shop}}:*\"]\n",
        plugins_dir().display()
    );
    let config = sluice::config::Config::parse(std::path::Path::new("ok.toml"), &text).unwrap();
    let allowed = &config.ingress.unwrap().allowed;
    assert!(allowed.is_match("{shop}:orders") && !allowed.is_match("shop:orders"));
}
