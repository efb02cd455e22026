//! Durable, segmented JSON-lines logs written off the request path: the event log (every applied shopper event,
//! in the format `aisle-train --format events` reads) and the decision log (the audit trail), which is also
//! hash-chained so that an edited, deleted, reordered or truncated record is detected by [`verify()`]. It replaces
//! the former `audit::JsonLog`.
//!
//! A [`Journal`] is a handle on a background writer task fed by a bounded queue: [`Journal::record`] never waits
//! (a full queue drops the entry and counts it), [`Journal::record_synced`] returns once its entry is on disk and
//! fsynced, [`Journal::erase`] removes a data subject, [`Journal::health`] says whether writing works.
//!
//! # Modules
//!
//! - this file: the handle ([`Journal`], [`JournalConfig`], [`Entry`], [`Health`], [`EraseReport`]) and the state
//!   it shares with the writer.
//! - `writer`: the background task and its state (`Store`): taking batches, encoding entries, group commit,
//!   write errors and retries. Its docs say what is durable when (*Durability*).
//! - `start`: where a journal stands when it opens: an unchained live segment continued (a torn line cut off), a
//!   chained one continued or set aside, the head file checked.
//! - `segments`: the files (*Files*: live and sealed segments, the head file), rotation, retention, gauges.
//! - `chain`: the line formats (*Unchained lines*, *Chained records*): encoding a chained record, parsing and
//!   checking one, scanning a segment; salts and subject digests.
//! - `erase`: data-subject requests: finding a subject's lines, and erasure by rewriting segments (*Erasure*).
//! - `verify`: the offline verifier of chained logs ([`verify()`]) and its report.
//!
//! Files are replaced through [`crate::durable`] (temporary file, fsync, rename).
//!
//! # Limits
//!
//! - The chain is evidence relative to a trusted anchor. Whoever can write these files can rewrite the chain from
//!   any record on, head file included; lines cut from the live tail are detected only through the head file, which
//!   lives in the same directory. Copy the head (or the last hash [`verify()`] reports) elsewhere to detect that.
//! - Erasure redacts `subject` only. The body is covered by the hash and cannot change: it must not carry the
//!   pseudonym or anything else that identifies the shopper.
//! - [`verify()`] holds one segment in memory at a time; on a live file being written it may see an incomplete last
//!   line and report it as torn.
//! - During an erasure the writer does nothing else; entries beyond the queue are dropped meanwhile (and counted).
//! - Unix semantics are assumed (renaming a file that is open, fsyncing a directory); elsewhere the journal works
//!   but a rotation or erasure is not guaranteed durable before the next sync.

mod chain;
mod erase;
mod rotation;
mod segments;
mod start;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use verify::{ChainReport, Incident, VerifyError, VerifyProblem, VerifyReport, verify};

use writer::Store;

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

    /// The last write error, while writing fails.
    fn failing(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an entry dropped before the writer took it.
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

/// Whom to tell once an entry (or everything before a flush) is durable.
type Waiter = oneshot::Sender<io::Result<()>>;

/// What the handles ask of the writer, in queue order.
enum Msg {
    /// An entry, with whom to tell once it is durable.
    Record(Entry, Option<Waiter>),
    /// Tell once everything before is durable.
    Flush(Waiter),
    /// Erase these pseudonyms (see `erase`), after writing everything before.
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
        tokio::spawn(writer::run(store, rx));
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
        tokio::task::spawn_blocking(move || erase::find_lines(&path, chained, field, &refs, limit))
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
