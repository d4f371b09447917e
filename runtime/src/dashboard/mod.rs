//! The dashboard on the admin listener: one page at `/` (HTML, CSS and
//! script compiled into the binary; no CDN) and the JSON API it reads,
//! which is also there for scripts:
//!
//! - `GET /api/handlers`: every handler's plugin, version, state, rates and
//!   latency over the last minute, lag, pending, dead letters, its streams'
//!   rows (as `sluice status --json` prints them) and 15 minutes of
//!   sparklines ([`History`]);
//! - `GET /api/dead-letters`: the last 50 dead letters, in full;
//! - `GET /api/reloads`: the host's recent reloads ([`ReloadLog`]);
//! - `POST /api/handlers/{name}/redrive` and `.../purge`: the only actions,
//!   refused unless `[host] admin_token` is set and the request carries it
//!   (`Authorization: Bearer …`); each is logged.
//!
//! Nothing from event data is ever run as script: the page builds its DOM
//! from text only, and a Content-Security-Policy allows no script but its
//! own file.

pub mod history;

pub use history::{History, Recent, Sparklines};

use crate::config::Config;
use crate::host::LiveConsumers;
use crate::ops::Session;
use crate::ops::dlq::{DeadLetter, Filter};
use crate::ops::status::Row;
use crate::reload::ReloadLog;
use crate::stream::Conn;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{info, warn};

/// Dead letters the dashboard shows.
pub const DEAD_LETTERS_SHOWN: usize = 50;
/// How long reading them may take.
const REDIS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/dashboard.js");
const STYLE: &str = include_str!("page/dashboard.css");

/// Only the page's own script and style; no inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the dashboard reads and acts on.
pub struct Dashboard {
    /// The config in force, swapped on reload.
    pub config: Arc<ArcSwap<Config>>,
    /// Redis, for dead letters.
    pub conn: Conn,
    /// Redis, to open a connection of its own for each action: a redrive
    /// in a cluster waits on its connection for replicas
    /// ([`crate::ops::redrive::redrive`]), which must not hold up the
    /// host's commits on the shared one.
    pub redis: crate::stream::Redis,
    /// Samples of the last 15 minutes.
    pub history: Arc<History>,
    /// The host's reloads.
    pub reloads: Arc<ReloadLog>,
    /// The consumers running now.
    pub consumers: LiveConsumers,
    /// `[host] admin_token`: actions need it; `None`: actions are disabled.
    pub token: Option<String>,
}

/// One handler, as `/api/handlers` shows it.
#[derive(Debug, Serialize)]
pub struct HandlerView {
    /// Its name.
    pub name: String,
    /// Its plugin file.
    pub plugin: String,
    /// The plugin version serving (first 12 hex digits of its SHA-256);
    /// none while the handler is not running here.
    pub version: Option<String>,
    /// The streams it reads, as configured.
    pub streams: Vec<String>,
    /// `consuming`, `behind`, `demoted` (at idle priority after its
    /// deliveries ran out of time) or `stopped`.
    pub state: &'static str,
    /// Rates and latency over the last minute.
    pub recent: Recent,
    /// Entries not yet delivered, over its streams.
    pub lag: Option<u64>,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    /// Age of its oldest pending entry, ms.
    pub oldest_pending_ms: Option<u64>,
    /// Entries in its dead-letter streams.
    pub dead_letters: u64,
    /// Its rows, as `sluice status --json` prints them.
    pub rows: Vec<Row>,
    /// The last 15 minutes.
    pub sparklines: Sparklines,
}

/// `/api/handlers`.
#[derive(Debug, Serialize)]
pub struct HandlersView {
    /// When, Unix ms.
    pub at: u64,
    /// Whether actions are enabled (`[host] admin_token` is set).
    pub actions: bool,
    /// Why Redis figures are missing or stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_error: Option<String>,
    /// Every handler, by name.
    pub handlers: Vec<HandlerView>,
}

type Answer = Response<Full<Bytes>>;

