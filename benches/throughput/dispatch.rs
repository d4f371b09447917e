//! The cost of one dispatch, in process and sequentially: a fresh store and
//! instance from the plugin's `InstancePre`, the call, and the drop.

use sluice::config::Config;
use sluice::event::Entry;
use sluice::wasm::{FuelMetering, Outcome, Plugin, Runtime, Sandbox};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Microseconds per dispatch of one plugin.
pub struct Cost {
    /// `Plugin::invoke` in the calling task: store, instantiate, call, drop.
    pub direct: f64,
    /// `Plugin::invoke` on the wasm executor, as the host runs each
    /// delivery: the same, plus the panic guard, the span and the log capture.
    pub isolated: f64,
}

/// Measures `plugin` (a file in `plugins`) handling `payload` `iterations`
/// times each way, after a warm-up, with the handler `settings` (TOML lines:
/// `isolation`, `fuel`); every call must succeed.
pub async fn cost(plugins: &Path, plugin: &str, payload: &str, iterations: u32, settings: &str) -> Cost {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "[host]\nplugins = \"{}\"\n[handlers.bench]\nplugin = \"{plugin}\"\nstreams = [\"bench\"]\n{settings}\n",
        plugins.display()
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e} (run scripts/build-plugins first)"));
    let runtime = Runtime::new().unwrap();
    let plugin = Arc::new(
        Plugin::load(
            &runtime,
            None,
            &config.handlers[0].plugin,
            FuelMetering::for_budget(config.handlers[0].limits.fuel),
        )
        .unwrap(),
    );
    let sandbox = Sandbox::for_handler(&config.handlers[0]);
    let entry = Entry {
        id: "1-0".into(),
        fields: vec![("type".into(), b"order.created".to_vec()), ("data".into(), payload.as_bytes().to_vec())],
    };
    let event = entry.to_event("bench", 1);
    for _ in 0..20 {
        let outcome = plugin.invoke_in_place(&sandbox, &event).await;
        assert!(matches!(outcome, Outcome::Success { .. }), "{plugin:?}: {outcome:?}", plugin = plugin.path);
    }
    let started = Instant::now();
    for _ in 0..iterations {
        plugin.invoke_in_place(&sandbox, &event).await;
    }
    let direct = per_call(started, iterations);
    let (done, isolated) = tokio::sync::oneshot::channel();
    let executor = plugin.executor().clone();
    executor.spawn(async move {
        let started = Instant::now();
        for _ in 0..iterations {
            plugin.invoke(&sandbox, event.clone()).await;
        }
        let _ = done.send(per_call(started, iterations));
    });
    Cost { direct, isolated: isolated.await.unwrap() }
}

fn per_call(started: Instant, iterations: u32) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}
