//! The flows users bring from the seed documents, run end to end with the
//! example plugins (docs/examples.md).

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

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
    http_json(port, "POST", path, &[], body.to_string().as_bytes())
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
    // Serving before the first request: its wait is the request's own.
    let (running, _reloads) = fx.start_watching().await;
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

/// `sluice kv get` with `fx`'s config: (exit code, stdout as JSON or null).
fn kv_get(fx: &Fixture, handler: &str, key: &str) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["kv", "get", handler, key, "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap(), serde_json::from_str(said.trim()).unwrap_or(Value::Null))
}

/// The projection in each language: the Rust plugin, and its Python and
/// JavaScript versions (as `examples/polyglot.toml` runs them).
const PROFILES: [&str; 3] = ["profiles", "profiles-py", "profiles-js"];

/// The event-sourced aggregate (QakeAPI's pattern): a projection folds each
/// user's events into one record, one user at a time in stream order;
/// `sluice kv get` shows it, and `sluice replay` rebuilds it from the
/// stream after it is lost. The Rust, Python and JavaScript versions run
/// side by side, each in its own group, and fold the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_folds_each_users_events_and_replay_rebuilds_it() {
    let redis = RedisServer::start();
    let handlers: String = PROFILES
        .iter()
        .map(|name| {
            let reuse = if *name == "profiles" { "" } else { "isolation = \"reuse\"\n" };
            format!(
                "[handlers.{name}]\nplugin = \"{name}.wasm\"\nstreams = [\"users\"]\n\
                 events = [\"user.*\"]\norder_by = \"data.user_id\"\nconcurrency = 16\n{reuse}"
            )
        })
        .collect();
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let events = [
        ("user.created", json!({"user_id": "u-1", "name": "Ada", "email": "ada@example.com"})),
        ("user.created", json!({"user_id": "u-2", "name": "Bob", "email": "bob@example.com"})),
        ("user.updated", json!({"user_id": "u-1", "email": "ada@lovelace.dev"})),
        ("user.updated", json!({"user_id": "u-2", "name": "Robert"})),
        ("user.updated", json!({"user_id": "u-1", "name": "Ada L."})),
        ("user.deleted", json!({"user_id": "u-2"})),
        ("user.created", json!({"user_id": "u-3", "name": "Cy"})),
        ("user.updated", json!({"user_id": "u-9", "name": "nobody"})),
    ];
    for (t, data) in &events {
        send(&mut conn, "users", t, data.clone()).await;
    }
    let ada = json!({"user_id": "u-1", "name": "Ada L.", "email": "ada@lovelace.dev", "version": 3});
    let n = events.len();
    for name in PROFILES {
        // Compiling a Python or JavaScript component takes seconds (cold cache).
        eventually(Duration::from_secs(120), &format!("{name} finished every event"), || {
            let mut c = conn.clone();
            async move { (finished(&mut c, "users", name).await == n).then_some(()) }
        })
        .await;
        assert_eq!(kv_get(&fx, name, "user:u-1"), (0, ada.clone()), "{name}");
        assert_eq!(kv_get(&fx, name, "user:u-2").0, 1, "{name}: deleted");
        assert_eq!(kv_get(&fx, name, "user:u-3").1["version"], 1, "{name}");
        assert_eq!(kv_get(&fx, name, "user:u-9").0, 1, "{name}: an update of an unknown user makes none");
    }
    // Each rejected the update of the unknown user, with the same reason.
    let dead = until_entries(&conn, "users:dlq", PROFILES.len()).await;
    for e in &dead {
        let who = field(e, "sluice.handler");
        assert_eq!(field(e, "sluice.error"), "user u-9 is unknown (no user.created before this update)", "{who}");
    }
    // The projections are lost; a replay of the stream rebuilds each.
    let keys: Vec<String> = redis::cmd("KEYS").arg("sluice:kv:profiles*").query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 2 * PROFILES.len(), "{keys:?}");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    for name in PROFILES {
        assert_eq!(kv_get(&fx, name, "user:u-1").0, 1);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["replay", "--stream", "users", "--handler", name, "--from", "-1h", "--config"])
            .arg(&fx.config_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for name in PROFILES {
        eventually(SOON, &format!("{name}'s projection rebuilt"), || async {
            (kv_get(&fx, name, "user:u-1") == (0, ada.clone())).then_some(())
        })
        .await;
        assert_eq!(kv_get(&fx, name, "user:u-2").0, 1);
    }
    host.stop().await;
}

