//! Outbound HTTP: the webhook example delivers signed events to a local
//! server this test starts; a handler not granted the host is refused before
//! anything is sent; a failing receiver is retried, then dead-lettered; the
//! HTTP library's own warnings carry the event's span.

use crate::support::*;
use hmac::{Hmac, Mac};
use serde_json::json;
use std::collections::HashMap;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the server received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server on a free port: answers 500 on `/fail`, 200
/// otherwise, and reports every request.
async fn start_server() -> (u16, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let Some(req) = read_request(BufReader::new(read)).await else { return };
                let status = if req.path == "/fail" { "500 Internal Server Error" } else { "200 OK" };
                let _ = tx.send(req);
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = write.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, rx)
}

async fn read_request(mut r: BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Received> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let Some((k, v)) = line.trim_end().split_once(':') else { break };
        headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Received { path, headers, body })
}

fn hook(name: &str, port: u16, path: &str, granted: bool) -> String {
    let http = if granted { format!("http = [\"127.0.0.1:{port}\"]\n") } else { String::new() };
    format!(
        "[handlers.{name}]\nplugin = \"webhook.wasm\"\nstreams = [\"{name}\"]\nmax_attempts = 2\nbackoff_ms = 10\n{http}\
         [handlers.{name}.config]\nurl = \"http://127.0.0.1:{port}{path}\"\nsecret = \"s3cret\"\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_allow_listed_and_retried() {
    let (port, mut received) = start_server().await;
    let redis = RedisServer::start();
    let handlers = format!(
        "{}{}{}",
        hook("hook", port, "/hook", true),
        hook("sneaky", port, "/hook", false),
        hook("flaky", port, "/fail", true)
    );
    let fx = Fixture::new(&redis, "", &handlers);
    let host = fx.start();
    let mut conn = redis.conn().await;
    let data = json!({"order_id": "o-1", "total": 42.5}).to_string();
    let id = xadd(&mut conn, "hook", &[("type", "order.created"), ("data", &data)]).await;
    send(&mut conn, "sneaky", "order.created", json!({})).await;
    send(&mut conn, "flaky", "order.created", json!({})).await;

    until_finished(&conn, "hook", "hook", 1).await;
    let dl_sneaky = until_entries(&conn, "sneaky:dlq", 1).await;
    let dl_flaky = until_entries(&conn, "flaky:dlq", 1).await;
    host.stop().await;

    let mut all = vec![];
    while let Ok(r) = received.try_recv() {
        all.push(r);
    }
    let (hooks, fails): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.path == "/hook");
    assert_eq!(hooks.len(), 1, "the granted webhook arrived once; the refused one never left");
    assert_eq!(fails.len(), 2, "both attempts of the flaky one reached the server");
    let req = &hooks[0];
    assert_eq!(req.body, data.as_bytes());
    assert_eq!(req.headers["x-sluice-event-id"], id);
    assert_eq!(req.headers["x-sluice-event-type"], "order.created");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(data.as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(req.headers["x-sluice-signature"], format!("sha256={expected}"));
    assert!(entries(&mut conn, "hook:dlq").await.is_empty());

    let reason = field(&dl_sneaky[0], "sluice.error");
    assert!(reason.contains("not granted"), "{reason}");
    assert_eq!(field(&dl_sneaky[0], "sluice.attempts"), "1", "a refused host is permanent");
    let reason = field(&dl_flaky[0], "sluice.error");
    assert!(reason.ends_with("answered 500 (gave up after 2 attempts)"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_librarys_own_warnings_carry_the_event_span() {
    // wasmtime-wasi-http logs a refused connection itself, with plain
    // `tracing::warn!`: the host opens the event's span when a request
    // leaves (wasm/http.rs), so that line still says which event it is about.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", &hook("gone", port, "/hook", true));
    let mut child = fx.spawn_binary_logging_json("warn");
    let mut conn = redis.conn().await;
    let id = xadd(&mut conn, "gone", &[("type", "order.created"), ("data", "{}")]).await;
    until_entries(&conn, "gone:dlq", 1).await;
    assert!(terminate(&mut child).await.success());
    let out = child.wait_with_output().unwrap();
    let lines = json_log_lines(&out.stderr);
    let library: Vec<_> =
        lines.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("wasmtime_wasi_http"))).collect();
    assert!(!library.is_empty(), "no line of wasmtime-wasi-http in {lines:#?}");
    for line in library {
        let span = &line["span"];
        assert_eq!(
            (&span["name"], &span["handler"], &span["id"]),
            (&json!("event"), &json!("gone"), &json!(id)),
            "{line:#}"
        );
    }
}
