//! The node's logs, written off the request path so that a request never waits on disk:
//!
//! - the **event log**: every shopper event applied with the shopper's consent, one JSON line each, in the format
//!   `aisle-train` reads, the shopper named by pseudonym;
//! - the **decision trail**: one hash-chained record per decision and per admin action, whose erasable subject is
//!   the shopper's pseudonym; `aisle audit verify` checks it offline.
//!
//! Modules:
//!
//! - [`journal`]: the segmented, durable log both are written to — the writer task, group commit, rotation,
//!   retention, the hash chain, erasure by rewriting, the verifier.
//! - [`audit`]: what the records hold, and opening both logs from the node's configuration.
//!
//! Watching whether the logs can be written (and saying so in `/readyz`) belongs to the node's start-up, in
//! `server`: the logs know nothing of the HTTP plane.

pub mod audit;
pub mod journal;
