//! The Track outbox: events a node accepted but could not apply at their shopper's owner yet, kept on disk until
//! the owner has them.
//!
//! A Track whose owner cannot take it — this node is cut off from the cluster (fenced), the owner is unreachable
//! or did not answer in time, or the shopper's session is still on its way in a hand-off — is not refused: its
//! events are appended here, fsync'd, and only then acknowledged (`TrackResponse.queued`). A delivery task
//! (`shopper::deliver`) sends each shopper's entries to the owner, in order, once the node is back in a view.
//!
//! **Exactly once.** Every shopper's events of a Track call get a sequence number from this outbox before they
//! are sent to the owner at all, and travel with it and the outbox's `origin` (a [`Delivery`]). The owner's
//! session records, per origin, the highest number it applied (`aisle_session::Delivery`), and that record travels
//! with the session in hand-offs and replicas. So a call whose answer was lost (the owner applied it, then the link,
//! the owner or the deadline failed) is queued under its number and, sent again, answered as a duplicate rather
//! than applied twice.
//!
//! **In order per shopper.** While a shopper's call is in flight or their entries wait, a new call of theirs is
//! queued behind, and entries are sent one at a time, lowest number first. Numbers rise in the order the calls
//! reached the outbox, so an owner never sees an origin's numbers for one shopper go down — except a late copy of a
//! call already applied, which its record refuses. Each time the outbox opens it takes a new origin, so numbers
//! handed out but never written before a crash cannot collide with later ones.
//!
//! **On disk.** Segment files `seg-<first seq>.log` of records `[len u32][check u32][body]`, where `check` is the
//! first four bytes of the body's SHA-256 and the body is an entry or a delivered mark. Appends are fsync'd in
//! groups (one fsync for all appends waiting at once); delivered marks are not (a mark lost in a crash only means
//! a redelivery, which the owner answers as a duplicate). A torn record at the end of a segment (a crash mid
//! append, never acknowledged) is cut off when the outbox opens. The oldest segments go once all their entries
//! are delivered; the newest always stays and names the next sequence number.
//!
//! **Bounded.** At most `outbox_max_events` events and `outbox_max_bytes` bytes of entries are held. A Track that
//! would go beyond either is refused with RESOURCE_EXHAUSTED, naming the limit; nothing already queued is dropped.
//!
//! **Erasure.** Forgetting a shopper removes their entries: every segment holding one (waiting or delivered) is
//! rewritten without it, fsync'd, before the erasure answers. An entry received before a tombstone of its shopper
//! is dropped at delivery, at the owner.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_session::Delivery;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, oneshot};

use crate::durable::{Replacement, SegmentNames, open_append, sync_dir};

/// A segment is closed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Kinds of record body.
const ENTRY: u8 = 1;
const DELIVERED: u8 = 2;
/// The largest record body read back (an entry holds at most 1,000 events of bounded size).
const MAX_RECORD: usize = 16 << 20;

/// An outbox's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Events held at most.
    pub max_events: usize,
    /// Bytes of entries held at most.
    pub max_bytes: u64,
}

/// One queued entry: one shopper's events of one Track call.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTrack {
    /// The outbox origin that numbered it (the outbox's at the time).
    pub origin: String,
    /// Its sequence number in this outbox.
    pub seq: u64,
    /// The shopper.
    pub shopper_id: String,
    /// When the node received the call (µs since the epoch): events without a timestamp happened then.
    pub received_at_us: i64,
    /// When it was queued (ms since the epoch).
    pub queued_at_ms: i64,
    /// The shopper's events, as received.
    pub request: pb::TrackRequest,
}

