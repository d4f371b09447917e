//! The HTTP ingress (`[host] ingress`), for producers that do not speak
//! Redis:
//!
//! - `POST /v1/streams/{stream}/events`, body `{"type": …, "data": …,
//!   "fields": {…}}`: adds the event; 201 `{"id": …}`.
//! - `POST /v1/streams/{stream}/requests?timeout_ms=5000`: sends it as a
//!   request ([`crate::request`]); 200 `{"type": …, "data": …}` with the
//!   reply, 502 `{"error": …}` when the request failed (it was
//!   dead-lettered), 504 when no reply came in time.
//!
//! Refusals, each with `{"error": …}`: 400 malformed JSON or a body of the
//! wrong shape, 401 without the Bearer token (when `ingress_token` is set),
//! 403 a stream outside `ingress_streams`, 404/405 another path or method,
//! 413 a body over [`MAX_INGRESS_BODY`], 422 data that fails its type's JSON
//! Schema, 503 when Redis fails or too many requests wait for replies. Sluice's
//! own streams (`sluice:*`) and dead-letter streams are never written,
//! whatever `ingress_streams` says. An `X-Correlation-Id` header becomes the `correlation_id` field,
//! a `traceparent` header the `traceparent` field, as `sluice publish
//! --field` would write them; `sluice_ingress_requests_total` counts every
//! answer by route and status.

use crate::config::{Config, IngressSettings};
use crate::event::field;
use crate::limits::{
    INGRESS_READ_TIMEOUT_MS, INGRESS_WAIT_MS, MAX_INGRESS_BODY, MAX_INGRESS_CONNECTIONS, MAX_INGRESS_WAIT_MS,
    MAX_INGRESS_WAITING,
};
use crate::metrics;
use crate::publish::{NewEvent, publish};
use crate::request::{Answer, request};
use crate::stream::Redis;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// What the ingress serves with: its settings, the config in force (for
/// schemas; swapped on reload) and Redis.
#[derive(Clone)]
pub struct IngressState {
    /// `[host] ingress*`, fixed at start.
    pub settings: Arc<IngressSettings>,
    /// The config in force: its `[schemas]` check what comes in.
    pub config: Arc<ArcSwap<Config>>,
    /// Where events go.
    pub redis: Redis,
    /// One permit per `/requests` call waiting for its reply.
    pub waiting: Arc<tokio::sync::Semaphore>,
}

impl IngressState {
    /// The ingress's state: `settings`, reading `config`, writing to `redis`.
    pub fn new(settings: IngressSettings, config: Arc<ArcSwap<Config>>, redis: Redis) -> IngressState {
        let waiting = Arc::new(tokio::sync::Semaphore::new(MAX_INGRESS_WAITING));
        IngressState { settings: Arc::new(settings), config, redis, waiting }
    }
}

/// Binds `addr` (failing now, not later, if it is taken).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on [host] ingress = \"{addr}\": {e}"))
}

/// Serves requests on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: IngressState, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, streams = ?state.settings.streams, "HTTP ingress: POST /v1/streams/{{stream}}/events and /requests");
    }
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_INGRESS_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    debug!("ingress accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // Past the cap, a new connection is closed at once.
        let Ok(slot) = open.clone().try_acquire_owned() else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(state.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut http = hyper::server::conn::http1::Builder::new();
            // Without a timer hyper keeps no header timeout: a client that
            // never finishes its headers would hold the connection forever.
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(INGRESS_READ_TIMEOUT_MS));
            if let Err(e) = http.serve_connection(io, service).await {
                debug!("ingress connection: {e}");
            }
            drop(slot);
        });
    }
}

/// An answer: its status and JSON body.
struct Answered(StatusCode, Value);

fn refuse(status: StatusCode, why: impl Into<String>) -> Answered {
    Answered(status, json!({ "error": why.into() }))
}

async fn respond(
    state: IngressState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let route = route_of(req.uri().path());
    let Answered(status, body) = match handle(&state, req).await {
        Ok(answered) | Err(answered) => answered,
    };
    metrics::ingress_answered(route.map_or("other", |(_, r)| r.label()), status.as_u16());
    let mut response = Response::builder().status(status).header("content-type", "application/json");
    if status == StatusCode::UNAUTHORIZED {
        response = response.header("www-authenticate", "Bearer");
    }
    Ok(response.body(Full::new(format!("{body}\n").into())).expect("a valid response"))
}

/// The two things one can post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Events,
    Requests,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Events => "events",
            Route::Requests => "requests",
        }
    }
}

