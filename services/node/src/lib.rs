//! The Aisle node.
//!
//! - [`server`]: loading bundles, starting actors and services, graceful shutdown (`run(config, shutdown)`).
//! - [`decision`]: the types of one decision (input, answer, tier, typed fallback reasons).
//! - [`decider`]: the decide pipeline and its fallback ladder, event application, erasure — below the cluster
//!   and the API; [`node`]: the node's context (configuration, decider, cluster, push) that the services share.
//! - [`routing`]: running a per-shopper request at the shopper's owner (here or forwarded), in one loop.
//! - [`api`]: the gRPC services and request validation; [`error`]: the one error-to-status mapping.
//! - [`world`]: the catalog and models as one snapshot, owned by the world keeper actor.
//! - [`push`] and [`assist`]: per-store assist events for associates' handhelds.
//! - [`cache`], [`faults`], [`admission`]: the CACHED rung, fault injection and overload protection.
//! - [`logs`]: the segmented logs (the event log; the hash-chained decision trail) and what they record;
//!   [`durable`]: writing files that must survive a crash (atomic replacement, directory sync, numbered segments).
//! - [`privacy`] and [`erasure`]: keyed pseudonyms and tombstones; ForgetShopper and access requests on every member.
//! - [`auth`] and [`tls`]: who may call what, and transport security (certificates re-read without a restart).
//! - [`http`], [`metrics`], [`readiness`]: the HTTP plane.
//! - [`control`]: the control records in etcd — kill switches, the fleet's versions and what each member serves.
//! - [`cli`] and [`client`]: the `aisle` command line.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod assist;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod decider;
pub mod decision;
pub mod durable;
pub mod edge;
pub mod erasure;
pub mod error;
pub mod faults;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod privacy;
pub mod push;
pub mod readiness;
pub mod routing;
pub mod server;
pub mod tls;
pub mod world;
mod x509;

pub use config::Config;
pub use server::{Prepared, RunningNode, prepare, run, start};

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
