//! The command line: what each argument means (`args`), what each
//! subcommand does ([`execute`]), and how the operator commands print
//! (`operate`). `main.rs` parses, then calls [`execute`].

mod args;
mod execute;
mod operate;

pub use args::{Cli, Command, ConfigArg, DEFAULT_CONFIG, DlqCommand, DlqFilter, KvCommand};
pub use execute::{execute, shutdown_signal};
