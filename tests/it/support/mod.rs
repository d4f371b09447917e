//! Test support: a real redis-server per test, the plugins built once, a
//! config written per test, and polling against a deadline; a TCP proxy for
//! network faults, the fault audit (`audit`) shared with
//! `benches/faults.rs`, and a headless browser for the dashboard.

pub mod audit;
mod browser;
mod cluster;
mod host;
mod proxy;
mod redis_server;
mod sentinel;
mod tls;

pub use browser::Browser;
pub use cluster::Cluster;
pub use host::{
    BusyLoops, Fixture, Hosts, RunningHost, acl_default, acl_refusals, command_stat, command_stats, entries, field,
    finished, id_ms, json_log_lines, last_cpu, ledger_commits, may_leave_idle_priority, pending, read_pending, saying,
    send, send_signal, sluice, terminate, until_entries, until_finished, until_pending, xadd,
};
pub use proxy::Proxy;
pub use redis_server::{RedisServer, free_port};
pub use sentinel::SentinelSet;
pub use tls::Pki;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `plugins/dist`, built once per test run by `scripts/build-plugins`.
pub fn plugins_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo().join("scripts/build-plugins"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        repo().join("plugins/dist")
    })
}

/// Polls `check` until it returns `Some`, failing the test with `what` after
/// `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The default deadline for something that should happen quickly.
pub const SOON: Duration = Duration::from_secs(15);

/// The deadline for a host to start, compiling its plugins on the way.
pub const STARTED: Duration = Duration::from_secs(60);

/// (status code, body) of `GET path` from `127.0.0.1:port`.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], b"")
}

/// (status code, body) of one HTTP/1.1 request to `127.0.0.1:port`, with
/// `headers` (`Host: localhost` unless they have a `host`) and `body`.
pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) { "" } else { "Host: localhost\r\n" };
    let mut head = format!("{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let code = reply.split(' ').nth(1).unwrap_or_else(|| panic!("no HTTP answer: {reply:?}")).parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (code, body.to_owned())
}

/// [`http_request`] with its body parsed as JSON (a JSON string of the
/// body when it is not JSON).
pub fn http_json(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let (code, body) = http_request(port, method, path, headers, body);
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
}

/// Sends the host's log to the test's captured output (shown when it fails).
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
