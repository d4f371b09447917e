//! A webhook subscriber, as an e-mail service would run one: receives the
//! events the `webhook` plugin POSTs, checks each one's signature, and
//! "sends" the welcome e-mail by printing it. The other side of the welcome
//! e-mail flow in `config.toml` (docs/examples.md).
//!
//! ```sh
//! cargo run --example webhook-receiver -- 127.0.0.1:8025
//! ```
//!
//! The secret is `WELCOME_WEBHOOK_SECRET`, or `demo-secret` as in
//! `config.toml`. A request is accepted (204) only when its
//! `x-sluice-signature` header is `sha256=` and the hex HMAC-SHA256 of the
//! body keyed with the secret, compared in constant time; otherwise it is
//! refused with 401, which the plugin treats as permanent (a dead letter).
//! Prints one line per request: `accepted <event id> <event type> <body>`
//! or `refused <event id>: <reason>`.

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8025".to_owned());
    let secret: Arc<[u8]> = std::env::var("WELCOME_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "demo-secret".to_owned())
        .into_bytes()
        .into();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("webhook-receiver: listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let secret = secret.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| receive(req, secret.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Checks one request and answers it.
async fn receive(req: Request<Incoming>, secret: Arc<[u8]>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (id, event_type, signature) =
        (header("x-sluice-event-id"), header("x-sluice-event-type"), header("x-sluice-signature"));
    let body = req.into_body().collect().await?.to_bytes();
    let status = match verify(&secret, &body, &signature) {
        Ok(()) => {
            println!("accepted {id} {event_type} {}", String::from_utf8_lossy(&body));
            StatusCode::NO_CONTENT
        }
        Err(reason) => {
            println!("refused {id}: {reason}");
            StatusCode::UNAUTHORIZED
        }
    };
    Ok(Response::builder().status(status).body(Full::default()).expect("a valid response"))
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` keyed with `secret`.
fn verify(secret: &[u8], body: &[u8], signature: &str) -> Result<(), &'static str> {
    let hex = signature.strip_prefix("sha256=").ok_or("no sha256= signature")?;
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    let bytes = bytes.ok_or("the signature is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&bytes).map_err(|_| "bad signature")
}
