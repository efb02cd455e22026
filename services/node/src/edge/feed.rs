//! The cloud's side of the bundle feed: what a node serves, as files an edge can store and load, and the stream
//! that sends them (`EdgeService/SyncBundles`).
//!
//! A node keeps the file each bundle was loaded from ([`BundleFiles`], by the content hash of the parsed bundle);
//! the catalog is sent in its file form as the node serves it. Every [`POLL`] the stream compares what the node
//! serves with what the edge holds (by SHA-256 of the file), sends each bundle that differs, whole, and then a
//! `Synced` mark; with no change, a `Synced` mark every [`HEARTBEAT`] tells the edge it is still current. So a
//! promotion or a new rules file reaches a connected edge within [`POLL`], and an edge that reconnects names its
//! digests and receives only what changed meanwhile. Erasures (tombstones) go down the same stream.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_domain::bundle::{BundleMeta, sha256_hex};
use aisle_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::decider::Decider;

/// How often the stream compares what is served with what the edge holds.
pub const POLL: Duration = Duration::from_millis(250);
/// A `Synced` mark at least this often, so that the edge tells a quiet link from a dead one.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Files kept (the newest; older versions are no longer served).
const KEPT: usize = 12;

/// The bundle kinds on the feed, in the order they are loaded (the catalog before the models bound to it).
pub const KINDS: [&str; 5] = [
    "catalog",
    "model",
    "candidate_model",
    "rules",
    "experiments",
];

/// One bundle as a file.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// Its version label.
    pub version: String,
    /// When it was built (ms since the epoch).
    pub created_at_ms: i64,
    /// Since when this node serves it (ms since the epoch).
    pub served_since_ms: i64,
    /// SHA-256 of `bytes`, lowercase hex.
    pub digest: String,
    /// The file.
    pub bytes: Arc<Vec<u8>>,
}

/// A file kept: the key of the bundle parsed from it ([`file_key`]), the file, and its SHA-256.
type Kept = (String, Arc<Vec<u8>>, String);

/// The key a bundle's file is kept under: its version and content hash (two versions may share a payload).
pub fn file_key(version: &str, content_hash: &str) -> String {
    format!("{version}/{content_hash}")
}

/// The files of the bundles this node loaded, by [`file_key`].
#[derive(Debug, Default)]
pub struct BundleFiles {
    files: Mutex<VecDeque<Kept>>,
}

impl BundleFiles {
    /// Keeps the file the bundle with `key` ([`file_key`]) was loaded from.
    pub fn keep(&self, key: &str, bytes: Arc<Vec<u8>>) {
        let digest = sha256_hex(&bytes);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.retain(|(k, _, _)| k != key);
        files.push_back((key.to_string(), bytes, digest));
        while files.len() > KEPT {
            files.pop_front();
        }
    }

    fn get(&self, meta: &BundleMeta) -> Option<(Arc<Vec<u8>>, String)> {
        let key = file_key(&meta.version, &meta.content_hash);
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, b, d)| (b.clone(), d.clone()))
    }

    /// What `decider` serves now, as files, by kind (a kind is absent when nothing of it is served, e.g. no
    /// candidate model, or when its file is not known).
    pub fn current(&self, decider: &Decider) -> BTreeMap<&'static str, BundleFile> {
        let world = decider.worlds().current();
        let mut out = BTreeMap::new();
        let catalog = &world.catalog.meta;
        let catalog_file = self.get(catalog).unwrap_or_else(|| {
            let bytes =
                Arc::new(serde_json::to_vec(&world.catalog.to_file()).expect("catalogs serialise"));
            self.keep(
                &file_key(&catalog.version, &catalog.content_hash),
                bytes.clone(),
            );
            let digest = sha256_hex(&bytes);
            (bytes, digest)
        });
        out.insert("catalog", file(catalog, catalog_file));
        let models = [
            ("model", Some(&world.default_model)),
            ("candidate_model", world.candidate.as_ref()),
        ];
        for (kind, model) in models {
            if let Some(m) = model
                && let Some(f) = self.get(&m.meta)
            {
                out.insert(kind, file(&m.meta, f));
            }
        }
        let rules = decider.policy().current();
        if let Some(f) = self.get(&rules.meta) {
            out.insert("rules", file(&rules.meta, f));
        }
        let experiments = decider.experiments().current();
        if let Some(f) = self.get(&experiments.meta) {
            out.insert("experiments", file(&experiments.meta, f));
        }
        out
    }
}

fn file(
    meta: &aisle_domain::bundle::BundleMeta,
    (bytes, digest): (Arc<Vec<u8>>, String),
) -> BundleFile {
    BundleFile {
        version: meta.version.clone(),
        created_at_ms: meta.created_at_ms,
        served_since_ms: meta.loaded_at_ms,
        digest,
        bytes,
    }
}

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

/// Feeds one edge until it hangs up: the bundles it lacks, then changes, `Synced` marks and tombstones.
pub async fn run(
    decider: Arc<Decider>,
    files: Arc<BundleFiles>,
    node_id: String,
    held: BTreeMap<String, String>,
    tx: mpsc::Sender<Result<pb::SyncUpdate, tonic::Status>>,
) {
    let mut held = held;
    let mut tombstones_sent: HashSet<(String, i64)> = HashSet::new();
    let mut last_mark: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let mut changed = false;
        let current = files.current(&decider);
        for kind in KINDS {
            let Some(f) = current.get(kind) else { continue };
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
            });
            if !send(&tx, update).await {
                return;
            }
            metrics::counter!("aisle_edge_feed_bundles_sent_total", "kind" => kind).increment(1);
            held.insert(kind.to_string(), f.digest.clone());
            changed = true;
        }
        for (shopper_ref, at_ms) in decider.tombstones().live() {
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
        if changed || last_mark.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            let update = pb::sync_update::Update::Synced(pb::Synced {
                at_ms: aisle_domain::now_ms(),
                node: node_id.clone(),
            });
            if !send(&tx, update).await {
                return;
            }
            last_mark = Some(tokio::time::Instant::now());
        }
    }
}
