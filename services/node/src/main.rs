//! `aisle`: run a node, or talk to one.

use std::process::ExitCode;

use aisle_node::cli::Cli;
use clap::Parser;

/// mimalloc instead of the system allocator: a decision allocates and frees some seventy blocks (response strings,
/// candidate lists, cache entries), and glibc's malloc and free took about a tenth of the node's CPU for it
/// (`docs/BENCHMARKS.md`, and the perf report of this change).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aisle_node::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
