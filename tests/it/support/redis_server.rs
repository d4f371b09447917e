//! A `redis-server` of a test's own, on a free port, killed on drop: plain,
//! TLS-only, or a Cluster node. Its log is printed if the test fails while
//! it runs.

use super::tls::Pki;
use redis::aio::MultiplexedConnection;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test's own connection waits for a reply. redis-rs's
/// default (500 ms) is shorter than a whole-stream `XRANGE` can take on a
/// loaded CI machine; a test's own deadline is what should fail it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings of every test connection to a single server.
pub(super) fn conn_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// A running server.
pub struct RedisServer {
    child: Child,
    /// The port it listens on (127.0.0.1 only): its TLS port when it
    /// speaks TLS.
    pub port: u16,
    dir: tempfile::TempDir,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// The arguments it was started with, to restart it the same way.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with no persistence on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with extra arguments, e.g. AOF on.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port, "redis", |port| {
            [&["--port", &port.to_string()], extra].concat().iter().map(|s| s.to_string()).collect()
        })
    }

    /// Starts a server that speaks only TLS, with `pki`'s server
    /// certificate; with `client_certs`, it requires a client certificate
    /// signed by `pki`'s CA (mutual TLS).
    pub fn start_tls(pki: &Pki, client_certs: bool) -> RedisServer {
        Self::start_tls_as(pki, "server", client_certs)
    }

    /// [`RedisServer::start_tls`] with `pki`'s certificate `name` (e.g.
    /// `rogue`, which another CA signed).
    pub fn start_tls_as(pki: &Pki, name: &str, client_certs: bool) -> RedisServer {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        Self::start_on(free_port, "rediss", |port| {
            let mut args: Vec<String> =
                ["--port", "0", "--tls-port", &port.to_string(), "--save", "", "--appendonly", "no"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            for (flag, file) in
                [("--tls-cert-file", cert.as_str()), ("--tls-key-file", key.as_str()), ("--tls-ca-cert-file", "ca.pem")]
            {
                args.extend([flag.to_owned(), pki.file(file)]);
            }
            args.extend(["--tls-auth-clients".to_owned(), if client_certs { "yes" } else { "no" }.to_owned()]);
            args
        })
    }

    /// Starts a server whose arguments `args(port)` makes for a port that
    /// `pick` chose, trying again on another port if that one was taken.
    pub fn start_on(pick: fn() -> u16, scheme: &'static str, args: impl Fn(u16) -> Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = pick();
            let args = args(port);
            if let Some(child) = spawn(port, dir.path(), &args, scheme) {
                return RedisServer { child, port, dir, scheme, args };
            }
        }
        panic!("could not start redis-server (is it installed? apt-get install -y redis-server)");
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for TLS (its certificate
    /// is for 127.0.0.1).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// A connection to a TLS server, trusting `pki`'s CA, with its client
    /// certificate when `client_cert`.
    pub async fn tls_conn(&self, pki: &Pki, client_cert: bool) -> MultiplexedConnection {
        let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
        let client_tls = client_cert
            .then(|| redis::ClientTlsConfig { client_cert: read("client.pem"), client_key: read("client.key") });
        let certs = redis::TlsCertificates { client_tls, root_cert: Some(read("ca.pem")) };
        let client = redis::Client::build_with_tls(self.url(), certs).unwrap();
        client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await
            .expect("connect to the TLS test redis")
    }

    /// A fresh plain connection (not for a TLS server).
    pub async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await
            .expect("connect to test redis")
    }

    /// Kills the server and starts it again on the same port, data folder
    /// and arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, self.dir.path(), &self.args, self.scheme).expect("restart redis-server");
    }

    /// Its process id (benches/throughput reads its CPU time).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that is free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(port: u16, dir: &Path, args: &[String], scheme: &str) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed: apt-get install -y redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ready(port, scheme) {
            return Some(child);
        }
        if child.try_wait().ok().flatten().is_some() {
            return None; // port taken meanwhile: try another
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Whether the server answers: PING for plain, a listening port for TLS
/// (the test's own connections then check the handshake).
fn ready(port: u16, scheme: &str) -> bool {
    if scheme == "rediss" {
        return TcpStream::connect(("127.0.0.1", port)).is_ok();
    }
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { return false };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else { return false };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            eprintln!("--- redis-server log (port {}) ---\n{log}", self.port);
        }
    }
}
