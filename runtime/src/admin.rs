//! The admin listener (`[host] admin`): `/metrics` (Prometheus text),
//! `/healthz` (the process is up), `/readyz` (Redis answers and every
//! handler's group exists on each of its streams), and the dashboard at `/`
//! with its `/api` ([`crate::dashboard`]).

use crate::config::Config;
use crate::stream::Conn;
use crate::{metrics, ops};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How long a scrape or readiness check waits for Redis.
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// What the listener reads: the config in force (swapped on reload) and Redis.
#[derive(Clone)]
pub struct AdminState {
    /// The config in force, swapped on reload.
    pub config: Arc<ArcSwap<Config>>,
    /// The connection scrapes and readiness checks use.
    pub conn: Conn,
    /// The dashboard and its API.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

impl AdminState {
    /// The state of a host running `config` on `redis`, with its running
    /// `consumers`, its `reloads`, and `[host] admin_token`.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        redis: &crate::stream::Redis,
        consumers: crate::host::LiveConsumers,
        reloads: Arc<crate::reload::ReloadLog>,
        token: Option<String>,
    ) -> AdminState {
        let conn = redis.conn.clone();
        let history = Arc::new(crate::dashboard::History::new(config.clone(), conn.clone()));
        let dashboard = crate::dashboard::Dashboard {
            config: config.clone(),
            conn: conn.clone(),
            redis: redis.clone(),
            history,
            reloads,
            consumers,
            token,
        };
        AdminState { config, conn, dashboard: Arc::new(dashboard) }
    }
}

/// Binds `addr` (failing now, not later, if it is taken).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on [host] admin = \"{addr}\": {e}"))
}

/// Serves requests on `listener`, and keeps the dashboard's history, until
/// `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    tokio::spawn(state.dashboard.history.clone().run(shutdown.clone()));
    let Ok(local) = listener.local_addr() else { return };
    info!(addr = %local, "admin listener: the dashboard at http://{local}/, /metrics /healthz /readyz");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => { debug!("admin accept: {e}"); continue }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(state.clone(), req, local, peer));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                debug!("admin connection: {e}");
            }
        });
    }
}

async fn respond(
    state: AdminState,
    req: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let host = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok());
    if !crate::web::host_allowed(local, host) {
        // A page whose domain was rebound to this loopback address.
        let body = format!("this listener answers only loopback host names, not {:?}\n", host.unwrap_or(""));
        let answer = Response::builder().status(StatusCode::MISDIRECTED_REQUEST).body(Full::new(body.into()));
        return Ok(answer.expect("a valid response"));
    }
    let authorization = crate::web::bearer(req.headers());
    if let Some(answer) = state.dashboard.respond(req.method(), req.uri().path(), authorization, peer).await {
        return Ok(answer);
    }
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            let rows = sample(&state).await.unwrap_or_default();
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics::exposition(&rows))
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match readiness(&state).await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try / (the dashboard), /api/handlers, /api/dead-letters, /api/reloads, /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let response = Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into()));
    Ok(response.expect("a valid response"))
}

/// Every handler's rows from Redis, or why not.
async fn sample(state: &AdminState) -> Result<Vec<ops::status::Row>, String> {
    ops::status::rows_within(&mut state.conn.clone(), &state.config.load_full(), REDIS_WAIT).await
}

/// Ready when Redis answers and every handler consumes every stream.
async fn readiness(state: &AdminState) -> Result<(), String> {
    let rows = sample(state).await?;
    match rows.iter().find(|r| !r.consuming) {
        Some(r) => Err(format!("handler {} is not consuming {} yet", r.handler, r.stream)),
        None => Ok(()),
    }
}
