//! `aisle`: run a node, or talk to one.

use std::process::ExitCode;

use aisle_node::cli::Cli;
use clap::Parser;

/// mimalloc instead of glibc's allocator: a Decide allocates and frees some 65 blocks (candidate lists, response
/// strings, the copy kept for the CACHED rung). Measured with callgrind on the demo world, glibc's malloc and free
/// took about 42,000 of a Decide's 198,000 instructions, mimalloc's about 12,000 (and a health check's 7,000 fell
/// to 3,500).
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
