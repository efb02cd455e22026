//! Durable, segmented JSON-lines logs written off the request path: the event log (every applied shopper event,
//! in the format `aisle-train --format events` reads) and the decision log (the audit trail), which is also
//! hash-chained so that an edited, deleted, reordered or truncated record is detected by [`verify`]. It replaces
//! the former `audit::JsonLog`.
//!
//! A [`Journal`] is a handle on a background writer task fed by a bounded queue: [`Journal::record`] never waits
//! (a full queue drops the entry and counts it), [`Journal::record_synced`] returns once its entry is on disk and
//! fsynced, [`Journal::erase`] removes a data subject, [`Journal::health`] says whether writing works.
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
//!
//! # Unchained lines (event log)
//!
//! One line per entry: the body JSON exactly as serialised, then `\n`. The journal writes nothing else (no gap or
//! seal lines), so segments stay plain JSON-lines files the trainer reads; dropped entries are only counted. A
//! torn last line found at start (a crash mid-write) is cut off, with a warning.
//!
//! # Chained records (decision log)
//!
//! ```text
//! {"seq":7,"prev":"<64 hex>","at_ms":1700000000000,"kind":"decision","subject_digest":"<64 hex>","body":{…},"subject":{"ref":"<pseudonym>","salt":"<32 hex>"},"hash":"<64 hex>"}
//! ```
//!
//! - `seq` starts at 1 and grows by one per record across segments; `prev` is the `hash` of the record before it
//!   (64 zeros for seq 1); `at_ms` is when the writer took the entry.
//! - `hash` is the hex SHA-256 of the line's bytes from its first byte up to, not including, the last
//!   `,"subject":` of the line: everything but `subject` and `hash`, exactly as written, so seq, prev, digest and
//!   body are covered. Nothing is re-serialised to check it (floats need not round-trip). The last occurrence is
//!   unambiguous: inside a JSON string a `"` is always escaped, so the body may hold a `"subject"` key but what
//!   follows the real one (`{"ref":"…","salt":"…"}` or `null`, then `"hash"`) cannot hold the sequence.
//! - `subject_digest` (absent when the entry has no subject) is the hex SHA-256 of a salt (16 random bytes, new
//!   for each record) followed by the pseudonym's UTF-8 bytes; `subject` carries the pseudonym and that salt.
//! - `kind` is the entry's kind (`"decision"`, `"admin"`, …) or one the journal writes itself, which entries may
//!   not use:
//!   - `open` `{"reason":…}`: the first record after every start and every rotation. Regular reasons are `start`
//!     and `rotate`; [`verify`] reports the others as incidents: `torn_tail` (the live segment ended in an
//!     incomplete line after a crash: it was set aside as-is as sealed segment `segment`, `torn_bytes` long
//!     incomplete, and the chain continues from its last complete record), `corrupt` (a complete line of the live
//!     segment failed to verify at start, at `line`: the segment was set aside as-is), `unsealed` (the newest sealed
//!     segment lacked its seal: a crash while setting one aside), `head_mismatch` (the head file named a record,
//!     `head_seq`/`head_hash`, that the log no longer held: whole lines were lost at the tail).
//!   - `seal` `{"first_seq":F,"records":R}`: the last record of every sealed segment; R counts the records before
//!     it in the segment. The next segment's `open` links to it.
//!   - `gap` `{"dropped":N}`: N entries were dropped (queue full, or the memory buffer full while the disk was
//!     failing) since the last gap record. Its count is exact; its position is approximate: it precedes the next
//!     entry the writer takes after the drops were counted, which may have been queued just before them.
//!
//! # Erasure
//!
//! [`Journal::erase`] runs in the writer task, so it is ordered with writes: everything recorded before it is
//! written and synced first, records queued meanwhile are written after it. Every segment holding a match is
//! rewritten to `file.tmp` in the same directory, fsynced (keeping its mtime, so retention is unchanged) and renamed
//! over the original; a crash leaves either the old or the new file, never a mix. Chained logs: a matching record's
//! `subject` becomes `null`, its `subject_digest` and `hash` stay, so the chain still verifies and, with the salt
//! gone, the digest can no longer be linked to the pseudonym. Unchained logs: lines whose `subject_field` value
//! equals a pseudonym are removed (compaction; the other lines are copied byte for byte). A line that is not a
//! record (a torn or corrupt line kept for evidence) has the pseudonym masked with `*` instead.
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
//!
//! # Limits
//!
//! - The chain is evidence relative to a trusted anchor. Whoever can write these files can rewrite the chain from
//!   any record on, head file included; lines cut from the live tail are detected only through the head file, which
//!   lives in the same directory. Copy the head (or the last hash [`verify`] reports) elsewhere to detect that.
//! - Erasure redacts `subject` only. The body is covered by the hash and cannot change: it must not carry the
//!   pseudonym or anything else that identifies the shopper.
//! - [`verify`] holds one segment in memory at a time; on a live file being written it may see an incomplete last
//!   line and report it as torn.
//! - During an erasure the writer does nothing else; entries beyond the queue are dropped meanwhile (and counted).
//! - Unix semantics are assumed (renaming a file that is open, fsyncing a directory); elsewhere the journal works
//!   but a rotation or erasure is not guaranteed durable before the next sync.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// How often a failing write is retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The longest and shortest pause between maintenance runs (age rotation, retention, gauges).
const MAINTENANCE_MAX: Duration = Duration::from_secs(60);
const MAINTENANCE_MIN: Duration = Duration::from_millis(100);
/// Messages the writer takes from the queue before writing.
const MAX_BATCH: usize = 1024;
/// Encoded lines are gathered into chunks of about this size, each written with one call.
const CHUNK_BYTES: usize = 1 << 20;
/// The `prev` of the first record.
const ZERO_HASH: [u8; 32] = [0; 32];
/// What precedes the unhashed tail of a chained line.
const SUBJECT_KEY: &[u8] = b",\"subject\":";
/// What precedes the hash at the end of a chained line.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// Kinds the journal writes itself; entries may not use them.
const RESERVED_KINDS: [&str; 3] = ["open", "seal", "gap"];

/// How a journal is laid out and paced. [`JournalConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The live segment; sealed segments are `path.NNNNNNNNNNNNNNNNNNNN` beside it, the head file `path.head`.
    pub path: PathBuf,
    /// The log's name: the `log` label of its metrics (`"events"`, `"decisions"`).
    pub name: &'static str,
    /// Whether lines are hash-chained records (the decision log) or the entries' bodies as given (the event log).
    pub chained: bool,
    /// Unchained logs: the body field holding the subject's pseudonym, which [`Journal::erase`] matches (the
    /// event log's `"shopper_id"`). Without it an unchained log cannot be erased from. Unused when chained.
    pub subject_field: Option<&'static str>,
    /// The size at which the live segment is sealed (default 64 MiB).
    pub segment_bytes: u64,
    /// The age at which a non-empty live segment is sealed (default 1 h), so retention can act on old records.
    pub segment_age: Duration,
    /// How long sealed segments are kept after their newest write (default 30 days).
    pub retention: Duration,
    /// Sealed segments beyond this total size are deleted, oldest first, whatever their age (0: no limit; default
    /// 0). Each deletion is logged at warn and counted in `aisle_log_segments_deleted_total{log,reason="size"}`.
    pub max_bytes: u64,
    /// The longest written records stay unsynced (default 200 ms): what a machine crash may lose.
    pub sync_every: Duration,
    /// How long [`Journal::record_synced`] and [`Journal::flush`] wait for durability before failing (default 5 s).
    pub sync_timeout: Duration,
    /// Entries waiting for the writer before [`Journal::record`] drops them (default 16 384); as many more may wait
    /// in memory while the disk fails.
    pub queue: usize,
}

impl JournalConfig {
    /// An unchained log at `path` with the default sizes and periods and no subject field.
    pub fn new(path: impl Into<PathBuf>, name: &'static str) -> Self {
        Self {
            path: path.into(),
            name,
            chained: false,
            subject_field: None,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 0,
            sync_every: Duration::from_millis(200),
            sync_timeout: Duration::from_secs(5),
            queue: 16_384,
        }
    }

    /// The event log: unchained, named `events`, erased by the bodies' `shopper_id`.
    pub fn events(path: impl Into<PathBuf>) -> Self {
        Self {
            subject_field: Some("shopper_id"),
            ..Self::new(path, "events")
        }
    }

    /// The decision log: chained, named `decisions`.
    pub fn decisions(path: impl Into<PathBuf>) -> Self {
        Self {
            chained: true,
            ..Self::new(path, "decisions")
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                what.to_string(),
            ))
        };
        if self.path.file_name().is_none() {
            return invalid("journal path has no file name");
        }
        if self.queue == 0 {
            return invalid("journal queue must be at least 1");
        }
        if self.segment_bytes == 0 {
            return invalid("journal segment_bytes must be positive");
        }
        if self.segment_age.is_zero() || self.sync_every.is_zero() {
            return invalid("journal segment_age and sync_every must be positive");
        }
        Ok(())
    }
}

/// One thing to log: its kind, the pseudonym of the shopper it is about (if any) and its body.
///
/// The body is serialised by the writer task, off the request path. For an unchained log the line is the body
/// alone, so the body must carry whatever identifies the subject on disk (the `subject_field`). For a chained log the
/// subject goes in `subject` and must not be repeated in the body: only `subject` can be erased.
pub struct Entry {
    kind: &'static str,
    subject: Option<String>,
    body: Body,
}

enum Body {
    Value(Box<dyn EncodeJson>),
    Raw(String),
}

/// A body the writer serialises later.
trait EncodeJson: Send {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String>;
}

impl<T: Serialize + Send> EncodeJson for T {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, self).map_err(|e| e.to_string())
    }
}

impl Body {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Body::Value(v) => v.encode(out),
            Body::Raw(raw) => {
                if raw.contains('\n') {
                    return Err("raw body spans lines".to_string());
                }
                serde_json::from_str::<serde::de::IgnoredAny>(raw)
                    .map_err(|e| format!("raw body is not JSON: {e}"))?;
                out.extend_from_slice(raw.as_bytes());
                Ok(())
            }
        }
    }
}

