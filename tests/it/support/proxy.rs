//! A TCP proxy on loopback, for network faults between hosts and Redis: it
//! forwards every connection it accepts to a target port and can, while
//! running, reset every open connection, stall them all, delay every
//! chunk it forwards, or send new connections to another port.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes one read takes from a socket.
const CHUNK: usize = 16 * 1024;
/// Chunks one direction holds back for their latency before the proxy stops
/// reading that side (so a slow side pushes back instead of filling memory).
const MOST_HELD: usize = 1024;

/// What every connection does now; each one watches it.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    /// Bumped by [`Proxy::reset`]: a connection opened under an older value
    /// is reset.
    resets: u64,
    /// Nothing is forwarded while set.
    stalled: bool,
    /// Added to every chunk, in each direction.
    latency: Duration,
    /// Set when the proxy is dropped: every connection closes.
    closed: bool,
    /// The port new connections are forwarded to.
    target: u16,
}

/// A running proxy; it stops, closing every connection, when dropped.
pub struct Proxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    control: watch::Sender<Control>,
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to
    /// `127.0.0.1:target`. Must be called within a Tokio runtime.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (control, _) = watch::channel(Control { target, ..Control::default() });
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, control.clone(), open.clone()));
        Proxy { port, control, open, accept }
    }

    /// `redis://127.0.0.1:PORT`: a Redis URL through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Resets every connection open now (SO_LINGER 0, then close: both
    /// peers get an RST, not a FIN); returns how many there were. New
    /// connections are forwarded as before.
    pub fn reset(&self) -> usize {
        let open = self.open.load(Ordering::SeqCst);
        self.control.send_modify(|c| c.resets += 1);
        open
    }

    /// Stops forwarding bytes in both directions until [`Proxy::resume`];
    /// connections stay open, and new ones are accepted but stalled too.
    pub fn stall(&self) {
        self.control.send_modify(|c| c.stalled = true);
    }

    /// Forwards again what a [`Proxy::stall`] held back, and what comes next.
    pub fn resume(&self) {
        self.control.send_modify(|c| c.stalled = false);
    }

    /// Delays every chunk forwarded from now on by `latency`, in each
    /// direction (a round trip through the proxy grows by twice as much);
    /// zero turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.control.send_modify(|c| c.latency = latency);
    }

    /// Forwards connections opened from now on to `127.0.0.1:target`; those
    /// open now stay with the old one (as a DNS name moved by a failover).
    pub fn retarget(&self, target: u16) {
        self.control.send_modify(|c| c.target = target);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.control.send_modify(|c| c.closed = true);
    }
}

async fn accept_loop(listener: TcpListener, control: watch::Sender<Control>, open: Arc<AtomicUsize>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let watch = control.subscribe();
        let target = control.borrow().target;
        let open = open.clone();
        tokio::spawn(async move {
            // A target that refuses (Redis restarting, say) closes the client too.
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            open.fetch_add(1, Ordering::SeqCst);
            forward(client, server, watch).await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Bytes read from one side and not yet written to the other, each with
/// the time it may be written.
#[derive(Default)]
struct Held {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// The side it comes from reached its end: close the other's writing
    /// half once the chunks are out.
    ended: bool,
}

impl Held {
    fn due(&self) -> Option<Instant> {
        self.chunks.front().map(|(at, _)| *at)
    }

    /// Whether to read more from the side it comes from.
    fn wants_more(&self) -> bool {
        !self.ended && self.chunks.len() < MOST_HELD
    }
}

/// Forwards between `client` and `server` as `control` says, until either
/// side closes, the connection is reset, or the proxy is dropped. One task
/// owns both sockets, so a reset can set SO_LINGER on each before closing.
async fn forward(mut client: TcpStream, mut server: TcpStream, mut control: watch::Receiver<Control>) {
    let born = control.borrow().resets;
    let (mut up, mut down) = (Held::default(), Held::default()); // client → server, server → client
    let (mut from_client, mut from_server) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let now = *control.borrow_and_update();
        if now.closed {
            return;
        }
        if now.resets != born {
            // RST rather than FIN: the peers see "connection reset", as
            // after a middlebox or a peer's crash.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
            return;
        }
        let flowing = !now.stalled;
        let next_due = [up.due(), down.due()].into_iter().flatten().min();
        tokio::select! {
            changed = control.changed() => if changed.is_err() { return },
            read = client.read(&mut from_client), if flowing && up.wants_more() => {
                match read {
                    Ok(0) | Err(_) => up.ended = true,
                    Ok(n) => up.chunks.push_back((due(&control), from_client[..n].to_vec())),
                }
            }
            read = server.read(&mut from_server), if flowing && down.wants_more() => {
                match read {
                    Ok(0) | Err(_) => down.ended = true,
                    Ok(n) => down.chunks.push_back((due(&control), from_server[..n].to_vec())),
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if flowing && next_due.is_some() => {
                if deliver(&mut up, &mut server).await.is_err() || deliver(&mut down, &mut client).await.is_err() {
                    return;
                }
            }
        }
        let drained = |h: &Held| h.ended && h.chunks.is_empty();
        if drained(&up) || drained(&down) {
            // One side is gone and what it sent is out: close both, as a
            // Redis connection has no use for a half-closed socket.
            return;
        }
    }
}

/// When a chunk read now may be written: after the latency in force now
/// (read afresh: a change may have raced with the read).
fn due(control: &watch::Receiver<Control>) -> Instant {
    Instant::now() + control.borrow().latency
}

/// Writes every chunk of `held` that is due to `to`.
async fn deliver(held: &mut Held, to: &mut TcpStream) -> std::io::Result<()> {
    let now = Instant::now();
    while held.due().is_some_and(|at| at <= now) {
        let (_, bytes) = held.chunks.pop_front().unwrap();
        to.write_all(&bytes).await?;
    }
    Ok(())
}
