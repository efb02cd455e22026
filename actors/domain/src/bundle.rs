//! The envelope of every versioned artifact Aisle loads: catalog, model, rules, experiments.
//!
//! JSON bundles (catalog, rules, experiments) carry `format_version`, `version` and `created_at_ms` at the top level;
//! their content hash is the SHA-256 of the file's bytes, computed on load. Binary bundles (models) are
//! [`BinaryEnvelope`]s: a magic line, a JSON header that declares the payload's SHA-256, then the payload; the hash
//! is checked on load, so a truncated or corrupted file is refused.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::TimestampMs;

/// What a bundle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleKind {
    /// Items, categories, offers.
    Catalog,
    /// A ranking model.
    Model,
    /// Guardrail rules.
    Rules,
    /// Experiments.
    Experiments,
}

impl BundleKind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleKind::Catalog => "catalog",
            BundleKind::Model => "model",
            BundleKind::Rules => "rules",
            BundleKind::Experiments => "experiments",
        }
    }
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle declares a format this build does not read.
    #[error(
        "{kind} bundle has format version {found}, this build reads format version {supported}"
    )]
    UnsupportedFormat {
        /// Kind of bundle.
        kind: BundleKind,
        /// Declared format version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The payload does not match its declared content hash.
    #[error(
        "{kind} bundle is corrupt: content hash {actual} does not match the declared {declared}"
    )]
    HashMismatch {
        /// Kind of bundle.
        kind: BundleKind,
        /// Declared hash.
        declared: String,
        /// Hash of the bytes read.
        actual: String,
    },
    /// The bundle is malformed or inconsistent.
    #[error("{kind} bundle is invalid: {reason}")]
    Invalid {
        /// Kind of bundle.
        kind: BundleKind,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The bundle could not be read.
    #[error("cannot read {kind} bundle {path}: {source}")]
    Io {
        /// Kind of bundle.
        kind: BundleKind,
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl BundleError {
    /// An [`BundleError::Invalid`] error.
    pub fn invalid(kind: BundleKind, reason: impl Into<String>) -> Self {
        BundleError::Invalid {
            kind,
            reason: reason.into(),
        }
    }
}

/// Identity of a loaded bundle, reported by `BundleStatus` and in every decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    /// What it holds.
    pub kind: BundleKind,
    /// Its file format version.
    pub format_version: u32,
    /// Its version label.
    pub version: String,
    /// When it was built (ms since the epoch; 0 when not declared).
    pub created_at_ms: TimestampMs,
    /// SHA-256 of its payload, lowercase hex.
    pub content_hash: String,
    /// Where it was loaded from.
    pub source: String,
    /// When this node loaded it.
    pub loaded_at_ms: TimestampMs,
}

impl BundleMeta {
    /// Metadata for a bundle whose payload is `bytes`, loaded now.
    pub fn computed(
        kind: BundleKind,
        format_version: u32,
        version: &str,
        created_at_ms: TimestampMs,
        bytes: &[u8],
    ) -> Self {
        Self {
            kind,
            format_version,
            version: version.to_string(),
            created_at_ms,
            content_hash: sha256_hex(bytes),
            source: String::new(),
            loaded_at_ms: crate::now_ms(),
        }
    }

    /// The same metadata with a source.
    pub fn with_source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The first line of every binary bundle.
const MAGIC: &[u8] = b"AISLE-BUNDLE\n";

/// A binary bundle: magic line, a JSON header line declaring the payload's hash, then the payload bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryEnvelope<H> {
    /// The header (kind-specific; must include the fields of [`EnvelopeHeader`]).
    pub header: H,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// The fields every binary bundle header has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    /// What it holds.
    pub kind: BundleKind,
    /// Format version of the payload.
    pub format_version: u32,
    /// Version label.
    pub version: String,
    /// When it was built.
    pub created_at_ms: TimestampMs,
    /// SHA-256 of the payload, lowercase hex.
    pub content_hash: String,
}

impl<H: Serialize + for<'de> Deserialize<'de>> BinaryEnvelope<H> {
    /// Serialises the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("bundle headers serialise");
        let mut out = Vec::with_capacity(MAGIC.len() + header.len() + 1 + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&header);
        out.push(b'\n');
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses an envelope and checks its payload against the declared hash and kind.
    ///
    /// # Errors
    /// Refuses bytes without the magic line or header, a header of another kind, or a payload whose SHA-256
    /// differs from the declared one.
    pub fn from_bytes(kind: BundleKind, bytes: &[u8]) -> Result<Self, BundleError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| BundleError::invalid(kind, "not an Aisle bundle (no magic line)"))?;
        let newline = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| BundleError::invalid(kind, "no header line"))?;
        let common: EnvelopeHeader = serde_json::from_slice(&rest[..newline])
            .map_err(|e| BundleError::invalid(kind, format!("header: {e}")))?;
        if common.kind != kind {
            return Err(BundleError::invalid(
                kind,
                format!("header.kind: this is a {} bundle", common.kind),
            ));
        }
        let header: H = serde_json::from_slice(&rest[..newline])
            .map_err(|e| BundleError::invalid(kind, format!("header: {e}")))?;
        let payload = rest[newline + 1..].to_vec();
        let actual = sha256_hex(&payload);
        if actual != common.content_hash {
            return Err(BundleError::HashMismatch {
                kind,
                declared: common.content_hash,
                actual,
            });
        }
        Ok(Self { header, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(payload: &[u8]) -> BinaryEnvelope<EnvelopeHeader> {
        BinaryEnvelope {
            header: EnvelopeHeader {
                kind: BundleKind::Model,
                format_version: 1,
                version: "m1".into(),
                created_at_ms: 5,
                content_hash: sha256_hex(payload),
            },
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn envelope_round_trips_and_detects_corruption() {
        let bytes = envelope(b"payload").to_bytes();
        let back = BinaryEnvelope::<EnvelopeHeader>::from_bytes(BundleKind::Model, &bytes).unwrap();
        assert_eq!(back.payload, b"payload");
        let mut corrupt = bytes.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        let err =
            BinaryEnvelope::<EnvelopeHeader>::from_bytes(BundleKind::Model, &corrupt).unwrap_err();
        assert!(matches!(err, BundleError::HashMismatch { .. }), "{err}");
        let err =
            BinaryEnvelope::<EnvelopeHeader>::from_bytes(BundleKind::Rules, &bytes).unwrap_err();
        assert!(err.to_string().contains("header.kind"), "{err}");
        assert!(BinaryEnvelope::<EnvelopeHeader>::from_bytes(BundleKind::Model, b"junk").is_err());
    }
}
