//! The wasmtime engines and the `Linker` a host uses (one engine that counts
//! fuel, for handlers with a budget, and one that does not), and the epoch
//! ticker that makes per-event deadlines work.

use super::bindings::Handler;
use super::executor::Executor;
use super::state::EventState;
use crate::limits::{MIN_POOL_INSTANCES, POOL_MAX_MEMORY};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// The engines and linker a host runs plugins with, and the executor their
/// deliveries run on. Cheap to clone.
///
/// There are two engines, because counting fuel slows every handler an
/// engine runs ([`FuelMetering`]): one that counts none, for handlers
/// without a `fuel` budget, built at once; and one that counts fuel, built
/// the first time a handler with a budget is loaded (at start or on a
/// reload). A plugin is compiled for the engine its handler needs.
#[derive(Clone)]
pub struct Runtime {
    /// Where handler code runs (apart from Redis I/O).
    pub executor: Executor,
    /// Component instances each engine's pool has room for: the most events
    /// all handlers together may have in flight.
    pub pool_instances: u32,
    /// For handlers without a budget.
    plain: Flavour,
    /// For handlers with one, once one was loaded.
    metered: Arc<Mutex<Option<Flavour>>>,
    /// Advances both engines' epochs.
    ticker: Arc<Ticker>,
}

/// One wasmtime engine (epoch interruption, pooling allocator, fuel counted
/// or not), its linker with every host import (WASI p2, outgoing `wasi:http`
/// allow-listed, Sluice's own).
#[derive(Clone)]
pub(super) struct Flavour {
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<EventState>>,
}

impl Flavour {
    fn new(pool_instances: u32, fuel: FuelMetering) -> anyhow::Result<Flavour> {
        let engine = Engine::new(&engine_config(pool_instances, fuel))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        Ok(Flavour { engine, linker: Arc::new(linker) })
    }
}

/// Whether an engine counts fuel, which a handler's `fuel` budget needs.
/// Counting makes wasm code count what it runs, which slows every handler
/// of the engine (up to a quarter of its time in wasm; docs/performance.md,
/// items 13 and 15), so only handlers with a budget run on an engine that
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuelMetering {
    /// Wasm code counts fuel.
    On,
    /// No fuel is counted: a delivery with a `fuel` budget is refused.
    Off,
}

impl FuelMetering {
    /// What a handler with this budget (`None`: none) needs.
    pub fn for_budget(budget: Option<u64>) -> FuelMetering {
        if budget.is_some() { FuelMetering::On } else { FuelMetering::Off }
    }
}

impl Runtime {
    /// Builds the engine for handlers without a fuel budget (with the
    /// smallest pool) and its linker, and starts the epoch ticker.
    pub fn new() -> anyhow::Result<Runtime> {
        Runtime::with_pool(MIN_POOL_INSTANCES)
    }

    /// [`Runtime::new`] with room for `pool_instances` instances at once in
    /// each engine's pool (see [`crate::limits::pool_instances`]).
    pub fn with_pool(pool_instances: u32) -> anyhow::Result<Runtime> {
        let plain = Flavour::new(pool_instances, FuelMetering::Off)?;
        let executor = Executor::new()?;
        let ticker = Arc::new(Ticker::start(plain.engine.clone()));
        Ok(Runtime { executor, pool_instances, plain, metered: Arc::new(Mutex::new(None)), ticker })
    }

    /// The engine of handlers without a fuel budget.
    pub fn engine(&self) -> &Engine {
        &self.plain.engine
    }

    /// Whether the engine that counts fuel was built: a handler with a
    /// budget was loaded.
    pub fn counts_fuel(&self) -> bool {
        self.metered.lock().expect("not poisoned").is_some()
    }

    /// The engine and linker for `fuel`, building the one that counts fuel
    /// the first time it is asked for.
    pub(super) fn flavour(&self, fuel: FuelMetering) -> anyhow::Result<Flavour> {
        if fuel == FuelMetering::Off {
            return Ok(self.plain.clone());
        }
        let mut metered = self.metered.lock().expect("not poisoned");
        if metered.is_none() {
            let flavour = Flavour::new(self.pool_instances, FuelMetering::On)?;
            self.ticker.add(flavour.engine.clone());
            *metered = Some(flavour);
        }
        Ok(metered.clone().expect("just built"))
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

/// A thread that advances its engines' epochs every [`EPOCH_TICK`] (one
/// thread for both, so a second engine adds no wake-ups).
struct Ticker {
    stop: Arc<AtomicBool>,
    engines: Arc<Mutex<Vec<Engine>>>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let engines = Arc::new(Mutex::new(vec![engine]));
        let (flag, ticked) = (stop.clone(), engines.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in ticked.lock().expect("not poisoned").iter() {
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawn epoch thread");
        Ticker { stop, engines }
    }

    /// Advances `engine`'s epoch too, from the next tick on.
    fn add(&self, engine: Engine) {
        self.engines.lock().expect("not poisoned").push(engine);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
