//! Shopper assertions (`aisle_node::security::assertion::verify`): arbitrary text as an `x-aisle-shopper` value,
//! and arbitrary header and claims bytes signed with the target's own keys, so that the claims parser is reached.
//!
//! Properties: nothing panics; an assertion is accepted only when it was signed with the verifier's key and
//! algorithm, its claims hold a string `sub` and an integer `exp` within the lifetime window, and what is accepted
//! is exactly what the claims say; changing any byte of an accepted assertion makes it refused.
#![no_main]

use aisle_node::security::assertion::{
    LEEWAY_SECS, MAX_ASSERTION_BYTES, MAX_LIFETIME_SECS, Refused, Verifier, verify,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sha2::Sha256;

/// "Now" for every check, in seconds (2027-01-15).
const NOW: i64 = 1_800_000_000;
const SECRET: &[u8] = b"fuzz-hs256-secret-of-at-least-32-bytes!";

fn ed25519() -> &'static Ed25519KeyPair {
    static KEY: std::sync::OnceLock<Ed25519KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("seed"))
}

fn verifiers() -> [Verifier; 2] {
    let public: [u8; 32] = ed25519()
        .public_key()
        .as_ref()
        .try_into()
        .expect("32 bytes");
    [Verifier::Hs256(SECRET.to_vec()), Verifier::Ed25519(public)]
}

/// The claims an accepted assertion must have carried.
fn check_accepted(jws: &str, verifier: &Verifier, sub: &str, store: Option<&str>) {
    assert!(jws.len() <= MAX_ASSERTION_BYTES);
    let claims = jws.split('.').nth(1).expect("three parts");
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url")).expect("JSON");
    assert_eq!(json["sub"].as_str(), Some(sub));
    let exp = json["exp"].as_i64().expect("integer exp");
    assert!(
        exp + LEEWAY_SECS > NOW && exp <= NOW + MAX_LIFETIME_SECS,
        "exp {exp}"
    );
    assert_eq!(json.get("store").and_then(|s| s.as_str()), store);
    // Any one byte changed: refused (or, for a change inside a base64 part, refused as malformed).
    let bytes = jws.as_bytes();
    for at in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut changed = bytes.to_vec();
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        if let Ok(changed) = String::from_utf8(changed) {
            assert!(
                verify(&changed, verifier, NOW).is_err(),
                "a changed byte at {at} was accepted"
            );
        }
    }
}

fn signed(alg_header: &[u8], claims: &[u8], verifier: &Verifier) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(alg_header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = match verifier {
        Verifier::Hs256(secret) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Verifier::Ed25519(_) => ed25519().sign(input.as_bytes()).as_ref().to_vec(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    for verifier in verifiers() {
        match mode % 3 {
            // The raw metadata value: without the key nothing is accepted.
            0 => {
                let text = String::from_utf8_lossy(rest);
                assert!(verify(&text, &verifier, NOW).is_err());
            }
            // Arbitrary claims under the right header, signed: the claims parser decides.
            1 => {
                let alg = match verifier {
                    Verifier::Hs256(_) => "HS256",
                    Verifier::Ed25519(_) => "EdDSA",
                };
                let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
                let jws = signed(header.as_bytes(), rest, &verifier);
                match verify(&jws, &verifier, NOW) {
                    Ok(a) => check_accepted(&jws, &verifier, &a.sub, a.store.as_deref()),
                    Err(Refused::Signature | Refused::Algorithm(_)) => {
                        // The length cap is the only thing before the signature that a signed JWS can fail.
                        unreachable!(
                            "a correctly signed assertion was refused for its signature or alg"
                        )
                    }
                    Err(_) => {}
                }
            }
            // Arbitrary header and claims, signed: the header can never choose another algorithm.
            _ => {
                let Some((&at, body)) = rest.split_first() else {
                    return;
                };
                let (header, claims) = body.split_at(usize::from(at).min(body.len()));
                let jws = signed(header, claims, &verifier);
                if let Ok(a) = verify(&jws, &verifier, NOW) {
                    let h: serde_json::Value =
                        serde_json::from_slice(header).expect("accepted header is JSON");
                    let alg = h["alg"].as_str().expect("alg");
                    assert!(matches!(
                        (&verifier, alg),
                        (Verifier::Hs256(_), "HS256") | (Verifier::Ed25519(_), "EdDSA")
                    ));
                    check_accepted(&jws, &verifier, &a.sub, a.store.as_deref());
                }
            }
        }
    }
});
