//! `spin-redis`: a test fixture written the way a Spin Redis-trigger
//! component is, to prove Sluice runs such components unchanged.
//!
//! It is built like Spin's Rust SDK builds one: `wit_bindgen::generate!` on
//! Spin's own WIT (vendored as-is in `plugins/vendor/spin/wit`), world
//! `fermyon:spin/redis-trigger`, exporting `fermyon:spin/inbound-redis`. It
//! calls none of Spin's platform imports, so the built component imports
//! only WASI (wit-component drops the imports a component never uses).
//!
//! The host hands `handle-message` the event's `data`; this fixture reads it
//! as a JSON object with an `action` field:
//!
//! | payload                            | what `handle-message` does                               |
//! |------------------------------------|----------------------------------------------------------|
//! | `{"action":"ok"}`, not JSON, or any other `action` | prints `spin got <payload>` to stdout, returns `Ok` |
//! | `{"action":"error"}`               | returns `Err(Error::Error)` (Sluice retries it)           |
//! | `{"action":"trap"}`                | panics (`asked to trap`), which traps                    |
//! | `{"action":"second"}`              | returns `Ok` if this instance handled a message before, else `Err(Error::Error)`: it succeeds only in a reused instance |

use serde_json::Value;

wit_bindgen::generate!({
    path: "../vendor/spin/wit",
    world: "fermyon:spin/redis-trigger",
});

use exports::fermyon::spin::inbound_redis::Guest;
use fermyon::spin::redis_types::{Error, Payload};

/// Messages this instance has been handed, this one included.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The handler; see the crate documentation.
struct SpinRedis;

impl Guest for SpinRedis {
    fn handle_message(message: Payload) -> Result<(), Error> {
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let data: Value = serde_json::from_slice(&message).unwrap_or(Value::Null);
        match data["action"].as_str() {
            Some("error") => Err(Error::Error),
            Some("second") if handled < 2 => Err(Error::Error),
            Some("trap") => panic!("asked to trap"),
            _ => {
                println!("spin got {}", String::from_utf8_lossy(&message));
                Ok(())
            }
        }
    }
}

export!(SpinRedis);
