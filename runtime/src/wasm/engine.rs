//! The wasmtime engines and the `Linker` a host uses (one engine that counts
//! fuel, for handlers with a budget, and one that does not), and the epoch
//! ticker that makes per-event deadlines work.

use super::bindings::Handler;
use super::executor::Executor;
use super::state::EventState;
use crate::limits::{
    CORE_INSTANCES_PER_COMPONENT, MAX_TABLE_ELEMENTS, MEMORIES_PER_COMPONENT, MIN_POOL_INSTANCES, POOL_MAX_MEMORY,
    TABLES_PER_COMPONENT,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances while a handler runs. A running handler
/// yields to other handlers at every tick and its deadline is checked then,
/// so this is also the resolution of `timeout_ms`.
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
    /// Advances both engines' epochs while wasm runs.
    pub(super) ticker: Arc<Ticker>,
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

    /// Whether the epoch ticker sleeps because no tick found wasm running for
    /// a while (it wakes before any runs again).
    pub fn ticker_asleep(&self) -> bool {
        self.ticker.asleep()
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

/// The engine's settings, with a pool of `instances` component instances.
/// Each component instance may hold at most the core instances, memories
/// and tables of `limits`, and the pool has that many of each per component
/// instance: a handler's plugin, however built, cannot use up what its
/// neighbours' deliveries need, since each handler's component instances
/// are bounded by its `concurrency`.
fn engine_config(instances: u32, fuel: FuelMetering) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances * MEMORIES_PER_COMPONENT)
        .total_tables(instances * TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_memory_size(POOL_MAX_MEMORY)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
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

/// How long the epoch ticker goes on while no tick finds wasm running,
/// before it sleeps. An idle host then makes no wake-ups for it; ticking
/// about 470 times a second was nearly all of an idle host's CPU (0.74% of
/// a core by `perf`'s clock, 1.8% by the kernel's accounting, on the
/// machine of docs/performance.md).
const TICKER_SLEEPS_AFTER: Duration = Duration::from_millis(100);

/// A thread that advances its engines' epochs every [`EPOCH_TICK`] while
/// wasm may run (one thread for both engines, so a second engine adds no
/// wake-ups). It sleeps once no tick has found wasm running for
/// [`TICKER_SLEEPS_AFTER`], and [`Ticker::running`] wakes it before any
/// wasm runs again: a guest that ran without ticks would never yield and
/// never time out.
pub(super) struct Ticker {
    shared: Arc<TickerShared>,
    /// The ticker's thread, to wake it.
    thread: std::thread::Thread,
}

/// What the ticker's thread and the deliveries share.
struct TickerShared {
    /// Set when the ticker is dropped: the thread ends.
    stop: AtomicBool,
    /// The engines whose epochs it advances.
    engines: Mutex<Vec<Engine>>,
    /// Guests running now (instantiating or called): [`Running`] guards.
    running: AtomicUsize,
    /// Whether the thread is asleep, or about to be (it parks only if
    /// nothing runs after it set this).
    asleep: AtomicBool,
    /// Ticks so far, for tests.
    ticks: AtomicU64,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            engines: Mutex::new(vec![engine]),
            running: AtomicUsize::new(0),
            asleep: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let ticking = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || ticking.tick_until_stopped())
            .expect("spawn epoch thread");
        Ticker { shared, thread: thread.thread().clone() }
    }

    /// Advances `engine`'s epoch too, from the next tick on.
    fn add(&self, engine: Engine) {
        self.shared.engines.lock().expect("not poisoned").push(engine);
    }

    /// Marks a guest as running until the guard is dropped, waking the
    /// ticker if it sleeps. Hold it over everything that runs wasm code:
    /// instantiating (a component's start functions are wasm) and calls.
    pub(super) fn running(&self) -> Running<'_> {
        let shared = &*self.shared;
        // SeqCst with the thread's own store of `asleep` and load of
        // `running`: either the thread sees this guest and does not park,
        // or this sees `asleep` and wakes it (a wake before it parks makes
        // its park return at once). Every guest that sees `asleep` wakes
        // it, none leaves that to another that may not run soon; the
        // thread clears `asleep` itself.
        shared.running.fetch_add(1, Ordering::SeqCst);
        if shared.asleep.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running { shared }
    }

    /// Whether the ticker sleeps: no tick found wasm running for a while.
    pub(super) fn asleep(&self) -> bool {
        self.shared.asleep.load(Ordering::SeqCst)
    }

    /// Ticks so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl TickerShared {
    fn tick_until_stopped(&self) {
        let sleep_after = (TICKER_SLEEPS_AFTER.as_micros() / EPOCH_TICK.as_micros()) as u32;
        let mut idle_ticks = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(EPOCH_TICK);
            for engine in self.engines.lock().expect("not poisoned").iter() {
                engine.increment_epoch();
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            if self.running.load(Ordering::SeqCst) > 0 {
                idle_ticks = 0;
                continue;
            }
            idle_ticks += 1;
            if idle_ticks < sleep_after {
                continue;
            }
            self.asleep.store(true, Ordering::SeqCst);
            if self.running.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
                // Woken by `Ticker::running` or on drop. A wake meant for
                // an earlier sleep costs one more round of ticks.
                std::thread::park();
            }
            self.asleep.store(false, Ordering::SeqCst);
            idle_ticks = 0;
        }
    }
}