impl Dashboard {
    /// Answers `method path` if it is the dashboard's; `None` otherwise.
    /// `authorization` is the request's Bearer token; `peer` who sent it.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
        peer: SocketAddr,
    ) -> Option<Answer> {
        let get = method == Method::GET || method == Method::HEAD;
        Some(match path {
            "/" | "/index.html" if get => asset("text/html; charset=utf-8", PAGE),
            "/dashboard.js" if get => asset("text/javascript; charset=utf-8", SCRIPT),
            "/dashboard.css" if get => asset("text/css; charset=utf-8", STYLE),
            "/api/handlers" if get => json_answer(StatusCode::OK, &self.handlers()),
            "/api/dead-letters" if get => match self.dead_letters().await {
                Ok(list) => json_answer(StatusCode::OK, &json!({ "dead_letters": list })),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("{e:#}")),
            },
            "/api/reloads" if get => json_answer(StatusCode::OK, &json!({ "reloads": self.reloads.recent() })),
            "/" | "/index.html" | "/dashboard.js" | "/dashboard.css" | "/api/handlers" | "/api/dead-letters"
            | "/api/reloads" => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            _ => {
                let (handler, action) = path.strip_prefix("/api/handlers/")?.rsplit_once('/')?;
                if !matches!(action, "redrive" | "purge") {
                    return None;
                }
                let Some(handler) = crate::web::percent_decode(handler) else {
                    return Some(error(StatusCode::BAD_REQUEST, "malformed %-escape in the handler name"));
                };
                let handler = handler.as_str();
                if method != Method::POST {
                    return Some(error(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
                }
                self.act(handler, action, authorization, peer).await
            }
        })
    }

    /// Every handler's view, from the last sample and the live counters.
    pub fn handlers(&self) -> HandlersView {
        let config = self.config.load_full();
        let consumers = self.consumers.load_full();
        let (rows, redis_error) = self.history.rows();
        let handlers = config
            .handlers
            .iter()
            .map(|h| {
                let rows: Vec<Row> = rows.iter().filter(|r| r.handler == h.name).cloned().collect();
                let consumer = consumers.get(&h.name);
                let state = match consumer {
                    None => "stopped",
                    Some(_) if rows.iter().any(|r| !r.consuming) => "stopped",
                    Some(c) if c.is_demoted() => "demoted",
                    Some(_) if rows.iter().any(|r| r.behind) => "behind",
                    Some(_) => "consuming",
                };
                let lag = rows.iter().map(|r| r.lag).sum::<Option<u64>>();
                HandlerView {
                    name: h.name.clone(),
                    plugin: h.plugin.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                    version: consumer.map(|c| c.binding().plugin.version.clone()),
                    streams: h.streams.clone(),
                    state,
                    recent: self.history.recent(&h.name),
                    lag: if rows.is_empty() { None } else { lag },
                    pending: rows.iter().map(|r| r.pending).sum(),
                    oldest_pending_ms: rows.iter().filter_map(|r| r.oldest_pending_ms).max(),
                    dead_letters: rows.iter().map(|r| r.dead_letters).sum(),
                    sparklines: self.history.sparklines(&h.name),
                    rows,
                }
            })
            .collect();
        HandlersView { at: crate::ops::time::now_ms(), actions: self.token.is_some(), redis_error, handlers }
    }

    /// The last [`DEAD_LETTERS_SHOWN`] dead letters, newest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let mut session = self.session();
        let latest = crate::ops::dlq::latest(&mut session, DEAD_LETTERS_SHOWN);
        tokio::time::timeout(REDIS_WAIT, latest)
            .await
            .map_err(|_| anyhow::anyhow!("Redis did not answer within {} ms", REDIS_WAIT.as_millis()))?
    }

    fn session(&self) -> Session {
        Session { config: (*self.config.load_full()).clone(), conn: self.conn.clone() }
    }

    /// Redrives or purges `handler`'s dead letters, if the request carries
    /// the token.
    async fn act(&self, handler: &str, action: &str, authorization: Option<&str>, peer: SocketAddr) -> Answer {
        let Some(token) = &self.token else {
            warn!(%peer, handler, action, "dashboard action refused: actions are disabled ([host] admin_token is not set)");
            return error(StatusCode::FORBIDDEN, "actions are disabled: set [host] admin_token to enable them");
        };
        let given = authorization.unwrap_or("");
        if !crate::web::same(given.as_bytes(), token.as_bytes()) {
            warn!(%peer, handler, action, "dashboard action refused: missing or wrong admin token");
            let mut answer = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer …)");
            answer.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
            return answer;
        }
        let mut session = self.session();
        if session.config.handler(handler).is_none() {
            return error(StatusCode::NOT_FOUND, &format!("no handler {handler:?}"));
        }
        let filter = Filter { handler: Some(handler.to_owned()), ..Filter::default() };
        let done = async {
            session.conn = self.redis.own_connection().await?;
            let entries = crate::ops::dlq::list(&mut session, &filter).await?;
            anyhow::Ok(match action {
                "redrive" => {
                    let moved = crate::ops::redrive::redrive(&mut session, &entries, Default::default()).await?;
                    let sent = moved.iter().filter(|m| m.inbox_id.is_some()).count();
                    let left = moved.iter().filter(|m| m.still_invalid.is_some()).count();
                    json!({ "action": "redrive", "handler": handler, "redriven": sent, "left": left })
                }
                _ => {
                    let purged = crate::ops::dlq::purge(&mut session, &entries).await?;
                    json!({ "action": "purge", "handler": handler, "purged": purged })
                }
            })
        }
        .await;
        match done {
            Ok(result) => {
                info!(%peer, handler, action, result = %result, "dashboard action: {action} of handler {handler}'s dead letters");
                json_answer(StatusCode::OK, &result)
            }
            Err(e) => {
                warn!(%peer, handler, action, "dashboard action failed: {e:#}");
                error(StatusCode::SERVICE_UNAVAILABLE, &format!("{e:#}"))
            }
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Answer {
    Response::builder()
        .header("content-type", content_type)
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response")
}

fn json_answer(status: StatusCode, value: &impl Serialize) -> Answer {
    let body = serde_json::to_vec(value).expect("serialisable");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}
