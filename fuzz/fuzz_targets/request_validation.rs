//! The node's request validation (`aisle_node::shopper::validate`) on protobuf-decoded `DecideRequest`s and
//! `TrackRequest`s; what it accepts is checked against its contract and then used as the node uses it (a Decide
//! ranks, a Track batch is applied to sessions).
#![no_main]

use std::time::Duration;

use aisle_domain::MAX_ID_BYTES;
use aisle_fuzz::{NOW_MS, catalog, check_answer, rules, served};
use aisle_node::error::ApiError;
use aisle_node::shopper::validate::{self, MAX_CANDIDATES, MAX_CONTEXT, MAX_EVENTS, MAX_LIMIT};
use aisle_policy::{ConsentDefaults, Guard, PolicyContext};
use aisle_proto::v1 as pb;
use aisle_ranking::{Query, rank_local};
use aisle_session::{AssistRules, SessionContext, SessionLimits};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX_FUTURE: Duration = Duration::from_secs(300);

fn invalid_argument(e: &ApiError) {
    assert!(matches!(e, ApiError::InvalidArgument { .. }), "{e:?}");
    let _ = e.to_string();
}

fn decide(req: &pb::DecideRequest) {
    let catalog = catalog();
    let input = match validate::decide(req, catalog) {
        Ok(input) => input,
        Err(e) => return invalid_argument(&e),
    };
    assert!((1..=MAX_LIMIT).contains(&input.limit));
    assert!(!input.shopper_id.is_empty() && input.shopper_id.len() <= MAX_ID_BYTES);
    assert!(input.context.len() <= MAX_CONTEXT);
    match &input.candidates {
        None => assert!(req.candidate_item_ids.is_empty()),
        Some(c) => {
            assert!(c.len() <= MAX_CANDIDATES);
            assert_eq!(
                c.len() + input.unknown_candidates,
                req.candidate_item_ids.len()
            );
        }
    }
    let n = catalog.len() as u32;
    assert!(
        input
            .context
            .iter()
            .chain(input.candidates.iter().flatten())
            .all(|&i| i < n)
    );

    let view = aisle_domain::session::SessionView::default();
    let ctx = PolicyContext {
        attributes: input.attributes,
        channel: input.channel,
        purchased: &[],
        now_ms: NOW_MS,
        max_items_per_category: 3,
    };
    let guard = Guard::new(rules(), catalog, ctx);
    let query = Query {
        view: &view,
        context: &input.context,
        candidates: input.candidates.as_deref(),
    };
    let ranking = rank_local(served(), &query, &guard, input.limit);
    let items: Vec<u32> = ranking.items.iter().map(|r| r.admitted.item).collect();
    check_answer(&guard, catalog, &items, input.limit);
}

fn track(req: &pb::TrackRequest) {
    let catalog = catalog();
    let consent = ConsentDefaults {
        fallback: false,
        regions: [("EU".to_string(), false), ("US".to_string(), true)]
            .into_iter()
            .collect(),
    };
    let batch = match validate::track(req, catalog, NOW_MS, NOW_MS * 1_000, MAX_FUTURE, &consent) {
        Ok(batch) => batch,
        Err(e) => return invalid_argument(&e),
    };
    assert!(!req.events.is_empty() && req.events.len() <= MAX_EVENTS);
    assert_eq!(batch.groups.len(), batch.records.len());
    let total: usize = batch.groups.iter().map(|g| g.1.len()).sum();
    assert_eq!(total, req.events.len());
    let limits = SessionLimits::default();
    for ((shopper, events), records) in batch.groups.iter().zip(&batch.records) {
        assert_eq!(events.len(), records.len());
        let mut session = SessionContext::new();
        for (e, r) in events.iter().zip(records) {
            assert_eq!(&r.shopper_id, shopper);
            assert!(e.ts_ms <= NOW_MS + MAX_FUTURE.as_millis() as i64);
            if let Some(i) = e.item.and_then(|i| i.known()) {
                assert!((i as usize) < catalog.len());
            }
            let _ = session.apply(e, catalog, &limits, &AssistRules::default());
        }
        let _ = session.view(&limits);
        let _ = session.to_portable(catalog);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = pb::DecideRequest::decode(data) {
        decide(&req);
    }
    if let Ok(req) = pb::TrackRequest::decode(data) {
        track(&req);
    }
});