/// A guest running: the epoch ticker keeps ticking while one is held.
pub(super) struct Running<'a> {
    shared: &'a TickerShared,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Polls `holds` until it is true or `within` has passed.
    fn eventually(within: Duration, holds: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if holds() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        holds()
    }

    /// A component of `instances` core instances of one module, which
    /// defines a memory if `memory` and a table if `table`.
    fn component(instances: usize, memory: bool, table: bool) -> Vec<u8> {
        let module = format!(
            "(core module $m {} {})",
            if memory { "(memory 1)" } else { "" },
            if table { "(table 1 funcref)" } else { "" }
        );
        let each = "(core instance (instantiate $m))".repeat(instances);
        wat::parse_str(format!("(component {module} {each})")).unwrap()
    }

    /// Every component instance the pool has room for can be alive at
    /// once, whatever its plugin holds within the limits: before, the pool
    /// kept four core instances per component instance, so components like
    /// componentize-py's (14 each) used them up at 147 deliveries of a
    /// 512-instance pool, and every other handler's deliveries failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_full_of_the_largest_components_allowed_runs_out_of_nothing_but_instances() {
        let engine = Engine::new(&engine_config(MIN_POOL_INSTANCES, FuelMetering::Off)).unwrap();
        let linker = wasmtime::component::Linker::<()>::new(&engine);
        let most = CORE_INSTANCES_PER_COMPONENT as usize;
        let (memories, tables) = (MEMORIES_PER_COMPONENT as usize, TABLES_PER_COMPONENT as usize);
        let shapes = [component(most, false, false), component(memories, true, false), component(tables, false, true)];
        let shapes: Vec<_> = shapes.iter().map(|c| wasmtime::component::Component::new(&engine, c).unwrap()).collect();
        let mut alive = Vec::new();
        for i in 0..MIN_POOL_INSTANCES as usize {
            let mut store = wasmtime::Store::new(&engine, ());
            let shape = &shapes[i % shapes.len()];
            if let Err(e) = linker.instantiate_async(&mut store, shape).await {
                panic!("instance {i} of {MIN_POOL_INSTANCES}: {e:#}");
            }
            alive.push(store);
        }
        let mut store = wasmtime::Store::new(&engine, ());
        let full = linker.instantiate_async(&mut store, &shapes[0]).await.unwrap_err();
        assert!(format!("{full:#}").contains("component instance"), "{full:#}");
    }

    /// A component that holds more than a component may is rejected when it
    /// is compiled, with the count and the limit.
    #[test]
    fn a_component_over_a_limit_is_rejected_with_its_count() {
        let engine = Engine::new(&engine_config(MIN_POOL_INSTANCES, FuelMetering::Off)).unwrap();
        let compile =
            |bytes: Vec<u8>| format!("{:#}", wasmtime::component::Component::new(&engine, bytes).unwrap_err());
        let over = CORE_INSTANCES_PER_COMPONENT as usize + 1;
        let e = compile(component(over, false, false));
        assert!(e.contains(&format!("{over} core module instances")), "{e}");
        let e = compile(component(MEMORIES_PER_COMPONENT as usize + 1, true, false));
        assert!(e.contains("3 Wasm linear memories, which exceeds the configured maximum of 2"), "{e}");
        let e = compile(component(TABLES_PER_COMPONENT as usize + 1, false, true));
        assert!(e.contains("5 tables"), "{e}");
    }

    /// A table may start as large as the limit promises: the pool's slots
    /// are that size. One larger is rejected when it is compiled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_as_large_as_the_limit_fits_the_pool() {
        let engine = Engine::new(&engine_config(MIN_POOL_INSTANCES, FuelMetering::Off)).unwrap();
        let with_table = |elements: usize| {
            let wat =
                format!("(component (core module $m (table {elements} funcref)) (core instance (instantiate $m)))");
            wasmtime::component::Component::new(&engine, wat::parse_str(wat).unwrap())
        };
        let largest = with_table(MAX_TABLE_ELEMENTS).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let linker = wasmtime::component::Linker::<()>::new(&engine);
        linker.instantiate_async(&mut store, &largest).await.unwrap();
        let e = format!("{:#}", with_table(MAX_TABLE_ELEMENTS + 1).unwrap_err());
        assert!(e.contains("table"), "{e}");
    }

    #[test]
    fn the_ticker_sleeps_while_no_wasm_runs_and_ticks_while_any_does() {
        let ticker = Ticker::start(Engine::default());
        let long = Duration::from_secs(10);
        assert!(eventually(long, || ticker.asleep()), "the ticker never slept");
        let slept_at = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 20);
        assert_eq!(ticker.ticks(), slept_at, "it ticked while asleep");

        let running = ticker.running();
        assert!(eventually(long, || !ticker.asleep()), "a running guest did not wake the ticker");
        assert!(eventually(long, || ticker.ticks() >= slept_at + 3), "a running guest got no ticks");
        // Past the idle time, a guest still running keeps it ticking.
        std::thread::sleep(TICKER_SLEEPS_AFTER * 2);
        let later = ticker.ticks();
        assert!(eventually(long, || ticker.ticks() > later), "it stopped ticking under a running guest");
        assert!(!ticker.asleep());

        drop(running);
        assert!(eventually(long, || ticker.asleep()), "the ticker did not sleep again");
    }
}
