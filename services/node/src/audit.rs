//! Logs written off the request path: decision records (one JSON line per decision: what was shown, why, under
//! which versions and variants; with a pseudonymous shopper reference, not the shopper id) and the event log
//! (every applied shopper event, in the JSON-lines format `aisle-train` reads). Both are written by a background
//! task from a bounded queue, so a request never waits on disk; when a queue is full the record is dropped and
//! counted, never the request.

use std::path::Path;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::decision::{DecideInput, Decision};

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 16_384;

/// One decision, for audit and experiment analysis.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    decision_id: String,
    at_ms: i64,
    node: String,
    request_id: String,
    client: String,
    shopper_ref: String,
    surface: &'static str,
    channel: &'static str,
    store_id: String,
    tier: &'static str,
    fallback_reason: String,
    model_version: String,
    rules_version: String,
    experiments_version: String,
    catalog_version: String,
    in_holdout: bool,
    variants: Vec<(String, String)>,
    items: Vec<RecordItem>,
    latency_us: u64,
}

#[derive(Debug, Serialize)]
struct RecordItem {
    item_id: String,
    score: f32,
    offer_id: Option<String>,
    reasons: Vec<String>,
}

impl DecisionRecord {
    /// The record of a decision.
    pub fn new(node: &str, input: &DecideInput, d: &Decision) -> Self {
        Self {
            decision_id: d.decision_id.clone(),
            at_ms: aisle_domain::now_ms(),
            node: node.to_string(),
            request_id: input.request_id.clone(),
            client: input.client.clone(),
            shopper_ref: aisle_domain::hash::shopper_ref(&input.shopper_id),
            surface: input.surface.as_str(),
            channel: input.channel.as_str(),
            store_id: input.store_id.clone(),
            tier: d.tier.as_str(),
            fallback_reason: d.fallback_text(),
            model_version: d.model_version.clone(),
            rules_version: d.rules_version.clone(),
            experiments_version: d.experiments_version.clone(),
            catalog_version: d.catalog.meta.version.clone(),
            in_holdout: d.assignment.in_holdout,
            variants: d
                .assignment
                .variants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            items: d
                .items
                .iter()
                .map(|i| RecordItem {
                    item_id: d.catalog.item(i.item).id.to_string(),
                    score: i.score,
                    offer_id: i.offer.as_ref().map(|o| o.offer_id.to_string()),
                    reasons: i.reasons.clone(),
                })
                .collect(),
            latency_us: d.latency.as_micros() as u64,
        }
    }
}

/// A JSON-lines log written by a background task from a bounded queue: the request path never waits on disk.
/// When the queue is full a record is dropped and counted in `aisle_log_records_dropped_total{log}`.
pub struct JsonLog<T> {
    tx: mpsc::Sender<T>,
    name: &'static str,
}

impl<T> Clone for JsonLog<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            name: self.name,
        }
    }
}

impl<T> std::fmt::Debug for JsonLog<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLog").field("name", &self.name).finish()
    }
}

impl<T: serde::Serialize + Send + 'static> JsonLog<T> {
    /// Opens (appends to) the log file and starts the writer task.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub async fn open(path: &Path, name: &'static str) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<T>(QUEUE);
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            while let Some(record) = rx.recv().await {
                let mut line = serde_json::to_vec(&record).expect("records serialise");
                line.push(b'\n');
                if out.write_all(&line).await.is_err() {
                    break;
                }
                if rx.is_empty() && out.flush().await.is_err() {
                    break;
                }
            }
            let _ = out.flush().await;
        });
        Ok(Self { tx, name })
    }

    /// Queues a record; drops and counts it when the writer lags.
    pub fn record(&self, record: T) {
        if self.tx.try_send(record).is_err() {
            metrics::counter!("aisle_log_records_dropped_total", "log" => self.name).increment(1);
        }
    }
}

/// The decision log.
pub type AuditLog = JsonLog<DecisionRecord>;
/// The event log: every applied shopper event, in the format the trainer reads.
pub type EventLog = JsonLog<aisle_domain::event::EventRecord>;
