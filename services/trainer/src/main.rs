//! `aisle-train`: offline training, prediction and evaluation of Aisle ranking models. See [`aisle_trainer::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = aisle_trainer::cli::Cli::parse();
    match aisle_trainer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