/// The saga's three handlers, as config.toml runs them.
const SAGA: &str = "[handlers.saga]\nplugin = \"saga.wasm\"\nstreams = [\"checkout\", \"saga.events\"]\n\
    events = [\"checkout.started\", \"inventory.reserved\", \"payment.charged\", \"payment.failed\", \"inventory.released\"]\n\
    publish = [\"inventory.commands\", \"payment.commands\", \"orders.done\"]\norder_by = \"data.order_id\"\n\
    [handlers.saga-inventory]\nplugin = \"saga.wasm\"\nstreams = [\"inventory.commands\"]\nevents = [\"inventory.*\"]\npublish = [\"saga.events\"]\norder_by = \"data.sku\"\n\
    [handlers.saga-payment]\nplugin = \"saga.wasm\"\nstreams = [\"payment.commands\"]\nevents = [\"payment.*\"]\npublish = [\"saga.events\"]\n";

/// The saga with compensation (QakeAPI's and Amebo's pattern): reserve
/// inventory, charge, confirm; when the charge fails, the reservation is
/// released and the order cancelled. The saga state lives in kv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_confirms_a_paid_order_and_compensates_a_declined_one() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", SAGA);
    let (host, _reloads) = fx.start_watching().await;
    let mut conn = redis.conn().await;
    send(
        &mut conn,
        "checkout",
        "checkout.started",
        json!({"order_id": "o-ok", "sku": "mug", "qty": 3, "card": "visa"}),
    )
    .await;
    send(
        &mut conn,
        "checkout",
        "checkout.started",
        json!({"order_id": "o-bad", "sku": "mug", "qty": 3, "card": "declined"}),
    )
    .await;
    // Ten hops each: a deadline with room for a loaded machine (the other
    // tests compile Python and JavaScript components meanwhile).
    let done = eventually(Duration::from_secs(60), "both sagas done", || {
        let mut conn = conn.clone();
        async move {
            let done = entries(&mut conn, "orders.done").await;
            (done.len() >= 2).then_some(done)
        }
    })
    .await;
    let outcome = |id: &str| {
        done.iter()
            .find(|e| serde_json::from_str::<Value>(&field(e, "data")).unwrap()["order_id"] == id)
            .map(|e| field(e, "type"))
    };
    assert_eq!(outcome("o-ok").as_deref(), Some("order.confirmed"));
    assert_eq!(outcome("o-bad").as_deref(), Some("order.cancelled"));
    assert_eq!(kv_get(&fx, "saga", "saga:o-ok").1["state"], "confirmed");
    assert_eq!(kv_get(&fx, "saga", "saga:o-bad").1["state"], "cancelled");
    // The declined order's reservation was released: only o-ok's 3 are gone.
    assert_eq!(kv_get(&fx, "saga-inventory", "stock:mug"), (0, json!(7)));
    host.stop().await;
}

/// The shipped config's `[handlers.NAME]` table and its subtables, as text.
fn shipped_handler(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("config.toml")).unwrap();
    let start =
        text.find(&format!("[handlers.{name}]\n")).unwrap_or_else(|| panic!("config.toml has no handler {name}"));
    let rest = &text[start..];
    let end = rest[1..]
        .match_indices("\n[")
        .map(|(i, _)| i + 1)
        .find(|&i| !rest[i + 1..].starts_with(&format!("[handlers.{name}.")))
        .map_or(rest.len(), |i| i + 1);
    rest[..end].to_owned()
}

