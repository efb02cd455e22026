//! `aisle bundle sign` and `aisle bundle keygen`: signed bundles (see `bundles::signature`), offline.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::bundles::signature;

/// Signs `file` with the key in `key`: writes `file.sig` (replacing it) and prints its path.
///
/// # Errors
/// An unreadable key or file, a key that is not Ed25519, an unwritable signature file.
pub(super) fn sign(key: &Path, file: &Path) -> anyhow::Result<()> {
    let key_bytes =
        std::fs::read(key).with_context(|| format!("cannot read key {}", key.display()))?;
    let key =
        signature::signing_key(&key_bytes).with_context(|| format!("key {}", key.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sig = signature::sig_path(file);
    crate::durable::replace(&sig, signature::sign(&key, &bytes).as_bytes())
        .with_context(|| format!("cannot write {}", sig.display()))?;
    println!("{}", sig.display());
    Ok(())
}

/// Writes a new signing key to `out` (mode 0600; refuses to overwrite) and prints its public key line.
///
/// # Errors
/// `out` exists or cannot be written.
pub(super) fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let (pem, public) = signature::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    println!("{public}");
    Ok(())
}
