//! The writer's work on a journal's files as a whole: rotation of the live segment, retention of sealed ones, and
//! the size gauges. These are methods of the writer's [`Store`], kept apart from the writing itself; the file
//! names and the head file they use are in [`super::segments`].

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use super::chain::{OpenBody, SealBody};
use super::segments::sync_dir;
use super::writer::{Chunk, SegState, Store};
use crate::durable::open_append;

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
