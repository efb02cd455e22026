//! Shopper assertions: a short-lived signed statement of who the shopper is, required by tokens that a kiosk, an app
//! or a browser holds (such a token can be extracted, so it must not be enough to act for any shopper).
//!
//! The statement is a compact JWS (RFC 7515) in metadata `x-aisle-shopper`: `header.claims.signature`, each part
//! base64url without padding. The header's `alg` is `HS256` (HMAC-SHA-256 with the token's secret) or `EdDSA`
//! (Ed25519 with the token's public key), and must be the one the token is configured with — the header never
//! chooses the algorithm. The claims are `sub` (the shopper id), `exp` (seconds since the Unix epoch) and
//! optionally `store` (the only store it may be used for). The signing side is the retailer's login service; the
//! node only verifies.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Longest assertion accepted, in bytes (a JWS with a 256-byte shopper id and a store is well under 1 KiB).
pub const MAX_ASSERTION_BYTES: usize = 2_048;
/// Furthest `exp` accepted ahead of the node's clock: assertions are short-lived.
pub const MAX_LIFETIME_SECS: i64 = 24 * 3_600;
/// Clock skew allowed past `exp`.
pub const LEEWAY_SECS: i64 = 30;
/// Shortest HS256 secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// How a token's assertions are verified.
#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    /// HMAC-SHA-256 with a shared secret.
    Hs256(Vec<u8>),
    /// Ed25519 with a public key (32 bytes).
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Verifier::Hs256(_) => f.write_str("Verifier::Hs256(..)"),
            Verifier::Ed25519(_) => f.write_str("Verifier::Ed25519(..)"),
        }
    }
}

impl Verifier {
    /// The secret of an HS256 token: the file's content without surrounding whitespace, at least 32 bytes.
    ///
    /// # Errors
    /// An unreadable file or a short secret (named).
    pub fn hs256_from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read HS256 secret {}", path.display()))?;
        let secret = text.trim_ascii();
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "HS256 secret {}: at least {MIN_SECRET_BYTES} bytes",
            path.display()
        );
        Ok(Verifier::Hs256(secret.to_vec()))
    }

    /// The public key of an EdDSA token: see [`parse_ed25519_public_key`].
    ///
    /// # Errors
    /// An unreadable file or no valid key in it.
    pub fn ed25519_from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read Ed25519 public key {}", path.display()))?;
        let key = parse_ed25519_public_key(text.trim())
            .with_context(|| format!("Ed25519 public key {}", path.display()))?;
        Ok(Verifier::Ed25519(key))
    }

    fn alg(&self) -> &'static str {
        match self {
            Verifier::Hs256(_) => "HS256",
            Verifier::Ed25519(_) => "EdDSA",
        }
    }

    fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Hs256(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(signed);
                // Constant-time comparison.
                mac.verify_slice(signature).is_ok()
            }
            Verifier::Ed25519(key) => ed25519_verifies(key, signed, signature),
        }
    }
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key written as one line of standard base64: the 32 raw bytes, or the DER
/// SubjectPublicKeyInfo (`openssl pkey -pubout -outform DER | base64 -w0`).
///
/// # Errors
/// Not base64, or neither form.
pub fn parse_ed25519_public_key(line: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(line.trim())
        .context("expected one line of base64")?;
    let raw = match bytes.len() {
        32 => &bytes[..],
        44 if bytes[..12] == ED25519_SPKI_PREFIX => &bytes[12..],
        n => anyhow::bail!(
            "expected 32 key bytes or a 44-byte Ed25519 SubjectPublicKeyInfo, got {n} bytes"
        ),
    };
    Ok(raw.try_into().expect("32 bytes"))
}

/// Whether `signature` is `key`'s Ed25519 signature of `message`.
pub fn ed25519_verifies(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(message, signature)
        .is_ok()
}

/// What a valid assertion states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asserted {
    /// The shopper.
    pub sub: String,
    /// The only store it is valid for, if it names one.
    pub store: Option<String>,
}

