//! The writer task: takes batches of messages from the journal's queue and does all the disk work on blocking
//! threads, through its state ([`Store`]): encoding entries, writing them, group commit, waking the waiters, and
//! surviving write errors.
//!
//! # Durability
//!
//! The writer hands each batch to the OS (`write`) as soon as it has taken it from the queue, so a process crash
//! loses only what is still queued. It syncs (`fdatasync`) when a [`Journal::record_synced`] or [`Journal::flush`]
//! caller is waiting and the queue is drained, and otherwise at least every `sync_every` while there are unsynced
//! writes; one sync releases every waiter before it (group commit). A machine crash can therefore lose up to
//! `sync_every` worth of [`Journal::record`] entries (plus what was queued), and nothing whose `record_synced`
//! returned `Ok`. When a sync fails, the kernel may have dropped the unsynced pages, so the file is truncated back
//! to its last synced length and those records are written again from memory.
//!
//! Write errors (disk full, a file-size limit, EIO) never stop the writer: health turns failing with the error,
//! `aisle_log_write_errors_total` counts, `aisle_log_healthy` drops to 0, a partial line is truncated away, and the
//! write is retried every second. Up to `queue` accepted entries wait in memory meanwhile (and `queue` more in the
//! queue); beyond that entries are dropped and counted, and a chained log writes a gap record once writing works
//! again. `record_synced` and `flush` give up after `sync_timeout` (default 5 s) with an error naming the last write
//! error: the entry is then not known to be durable, but it stays queued and is written if the disk recovers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

#[cfg(test)]
use super::Fault;
#[cfg(doc)]
use super::Journal;
use super::chain::{Chain, GapBody, RESERVED_KINDS};
use super::segments;
use super::{Entry, Failing, JournalConfig, Msg, Shared, Waiter};
use crate::durable::{SegmentNames, open_append};

/// How often a failing write is retried.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Messages the writer takes from the queue before writing.
const MAX_BATCH: usize = 1024;
/// Encoded lines are gathered into chunks of about this size, each written with one call.
const CHUNK_BYTES: usize = 1 << 20;

/// The writer task: takes batches from the queue and hands them to the store on a blocking thread.
pub(super) async fn run(mut store: Store, mut rx: mpsc::Receiver<Msg>) {
    let shared = store.shared.clone();
    loop {
        let deadline = tokio::time::Instant::from_std(store.next_deadline(Instant::now()));
        let mut batch = Vec::new();
        let mut closed = false;
        let room = store.room().min(MAX_BATCH);
        if room > 0 {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => batch.push(msg),
                    None => closed = true,
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
            while !closed && batch.len() < room {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
        } else {
            // The memory buffer is full (the disk is failing): leave entries in the queue, which drops the excess.
            tokio::time::sleep_until(deadline).await;
        }
        let drained = rx.is_empty();
        let stepped = tokio::task::spawn_blocking(move || {
            let stop = store.step(batch, drained, closed);
            (store, stop)
        })
        .await;
        match stepped {
            Ok((s, false)) => store = s,
            Ok((_, true)) => break,
            Err(e) => {
                tracing::error!(log = shared.name, error = %e, "log writer failed; the log no longer writes");
                *shared.failing() = Some(Failing {
                    error: format!("writer task failed: {e}"),
                    since: SystemTime::now(),
                });
                metrics::gauge!("aisle_log_healthy", "log" => shared.name).set(0.0);
                return;
            }
        }
    }
    // Closed: whatever is still queued will not be written.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Record(..) = msg {
            // The entry was accepted but is lost; count it like a drop (the handles see `dropped`).
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("aisle_log_records_dropped_total", "log" => shared.name).increment(1);
        }
    }
}

/// Encoded lines waiting to be durable, and rotations between them.
pub(super) enum Chunk {
    /// Lines to append to the live segment.
    Lines {
        /// The lines, each ending in `\n`.
        bytes: Vec<u8>,
        /// Entries among the lines (journal records excluded).
        entries: u64,
        /// Seq and hash of the last record among them (chained).
        tip: Option<(u64, [u8; 32])>,
    },
    /// Seal the live segment as `path.NNNN…` and open a new one.
    Rotate { number: u64 },
}

/// The segment entries are being encoded into.
pub(super) struct SegState {
    /// First seq (chained).
    pub(super) first: u64,
    /// Records encoded into it.
    pub(super) records: u64,
    /// Of which entries and gap records: a segment without any is not rotated by age.
    pub(super) user: u64,
    /// Its length once everything encoded is written.
    pub(super) bytes: u64,
    /// When it was started: it is rotated once older than `segment_age`.
    pub(super) started: SystemTime,
}

