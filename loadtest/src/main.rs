//! `aisle-loadtest`: the command-line shell over the `aisle_loadtest` library.
//!
//! Exit codes: 0 when the run completed (even with request errors: the report says so), 1 when the target is
//! unreachable or the run could not be carried out, 2 for bad arguments.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

fn main() -> anyhow::Result<ExitCode> {
    let cli = aisle_loadtest::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut stdout = std::io::stdout();
    match runtime.block_on(aisle_loadtest::cli::execute(cli, &mut stdout)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("aisle-loadtest: {}", aisle_loadtest::error::chain(&e));
            Ok(ExitCode::from(match e {
                aisle_loadtest::Error::InvalidArgument(_) => 2,
                _ => 1,
            }))
        }
    }
}
