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
    file: Option<crate::security::tls::WatchedFile>,
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
            file: Some(crate::security::tls::WatchedFile::new(file)),
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
}
