//! The shipped config parses; bad configs are rejected with file, line,
//! column, key and reason.

use crate::support::{RedisServer, plugins_dir, repo};
use sluice::config::{Config, ConfigError};
use std::path::Path;

#[test]
fn shipped_config_parses_and_every_plugin_exists() {
    plugins_dir();
    let config = Config::load(&repo().join("config.toml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = config.handlers.iter().map(|h| h.name.as_str()).collect();
    // The shop's chain, then the flows of docs/examples.md.
    let flows = ["orders", "profiles", "saga", "saga-inventory", "saga-payment", "welcome-email"];
    let chain = ["audit", "inventory", "notification", "payment", "shipping"];
    let mut expected: Vec<&str> = chain.into_iter().chain(flows).collect();
    expected.sort();
    assert_eq!(names, expected);
    let payment = config.handler("payment").unwrap();
    assert_eq!(payment.retry.max_attempts, 3);
    assert!(payment.may_publish("payments"));
    assert_eq!(payment.dead_letter_stream("orders"), "orders:dlq");
    assert!(config.redis.url.is_none(), "the example uses the embedded Redis");
}

#[test]
fn the_polyglot_example_config_parses() {
    plugins_dir();
    let config = Config::load(&repo().join("examples/polyglot.toml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = config.handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["profiles", "profiles-js", "profiles-py"]);
}

/// Parses `body` (after a valid `[host]` pointing at the built plugins) as
/// `bad.toml` and returns the error text.
fn error_of(body: &str) -> String {
    let text = format!("[host]\nplugins = \"{}\"\n{body}", plugins_dir().display());
    match Config::parse(Path::new("bad.toml"), &text) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = error_of("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\ntimeuot_ms = 5\n");
    assert!(err.starts_with("bad.toml:6:1:"), "{err}");
    assert!(err.contains("timeuot_ms"), "{err}");
}

#[test]
fn missing_plugin_file_points_at_the_plugin_key() {
    let err = error_of("[handlers.a]\nplugin = \"nope.wasm\"\nstreams = [\"s\"]\n");
    assert!(err.starts_with("bad.toml:4:10: handlers.a.plugin:"), "{err}");
    assert!(err.contains("nope.wasm") && err.contains("does not exist"), "{err}");
}

/// A handler's key-value keys are `sluice:kv:<handler>:<key>`, so a ':' in
/// its name would let handlers "a" and "a:b" share keys.
#[test]
fn a_handler_name_with_a_colon_is_refused() {
    let err = error_of("[handlers.\"a:b\"]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\n");
    assert!(err.starts_with("bad.toml:3:1: handlers.a:b: a handler name must not contain ':'"), "{err}");
}

#[test]
fn bad_value_names_the_limit() {
    let err = error_of("[defaults]\nconcurrency = 0\n");
    assert!(err.starts_with("bad.toml:4:15: defaults.concurrency:"), "{err}");
}

#[test]
fn wrong_type_is_a_parse_error_with_location() {
    let err = error_of("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = \"s\"\n");
    assert!(err.starts_with("bad.toml:5:"), "{err}");
    assert!(err.contains("sequence") || err.contains("array"), "{err}");
}

#[test]
fn bad_glob_is_named() {
    let err = error_of("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\nevents = [\"order.[\"]\n");
    assert!(err.contains("handlers.a.events.0") && err.contains("bad glob"), "{err}");
}

#[test]
fn a_bad_stream_format_is_named_with_its_line() {
    let err = error_of("[streams.\"orders\"]\nformat = \"avro\"\n");
    assert!(err.starts_with("bad.toml:4:10:"), "{err}");
    assert!(err.contains("avro") && err.contains("cloudevents") && err.contains("leanmq"), "{err}");
    let err = error_of("[streams.\"orders\"]\nformat = \"cloudevents\"\ntype_key = \"kind\"\n");
    assert!(err.starts_with("bad.toml:5:12: streams.orders.type_key:"), "{err}");
    assert!(err.contains("only with format = \"leanmq\""), "{err}");
    let err = error_of(
        "[streams.\"dapr.*\"]\nformat = \"cloudevents\"\n[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"dapr.orders\", \"orders\"]\norder_by = \"data.id\"\n",
    );
    assert!(err.contains("handlers.a.order_by") && err.contains("streams of one kind"), "{err}");
}

#[test]
fn dead_letter_into_a_consumed_stream_is_refused() {
    let err = error_of("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\ndead_letter = \"s\"\n");
    assert!(err.contains("handlers.a.dead_letter"), "{err}");
}

#[test]
fn unset_env_var_in_redis_url_is_named_and_set_one_expands() {
    let err = error_of("[redis]\nurl = \"redis://:${SLUICE_TEST_UNSET_VAR}@127.0.0.1:1\"\n");
    assert!(err.contains("redis.url") && err.contains("SLUICE_TEST_UNSET_VAR"), "{err}");
    // SAFETY: this test is the only user of this variable.
    unsafe { std::env::set_var("SLUICE_TEST_PW", "pw") };
    let text = format!(
        "[host]\nplugins = \"{}\"\n[redis]\nurl = \"redis://:${{SLUICE_TEST_PW}}@127.0.0.1:1\"\n",
        plugins_dir().display()
    );
    let config = Config::parse(Path::new("ok.toml"), &text).unwrap();
    assert_eq!(config.redis.url.as_deref(), Some("redis://:pw@127.0.0.1:1"));
}

#[test]
fn claim_idle_must_exceed_timeouts() {
    let text = format!(
        "[host]\nplugins = \"{}\"\nclaim_idle_ms = 100\n[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\ntimeout_ms = 500\n",
        plugins_dir().display()
    );
    let err = Config::parse(Path::new("c.toml"), &text).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "host.claim_idle_ms"), "{err}");
}

#[test]
fn a_plugin_that_is_not_a_component_is_rejected_by_check() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm at all").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[host]\nplugins = \".\"\n[handlers.j]\nplugin = \"junk.wasm\"\nstreams = [\"s\"]\n",
            redis.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("junk.wasm") && stderr.contains("not a valid WebAssembly component"), "{stderr}");
}

