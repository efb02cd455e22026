//! A journal's files: their names, listing the sealed segments, the head file. Rotation and retention, which the
//! writer does on them as a whole, are in [`super::rotation`].
//!
//! # Files
//!
//! A journal at `path` is a set of siblings in one directory:
//!
//! - `path`: the live segment, appended to.
//! - `path.NNNNNNNNNNNNNNNNNNNN` (20 digits, zero-padded): sealed segments. For a chained log the number is the
//!   `seq` of the first record the segment holds; for an unchained log it is a segment counter (1, 2, …,
//!   continuing after the highest sealed segment present at start). Either way the numbers sort in write order,
//!   and the live segment comes after all of them.
//! - `path.head` (chained only): `{"seq":N,"hash":"…"}`, the last record known durable, replaced atomically
//!   (temporary file, fsync, rename) after every sync. It is what reveals whole lines cut from the live tail.
//! - `….tmp`: a replacement in progress (head, erasure); removed at start.
//!
//! The live segment is sealed and renamed when it has reached `segment_bytes` (checked before each record, so a
//! segment exceeds it by at most one record and its seal) or is older than `segment_age` (checked at maintenance,
//! every `min(segment_age, retention, 1 min)` but at most every 100 ms; a segment with nothing but its `open`
//! record is not rotated). Sealed segments whose newest write (their mtime, which erasure preserves) is older than
//! `retention` are deleted after each rotation and at maintenance: oldest first, stopping at the first one still
//! within retention, so a chain never loses a middle segment.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::{hex, unhex32};
use crate::durable::{self, Replacement, SegmentNames};

/// The head file's content.
#[derive(Debug, Serialize, Deserialize)]
struct HeadJson {
    seq: u64,
    hash: String,
}

/// The sealed segments of the live segment `live`: `live.NNNNNNNNNNNNNNNNNNNN` beside it.
pub(super) fn sealed(live: &Path) -> SegmentNames {
    let dir = live.parent().unwrap_or(Path::new(""));
    SegmentNames::new(dir, format!("{}.", file_name(live)), "")
}

/// The head file of the live segment `live`.
pub(super) fn head_path(live: &Path) -> PathBuf {
    durable::with_suffix(live, ".head")
}

/// A path's file name, as text (lossy), or empty.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes `live….tmp` files left by a crash during a replacement.
pub(super) fn remove_stale_temps(live: &Path) {
    let live_name = file_name(live);
    let Ok(entries) = fs::read_dir(durable::parent_dir(live)) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str()
            && name
                .strip_prefix(live_name.as_str())
                .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".tmp"))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes renames in a directory durable; best effort, logged at debug: on a platform that cannot open a
/// directory the journal still works, only a rename is not known durable before the next sync (module docs).
pub(super) fn sync_dir(dir: &Path) {
    if let Err(e) = durable::sync_dir(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory sync failed");
    }
}

/// The record the head file names, if there is a head file.
///
/// # Errors
/// When it cannot be read or does not parse.
pub(super) fn read_head(path: &Path) -> io::Result<Option<(u64, [u8; 32])>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let head: HeadJson =
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let hash = unhex32(&head.hash).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "head hash is not 64 hex digits")
    })?;
    Ok(Some((head.seq, hash)))
}

/// Replaces the head file atomically. The directory is not synced: a head file whose rename a machine crash
/// undoes names an earlier record, which the log still holds, so nothing is reported falsely; syncing the
/// directory would add a second fsync to every group commit.
pub(super) fn write_head(path: &Path, seq: u64, hash: &[u8; 32]) -> io::Result<()> {
    let text = serde_json::to_vec(&HeadJson {
        seq,
        hash: hex(hash),
    })
    .map_err(io::Error::other)?;
    let mut head = Replacement::create(path)?;
    head.write_all(&text)?;
    head.commit()
}
