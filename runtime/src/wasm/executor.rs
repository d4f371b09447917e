//! The thread pool handler code runs on, apart from the runtime that drives
//! Redis and the host's own tasks. A handler that computes until its
//! deadline then competes only with other handlers, never with the I/O that
//! acknowledges everyone's events (on a shared runtime, busy workers poll
//! the I/O driver too rarely and every handler stalls).

use futures::FutureExt;
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

thread_local! {
    /// Whether this thread is one of an executor's workers.
    static ON_EXECUTOR: Cell<bool> = const { Cell::new(false) };
}

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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-wasm")
            .on_thread_start(|| ON_EXECUTOR.set(true))
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(Executor { handle, _owner: Arc::new(Owner(Mutex::new(Some(rt)))) })
    }

    /// Runs `work` on the pool and waits for it. `None` if it panicked.
    /// Already on the pool, it runs in the calling task (no hop).
    pub async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Option<T> {
        if ON_EXECUTOR.get() {
            AssertUnwindSafe(work).catch_unwind().await.ok()
        } else {
            self.handle.spawn(work).await.ok()
        }
    }

    /// Starts `work` on the pool. Whole deliveries run here, so the only
    /// hops to the host's runtime are Redis calls, which are batched.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        drop(self.handle.spawn(work));
    }
}
