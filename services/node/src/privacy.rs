//! Pseudonyms: what stands for a shopper everywhere outside the owner's memory.
//!
//! Logs, decision records, push events and admin log lines name a shopper by a keyed pseudonym, never by the raw
//! `shopper_id`: HMAC-SHA-256 under a secret key, over the id, cut to 128 bits (32 hex digits). Without the key a
//! list of candidate ids (emails, loyalty numbers) cannot be matched against it; with the key the owner of the
//! data can find a shopper's records for erasure or an access request.
//!
//! The key file (`pseudonym_key`) holds one or more keys, one per line, each at least 32 bytes written as hex
//! (`openssl rand -hex 32`); blank lines and lines starting with `#` are ignored. The first key is current: new
//! records use it. The others are previous keys, kept so that erasure and access requests still find records
//! written under them; a key can be dropped from the file once every log written under it has passed its
//! retention. Every node of a cluster must have the same file. The file is re-read when it changes (with the
//! other credentials).
//!
//! A loopback node with no key file generates a key for its lifetime and says so: the demo needs no set-up, and
//! its pseudonyms change at every start.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// Keys a key file may hold.
pub const MAX_KEYS: usize = 16;
/// Hex digits of a pseudonym (128 bits).
pub const PSEUDONYM_HEX: usize = 32;

/// Why a key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("pseudonym key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is not a list of keys.
    #[error("pseudonym key file {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (never the key material).
        why: String,
    },
}

#[derive(Debug)]
struct Keys {
    /// Current key first.
    keys: Vec<Vec<u8>>,
    generated: bool,
}

/// The pseudonym keys, shared by everything that names shoppers outside the owner's memory.
#[derive(Debug)]
pub struct Pseudonyms {
    keys: ArcSwap<Keys>,
    file: Option<crate::tls::WatchedFile>,
}

impl Pseudonyms {
    /// Keys from `file`.
    ///
    /// # Errors
    /// When the file cannot be read or holds no valid key.
    pub fn from_file(file: &Path) -> Result<Self, KeyError> {
        let keys = read_keys(file)?;
        Ok(Self {
            keys: ArcSwap::from_pointee(Keys {
                keys,
                generated: false,
            }),
            file: Some(crate::tls::WatchedFile::new(file)),
        })
    }

    /// A random key for this process's lifetime (the loopback demo).
    ///
    /// # Errors
    /// When the system's random source cannot be read.
    pub fn generated() -> std::io::Result<Self> {
        use std::io::Read;
        let mut key = vec![0u8; MIN_KEY_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Self::with_key(key, true))
    }

    /// A fixed key (tests and tools).
    pub fn with_key(key: Vec<u8>, generated: bool) -> Self {
        Self {
            keys: ArcSwap::from_pointee(Keys {
                keys: vec![key],
                generated,
            }),
            file: None,
        }
    }

    /// Whether the key was generated at start (no key file).
    pub fn is_generated(&self) -> bool {
        self.keys.load().generated
    }

    /// The shopper's pseudonym under the current key.
    pub fn of(&self, shopper_id: &str) -> String {
        pseudonym(&self.keys.load().keys[0], shopper_id)
    }

    /// The shopper's pseudonyms under every key held, current first: what erasure and access requests look for.
    pub fn all_of(&self, shopper_id: &str) -> Vec<String> {
        self.keys
            .load()
            .keys
            .iter()
            .map(|k| pseudonym(k, shopper_id))
            .collect()
    }

    /// Re-reads the key file when it changed. A file that became unusable keeps the keys in use (logged and
    /// counted in `aisle_pseudonym_key_reload_failures_total`).
    pub fn reload_if_changed(&self) {
        let Some(file) = self.file.as_ref().filter(|f| f.changed()) else {
            return;
        };
        match read_keys(file.path()) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "pseudonym keys reloaded");
                self.keys.store(Arc::new(Keys {
                    keys,
                    generated: false,
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "pseudonym key file unusable; keeping the keys in use");
                metrics::counter!("aisle_pseudonym_key_reload_failures_total").increment(1);
            }
        }
    }
}