impl Entry {
    /// An entry whose body the writer serialises (compact JSON, as `serde_json::to_writer` writes it).
    pub fn new<T: Serialize + Send + 'static>(
        kind: &'static str,
        subject: Option<String>,
        body: T,
    ) -> Self {
        Self {
            kind,
            subject,
            body: Body::Value(Box::new(body)),
        }
    }

    /// An entry whose body is already serialised JSON, written byte for byte. It must be one line of valid JSON;
    /// the writer checks and refuses it otherwise (counted as failed).
    pub fn raw(kind: &'static str, subject: Option<String>, json: impl Into<String>) -> Self {
        Self {
            kind,
            subject,
            body: Body::Raw(json.into()),
        }
    }

    /// The entry's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The pseudonym of the shopper the entry is about.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("kind", &self.kind)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Whether a journal is writing, and what it has done since it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `None` while writes succeed; the last write error otherwise.
    pub failing: Option<Failing>,
    /// Entries written and synced.
    pub written: u64,
    /// Entries dropped: the queue was full (or the writer gone).
    pub dropped: u64,
    /// Entries refused because their body could not be serialised or their kind is reserved.
    pub failed: u64,
    /// Failed write, sync, rotation or head-file operations (each retry that fails counts).
    pub write_errors: u64,
}

impl Health {
    /// Whether the last write succeeded.
    pub fn is_ok(&self) -> bool {
        self.failing.is_none()
    }
}

/// A journal that cannot write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// The last error, as text.
    pub error: String,
    /// When writing started to fail.
    pub since: SystemTime,
}

/// What [`Journal::erase`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseReport {
    /// Whether records were redacted (chained log) or removed (unchained log).
    pub redacted: bool,
    /// The files changed, in write order, with how many records each had redacted or removed.
    pub files: Vec<ErasedFile>,
}

impl EraseReport {
    /// Records redacted or removed in all files.
    pub fn records(&self) -> u64 {
        self.files.iter().map(|f| f.records).sum()
    }
}

/// One file changed by an erasure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasedFile {
    /// The segment.
    pub path: PathBuf,
    /// Records redacted or removed in it (and torn or corrupt lines masked).
    pub records: u64,
}

/// Counters and health shared by the handles and the writer.
struct Shared {
    name: &'static str,
    failing: Mutex<Option<Failing>>,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    write_errors: AtomicU64,
    /// Entries dropped since the last gap record.
    unrecorded_drops: AtomicU64,
    #[cfg(test)]
    fault: Mutex<Option<Fault>>,
}

impl Shared {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            failing: Mutex::new(None),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            unrecorded_drops: AtomicU64::new(0),
            #[cfg(test)]
            fault: Mutex::new(None),
        }
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unrecorded_drops.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aisle_log_records_dropped_total", "log" => self.name).increment(1);
    }

    #[cfg(test)]
    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A failure the unit tests inject into the writer.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Writes put half their bytes in the file, then fail as a full disk would.
    Write,
    /// Syncs fail.
    Sync,
}

type Waiter = oneshot::Sender<io::Result<()>>;

enum Msg {
    /// An entry, with whom to tell once it is durable.
    Record(Entry, Option<Waiter>),
    /// Tell once everything before is durable.
    Flush(Waiter),
    Erase(Vec<String>, oneshot::Sender<io::Result<EraseReport>>),
    /// Write and sync everything before, then stop.
    Close(Waiter),
}

/// A handle on a journal's writer task; clones share it. The writer stops after [`Journal::close`] or when every
/// handle is gone (after a last write and sync).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    sync_timeout: Duration,
    /// The live segment, the layout and the subject field: what [`Journal::find`] reads.
    path: PathBuf,
    chained: bool,
    subject_field: Option<&'static str>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal (creating its directory and live segment as needed, continuing an existing one, setting
    /// aside a live segment with a torn or corrupt line, see the module docs) and starts its writer task. Needs a
    /// tokio runtime.
    ///
    /// # Errors
    /// An invalid configuration; the directory or live segment cannot be created, read or opened; a live segment
    /// to be set aside cannot be renamed (or its sealed name is taken).
    pub async fn open(config: JournalConfig) -> io::Result<Self> {
        config.validate()?;
        let shared = Arc::new(Shared::new(config.name));
        let (tx, rx) = mpsc::channel(config.queue);
        let sync_timeout = config.sync_timeout;
        let (path, chained, subject_field) =
            (config.path.clone(), config.chained, config.subject_field);
        let for_store = shared.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(config, for_store))
            .await
            .map_err(io::Error::other)??;
        metrics::gauge!("aisle_log_healthy", "log" => shared.name).set(1.0);
        tokio::spawn(run(store, rx));
        Ok(Self {
            tx,
            shared,
            sync_timeout,
            path,
            chained,
            subject_field,
        })
    }

    /// The lines about the subjects named `refs` (a data-subject access request): for a chained log the records
    /// whose `subject` is one of them, for an unchained one the lines whose subject field is. Reads every segment,
    /// oldest first, without pausing the writer; returns at most `limit` lines and how many there are in all.
    ///
    /// # Errors
    /// When the directory or a segment cannot be read.
    pub async fn find(&self, refs: Vec<String>, limit: usize) -> io::Result<(Vec<String>, u64)> {
        let (path, chained, field) = (self.path.clone(), self.chained, self.subject_field);
        tokio::task::spawn_blocking(move || find_lines(&path, chained, field, &refs, limit))
            .await
            .map_err(io::Error::other)?
    }

    /// Queues an entry without waiting. When the queue is full (or the writer has stopped) the entry is dropped and
    /// counted in `aisle_log_records_dropped_total{log}`; a chained log then writes a gap record.
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(Msg::Record(entry, None)).is_err() {
            self.shared.count_drop();
        }
    }

    /// Queues an entry, waiting for room rather than dropping it, and returns once it is written and synced.
    ///
    /// # Errors
    /// The entry could not be serialised or uses a reserved kind (`InvalidData`, `InvalidInput`); the writer has
    /// stopped; or it was not durable within `sync_timeout` (`TimedOut`, naming the last write error): it may still
    /// be written later.
    pub async fn record_synced(&self, entry: Entry) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.wait(Msg::Record(entry, Some(tx)), rx).await
    }

    /// Returns once every entry queued before the call is written and synced (or was refused).
    ///
    /// # Errors
    /// As [`Journal::record_synced`].
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.wait(Msg::Flush(tx), rx).await
    }

    /// Writes and syncs everything queued, then stops the writer; later entries from any handle are dropped.
    ///
    /// # Errors
    /// The last write or sync failed for `sync_timeout`: what was not written is lost.
    pub async fn close(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Close(tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Erases the shoppers with these pseudonyms from every segment (see the module docs): chained records have
    /// their subject redacted, unchained lines are removed. Waits for the writer (no timeout: a large log takes a
    /// while to rewrite).
    ///
    /// # Errors
    /// Pending records could not be written first; a segment could not be read, rewritten or renamed (segments
    /// before it are already erased, it and later ones are untouched: retry); an unchained log has no
    /// `subject_field`; the writer has stopped.
    pub async fn erase(&self, refs: Vec<String>) -> io::Result<EraseReport> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Erase(refs, tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// The journal's health, read from memory.
    pub fn health(&self) -> Health {
        Health {
            failing: self.shared.failing().clone(),
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
        }
    }

    /// The log's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    async fn wait(&self, msg: Msg, rx: oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
        let done = async {
            self.tx.send(msg).await.map_err(|_| self.stopped())?;
            rx.await.map_err(|_| self.stopped())?
        };
        match tokio::time::timeout(self.sync_timeout, done).await {
            Ok(result) => result,
            Err(_) => {
                let cause = match &*self.shared.failing() {
                    Some(f) => format!(": {}", f.error),
                    None => String::new(),
                };
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} log: not durable within {:?}{cause}",
                        self.shared.name, self.sync_timeout
                    ),
                ))
            }
        }
    }

    fn stopped(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("{} log: the writer has stopped", self.shared.name),
        )
    }

    #[cfg(test)]
    fn set_fault(&self, fault: Option<Fault>) {
        *self
            .shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

/// Registers the journal metrics' descriptions.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "aisle_log_records_dropped_total",
        "decision or event records dropped because a log lagged or its disk failed"
    );
    describe_counter!(
        "aisle_log_records_written_total",
        "records written and synced, by log"
    );
    describe_counter!(
        "aisle_log_records_failed_total",
        "records refused because their body could not be serialised, by log"
    );
    describe_counter!(
        "aisle_log_write_errors_total",
        "failed log writes, syncs and rotations (each retry counts), by log"
    );
    describe_counter!("aisle_log_syncs_total", "log fsyncs, by log");
    describe_gauge!(
        "aisle_log_healthy",
        "1 while a log's writes succeed, 0 while they fail"
    );
    describe_gauge!(
        "aisle_log_bytes",
        "bytes on disk in a log's live and sealed segments"
    );
    describe_gauge!(
        "aisle_log_segments",
        "a log's segments on disk, live included"
    );
    describe_counter!(
        "aisle_log_segments_deleted_total",
        "sealed segments deleted, by log and reason (retention: past log_retention_hours; size: over log_max_bytes)"
    );
}

