//! The Aisle node: one binary (`aisle`) that serves decisions, takes shopper events, pushes assist events to
//! store associates, runs in a cluster or at a store's edge, and talks to a node from the command line.
//!
//! The modules are layers; an import only ever points down the list (docs/architecture.md draws it):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | composition | [`server`], [`cli`] | assembling a node from its configuration, serving its ports, shutting down; the command line |
//! | adapters | [`api`] | the gRPC services: protobuf in, a use case called, protobuf out |
//! | use cases | [`shopper`], [`edge`] | per-shopper requests (decide, track with the outbox, describe, fetch, erase, validation); a store edge's role |
//! | context | [`node`] | what every use case shares: configuration, decider, shopper state, logs, bundles, cluster, control, outbox, push |
//! | services | [`cluster`], [`control`], [`push`] | membership, owner routing and fan-out, hand-off, replication; control records in etcd; assist events per store |
//! | core | [`engine`], [`bundles`], [`logs`], [`durable`] | the decide pipeline and the shopper state it reads; every bundle kind; the event log and decision trail; files that survive a crash (the Track outbox) |
//! | leaves | [`config`], [`error`], [`security`], [`http`] | configuration; the one error-to-status mapping; who may call, TLS, pseudonyms; the HTTP plane |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod bundles;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod durable;
pub mod edge;
pub mod engine;
pub mod error;
pub mod http;
pub mod logs;
pub mod node;
pub mod push;
pub mod security;
pub mod server;
pub mod shopper;

#[cfg(test)]
mod testing;

pub use bundles::{Prepared, prepare};
pub use config::Config;
pub use server::{RunningNode, run, start};

/// Starts logging to stderr in the configured format; `RUST_LOG` (or `AISLE_LOG`) selects levels (default info).
pub fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AISLE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