/// HMAC-SHA-256 of the id under `key`, its first 128 bits in hex.
fn pseudonym(key: &[u8], shopper_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"aisle-shopper\xff");
    mac.update(shopper_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(PSEUDONYM_HEX);
    for b in &digest[..PSEUDONYM_HEX / 2] {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn read_keys(file: &Path) -> Result<Vec<Vec<u8>>, KeyError> {
    let text = std::fs::read_to_string(file).map_err(|source| KeyError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let invalid = |why: String| KeyError::Invalid {
        path: file.display().to_string(),
        why,
    };
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = decode_hex(line).ok_or_else(|| {
            invalid(format!(
                "line {}: not a hex key (use `openssl rand -hex 32`)",
                n + 1
            ))
        })?;
        if key.len() < MIN_KEY_BYTES {
            return Err(invalid(format!(
                "line {}: a key must be at least {MIN_KEY_BYTES} bytes ({} hex digits)",
                n + 1,
                MIN_KEY_BYTES * 2
            )));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(invalid("holds no key".into()));
    }
    if keys.len() > MAX_KEYS {
        return Err(invalid(format!("holds more than {MAX_KEYS} keys")));
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `s` looks like a pseudonym (32 lowercase hex digits).
pub fn is_pseudonym(s: &str) -> bool {
    s.len() == PSEUDONYM_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Tombstones kept at once; beyond it the oldest go first (an erasure flood cannot grow memory without bound).
pub const MAX_TOMBSTONES: usize = 100_000;

/// Forgotten shoppers, by pseudonym, with when they were forgotten: a copy of a session written before that (on a
/// fenced old owner, or in a hand-off in flight) is dropped instead of installed. Kept for `ttl`, which must outlive
/// any copy: `tombstone_ttl_secs` is validated to exceed the session idle TTL (after which every kept copy has been
/// passivated) plus two leases.
#[derive(Debug)]
pub struct Tombstones {
    ttl_ms: i64,
    by_ref: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Tombstones {
    /// Tombstones kept for `ttl`.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            by_ref: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Records that the shopper named `shopper_ref` was forgotten at `at_ms`. Returns whether this is news (no
    /// tombstone as recent was held).
    pub fn record(&self, shopper_ref: &str, at_ms: i64) -> bool {
        let now = aisle_domain::now_ms();
        if at_ms.saturating_add(self.ttl_ms) <= now {
            return false;
        }
        let mut by_ref = self.by_ref.lock().expect("tombstones lock");
        if by_ref.len() >= MAX_TOMBSTONES {
            by_ref.retain(|_, at| at.saturating_add(self.ttl_ms) > now);
            while by_ref.len() >= MAX_TOMBSTONES {
                let oldest = by_ref
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(r, _)| r.clone())
                    .expect("non-empty");
                by_ref.remove(&oldest);
                metrics::counter!("aisle_tombstones_evicted_total").increment(1);
            }
        }
        let entry = by_ref.entry(shopper_ref.to_string()).or_insert(i64::MIN);
        let news = *entry < at_ms;
        *entry = (*entry).max(at_ms);
        metrics::gauge!("aisle_tombstones").set(by_ref.len() as f64);
        news
    }

    /// Whether a session of the shopper named `shopper_ref` last written at `version` (ms, the writer's clock)
    /// must not be installed: it was forgotten at or after that.
    pub fn blocks(&self, shopper_ref: &str, version: u64) -> bool {
        self.blocks_at(shopper_ref, version, aisle_domain::now_ms())
    }

    fn blocks_at(&self, shopper_ref: &str, version: u64, now: i64) -> bool {
        let by_ref = self.by_ref.lock().expect("tombstones lock");
        by_ref.get(shopper_ref).is_some_and(|&at| {
            at.saturating_add(self.ttl_ms) > now && i64::try_from(version).unwrap_or(i64::MAX) <= at
        })
    }

    /// Whether any tombstone is held (installs skip the pseudonym computation when none is).
    pub fn is_empty(&self) -> bool {
        self.by_ref.lock().expect("tombstones lock").is_empty()
    }

    /// The live tombstones: (pseudonym, forgotten at ms).
    pub fn live(&self) -> Vec<(String, i64)> {
        let now = aisle_domain::now_ms();
        let mut by_ref = self.by_ref.lock().expect("tombstones lock");
        by_ref.retain(|_, at| at.saturating_add(self.ttl_ms) > now);
        by_ref.iter().map(|(r, at)| (r.clone(), *at)).collect()
    }

    /// Until when a tombstone recorded at `at_ms` is kept.
    pub fn until_ms(&self, at_ms: i64) -> i64 {
        at_ms.saturating_add(self.ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_hide_the_id() {
        let a = Pseudonyms::with_key(vec![1; 32], false);
        let b = Pseudonyms::with_key(vec![2; 32], false);
        let id = "alice@example.com";
        assert_eq!(a.of(id), a.of(id));
        assert_ne!(a.of(id), b.of(id), "another key, another pseudonym");
        assert_ne!(a.of(id), a.of("bob@example.com"));
        assert!(is_pseudonym(&a.of(id)));
        assert!(!a.of(id).contains("alice"));
    }

    #[test]
    fn key_files_hold_current_and_previous_keys() {
        let dir = std::env::temp_dir().join(format!("aisle-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        let k1 = "11".repeat(32);
        let k2 = "22".repeat(32);
        std::fs::write(&file, format!("# current\n{k1}\n\n{k2}\n")).unwrap();
        let p = Pseudonyms::from_file(&file).unwrap();
        let old = Pseudonyms::with_key(vec![0x22; 32], false);
        let all = p.all_of("s1");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], p.of("s1"));
        assert_eq!(
            all[1],
            old.of("s1"),
            "the previous key still finds old records"
        );

        for (content, why) in [
            ("", "no key"),
            ("abcd\n", "at least 32 bytes"),
            (&*format!("{}zz\n", "11".repeat(32)), "not a hex key"),
        ] {
            std::fs::write(&file, content).unwrap();
            let e = Pseudonyms::from_file(&file).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tombstones_block_older_copies_until_they_expire() {
        let t = Tombstones::new(std::time::Duration::from_secs(60));
        let now = aisle_domain::now_ms();
        assert!(t.record("r1", now));
        assert!(!t.record("r1", now - 5), "an older erasure is no news");
        assert!(
            t.blocks("r1", (now - 1_000) as u64),
            "a copy from before the erasure"
        );
        assert!(t.blocks("r1", now as u64));
        assert!(
            !t.blocks("r1", (now + 1) as u64),
            "written after the erasure: a new session"
        );
        assert!(!t.blocks("r2", 0));
        assert!(!t.record("old", now - 61_000), "already expired");
        assert_eq!(t.live(), vec![("r1".to_string(), now)]);
        assert!(
            !t.blocks_at("r1", 0, now + 60_000),
            "an expired tombstone blocks nothing"
        );
    }
}
