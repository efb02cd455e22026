//! The journal's behaviour through its handle: what is written, rotated, deleted, erased and verified, and what
//! survives restarts, torn tails and failing disks.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::segments::{self, file_name, head_path, read_head};
use super::{
    ChainReport, Entry, Fault, Journal, JournalConfig, VerifyError, VerifyProblem, verify,
};

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
    let sealed = segments::sealed(&path).list().unwrap();
    let total: u64 = sealed
        .iter()
        .map(|&n| fs::metadata(segments::sealed(&path).path(n)).unwrap().len())
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
    let sealed = segments::sealed(&path).list().unwrap();
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
    let alone = verify(&[segments::sealed(&path).path(sealed[1])]).unwrap();
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
    let remaining = segments::sealed(&path).list().unwrap();
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
        segments::sealed(&path).list().unwrap().len() >= 2,
        "{:?}",
        dir.contents()
    );
    let mut files: Vec<PathBuf> = segments::sealed(&path)
        .list()
        .unwrap()
        .into_iter()
        .map(|n| segments::sealed(&path).path(n))
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
    assert_eq!(segments::sealed(&path).list().unwrap(), vec![1]);
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
    assert_eq!(read_head(&head_path(&path)).unwrap().map(|h| h.0), Some(2));
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
