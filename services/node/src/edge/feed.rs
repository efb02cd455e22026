//! The cloud's side of the bundle feed: what a node serves, as files an edge can store and load, and the stream
//! that sends them (`EdgeService/SyncBundles`).
//!
//! A node keeps the file each bundle was loaded from ([`crate::bundles::BundleFiles`], by version and content hash
//! of the parsed bundle); the catalog is sent in its file form as the node serves it. Every [`POLL`] the stream compares what the node
//! serves with what the edge holds (by SHA-256 of the file), sends each bundle that differs, whole, and then a
//! `Synced` mark; with no change, a `Synced` mark every [`HEARTBEAT`] tells the edge it is still current. So a
//! promotion or a new rules file reaches a connected edge within [`POLL`], and an edge that reconnects names its
//! digests and receives only what changed meanwhile. Erasures (tombstones) go down the same stream, ahead of
//! bundles: on connecting, every erasure in the journal since the edge's last `Synced` mark (less
//! [`CLOCK_SKEW_MS`]), then each new one; the edge uploads nothing before the first `Synced` mark.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::bundles::Bundles;
use crate::engine::tombstones::Tombstones;

/// How often the stream compares what is served with what the edge holds.
pub const POLL: Duration = Duration::from_millis(250);
/// A `Synced` mark at least this often, so that the edge tells a quiet link from a dead one.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Erasures are sent from this long before the edge's last `Synced` mark (erasures recorded by another member whose
/// clock runs behind).
pub const CLOCK_SKEW_MS: i64 = 60_000;
/// Sends one update; false when the edge hung up.
async fn send(
    tx: &mpsc::Sender<Result<pb::SyncUpdate, tonic::Status>>,
    update: pb::sync_update::Update,
) -> bool {
    tx.send(Ok(pb::SyncUpdate {
        update: Some(update),
    }))
    .await
    .is_ok()
}

/// Feeds one edge until it hangs up: the erasures since `erasures_since_ms` (0: none) and the bundles it lacks,
/// then changes, `Synced` marks and tombstones.
pub async fn run(
    bundles: Arc<Bundles>,
    tombstones: Arc<Tombstones>,
    node_id: String,
    held: BTreeMap<String, String>,
    erasures_since_ms: i64,
    tx: mpsc::Sender<Result<pb::SyncUpdate, tonic::Status>>,
) {
    let mut held = held;
    let mut tombstones_sent: HashSet<(String, i64)> = HashSet::new();
    let mut last_mark: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    let mut catch_up = if erasures_since_ms > 0 {
        tombstones.since(erasures_since_ms.saturating_sub(CLOCK_SKEW_MS))
    } else {
        Vec::new()
    };
    loop {
        tick.tick().await;
        let mut changed = false;
        // Erasures first: an edge back after a long cut erases before anything else arrives.
        for (shopper_ref, at_ms) in catch_up.drain(..).chain(tombstones.live()) {
            if !tombstones_sent.insert((shopper_ref.clone(), at_ms)) {
                continue;
            }
            let update = pb::sync_update::Update::Forgotten(pb::Tombstone {
                shopper_ref,
                forgotten_at_ms: at_ms,
            });
            if !send(&tx, update).await {
                return;
            }
            changed = true;
        }
        for (kind, f) in bundles.files() {
            let kind = kind.name();
            if held.get(kind) == Some(&f.digest) {
                continue;
            }
            let update = pb::sync_update::Update::Bundle(pb::BundleVersion {
                kind: kind.to_string(),
                version: f.version.clone(),
                digest: f.digest.clone(),
                created_at_ms: f.created_at_ms,
                served_since_ms: f.served_since_ms,
                payload: f.bytes.as_ref().clone(),
                signature: f.signature.as_deref().cloned().unwrap_or_default(),
            });
            if !send(&tx, update).await {
                return;
            }
            metrics::counter!("aisle_edge_feed_bundles_sent_total", "kind" => kind).increment(1);
            held.insert(kind.to_string(), f.digest.clone());
            changed = true;
        }
        if changed || last_mark.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            let update = pb::sync_update::Update::Synced(pb::Synced {
                at_ms: aisle_domain::now_ms(),
                node: node_id.clone(),
                erasures_complete_since_ms: tombstones.complete_since(),
            });
            if !send(&tx, update).await {
                return;
            }
            last_mark = Some(tokio::time::Instant::now());
        }
    }
}
