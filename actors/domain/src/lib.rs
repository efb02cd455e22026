//! Aisle's plain domain types, shared by every actor family, the node, the trainer and the load generator.
//!
//! Nothing here is async or does I/O beyond reading and writing bundle bytes; everything is deterministic so that
//! the node, the trainer and the tests agree on ids, hashes and the demo world.
//!
//! - [`request`]: who asks, where and how (surface, channel, shopper attributes).
//! - [`event`]: what shoppers do (views, searches, carts, store visits) as the session and the trainer see it.
//! - [`catalog`]: items, categories, brands and offers, indexed for serving.
//! - [`bundle`]: the envelope of every versioned artifact (format version, version, content hash, created-at).
//! - [`demo`]: the deterministic demo world a node serves when it is given no data.
//! - [`session`]: the read-only view of a session that ranking works from.
//! - [`hash`] and [`rng`]: stable hashing (assignment, placement), and a small seeded generator with a Zipf sampler
//!   (the demo world, the trainer's sampling, the load generator's request streams).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod catalog;
pub mod demo;
pub mod event;
pub mod hash;
pub mod request;
pub mod rng;
pub mod session;

/// Milliseconds since the Unix epoch.
pub type TimestampMs = i64;

/// The longest id (shopper, item, store, request) the API accepts, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as TimestampMs)
        .unwrap_or(0)
}
