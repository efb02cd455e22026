//! Data-subject requests on a journal: finding a subject's lines (access requests) and erasing them.
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

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::Journal;
use super::chain::{SUBJECT_KEY, SubjectJson, split_line};
use super::segments::{self, sync_dir};
use super::writer::Store;
use super::{EraseReport, ErasedFile};
use crate::durable::{self, Replacement, open_append};

impl Store {
    /// Erases the subjects `refs` from every segment, oldest first, after writing and syncing what is pending.
    pub(super) fn erase(&mut self, refs: &[String]) -> io::Result<EraseReport> {
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
        for n in self.sealed.list()? {
            let path = self.sealed.path(n);
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

/// Decides what erasure does to a line.
struct Matcher<'a> {
    refs: HashSet<&'a str>,
    /// The pseudonyms as they appear inside JSON strings, for a quick first test.
    needles: Vec<Vec<u8>>,
    chained: bool,
    field: Option<&'static str>,
}

impl<'a> Matcher<'a> {
    /// Matches the pseudonyms `refs` in a chained log's subjects, or in an unchained log's `field`.
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
    let mut reader = BufReader::new(src);
    let mut out = Replacement::create(path)?;
    if let Some(t) = mtime {
        out.keep_modified(t);
    }
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
        // Dropping the replacement removes its temporary file.
        return Ok(0);
    }
    out.commit()?;
    sync_dir(&durable::parent_dir(path));
    Ok(changed)
}

/// The lines of the log at `live` about the subjects `refs`: at most `limit` of them, oldest first, and how many
/// there are in all. See [`Journal::find`].
pub(super) fn find_lines(
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
    let sealed = segments::sealed(live);
    let mut files: Vec<PathBuf> = sealed.list()?.into_iter().map(|n| sealed.path(n)).collect();
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

/// Where `needle` first occurs in `haystack` (never, for an empty needle).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
