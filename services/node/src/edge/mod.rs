//! Store edges: a node started with `role = "edge"` serves one store's channels — kiosks, POS, the app and
//! handhelds in the store — next to the shopper, while the cloud cluster (its `upstream`) keeps owning models,
//! rules, experiments and the shoppers' sessions of record (docs/architecture.md, "Edge and cloud").
//!
//! - [`link`]: the edge's client of the cloud, and the bundle files it holds on disk — below the node context.
//! - [`role`]: what the edge does with it — follow the bundle feed, copy sessions in and hand them back, decide
//!   and track in the store — above it, beside the per-shopper use cases.
//! - [`feed`]: the cloud's side of the bundle feed (`EdgeService/SyncBundles`).

pub mod feed;
pub mod link;
pub mod role;