impl SegState {
    /// A new, empty segment whose first record will be `first` (chained; 0 for unchained logs).
    pub(super) fn new(first: u64) -> Self {
        Self {
            first,
            records: 0,
            user: 0,
            bytes: 0,
            started: SystemTime::now(),
        }
    }
}

/// The writer's state and all its disk work (run on blocking threads). Its methods live with their concern:
/// opening in `start`, rotation and retention in `segments`, erasure in `erase`, the rest here.
pub(super) struct Store {
    pub(super) cfg: JournalConfig,
    pub(super) shared: Arc<Shared>,
    /// The directory of the live segment, synced after renames in it.
    pub(super) dir: PathBuf,
    /// The sealed segments' names beside the live one.
    pub(super) sealed: SegmentNames,
    pub(super) head_path: PathBuf,

    // Encoding: assigned as entries are taken, before they are written.
    /// Where the chain stands (chained logs): the next seq and the last hash, advanced as records are encoded.
    pub(super) chain: Chain,
    pub(super) seg: SegState,
    /// The next sealed segment's number (unchained).
    pub(super) next_counter: u64,
    /// Entries encoded so far: an entry's ticket is this count after it.
    pub(super) accepted: u64,

    // Writing.
    pub(super) chunks: VecDeque<Chunk>,
    /// How many of the front chunks are written (not yet synced).
    pub(super) written: usize,
    /// Entries in `chunks`.
    pub(super) buffered: usize,
    pub(super) file: Option<File>,
    pub(super) file_len: u64,
    pub(super) synced_len: u64,
    /// A length to cut the live file back to before writing again (after a failed write or sync).
    pub(super) truncate_to: Option<u64>,
    /// The live segment of a pending rotation has been renamed.
    pub(super) renamed: bool,
    pub(super) unsynced_since: Option<Instant>,
    pub(super) durable_entries: u64,
    pub(super) durable_tip: Option<(u64, [u8; 32])>,
    pub(super) head_dirty: bool,
    pub(super) waiters: Vec<(u64, Waiter)>,
    pub(super) failing: bool,
    pub(super) retry_at: Instant,
    pub(super) next_maintenance: Instant,
    pub(super) maintenance_every: Duration,
    pub(super) sealed_bytes: u64,
    pub(super) sealed_count: usize,
}

impl Store {
    /// Entries the memory buffer still takes.
    fn room(&self) -> usize {
        self.cfg.queue.saturating_sub(self.buffered)
    }