impl QueuedTrack {
    // Body: kind, seq, received_at_us, queued_at_ms, shopper id (u32 length, bytes), origin (the same), then the
    // encoded request. The shopper id comes first among the strings so that a purge reads it without decoding.
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + self.shopper_id.len() + self.origin.len());
        body.push(ENTRY);
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.extend_from_slice(&self.received_at_us.to_le_bytes());
        body.extend_from_slice(&self.queued_at_ms.to_le_bytes());
        for text in [&self.shopper_id, &self.origin] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text.as_bytes());
        }
        self.request.encode(&mut body).expect("a Vec grows");
        body
    }

    fn decode(body: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let text_at = |at: usize| -> Option<(String, usize)> {
            let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(body.get(at + 4..at + 4 + len)?).ok()?;
            Some((text.to_string(), at + 4 + len))
        };
        let seq = u64_at(1)?;
        let received_at_us = u64_at(9)? as i64;
        let queued_at_ms = u64_at(17)? as i64;
        let (shopper_id, at) = text_at(25)?;
        let (origin, at) = text_at(at)?;
        let request = pb::TrackRequest::decode(body.get(at..)?).ok()?;
        Some(Self {
            origin,
            seq,
            shopper_id,
            received_at_us,
            queued_at_ms,
            request,
        })
    }

    /// Its delivery key.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            origin: self.origin.as_str().into(),
            seq: self.seq,
        }
    }

    fn events(&self) -> usize {
        self.request.events.len()
    }
}

/// Why an entry was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The outbox holds its limit.
    #[error("the outbox of this node is full ({0}); retry later")]
    Full(String),
    /// Writing failed.
    #[error("the outbox of this node could not be written: {0}")]
    Io(#[from] io::Error),
}

fn frame(body: &[u8]) -> Vec<u8> {
    let check: [u8; 4] = Sha256::digest(body)[..4].try_into().expect("4 bytes");
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&check);
    out.extend_from_slice(body);
    out
}

fn delivered_mark(seq: u64) -> Vec<u8> {
    let mut body = vec![DELIVERED];
    body.extend_from_slice(&seq.to_le_bytes());
    body
}

/// Reads the records of a segment: the bodies of the whole records, and the length of the readable prefix.
fn read_segment(path: &Path) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut bodies = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes
            .get(at + 8..at + 8 + len)
            .filter(|_| len <= MAX_RECORD)
        else {
            break;
        };
        if Sha256::digest(body)[..4] != bytes[at + 4..at + 8] {
            break;
        }
        bodies.push(body.to_vec());
        at += 8 + len;
    }
    Ok((bodies, at as u64))
}

/// The outbox's segment files: `seg-<first seq, 20 digits>.log`.
fn segment_names(dir: &Path) -> SegmentNames {
    SegmentNames::new(dir, "seg-", ".log")
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    segment_names(dir).path(first_seq)
}

/// What the writer thread is asked to do.
enum Command {
    /// Append an entry (with its sequence number) and fsync before answering.
    Append(u64, Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Mark an entry delivered (no fsync).
    Delivered(u64),
    /// Rewrite every segment holding an entry of this shopper (waiting or delivered) without it, fsync'd, before
    /// answering; the sequence numbers are their waiting entries.
    Purge(String, HashSet<u64>, oneshot::Sender<io::Result<()>>),
    /// Answer once everything before is written and fsync'd.
    Flush(oneshot::Sender<io::Result<()>>),
}

/// A segment on disk, as the writer thread knows it.
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Its entries not yet delivered.
    live: HashSet<u64>,
}

