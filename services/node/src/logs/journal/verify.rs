//! The verifier of chained logs, run offline (`aisle audit verify`): [`verify`] walks each chain's segments in
//! write order and checks every record against its predecessor, the seals and the head file; its report
//! ([`VerifyReport`]) counts what it saw and lists the incidents the chain records, its error ([`VerifyError`])
//! names the first record that does not verify.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::chain::{Rec, Special, ZERO_HASH, parse_record, peek_seq, split_lines};
use super::segments::{self, file_name};

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
    let (groups, skipped) = group(paths)?;
    let mut chains = Vec::new();
    for (live, group) in groups {
        chains.push(verify_chain(&live, &group)?);
    }
    Ok(VerifyReport { chains, skipped })
}

/// What to check of one log.
#[derive(Debug, Default)]
struct Group {
    /// All of it: every sealed segment, the live one and the head file.
    whole: bool,
    /// Only these sealed segments.
    sealed: BTreeSet<u64>,
}

/// The logs the paths name, by live path, and the unchained logs found in directories.
fn group(paths: &[PathBuf]) -> Result<(BTreeMap<PathBuf, Group>, Vec<PathBuf>), VerifyError> {
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
            segments::sealed(Path::new(live_name))
                .number(name)
                .map(|n| (path.with_file_name(live_name), n))
        });
        match sealed {
            Some((live, number)) if meta.is_ok() => {
                groups.entry(live).or_default().sealed.insert(number);
            }
            _ => {
                let has_segments = segments::sealed(path).list().is_ok_and(|s| !s.is_empty());
                if meta.is_err() && !has_segments {
                    return Err(VerifyError::at(path, VerifyProblem::NotFound));
                }
                groups.entry(path.clone()).or_default().whole = true;
            }
        }
    }
    Ok((groups, skipped))
}

