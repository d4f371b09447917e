//! `webhook`: delivers each event to an HTTP endpoint, signed, the way a
//! webhook subscription with a secret works (seed 003).
//!
//! Settings (`[handlers.NAME.config]`): `url` (`http://` or `https://`) and
//! `secret`. The handler must be granted the URL's host: `http = ["host"]`.
//!
//! The request is `POST url` with the event's `data` as the body and headers
//! `content-type: application/json`, `content-length`, `x-sluice-event-type`, `x-sluice-event-id`,
//! `x-sluice-stream` and `x-sluice-signature: sha256=<hex HMAC-SHA256 of the
//! body with the secret>`, so the receiver can check it came from us.
//!
//! Outcome: a 2xx answer is `ok`; 408, 429 and 5xx ask for a retry (the
//! receiver may recover); other statuses reject; a host not granted in the
//! config rejects; network errors retry.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::config;
use sluice::plugin::host::{Level, log};
use sluice::plugin::types::{Event, Failure, RetryAfter};

/// The handler; see the crate documentation.
struct Webhook;

impl Guest for Webhook {
    fn handle(event: Event) -> Result<(), Failure> {
        let url = config::get("url").ok_or_else(|| reject("config value url is not set"))?;
        let secret = config::get("secret").ok_or_else(|| reject("config value secret is not set"))?;
        let target = Target::parse(&url).ok_or_else(|| reject(&format!("config value url is not an http(s) URL: {url}")))?;
        let signature = sign(secret.as_bytes(), &event.data);
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("content-length", event.data.len().to_string()),
            ("x-sluice-event-type", event.event_type.clone()),
            ("x-sluice-event-id", event.id.clone()),
            ("x-sluice-stream", event.stream.clone()),
            ("x-sluice-signature", format!("sha256={signature}")),
        ];
        let status = post(&target, &headers, &event.data)?;
        log(Level::Info, &format!("delivered {} to {url}: {status}", event.id));
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(retry(format!("{url} answered {status}"))),
            _ => Err(reject(&format!("{url} answered {status}"))),
        }
    }
}

/// Hex HMAC-SHA256 of `body` keyed with `secret`.
fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where to send: the parts of an `http(s)://authority/path` URL.
struct Target {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let (scheme, rest) = match url.split_once("://")? {
            ("http", rest) => (Scheme::Http, rest),
            ("https", rest) => (Scheme::Https, rest),
            _ => return None,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        (!authority.is_empty()).then(|| Target { scheme, authority: authority.to_owned(), path: path.to_owned() })
    }
}

/// Sends the request and returns the response status.
fn post(target: &Target, headers: &[(&str, String)], body: &[u8]) -> Result<u16, Failure> {
    let list: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| (k.to_string(), v.clone().into_bytes())).collect();
    let fields = Fields::from_list(&list).map_err(|e| reject(&format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let bad = |_| reject("invalid request");
    request.set_method(&Method::Post).map_err(bad)?;
    request.set_scheme(Some(&target.scheme)).map_err(bad)?;
    request.set_authority(Some(&target.authority)).map_err(bad)?;
    request.set_path_with_query(Some(&target.path)).map_err(bad)?;
    let outgoing = request.body().map_err(bad)?;
    let response = outgoing_handler::handle(request, None).map_err(http_failure)?;
    // A refused request closes the body stream; the response says why, so
    // it is read before a write error is reported.
    let written = write_body(outgoing, body);
    response.subscribe().block();
    let answer = response.get().ok_or_else(|| retry("no response".into()))?;
    let answer = answer.map_err(|()| retry("response already taken".into()))?.map_err(http_failure)?;
    written?;
    Ok(answer.status())
}

fn write_body(outgoing: OutgoingBody, body: &[u8]) -> Result<(), Failure> {
    {
        let stream = outgoing.write().map_err(|_| retry("cannot write the request body".into()))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| retry(format!("writing the body failed: {e:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(http_failure)
}

/// A refused host is permanent; anything else on the network may pass.
fn http_failure(e: ErrorCode) -> Failure {
    match e {
        ErrorCode::HttpRequestDenied => reject("the webhook host is not granted to this handler (http = [...] in the config)"),
        other => retry(format!("HTTP request failed: {other:?}")),
    }
}

fn reject(reason: &str) -> Failure {
    Failure::Reject(reason.to_owned())
}

fn retry(reason: String) -> Failure {
    Failure::Retry(RetryAfter { reason, delay_ms: None })
}

export!(Webhook);
