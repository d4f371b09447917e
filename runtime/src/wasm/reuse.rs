//! Reused instances (`isolation = "reuse"`): idle instances of one handler's
//! plugin, each serving deliveries one at a time until it traps, hits a
//! limit, or reaches [`REUSE_MAX_DELIVERIES`].

use super::entry::Bound;
use super::state::EventState;
use crate::limits::REUSE_MAX_DELIVERIES;
use std::sync::Mutex;
use wasmtime::Store;

/// An instance between deliveries, with its store.
pub struct Warm {
    pub store: Store<EventState>,
    /// The instance's entry point (a Sluice handler's or a Spin component's).
    pub instance: Bound,
    /// The plugin version it was made from.
    pub digest: String,
    /// Deliveries it has served.
    pub served: u32,
}

/// A handler's idle instances. Dropped with its sandbox (on reload), and the
/// instances with it.
#[derive(Default)]
pub struct InstancePool {
    idle: Mutex<Vec<Warm>>,
}

impl InstancePool {
    /// An idle instance of the plugin with `digest`, if there is one.
    pub fn take(&self, digest: &str) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap();
        // Instances of another version are never used again.
        idle.retain(|w| w.digest == digest);
        idle.pop()
    }

    /// Returns an instance after a delivery that ended normally; one that has
    /// served its count is dropped instead.
    pub fn put(&self, warm: Warm) {
        if warm.served < REUSE_MAX_DELIVERIES {
            self.idle.lock().unwrap().push(warm);
        }
    }
}
