//! The dashboard on the admin listener, in a real headless Chromium: it
//! lists the handlers, its numbers move when events flow, a dead letter
//! shows with its reason (as text, even when the reason is markup), and a
//! redrive needs the admin token. Its JSON API over plain HTTP: read-only
//! without a token, reloads recorded, the same rows as `sluice status --json`.

use crate::support::*;
use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "t0ken-for-tests";

/// The host keys of a dashboard on `port`, with `token` if any.
fn host_keys(port: u16, token: Option<&str>) -> String {
    let token = token.map(|t| format!("admin_token = \"{t}\"\n")).unwrap_or_default();
    format!("admin = \"127.0.0.1:{port}\"\n{token}")
}

const HANDLERS: &str = "[handlers.shop]\nplugin = \"behave.wasm\"\nstreams = [\"orders\"]\nmax_attempts = 1\n\
    [handlers.mail]\nplugin = \"behave.wasm\"\nstreams = [\"users\"]\n";

/// Waits until the admin listener on `port` answers.
async fn until_listening(port: u16) {
    eventually(SOON, "the admin listener answers", || async move {
        tokio::task::spawn_blocking(move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
            .await
            .unwrap()
            .then_some(())
    })
    .await;
}

/// The text of the first element at `css`, if there is one.
async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Waits until the element at `css` has a text that `ok` accepts; returns it.
async fn until_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(SOON, what, || async { text(c, css).await.filter(|t| ok(t)) }).await
}

