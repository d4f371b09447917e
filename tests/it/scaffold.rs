//! `sluice new`: each language's project builds with its own `build.sh`
//! and its handler accepts the sample event and rejects bad input, through
//! `sluice invoke`.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Output};

fn sluice(dir: &Path, args: &[&str]) -> Output {
    // Compiled components are cached in the test's folder, not the user's.
    let cache = dir.join(".cache");
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .env("XDG_CACHE_HOME", cache)
        .args(args)
        .output()
        .expect("run sluice")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Scaffolds `name` in `lang` under a temp `plugins/`, builds it, and runs it
/// on its sample event and on a bad one.
fn scaffold_builds_and_runs(name: &str, lang: &str) {
    // The project's own tools, as scripts/build-plugins installed them, so
    // build.sh does not download them again.
    let tools = [repo().join("plugins/.tools/py/bin"), repo().join("plugins/js/node_modules/.bin")];
    plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = sluice(dir.path(), &["new", name, "--lang", lang]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("[handlers.{name}]")), "{}", text(&out));

    let path =
        std::env::join_paths(tools.iter().cloned().chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
            .unwrap();
    let build = Command::new(dir.path().join("plugins").join(name).join("build.sh"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", repo().join("plugins/target"))
        .output()
        .expect("run build.sh");
    assert!(build.status.success(), "{name}/build.sh failed:\n{}", text(&build));
    let wasm = format!("plugins/dist/{name}.wasm");
    assert!(dir.path().join(&wasm).is_file(), "{}", text(&build));

    let event = format!("plugins/{name}/event.json");
    let ran = sluice(dir.path(), &["invoke", &wasm, "--event", &event]);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    assert!(text(&ran).contains("order.created 1700000000000-0 (attempt 1): 4 field(s)"), "{}", text(&ran));

    std::fs::write(dir.path().join("bad.json"), r#"{"stream": "orders", "type": "t", "data": [1, 2]}"#).unwrap();
    let bad = sluice(dir.path(), &["invoke", &wasm, "--event", "bad.json"]);
    assert_eq!(bad.status.code(), Some(4), "{}", text(&bad));
    assert!(text(&bad).contains("dead-letter it to orders:dlq: data is not a JSON object"), "{}", text(&bad));
}

#[test]
fn a_new_rust_handler_builds_and_runs() {
    scaffold_builds_and_runs("greeter-rs", "rust");
}

#[test]
fn a_new_python_handler_builds_and_runs() {
    scaffold_builds_and_runs("greeter-py", "python");
}

#[test]
fn a_new_javascript_handler_builds_and_runs() {
    scaffold_builds_and_runs("greeter-js", "js");
}

#[test]
fn new_refuses_an_existing_folder_and_a_bad_name() {
    let dir = tempfile::tempdir().unwrap();
    assert!(sluice(dir.path(), &["new", "h", "--lang", "rust"]).status.success());
    let again = sluice(dir.path(), &["new", "h", "--lang", "js"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("plugins/h already exists"), "{}", text(&again));
    let bad = sluice(dir.path(), &["new", "../h", "--lang", "js"]);
    assert!(text(&bad).contains("is not a handler name"), "{}", text(&bad));
}
