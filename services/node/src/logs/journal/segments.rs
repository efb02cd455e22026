//! A journal's files, and the writer's work on them as a whole: rotation, retention, the head file, the gauges.
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
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::chain::{OpenBody, SealBody, hex, unhex32};
use super::writer::{Chunk, SegState, Store};
use crate::durable::{self, Replacement, SegmentNames, open_append};

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

impl Store {
    /// Encodes a rotation when the live segment has reached `segment_bytes` (and holds more than its `open`).
    pub(super) fn rotate_if_full(&mut self) {
        if self.seg.bytes >= self.cfg.segment_bytes && self.seg.user > 0 {
            self.encode_rotate();
        }
    }

    /// Encodes a rotation: the seal, the rename, and the new segment's `open` record.
    fn encode_rotate(&mut self) {
        if self.cfg.chained {
            let seal = SealBody {
                first_seq: self.seg.first,
                records: self.seg.records,
            };
            self.push_internal("seal", &seal, false);
            self.chunks.push_back(Chunk::Rotate {
                number: self.seg.first,
            });
            self.seg = SegState::new(self.chain.next_seq);
            self.push_internal("open", &OpenBody::new("rotate"), false);
        } else {
            self.chunks.push_back(Chunk::Rotate {
                number: self.next_counter,
            });
            self.next_counter += 1;
            self.seg = SegState::new(0);
        }
    }

    /// Seals the live segment under its number and opens a new one; resumable after a failure at any step.
    pub(super) fn rotate_now(&mut self, number: u64) -> io::Result<()> {
        if !self.renamed {
            self.sync()?;
            let target = self.sealed.path(number);
            if target.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cannot seal the live segment: {} exists", target.display()),
                ));
            }
            fs::rename(&self.cfg.path, &target)?;
            self.renamed = true;
            self.file = None;
            sync_dir(&self.dir);
        }
        let file = open_append(&self.cfg.path)?;
        self.file = Some(file);
        self.file_len = 0;
        self.synced_len = 0;
        self.renamed = false;
        // After the sync the rotation is the front chunk.
        self.chunks.pop_front();
        sync_dir(&self.dir);
        tracing::debug!(log = self.cfg.name, segment = number, "log segment sealed");
        self.sweep();
        self.refresh_gauges();
        Ok(())
    }

    /// Age rotation, retention and gauges.
    pub(super) fn maintain(&mut self, now: Instant) {
        self.next_maintenance = now + self.maintenance_every;
        let age = SystemTime::now()
            .duration_since(self.seg.started)
            .unwrap_or_default();
        if self.seg.user > 0 && age >= self.cfg.segment_age {
            self.encode_rotate();
        }
        self.sweep();
        self.refresh_gauges();
    }

    /// Deletes sealed segments past retention, oldest first, up to the first one within it; then, while the sealed
    /// segments together exceed `max_bytes`, the oldest ones.
    pub(super) fn sweep(&mut self) {
        self.sweep_age();
        if self.cfg.max_bytes > 0 {
            self.sweep_size();
        }
    }

    /// Deletes the oldest sealed segments while all of them together exceed `max_bytes`.
    fn sweep_size(&mut self) {
        let Ok(numbers) = self.sealed.list() else {
            return;
        };
        let sizes: Vec<(PathBuf, u64)> = numbers
            .into_iter()
            .map(|n| self.sealed.path(n))
            .map(|p| {
                let len = fs::metadata(&p).map_or(0, |m| m.len());
                (p, len)
            })
            .collect();
        let mut total: u64 = sizes.iter().map(|(_, l)| l).sum();
        for (path, len) in sizes {
            if total <= self.cfg.max_bytes {
                return;
            }
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(log = self.cfg.name, segment = %path.display(), error = %e,
                    "log size cap: cannot delete segment");
                return;
            }
            total -= len;
            metrics::counter!("aisle_log_segments_deleted_total", "log" => self.cfg.name, "reason" => "size")
                .increment(1);
            tracing::warn!(log = self.cfg.name, segment = %path.display(), bytes = len,
                "log segment deleted before its retention: the log is over its size cap (log_max_bytes)");
        }
    }

    /// Deletes sealed segments past retention, oldest first, stopping at the first one within it.
    fn sweep_age(&mut self) {
        let numbers = match self.sealed.list() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(log = self.cfg.name, error = %e, "log retention: cannot list segments");
                return;
            }
        };
        let now = SystemTime::now();
        for n in numbers {
            let path = self.sealed.path(n);
            match fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(t) if now.duration_since(t).unwrap_or_default() > self.cfg.retention => {
                    match fs::remove_file(&path) {
                        Ok(()) => {
                            metrics::counter!("aisle_log_segments_deleted_total", "log" => self.cfg.name,
                                "reason" => "retention")
                            .increment(1);
                            tracing::info!(
                                log = self.cfg.name, segment = %path.display(), "log segment past retention deleted"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(
                                log = self.cfg.name, segment = %path.display(), error = %e,
                                "log retention: cannot delete segment"
                            );
                            return;
                        }
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(log = self.cfg.name, segment = %path.display(), error = %e, "log retention");
                    return;
                }
            }
        }
    }

    /// Counts the sealed segments' bytes again and sets the size gauges.
    pub(super) fn refresh_gauges(&mut self) {
        let (mut bytes, mut count) = (0, 0);
        if let Ok(numbers) = self.sealed.list() {
            for n in numbers {
                if let Ok(meta) = fs::metadata(self.sealed.path(n)) {
                    bytes += meta.len();
                    count += 1;
                }
            }
        }
        self.sealed_bytes = bytes;
        self.sealed_count = count;
        let name = self.cfg.name;
        metrics::gauge!("aisle_log_segments", "log" => name).set((count + 1) as f64);
        metrics::gauge!("aisle_log_bytes", "log" => name).set((bytes + self.file_len) as f64);
    }
}
