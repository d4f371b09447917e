//! A guest's stdout/stderr: counted against a per-delivery limit, the start
//! kept in memory and logged by the host afterwards.

use super::usage::LimitExceeded;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much of a delivery's output is kept for the host log.
pub const LOGGED_BYTES: usize = 64 * 1024;

/// One delivery's stdout or stderr. Clones share the buffer.
#[derive(Clone)]
pub struct Captured {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    /// `stdout` or `stderr`, for the limit's reason.
    name: &'static str,
    /// Most bytes the guest may write in one delivery.
    limit: usize,
    written: usize,
    kept: Vec<u8>,
}

impl Captured {
    /// A stream called `name` that fails the delivery past `limit` bytes.
    pub fn new(name: &'static str, limit: usize) -> Captured {
        let buffer = Buffer { name, limit, written: 0, kept: Vec::new() };
        Captured { inner: Arc::new(Mutex::new(buffer)) }
    }

    /// What was kept for the log, as text, with a note if some was not.
    pub fn take_text(&self) -> String {
        let mut buf = self.inner.lock().unwrap();
        let mut text = String::from_utf8_lossy(&buf.kept).into_owned();
        let dropped = buf.written.saturating_sub(buf.kept.len());
        if dropped > 0 {
            text.push_str(&format!("\n[{dropped} more bytes not logged]"));
        }
        buf.kept.clear();
        text
    }

    /// Starts counting afresh, for the next delivery of a reused instance.
    pub fn reset(&self) {
        let mut buf = self.inner.lock().unwrap();
        buf.written = 0;
        buf.kept.clear();
    }

    /// The limit's reason, if the guest wrote past it.
    pub fn exceeded(&self) -> Option<String> {
        let buf = self.inner.lock().unwrap();
        (buf.written > buf.limit).then(|| format!("{} limit exceeded: more than {} KiB", buf.name, buf.limit >> 10))
    }

    fn append(&self, data: &[u8]) -> Result<(), LimitExceeded> {
        let mut buf = self.inner.lock().unwrap();
        buf.written += data.len();
        let room = LOGGED_BYTES.saturating_sub(buf.kept.len());
        buf.kept.extend_from_slice(&data[..data.len().min(room)]);
        if buf.written > buf.limit { Err(LimitExceeded) } else { Ok(()) }
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes).map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = self.append(buf).map(|()| buf.len()).map_err(std::io::Error::other);
        std::task::Poll::Ready(result)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_fails_and_is_named() {
        let out = Captured::new("stdout", 100 * 1024);
        assert!(out.append(&vec![b'x'; 100 * 1024]).is_ok());
        assert_eq!(out.exceeded(), None);
        assert!(out.append(b"x").is_err());
        assert_eq!(out.exceeded().as_deref(), Some("stdout limit exceeded: more than 100 KiB"));
        let text = out.take_text();
        assert!(
            text.ends_with(&format!("[{} more bytes not logged]", 100 * 1024 + 1 - LOGGED_BYTES)),
            "{}",
            &text[text.len() - 40..]
        );
    }
}
