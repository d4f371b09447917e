//! The `sluice` binary: parses the command line, sets up logging, and calls
//! the library. Errors print with their causes and exit 1.

use clap::Parser;
use sluice::cli::Cli;
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc, which took a sixth of the host's CPU
/// under load: see docs/performance.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::logging::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("start tokio runtime");
    let result = runtime.block_on(sluice::cli::execute(cli.command));
    // Every task that matters has finished; a plugin still compiling (the
    // host was stopped while starting) is not waited for.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