/// The stream and route of `/v1/streams/{stream}/events|requests`.
fn route_of(path: &str) -> Option<(String, Route)> {
    let rest = path.strip_prefix("/v1/streams/")?;
    let (stream, kind) = rest.rsplit_once('/')?;
    let route = match kind {
        "events" => Route::Events,
        "requests" => Route::Requests,
        _ => return None,
    };
    let stream = crate::web::percent_decode(stream)?;
    (!stream.is_empty()).then_some((stream, route))
}

async fn handle(state: &IngressState, req: Request<Incoming>) -> Result<Answered, Answered> {
    let Some((stream, route)) = route_of(req.uri().path()) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not found: POST /v1/streams/{stream}/events or /v1/streams/{stream}/requests",
        ));
    };
    if req.method() != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "only POST"));
    }
    let host = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok());
    if !crate::web::host_allowed(state.settings.addr, host) {
        // A web page whose domain was rebound to this loopback address.
        let why = format!("this listener answers only loopback host names, not {:?}", host.unwrap_or(""));
        return Err(refuse(StatusCode::MISDIRECTED_REQUEST, why));
    }
    authorize(&state.settings, &req)?;
    if let Some(why) = reserved(&state.config.load(), &stream) {
        return Err(refuse(StatusCode::FORBIDDEN, why));
    }
    if !state.settings.allowed.is_match(&stream) {
        let allowed = state.settings.streams.join(", ");
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("stream {stream:?} is not one the ingress writes ([host] ingress_streams: {allowed})"),
        ));
    }
    let wait = wait_of(req.uri().query())?;
    let headers = req.headers().clone();
    let body = read_body(req.into_body()).await?;
    let event = event_of(&stream, &body, &headers)?;
    let config = state.config.load();
    // Written in the stream's format, so its other consumers read it.
    let format = config.streams.format(&stream).clone();
    if let Err(why) = event.check(&format, &config.schemas) {
        return Err(refuse(StatusCode::UNPROCESSABLE_ENTITY, why));
    }
    match route {
        Route::Events => {
            let id = publish(&mut state.redis.conn.clone(), &event, &format).await.map_err(unavailable)?;
            Ok(Answered(StatusCode::CREATED, json!({ "id": id })))
        }
        Route::Requests => {
            let Ok(_waiting) = state.waiting.clone().try_acquire_owned() else {
                let why = format!("{MAX_INGRESS_WAITING} requests are waiting for replies already; try again shortly");
                return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, why));
            };
            let (sent, answer) = request(&state.redis, &event, &format, wait).await.map_err(unavailable)?;
            Ok(match answer {
                Answer::Reply { event_type, data } => {
                    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    Answered(StatusCode::OK, json!({ "id": sent.id, "type": event_type, "data": data }))
                }
                Answer::Failed(reason) => Answered(StatusCode::BAD_GATEWAY, json!({ "id": sent.id, "error": reason })),
                Answer::TimedOut => Answered(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({ "id": sent.id, "error": format!("no reply within {} ms", wait.as_millis()) }),
                ),
            })
        }
    }
}

/// Why `stream` is never the ingress's to write, whatever the globs say:
/// Sluice's own keys (inboxes, replies, kv) and dead-letter streams.
fn reserved(config: &Config, stream: &str) -> Option<String> {
    let dead_letter = stream.ends_with(":dlq")
        || config.handlers.iter().any(|h| h.streams.iter().any(|s| h.dead_letter_stream(s) == stream));
    match (stream.starts_with("sluice:"), dead_letter) {
        (true, _) => Some(format!("stream {stream:?} is one of Sluice's own (sluice:*): the ingress never writes it")),
        (_, true) => Some(format!("stream {stream:?} is a dead-letter stream: the ingress never writes it")),
        _ => None,
    }
}

/// 503 for Redis failing under a request.
fn unavailable(e: anyhow::Error) -> Answered {
    refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))
}

/// Whether the request carries the Bearer token, when one is configured.
fn authorize(settings: &IngressSettings, req: &Request<Incoming>) -> Result<(), Answered> {
    let Some(token) = &settings.token else { return Ok(()) };
    match crate::web::bearer(req.headers()) {
        Some(given) if crate::web::same(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(refuse(StatusCode::UNAUTHORIZED, "wrong Bearer token")),
        None => Err(refuse(StatusCode::UNAUTHORIZED, "send the ingress token: Authorization: Bearer <ingress_token>")),
    }
}

/// `?timeout_ms=N`, bounded; the default otherwise.
fn wait_of(query: Option<&str>) -> Result<Duration, Answered> {
    let given = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("timeout_ms="));
    let ms = match given {
        None => INGRESS_WAIT_MS,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (1..=MAX_INGRESS_WAIT_MS).contains(&ms) => ms,
            _ => {
                let why = format!("timeout_ms must be a number of ms from 1 to {MAX_INGRESS_WAIT_MS}, got {v:?}");
                return Err(refuse(StatusCode::BAD_REQUEST, why));
            }
        },
    };
    Ok(Duration::from_millis(ms))
}

