//! Reading shopping sessions from the formats a data scientist has at hand:
//! - **rsc15**: session-rec's tab-separated `SessionId ItemId Time` (Time in fractional Unix seconds), one event a
//!   line, each session's events contiguous and in time order (YooChoose clicks);
//! - **otto**: one JSON object per session, `{"session": N, "events": [{"aid", "ts" (ms), "type"}]}`, with types
//!   clicks, carts and orders;
//! - **events**: the node's own event log, [`EventRecord`] JSON lines, grouped per shopper into sessions that end
//!   after 30 minutes without an event.
//!
//! Every format becomes [`LoggedSession`]s with external item ids, which is all the ranking code needs.

use std::collections::HashMap;
use std::path::Path;

use aisle_domain::TimestampMs;
use aisle_domain::event::{EventKind, EventRecord, LoggedEvent, LoggedSession};
use serde::Deserialize;

/// A session ends after this long without an event (Aisle event logs).
pub const SESSION_GAP_MS: TimestampMs = 30 * 60 * 1000;

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// session-rec TSV (rsc15).
    Rsc15,
    /// OTTO JSON lines.
    Otto,
    /// Aisle event log JSON lines.
    Events,
}

impl Format {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Rsc15 => "rsc15",
            Format::Otto => "otto",
            Format::Events => "events",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rsc15" | "tsv" => Ok(Format::Rsc15),
            "otto" => Ok(Format::Otto),
            "events" | "aisle" => Ok(Format::Events),
            other => Err(format!(
                "unknown format {other:?}: expected rsc15, otto or events"
            )),
        }
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not in the format.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The format could not be recognised.
    #[error("{path}: cannot tell the format from the first line; pass --format rsc15|otto|events")]
    UnknownFormat {
        /// The file.
        path: String,
    },
}

/// Recognises a format from a file's first non-empty line.
pub fn detect(first_line: &str) -> Option<Format> {
    let line = first_line.trim_start();
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value.get("events").is_some() && value.get("session").is_some() {
            return Some(Format::Otto);
        }
        if value.get("shopper_id").is_some() {
            return Some(Format::Events);
        }
        return None;
    }
    if line.starts_with("SessionId") || line.split('\t').count() == 3 {
        return Some(Format::Rsc15);
    }
    None
}

/// Reads the sessions of a file, in the format given or detected.
///
/// # Errors
/// When the file cannot be read, its format is not recognised, or a line is malformed (the error names it).
pub fn read_sessions(path: &Path, format: Option<Format>) -> Result<Vec<LoggedSession>, DataError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: name.clone(),
        source,
    })?;
    let format = match format {
        Some(f) => f,
        None => text
            .lines()
            .find(|l| !l.trim().is_empty())
            .and_then(detect)
            .ok_or_else(|| DataError::UnknownFormat { path: name.clone() })?,
    };
    let parse_error = |line: usize, reason: String| DataError::Parse {
        path: name.clone(),
        line,
        reason,
    };
    match format {
        Format::Rsc15 => parse_rsc15(&text),
        Format::Otto => parse_otto(&text),
        Format::Events => parse_events(&text, SESSION_GAP_MS),
    }
    .map_err(|(line, reason)| parse_error(line, reason))
}

/// A parse failure: 1-based line number and reason.
pub type LineError = (usize, String);

