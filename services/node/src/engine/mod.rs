//! The engine: what a node decides with, below the cluster and the API. It knows nothing of other nodes, of
//! protobuf or of the logs: the caller says how a decision may be served ([`decision::Serve`]) and records what
//! came out.
//!
//! - [`decider`]: the decide pipeline and its fallback ladder (the rungs are pure functions in
//!   [`decider::ladder`]).
//! - [`decision`]: the types of one decision (input, items, tier, typed fallback reasons).
//! - [`shoppers`]: the shopper state of a node — sessions, the CACHED rung, pseudonyms and tombstones — and what
//!   applying, reading and forgetting a shopper's events does to it.
//! - [`cache`], [`tombstones`]: the CACHED rung; forgotten shoppers.
//! - [`kill_switch`]: operators' kill switches, as decisions read them.
//! - [`faults`]: fault injection for fallback drills.

pub mod cache;
pub mod decider;
pub mod decision;
pub mod faults;
pub mod kill_switch;
pub mod shoppers;
pub mod tombstones;