/// The body, up to [`MAX_INGRESS_BODY`] bytes, within
/// [`INGRESS_READ_TIMEOUT_MS`].
async fn read_body(body: Incoming) -> Result<Bytes, Answered> {
    let read = Limited::new(body, MAX_INGRESS_BODY).collect();
    let Ok(read) = tokio::time::timeout(Duration::from_millis(INGRESS_READ_TIMEOUT_MS), read).await else {
        return Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {INGRESS_READ_TIMEOUT_MS} ms"),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_INGRESS_BODY} bytes")))
        }
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
    }
}

/// The event a body asks for: `type` (a string), `data` (any JSON; `{}`
/// when absent) and `fields` (strings), with the correlation and trace
/// headers as fields.
fn event_of(stream: &str, body: &[u8], headers: &hyper::HeaderMap) -> Result<NewEvent, Answered> {
    let bad = |why: String| refuse(StatusCode::BAD_REQUEST, why);
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(event_type) = value.get("type").and_then(Value::as_str) else {
        return Err(bad("the body needs \"type\": a string, the event type".into()));
    };
    let data = value.get("data").cloned().unwrap_or_else(|| json!({})).to_string();
    let mut fields: BTreeMap<String, String> = match value.get("fields") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(f) => {
            serde_json::from_value(f.clone()).map_err(|_| bad("\"fields\" must be an object of strings".into()))?
        }
    };
    let sluices = |k: &str| {
        [field::TYPE, field::DATA, field::REPLY_TO, field::REQUEST_ID].contains(&k) || k.starts_with("sluice.")
    };
    if let Some(k) = fields.keys().find(|k| sluices(k)) {
        return Err(bad(format!("\"fields\" may not set {k:?}: Sluice sets it")));
    }
    for (header, name) in [("x-correlation-id", field::CORRELATION_ID), ("traceparent", field::TRACEPARENT)] {
        if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
            fields.entry(name.to_owned()).or_insert_with(|| v.to_owned());
        }
    }
    Ok(NewEvent {
        stream: stream.to_owned(),
        event_type: event_type.to_owned(),
        data,
        fields: fields.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_a_stream_and_what_to_do() {
        assert_eq!(route_of("/v1/streams/orders/events"), Some(("orders".into(), Route::Events)));
        assert_eq!(route_of("/v1/streams/users.created/requests"), Some(("users.created".into(), Route::Requests)));
        assert_eq!(route_of("/v1/streams/%7Bshop%7D%3Aorders/events"), Some(("{shop}:orders".into(), Route::Events)));
        for bad in [
            "/v1/streams//events",
            "/v1/streams/orders",
            "/v1/streams/orders/other",
            "/metrics",
            "/v1/streams/%zz/events",
        ] {
            assert_eq!(route_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_wait_is_bounded() {
        assert_eq!(wait_of(None).ok(), Some(Duration::from_millis(INGRESS_WAIT_MS)));
        assert_eq!(wait_of(Some("timeout_ms=250")).ok(), Some(Duration::from_millis(250)));
        for bad in ["timeout_ms=0", "timeout_ms=x", "timeout_ms=600001"] {
            assert!(wait_of(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_body_becomes_an_event_and_headers_become_fields() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-correlation-id", "c-1".parse().unwrap());
        let body = br#"{"type":"order.created","data":{"n":1},"fields":{"source":"web"}}"#;
        let e = event_of("orders", body, &headers).ok().unwrap();
        assert_eq!((e.event_type.as_str(), e.data.as_str()), ("order.created", r#"{"n":1}"#));
        assert_eq!(e.fields, [("correlation_id".into(), "c-1".into()), ("source".into(), "web".into())]);
        for bad in [
            &b"{"[..],
            br#"{"data":{}}"#,
            br#"{"type":"t","fields":{"n":1}}"#,
            br#"{"type":"t","fields":{"reply_to":"x"}}"#,
        ] {
            assert!(event_of("orders", bad, &headers).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
