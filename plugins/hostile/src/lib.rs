//! `hostile`: a test fixture that attacks the sandbox, one attack per event.
//!
//! The event's `data.action` picks the attack. An attack the sandbox stops by
//! a limit traps (the host dead-letters it with the limit as the reason). An
//! attack the sandbox stops by denying access returns
//! `reject("contained: <what happened>")`. A `reject` that does not start
//! with `contained:`, or an `ok`, means the attack worked.
//!
//! | `action`        | attack                                                  | expected containment            |
//! |-----------------|---------------------------------------------------------|---------------------------------|
//! | `recurse`       | unbounded recursion                                     | trap (stack exhausted)          |
//! | `print_flood`   | 8 MiB to stdout                                         | `stdout limit exceeded`         |
//! | `log_flood`     | a million `host.log` calls                              | `log limit exceeded`            |
//! | `publish_flood` | a hundred thousand publishes to a granted stream        | `publish limit exceeded`        |
//! | `kv_flood`      | a hundred thousand `kv.set` calls                       | `kv limit exceeded`             |
//! | `kv_read_flood` | a hundred thousand `kv.get` calls, each a Redis call    | `kv limit exceeded`             |
//! | `read_file`     | read `/etc/passwd`, list `/` and `.`                    | `contained: ...`                |
//! | `env`           | read the environment and arguments                      | `contained: ...`                |
//! | `socket`        | open a TCP connection to `data.addr`                    | `contained: ...`                |
//! | `resource_flood`| hold a hundred thousand HTTP header maps in the host    | trap (no free resource keys)    |
//! | `header_flood`  | one HTTP header map with a 64 KiB value                 | `contained: ...`                |
//! | `reason_flood`  | reject with a 4 MiB reason                              | reason cut to 4 KiB             |
//! | `plant`         | leave a secret in memory, then succeed                  | (ok)                            |
//! | `peek`          | look for the secret a previous event planted            | ok if memory is fresh           |

use std::hint::black_box;

use serde_json::Value;
use wasip2::http::types::Fields;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::sluice::plugin::handler::Guest;
use sluice::plugin::host::{Level, log, publish};
use sluice::plugin::kv;
use sluice::plugin::types::{Event, Failure};

/// What `plant` leaves behind and `peek` looks for.
const SECRET: &[u8; 16] = b"s3cr3t-0f-ev3nt1";

/// A static buffer: in a reused instance it would keep its contents.
static mut VAULT: [u8; 16] = [0; 16];

/// The handler; see the crate documentation.
struct Hostile;

impl Guest for Hostile {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
        match data["action"].as_str().unwrap_or_default() {
            "recurse" => {
                black_box(recurse(black_box(1)));
                Ok(())
            }
            "print_flood" => {
                let line = "x".repeat(1023);
                for _ in 0..8 * 1024 {
                    println!("{line}");
                }
                Ok(())
            }
            "log_flood" => {
                for i in 0..1_000_000 {
                    log(Level::Info, &format!("flood {i}"));
                }
                Ok(())
            }
            "publish_flood" => {
                let stream = data["stream"].as_str().unwrap_or("out");
                for _ in 0..100_000 {
                    let _ = publish(stream, "flood", b"{}");
                }
                Ok(())
            }
            "kv_flood" => {
                for i in 0..100_000 {
                    kv::set(&format!("k{i}"), b"v", None);
                }
                Ok(())
            }
            "kv_read_flood" => {
                for i in 0..100_000 {
                    let _ = black_box(kv::get(&format!("r{i}")));
                }
                Ok(())
            }
            "read_file" => contained("read_file", read_files()),
            "env" => contained("env", read_env()),
            "socket" => contained("socket", connect(data["addr"].as_str().unwrap_or("127.0.0.1:6379"))),
            "resource_flood" => {
                // Each is a resource in the host's memory, not the plugin's.
                let held: Vec<Fields> = (0..100_000).map(|_| Fields::new()).collect();
                log(Level::Error, &format!("resource_flood succeeded: {} header maps held", black_box(&held).len()));
                Ok(())
            }
            "header_flood" => contained("header_flood", big_header()),
            // A reason the host would carry into its log and the dead letter.
            "reason_flood" => Err(Failure::Reject("x".repeat(4 << 20))),
            "plant" => {
                // SAFETY: one thread; the static is only read in `peek`.
                unsafe { VAULT = *SECRET };
                black_box(SECRET.to_vec().leak());
                Ok(())
            }
            "peek" => {
                // SAFETY: as above.
                let vault = unsafe { VAULT };
                if vault == *SECRET {
                    Err(Failure::Reject("LEAK: saw the secret a previous event planted".into()))
                } else {
                    Ok(())
                }
            }
            other => Err(Failure::Reject(format!("unknown action {other}"))),
        }
    }
}

/// `Err(reject("contained: <what>: <why>"))` when the attack was denied,
/// `Ok` (the attack worked) otherwise.
fn contained(what: &str, attempt: Result<String, String>) -> Result<(), Failure> {
    match attempt {
        Ok(got) => {
            log(Level::Error, &format!("{what} succeeded: {got}"));
            Ok(())
        }
        Err(why) => Err(Failure::Reject(format!("contained: {what}: {why}"))),
    }
}

fn read_files() -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
        return Ok(format!("read /etc/passwd ({} bytes)", text.len()));
    }
    for dir in ["/", "."] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            return Ok(format!("listed {dir}: {} entries", entries.count()));
        }
    }
    Err("no file or folder could be opened".into())
}

fn read_env() -> Result<String, String> {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args = std::env::args().count();
    match (vars.is_empty(), args) {
        (true, 0) => Err("no environment variables and no arguments".into()),
        _ => Ok(format!("{} variables ({}), {args} arguments", vars.len(), vars.join(","))),
    }
}

fn connect(addr: &str) -> Result<String, String> {
    match std::net::TcpStream::connect(addr) {
        Ok(_) => Ok(format!("connected to {addr}")),
        Err(e) => Err(format!("connect to {addr}: {e}")),
    }
}

/// Makes a header map holding one 64 KiB value.
fn big_header() -> Result<String, String> {
    match Fields::from_list(&[("x-flood".to_owned(), vec![b'a'; 64 << 10])]) {
        Ok(_) => Ok("a 64 KiB header value accepted".to_owned()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Recurses without end (the guard never holds); each frame keeps some
/// stack so it is not turned into a loop.
fn recurse(n: u64) -> u64 {
    if black_box(n) == 0 {
        return 0;
    }
    let pad = black_box([n; 16]);
    recurse(black_box(n + 1)) + pad[3]
}

export!(Hostile);
