//! The compiled-component cache: a warm entry is loaded instead of compiled;
//! a corrupt or truncated entry is compiled again, never trusted; each
//! engine (fuel counted or not) has entries of its own.

use crate::support::*;
use sluice::config::Handler;
use sluice::wasm::FuelMetering::{Off, On};
use sluice::wasm::{ComponentCache, Outcome, Plugin, Runtime, Sandbox, Source};

fn entries_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

/// Runs `plugin` on an `ok` event and checks it works.
async fn assert_runs(plugin: &Plugin, handler: &Handler) {
    let entry = sluice::event::Entry { id: "1-0".into(), fields: vec![("data".into(), b"{}".to_vec())] };
    let outcome = plugin.invoke_in_place(&Sandbox::for_handler(handler), &entry.to_event("s", 1)).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_entries_load_and_bad_entries_are_recompiled() {
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\n");
    let handler = fx.config().handlers.remove(0);
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ComponentCache::new(dir.path());

    let cold = Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap();
    assert_eq!(cold.source, Source::Compiled);
    let files = entries_in(dir.path());
    assert_eq!(files.len(), 1, "one artifact written");

    let warm = Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap();
    assert_eq!(warm.source, Source::Cache);
    assert_eq!(warm.version, cold.version);
    assert_runs(&warm, &handler).await;

    // One flipped byte in the middle: the checksum catches it.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let again = Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap();
    assert_eq!(again.source, Source::Compiled, "a corrupt entry is compiled again");
    assert_runs(&again, &handler).await;

    // Truncated (a crash mid-write by something else): compiled again too.
    let len = std::fs::metadata(&files[0]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&files[0]).unwrap().set_len(len / 3).unwrap();
    let again = Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap();
    assert_eq!(again.source, Source::Compiled);
    assert_eq!(
        Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap().source,
        Source::Cache,
        "and rewritten"
    );

    // The engine that counts fuel compiles differently: an entry of its own.
    let metered = Plugin::load(&runtime, Some(&cache), &handler.plugin, On).unwrap();
    assert_eq!((metered.source, metered.fuel()), (Source::Compiled, On));
    assert_eq!(entries_in(dir.path()).len(), 2, "one artifact per engine");
    let metered = Plugin::load(&runtime, Some(&cache), &handler.plugin, On).unwrap();
    assert_eq!((metered.source, metered.fuel()), (Source::Cache, On));
    assert_runs(&metered, &handler).await;
}

/// An artifact is native code that the host runs outside the sandbox, so
/// the cache is trusted only when its folder and the artifact belong to the
/// user the host runs as and no other user can write them; otherwise the
/// plugin is compiled, and nothing is written there. Sluice makes the
/// folder and its files for that user alone.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_other_users_can_write_is_not_trusted() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let redis = RedisServer::start();
    let fx = Fixture::new(&redis, "", "[handlers.h]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\n");
    let handler = fx.config().handlers.remove(0);
    let runtime = Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    let cache = ComponentCache::new(&dir);
    let load = || Plugin::load(&runtime, Some(&cache), &handler.plugin, Off).unwrap().source;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    assert_eq!(load(), Source::Compiled);
    let file = entries_in(&dir).remove(0);
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600), "made for this user alone");
    assert_eq!(load(), Source::Cache);

    chmod(&file, 0o666);
    assert_eq!(load(), Source::Compiled, "an artifact others can write");
    chmod(&file, 0o644);
    assert_eq!(load(), Source::Cache, "readable by others is fine");

    chmod(&dir, 0o777);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(load(), Source::Compiled, "a folder others can write");
    assert!(entries_in(&dir).is_empty(), "nothing written to it");
    chmod(&dir, 0o755);
    assert_eq!(load(), Source::Compiled);
    assert_eq!(load(), Source::Cache);

    // Another user's artifact (root can give it away to show this).
    let me = std::fs::metadata(&dir).unwrap().uid();
    if me == 0 {
        let file = entries_in(&dir).remove(0);
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        assert_eq!(load(), Source::Compiled, "an artifact of another user's");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
        assert_eq!(load(), Source::Cache);
    }
}