/// The demo's webhook receiver (`examples/webhook-receiver.rs`), run on a
/// free port with `secret`; stopped when dropped.
struct Receiver {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Receiver {
    fn start(secret: &str) -> Receiver {
        let exe =
            std::path::Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap().join("examples/webhook-receiver");
        assert!(
            exe.exists(),
            "{} is missing: `cargo test` builds it, `cargo test --test it` does not (cargo build --example webhook-receiver)",
            exe.display()
        );
        let port = free_port();
        let mut child = std::process::Command::new(exe)
            .arg(format!("127.0.0.1:{port}"))
            .env("WELCOME_WEBHOOK_SECRET", secret)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stdout).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + SOON;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the receiver never listened on {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Receiver { child, port, lines }
    }

    /// The next line it prints.
    fn next_line(&self) -> String {
        self.lines.recv_timeout(SOON).expect("the receiver printed a line in time")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The welcome e-mail (Amebo's webhook subscription): a `user.created`
/// that passes its JSON Schema reaches the receiver signed with the secret
/// from the config, and the receiver's check accepts it; an invalid one is
/// refused on publish, or dead-lettered before the plugin runs; a receiver
/// holding another secret refuses the delivery, which is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_email_webhook_is_signed_and_checked_by_its_receiver() {
    let redis = RedisServer::start();
    let receiver = Receiver::start("s3cret-from-env");
    let schema = repo().join("schemas/user.created.json");
    let section = shipped_handler("welcome-email").replace("127.0.0.1:8025", &format!("127.0.0.1:{}", receiver.port));
    assert!(section.contains("WELCOME_WEBHOOK_SECRET"), "{section}");
    let handlers = format!("[schemas]\n\"user.created\" = \"{}\"\n\n{section}", schema.display());
    let fx = Fixture::new(&redis, "", &handlers);
    let publish = |data: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["publish", "users", "--type", "user.created", "--data", data, "--config"])
            .arg(&fx.config_path)
            .output()
            .unwrap()
    };
    // The host reads the secret from its environment, as in production.
    let mut hosts = Hosts(vec![fx.spawn_binary_with_env(&[("WELCOME_WEBHOOK_SECRET", "s3cret-from-env")])]);
    let user = r#"{"user_id":"u-1","email":"ada@example.com","name":"Ada"}"#;
    let out = publish(user);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(receiver.next_line(), format!("accepted {id} user.created {user}"));
    // No e-mail address: refused before it reaches the stream.
    let out = publish(r#"{"user_id":"u-2","name":"Bob"}"#);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("\"email\" is a required property"), "{said}");
    // One written around the check is dead-lettered, and never sent.
    let mut conn = redis.conn().await;
    let bad = send(&mut conn, "users", "user.created", json!({"user_id": "u-3", "email": "not an address"})).await;
    let dead = until_entries(&conn, "users:dlq", 1).await;
    assert_eq!(field(&dead[0], "sluice.origin_id"), bad);
    assert!(field(&dead[0], "sluice.error").contains("is not a \"email\""), "{:?}", field(&dead[0], "sluice.error"));
    hosts.0[0].kill().unwrap();
    hosts.0[0].wait().unwrap();
    // A host with another secret: the receiver refuses, the event is dead-lettered.
    hosts.0.push(fx.spawn_binary_with_env(&[("WELCOME_WEBHOOK_SECRET", "stale")]));
    let id = send(&mut conn, "users", "user.created", json!({"user_id": "u-4", "email": "cy@example.com"})).await;
    assert_eq!(receiver.next_line(), format!("refused {id}: bad signature"));
    let dead = until_entries(&conn, "users:dlq", 2).await;
    assert_eq!(field(&dead[1], "sluice.origin_id"), id);
    assert!(
        field(&dead[1], "sluice.error").ends_with("/welcome answered 401"),
        "{:?}",
        field(&dead[1], "sluice.error")
    );
    drop(hosts);
    assert!(receiver.lines.try_recv().is_err(), "nothing else reached the receiver");
}
