//! A guest's stdout/stderr: kept in memory up to a cap, then logged by the host.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most bytes of stdout (and, separately, stderr) kept per delivery; the rest
/// is dropped (and counted) rather than failing the guest's write.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// One delivery's output stream. Clones share the buffer.
#[derive(Clone, Default)]
pub struct Captured {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Captured {
    /// Everything written so far, as text, with a note if some was dropped.
    pub fn take_text(&self) -> String {
        let mut buf = self.inner.lock().unwrap();
        let mut text = String::from_utf8_lossy(&buf.bytes).into_owned();
        if buf.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes dropped]", buf.dropped));
        }
        buf.bytes.clear();
        buf.dropped = 0;
        text
    }

    fn append(&self, data: &[u8]) {
        let mut buf = self.inner.lock().unwrap();
        let room = OUTPUT_CAP.saturating_sub(buf.bytes.len());
        let kept = data.len().min(room);
        buf.bytes.extend_from_slice(&data[..kept]);
        buf.dropped += data.len() - kept;
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
        self.append(&bytes);
        Ok(())
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
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
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
    fn output_past_the_cap_is_counted_not_kept() {
        let out = Captured::default();
        out.append(&vec![b'x'; OUTPUT_CAP + 10]);
        let text = out.take_text();
        assert!(text.ends_with("[10 more bytes dropped]"), "{}", &text[text.len() - 40..]);
    }
}
