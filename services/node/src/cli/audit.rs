//! `aisle audit verify`: checks hash-chained decision trails offline, no node needed — one summary (or JSON
//! object) per chain, and a failure naming the first bad record.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::logs::journal::{ChainReport, verify as verify_chains};

/// `aisle audit verify`: checks decision trails offline.
///
/// # Errors
/// The first bad record (file, line, seq and what is wrong), or an unreadable path.
pub(super) fn verify(paths: &[PathBuf], as_json: bool) -> anyhow::Result<()> {
    let report = verify_chains(paths).map_err(|e| anyhow::anyhow!("chain broken: {e}"))?;
    for c in &report.chains {
        if as_json {
            println!("{}", chain_json(c));
        } else {
            println!("{}", chain_text(c));
            for i in &c.incidents {
                println!("  incident at seq {}: {} ({})", i.seq, i.reason, i.detail);
            }
        }
    }
    for s in &report.skipped {
        eprintln!("{}: not a chained log; skipped", s.display());
    }
    anyhow::ensure!(
        !report.chains.is_empty(),
        "no decision trail found in {paths:?}"
    );
    Ok(())
}

/// The summary line of an intact chain: its records and segments, where it starts, and what was shed or erased.
fn chain_text(c: &ChainReport) -> String {
    format!(
        "{}: intact, {} record(s) in {} segment(s), seq {}..={}{}{}{}",
        c.log.display(),
        c.records,
        c.segments,
        c.first_seq.unwrap_or(0),
        c.last_seq.unwrap_or(0),
        c.starts_at
            .map(|s| format!("; starts at seq {s} (earlier segments expired or removed)"))
            .unwrap_or_default(),
        if c.gaps > 0 {
            format!(
                "; {} record(s) shed under load, stated in gap records",
                c.gaps
            )
        } else {
            String::new()
        },
        if c.redacted > 0 {
            format!("; {} subject(s) erased", c.redacted)
        } else {
            String::new()
        },
    )
}

/// The JSON form of an intact chain, its incidents included.
fn chain_json(c: &ChainReport) -> Value {
    json!({
        "log": c.log.display().to_string(),
        "intact": true,
        "records": c.records,
        "segments": c.segments,
        "first_seq": c.first_seq,
        "last_seq": c.last_seq,
        "starts_at": c.starts_at,
        "gaps": c.gaps,
        "redacted": c.redacted,
        "head": c.head,
        "incidents": c.incidents.iter().map(|i| json!({
            "seq": i.seq, "file": i.file.display().to_string(), "reason": i.reason, "detail": i.detail,
        })).collect::<Vec<_>>(),
    })
}
