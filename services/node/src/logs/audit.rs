//! What the node's logs record: decision records and admin actions in the decision trail (hash-chained; the
//! shopper's pseudonym is the record's subject, which erasure redacts), and applied shopper events in the event log
//! (the JSON lines `aisle-train` reads, the shopper named by pseudonym). Both are [`Journal`]s: written by a
//! background task, so a request never waits on disk (an admin action does: its record is durable before the RPC
//! returns). [`open_logs`] opens both as the node's configuration says.

use serde::Serialize;

use super::journal::{Entry, Journal, JournalConfig};
use crate::config::Config;
use crate::engine::decision::{DecideInput, Decision};

/// The decision trail (chained).
pub type AuditLog = Journal;
/// The event log: every applied, consented shopper event, in the format the trainer reads.
pub type EventLog = Journal;

/// One decision, for audit and experiment analysis.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    decision_id: String,
    at_ms: i64,
    node: String,
    request_id: String,
    client: String,
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

/// An admin action, for the trail: what was done, by whom, on which node, with what outcome.
#[derive(Debug, Serialize)]
pub struct AdminRecord {
    /// What: `forget`, `promote_model`, `rollback_model`, `set_fault`, `bundle_loaded`, `bundle_refused`.
    pub action: &'static str,
    /// Who asked (`token:<name>`, `cert:<name>`, `anonymous`; `node` for the node's own actions).
    pub caller: String,
    /// The node that did it.
    pub node: String,
    /// Details of the action (never a shopper id: shoppers appear by pseudonym).
    pub details: serde_json::Value,
}

/// The decision record of a decision, as a trail entry whose subject is the shopper's pseudonym.
pub fn decision_entry(node: &str, shopper_ref: String, input: &DecideInput, d: &Decision) -> Entry {
    Entry::new(
        "decision",
        Some(shopper_ref),
        DecisionRecord::new(node, input, d),
    )
}

/// Opens the decision trail and the event log the configuration names.
///
/// # Errors
/// When a log cannot be opened (named).
pub async fn open_logs(config: &Config) -> anyhow::Result<(Option<Journal>, Option<Journal>)> {
    let trail = config.decision_log.clone().map(JournalConfig::decisions);
    let events = config.event_log.clone().map(JournalConfig::events);
    Ok((
        open_log(trail, "decision log", config).await?,
        open_log(events, "event log", config).await?,
    ))
}

/// Opens one log, if configured, with the configuration's segment, retention and sync settings.
async fn open_log(
    layout: Option<JournalConfig>,
    what: &str,
    config: &Config,
) -> anyhow::Result<Option<Journal>> {
    use anyhow::Context;
    let Some(c) = layout else {
        return Ok(None);
    };
    let path = c.path.display().to_string();
    let c = JournalConfig {
        segment_bytes: config.log_segment_bytes,
        segment_age: std::time::Duration::from_secs(config.log_segment_secs),
        retention: std::time::Duration::from_secs(config.log_retention_hours * 3_600),
        sync_every: std::time::Duration::from_millis(config.log_sync_ms),
        max_bytes: config.log_max_bytes,
        ..c
    };
    Journal::open(c)
        .await
        .map(Some)
        .with_context(|| format!("{what} {path}"))
}