/// The writer thread: owns the files.
struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    file: File,
    written: u64,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            let mut batch = vec![first];
            batch.extend(commands.try_iter());
            // Where this batch's appends begin: a failed batch is cut off again, so that nothing refused to its
            // callers comes back when the outbox is next opened.
            let (segment_at_start, written_at_start) = (self.segments.len(), self.written);
            let mut acks = Vec::new();
            let mut result: io::Result<()> = Ok(());
            for command in batch {
                match command {
                    Command::Append(seq, record, ack) => {
                        if result.is_ok() {
                            result = self.append(seq, &record);
                        }
                        acks.push((seq, ack));
                    }
                    Command::Delivered(seq) => self.delivered(seq),
                    Command::Purge(shopper, seqs, ack) => {
                        let r = self.purge(&shopper, &seqs);
                        let _ = ack.send(r);
                    }
                    Command::Flush(ack) => {
                        let _ = ack.send(self.file.sync_data());
                    }
                }
            }
            if !acks.is_empty() {
                if result.is_ok() {
                    result = self.file.sync_data();
                }
                if result.is_err() {
                    if self.segments.len() == segment_at_start {
                        if let Err(e) = self.file.set_len(written_at_start) {
                            tracing::error!(error = %e, "could not cut a failed append off the outbox");
                        }
                        self.written = written_at_start;
                    }
                    for s in &mut self.segments {
                        for (seq, _) in &acks {
                            s.live.remove(seq);
                        }
                    }
                }
                for (_, ack) in acks {
                    let _ = ack.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
        }
    }

    fn append(&mut self, seq: u64, record: &[u8]) -> io::Result<()> {
        if self.written >= self.segment_bytes {
            let path = segment_path(&self.dir, seq);
            self.file = open_append(&path)?;
            sync_dir(&self.dir)?;
            self.written = 0;
            self.segments.push_back(Segment {
                first_seq: seq,
                path,
                live: HashSet::new(),
            });
        }
        self.file.write_all(record)?;
        self.written += record.len() as u64;
        if let Some(s) = self.segments.back_mut() {
            s.live.insert(seq);
        }
        Ok(())
    }

    fn delivered(&mut self, seq: u64) {
        if let Err(e) = self.file.write_all(&frame(&delivered_mark(seq))) {
            tracing::warn!(error = %e, "could not mark an outbox entry delivered (it will be sent again)");
        }
        if let Some(s) = self.segments.iter_mut().rev().find(|s| s.first_seq <= seq) {
            s.live.remove(&seq);
        }
        self.drop_delivered_segments();
    }

    /// Removes the oldest segments while every entry in them is delivered (never the one appended to).
    fn drop_delivered_segments(&mut self) {
        while self.segments.len() > 1 && self.segments[0].live.is_empty() {
            let s = self.segments.pop_front().expect("len > 1");
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(error = %e, path = %s.path.display(), "could not remove a delivered outbox segment");
            }
        }
    }

    fn purge(&mut self, shopper_id: &str, seqs: &HashSet<u64>) -> io::Result<()> {
        let last = self.segments.len().saturating_sub(1);
        let of_shopper = |body: &[u8]| {
            body.first() == Some(&ENTRY)
                && body
                    .get(25..29)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| u32::from_le_bytes(b) as usize)
                    .and_then(|len| body.get(29..29 + len))
                    == Some(shopper_id.as_bytes())
        };
        for (i, s) in self.segments.iter_mut().enumerate() {
            let (bodies, _) = read_segment(&s.path)?;
            if !bodies.iter().any(|b| of_shopper(b)) {
                continue;
            }
            let mut out = Replacement::create(&s.path)?;
            let mut kept = 0u64;
            for body in bodies {
                if !of_shopper(&body) {
                    let record = frame(&body);
                    out.write_all(&record)?;
                    kept += record.len() as u64;
                }
            }
            out.commit()?;
            s.live.retain(|seq| !seqs.contains(seq));
            if i == last {
                self.file = OpenOptions::new().append(true).open(&s.path)?;
                self.written = kept;
            }
        }
        sync_dir(&self.dir)?;
        self.drop_delivered_segments();
        Ok(())
    }
}

/// In memory: the entries not yet delivered, and the numbers of calls in flight.
#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    entries: BTreeMap<u64, Arc<QueuedTrack>>,
    /// Per shopper, the numbers of their calls in flight and of their waiting entries, lowest first.
    by_shopper: HashMap<String, VecDeque<u64>>,
    events: usize,
    bytes: u64,
}

impl State {
    fn take_number(&mut self, shopper_id: &str) -> (u64, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let queue = match self.by_shopper.get_mut(shopper_id) {
            Some(q) => q,
            None => self.by_shopper.entry(shopper_id.to_string()).or_default(),
        };
        let ahead = !queue.is_empty();
        queue.push_back(seq);
        (seq, ahead)
    }

    fn forget_number(&mut self, shopper_id: &str, seq: u64) {
        if let Some(q) = self.by_shopper.get_mut(shopper_id) {
            q.retain(|&s| s != seq);
            if q.is_empty() {
                self.by_shopper.remove(shopper_id);
            }
        }
    }