/// Parses session-rec TSV: contiguous sessions in file order.
///
/// # Errors
/// The first malformed line.
pub fn parse_rsc15(text: &str) -> Result<Vec<LoggedSession>, LineError> {
    let mut out: Vec<LoggedSession> = Vec::new();
    let mut current: Option<&str> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (n == 0 && line.starts_with("SessionId")) {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(session), Some(item), Some(time), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err((
                n + 1,
                "expected 3 tab-separated fields: SessionId ItemId Time".into(),
            ));
        };
        let seconds: f64 = time
            .trim()
            .parse()
            .map_err(|_| (n + 1, format!("Time: not a number: {time:?}")))?;
        if session.is_empty() || item.is_empty() {
            return Err((n + 1, "SessionId and ItemId are required".into()));
        }
        if current != Some(session) {
            out.push(LoggedSession {
                id: session.to_string(),
                events: Vec::new(),
            });
            current = Some(session);
        }
        out.last_mut().expect("pushed").events.push(LoggedEvent {
            item: item.to_string(),
            kind: EventKind::View,
            ts_ms: (seconds * 1000.0).round() as TimestampMs,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct OttoSession {
    session: serde_json::Value,
    events: Vec<OttoEvent>,
}

#[derive(Deserialize)]
struct OttoEvent {
    aid: serde_json::Value,
    ts: TimestampMs,
    #[serde(rename = "type")]
    kind: String,
}

fn id_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses OTTO JSON lines: clicks are views, carts add-to-carts, orders purchases.
///
/// # Errors
/// The first malformed line.
pub fn parse_otto(text: &str) -> Result<Vec<LoggedSession>, LineError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: OttoSession = serde_json::from_str(line).map_err(|e| (n + 1, e.to_string()))?;
        let mut events = Vec::with_capacity(s.events.len());
        for e in s.events {
            let kind = match e.kind.as_str() {
                "clicks" => EventKind::View,
                "carts" => EventKind::AddToCart,
                "orders" => EventKind::Purchase,
                other => return Err((n + 1, format!("events[].type: unknown {other:?}"))),
            };
            events.push(LoggedEvent {
                item: id_of(&e.aid),
                kind,
                ts_ms: e.ts,
            });
        }
        events.sort_by_key(|e| e.ts_ms);
        out.push(LoggedSession {
            id: id_of(&s.session),
            events,
        });
    }
    Ok(out)
}

/// Parses an Aisle event log: events naming an item, grouped per shopper, in time order, split into sessions after
/// `gap_ms` without an event; sessions ordered by their first event. Events without an item (searches, store
/// visits) carry no item signal for training and are left out.
///
/// # Errors
/// The first malformed line.
pub fn parse_events(text: &str, gap_ms: TimestampMs) -> Result<Vec<LoggedSession>, LineError> {
    let mut by_shopper: HashMap<String, Vec<(usize, LoggedEvent)>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: EventRecord = serde_json::from_str(line).map_err(|e| (n + 1, e.to_string()))?;
        if r.item_id.is_empty() {
            continue;
        }
        let events = by_shopper.entry(r.shopper_id.clone()).or_insert_with(|| {
            order.push(r.shopper_id.clone());
            Vec::new()
        });
        events.push((
            n,
            LoggedEvent {
                item: r.item_id,
                kind: r.kind,
                ts_ms: r.ts_ms,
            },
        ));
    }
    let mut out: Vec<LoggedSession> = Vec::new();
    for shopper in order {
        let mut events = by_shopper.remove(&shopper).unwrap_or_default();
        events.sort_by_key(|(n, e)| (e.ts_ms, *n));
        let mut k = 0usize;
        let mut last: Option<TimestampMs> = None;
        for (_, e) in events {
            if last.is_none_or(|t| e.ts_ms - t > gap_ms) {
                out.push(LoggedSession {
                    id: format!("{shopper}#{k}"),
                    events: Vec::new(),
                });
                k += 1;
            }
            last = Some(e.ts_ms);
            out.last_mut().expect("pushed").events.push(e);
        }
    }
    out.sort_by_key(|s| s.events.first().map_or(0, |e| e.ts_ms));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsc15_sessions_are_contiguous_runs() {
        let text =
            "SessionId\tItemId\tTime\n1\t10\t1396321200.5\n1\t11\t1396321260\n2\t10\t1396321300\n";
        assert_eq!(detect(text.lines().next().unwrap()), Some(Format::Rsc15));
        let s = parse_rsc15(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "1");
        assert_eq!(s[0].events[0].ts_ms, 1_396_321_200_500);
        assert_eq!(s[0].events[1].item, "11");
        assert_eq!(s[1].events.len(), 1);
        assert!(parse_rsc15("1\t2\n").is_err());
    }

    #[test]
    fn otto_types_map_to_event_kinds() {
        let line = r#"{"session": 7, "events": [{"aid": 5, "ts": 2000, "type": "carts"}, {"aid": 4, "ts": 1000, "type": "clicks"}, {"aid": 5, "ts": 3000, "type": "orders"}]}"#;
        assert_eq!(detect(line), Some(Format::Otto));
        let s = parse_otto(line).unwrap();
        assert_eq!(s[0].id, "7");
        let kinds: Vec<EventKind> = s[0].events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::View, EventKind::AddToCart, EventKind::Purchase]
        );
        assert_eq!(s[0].events[0].item, "4");
    }

    #[test]
    fn event_logs_split_sessions_on_a_30_minute_gap() {
        let minute = 60_000;
        let lines: Vec<String> = [
            ("a", "view", "x", 0),
            ("b", "view", "y", minute),
            ("a", "search", "", 2 * minute),
            ("a", "add_to_cart", "x", 3 * minute),
            ("a", "view", "z", 40 * minute),
        ]
        .iter()
        .map(|(s, t, i, ts)| {
            let item = if i.is_empty() {
                String::new()
            } else {
                format!(r#","item_id":"{i}""#)
            };
            let query = if *t == "search" {
                r#","query":"q""#
            } else {
                ""
            };
            format!(r#"{{"shopper_id":"{s}","type":"{t}"{item}{query},"ts_ms":{ts}}}"#)
        })
        .collect();
        let text = lines.join("\n");
        assert_eq!(detect(&lines[0]), Some(Format::Events));
        let s = parse_events(&text, SESSION_GAP_MS).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a#0", "b#0", "a#1"]);
        assert_eq!(s[0].events.len(), 2, "the search has no item");
        assert_eq!(s[2].events[0].item, "z");
    }
}
