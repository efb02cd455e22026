//! Bundle signatures (`aisle_node::bundles::signature`): a trusted-keys file's text, a signature file's text and a
//! signature's check over arbitrary bundle bytes.
//!
//! Properties: nothing panics; a parsed key file holds 1 to `MAX_TRUSTED_KEYS` keys; a decoded signature is 64
//! bytes; only the trusted key's signature over exactly these bytes passes — another key's, a changed byte of the
//! file or of the signature, or an arbitrary signature is refused as `Bad`, and none as `Missing`.
#![no_main]

use aisle_node::bundles::signature::{MAX_TRUSTED_KEYS, TrustedKeys, Unsigned, decode, sign};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // A trusted-keys file.
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(keys) = TrustedKeys::parse(&text) {
                let lines = text
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
                    .count();
                assert!((1..=MAX_TRUSTED_KEYS).contains(&lines));
                assert_eq!(keys.check(rest, None), Err(Unsigned::Missing));
            }
        }
        // A signature file.
        1 => {
            if let Ok(raw) = decode(rest) {
                assert_eq!(raw.len(), 64);
                let trusted =
                    TrustedKeys::parse(&STANDARD.encode(key(1).public_key().as_ref())).unwrap();
                // Arbitrary bytes do not verify as a signature of an arbitrary file (2^-128 aside).
                assert_eq!(trusted.check(rest, Some(&raw)), Err(Unsigned::Bad));
            }
        }
        // A signed bundle file, checked against one and two trusted keys, then changed.
        _ => {
            let signer = key(1);
            let other = key(2);
            let one = STANDARD.encode(signer.public_key().as_ref());
            let two = format!(
                "# old\n{}\n{one}\n",
                STANDARD.encode(other.public_key().as_ref())
            );
            let sig = decode(sign(&signer, rest).as_bytes()).expect("our own signature decodes");
            for text in [one.as_str(), two.as_str()] {
                let trusted = TrustedKeys::parse(text).unwrap();
                assert_eq!(trusted.check(rest, Some(&sig)), Ok(()));
                let foreign = decode(sign(&key(3), rest).as_bytes()).unwrap();
                assert_eq!(trusted.check(rest, Some(&foreign)), Err(Unsigned::Bad));
                let mut bad_sig = sig.clone();
                bad_sig[rest.len() % 64] ^= 1;
                assert_eq!(trusted.check(rest, Some(&bad_sig)), Err(Unsigned::Bad));
                if !rest.is_empty() {
                    let mut changed = rest.to_vec();
                    changed[rest.len() / 2] ^= 0x80;
                    assert_eq!(trusted.check(&changed, Some(&sig)), Err(Unsigned::Bad));
                    assert_eq!(
                        trusted.check(&rest[..rest.len() - 1], Some(&sig)),
                        Err(Unsigned::Bad)
                    );
                }
            }
        }
    }
});