/// The writer task: takes batches from the queue and hands them to the store on a blocking thread.
async fn run(mut store: Store, mut rx: mpsc::Receiver<Msg>) {
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
enum Chunk {
    Lines {
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
struct SegState {
    /// First seq (chained).
    first: u64,
    /// Records encoded into it.
    records: u64,
    /// Of which entries and gap records: a segment without any is not rotated by age.
    user: u64,
    bytes: u64,
    started: SystemTime,
}

impl SegState {
    fn new(first: u64) -> Self {
        Self {
            first,
            records: 0,
            user: 0,
            bytes: 0,
            started: SystemTime::now(),
        }
    }
}

/// The writer's state and all its disk work (run on blocking threads).
struct Store {
    cfg: JournalConfig,
    shared: Arc<Shared>,
    dir: PathBuf,
    head_path: PathBuf,
    salts: Salts,

    // Encoding: assigned as entries are taken, before they are written.
    next_seq: u64,
    last_hash: [u8; 32],
    seg: SegState,
    /// The next sealed segment's number (unchained).
    next_counter: u64,
    /// Entries encoded so far: an entry's ticket is this count after it.
    accepted: u64,

    // Writing.
    chunks: VecDeque<Chunk>,
    /// How many of the front chunks are written (not yet synced).
    written: usize,
    /// Entries in `chunks`.
    buffered: usize,
    file: Option<File>,
    file_len: u64,
    synced_len: u64,
    /// A length to cut the live file back to before writing again (after a failed write or sync).
    truncate_to: Option<u64>,
    /// The live segment of a pending rotation has been renamed.
    renamed: bool,
    unsynced_since: Option<Instant>,
    durable_entries: u64,
    durable_tip: Option<(u64, [u8; 32])>,
    head_dirty: bool,
    waiters: Vec<(u64, Waiter)>,
    failing: bool,
    retry_at: Instant,
    next_maintenance: Instant,
    maintenance_every: Duration,
    sealed_bytes: u64,
    sealed_count: usize,
}

impl Store {
    fn open(cfg: JournalConfig, shared: Arc<Shared>) -> io::Result<Self> {
        let dir = parent_dir(&cfg.path);
        fs::create_dir_all(&dir)?;
        remove_stale_temps(&cfg.path);
        let maintenance_every = cfg
            .segment_age
            .min(cfg.retention)
            .min(MAINTENANCE_MAX)
            .max(MAINTENANCE_MIN);
        let now = Instant::now();
        let mut store = Self {
            head_path: with_suffix(&cfg.path, ".head"),
            dir,
            shared,
            salts: Salts::new(),
            next_seq: 1,
            last_hash: ZERO_HASH,
            seg: SegState::new(1),
            next_counter: 1,
            accepted: 0,
            chunks: VecDeque::new(),
            written: 0,
            buffered: 0,
            file: None,
            file_len: 0,
            synced_len: 0,
            truncate_to: None,
            renamed: false,
            unsynced_since: None,
            durable_entries: 0,
            durable_tip: None,
            head_dirty: false,
            waiters: Vec::new(),
            failing: false,
            retry_at: now,
            next_maintenance: now + maintenance_every,
            maintenance_every,
            sealed_bytes: 0,
            sealed_count: 0,
            cfg,
        };
        if store.cfg.chained {
            store.start_chain()?;
        } else {
            store.start_plain()?;
        }
        let file = open_append(&store.cfg.path)?;
        store.file_len = file.metadata()?.len();
        store.synced_len = store.file_len;
        store.file = Some(file);
        store.sweep();
        store.refresh_gauges();
        Ok(store)
    }

    /// Continues an unchained live segment, cutting off a torn last line.
    fn start_plain(&mut self) -> io::Result<()> {
        self.next_counter = list_segments(&self.cfg.path)?.last().map_or(1, |n| n + 1);
        self.seg = SegState::new(0);
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.cfg.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let len = meta.len();
        let torn = torn_tail_len(&mut file, len)?;
        if torn > 0 {
            tracing::warn!(
                log = self.cfg.name,
                path = %self.cfg.path.display(),
                torn_bytes = torn,
                "log ended in an incomplete line (a crash mid-write); cutting it off"
            );
            file.set_len(len - torn)?;
            file.sync_all()?;
        }
        if len > torn {
            self.seg.records = 1;
            self.seg.user = 1;
        }
        self.seg.bytes = len - torn;
        self.seg.started = meta
            .created()
            .or_else(|_| meta.modified())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(())
    }

    /// Finds where the chain stands: continues the live segment, or sets it aside when it ends irregularly, and
    /// encodes the `open` record saying which.
    fn start_chain(&mut self) -> io::Result<()> {
        let path = self.cfg.path.clone();
        let mut sealed = list_segments(&path)?;
        let head = match read_head(&self.head_path) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(log = self.cfg.name, error = %e, "head file unreadable; ignored");
                None
            }
        };
        let live = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut open = OpenBody::new("start");
        let mut tip = None;
        let mut live_records = Vec::new();
        let mut continued = false;
        if !live.is_empty() {
            let scan = scan_chain(&live);
            tip = scan.records.last().copied();
            if scan.bad_line.is_none() && scan.torn == 0 && !scan.ends_sealed {
                continued = true;
                self.seg = SegState {
                    first: scan.records.first().map_or(1, |r| r.0),
                    records: scan.records.len() as u64,
                    user: scan.user,
                    bytes: live.len() as u64,
                    started: scan
                        .first_at_ms
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms)),
                };
            } else {
                // A finished seal (a crash before the rename), a torn line or a corrupt one: set it aside as-is.
                let number = match scan.records.first() {
                    Some(r) => r.0,
                    None => self.tip_before(&sealed, head)?.map_or(1, |t| t.0 + 1),
                };
                let target = segment_path(&path, number);
                if target.exists() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "cannot set aside {}: {} exists",
                            path.display(),
                            target.display()
                        ),
                    ));
                }
                fs::rename(&path, &target)?;
                sync_dir(&self.dir);
                let name = file_name(&target);
                if let Some(line) = scan.bad_line {
                    tracing::error!(
                        log = self.cfg.name, segment = %name, line,
                        "live log segment holds a line that does not verify; set aside, the chain continues"
                    );
                    open = OpenBody::new("corrupt");
                    open.segment = Some(name);
                    open.line = Some(line as u64);
                } else if scan.torn > 0 {
                    tracing::warn!(
                        log = self.cfg.name, segment = %name, torn_bytes = scan.torn,
                        "live log segment ended in an incomplete line (a crash mid-write); set aside"
                    );
                    open = OpenBody::new("torn_tail");
                    open.segment = Some(name);
                    open.torn_bytes = Some(scan.torn);
                }
                sealed.push(number);
            }
            live_records = scan.records;
        }
        if tip.is_none() {
            if let Some(&newest) = sealed.last()
                && open.reason == "start"
            {
                // Nothing live: a crash may have left the newest sealed segment without its seal.
                let bytes = fs::read(segment_path(&path, newest))?;
                let scan = scan_chain(&bytes);
                if scan.torn > 0 || scan.bad_line.is_some() || !scan.ends_sealed {
                    open = OpenBody::new(if scan.torn > 0 {
                        "torn_tail"
                    } else {
                        "unsealed"
                    });
                    open.segment = Some(file_name(&segment_path(&path, newest)));
                    open.torn_bytes = (scan.torn > 0).then_some(scan.torn);
                }
            }
            tip = self.tip_before(&sealed, head)?;
        }
        let (seq, hash) = tip.unwrap_or((0, ZERO_HASH));
        if let Some((head_seq, head_hash)) = head {
            let differs = live_records
                .iter()
                .find(|r| r.0 == head_seq)
                .is_some_and(|r| r.1 != head_hash);
            if head_seq > seq || differs {
                tracing::error!(
                    log = self.cfg.name,
                    head_seq,
                    last_seq = seq,
                    "the log no longer holds the record its head file names: lines were lost at the tail"
                );
                if open.reason == "start" {
                    open.reason = "head_mismatch".to_string();
                }
                open.head_seq = Some(head_seq);
                open.head_hash = Some(hex(&head_hash));
            }
        }
        self.next_seq = seq + 1;
        self.last_hash = hash;
        self.durable_tip = tip;
        if !continued {
            self.seg = SegState::new(self.next_seq);
        }
        self.push_internal("open", &open, false);
        Ok(())
    }

    /// The last record of the newest sealed segment that has one, else the head file's.
    fn tip_before(
        &self,
        sealed: &[u64],
        head: Option<(u64, [u8; 32])>,
    ) -> io::Result<Option<(u64, [u8; 32])>> {
        for &n in sealed.iter().rev() {
            let bytes = fs::read(segment_path(&self.cfg.path, n))?;
            if let Some(&tip) = scan_chain(&bytes).records.last() {
                return Ok(Some(tip));
            }
        }
        Ok(head)
    }

    /// Entries the memory buffer still takes.
    fn room(&self) -> usize {
        self.cfg.queue.saturating_sub(self.buffered)
    }

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
            self.encode_chained(entry.kind, entry.subject.as_deref(), at_ms, |out| {
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

    fn refuse(&mut self, e: io::Error, waiter: Option<Waiter>) {
        tracing::warn!(log = self.cfg.name, error = %e, "log record refused");
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aisle_log_records_failed_total", "log" => self.cfg.name).increment(1);
        if let Some(waiter) = waiter {
            let _ = waiter.send(Err(e));
        }
    }

    /// Encodes one chained record, advancing the chain on success.
    fn encode_chained(
        &mut self,
        kind: &str,
        subject: Option<&str>,
        at_ms: i64,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(Vec<u8>, u64, [u8; 32]), String> {
        let seq = self.next_seq;
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(format!("{{\"seq\":{seq},\"prev\":\"").as_bytes());
        push_hex(&mut line, &self.last_hash);
        line.extend_from_slice(format!("\",\"at_ms\":{at_ms},\"kind\":").as_bytes());
        serde_json::to_writer(&mut line, kind).map_err(|e| e.to_string())?;
        let subject = subject.map(|pseudonym| {
            let salt = self.salts.next();
            (pseudonym, salt, subject_digest(&salt, pseudonym))
        });
        if let Some((_, _, digest)) = &subject {
            line.extend_from_slice(b",\"subject_digest\":\"");
            push_hex(&mut line, digest);
            line.push(b'"');
        }
        line.extend_from_slice(b",\"body\":");
        body(&mut line)?;
        let hash: [u8; 32] = Sha256::digest(&line).into();
        line.extend_from_slice(SUBJECT_KEY);
        match subject {
            Some((pseudonym, salt, _)) => {
                line.extend_from_slice(b"{\"ref\":");
                serde_json::to_writer(&mut line, pseudonym).map_err(|e| e.to_string())?;
                line.extend_from_slice(b",\"salt\":\"");
                push_hex(&mut line, &salt);
                line.extend_from_slice(b"\"}");
            }
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(HASH_KEY);
        push_hex(&mut line, &hash);
        line.extend_from_slice(b"\"}\n");
        self.next_seq += 1;
        self.last_hash = hash;
        Ok((line, seq, hash))
    }

    /// Encodes a record the journal writes itself (chained logs only).
    fn push_internal(&mut self, kind: &str, body: &impl Serialize, user: bool) {
        let at_ms = aisle_domain::now_ms();
        match self.encode_chained(kind, None, at_ms, |out| {
            serde_json::to_writer(out, body).map_err(|e| e.to_string())
        }) {
            Ok((line, seq, hash)) => self.push_line(line, false, user, Some((seq, hash))),
            Err(e) => {
                tracing::error!(log = self.cfg.name, kind, error = %e, "journal record not encoded")
            }
        }
    }

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

    fn rotate_if_full(&mut self) {
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
            self.seg = SegState::new(self.next_seq);
            self.push_internal("open", &OpenBody::new("rotate"), false);
        } else {
            self.chunks.push_back(Chunk::Rotate {
                number: self.next_counter,
            });
            self.next_counter += 1;
            self.seg = SegState::new(0);
        }
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
    fn drive(&mut self) -> io::Result<()> {
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
    fn sync(&mut self) -> io::Result<()> {
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

    fn write_head_if_dirty(&mut self) -> io::Result<()> {
        if self.head_dirty {
            if let Some((seq, hash)) = self.durable_tip {
                write_head(&self.head_path, seq, &hash)?;
            }
            self.head_dirty = false;
        }
        Ok(())
    }

    /// Seals the live segment under its number and opens a new one; resumable after a failure at any step.
    fn rotate_now(&mut self, number: u64) -> io::Result<()> {
        if !self.renamed {
            self.sync()?;
            let target = segment_path(&self.cfg.path, number);
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
    fn maintain(&mut self, now: Instant) {
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
    fn sweep(&mut self) {
        self.sweep_age();
        if self.cfg.max_bytes > 0 {
            self.sweep_size();
        }
    }

    fn sweep_size(&mut self) {
        let Ok(numbers) = list_segments(&self.cfg.path) else {
            return;
        };
        let sizes: Vec<(PathBuf, u64)> = numbers
            .into_iter()
            .map(|n| segment_path(&self.cfg.path, n))
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

    fn sweep_age(&mut self) {
        let numbers = match list_segments(&self.cfg.path) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(log = self.cfg.name, error = %e, "log retention: cannot list segments");
                return;
            }
        };
        let now = SystemTime::now();
        for n in numbers {
            let path = segment_path(&self.cfg.path, n);
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

    fn refresh_gauges(&mut self) {
        let (mut bytes, mut count) = (0, 0);
        if let Ok(numbers) = list_segments(&self.cfg.path) {
            for n in numbers {
                if let Ok(meta) = fs::metadata(segment_path(&self.cfg.path, n)) {
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

    fn fail(&mut self, e: &io::Error) {
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

    fn erase(&mut self, refs: &[String]) -> io::Result<EraseReport> {
        if !self.cfg.chained && self.cfg.subject_field.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the {} log has no subject field to erase by", self.cfg.name),
            ));
        }
        if let Err(e) = self.drive().and_then(|()| self.sync()) {
            self.fail(&e);
            return Err(e);
        }
        let matcher = Matcher::new(refs, self.cfg.chained, self.cfg.subject_field);
        let mut files = Vec::new();
        for n in list_segments(&self.cfg.path)? {
            let path = segment_path(&self.cfg.path, n);
            let records = rewrite(&path, &matcher)?;
            if records > 0 {
                files.push(ErasedFile { path, records });
            }
        }
        let live = self.cfg.path.clone();
        let records = rewrite(&live, &matcher)?;
        if records > 0 {
            // The old inode is gone: append to the new file from now on.
            self.file = None;
            let file = open_append(&live)?;
            self.file_len = file.metadata()?.len();
            self.synced_len = self.file_len;
            self.seg.bytes = self.file_len;
            self.file = Some(file);
            files.push(ErasedFile {
                path: live,
                records,
            });
        }
        self.refresh_gauges();
        let report = EraseReport {
            redacted: self.cfg.chained,
            files,
        };
        tracing::info!(
            log = self.cfg.name,
            subjects = refs.len(),
            files = report.files.len(),
            records = report.records(),
            "log erasure done"
        );
        Ok(report)
    }
}

fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

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

fn sync_file(shared: &Shared, file: &File) -> io::Result<()> {
    #[cfg(test)]
    if shared.fault() == Some(Fault::Sync) {
        return Err(io::Error::other("injected fault: fsync failed"));
    }
    let _ = shared;
    file.sync_data()
}

/// Decides what erasure does to a line.
struct Matcher<'a> {
    refs: HashSet<&'a str>,
    /// The pseudonyms as they appear inside JSON strings, for a quick first test.
    needles: Vec<Vec<u8>>,
    chained: bool,
    field: Option<&'static str>,
}

impl<'a> Matcher<'a> {
    fn new(refs: &'a [String], chained: bool, field: Option<&'static str>) -> Self {
        let refs: HashSet<&str> = refs
            .iter()
            .map(String::as_str)
            .filter(|r| !r.is_empty())
            .collect();
        let needles = refs
            .iter()
            .map(|r| {
                // `"…"`: at least two quotes around a non-empty string.
                let quoted = serde_json::to_vec(r).unwrap_or_default();
                quoted[1..quoted.len() - 1].to_vec()
            })
            .collect();
        Self {
            refs,
            needles,
            chained,
            field,
        }
    }

    /// The replacement of a line (possibly empty: removed), or `None` to keep it.
    fn apply(&self, line: &[u8]) -> Option<Vec<u8>> {
        if !self.needles.iter().any(|n| find(line, n).is_some()) {
            return None;
        }
        let Some(content) = line.strip_suffix(b"\n") else {
            return Some(self.mask(line));
        };
        if self.chained {
            let Some((subject_at, hash_at)) = split_line(content) else {
                return Some(self.mask(line));
            };
            let value = &content[subject_at + SUBJECT_KEY.len()..hash_at];
            return match serde_json::from_slice::<Option<SubjectJson>>(value) {
                Ok(Some(s)) if self.refs.contains(s.reference.as_str()) => {
                    let mut out = Vec::with_capacity(line.len());
                    out.extend_from_slice(&content[..subject_at + SUBJECT_KEY.len()]);
                    out.extend_from_slice(b"null");
                    out.extend_from_slice(&content[hash_at..]);
                    out.push(b'\n');
                    Some(out)
                }
                Ok(_) => None,
                Err(_) => Some(self.mask(line)),
            };
        }
        let field = self.field?;
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(content) {
            Ok(obj) => match obj.get(field) {
                Some(serde_json::Value::String(s)) if self.refs.contains(s.as_str()) => {
                    Some(Vec::new())
                }
                _ => None,
            },
            Err(_) => Some(self.mask(line)),
        }
    }

    /// The line with every pseudonym overwritten by `*`, keeping its length.
    fn mask(&self, line: &[u8]) -> Vec<u8> {
        let mut out = line.to_vec();
        for needle in &self.needles {
            let mut from = 0;
            while let Some(at) = find(&out[from..], needle) {
                let start = from + at;
                out[start..start + needle.len()].fill(b'*');
                from = start + needle.len();
            }
        }
        out
    }
}

/// Rewrites a file through the matcher (temporary file, fsync, rename, keeping the mtime); returns the lines
/// changed (nothing is rewritten when none are).
fn rewrite(path: &Path, matcher: &Matcher<'_>) -> io::Result<u64> {
    let src = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mtime = src.metadata()?.modified().ok();
    let tmp = with_suffix(path, ".tmp");
    let result = (|| -> io::Result<u64> {
        let mut reader = BufReader::new(src);
        let mut out = BufWriter::new(File::create(&tmp)?);
        let mut line = Vec::new();
        let mut changed = 0;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            match matcher.apply(&line) {
                Some(new) => {
                    changed += 1;
                    out.write_all(&new)?;
                }
                None => out.write_all(&line)?,
            }
        }
        if changed == 0 {
            return Ok(0);
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        if let Some(t) = mtime {
            file.set_modified(t)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        Ok(changed)
    })();
    match result {
        Ok(n) if n > 0 => sync_dir(&parent_dir(path)),
        _ => {
            let _ = fs::remove_file(&tmp);
        }
    }
    result
}

// ---- On-disk format helpers ----

#[derive(Debug, Serialize, Deserialize)]
struct SealBody {
    first_seq: u64,
    records: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct GapBody {
    dropped: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OpenBody {
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    torn_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_hash: Option<String>,
}

impl OpenBody {
    fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            ..Self::default()
        }
    }

    fn regular(&self) -> bool {
        self.reason == "start" || self.reason == "rotate"
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectJson {
    #[serde(rename = "ref")]
    reference: String,
    salt: String,
}

/// A whole chained line, as parsed to check it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineJson {
    seq: u64,
    prev: String,
    at_ms: i64,
    kind: String,
    #[serde(default)]
    subject_digest: Option<String>,
    body: serde::de::IgnoredAny,
    /// Parsed on its own from its exact span (see `parse_record`).
    subject: serde::de::IgnoredAny,
    hash: String,
}

/// The body of a journal record, parsed again.
#[derive(Debug, Deserialize)]
struct BodyOnly<T> {
    body: T,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeadJson {
    seq: u64,
    hash: String,
}

/// A record that parsed, whose hash and subject digest match its content.
#[derive(Debug)]
struct Rec {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    at_ms: i64,
    digest: bool,
    subject: bool,
    special: Special,
}

#[derive(Debug)]
enum Special {
    None,
    Open(OpenBody),
    Seal(SealBody),
    Gap(GapBody),
}

/// Where the unhashed tail of a chained line starts (`,"subject":`) and where its hash starts (`,"hash":"`),
/// when the line ends in `,"hash":"<64 hex>"}`.
fn split_line(line: &[u8]) -> Option<(usize, usize)> {
    let subject_at = rfind(line, SUBJECT_KEY)?;
    let hash_at = rfind(line, HASH_KEY)?;
    let tail = &line[hash_at + HASH_KEY.len()..];
    (hash_at > subject_at && tail.len() == 66 && tail.ends_with(b"\"}"))
        .then_some((subject_at, hash_at))
}

/// Parses and checks one chained line (without its newline): structure, hash, subject digest.
fn parse_record(line: &[u8]) -> Result<Rec, VerifyProblem> {
    let malformed = |what: String| VerifyProblem::Malformed(what);
    let (subject_at, hash_at) = split_line(line)
        .ok_or_else(|| malformed("the line does not end with subject and hash".into()))?;
    let subject: Option<SubjectJson> =
        serde_json::from_slice(&line[subject_at + SUBJECT_KEY.len()..hash_at])
            .map_err(|e| malformed(format!("subject: {e}")))?;
    let parsed: LineJson = serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
    let hash =
        unhex32(&parsed.hash).ok_or_else(|| malformed("hash is not 64 hex digits".into()))?;
    let computed: [u8; 32] = Sha256::digest(&line[..subject_at]).into();
    if computed != hash {
        return Err(VerifyProblem::HashMismatch);
    }
    let prev =
        unhex32(&parsed.prev).ok_or_else(|| malformed("prev is not 64 hex digits".into()))?;
    let digest = match &parsed.subject_digest {
        Some(d) => Some(
            unhex32(d).ok_or_else(|| malformed("subject_digest is not 64 hex digits".into()))?,
        ),
        None => None,
    };
    if let Some(s) = &subject {
        let salt = unhex(&s.salt).ok_or_else(|| malformed("salt is not hex".into()))?;
        let Some(digest) = digest else {
            return Err(malformed("subject without subject_digest".into()));
        };
        if subject_digest(&salt, &s.reference) != digest {
            return Err(VerifyProblem::SubjectMismatch);
        }
    }
    let body_of = |what: &str| malformed(format!("{what} record body"));
    let special = match parsed.kind.as_str() {
        "open" => Special::Open(
            serde_json::from_slice::<BodyOnly<OpenBody>>(line)
                .map_err(|_| body_of("open"))?
                .body,
        ),
        "seal" => Special::Seal(
            serde_json::from_slice::<BodyOnly<SealBody>>(line)
                .map_err(|_| body_of("seal"))?
                .body,
        ),
        "gap" => Special::Gap(
            serde_json::from_slice::<BodyOnly<GapBody>>(line)
                .map_err(|_| body_of("gap"))?
                .body,
        ),
        _ => Special::None,
    };
    let _ = (parsed.body, parsed.subject);
    Ok(Rec {
        seq: parsed.seq,
        prev,
        hash,
        at_ms: parsed.at_ms,
        digest: digest.is_some(),
        subject: subject.is_some(),
        special,
    })
}

/// The seq at the start of a line, without checking anything else.
fn peek_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The complete lines (without newlines) and the length of an incomplete last one.
fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, u64) {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let torn = lines.pop().map_or(0, |last| last.len() as u64);
    (lines, torn)
}

/// What the start of a journal needs to know about a segment.
struct Scan {
    /// Seq and hash of the records that verify and link, up to the first that does not.
    records: Vec<(u64, [u8; 32])>,
    first_at_ms: Option<i64>,
    /// Entries and gap records among them.
    user: u64,
    /// The last of them is a seal.
    ends_sealed: bool,
    /// The first complete line that does not verify or link.
    bad_line: Option<usize>,
    torn: u64,
}

fn scan_chain(bytes: &[u8]) -> Scan {
    let (lines, torn) = split_lines(bytes);
    let mut scan = Scan {
        records: Vec::new(),
        first_at_ms: None,
        user: 0,
        ends_sealed: false,
        bad_line: None,
        torn,
    };
    for (i, line) in lines.iter().enumerate() {
        let linked = |r: &Rec| {
            scan.records
                .last()
                .is_none_or(|(seq, hash)| r.seq == seq + 1 && r.prev == *hash)
        };
        match parse_record(line) {
            Ok(r) if linked(&r) => {
                scan.first_at_ms.get_or_insert(r.at_ms);
                scan.ends_sealed = matches!(r.special, Special::Seal(_));
                if matches!(r.special, Special::None | Special::Gap(_)) {
                    scan.user += 1;
                }
                scan.records.push((r.seq, r.hash));
            }
            _ => {
                scan.bad_line = Some(i + 1);
                break;
            }
        }
    }
    scan
}

/// The length of the bytes after the last newline.
fn torn_tail_len(file: &mut File, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(at) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(len - (start + at as u64 + 1));
        }
        end = start;
    }
    Ok(len)
}

fn subject_digest(salt: &[u8], pseudonym: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(pseudonym.as_bytes())
        .finalize()
        .into()
}

/// Salts for subject digests: SHA-256 of a 32-byte secret drawn at start and a counter.
struct Salts {
    key: [u8; 32],
    counter: u64,
}

impl Salts {
    /// The secret comes from `/dev/urandom`; where that cannot be read, from the standard library's randomly keyed
    /// hasher (seeded by the OS), mixed with the time and process id.
    fn new() -> Self {
        let mut key = [0u8; 32];
        let from_os = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
        if from_os.is_err() {
            use std::hash::BuildHasher;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for (i, part) in key.chunks_mut(8).enumerate() {
                let h = std::collections::hash_map::RandomState::new().hash_one((
                    i,
                    now,
                    std::process::id(),
                ));
                part.copy_from_slice(&h.to_le_bytes());
            }
        }
        Self { key, counter: 0 }
    }

    fn next(&mut self) -> [u8; 16] {
        self.counter += 1;
        let d = Sha256::new()
            .chain_update(self.key)
            .chain_update(self.counter.to_le_bytes())
            .finalize();
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&d[..16]);
        salt
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Lowercase hex only: what the journal writes.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The sealed segment `number` of the live segment `live`.
/// See [`Journal::find`].
fn find_lines(
    live: &Path,
    chained: bool,
    field: Option<&str>,
    refs: &[String],
    limit: usize,
) -> io::Result<(Vec<String>, u64)> {
    let about = |line: &str| -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        let found = if chained {
            v.get("subject").and_then(|s| s.get("ref"))
        } else {
            field.and_then(|f| v.get(f))
        };
        found
            .and_then(serde_json::Value::as_str)
            .is_some_and(|r| refs.iter().any(|x| x == r))
    };
    let mut files: Vec<PathBuf> = list_segments(live)?
        .into_iter()
        .map(|n| segment_path(live, n))
        .collect();
    files.push(live.to_path_buf());
    let (mut lines, mut total) = (Vec::new(), 0u64);
    for file in files {
        let reader = match File::open(&file) {
            Ok(f) => BufReader::new(f),
            // Deleted by retention or renamed by a rotation since the listing: its records are elsewhere or gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in reader.lines() {
            let line = line?;
            if about(&line) {
                total += 1;
                if lines.len() < limit {
                    lines.push(line);
                }
            }
        }
    }
    Ok((lines, total))
}

fn segment_path(live: &Path, number: u64) -> PathBuf {
    with_suffix(live, &format!(".{number:020}"))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The number of a sealed segment's file name, given the live segment's file name.
fn segment_number(name: &str, live_name: &str) -> Option<u64> {
    let digits = name.strip_prefix(live_name)?.strip_prefix('.')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The sealed segments of a live segment, in write order.
fn list_segments(live: &Path) -> io::Result<Vec<u64>> {
    let live_name = file_name(live);
    let mut numbers = Vec::new();
    let entries = match fs::read_dir(parent_dir(live)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(numbers),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|name| segment_number(name, &live_name))
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Removes `live….tmp` files left by a crash during a replacement.
fn remove_stale_temps(live: &Path) {
    let live_name = file_name(live);
    let Ok(entries) = fs::read_dir(parent_dir(live)) else {
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

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Makes renames in a directory durable; best effort (not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory sync failed");
    }
}

fn read_head(path: &Path) -> io::Result<Option<(u64, [u8; 32])>> {
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

fn write_head(path: &Path, seq: u64, hash: &[u8; 32]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let text = serde_json::to_vec(&HeadJson {
        seq,
        hash: hex(hash),
    })
    .map_err(io::Error::other)?;
    let mut file = File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

// ---- Verification ----

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyProblem {
    /// A file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// No live segment or sealed segments at that path.
    #[error("no log here")]
    NotFound,
    /// The line is not a record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record's content does not match its hash.
    #[error("edited: the record does not match its hash")]
    HashMismatch,
    /// The record's subject does not match its subject digest.
    #[error("edited: the subject does not match its digest")]
    SubjectMismatch,
    /// A seq is missing.
    #[error("deleted: expected seq {expected}, found {found}")]
    SeqGap {
        /// The seq that should follow.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// Records are not in seq order.
    #[error("reordered: expected seq {expected}, found {found}")]
    OutOfOrder {
        /// The seq that should follow.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The record's `prev` is not the previous record's hash.
    #[error("deleted or replaced: prev is not the hash of seq {previous}")]
    PrevMismatch {
        /// The seq of the record before it (0: it is seq 1, whose prev must be zeros).
        previous: u64,
    },
    /// The file ends in an incomplete line.
    #[error("truncated: torn last line ({bytes} bytes without a newline)")]
    TornLine {
        /// The incomplete line's length.
        bytes: u64,
    },
    /// A sealed segment does not end in a seal record.
    #[error("truncated: sealed segment does not end with a seal record")]
    MissingSeal,
    /// A seal record's counts do not match its segment.
    #[error(
        "seal says first seq {first_seq} and {records} records; the segment has {actual_first} and {actual_records}"
    )]
    BadSeal {
        /// What the seal says.
        first_seq: u64,
        /// What the seal says.
        records: u64,
        /// What the segment holds.
        actual_first: u64,
        /// What the segment holds.
        actual_records: u64,
    },
    /// A record follows a seal in the same segment.
    #[error("a record follows the seal of its segment")]
    AfterSeal,
    /// A sealed segment's name does not match its first record.
    #[error("renamed: the segment is named for seq {named} but starts at seq {first}")]
    SegmentName {
        /// The number in the file name.
        named: u64,
        /// The first record's seq.
        first: u64,
    },
    /// The head file names a record beyond the end of the log.
    #[error("truncated: the head file names seq {head}, the log ends at {last}")]
    HeadBeyondEnd {
        /// The head file's seq.
        head: u64,
        /// The last record's seq (0: none).
        last: u64,
    },
    /// The record the head file names has another hash.
    #[error("edited: the head file's hash for seq {seq} is not the record's")]
    HeadMismatch {
        /// The head file's seq.
        seq: u64,
    },
    /// The head file is unreadable.
    #[error("head file: {0}")]
    BadHead(String),
}

/// Where a chain first fails to verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyError {
    /// The file holding the bad record.
    pub file: PathBuf,
    /// The 1-based line of the bad record in that file, when it is one line.
    pub line: Option<usize>,
    /// The seq of the bad record: as written when it can be read, else the one expected there.
    pub seq: Option<u64>,
    /// What is wrong.
    pub problem: VerifyProblem,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl VerifyError {
    fn at(file: &Path, problem: VerifyProblem) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            seq: None,
            problem,
        }
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// One per log, by live path.
    pub chains: Vec<ChainReport>,
    /// Logs found in a directory that are not chained (not checked).
    pub skipped: Vec<PathBuf>,
}

impl VerifyReport {
    /// Records in all chains.
    pub fn records(&self) -> u64 {
        self.chains.iter().map(|c| c.records).sum()
    }
}

/// One verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainReport {
    /// The live segment's path (it may be absent when only sealed segments were given).
    pub log: PathBuf,
    /// Segment files checked, live included.
    pub segments: usize,
    /// Records checked.
    pub records: u64,
    /// The first record's seq.
    pub first_seq: Option<u64>,
    /// The last record's seq.
    pub last_seq: Option<u64>,
    /// The first seq when the chain does not start at 1: earlier segments are gone (retention, or deletion: the
    /// chain cannot tell) and the first record's `prev` is taken on trust.
    pub starts_at: Option<u64>,
    /// Entries dropped, as stated by gap records.
    pub gaps: u64,
    /// Records whose subject was erased (a digest without its subject).
    pub redacted: u64,
    /// The head file's seq, when one was checked.
    pub head: Option<u64>,
    /// Irregular events the chain records (see the module docs): crashes, set-aside segments, lost tails.
    pub incidents: Vec<Incident>,
}

/// An irregular event recorded in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The record saying so.
    pub seq: u64,
    /// The file holding it.
    pub file: PathBuf,
    /// What happened (`torn_tail`, `corrupt`, `unsealed`, `head_mismatch`, `unfinished_rotation`).
    pub reason: String,
    /// Details, as text.
    pub detail: String,
}

/// Verifies chained logs. Each path may be a live segment (its sealed siblings and head file are included), a
/// sealed segment (only that one; several of one log are checked as one chain), or a directory (every chained log
/// in it; unchained ones are listed as skipped). Segments are walked in write order; every line must parse, match
/// its hash and subject digest, follow its predecessor's seq and hash; sealed segments must end in a seal counting
/// them (unless the next segment's `open` record acknowledges a torn or unsealed end); the head file's record must
/// be present with its hash.
///
/// # Errors
/// The first problem found, naming the file, line and seq (see [`VerifyProblem`]).
pub fn verify(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    #[derive(Default)]
    struct Group {
        whole: bool,
        sealed: BTreeSet<u64>,
    }
    let mut groups: BTreeMap<PathBuf, Group> = BTreeMap::new();
    let mut skipped = Vec::new();
    for path in paths {
        let meta = fs::metadata(path);
        if meta.as_ref().is_ok_and(fs::Metadata::is_dir) {
            for (live, chained) in dir_logs(path)
                .map_err(|e| VerifyError::at(path, VerifyProblem::Io(e.to_string())))?
            {
                if chained {
                    groups.entry(live).or_default().whole = true;
                } else {
                    skipped.push(live);
                }
            }
            continue;
        }
        let sealed = path.file_name().and_then(|n| n.to_str()).and_then(|name| {
            let (live_name, _) = name.rsplit_once('.')?;
            segment_number(name, live_name).map(|n| (path.with_file_name(live_name), n))
        });
        match sealed {
            Some((live, number)) if meta.is_ok() => {
                groups.entry(live).or_default().sealed.insert(number);
            }
            _ => {
                let has_segments = list_segments(path).is_ok_and(|s| !s.is_empty());
                if meta.is_err() && !has_segments {
                    return Err(VerifyError::at(path, VerifyProblem::NotFound));
                }
                groups.entry(path.clone()).or_default().whole = true;
            }
        }
    }
    let mut chains = Vec::new();
    for (live, group) in groups {
        let mut files: Vec<(PathBuf, Option<u64>)> = Vec::new();
        let mut head = None;
        if group.whole {
            let numbers = list_segments(&live)
                .map_err(|e| VerifyError::at(&live, VerifyProblem::Io(e.to_string())))?;
            files.extend(
                numbers
                    .into_iter()
                    .map(|n| (segment_path(&live, n), Some(n))),
            );
            if live.exists() {
                files.push((live.clone(), None));
            }
            let head_path = with_suffix(&live, ".head");
            head = read_head(&head_path)
                .map_err(|e| VerifyError::at(&head_path, VerifyProblem::BadHead(e.to_string())))?;
        } else {
            files.extend(
                group
                    .sealed
                    .iter()
                    .map(|&n| (segment_path(&live, n), Some(n))),
            );
        }
        let mut walk = Walk {
            report: ChainReport {
                log: live.clone(),
                head: head.map(|h| h.0),
                ..ChainReport::default()
            },
            prev: None,
            head,
            deferred: None,
        };
        for (path, number) in &files {
            walk.segment(path, *number)?;
        }
        chains.push(walk.finish(&live)?);
    }
    Ok(VerifyReport { chains, skipped })
}

/// The logs in a directory, by live path, and whether each looks chained.
fn dir_logs(dir: &Path) -> io::Result<Vec<(PathBuf, bool)>> {
    let mut names = BTreeSet::new();
    let mut all = HashSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        all.insert(name.clone());
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        let live = match name.rsplit_once('.') {
            Some((live, _)) if segment_number(&name, live).is_some() => live.to_string(),
            _ => name
                .strip_suffix(".head")
                .map_or_else(|| name.clone(), str::to_string),
        };
        names.insert(live);
    }
    let mut logs = Vec::new();
    for name in names {
        let live = dir.join(&name);
        let mut chained = all.contains(&format!("{name}.head"));
        let mut candidates = vec![live.clone()];
        candidates.extend(
            list_segments(&live)?
                .into_iter()
                .map(|n| segment_path(&live, n)),
        );
        for candidate in candidates {
            if chained {
                break;
            }
            let mut start = [0u8; 7];
            if let Ok(mut f) = File::open(&candidate)
                && f.read_exact(&mut start).is_ok()
            {
                chained = &start == b"{\"seq\":";
            }
        }
        logs.push((live, chained));
    }
    Ok(logs)
}

/// The state of a walk along one chain.
struct Walk {
    report: ChainReport,
    /// Seq and hash of the last record.
    prev: Option<(u64, [u8; 32])>,
    head: Option<(u64, [u8; 32])>,
    /// A sealed segment's irregular end, forgiven only if the next segment's `open` names it: the error, the
    /// segment's file name and its torn bytes.
    deferred: Option<(VerifyError, String, u64)>,
}

impl Walk {
    fn segment(&mut self, path: &Path, number: Option<u64>) -> Result<(), VerifyError> {
        let bytes =
            fs::read(path).map_err(|e| VerifyError::at(path, VerifyProblem::Io(e.to_string())))?;
        let (lines, torn) = split_lines(&bytes);
        self.report.segments += 1;
        let mut first: Option<u64> = None;
        let mut sealed_at_end = false;
        for (i, line) in lines.iter().enumerate() {
            let expected = self.prev.map_or(1, |(s, _)| s + 1);
            let err = |seq: u64, problem| VerifyError {
                file: path.to_path_buf(),
                line: Some(i + 1),
                seq: Some(seq),
                problem,
            };
            let rec = parse_record(line).map_err(|p| err(peek_seq(line).unwrap_or(expected), p))?;
            if let Some((error, name, torn_bytes)) = self.deferred.take() {
                let acknowledged = matches!(&rec.special, Special::Open(o)
                    if !o.regular() && o.segment.as_deref() == Some(name.as_str()) && o.torn_bytes.unwrap_or(0) == torn_bytes);
                if !acknowledged {
                    return Err(error);
                }
            }
            if sealed_at_end {
                return Err(err(rec.seq, VerifyProblem::AfterSeal));
            }
            if let Some(named) = number
                && i == 0
                && named != rec.seq
            {
                return Err(err(
                    rec.seq,
                    VerifyProblem::SegmentName {
                        named,
                        first: rec.seq,
                    },
                ));
            }
            match self.prev {
                None if rec.seq == 1 && rec.prev != ZERO_HASH => {
                    return Err(err(1, VerifyProblem::PrevMismatch { previous: 0 }));
                }
                None if rec.seq != 1 => self.report.starts_at = Some(rec.seq),
                None => {}
                Some((prev_seq, prev_hash)) => {
                    if rec.seq != expected {
                        let later = lines[i + 1..].iter().any(|l| peek_seq(l) == Some(expected));
                        let problem = if rec.seq < expected || later {
                            VerifyProblem::OutOfOrder {
                                expected,
                                found: rec.seq,
                            }
                        } else {
                            VerifyProblem::SeqGap {
                                expected,
                                found: rec.seq,
                            }
                        };
                        return Err(err(rec.seq, problem));
                    }
                    if rec.prev != prev_hash {
                        return Err(err(
                            rec.seq,
                            VerifyProblem::PrevMismatch { previous: prev_seq },
                        ));
                    }
                }
            }
            let first_seq = *first.get_or_insert(rec.seq);
            match &rec.special {
                Special::Seal(seal) => {
                    if seal.first_seq != first_seq || seal.records != i as u64 {
                        return Err(err(
                            rec.seq,
                            VerifyProblem::BadSeal {
                                first_seq: seal.first_seq,
                                records: seal.records,
                                actual_first: first_seq,
                                actual_records: i as u64,
                            },
                        ));
                    }
                    sealed_at_end = true;
                }
                Special::Gap(gap) => self.report.gaps += gap.dropped,
                Special::Open(open) if !open.regular() => self.report.incidents.push(Incident {
                    seq: rec.seq,
                    file: path.to_path_buf(),
                    reason: open.reason.clone(),
                    detail: serde_json::to_string(open).unwrap_or_default(),
                }),
                Special::Open(_) | Special::None => {}
            }
            if rec.digest && !rec.subject {
                self.report.redacted += 1;
            }
            if let Some((head_seq, head_hash)) = self.head
                && head_seq == rec.seq
                && head_hash != rec.hash
            {
                return Err(err(rec.seq, VerifyProblem::HeadMismatch { seq: head_seq }));
            }
            self.report.first_seq.get_or_insert(rec.seq);
            self.report.last_seq = Some(rec.seq);
            self.report.records += 1;
            self.prev = Some((rec.seq, rec.hash));
        }
        let expected = self.prev.map_or(1, |(s, _)| s + 1);
        let end_error = |line, problem| VerifyError {
            file: path.to_path_buf(),
            line,
            seq: Some(expected),
            problem,
        };
        if torn > 0 {
            let error = end_error(
                Some(lines.len() + 1),
                VerifyProblem::TornLine { bytes: torn },
            );
            if number.is_none() {
                return Err(error);
            }
            self.deferred = Some((error, file_name(path), torn));
        } else if number.is_some() && !sealed_at_end {
            self.deferred = Some((
                end_error(None, VerifyProblem::MissingSeal),
                file_name(path),
                0,
            ));
        } else if number.is_none() && sealed_at_end {
            self.report.incidents.push(Incident {
                seq: expected - 1,
                file: path.to_path_buf(),
                reason: "unfinished_rotation".to_string(),
                detail: "the live segment is sealed but was not renamed (a stop mid-rotation)"
                    .to_string(),
            });
        }
        Ok(())
    }

    fn finish(self, live: &Path) -> Result<ChainReport, VerifyError> {
        if let Some((error, ..)) = self.deferred {
            return Err(error);
        }
        if let Some((head_seq, _)) = self.head {
            let last = self.report.last_seq.unwrap_or(0);
            if head_seq > last {
                return Err(VerifyError {
                    file: with_suffix(live, ".head"),
                    line: None,
                    seq: Some(last + 1),
                    problem: VerifyProblem::HeadBeyondEnd {
                        head: head_seq,
                        last,
                    },
                });
            }
        }
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "aisle-journal-{tag}-{}-{nanos}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Every file's content, in name order.
        fn contents(&self) -> Vec<(String, String)> {
            let mut files: Vec<_> = fs::read_dir(&self.0)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            files
                .into_iter()
                .map(|p| (file_name(&p), fs::read_to_string(&p).expect("read")))
                .collect()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn decision(n: u64, subject: Option<&str>) -> Entry {
        // The "subject" key in the body checks that hashing splits at the last `,"subject":`.
        Entry::new(
            "decision",
            subject.map(str::to_string),
            json!({"n": n, "score": 0.1 + n as f64 / 3.0, "subject": "not the real one"}),
        )
    }

    fn verify_one(path: &Path) -> Result<ChainReport, VerifyError> {
        let mut report = verify(&[path.to_path_buf()])?;
        assert_eq!(report.chains.len(), 1, "{report:?}");
        Ok(report.chains.remove(0))
    }

    fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split_inclusive(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[tokio::test]
    async fn a_written_chain_verifies_and_tampering_is_found() {
        let dir = TempDir::new("tamper");
        let path = dir.join("decisions.jsonl");
        let journal = Journal::open(JournalConfig::decisions(&path))
            .await
            .unwrap();
        for n in 0..9 {
            journal.record(decision(
                n,
                Some(if n % 2 == 0 { "shopper-a" } else { "shopper-b" }),
            ));
        }
        journal.close().await.unwrap();

        // seq 1 is the `open` record, seqs 2..=10 the decisions n = 0..=8, one per line.
        let chain = verify_one(&path).unwrap();
        assert_eq!((chain.records, chain.segments), (10, 1));
        assert_eq!(
            (chain.first_seq, chain.last_seq, chain.head),
            (Some(1), Some(10), Some(10))
        );
        assert_eq!((chain.starts_at, chain.gaps, chain.redacted), (None, 0, 0));
        assert!(chain.incidents.is_empty());

        let original = fs::read(&path).unwrap();
        let lines = lines_of(&original);
        assert_eq!(lines.len(), 10);
        let check = |bytes: Vec<u8>, line: Option<usize>, seq: u64, problem: VerifyProblem| {
            fs::write(&path, bytes).unwrap();
            let e = verify_one(&path).unwrap_err();
            assert_eq!(
                (e.line, e.seq, &e.problem),
                (line, Some(seq), &problem),
                "{e}"
            );
            assert!(!e.to_string().is_empty());
            fs::write(&path, &original).unwrap();
        };

        // Edited: one byte of a body (seq 5 is n = 3).
        let edited = String::from_utf8(original.clone())
            .unwrap()
            .replacen("\"n\":3,", "\"n\":4,", 1);
        assert_ne!(edited.as_bytes(), &original[..]);
        check(edited.into_bytes(), Some(5), 5, VerifyProblem::HashMismatch);

        // Deleted: line 4.
        let mut deleted = lines.clone();
        deleted.remove(3);
        check(
            deleted.concat(),
            Some(4),
            5,
            VerifyProblem::SeqGap {
                expected: 4,
                found: 5,
            },
        );

        // Swapped: lines 4 and 5.
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        check(
            swapped.concat(),
            Some(4),
            5,
            VerifyProblem::OutOfOrder {
                expected: 4,
                found: 5,
            },
        );

        // Truncated mid-line.
        let cut = original.len() - 10;
        let torn = (lines[9].len() - 10) as u64;
        check(
            original[..cut].to_vec(),
            Some(10),
            10,
            VerifyProblem::TornLine { bytes: torn },
        );

        // Truncated by whole lines: only the head file tells.
        check(
            lines[..8].concat(),
            None,
            9,
            VerifyProblem::HeadBeyondEnd { head: 10, last: 8 },
        );

        // Subject swapped for another one: the digest tells.
        let other = String::from_utf8(original.clone()).unwrap().replacen(
            "\"ref\":\"shopper-a\"",
            "\"ref\":\"shopper-c\"",
            1,
        );
        check(
            other.into_bytes(),
            Some(2),
            2,
            VerifyProblem::SubjectMismatch,
        );

        assert!(verify_one(&path).is_ok());
    }

    #[tokio::test]
    async fn a_size_cap_deletes_the_oldest_sealed_segments_and_the_rest_still_verifies() {
        let dir = TempDir::new("size-cap");
        let path = dir.join("decisions.jsonl");
        let config = JournalConfig {
            segment_bytes: 1500,
            max_bytes: 4000,
            ..JournalConfig::decisions(&path)
        };
        let journal = Journal::open(config).await.unwrap();
        for n in 0..60 {
            journal.record(decision(n, Some("shopper-a")));
        }
        journal.close().await.unwrap();
        let sealed = list_segments(&path).unwrap();
        let total: u64 = sealed
            .iter()
            .map(|&n| fs::metadata(segment_path(&path, n)).unwrap().len())
            .sum();
        assert!(total <= 4000, "{total} bytes in {sealed:?}");
        assert!(
            sealed[0] > 1,
            "the oldest segments were deleted: {sealed:?}"
        );
        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.starts_at, Some(sealed[0]));
    }

    #[tokio::test]
    async fn rotation_seals_segments_and_retention_deletes_old_ones() {
        let dir = TempDir::new("rotate");
        let path = dir.join("decisions.jsonl");
        let config = JournalConfig {
            segment_bytes: 1500,
            ..JournalConfig::decisions(&path)
        };
        let journal = Journal::open(config.clone()).await.unwrap();
        for n in 0..30 {
            journal.record(decision(n, Some("shopper-a")));
        }
        journal.close().await.unwrap();
        let sealed = list_segments(&path).unwrap();
        assert!(sealed.len() >= 3, "{sealed:?}");
        assert_eq!(sealed[0], 1);
        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.segments, sealed.len() + 1);
        // 30 decisions, one `open` per segment, one seal per sealed segment.
        assert_eq!(
            chain.records,
            30 + chain.segments as u64 + sealed.len() as u64
        );
        assert_eq!((chain.starts_at, chain.first_seq), (None, Some(1)));
        // A sealed segment alone verifies too (it ends in its seal).
        let alone = verify(&[segment_path(&path, sealed[1])]).unwrap();
        assert_eq!(alone.chains[0].starts_at, Some(sealed[1]));

        // Everything sealed so far ages past a short retention; the next rotation deletes it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let journal = Journal::open(JournalConfig {
            retention: Duration::from_secs(1),
            ..config
        })
        .await
        .unwrap();
        for n in 30..40 {
            journal.record(decision(n, Some("shopper-a")));
        }
        journal.close().await.unwrap();
        let remaining = list_segments(&path).unwrap();
        assert!(
            remaining.iter().all(|n| !sealed.contains(n)),
            "{sealed:?} then {remaining:?}"
        );
        assert!(!remaining.is_empty());
        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.starts_at, Some(remaining[0]));
        assert_eq!(chain.first_seq, Some(remaining[0]));
    }

    #[tokio::test]
    async fn erasure_redacts_chained_subjects_and_the_chain_still_verifies() {
        let dir = TempDir::new("erase-chain");
        let path = dir.join("decisions.jsonl");
        let journal = Journal::open(JournalConfig {
            segment_bytes: 1500,
            ..JournalConfig::decisions(&path)
        })
        .await
        .unwrap();
        for n in 0..20 {
            journal.record(decision(
                n,
                Some(if n % 2 == 0 { "shopper-a" } else { "shopper-b" }),
            ));
        }
        let report = journal.erase(vec!["shopper-a".to_string()]).await.unwrap();
        assert!(report.redacted);
        assert_eq!(report.records(), 10);
        assert!(report.files.len() >= 2, "{report:?}");
        // The live file is appended to after the erasure.
        journal
            .record_synced(decision(20, Some("shopper-b")))
            .await
            .unwrap();
        journal.close().await.unwrap();

        let contents = dir.contents();
        assert!(contents.iter().all(|(_, text)| !text.contains("shopper-a")));
        assert!(contents.iter().any(|(_, text)| text.contains("shopper-b")));
        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.redacted, 10);
        assert!(chain.segments >= 2);
    }

    #[tokio::test]
    async fn erasure_removes_unchained_lines_and_keeps_the_format() {
        let dir = TempDir::new("erase-events");
        let path = dir.join("events.jsonl");
        let journal = Journal::open(JournalConfig {
            segment_bytes: 200,
            ..JournalConfig::events(&path)
        })
        .await
        .unwrap();
        let event = |n: u64, shopper: &str| json!({"shopper_id": shopper, "type": "view", "item_id": format!("i{n}"), "ts_ms": n});
        let mut kept = Vec::new();
        for n in 0..12 {
            let shopper = if n % 3 == 0 { "a" } else { "b" };
            journal.record(Entry::new(
                "event",
                Some(shopper.to_string()),
                event(n, shopper),
            ));
            if shopper == "b" {
                kept.push(event(n, shopper).to_string());
            }
        }
        let report = journal.erase(vec!["a".to_string()]).await.unwrap();
        assert!(!report.redacted);
        assert_eq!(report.records(), 4);
        journal.record(Entry::new("event", Some("b".into()), event(12, "b")));
        kept.push(event(12, "b").to_string());
        journal.close().await.unwrap();

        assert!(
            list_segments(&path).unwrap().len() >= 2,
            "{:?}",
            dir.contents()
        );
        let mut files: Vec<PathBuf> = list_segments(&path)
            .unwrap()
            .into_iter()
            .map(|n| segment_path(&path, n))
            .collect();
        files.push(path.clone());
        let lines: Vec<String> = files
            .iter()
            .flat_map(|f| {
                fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(lines, kept);
        // Not a chain: a directory walk skips it.
        let report = verify(std::slice::from_ref(&dir.0)).unwrap();
        assert_eq!((report.chains.len(), report.skipped.len()), (0, 1));
        // Without a subject field there is nothing to erase by.
        let plain = Journal::open(JournalConfig::new(dir.join("other.jsonl"), "other"))
            .await
            .unwrap();
        assert_eq!(
            plain.erase(vec!["a".into()]).await.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn drops_under_a_full_queue_are_recorded_as_a_gap() {
        let dir = TempDir::new("gap");
        let path = dir.join("decisions.jsonl");
        let journal = Journal::open(JournalConfig {
            queue: 1,
            ..JournalConfig::decisions(&path)
        })
        .await
        .unwrap();
        // The test's thread runs the writer too: nothing is taken from the queue until this task waits.
        for n in 0..10 {
            journal.record(decision(n, None));
        }
        let dropped = journal.health().dropped;
        assert_eq!(dropped, 9);
        journal.flush().await.unwrap();
        journal.record_synced(decision(10, None)).await.unwrap();
        journal.close().await.unwrap();
        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.gaps, 9);
        // open, gap, the one queued decision, the synced one.
        assert_eq!(chain.records, 4);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"kind\":\"gap\",\"body\":{\"dropped\":9}"),
            "{text}"
        );
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn write_failures_are_loud_and_nothing_accepted_is_lost() {
        let dir = TempDir::new("fail");
        let path = dir.join("decisions.jsonl");
        let journal = Journal::open(JournalConfig {
            sync_timeout: Duration::from_secs(2),
            ..JournalConfig::decisions(&path)
        })
        .await
        .unwrap();
        for n in 0..3 {
            journal.record(decision(n, Some("shopper-a")));
        }
        journal.flush().await.unwrap();
        assert!(journal.health().is_ok());

        // Writes fail (after putting half a batch in the file).
        journal.set_fault(Some(Fault::Write));
        for n in 3..8 {
            journal.record(decision(n, Some("shopper-a")));
        }
        wait_until("failing health", || !journal.health().is_ok()).await;
        let health = journal.health();
        let failing = health.failing.clone().unwrap();
        assert!(failing.error.contains("no space left"), "{failing:?}");
        assert!(health.write_errors >= 1);
        // A synced record cannot be made durable: its caller hears so, with the cause.
        let e = journal
            .record_synced(decision(8, Some("shopper-a")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no space left"), "{e}");

        // The disk recovers: everything accepted is written, including the record whose caller gave up.
        journal.set_fault(None);
        journal.flush().await.unwrap();
        assert!(journal.health().is_ok());
        assert_eq!(journal.health().written, 9);

        // A failing sync: the unsynced lines are cut off and written again.
        journal.set_fault(Some(Fault::Sync));
        journal.record(decision(9, None));
        wait_until("failing sync", || !journal.health().is_ok()).await;
        journal.set_fault(None);
        journal.flush().await.unwrap();
        journal.close().await.unwrap();

        let chain = verify_one(&path).unwrap();
        assert_eq!(chain.records, 11);
        assert_eq!(chain.gaps, 0);
        assert_eq!(journal.health().written, 10);
    }

    #[tokio::test]
    async fn a_restart_continues_the_chain_and_sets_aside_a_torn_tail() {
        let dir = TempDir::new("restart");
        let path = dir.join("decisions.jsonl");
        let config = JournalConfig::decisions(&path);
        for round in 0..2 {
            let journal = Journal::open(config.clone()).await.unwrap();
            for n in 0..3 {
                journal.record(decision(round * 10 + n, Some("shopper-a")));
            }
            journal.close().await.unwrap();
        }
        let chain = verify_one(&path).unwrap();
        assert_eq!(
            (chain.records, chain.segments, chain.last_seq),
            (8, 1, Some(8))
        );
        assert!(chain.incidents.is_empty());

        // A crash mid-write leaves an incomplete line.
        let torn = b"{\"seq\":9,\"prev\":\"00";
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(torn).unwrap();
        drop(file);
        let e = verify_one(&path).unwrap_err();
        assert_eq!(
            e.problem,
            VerifyProblem::TornLine {
                bytes: torn.len() as u64
            }
        );

        let journal = Journal::open(config.clone()).await.unwrap();
        journal.record(decision(20, Some("shopper-a")));
        journal.close().await.unwrap();
        assert_eq!(list_segments(&path).unwrap(), vec![1]);
        let chain = verify_one(&path).unwrap();
        assert_eq!(
            (chain.records, chain.segments, chain.last_seq),
            (10, 2, Some(10))
        );
        assert_eq!(chain.incidents.len(), 1);
        assert_eq!(chain.incidents[0].reason, "torn_tail");
        assert_eq!(chain.incidents[0].seq, 9);

        // Whole lines lost at the tail: the restart records it rather than continuing silently.
        let bytes = fs::read(&path).unwrap();
        let lines = lines_of(&bytes);
        fs::write(&path, lines[..1].concat()).unwrap();
        let journal = Journal::open(config).await.unwrap();
        journal.record(decision(30, None));
        journal.close().await.unwrap();
        let chain = verify_one(&path).unwrap();
        let reasons: Vec<&str> = chain.incidents.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(reasons, ["torn_tail", "head_mismatch"]);
    }

    #[tokio::test]
    async fn record_synced_returns_once_durable() {
        let dir = TempDir::new("synced");
        let path = dir.join("decisions.jsonl");
        // No periodic sync in sight: only the waiting caller makes it happen.
        let journal = Journal::open(JournalConfig {
            sync_every: Duration::from_secs(3600),
            ..JournalConfig::decisions(&path)
        })
        .await
        .unwrap();
        journal
            .record_synced(Entry::raw(
                "admin",
                None,
                r#"{"action":"rules.apply","marker":"m-1"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(
            read_head(&with_suffix(&path, ".head"))
                .unwrap()
                .map(|h| h.0),
            Some(2)
        );
        assert!(fs::read_to_string(&path).unwrap().contains("m-1"));
        assert_eq!(journal.health().written, 1);
        // Refused: a body that is not one line of JSON, a reserved kind.
        let e = journal
            .record_synced(Entry::raw("admin", None, "{\n}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = journal
            .record_synced(Entry::new("seal", None, json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(journal.health().failed, 2);

        let events = dir.join("events.jsonl");
        let log = Journal::open(JournalConfig {
            sync_every: Duration::from_secs(3600),
            ..JournalConfig::events(&events)
        })
        .await
        .unwrap();
        log.record_synced(Entry::new(
            "event",
            Some("s".into()),
            json!({"shopper_id": "s", "type": "view"}),
        ))
        .await
        .unwrap();
        assert_eq!(
            fs::read_to_string(&events).unwrap(),
            "{\"shopper_id\":\"s\",\"type\":\"view\"}\n"
        );
    }

    #[tokio::test]
    async fn an_unchained_restart_cuts_a_torn_line() {
        let dir = TempDir::new("plain-restart");
        let path = dir.join("events.jsonl");
        fs::write(&path, "{\"shopper_id\":\"a\"}\n{\"shopper_id\":\"b").unwrap();
        let journal = Journal::open(JournalConfig::events(&path)).await.unwrap();
        journal.record(Entry::raw("event", None, "{\"shopper_id\":\"c\"}"));
        journal.close().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"shopper_id\":\"a\"}\n{\"shopper_id\":\"c\"}\n"
        );
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0xff, 0xa5];
        assert_eq!(hex(&bytes), "00017fffa5");
        assert_eq!(unhex("00017fffa5").unwrap(), bytes);
        assert!(unhex("0g").is_none());
        assert!(unhex("ABCD").is_none());
        assert!(unhex("abc").is_none());
    }
}