/// Asks for a redrive of `handler` on the page, typing `token` when asked.
async fn redrive(c: &Client, handler: &str, token: &str) {
    let button = format!("tr[data-handler=\"{handler}\"] button[data-action=\"redrive\"]");
    // Found and clicked again if the page's refresh replaced the row in
    // between (a stale element).
    eventually(SOON, "the redrive button takes a click", || async {
        c.find(Locator::Css(&button)).await.ok()?.click().await.ok()
    })
    .await;
    let input = eventually(SOON, "the page asks for the token", || async {
        let input = c.find(Locator::Css("#token-input")).await.ok()?;
        input.is_displayed().await.ok()?.then_some(input)
    })
    .await;
    input.send_keys(token).await.unwrap();
    c.find(Locator::Css("#token-ok")).await.unwrap().click().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_handlers_numbers_and_dead_letters_and_redrives_with_the_token() {
    let redis = RedisServer::start();
    let port = free_port();
    // 20 handlers, as the page is meant to load quickly with.
    let others: String = (1..=18)
        .map(|i| format!("[handlers.h{i:02}]\nplugin = \"behave.wasm\"\nstreams = [\"s{i:02}\"]\nconcurrency = 2\n"))
        .collect();
    let fx = Fixture::new(&redis, &host_keys(port, Some(TOKEN)), &format!("{HANDLERS}{others}"));
    let _hosts = Hosts(vec![fx.spawn_binary()]);
    until_listening(port).await;
    let browser = Browser::start(1400, 900).await;
    let c = browser.client();
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();

    // The handlers are listed, and their numbers move when events flow.
    let shop = "tr[data-handler=\"shop\"]";
    until_text(c, &format!("{shop} td[data-field=\"state\"]"), "shop consuming", |t| t == "consuming").await;
    assert!(text(c, "tr[data-handler=\"mail\"] td[data-field=\"name\"]").await.unwrap().starts_with("mail"));
    assert_eq!(text(c, &format!("{shop} td[data-field=\"ok_per_s\"]")).await.as_deref(), Some("0.00"));
    let mut conn = redis.conn().await;
    for _ in 0..20 {
        send(&mut conn, "orders", "t", json!({"action": "ok"})).await;
    }
    let rate =
        until_text(c, &format!("{shop} td[data-field=\"ok_per_s\"]"), "shop's ok/s moves", |t| t != "0.00").await;
    assert!(rate.parse::<f64>().unwrap() > 0.0, "{rate}");
    until_text(c, &format!("{shop} td[data-field=\"p50\"]"), "a median duration", |t| t.ends_with(" ms")).await;

    // A dead letter appears with its reason, shown as text: never run.
    let reason = r#"<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> no such order"#;
    let bad = send(&mut conn, "orders", "t", json!({"action": "reject", "reason": reason})).await;
    let shown = until_text(c, "details.dead-letter .reason", "the dead letter on the page", |t| !t.is_empty()).await;
    assert_eq!(shown, reason);
    let injected = c
        .execute(
            "return [window.pwned === undefined, document.querySelectorAll('#dead-letters script, #dead-letters img').length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!([true, 0]), "nothing from the event ran or became markup");
    until_text(c, &format!("{shop} td[data-field=\"dead_letters\"]"), "shop's dead letters", |t| t == "1").await;
    // Expanded, it shows the event's fields and data.
    c.find(Locator::Css("details.dead-letter summary")).await.unwrap().click().await.unwrap();
    let details = until_text(c, "details.dead-letter table", "the dead letter's fields", |t| t.contains(&bad)).await;
    assert!(details.contains("no such order") && details.contains("attempts"), "{details}");

    let first = entries(&mut conn, "orders:dlq").await[0].id.clone();
    // A wrong token is refused, and the dead letter stays.
    redrive(c, "shop", "not-the-token").await;
    until_text(c, "#notice", "the refusal", |t| t.starts_with("Refused")).await;
    assert_eq!(entries(&mut conn, "orders:dlq").await.len(), 1);
    // The right one (asked again) redrives it into shop's inbox.
    redrive(c, "shop", TOKEN).await;
    until_text(c, "#notice", "the redrive", |t| t == "Redrove 1 dead letter(s) of shop.").await;
    // Redriven, shop rejects it again: a new dead letter, with the first
    // failure in its history.
    let again = eventually(SOON, "the redriven event dead-lettered again", || {
        let mut conn = conn.clone();
        let first = first.clone();
        async move {
            let now = entries(&mut conn, "orders:dlq").await;
            now.iter().all(|e| e.id != first).then(|| now.into_iter().next()).flatten()
        }
    })
    .await;
    assert_eq!(field(&again, "sluice.origin_id"), bad);
    assert!(field(&again, "sluice.history").contains("no such order"), "{again:?}");

    // Screenshots: the page as it is (docs/dashboard.png is one), and on a phone.
    let png = c.screenshot().await.unwrap();
    std::fs::write(repo().join("target/dashboard.png"), png).unwrap();
    let loaded: Value = c.execute("return Number(document.body.dataset.firstDrawnMs)", vec![]).await.unwrap();
    eprintln!("dashboard: 20 handlers drawn {loaded} ms after navigation");
    let listed: Value =
        c.execute("return document.querySelectorAll('#handlers tbody tr').length", vec![]).await.unwrap();
    assert_eq!(listed, json!(20));
    c.set_window_size(390, 844).await.unwrap();
    let phone = c
        .execute(
            "return [getComputedStyle(document.querySelector('#handlers thead')).display, document.documentElement.scrollWidth <= window.innerWidth + 1]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(phone, json!(["none", true]), "on a phone each handler is a card, and nothing overflows the page");
    browser.close().await;
}

/// `(status, JSON body)` of `method path` on `port`, with `headers`.
async fn call(
    port: u16,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_json(port, method, path, &headers, b"")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_api_is_read_only_without_the_token_and_records_reloads() {
    let redis = RedisServer::start();
    let (open, locked) = (free_port(), free_port());
    let read_only = Fixture::new(&redis, &host_keys(open, None), HANDLERS);
    let with_token = Fixture::new(&redis, &host_keys(locked, Some(TOKEN)), HANDLERS);
    let _hosts = Hosts(vec![read_only.spawn_binary(), with_token.spawn_binary()]);
    until_listening(open).await;
    until_listening(locked).await;

    // No admin_token: the page says so, and every action is refused.
    let (code, view) = call(open, "GET", "/api/handlers", vec![]).await;
    assert_eq!((code, &view["actions"]), (200, &json!(false)), "{view}");
    let (code, _) =
        call(open, "POST", "/api/handlers/shop/redrive", vec![("authorization", format!("Bearer {TOKEN}"))]).await;
    assert_eq!(code, 403);
    // With one: refused without it or with another, and a GET is not an action.
    assert_eq!(call(locked, "POST", "/api/handlers/shop/purge", vec![]).await.0, 401);
    let wrong = vec![("authorization", "Bearer nope".to_owned())];
    assert_eq!(call(locked, "POST", "/api/handlers/shop/purge", wrong).await.0, 401);
    assert_eq!(call(locked, "GET", "/api/handlers/shop/purge", vec![]).await.0, 405);
    let right = || vec![("authorization", format!("Bearer {TOKEN}"))];
    // A page whose domain was rebound to 127.0.0.1 reads nothing.
    let rebound = vec![("host", "rebound.example".to_owned())];
    assert_eq!(call(locked, "GET", "/api/dead-letters", rebound).await.0, 421);
    let rebound = vec![("host", format!("localhost:{locked}"))];
    assert_eq!(call(locked, "GET", "/api/reloads", rebound).await.0, 200);
    assert_eq!(call(locked, "POST", "/api/handlers/nobody/purge", right()).await.0, 404);

    // A dead letter, then a purge with the token.
    let mut conn = redis.conn().await;
    send(&mut conn, "orders", "t", json!({"action": "reject", "reason": "no"})).await;
    until_entries(&conn, "orders:dlq", 1).await;
    let (code, dead) = call(locked, "GET", "/api/dead-letters", vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(dead["dead_letters"][0]["reason"], "no", "{dead}");
    let (code, purged) = call(locked, "POST", "/api/handlers/shop/purge", right()).await;
    assert_eq!((code, &purged["purged"]), (200, &json!(1)), "{purged}");
    assert!(entries(&mut conn, "orders:dlq").await.is_empty());

    // The same rows as `sluice status --json`, once the sample has caught up.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--json", "--config"])
        .arg(&with_token.config_path)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = eventually(SOON, "the dashboard's rows match sluice status", || {
        let status = status.clone();
        async move {
            let (_, view) = call(locked, "GET", "/api/handlers", vec![]).await;
            let mut rows: Vec<Value> =
                view["handlers"].as_array()?.iter().flat_map(|h| h["rows"].as_array().unwrap().clone()).collect();
            let mut expected: Vec<Value> = status.as_array()?.clone();
            for r in rows.iter_mut().chain(expected.iter_mut()) {
                r.as_object_mut().unwrap().remove("plugin_version");
                r.as_object_mut().unwrap().remove("oldest_pending_ms");
            }
            rows.sort_by_key(|r| r.to_string());
            expected.sort_by_key(|r| r.to_string());
            (rows == expected).then_some(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), 4, "orders and users, each with an inbox: {rows:?}");

    // Reloads: the start, then a rejected edit with its reason.
    let (_, reloads) = call(locked, "GET", "/api/reloads", vec![]).await;
    assert_eq!(reloads["reloads"][0]["result"], "started", "{reloads}");
    assert!(reloads["reloads"][0]["versions"]["shop"].as_str().is_some_and(|v| v.len() == 12), "{reloads}");
    with_token.rewrite_handlers("[handlers.shop]\nplugin = \"behave.wasm\"\nstreams = [\"orders\"]\ntimeout_ms = 0\n");
    let rejected = eventually(Duration::from_secs(20), "the rejected reload recorded", || async {
        let (_, reloads) = call(locked, "GET", "/api/reloads", vec![]).await;
        let newest = reloads["reloads"][0].clone();
        (newest["result"] == "rejected").then_some(newest)
    })
    .await;
    let error = rejected["error"].as_str().unwrap();
    assert!(error.contains("config.toml:") && error.contains("timeout_ms"), "{error}");
}
