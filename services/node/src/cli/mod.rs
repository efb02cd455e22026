//! The `aisle` command line: `serve` runs a node; the other commands are clients of a running node, except
//! `audit verify` and `export-demo`, which work offline.
//!
//! This module is the crate's top: nothing else in the crate imports it. Its map:
//! - here: the commands ([`Cli`], [`Command`], [`AuditCommand`]) and [`run`], which dispatches them;
//! - `serve`: [`ServeArgs`] and their conversion to a [`Config`](crate::Config);
//! - `connect`: what every client command shares — [`AddrArgs`] (the node and the credentials to show it),
//!   connecting, the bearer token, error statuses as errors, printing text or `--json`;
//! - `shopper`: a storefront's calls, `decide` and `track`;
//! - `privacy`: a shopper's data rights, `describe` and `forget`;
//! - `subscribe`: a handheld's stream of assist events;
//! - `fleet`, `cluster`, `kill_switch`: operator commands — `bundles`, `model`, `fault`; `cluster`; `kill-switch`;
//! - `audit`: `audit verify`, offline.
//!
//! Each client command prints a readable summary, or with `--json` one JSON object per answer (per event for
//! `subscribe`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod audit;
mod bundle;
mod cluster;
mod connect;
mod fleet;
mod kill_switch;
mod privacy;
mod serve;
mod shopper;
mod subscribe;

pub use cluster::ClusterArgs;
pub use connect::AddrArgs;
pub use fleet::{FaultArgs, ModelArgs};
pub use kill_switch::KillSwitchArgs;
pub use privacy::ShopperArgs;
pub use serve::ServeArgs;
pub use shopper::{DecideArgs, TrackArgs};
pub use subscribe::SubscribeArgs;

/// Aisle: real-time decisioning for retail personalization.
#[derive(Debug, Parser)]
#[command(name = "aisle", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no bundles given: the embedded demo world).
    Serve(Box<ServeArgs>),
    /// Ask a node for a decision.
    Decide(DecideArgs),
    /// Send a shopper event to a node.
    Track(TrackArgs),
    /// Stream a store's assist events, as a handheld does.
    Subscribe(SubscribeArgs),
    /// Erase what a node holds about a shopper.
    Forget(ShopperArgs),
    /// List the bundles a node has loaded.
    Bundles(AddrArgs),
    /// Inject a fault into a node's decide pipeline (the node must run with --fault-injection).
    Fault(FaultArgs),
    /// Show what the shopper's owner holds about a shopper.
    Describe(ShopperArgs),
    /// Show a node's view of the cluster (members, epoch, a shopper's owner).
    Cluster(ClusterArgs),
    /// Switch models on every member: promote the candidate to default, or roll back.
    Model(ModelArgs),
    /// Turn a kill switch on or off: decisions for a surface and/or channel answer from RULES or GENERIC instead
    /// of the model (on every member, at once, in etcd mode).
    KillSwitch(KillSwitchArgs),
    /// Check a decision trail offline (no node needed).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Sign bundle files, and make signing keys (no node needed).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Write the demo world's bundles (catalog.json, model.bin) to a directory, for nodes started with
    /// --data-dir (a cluster's nodes then serve identical data).
    ExportDemo {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `aisle audit` commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify hash-chained decision trails: exit 0 when every chain is intact, 1 naming the first bad record
    /// otherwise. Each PATH is a live trail file (its sealed segments and head file beside it are included), a
    /// sealed segment, or a directory.
    Verify {
        /// Trail files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `aisle bundle` commands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Sign a bundle file: writes FILE.sig, the Ed25519 signature nodes and edges with --trusted-keys require.
    Sign {
        /// The signing key: Ed25519 PKCS#8, PEM or DER (`aisle bundle keygen`, or `openssl genpkey -algorithm
        /// ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// The bundle file (catalog, model, rules or experiments).
        file: PathBuf,
    },
    /// Make a signing key: writes the private key (PEM, mode 0600) and prints its public key line, for the
    /// trusted-keys file.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a parsed command line: `serve` starts tracing and serves until SIGTERM or SIGINT; any other command
/// prints its answer and returns.
///
/// # Errors
/// An invalid configuration or a node that cannot start (`serve`); a connection failure or error status (client
/// commands); a broken or missing trail (`audit verify`); an unwritable directory (`export-demo`).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.to_config()?;
            crate::init_tracing(config.log_format);
            crate::run(config, crate::shutdown_signal()).await
        }
        Command::Decide(a) => shopper::decide(a).await,
        Command::Track(a) => shopper::track(a).await,
        Command::Subscribe(a) => subscribe::subscribe(a).await,
        Command::Forget(a) => privacy::forget(a).await,
        Command::Bundles(a) => fleet::bundles(a).await,
        Command::Fault(a) => fleet::fault(a).await,
        Command::Describe(a) => privacy::describe(a).await,
        Command::Cluster(a) => cluster::cluster(a).await,
        Command::Model(a) => fleet::model(a).await,
        Command::KillSwitch(a) => kill_switch::kill_switch(a).await,
        Command::ExportDemo { out } => crate::bundles::demo::export_demo(&out).await,
        Command::Audit(AuditCommand::Verify { paths, json }) => audit::verify(&paths, json),
        Command::Bundle(BundleCommand::Sign { key, file }) => bundle::sign(&key, &file),
        Command::Bundle(BundleCommand::Keygen { out }) => bundle::keygen(&out),
    }
}
