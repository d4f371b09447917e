//! The thread pool handler code runs on, apart from the runtime that drives
//! Redis and the host's own tasks. A handler that computes until its
//! deadline then competes only with other handlers, never with the I/O that
//! acknowledges everyone's events (on a shared runtime, busy workers poll
//! the I/O driver too rarely and every handler stalls).

use std::future::Future;
use std::sync::{Arc, Mutex};

/// A multi-threaded tokio runtime for wasm execution. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    handle: tokio::runtime::Handle,
    _owner: Arc<Owner>,
}

/// Shuts the runtime down without blocking when the last clone goes (a
/// plain drop would panic inside an async context).
struct Owner(Mutex<Option<tokio::runtime::Runtime>>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(rt) = self.0.lock().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

impl Executor {
    /// A pool with one worker per core. I/O is enabled for handlers' HTTP calls.
    pub fn new() -> std::io::Result<Executor> {
        let rt = tokio::runtime::Builder::new_multi_thread().thread_name("sluice-wasm").enable_all().build()?;
        let handle = rt.handle().clone();
        Ok(Executor { handle, _owner: Arc::new(Owner(Mutex::new(Some(rt)))) })
    }

    /// Runs `work` on the pool and waits for it. `None` if it panicked.
    pub async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Option<T> {
        self.handle.spawn(work).await.ok()
    }
}
