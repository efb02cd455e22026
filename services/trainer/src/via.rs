//! Predictions through a running node's real API — the online path: for every session, under a fresh shopper id,
//! `Track` each event (one call per event, in order, with its original time), and after every event but the last
//! `Decide` for a consenting shopper (surface home, channel web, the engine retrieving candidates).

use std::time::Duration;

use aisle_domain::event::{EventKind, LoggedSession};
use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use tonic::transport::Channel;

use crate::predict::Prediction;

/// Budget asked for every decision: generous, so the answer comes from the FRESH rung (the node caps it).
const DECIDE_BUDGET: Duration = Duration::from_secs(1);

/// Why predicting through a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ViaError {
    /// The URL is not one.
    #[error("not a node URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The node cannot be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The node's URL.
        url: String,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{call} for session {session:?} failed: {status}")]
    Call {
        /// Track or Decide.
        call: &'static str,
        /// The session.
        session: String,
        /// The status.
        status: Box<tonic::Status>,
    },
}

/// What the node answered that was not a FRESH ranking (it is still reported as the prediction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViaReport {
    /// Decisions made.
    pub decisions: usize,
    /// Of those, answered by a lower fallback rung: (session, position, tier, reason) of the first few.
    pub not_fresh: Vec<(String, usize, String, String)>,
    /// How many were not FRESH.
    pub not_fresh_count: usize,
    /// Model versions that answered.
    pub versions: std::collections::BTreeSet<String>,
}

fn event_type(kind: EventKind) -> pb::EventType {
    match kind {
        EventKind::View => pb::EventType::View,
        EventKind::Search => pb::EventType::Search,
        EventKind::AddToCart => pb::EventType::AddToCart,
        EventKind::RemoveFromCart => pb::EventType::RemoveFromCart,
        EventKind::Purchase => pb::EventType::Purchase,
        EventKind::StoreEnter => pb::EventType::StoreEnter,
        EventKind::StoreExit => pb::EventType::StoreExit,
        EventKind::AisleScan => pb::EventType::AisleScan,
    }
}

/// Connects to the node at `url` (e.g. `http://127.0.0.1:50051`).
///
/// # Errors
/// When the node cannot be reached.
pub async fn connect(url: &str) -> Result<DecisionServiceClient<Channel>, ViaError> {
    let channel = Channel::from_shared(url.to_string())
        .map_err(|e| ViaError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?
        .connect()
        .await
        .map_err(|source| ViaError::Connect {
            url: url.to_string(),
            source,
        })?;
    Ok(DecisionServiceClient::new(channel))
}

/// Predicts the top-`k` after each event of `session` but the last through the node, as shopper `shopper_id`
/// (which must be new to the node), calling `each` with every prediction in order.
///
/// # Errors
/// When a call fails.
pub async fn session(
    client: &mut DecisionServiceClient<Channel>,
    session: &LoggedSession,
    shopper_id: &str,
    k: usize,
    report: &mut ViaReport,
    mut each: impl FnMut(Prediction),
) -> Result<(), ViaError> {
    let call_error = |call: &'static str, status: tonic::Status| ViaError::Call {
        call,
        session: session.id.clone(),
        status: Box::new(status),
    };
    for (p, e) in session.events.iter().enumerate() {
        let event = pb::TrackEvent {
            shopper_id: shopper_id.to_string(),
            r#type: event_type(e.kind) as i32,
            item_id: e.item.clone(),
            timestamp: Some(aisle_proto::Timestamp {
                seconds: e.ts_ms.div_euclid(1000),
                nanos: (e.ts_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            ..Default::default()
        };
        client
            .track(pb::TrackRequest {
                events: vec![event],
                request_id: String::new(),
            })
            .await
            .map_err(|s| call_error("Track", s))?;
        if p + 1 == session.events.len() {
            break;
        }
        let mut request = tonic::Request::new(pb::DecideRequest {
            shopper_id: shopper_id.to_string(),
            surface: pb::Surface::Home as i32,
            channel: pb::Channel::Web as i32,
            limit: k as u32,
            consent: Some(true),
            ..Default::default()
        });
        request.set_timeout(DECIDE_BUDGET);
        let answer = client
            .decide(request)
            .await
            .map_err(|s| call_error("Decide", s))?
            .into_inner();
        report.decisions += 1;
        if !report.versions.contains(&answer.model_version) {
            report.versions.insert(answer.model_version.clone());
        }
        if answer.fallback_tier != pb::FallbackTier::Fresh as i32 {
            report.not_fresh_count += 1;
            if report.not_fresh.len() < 5 {
                let tier = pb::FallbackTier::try_from(answer.fallback_tier)
                    .map_or("unknown", |t| t.as_str_name())
                    .to_string();
                report.not_fresh.push((
                    session.id.clone(),
                    p,
                    tier,
                    answer.fallback_reason.clone(),
                ));
            }
        }
        each(Prediction {
            session_id: session.id.clone(),
            position: p,
            items: answer
                .items
                .into_iter()
                .map(|i| (i.item_id, i.score))
                .collect(),
        });
    }
    Ok(())
}
