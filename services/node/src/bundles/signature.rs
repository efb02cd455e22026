//! Signed bundles: a bundle file `F` is signed by `F.sig`, one line of base64 holding the Ed25519 signature of F's
//! bytes (`aisle bundle sign --key KEY F`). A node or edge configured with trusted public keys (`trusted_keys`, one
//! base64 key a line) loads a catalog, model, rules or experiments file — from disk or from the cloud's feed — only
//! when one of those keys signed it; anything else is refused, counted, logged and written to the trail by the
//! caller, and the previous version keeps serving. Without trusted keys nothing is checked (the loopback demo).
//!
//! Rotation: add the new public key to the trusted file (nodes re-read it with their bundles at start; see
//! `docs/security.md`), re-sign the bundles with the new key, then remove the old key.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::security::assertion::{ed25519_verifies, parse_ed25519_public_key};

/// Most trusted keys in one file.
pub const MAX_TRUSTED_KEYS: usize = 64;

/// The signature file of a bundle file: the same path with `.sig` appended.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The public keys bundles must be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<[u8; 32]>,
}

/// Why a bundle's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    /// No signature came with it.
    #[error("unsigned (trusted keys are configured: sign it with `aisle bundle sign`)")]
    Missing,
    /// The signature is not one of a trusted key over these bytes.
    #[error("bad signature (not made by a trusted key over this file)")]
    Bad,
}

impl TrustedKeys {
    /// Reads a trusted-keys file: one base64 Ed25519 public key a line (see
    /// [`crate::security::assertion::parse_ed25519_public_key`]); blank lines and `#` comments are ignored.
    ///
    /// # Errors
    /// An unreadable file, a bad line (numbered), no key, or more than [`MAX_TRUSTED_KEYS`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read trusted keys {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("trusted keys {}", path.display()))
    }

    /// Parses the text of a trusted-keys file.
    ///
    /// # Errors
    /// As [`TrustedKeys::load`].
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(parse_ed25519_public_key(line).with_context(|| format!("line {}", i + 1))?);
        }
        anyhow::ensure!(!keys.is_empty(), "no key");
        anyhow::ensure!(
            keys.len() <= MAX_TRUSTED_KEYS,
            "more than {MAX_TRUSTED_KEYS} keys"
        );
        Ok(Self { keys })
    }

    /// Checks `signature` (the raw 64 bytes) over `bytes`.
    ///
    /// # Errors
    /// Missing, or made by no trusted key.
    pub fn check(&self, bytes: &[u8], signature: Option<&[u8]>) -> Result<(), Unsigned> {
        let signature = signature.ok_or(Unsigned::Missing)?;
        if self
            .keys
            .iter()
            .any(|k| ed25519_verifies(k, bytes, signature))
        {
            Ok(())
        } else {
            Err(Unsigned::Bad)
        }
    }
}

/// Checks a `kind` file's signature against `trusted`; a refusal is counted in
/// `aisle_bundle_signature_refused_total{kind}` and logged.
///
/// # Errors
/// Why it is refused.
pub fn refused(
    kind: super::Kind,
    trusted: &TrustedKeys,
    bytes: &[u8],
    signature: Option<&[u8]>,
) -> Result<(), Unsigned> {
    trusted.check(bytes, signature).inspect_err(|why| {
        metrics::counter!("aisle_bundle_signature_refused_total", "kind" => kind.name())
            .increment(1);
        tracing::warn!(kind = kind.name(), error = %why, "bundle refused: signature");
    })
}

/// Decodes a signature file's text (one line of base64).
///
/// # Errors
/// Not base64 of 64 bytes.
pub fn decode(text: &[u8]) -> anyhow::Result<Vec<u8>> {
    let raw = STANDARD
        .decode(text.trim_ascii())
        .context("a signature file holds one line of base64")?;
    anyhow::ensure!(
        raw.len() == 64,
        "an Ed25519 signature is 64 bytes, not {}",
        raw.len()
    );
    Ok(raw)
}

/// Reads the signature of bundle file `file` (`file.sig`): `None` when there is none.
///
/// # Errors
/// A signature file that exists but cannot be read or decoded.
pub fn read_for(file: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let path = sig_path(file);
    match std::fs::read(&path) {
        Ok(text) => decode(&text)
            .map(Some)
            .with_context(|| format!("signature {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// An Ed25519 signing key: PKCS#8, PEM (`openssl genpkey -algorithm ed25519`) or DER.
///
/// # Errors
/// Not an Ed25519 PKCS#8 key.
pub fn signing_key(file: &[u8]) -> anyhow::Result<ring::signature::Ed25519KeyPair> {
    let der = match std::str::from_utf8(file) {
        Ok(text) if text.contains("-----BEGIN") => {
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            STANDARD
                .decode(body.trim())
                .context("PEM body is not base64")?
        }
        _ => file.to_vec(),
    };
    ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 private key ({e})"))
}

/// The text of `bytes`' signature file under `key`.
pub fn sign(key: &ring::signature::Ed25519KeyPair, bytes: &[u8]) -> String {
    format!("{}\n", STANDARD.encode(key.sign(bytes)))
}

/// A new signing key (PKCS#8 v2, PEM) and its public key line.
///
/// # Errors
/// When the system's random source fails.
pub fn generate() -> anyhow::Result<(String, String)> {
    use ring::signature::KeyPair as _;
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("generated key unusable"))?;
    let b64 = STANDARD.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, STANDARD.encode(key.public_key().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_key_signs_and_anything_else_is_refused() {
        let (pem, public) = generate().unwrap();
        let (other_pem, other_public) = generate().unwrap();
        let key = signing_key(pem.as_bytes()).unwrap();
        let other = signing_key(other_pem.as_bytes()).unwrap();
        let trusted = TrustedKeys::parse(&format!("# release key\n{public}\n\n")).unwrap();
        let file = b"{\"version\":\"rules-1\"}";
        let sig = decode(sign(&key, file).as_bytes()).unwrap();
        assert_eq!(trusted.check(file, Some(&sig)), Ok(()));
        assert_eq!(trusted.check(file, None), Err(Unsigned::Missing));
        assert_eq!(
            trusted.check(b"{\"version\":\"rules-2\"}", Some(&sig)),
            Err(Unsigned::Bad),
            "a tampered file"
        );
        let foreign = decode(sign(&other, file).as_bytes()).unwrap();
        assert_eq!(trusted.check(file, Some(&foreign)), Err(Unsigned::Bad));
        // Rotation: both keys trusted while bundles are re-signed.
        let both = TrustedKeys::parse(&format!("{public}\n{other_public}\n")).unwrap();
        assert_eq!(both.check(file, Some(&foreign)), Ok(()));
    }

    #[test]
    fn bad_key_and_signature_files_are_refused_with_the_reason() {
        assert!(TrustedKeys::parse("# nothing\n").is_err());
        let e = format!("{:#}", TrustedKeys::parse("AAAA\n").unwrap_err());
        assert!(e.contains("line 1"), "{e}");
        assert!(decode(b"not base64!").is_err());
        assert!(decode(STANDARD.encode([0u8; 63]).as_bytes()).is_err());
        assert!(
            signing_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        assert_eq!(
            sig_path(Path::new("/b/model.bin")),
            PathBuf::from("/b/model.bin.sig")
        );
    }
}