    fn insert(&mut self, entry: QueuedTrack) {
        self.events += entry.events();
        self.bytes += frame_len(&entry);
        self.entries.insert(entry.seq, Arc::new(entry));
    }

    fn remove(&mut self, seq: u64) -> Option<Arc<QueuedTrack>> {
        let entry = self.entries.remove(&seq)?;
        self.events -= entry.events();
        self.bytes -= frame_len(&entry);
        self.forget_number(&entry.shopper_id, seq);
        Some(entry)
    }
}

fn frame_len(entry: &QueuedTrack) -> u64 {
    // Header, fixed fields, the two strings and the encoded events.
    8 + 33 + (entry.shopper_id.len() + entry.origin.len() + entry.request.encoded_len()) as u64
}

/// A shopper's call numbered by the outbox: in flight to the owner until [`Outbox::release`]d (the owner has it)
/// or [`Outbox::commit`]ted (queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The number and origin the owner sees.
    pub delivery: Delivery,
    /// Calls or entries of the same shopper are ahead of it: it must be queued, not sent.
    pub behind: bool,
}

/// The outbox of one node.
pub struct Outbox {
    origin: Arc<str>,
    dir: PathBuf,
    limits: OutboxLimits,
    state: Mutex<State>,
    writer: Mutex<mpsc::Sender<Command>>,
    /// Woken when an entry may be delivered (queued, or a call ahead of one resolved).
    ready: Notify,
    /// Woken when an entry left (delivered) or a call in flight resolved.
    drained: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("origin", &self.origin)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What an outbox directory held at open: the waiting entries, the segments with their waiting entries, and the next
/// sequence number.
struct Recovered {
    state: State,
    segments: VecDeque<Segment>,
    next_seq: u64,
}

/// Reads the segments back in number order, cutting a torn last record off any of them; delivered marks remove
/// their entries.
fn recover(dir: &Path) -> io::Result<Recovered> {
    let firsts = segment_names(dir).list()?;
    let mut state = State::default();
    let mut segments = VecDeque::new();
    let mut delivered = HashSet::new();
    let mut next_seq = firsts.last().copied().unwrap_or(1);
    for &first in &firsts {
        let path = segment_path(dir, first);
        let (bodies, readable) = read_segment(&path)?;
        if readable < std::fs::metadata(&path)?.len() {
            tracing::warn!(path = %path.display(), "cutting a torn record off the end of an outbox segment");
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(readable)?;
        }
        let mut live = HashSet::new();
        for body in bodies {
            match body.first() {
                Some(&ENTRY) => {
                    if let Some(entry) = QueuedTrack::decode(&body) {
                        next_seq = next_seq.max(entry.seq + 1);
                        live.insert(entry.seq);
                        state
                            .by_shopper
                            .entry(entry.shopper_id.clone())
                            .or_default()
                            .push_back(entry.seq);
                        state.insert(entry);
                    }
                }
                Some(&DELIVERED) => {
                    if let Some(b) = body.get(1..9).and_then(|b| b.try_into().ok()) {
                        delivered.insert(u64::from_le_bytes(b));
                    }
                }
                _ => {}
            }
        }
        segments.push_back(Segment {
            first_seq: first,
            path,
            live,
        });
    }
    for seq in delivered {
        state.remove(seq);
        for s in &mut segments {
            s.live.remove(&seq);
        }
    }
    Ok(Recovered {
        state,
        segments,
        next_seq,
    })
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`: reads back what is queued there, cutting off a torn last record,
    /// and takes a new origin, named after `node_id` and the time.
    ///
    /// # Errors
    /// When the directory or its files cannot be read or written.
    pub fn open(dir: &Path, node_id: &str, limits: OutboxLimits) -> io::Result<Arc<Self>> {
        Self::open_with(dir, node_id, limits, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        node_id: &str,
        limits: OutboxLimits,
        segment_bytes: u64,
    ) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let origin: Arc<str> = format!("{node_id}@{:x}", aisle_domain::now_ms()).into();
        let Recovered {
            mut state,
            mut segments,
            next_seq,
        } = recover(dir)?;
        state.next_seq = next_seq;
        // Appends go to a new segment named by the next sequence number (never after a record cut off above).
        let path = segment_path(dir, next_seq);
        let file = open_append(&path)?;
        let written = file.metadata()?.len();
        sync_dir(dir)?;
        if segments.back().is_none_or(|s| s.first_seq != next_seq) {
            segments.push_back(Segment {
                first_seq: next_seq,
                path,
                live: HashSet::new(),
            });
        }
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            file,
            written,
        };
        writer.drop_delivered_segments();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("aisle-outbox".into())
            .spawn(move || writer.run(rx))?;
        let outbox = Arc::new(Self {
            origin,
            dir: dir.to_path_buf(),
            limits,
            state: Mutex::new(state),
            writer: Mutex::new(tx),
            ready: Notify::new(),
            drained: Notify::new(),
        });
        outbox.publish();
        Ok(outbox)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, command: Command) {
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(command);
        if sent.is_err() {
            tracing::error!("the outbox writer thread is gone");
        }
    }

    /// The origin this outbox numbers calls under since it opened.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Numbers a call of `shopper_id` before it is sent. The caller then either [`release`](Self::release)s it
    /// (the owner answered) or [`commit`](Self::commit)s it (queue it) — and must commit when the ticket is
    /// `behind`.
    pub fn ticket(&self, shopper_id: &str) -> Ticket {
        let (seq, behind) = self.state().take_number(shopper_id);
        Ticket {
            delivery: Delivery {
                origin: self.origin.as_ref().into(),
                seq,
            },
            behind,
        }
    }

    /// The owner answered the call of `ticket`: it is no longer in flight.
    pub fn release(&self, shopper_id: &str, ticket: &Ticket) {
        let next_waits = {
            let mut state = self.state();
            state.forget_number(shopper_id, ticket.delivery.seq);
            state.by_shopper.contains_key(shopper_id)
        };
        if next_waits {
            self.ready.notify_one();
        }
        self.drained.notify_waiters();
    }

    /// Whether calls or entries of `shopper_id` are in flight or waiting.
    pub fn has_pending(&self, shopper_id: &str) -> bool {
        self.state().by_shopper.contains_key(shopper_id)
    }

    /// Queues the call of `ticket` (one shopper's events); returns once they are on disk (fsync'd).
    ///
    /// # Errors
    /// [`QueueError::Full`] beyond a limit (nothing is queued then); [`QueueError::Io`] when the write failed (the
    /// entry is not kept: the caller is told it was not accepted). Either way the ticket is released.
    pub async fn commit(
        &self,
        shopper_id: &str,
        ticket: &Ticket,
        received_at_us: i64,
        request: pb::TrackRequest,
    ) -> Result<(), QueueError> {
        let seq = ticket.delivery.seq;
        let entry = QueuedTrack {
            origin: ticket.delivery.origin.to_string(),
            seq,
            shopper_id: shopper_id.to_string(),
            received_at_us,
            queued_at_ms: aisle_domain::now_ms(),
            // The call's id is the client's, not the entry's.
            request: pb::TrackRequest {
                request_id: String::new(),
                ..request
            },
        };
        let events = entry.events();
        let record = {
            let mut state = self.state();
            let bytes = frame_len(&entry);
            let full = if state.events + events > self.limits.max_events {
                Some(format!(
                    "{} events held, limit outbox_max_events = {}",
                    state.events, self.limits.max_events
                ))
            } else if state.bytes + bytes > self.limits.max_bytes {
                Some(format!(
                    "{} bytes held, limit outbox_max_bytes = {}",
                    state.bytes, self.limits.max_bytes
                ))
            } else {
                None
            };
            if let Some(why) = full {
                state.forget_number(shopper_id, seq);
                drop(state);
                metrics::counter!("aisle_outbox_full_total").increment(1);
                return Err(QueueError::Full(why));
            }
            let record = frame(&entry.encode());
            state.insert(entry);
            record
        };
        let (ack, done) = oneshot::channel();
        self.send(Command::Append(seq, record, ack));
        let written = done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the outbox writer thread is gone")));
        if let Err(e) = written {
            {
                let mut state = self.state();
                state.remove(seq);
                state.forget_number(shopper_id, seq);
            }
            self.publish();
            metrics::counter!("aisle_outbox_write_errors_total").increment(1);
            return Err(QueueError::Io(e));
        }
        metrics::counter!("aisle_outbox_queued_events_total").increment(events as u64);
        self.publish();
        self.ready.notify_one();
        Ok(())
    }

    /// Numbers and queues one shopper's events at once.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub async fn push(
        &self,
        shopper_id: &str,
        received_at_us: i64,
        request: pb::TrackRequest,
    ) -> Result<u64, QueueError> {
        let ticket = self.ticket(shopper_id);
        self.commit(shopper_id, &ticket, received_at_us, request)
            .await?;
        Ok(ticket.delivery.seq)
    }

    /// The entries that may be delivered now: each shopper's lowest-numbered, when no call of theirs is in flight
    /// ahead of it; lowest number first, at most `max`.
    pub fn heads(&self, max: usize) -> Vec<Arc<QueuedTrack>> {
        let state = self.state();
        // In number order, an entry is its shopper's head when nothing of theirs is numbered lower: the scan stops
        // after `max` heads, not after every shopper.
        state
            .entries
            .values()
            .filter(|e| state.by_shopper.get(&e.shopper_id).and_then(|q| q.front()) == Some(&e.seq))
            .take(max)
            .cloned()
            .collect()
    }

    /// The owner has the entry (applied now or before), or it must not be applied (erased, refused): it leaves.
    pub fn delivered(&self, seq: u64) {
        let removed = self.state().remove(seq);
        if removed.is_some() {
            self.send(Command::Delivered(seq));
            self.publish();
            self.drained.notify_waiters();
        }
    }

    /// Waits, at most `timeout`, until nothing of `shopper_id` is in flight or waiting; whether that is so.
    pub async fn wait_delivered(&self, shopper_id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so that a delivery between the check and the wait is not missed.
            drained.as_mut().enable();
            if !self.has_pending(shopper_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return !self.has_pending(shopper_id);
            }
        }
    }

    /// Removes every entry of `shopper_id` from memory and disk (erasure). Returns how many waiting events were
    /// removed.
    ///
    /// # Errors
    /// When a segment could not be rewritten (the entries are gone from memory, so they are not delivered; the
    /// erasure should be retried to remove them from disk).
    pub async fn purge(&self, shopper_id: &str) -> io::Result<usize> {
        let removed: Vec<Arc<QueuedTrack>> = {
            let mut state = self.state();
            let seqs: Vec<u64> = state
                .by_shopper
                .get(shopper_id)
                .map(|q| q.iter().copied().collect())
                .unwrap_or_default();
            seqs.into_iter().filter_map(|s| state.remove(s)).collect()
        };
        self.publish();
        self.drained.notify_waiters();
        let events = removed.iter().map(|e| e.events()).sum();
        let seqs: HashSet<u64> = removed.iter().map(|e| e.seq).collect();
        let (ack, done) = oneshot::channel();
        self.send(Command::Purge(shopper_id.to_string(), seqs, ack));
        done.await
            .unwrap_or_else(|_| Err(io::Error::other("the outbox writer thread is gone")))?;
        Ok(events)
    }

    /// Returns once everything asked before (entries, delivered marks) is written and fsync'd.
    ///
    /// # Errors
    /// When the fsync failed.
    pub async fn flush(&self) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.send(Command::Flush(ack));
        done.await
            .unwrap_or_else(|_| Err(io::Error::other("the outbox writer thread is gone")))
    }

    /// Events of `shopper_id` waiting (data-access requests).
    pub fn queued_events_of(&self, shopper_id: &str) -> usize {
        let state = self.state();
        state.by_shopper.get(shopper_id).map_or(0, |q| {
            q.iter()
                .filter_map(|seq| state.entries.get(seq))
                .map(|e| e.events())
                .sum()
        })
    }

    /// The shoppers with calls in flight or entries waiting.
    pub fn shoppers(&self) -> Vec<String> {
        self.state().by_shopper.keys().cloned().collect()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state().events
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until an entry may be delivered (or `timeout` passes).
    pub async fn wait_until_ready(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.ready.notified()).await;
    }

    /// Updates the gauges.
    pub fn publish(&self) {
        let state = self.state();
        metrics::gauge!("aisle_outbox_events").set(state.events as f64);
        metrics::gauge!("aisle_outbox_bytes").set(state.bytes as f64);
        let oldest = state.entries.values().next().map_or(0.0, |e| {
            (aisle_domain::now_ms() - e.queued_at_ms).max(0) as f64 / 1000.0
        });
        metrics::gauge!("aisle_outbox_oldest_seconds").set(oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutboxLimits {
        OutboxLimits {
            max_events: 100,
            max_bytes: 1 << 20,
        }
    }

    fn request(shopper: &str, n: usize) -> pb::TrackRequest {
        pb::TrackRequest {
            events: (0..n)
                .map(|k| pb::TrackEvent {
                    shopper_id: shopper.into(),
                    r#type: pb::EventType::Search as i32,
                    query: format!("q{k}"),
                    ..Default::default()
                })
                .collect(),
            request_id: "r-1".into(),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aisle-outbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn queued_entries_survive_a_restart_in_order_and_delivered_ones_do_not() {
        let d = dir("restart");
        let outbox = Outbox::open(&d, "node-1", limits()).unwrap();
        let origin = outbox.origin().to_string();
        let a1 = outbox.push("ann", 10, request("ann", 2)).await.unwrap();
        let b1 = outbox.push("bob", 11, request("bob", 1)).await.unwrap();
        let a2 = outbox.push("ann", 12, request("ann", 3)).await.unwrap();
        assert!(a1 < b1 && b1 < a2);
        assert_eq!(outbox.len(), 6);
        // One head per shopper: ann's second entry waits behind her first.
        let heads: Vec<u64> = outbox.heads(10).iter().map(|e| e.seq).collect();
        assert_eq!(heads, vec![a1, b1]);
        outbox.delivered(a1);
        assert_eq!(
            outbox.heads(10).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![b1, a2]
        );
        outbox.flush().await.unwrap();
        drop(outbox);
        // The writer thread ends with the last sender; open again as a restarted node would.
        std::thread::sleep(Duration::from_millis(2));
        let again = Outbox::open(&d, "node-1", limits()).unwrap();
        assert_ne!(
            again.origin(),
            origin,
            "each opening numbers under a new origin"
        );
        let heads = again.heads(10);
        assert_eq!(
            heads.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![b1, a2]
        );
        assert_eq!(
            heads[0].origin, origin,
            "an entry keeps the origin it was numbered under"
        );
        assert_eq!(heads[1].request.events.len(), 3);
        assert_eq!(heads[1].received_at_us, 12);
        assert!(heads[1].request.request_id.is_empty());
        // New entries continue the numbering.
        let b2 = again.push("bob", 13, request("bob", 1)).await.unwrap();
        assert!(b2 > a2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_call_in_flight_holds_back_the_shoppers_later_entries_until_it_resolves() {
        let d = dir("tickets");
        let outbox = Outbox::open(&d, "node-1", limits()).unwrap();
        let first = outbox.ticket("ann");
        assert!(!first.behind);
        let second = outbox.ticket("ann");
        assert!(second.behind, "a call behind one in flight must queue");
        outbox
            .commit("ann", &second, 5, request("ann", 1))
            .await
            .unwrap();
        assert!(
            outbox.heads(10).is_empty(),
            "the first call is still in flight"
        );
        // Its answer was lost: it is queued under its own number, ahead of the second.
        outbox
            .commit("ann", &first, 4, request("ann", 2))
            .await
            .unwrap();
        let heads = outbox.heads(10);
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].delivery(), first.delivery);
        outbox.delivered(first.delivery.seq);
        assert_eq!(outbox.heads(10)[0].delivery(), second.delivery);
        // Another shopper's call answered at once leaves nothing behind.
        let bob = outbox.ticket("bob");
        outbox.release("bob", &bob);
        assert!(!outbox.has_pending("bob"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_what_came_before_is_kept() {
        let d = dir("torn");
        let outbox = Outbox::open(&d, "node-1", limits()).unwrap();
        let kept = outbox.push("ann", 10, request("ann", 1)).await.unwrap();
        drop(outbox);
        let seg = segment_path(&d, kept);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        // Half a record: a length and a few bytes of a body never acknowledged.
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let again = Outbox::open(&d, "node-1", limits()).unwrap();
        assert_eq!(
            again.heads(10).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![kept]
        );
        let next = again.push("ann", 11, request("ann", 1)).await.unwrap();
        assert!(next > kept);
        drop(again);
        let third = Outbox::open(&d, "node-1", limits()).unwrap();
        assert_eq!(third.len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_naming_the_limit_and_keeps_what_it_holds() {
        let d = dir("full");
        let outbox = Outbox::open(
            &d,
            "node-1",
            OutboxLimits {
                max_events: 5,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        outbox.push("ann", 1, request("ann", 4)).await.unwrap();
        let err = outbox.push("bob", 2, request("bob", 2)).await.unwrap_err();
        assert!(err.to_string().contains("outbox_max_events = 5"), "{err}");
        assert_eq!(outbox.len(), 4);
        outbox.push("bob", 3, request("bob", 1)).await.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn purge_removes_a_shoppers_entries_from_disk() {
        let d = dir("purge");
        let outbox = Outbox::open(&d, "node-1", limits()).unwrap();
        let delivered = outbox.push("ann", 1, request("ann", 2)).await.unwrap();
        let bob = outbox.push("bob", 2, request("bob", 1)).await.unwrap();
        outbox.delivered(delivered);
        outbox.push("ann", 3, request("ann", 1)).await.unwrap();
        // The delivered entry of ann's is still in the segment (bob's keeps it); the waiting one is counted.
        assert_eq!(outbox.purge("ann").await.unwrap(), 1);
        assert!(!outbox.has_pending("ann"));
        // Nothing of ann's is left in any file of the outbox.
        for f in std::fs::read_dir(&d).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(3).any(|w| w == b"ann"),
                "ann is still on disk"
            );
        }
        drop(outbox);
        let again = Outbox::open(&d, "node-1", limits()).unwrap();
        assert_eq!(
            again.heads(10).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![bob]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn full_segments_roll_over_and_go_once_every_entry_in_them_is_delivered() {
        let d = dir("roll");
        let segments = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("seg-"))
                .collect();
            v.sort();
            v
        };
        // Segments of two entries (an entry here is about 75 bytes).
        let outbox = Outbox::open_with(&d, "node-1", limits(), 100).unwrap();
        let mut seqs = Vec::new();
        for k in 0..6 {
            let shopper = format!("s{k}");
            seqs.push(
                outbox
                    .push(&shopper, k, request(&shopper, 1))
                    .await
                    .unwrap(),
            );
        }
        assert!(segments(&d).len() >= 3, "{:?}", segments(&d));
        // Delivering out of order: an old segment goes only when every entry in it, and before it, is delivered.
        outbox.delivered(seqs[1]);
        outbox.flush().await.unwrap();
        assert!(segment_path(&d, seqs[0]).exists());
        outbox.delivered(seqs[0]);
        for &seq in &seqs[2..5] {
            outbox.delivered(seq);
        }
        outbox.flush().await.unwrap();
        assert!(!segment_path(&d, seqs[0]).exists());
        drop(outbox);
        let again = Outbox::open_with(&d, "node-1", limits(), 100).unwrap();
        let left: Vec<u64> = again.heads(10).iter().map(|e| e.seq).collect();
        assert_eq!(left, vec![seqs[5]]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn delivered_segments_are_removed_but_the_numbering_goes_on() {
        let d = dir("segments");
        let outbox = Outbox::open(&d, "node-1", limits()).unwrap();
        let first = outbox.push("ann", 1, request("ann", 1)).await.unwrap();
        outbox.delivered(first);
        outbox.flush().await.unwrap();
        drop(outbox);
        // Restarted: the old segment holds only delivered entries and goes; the new one names the next number.
        let again = Outbox::open(&d, "node-1", limits()).unwrap();
        assert!(again.is_empty());
        let second = again.push("ann", 2, request("ann", 1)).await.unwrap();
        assert_eq!(second, first + 1);
        assert!(!segment_path(&d, first).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