    /// When the writer must act even if nothing arrives: write or sync due, retry, maintenance.
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = self.next_maintenance;
        if self.failing {
            at = at.min(self.retry_at);
        } else {
            if self.chunks.len() > self.written || self.head_dirty {
                at = at.min(now);
            }
            if let Some(t) = self.unsynced_since {
                at = at.min(t + self.cfg.sync_every);
            }
        }
        at
    }

    /// Handles a batch: encodes it, writes, syncs when due, maintains; returns whether the writer stops.
    fn step(&mut self, batch: Vec<Msg>, drained: bool, closing: bool) -> bool {
        let mut closers = Vec::new();
        for msg in batch {
            match msg {
                Msg::Record(entry, waiter) => self.accept(entry, waiter),
                Msg::Flush(waiter) => self.waiters.push((self.accepted, waiter)),
                Msg::Erase(refs, reply) => {
                    let _ = reply.send(self.erase(&refs));
                }
                Msg::Close(waiter) => closers.push(waiter),
            }
        }
        let now = Instant::now();
        if now >= self.next_maintenance {
            self.maintain(now);
        }
        if closing || !closers.is_empty() {
            let result = self.finish();
            self.release();
            for waiter in closers {
                let _ = waiter.send(copy_result(&result));
            }
            for (_, waiter) in self.waiters.drain(..) {
                let _ = waiter.send(Err(io::Error::other(
                    "the log closed before the record was durable",
                )));
            }
            return true;
        }
        if !self.failing || now >= self.retry_at {
            self.persist(now, drained);
        }
        self.release();
        false
    }

    /// Encodes an entry (after a gap record for drops, and a rotation when the segment is full).
    fn accept(&mut self, entry: Entry, waiter: Option<Waiter>) {
        if self.cfg.chained {
            if RESERVED_KINDS.contains(&entry.kind) {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("kind {:?} is reserved for the journal", entry.kind),
                );
                self.refuse(e, waiter);
                return;
            }
            let dropped = self.shared.unrecorded_drops.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.rotate_if_full();
                self.push_internal("gap", &GapBody { dropped }, true);
            }
        }
        self.rotate_if_full();
        let encoded = if self.cfg.chained {
            let at_ms = aisle_domain::now_ms();
            self.chain
                .encode(entry.kind, entry.subject.as_deref(), at_ms, |out| {
                    entry.body.encode(out)
                })
                .map(|(line, seq, hash)| (line, Some((seq, hash))))
        } else {
            let mut line = Vec::with_capacity(256);
            entry.body.encode(&mut line).map(|()| {
                line.push(b'\n');
                (line, None)
            })
        };
        match encoded {
            Ok((line, tip)) => {
                self.push_line(line, true, true, tip);
                if let Some(waiter) = waiter {
                    self.waiters.push((self.accepted, waiter));
                }
            }
            Err(e) => self.refuse(io::Error::new(io::ErrorKind::InvalidData, e), waiter),
        }
    }

    /// Refuses an entry that cannot be written (counted as failed), telling its waiter why.
    fn refuse(&mut self, e: io::Error, waiter: Option<Waiter>) {
        tracing::warn!(log = self.cfg.name, error = %e, "log record refused");
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aisle_log_records_failed_total", "log" => self.cfg.name).increment(1);
        if let Some(waiter) = waiter {
            let _ = waiter.send(Err(e));
        }
    }

    /// Encodes a record the journal writes itself (chained logs only).
    pub(super) fn push_internal(&mut self, kind: &str, body: &impl Serialize, user: bool) {
        let at_ms = aisle_domain::now_ms();
        match self.chain.encode(kind, None, at_ms, |out| {
            serde_json::to_writer(out, body).map_err(|e| e.to_string())
        }) {
            Ok((line, seq, hash)) => self.push_line(line, false, user, Some((seq, hash))),
            Err(e) => {
                tracing::error!(log = self.cfg.name, kind, error = %e, "journal record not encoded")
            }
        }
    }

    /// Queues an encoded line for writing, in the last chunk while that is not written and not full.
    fn push_line(&mut self, line: Vec<u8>, entry: bool, user: bool, tip: Option<(u64, [u8; 32])>) {
        self.seg.bytes += line.len() as u64;
        self.seg.records += 1;
        if user {
            self.seg.user += 1;
        }
        let entries = u64::from(entry);
        if entry {
            self.accepted += 1;
            self.buffered += 1;
        }
        if self.chunks.len() > self.written
            && let Some(Chunk::Lines {
                bytes,
                entries: n,
                tip: last,
            }) = self.chunks.back_mut()
            && bytes.len() < CHUNK_BYTES
        {
            bytes.extend_from_slice(&line);
            *n += entries;
            if tip.is_some() {
                *last = tip;
            }
            return;
        }
        self.chunks.push_back(Chunk::Lines {
            bytes: line,
            entries,
            tip,
        });
    }

    /// Writes what is pending, syncs when due, and updates health.
    fn persist(&mut self, now: Instant, drained: bool) {
        let result = self.drive().and_then(|()| {
            let waiting = self.waiters.iter().any(|(t, _)| *t > self.durable_entries);
            let due = self
                .unsynced_since
                .is_some_and(|t| now >= t + self.cfg.sync_every);
            if (waiting && drained) || due {
                self.sync()
            } else {
                self.write_head_if_dirty()
            }
        });
        match result {
            Ok(()) => self.recovered(),
            Err(e) => self.fail(&e),
        }
    }

    /// Writes every pending chunk in order, performing rotations.
    pub(super) fn drive(&mut self) -> io::Result<()> {
        self.repair()?;
        while self.written < self.chunks.len() {
            if let Chunk::Rotate { number } = self.chunks[self.written] {
                self.rotate_now(number)?;
                continue;
            }
            if self.file.is_none() {
                // The live file was replaced (erasure) but could not be reopened then.
                let file = open_append(&self.cfg.path)?;
                self.file_len = file.metadata()?.len();
                self.synced_len = self.file_len;
                self.file = Some(file);
            }
            let (Some(file), Chunk::Lines { bytes, .. }) =
                (self.file.as_mut(), &self.chunks[self.written])
            else {
                unreachable!("rotations are handled above and the file opened");
            };
            if let Err(e) = write_lines(&self.shared, file, bytes) {
                self.truncate_to = Some(self.file_len);
                let _ = self.repair();
                return Err(e);
            }
            self.file_len += bytes.len() as u64;
            self.written += 1;
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Cuts the live file back after a failed write or sync, so it never keeps a partial or unsynced line.
    fn repair(&mut self) -> io::Result<()> {
        if let Some(len) = self.truncate_to {
            if let Some(file) = &self.file {
                file.set_len(len)?;
            }
            self.file_len = len;
            self.truncate_to = None;
        }
        Ok(())
    }

    /// Syncs the written chunks and updates the head file.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if self.written > 0 {
            let Some(file) = &self.file else {
                return Err(io::Error::other("no live file to sync"));
            };
            if let Err(e) = sync_file(&self.shared, file) {
                // The kernel may have dropped the unsynced pages: cut them off and write them again from memory.
                self.truncate_to = Some(self.synced_len);
                self.written = 0;
                self.unsynced_since = None;
                let _ = self.repair();
                return Err(e);
            }
            let mut entries = 0;
            for _ in 0..self.written {
                if let Some(Chunk::Lines {
                    entries: n, tip, ..
                }) = self.chunks.pop_front()
                {
                    entries += n;
                    if tip.is_some() {
                        self.durable_tip = tip;
                        self.head_dirty = self.cfg.chained;
                    }
                }
            }
            self.written = 0;
            self.synced_len = self.file_len;
            self.unsynced_since = None;
            self.durable_entries += entries;
            self.buffered = self.buffered.saturating_sub(entries as usize);
            let name = self.cfg.name;
            self.shared.written.fetch_add(entries, Ordering::Relaxed);
            metrics::counter!("aisle_log_records_written_total", "log" => name).increment(entries);
            metrics::counter!("aisle_log_syncs_total", "log" => name).increment(1);
            metrics::gauge!("aisle_log_bytes", "log" => name)
                .set((self.sealed_bytes + self.file_len) as f64);
        }
        self.write_head_if_dirty()
    }

    /// Replaces the head file when the durable tip moved since it was last written (chained logs).
    fn write_head_if_dirty(&mut self) -> io::Result<()> {
        if self.head_dirty {
            if let Some((seq, hash)) = self.durable_tip {
                segments::write_head(&self.head_path, seq, &hash)?;
            }
            self.head_dirty = false;
        }
        Ok(())
    }

    /// Records a failed write, sync or rotation: health turns failing (loudly, the first time), retry in a second.
    pub(super) fn fail(&mut self, e: &io::Error) {
        let name = self.cfg.name;
        self.failing = true;
        self.retry_at = Instant::now() + RETRY_EVERY;
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aisle_log_write_errors_total", "log" => name).increment(1);
        metrics::gauge!("aisle_log_healthy", "log" => name).set(0.0);
        let mut failing = self.shared.failing();
        match &mut *failing {
            Some(f) => {
                f.error = e.to_string();
                tracing::debug!(log = name, error = %e, buffered = self.buffered, "log write still failing");
            }
            None => {
                tracing::error!(
                    log = name, path = %self.cfg.path.display(), error = %e, buffered = self.buffered,
                    "log write failed; keeping records in memory and retrying every second"
                );
                *failing = Some(Failing {
                    error: e.to_string(),
                    since: SystemTime::now(),
                });
            }
        }
    }

    /// Writing works (again): health turns ok.
    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            *self.shared.failing() = None;
            metrics::gauge!("aisle_log_healthy", "log" => self.cfg.name).set(1.0);
            tracing::info!(log = self.cfg.name, "log writes work again");
        }
    }

    /// Tells the waiters whose entries are durable.
    fn release(&mut self) {
        let durable = self.durable_entries;
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].0 <= durable {
                let (_, waiter) = self.waiters.swap_remove(i);
                let _ = waiter.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    /// Writes and syncs everything, retrying for up to `sync_timeout`.
    fn finish(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.cfg.sync_timeout;
        loop {
            match self.drive().and_then(|()| self.sync()) {
                Ok(()) => {
                    self.recovered();
                    return Ok(());
                }
                Err(e) => {
                    self.fail(&e);
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::error!(
                            log = self.cfg.name, error = %e, lost = self.buffered,
                            "log closed with records not written"
                        );
                        return Err(e);
                    }
                    std::thread::sleep((deadline - now).min(RETRY_EVERY));
                }
            }
        }
    }
}

/// The same result for another receiver (`io::Error` is not `Clone`).
fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Appends encoded lines to the live segment (tests inject a failure that leaves half of them written).
fn write_lines(shared: &Shared, file: &mut File, bytes: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if shared.fault() == Some(Fault::Write) {
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "injected fault: no space left on device",
        ));
    }
    let _ = shared;
    file.write_all(bytes)
}

/// Syncs the live segment's data (tests inject a failure).
fn sync_file(shared: &Shared, file: &File) -> io::Result<()> {
    #[cfg(test)]
    if shared.fault() == Some(Fault::Sync) {
        return Err(io::Error::other("injected fault: fsync failed"));
    }
    let _ = shared;
    file.sync_data()
}
