//! Reload benchmark: how long from writing a plugin file to the new version
//! serving, over several swaps, first compiling (cold) and then from the
//! compiled-component cache (warm, e.g. a rollback). Also plugin load time
//! cold vs warm for each example plugin.
//!
//! `cargo bench --bench reload` (after `scripts/build-plugins`).

#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../tests/it/support/tls.rs"]
#[allow(dead_code)]
mod tls;

use redis_server::RedisServer;
use sluice::config::Config;
use sluice::host::RunOptions;
use sluice::reload::ReloadReport;
use sluice::wasm::{ComponentCache, FuelMetering, Plugin, Runtime};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SWAPS: usize = 9;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(swaps());
    load_times();
}

async fn swaps() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(dist().join("behave.wasm"), plugins.join("h.wasm")).unwrap();
    let config_path = dir.path().join("config.toml");
    let text = format!(
        "[redis]\nurl = \"{}\"\n[host]\nplugins = \"plugins\"\n[handlers.h]\nplugin = \"h.wasm\"\nstreams = [\"in\"]\npublish = [\"shipments\"]\n",
        redis.url()
    );
    std::fs::write(&config_path, text).unwrap();
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = Config::load(&config_path).unwrap();
    let options = RunOptions { watch: true, reports: Some(tx) };
    let host = tokio::spawn(sluice::host::run_with(
        config,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    assert!(matches!(reports.recv().await, Some(ReloadReport::Started { .. })));
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..SWAPS {
        let next = if i % 2 == 0 { "shipping.wasm" } else { "behave.wasm" };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let written = Instant::now();
        std::fs::copy(dist().join(next), plugins.join("h.wasm")).unwrap();
        match reports.recv().await {
            Some(ReloadReport::Applied { .. }) => {}
            other => panic!("swap {i}: {other:?}"),
        }
        let took = written.elapsed();
        if i < 2 { cold.push(took) } else { warm.push(took) }
    }
    let _ = stop.send(());
    host.await.unwrap().unwrap();
    println!("\nReload: file write → new version serving (debounce {:?} included)", sluice::reload::DEBOUNCE);
    println!("  first swaps, compiled now:     {}", ms_list(&cold));
    println!("  later swaps, from the cache:   median {:.1} ms  ({})", median_ms(&mut warm), ms_list(&warm));
}

fn load_times() {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ComponentCache::new(dir.path());
    println!("\nPlugin load (read + compile or cache + link), example plugins (Rust, then Python and JavaScript)");
    println!("  {:<20} {:>10} {:>10} {:>10}", "plugin", "size KiB", "cold ms", "warm ms");
    for name in ["payment", "shipping", "notification", "inventory", "audit", "behave", "notify-py", "notify-js"] {
        let path = dist().join(format!("{name}.wasm"));
        let size = std::fs::metadata(&path).unwrap().len() / 1024;
        let t = Instant::now();
        Plugin::load(&runtime, Some(&cache), &path, FuelMetering::Off).unwrap();
        let cold = t.elapsed();
        let mut warm: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                Plugin::load(&runtime, Some(&cache), &path, FuelMetering::Off).unwrap();
                t.elapsed()
            })
            .collect();
        println!("  {:<20} {:>10} {:>10.1} {:>10.2}", name, size, cold.as_secs_f64() * 1e3, median_ms(&mut warm));
    }
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn ms_list(v: &[Duration]) -> String {
    v.iter().map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ")
}