/// Why an assertion was refused (the caller is told, as UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a compact JWS, or its parts do not decode (what is wrong).
    #[error("x-aisle-shopper: malformed ({0})")]
    Malformed(&'static str),
    /// The header names another algorithm than the token's.
    #[error("x-aisle-shopper: alg must be {0}")]
    Algorithm(&'static str),
    /// The signature does not verify.
    #[error("x-aisle-shopper: bad signature")]
    Signature,
    /// `exp` has passed.
    #[error("x-aisle-shopper: expired")]
    Expired,
    /// `exp` is further ahead than assertions may live.
    #[error("x-aisle-shopper: exp is more than {MAX_LIFETIME_SECS} s ahead")]
    TooLong,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    store: Option<String>,
}

/// Reads a JWS part as UTF-8 JSON (RFC 7515, 7519), all of it: every member is parsed, also those the node does not
/// read (a parser reading straight into the struct would skip their bytes unchecked), and of a member named twice the
/// last counts.
fn strict_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    not_utf8: &'static str,
    not_json: &'static str,
) -> Result<T, Refused> {
    let text = std::str::from_utf8(bytes).map_err(|_| Refused::Malformed(not_utf8))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Refused::Malformed(not_json))?;
    T::deserialize(value).map_err(|_| Refused::Malformed(not_json))
}

/// Verifies `jws` with `verifier` at `now_secs` (seconds since the Unix epoch).
///
/// # Errors
/// Why it is refused. The signature is checked before the claims are read.
pub fn verify(jws: &str, verifier: &Verifier, now_secs: i64) -> Result<Asserted, Refused> {
    if jws.len() > MAX_ASSERTION_BYTES {
        return Err(Refused::Malformed("longer than 2048 bytes"));
    }
    let mut parts = jws.split('.');
    let (Some(header_part), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Malformed("expected header.claims.signature"));
    };
    let decode = |part: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Refused::Malformed(what))
    };
    let header: Header = strict_json(
        &decode(header_part, "header is not base64url")?,
        "header is not UTF-8",
        "header is not JSON with a string alg",
    )?;
    if header.alg != verifier.alg() {
        return Err(Refused::Algorithm(verifier.alg()));
    }
    let signature = decode(signature, "signature is not base64url")?;
    let signed_len = header_part.len() + 1 + claims.len();
    if !verifier.verifies(&jws.as_bytes()[..signed_len], &signature) {
        return Err(Refused::Signature);
    }
    let claims: Claims = strict_json(
        &decode(claims, "claims are not base64url")?,
        "claims are not UTF-8",
        "claims need a string sub and an integer exp",
    )?;
    if claims.exp.saturating_add(LEEWAY_SECS) <= now_secs {
        return Err(Refused::Expired);
    }
    if claims.exp > now_secs.saturating_add(MAX_LIFETIME_SECS) {
        return Err(Refused::TooLong);
    }
    Ok(Asserted {
        sub: claims.sub,
        store: claims.store,
    })
}

