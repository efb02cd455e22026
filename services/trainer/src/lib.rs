//! The Aisle trainer (`aisle-train`): trains ranking models offline with linfa from shopping sessions, applies
//! them offline or through a running node, and evaluates them against the published session-based baselines.
//!
//! - [`data`]: reading sessions (rsc15 TSV, OTTO JSON lines, Aisle event logs).
//! - [`predict`]: offline predictions through the node's own ranking path, and session-rec's CSV format.
//! - [`via`]: the same predictions through a node's gRPC API (`Track` each event, then `Decide`).
//! - [`metrics`], [`baselines`], [`eval`]: HR@k/MRR@k, the POP, S-POP, AR, SR and V-SKNN baselines, the protocol.
//! - [`cli`]: the command line.
//!
//! Training itself (generators, examples, the logistic regression) lives in `aisle_ranking::fit`, beside the
//! feature code the node serves with: there is one implementation of both.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod baselines;
pub mod cli;
pub mod data;
pub mod eval;
pub mod metrics;
pub mod predict;
pub mod via;