#[test]
fn two_handlers_may_not_share_a_group_on_one_stream() {
    let err = error_of(
        "[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\ngroup = \"g\"\n\
         [handlers.b]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\ngroup = \"g\"\n",
    );
    assert!(err.contains("handlers.b.group") && err.contains("both read stream s through group g"), "{err}");
}

#[test]
fn total_concurrency_must_fit_the_instance_pool() {
    let handler =
        |i: usize| format!("[handlers.h{i}]\nplugin = \"behave.wasm\"\nstreams = [\"s{i}\"]\nconcurrency = 500\n");
    let err = error_of(&(0..5).map(handler).collect::<String>());
    assert!(err.contains("concurrency adds up to 2500; the host runs at most 2048 events at once"), "{err}");
}

#[test]
fn a_bad_order_by_names_its_line_and_says_what_it_takes() {
    let err = error_of("[handlers.a]\nplugin = \"behave.wasm\"\nstreams = [\"s\"]\norder_by = \"data.\"\n");
    assert!(err.starts_with("bad.toml:6:12: handlers.a.order_by:"), "{err}");
    assert!(err.contains("\"data.KEY\""), "{err}");
}

#[test]
fn admin_token_needs_the_admin_listener_and_a_value() {
    let err = error_of("admin_token = \"t\"\n");
    assert!(err.starts_with("bad.toml:3:15: host.admin_token:") && err.contains("needs [host] admin"), "{err}");
    let err = error_of("admin = \"127.0.0.1:9464\"\nadmin_token = \"\"\n");
    assert!(err.contains("host.admin_token") && err.contains("is empty"), "{err}");
    let text = format!(
        "[host]\nplugins = \"{}\"\nadmin = \"127.0.0.1:9464\"\nadmin_token = \"$${{x}}\"\n",
        plugins_dir().display()
    );
    let config = Config::parse(Path::new("ok.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.admin_token.as_deref(), Some("${x}"));
}

#[test]
fn sentinels_name_the_primary_in_the_url_and_not_with_a_cluster() {
    let sentinels = "sentinels = [\"redis://127.0.0.1:26379\"]";
    let with_port = error_of(&format!("[redis]\nurl = \"redis://mymaster:6379\"\n{sentinels}\n"));
    assert!(
        with_port.contains("redis.url") && with_port.contains("by the name the sentinels know it by"),
        "{with_port}"
    );
    let no_url = error_of(&format!("[redis]\n{sentinels}\n"));
    assert!(no_url.contains("redis.sentinels") && no_url.contains("url names the primary"), "{no_url}");
    let cluster = error_of(&format!("[redis]\nurl = \"redis://mymaster\"\ncluster = true\n{sentinels}\n"));
    assert!(cluster.contains("exclude each other"), "{cluster}");
    let escaped = error_of(&format!("[redis]\nurl = \"redis://my%20master\"\n{sentinels}\n"));
    assert!(escaped.contains("redis.url") && escaped.contains("no %-escapes"), "{escaped}");
    let mixed = error_of(
        "[redis]\nurl = \"redis://mymaster\"\nsentinels = [\"rediss://s:pw@h:26379\", \"redis://s:pw@h2:26379\"]\n",
    );
    assert!(mixed.contains("sentinel 2 differs from the first"), "{mixed}");
    let empty = error_of("[redis]\nurl = \"redis://mymaster\"\nsentinels = []\n");
    assert!(empty.contains("at least one sentinel"), "{empty}");
    let bad =
        error_of("[redis]\nurl = \"redis://mymaster\"\nsentinels = [\"redis://127.0.0.1:26379\", \"http://x\"]\n");
    assert!(bad.contains("sentinel 2 is not a redis:// or rediss:// URL"), "{bad}");
    let text = format!(
        "[host]\nplugins = \"{}\"\n[redis]\nurl = \"redis://sluice:pw@mymaster\"\n{sentinels}\n",
        plugins_dir().display()
    );
    let config = Config::parse(Path::new("ok.toml"), &text).unwrap();
    assert_eq!(config.redis.sentinels, ["redis://127.0.0.1:26379"]);
}