/// Walks one log's segments (all of them, or the sealed ones named) in write order.
fn verify_chain(live: &Path, group: &Group) -> Result<ChainReport, VerifyError> {
    let sealed = segments::sealed(live);
    let mut files: Vec<(PathBuf, Option<u64>)> = Vec::new();
    let mut head = None;
    if group.whole {
        let numbers = sealed
            .list()
            .map_err(|e| VerifyError::at(live, VerifyProblem::Io(e.to_string())))?;
        files.extend(numbers.into_iter().map(|n| (sealed.path(n), Some(n))));
        if live.exists() {
            files.push((live.to_path_buf(), None));
        }
        let head_path = segments::head_path(live);
        head = segments::read_head(&head_path)
            .map_err(|e| VerifyError::at(&head_path, VerifyProblem::BadHead(e.to_string())))?;
    } else {
        files.extend(group.sealed.iter().map(|&n| (sealed.path(n), Some(n))));
    }
    let mut walk = Walk {
        report: ChainReport {
            log: live.to_path_buf(),
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
    walk.finish(live)
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
            Some((live, _)) if segments::sealed(Path::new(live)).number(&name).is_some() => {
                live.to_string()
            }
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
        let sealed = segments::sealed(&live);
        candidates.extend(sealed.list()?.into_iter().map(|n| sealed.path(n)));
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
    /// The seq the next record must have.
    fn expected(&self) -> u64 {
        self.prev.map_or(1, |(s, _)| s + 1)
    }

    /// Checks one segment file (`number`: a sealed one, `None`: the live one), record by record, then its end.
    fn segment(&mut self, path: &Path, number: Option<u64>) -> Result<(), VerifyError> {
        let bytes =
            fs::read(path).map_err(|e| VerifyError::at(path, VerifyProblem::Io(e.to_string())))?;
        let (lines, torn) = split_lines(&bytes);
        self.report.segments += 1;
        let mut first: Option<u64> = None;
        let mut sealed_at_end = false;
        for (i, line) in lines.iter().enumerate() {
            let err = |seq: u64, problem| VerifyError {
                file: path.to_path_buf(),
                line: Some(i + 1),
                seq: Some(seq),
                problem,
            };
            let rec = parse_record(line)
                .map_err(|p| err(peek_seq(line).unwrap_or(self.expected()), p))?;
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
            self.link(&rec, &lines[i + 1..])
                .map_err(|p| err(rec.seq, p))?;
            let first_seq = *first.get_or_insert(rec.seq);
            sealed_at_end = self
                .tally(&rec, path, first_seq, i as u64)
                .map_err(|p| err(rec.seq, p))?;
        }
        self.segment_end(path, number, lines.len(), torn, sealed_at_end)
    }

    /// Checks that a record follows the one before (seq and hash); `later` are the lines after it in its segment,
    /// which tell a reordering from a deletion.
    fn link(&mut self, rec: &Rec, later: &[&[u8]]) -> Result<(), VerifyProblem> {
        let expected = self.expected();
        match self.prev {
            None if rec.seq == 1 && rec.prev != ZERO_HASH => {
                return Err(VerifyProblem::PrevMismatch { previous: 0 });
            }
            None if rec.seq != 1 => self.report.starts_at = Some(rec.seq),
            None => {}
            Some((prev_seq, prev_hash)) => {
                if rec.seq != expected {
                    let reordered = later.iter().any(|l| peek_seq(l) == Some(expected));
                    return Err(if rec.seq < expected || reordered {
                        VerifyProblem::OutOfOrder {
                            expected,
                            found: rec.seq,
                        }
                    } else {
                        VerifyProblem::SeqGap {
                            expected,
                            found: rec.seq,
                        }
                    });
                }
                if rec.prev != prev_hash {
                    return Err(VerifyProblem::PrevMismatch { previous: prev_seq });
                }
            }
        }
        Ok(())
    }

    /// Counts a linked record in the report (a seal checked against its segment: `first_seq`, `index` records
    /// before it; gaps, incidents, redactions; the head file's hash) and makes it the previous one. Returns
    /// whether it is a seal.
    fn tally(
        &mut self,
        rec: &Rec,
        path: &Path,
        first_seq: u64,
        index: u64,
    ) -> Result<bool, VerifyProblem> {
        let mut seal = false;
        match &rec.special {
            Special::Seal(s) => {
                if s.first_seq != first_seq || s.records != index {
                    return Err(VerifyProblem::BadSeal {
                        first_seq: s.first_seq,
                        records: s.records,
                        actual_first: first_seq,
                        actual_records: index,
                    });
                }
                seal = true;
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
            return Err(VerifyProblem::HeadMismatch { seq: head_seq });
        }
        self.report.first_seq.get_or_insert(rec.seq);
        self.report.last_seq = Some(rec.seq);
        self.report.records += 1;
        self.prev = Some((rec.seq, rec.hash));
        Ok(seal)
    }

    /// Judges how a segment of `lines` complete lines ends: a torn live segment fails; a sealed one that is torn or
    /// lacks its seal is deferred (the next segment's `open` may acknowledge it); a sealed live segment is an
    /// incident.
    fn segment_end(
        &mut self,
        path: &Path,
        number: Option<u64>,
        lines: usize,
        torn: u64,
        sealed_at_end: bool,
    ) -> Result<(), VerifyError> {
        let expected = self.expected();
        let end_error = |line, problem| VerifyError {
            file: path.to_path_buf(),
            line,
            seq: Some(expected),
            problem,
        };
        if torn > 0 {
            let error = end_error(Some(lines + 1), VerifyProblem::TornLine { bytes: torn });
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

    /// Ends the walk: an irregular end still unacknowledged, or a head file beyond the last record, fails it.
    fn finish(self, live: &Path) -> Result<ChainReport, VerifyError> {
        if let Some((error, ..)) = self.deferred {
            return Err(error);
        }
        if let Some((head_seq, _)) = self.head {
            let last = self.report.last_seq.unwrap_or(0);
            if head_seq > last {
                return Err(VerifyError {
                    file: segments::head_path(live),
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
