//! Opening a journal: where its files stand after the last run (a clean stop, or a crash at any point) and where
//! writing continues.
//!
//! - Unchained: the live segment is continued; a torn last line (a crash mid-write) is cut off, with a warning.
//! - Chained: a live segment that verifies and does not end in a seal is continued. One that ends irregularly — a
//!   torn line, a corrupt line, or a finished seal whose rename a crash prevented — is set aside as-is as a sealed
//!   segment, and the chain continues from its last complete record. With nothing live, the newest sealed segment
//!   is checked for its seal. Then the head file is compared with the log's tail. The `open` record the writer
//!   encodes first says which of these happened (its reasons are listed with the record formats in `chain`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::chain::{Chain, OpenBody, Scan, ZERO_HASH, hex, scan_chain};
use super::segments::{self, file_name, sync_dir};
use super::writer::{SegState, Store};
use super::{JournalConfig, Shared};
use crate::durable::{self, open_append};

/// The longest and shortest pause between maintenance runs (age rotation, retention, gauges).
const MAINTENANCE_MAX: Duration = Duration::from_secs(60);
const MAINTENANCE_MIN: Duration = Duration::from_millis(100);

/// A record's seq and hash.
type Tip = (u64, [u8; 32]);

impl Store {
    /// Opens the journal's files (creating the directory and live segment as needed), finds where they stand, and
    /// returns the writer's state, ready to append.
    ///
    /// # Errors
    /// The directory or live segment cannot be created, read or opened; a live segment to be set aside cannot be
    /// renamed (or its sealed name is taken).
    pub(super) fn open(cfg: JournalConfig, shared: Arc<Shared>) -> io::Result<Self> {
        let dir = durable::parent_dir(&cfg.path);
        fs::create_dir_all(&dir)?;
        segments::remove_stale_temps(&cfg.path);
        let maintenance_every = cfg
            .segment_age
            .min(cfg.retention)
            .min(MAINTENANCE_MAX)
            .max(MAINTENANCE_MIN);
        let now = Instant::now();
        let mut store = Self {
            head_path: segments::head_path(&cfg.path),
            sealed: segments::sealed(&cfg.path),
            dir,
            shared,
            chain: Chain::new(),
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
        self.next_counter = self.sealed.list()?.last().map_or(1, |n| n + 1);
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
        let mut sealed = self.sealed.list()?;
        let head = match segments::read_head(&self.head_path) {
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
                self.seg = continued_segment(&scan, live.len() as u64);
            } else {
                let number = self.set_aside(&scan, &sealed, head, &mut open)?;
                sealed.push(number);
            }
            live_records = scan.records;
        }
        if tip.is_none() {
            if open.reason == "start"
                && let Some(&newest) = sealed.last()
            {
                self.check_newest_sealed(newest, &mut open)?;
            }
            tip = self.tip_before(&sealed, head)?;
        }
        let (seq, hash) = tip.unwrap_or((0, ZERO_HASH));
        if let Some(head) = head {
            self.check_head(head, seq, &live_records, &mut open);
        }
        self.chain.next_seq = seq + 1;
        self.chain.last_hash = hash;
        self.durable_tip = tip;
        if !continued {
            self.seg = SegState::new(self.chain.next_seq);
        }
        self.push_internal("open", &open, false);
        Ok(())
    }

    /// Sets aside a live segment that ends irregularly (a finished seal, a torn line or a corrupt one) as-is, as
    /// a sealed segment, notes why in `open`, and returns its number.
    fn set_aside(
        &self,
        scan: &Scan,
        sealed: &[u64],
        head: Option<Tip>,
        open: &mut OpenBody,
    ) -> io::Result<u64> {
        let path = &self.cfg.path;
        let number = match scan.records.first() {
            Some(r) => r.0,
            None => self.tip_before(sealed, head)?.map_or(1, |t| t.0 + 1),
        };
        let target = self.sealed.path(number);
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
        fs::rename(path, &target)?;
        sync_dir(&self.dir);
        let name = file_name(&target);
        if let Some(line) = scan.bad_line {
            tracing::error!(
                log = self.cfg.name, segment = %name, line,
                "live log segment holds a line that does not verify; set aside, the chain continues"
            );
            *open = OpenBody::new("corrupt");
            open.segment = Some(name);
            open.line = Some(line as u64);
        } else if scan.torn > 0 {
            tracing::warn!(
                log = self.cfg.name, segment = %name, torn_bytes = scan.torn,
                "live log segment ended in an incomplete line (a crash mid-write); set aside"
            );
            *open = OpenBody::new("torn_tail");
            open.segment = Some(name);
            open.torn_bytes = Some(scan.torn);
        }
        Ok(number)
    }

    /// With nothing live: a crash may have left the newest sealed segment without its seal (or torn); notes so in
    /// `open`.
    fn check_newest_sealed(&self, newest: u64, open: &mut OpenBody) -> io::Result<()> {
        let path = self.sealed.path(newest);
        let scan = scan_chain(&fs::read(&path)?);
        if scan.torn > 0 || scan.bad_line.is_some() || !scan.ends_sealed {
            *open = OpenBody::new(if scan.torn > 0 {
                "torn_tail"
            } else {
                "unsealed"
            });
            open.segment = Some(file_name(&path));
            open.torn_bytes = (scan.torn > 0).then_some(scan.torn);
        }
        Ok(())
    }

    /// Compares the head file with the log's tail (`last_seq`, the live records): when the log no longer holds the
    /// record the head names, whole lines were lost, which `open` records.
    fn check_head(&self, head: Tip, last_seq: u64, live_records: &[Tip], open: &mut OpenBody) {
        let (head_seq, head_hash) = head;
        let differs = live_records
            .iter()
            .find(|r| r.0 == head_seq)
            .is_some_and(|r| r.1 != head_hash);
        if head_seq > last_seq || differs {
            tracing::error!(
                log = self.cfg.name,
                head_seq,
                last_seq,
                "the log no longer holds the record its head file names: lines were lost at the tail"
            );
            if open.reason == "start" {
                open.reason = "head_mismatch".to_string();
            }
            open.head_seq = Some(head_seq);
            open.head_hash = Some(hex(&head_hash));
        }
    }

    /// The last record of the newest sealed segment that has one, else the head file's.
    fn tip_before(&self, sealed: &[u64], head: Option<Tip>) -> io::Result<Option<Tip>> {
        for &n in sealed.iter().rev() {
            let bytes = fs::read(self.sealed.path(n))?;
            if let Some(&tip) = scan_chain(&bytes).records.last() {
                return Ok(Some(tip));
            }
        }
        Ok(head)
    }
}

/// The state of a live segment that is continued: what its scan found, `len` bytes long.
fn continued_segment(scan: &Scan, len: u64) -> SegState {
    SegState {
        first: scan.records.first().map_or(1, |r| r.0),
        records: scan.records.len() as u64,
        user: scan.user,
        bytes: len,
        started: scan
            .first_at_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms)),
    }
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
