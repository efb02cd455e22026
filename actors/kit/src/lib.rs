//! Small actor building blocks shared by Aisle's actor families.
//!
//! - [`snapshot`]: an actor that owns one versioned bundle and publishes immutable snapshots that decisions read
//!   without a message or a lock (the Policy and Experiment actors are instances).
//! - [`pool`]: a fixed pool of actors addressed by index, whose supervisor restarts a failed member in place
//!   (same index, same arguments) and repoints the routing table (session shards and ranking shards).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pool;
pub mod snapshot;