/// Signs `claims` (JSON) as a compact JWS: what a login service does (tests and `aisle` tooling use it).
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let signing_input = signing_input("HS256", claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Signs `claims` (JSON) as a compact EdDSA JWS with an Ed25519 key pair.
pub fn sign_ed25519(key: &ring::signature::Ed25519KeyPair, claims: &serde_json::Value) -> String {
    let signing_input = signing_input("EdDSA", claims);
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

fn signing_input(alg: &str, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn ed25519() -> ring::signature::Ed25519KeyPair {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn a_signed_assertion_states_its_shopper_and_store() {
        let hs = Verifier::Hs256(SECRET.to_vec());
        let jws = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW + 300}));
        assert_eq!(
            verify(&jws, &hs, NOW),
            Ok(Asserted {
                sub: "s1".into(),
                store: None
            })
        );
        let key = ed25519();
        let ed = Verifier::Ed25519(key.public_key().as_ref().try_into().unwrap());
        let jws = sign_ed25519(
            &key,
            &json!({"sub": "s2", "exp": NOW + 60, "store": "store-1"}),
        );
        assert_eq!(
            verify(&jws, &ed, NOW),
            Ok(Asserted {
                sub: "s2".into(),
                store: Some("store-1".into())
            })
        );
        // The header cannot choose the algorithm: an HS256 assertion against an EdDSA token, and the reverse.
        let hs_jws = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW + 300}));
        assert_eq!(verify(&hs_jws, &ed, NOW), Err(Refused::Algorithm("EdDSA")));
        assert_eq!(verify(&jws, &hs, NOW), Err(Refused::Algorithm("HS256")));
    }

    /// An HS256 JWS over claims given as raw bytes (which `sign_hs256` cannot write).
    fn sign_hs256_raw(claims: impl AsRef<[u8]>) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.as_ref()));
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn expired_forged_and_malformed_assertions_are_refused() {
        let hs = Verifier::Hs256(SECRET.to_vec());
        let expired = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW - 31}));
        assert_eq!(verify(&expired, &hs, NOW), Err(Refused::Expired));
        let skewed = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW - 29}));
        assert!(verify(&skewed, &hs, NOW).is_ok(), "within the leeway");
        let forever = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW + 2 * 86_400}));
        assert_eq!(verify(&forever, &hs, NOW), Err(Refused::TooLong));
        let other_key = sign_hs256(
            b"another secret of thirty-two bytes!",
            &json!({"sub": "s1", "exp": NOW + 60}),
        );
        assert_eq!(verify(&other_key, &hs, NOW), Err(Refused::Signature));
        // Claims swapped under a valid signature: the signature covers them.
        let good = sign_hs256(SECRET, &json!({"sub": "s1", "exp": NOW + 60}));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims =
            URL_SAFE_NO_PAD.encode(json!({"sub": "s9", "exp": NOW + 60}).to_string());
        parts[1] = &forged_claims;
        assert_eq!(verify(&parts.join("."), &hs, NOW), Err(Refused::Signature));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(json!({"sub": "s1", "exp": NOW + 60}).to_string())
        );
        assert_eq!(
            verify(&unsigned, &hs, NOW),
            Err(Refused::Algorithm("HS256"))
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**", &"a".repeat(3_000)] {
            assert!(
                matches!(verify(bad, &hs, NOW), Err(Refused::Malformed(_))),
                "{bad:?}"
            );
        }
        // A signed statement without the claims it needs.
        let no_exp = sign_hs256(SECRET, &json!({"sub": "s1"}));
        assert!(matches!(
            verify(&no_exp, &hs, NOW),
            Err(Refused::Malformed(_))
        ));
        // Signed, with invalid UTF-8 in a member the node does not read (found by the fuzzer): refused all the same.
        let mut raw = format!(r#"{{"sub":"s1","exp":{},"x":""#, NOW + 60).into_bytes();
        raw.extend_from_slice(b"\xe0b\"}");
        let jws = sign_hs256_raw(&raw);
        assert_eq!(
            verify(&jws, &hs, NOW),
            Err(Refused::Malformed("claims are not UTF-8"))
        );
        // Nor a lone surrogate there.
        let lone = sign_hs256_raw(format!(r#"{{"sub":"s1","exp":{},"x":"\ud800"}}"#, NOW + 60));
        assert!(matches!(
            verify(&lone, &hs, NOW),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn public_keys_are_read_raw_or_as_subject_public_key_info() {
        let key = ed25519();
        let raw: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        assert_eq!(
            parse_ed25519_public_key(&STANDARD.encode(raw)).unwrap(),
            raw
        );
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&raw);
        assert_eq!(
            parse_ed25519_public_key(&STANDARD.encode(&spki)).unwrap(),
            raw
        );
        assert!(parse_ed25519_public_key("not base64!").is_err());
        assert!(parse_ed25519_public_key(&STANDARD.encode([0u8; 31])).is_err());
    }
}
