//! The files of the bundles a node serves, kept as they were read (or, for bundles built here, as they encode):
//! what the bundle feed sends to store edges, byte for byte, with their SHA-256.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use aisle_domain::bundle::{BundleMeta, sha256_hex};

/// Files kept (the newest; older versions are no longer served).
const KEPT: usize = 12;

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
    /// Its Ed25519 signature (64 bytes), when it came with one.
    pub signature: Option<Arc<Vec<u8>>>,
}

/// A file kept: the key of the bundle parsed from it ([`file_key`]), the file, its SHA-256 and its signature.
type Kept = (String, Arc<Vec<u8>>, String, Option<Arc<Vec<u8>>>);

/// The key a bundle's file is kept under: its version and content hash (two versions may share a payload).
pub fn file_key(meta: &BundleMeta) -> String {
    format!("{}/{}", meta.version, meta.content_hash)
}

/// The files of the bundles this node loaded, by [`file_key`].
#[derive(Debug, Default)]
pub struct BundleFiles {
    files: Mutex<VecDeque<Kept>>,
}

impl BundleFiles {
    /// Keeps the file the bundle `meta` describes was loaded from, with its signature.
    pub fn keep(&self, meta: &BundleMeta, bytes: Arc<Vec<u8>>, signature: Option<Arc<Vec<u8>>>) {
        let key = file_key(meta);
        let digest = sha256_hex(&bytes);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.retain(|(k, ..)| *k != key);
        files.push_back((key, bytes, digest, signature));
        while files.len() > KEPT {
            files.pop_front();
        }
    }

    /// The file of the bundle `meta` describes, if kept.
    pub fn get(&self, meta: &BundleMeta) -> Option<BundleFile> {
        let key = file_key(meta);
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, bytes, digest, signature)| BundleFile {
                version: meta.version.clone(),
                created_at_ms: meta.created_at_ms,
                served_since_ms: meta.loaded_at_ms,
                digest: digest.clone(),
                bytes: bytes.clone(),
                signature: signature.clone(),
            })
    }
}
