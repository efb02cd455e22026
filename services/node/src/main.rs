//! `aisle`: run a node, or talk to one.

use std::process::ExitCode;

use aisle_node::cli::{AuditCommand, Cli, Command};
use clap::Parser;

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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let config = args.to_config()?;
                aisle_node::init_tracing(config.log_format);
                aisle_node::run(config, aisle_node::shutdown_signal()).await
            }
            Command::Decide(a) => aisle_node::client::decide(a).await,
            Command::Track(a) => aisle_node::client::track(a).await,
            Command::Subscribe(a) => aisle_node::client::subscribe(a).await,
            Command::Forget(a) => aisle_node::client::forget(a).await,
            Command::Bundles(a) => aisle_node::client::bundles(a).await,
            Command::Fault(a) => aisle_node::client::fault(a).await,
            Command::Describe(a) => aisle_node::client::describe(a).await,
            Command::Cluster(a) => aisle_node::client::cluster(a).await,
            Command::Model(a) => aisle_node::client::model(a).await,
            Command::KillSwitch(a) => aisle_node::client::kill_switch(a).await,
            Command::ExportDemo { out } => aisle_node::bundles::demo::export_demo(&out).await,
            Command::Audit(AuditCommand::Verify { paths, json }) => {
                aisle_node::client::audit_verify(&paths, json)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
