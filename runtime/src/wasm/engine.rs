//! The one wasmtime `Engine` and `Linker` a host uses, and the epoch ticker
//! that makes per-event deadlines work.

use super::bindings::Handler;
use super::executor::Executor;
use super::state::EventState;
use crate::limits::{MIN_POOL_INSTANCES, POOL_MAX_MEMORY};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A running handler yields to other handlers
/// at every tick and its deadline is checked then, so this is also the
/// resolution of `timeout_ms`.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Linear memory, per pool slot, that is reset in place (only the pages a
/// delivery touched, found with `PAGEMAP_SCAN` where the kernel has it)
/// instead of being handed back with `madvise`. Each `madvise` flushes the
/// TLB of every core; resetting in place made a fresh instance 2.5× cheaper
/// (see docs/performance.md). The cost: up to this much stays resident per
/// warm slot.
const POOL_KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// The same for tables.
const POOL_KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// The compiled-code engine and the linker with every host import, shared by
/// every plugin. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    /// The wasmtime engine (epoch interruption, pooling allocator).
    pub engine: Engine,
    /// WASI p2, `wasi:http` (outgoing, allow-listed) and Sluice's imports.
    pub linker: Arc<Linker<EventState>>,
    /// Where handler code runs (apart from Redis I/O).
    pub executor: Executor,
    /// Component instances its pool has room for: the most events all
    /// handlers together may have in flight.
    pub pool_instances: u32,
    /// Whether its engine meters fuel: fixed when the engine is built.
    fuel: FuelMetering,
    _ticker: Arc<Ticker>,
}

/// Whether an engine meters fuel, which a handler's `fuel` budget needs.
/// Metering makes wasm code count what it runs, which slows every handler
/// of the engine (up to a quarter of its time in wasm; docs/performance.md,
/// item 13), so a host meters only if a handler has a budget when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuelMetering {
    /// Wasm code counts fuel; handlers without a budget get unlimited fuel.
    On,
    /// No fuel is counted: a delivery with a `fuel` budget is refused.
    Off,
}

impl FuelMetering {
    /// What handlers with these budgets (`None`: none) need.
    pub fn for_budgets(budgets: impl IntoIterator<Item = Option<u64>>) -> FuelMetering {
        if budgets.into_iter().any(|b| b.is_some()) { FuelMetering::On } else { FuelMetering::Off }
    }

    /// What the handlers of `config` need.
    pub fn for_config(config: &crate::config::Config) -> FuelMetering {
        FuelMetering::for_budgets(config.handlers.iter().map(|h| h.limits.fuel))
    }
}

impl Runtime {
    /// Builds the engine (with the smallest pool, metering no fuel) and
    /// linker and starts the epoch ticker.
    pub fn new() -> anyhow::Result<Runtime> {
        Runtime::with_pool(MIN_POOL_INSTANCES, FuelMetering::Off)
    }

    /// Whether its engine meters fuel.
    pub fn fuel(&self) -> FuelMetering {
        self.fuel
    }

    /// [`Runtime::new`] with room for `pool_instances` instances at once
    /// (see [`crate::limits::pool_instances`]), metering `fuel` or not.
    pub fn with_pool(pool_instances: u32, fuel: FuelMetering) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(pool_instances, fuel))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let ticker = Ticker::start(engine.clone());
        let executor = Executor::new()?;
        Ok(Runtime { engine, linker: Arc::new(linker), executor, pool_instances, fuel, _ticker: Arc::new(ticker) })
    }
}

fn engine_config(instances: u32, fuel: FuelMetering) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // Components from Python or JS hold several core instances each.
        .total_core_instances(instances * 4)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(POOL_MAX_MEMORY)
        .max_memories_per_component(16)
        .max_tables_per_component(16)
        .max_component_instance_size(1 << 20)
        .linear_memory_keep_resident(POOL_KEEP_RESIDENT_MEMORY)
        .table_keep_resident(POOL_KEEP_RESIDENT_TABLE)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .consume_fuel(fuel == FuelMetering::On)
        // Wasm backtraces cost time on every trap; the guest's stderr (its
        // panic message) is what users need and is kept instead.
        .wasm_backtrace_max_frames(None)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`].
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
