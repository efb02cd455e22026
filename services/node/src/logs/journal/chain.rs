//! The line formats, and the hash chain: encoding a chained record, parsing and checking one, scanning a segment.
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
//!     and `rotate`; [`verify()`](super::verify()) reports the others as incidents: `torn_tail` (the live segment ended
//!     in an incomplete line after a crash: it was set aside as-is as sealed segment `segment`, `torn_bytes` long
//!     incomplete, and the chain continues from its last complete record), `corrupt` (a complete line of the live
//!     segment failed to verify at start, at `line`: the segment was set aside as-is), `unsealed` (the newest sealed
//!     segment lacked its seal: a crash while setting one aside), `head_mismatch` (the head file named a record,
//!     `head_seq`/`head_hash`, that the log no longer held: whole lines were lost at the tail).
//!   - `seal` `{"first_seq":F,"records":R}`: the last record of every sealed segment; R counts the records before
//!     it in the segment. The next segment's `open` links to it.
//!   - `gap` `{"dropped":N}`: N entries were dropped (queue full, or the memory buffer full while the disk was
//!     failing) since the last gap record. Its count is exact; its position is approximate: it precedes the next
//!     entry the writer takes after the drops were counted, which may have been queued just before them.

use std::fs::File;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::VerifyProblem;

/// The `prev` of the first record.
pub(super) const ZERO_HASH: [u8; 32] = [0; 32];
/// What precedes the unhashed tail of a chained line.
pub(super) const SUBJECT_KEY: &[u8] = b",\"subject\":";
/// What precedes the hash at the end of a chained line.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// Kinds the journal writes itself; entries may not use them.
pub(super) const RESERVED_KINDS: [&str; 3] = ["open", "seal", "gap"];

/// Where the chain stands as records are encoded: the next seq and the hash the next record links to.
pub(super) struct Chain {
    /// The seq of the next record.
    pub(super) next_seq: u64,
    /// The hash of the last record encoded (or found at start).
    pub(super) last_hash: [u8; 32],
    salts: Salts,
}

impl Chain {
    /// A chain with no record yet, with a fresh secret for its salts.
    pub(super) fn new() -> Self {
        Self {
            next_seq: 1,
            last_hash: ZERO_HASH,
            salts: Salts::new(),
        }
    }

    /// Encodes one chained record, advancing the chain on success. `body` appends the body's JSON.
    pub(super) fn encode(
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
}

/// The body of a `seal` record.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SealBody {
    /// The seq of the segment's first record.
    pub(super) first_seq: u64,
    /// The records before the seal in the segment.
    pub(super) records: u64,
}

/// The body of a `gap` record.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GapBody {
    /// Entries dropped since the last gap record.
    pub(super) dropped: u64,
}

/// The body of an `open` record: why the segment starts (see the module docs for the reasons and fields).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct OpenBody {
    pub(super) reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) torn_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) head_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) head_hash: Option<String>,
}

impl OpenBody {
    /// An `open` body with this reason and no details.
    pub(super) fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            ..Self::default()
        }
    }

    /// Whether the reason is a regular one (`start`, `rotate`) rather than an incident.
    pub(super) fn regular(&self) -> bool {
        self.reason == "start" || self.reason == "rotate"
    }
}

/// A record's `subject` when it is not `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubjectJson {
    /// The pseudonym.
    #[serde(rename = "ref")]
    pub(super) reference: String,
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

/// A record that parsed, whose hash and subject digest match its content.
#[derive(Debug)]
pub(super) struct Rec {
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
    pub(super) hash: [u8; 32],
    pub(super) at_ms: i64,
    /// It has a subject digest.
    pub(super) digest: bool,
    /// It has a subject (not redacted).
    pub(super) subject: bool,
    pub(super) special: Special,
}

/// What a record is, when the journal wrote it itself.
#[derive(Debug)]
pub(super) enum Special {
    /// An entry.
    None,
    /// An `open` record.
    Open(OpenBody),
    /// A `seal` record.
    Seal(SealBody),
    /// A `gap` record.
    Gap(GapBody),
}

/// Where the unhashed tail of a chained line starts (`,"subject":`) and where its hash starts (`,"hash":"`),
/// when the line ends in `,"hash":"<64 hex>"}`.
pub(super) fn split_line(line: &[u8]) -> Option<(usize, usize)> {
    let subject_at = rfind(line, SUBJECT_KEY)?;
    let hash_at = rfind(line, HASH_KEY)?;
    let tail = &line[hash_at + HASH_KEY.len()..];
    (hash_at > subject_at && tail.len() == 66 && tail.ends_with(b"\"}"))
        .then_some((subject_at, hash_at))
}

/// Parses and checks one chained line (without its newline): structure, hash, subject digest.
pub(super) fn parse_record(line: &[u8]) -> Result<Rec, VerifyProblem> {
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
pub(super) fn peek_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The complete lines (without newlines) and the length of an incomplete last one.
pub(super) fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, u64) {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let torn = lines.pop().map_or(0, |last| last.len() as u64);
    (lines, torn)
}

/// What the start of a journal needs to know about a segment.
pub(super) struct Scan {
    /// Seq and hash of the records that verify and link, up to the first that does not.
    pub(super) records: Vec<(u64, [u8; 32])>,
    /// When the first of them was written.
    pub(super) first_at_ms: Option<i64>,
    /// Entries and gap records among them.
    pub(super) user: u64,
    /// The last of them is a seal.
    pub(super) ends_sealed: bool,
    /// The first complete line that does not verify or link.
    pub(super) bad_line: Option<usize>,
    /// The length of an incomplete last line.
    pub(super) torn: u64,
}

/// Reads a segment's records as far as they verify and link.
pub(super) fn scan_chain(bytes: &[u8]) -> Scan {
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

/// The digest a record's `subject_digest` holds: SHA-256 of the salt, then the pseudonym.
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

    /// A new salt.
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

/// Appends the lowercase hex of `bytes`.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// The lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
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

/// 32 bytes from 64 lowercase hex digits.
pub(super) fn unhex32(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

/// Where `needle` last occurs in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

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
