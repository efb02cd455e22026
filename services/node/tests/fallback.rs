//! The fallback ladder over real gRPC: each rung answers when the rung above it fails or stalls, within the
//! caller's deadline, and every rung passes the guardrails.

mod common;

use std::time::{Duration, Instant};

use aisle_proto::v1 as pb;
use common::{
    TestNode, assert_bounded_fallback_labels, catalog, decide_req, event, fallback_series, http_get,
};

fn tier(r: &pb::DecideResponse) -> pb::FallbackTier {
    pb::FallbackTier::try_from(r.fallback_tier).unwrap()
}

async fn decide_within(
    t: &mut TestNode,
    req: pb::DecideRequest,
    budget: Duration,
) -> (pb::DecideResponse, Duration) {
    let mut request = tonic::Request::new(req);
    request.set_timeout(budget);
    let started = Instant::now();
    let r = t
        .decisions
        .decide(request)
        .await
        .expect("a fallback answer, not an error");
    (r.into_inner(), started.elapsed())
}

/// Items of a category name in the response.
fn share(r: &pb::DecideResponse, category: &str) -> usize {
    r.items.iter().filter(|i| i.category == category).count()
}

async fn views(t: &mut TestNode, shopper: &str, category: &str, n: usize) {
    let c = catalog();
    let idx = c
        .categories
        .iter()
        .position(|x| x.name == category)
        .unwrap() as u16;
    let items: Vec<_> = c
        .items_in_category(idx)
        .iter()
        .filter(|&&i| c.item(i).stock > 10)
        .take(n)
        .map(|&i| event(shopper, pb::EventType::View, &c.item(i).id))
        .collect();
    t.track(items).await;
}

#[tokio::test]
async fn ranking_stalled_serves_the_cached_decision_within_the_deadline() {
    let mut t = TestNode::start().await;
    views(&mut t, "cached-shopper", "Headphones", 4).await;
    let fresh = t
        .decide(decide_req("cached-shopper", pb::Surface::Home))
        .await;
    assert_eq!(tier(&fresh), pb::FallbackTier::Fresh);

    t.fault(pb::FaultStage::Ranking, pb::FaultMode::Stall).await;
    let budget = Duration::from_millis(200);
    let (r, took) = decide_within(
        &mut t,
        decide_req("cached-shopper", pb::Surface::Home),
        budget,
    )
    .await;
    assert_eq!(tier(&r), pb::FallbackTier::Cached, "{}", r.fallback_reason);
    assert_eq!(r.fallback_reason, "ranking: deadline");
    let fresh_ids: Vec<_> = fresh.items.iter().map(|i| &i.item_id).collect();
    let cached_ids: Vec<_> = r.items.iter().map(|i| &i.item_id).collect();
    assert_eq!(cached_ids, fresh_ids);
    assert!(took < budget, "answered in {took:?}, budget {budget:?}");
    assert!(took >= budget * 3 / 4, "the stall really waited: {took:?}");
    t.stop().await;
}

#[tokio::test]
async fn new_events_invalidate_the_cached_decision() {
    let mut t = TestNode::start().await;
    views(&mut t, "moving-shopper", "Cameras", 3).await;
    t.decide(decide_req("moving-shopper", pb::Surface::Home))
        .await;
    views(&mut t, "moving-shopper", "Yoga", 3).await;
    t.fault(pb::FaultStage::Ranking, pb::FaultMode::Fail).await;
    let r = t
        .decide(decide_req("moving-shopper", pb::Surface::Home))
        .await;
    // The cached answer predates the Yoga views: not served; RULES answers from the live session instead.
    assert_eq!(tier(&r), pb::FallbackTier::Rules);
    assert!(
        share(&r, "Yoga") >= 1,
        "{:?}",
        r.items.iter().map(|i| &i.category).collect::<Vec<_>>()
    );
    t.stop().await;
}

#[tokio::test]
async fn without_a_cached_decision_the_rules_rung_serves_the_shoppers_categories() {
    let mut t = TestNode::start().await;
    views(&mut t, "rules-shopper", "Camping", 5).await;
    t.fault(pb::FaultStage::Ranking, pb::FaultMode::Fail).await;
    let r = t
        .decide(decide_req("rules-shopper", pb::Surface::Home))
        .await;
    assert_eq!(tier(&r), pb::FallbackTier::Rules);
    assert_eq!(r.fallback_reason, "ranking: injected_failure");
    assert!(
        share(&r, "Camping") >= 2,
        "{:?}",
        r.items.iter().map(|i| &i.category).collect::<Vec<_>>()
    );
    let from_rules = r
        .items
        .iter()
        .filter(|i| i.reasons.iter().any(|x| x.starts_with("top_in_category:")))
        .count();
    assert_eq!(from_rules, share(&r, "Camping"));
    // Guardrails still apply: no more than the cap per category, nothing out of stock.
    let c = catalog();
    for item in &r.items {
        assert!(c.item(c.lookup(&item.item_id).unwrap()).stock >= 1);
    }
    assert!(share(&r, "Camping") <= 3);
    assert_eq!(r.items.len(), 10);
    t.stop().await;
}

#[tokio::test]
async fn the_rules_rung_uses_on_screen_items_when_the_session_is_unavailable() {
    let mut t = TestNode::start().await;
    t.fault(pb::FaultStage::Session, pb::FaultMode::Stall).await;
    let c = catalog();
    let jacket = c.items_in_category(
        c.categories
            .iter()
            .position(|x| x.name == "Jackets")
            .unwrap() as u16,
    )[0];
    let mut req = decide_req("session-down", pb::Surface::ProductPage);
    req.context_item_ids = vec![c.item(jacket).id.to_string()];
    let (r, took) = decide_within(&mut t, req, Duration::from_millis(200)).await;
    assert_eq!(tier(&r), pb::FallbackTier::Rules);
    assert_eq!(r.fallback_reason, "session: deadline");
    assert!(share(&r, "Jackets") >= 2);
    assert!(took < Duration::from_millis(200));
    t.stop().await;
}

#[tokio::test]
async fn with_rules_failing_too_the_generic_list_answers() {
    let mut t = TestNode::start().await;
    views(&mut t, "generic-shopper", "Board Games", 4).await;
    t.fault(pb::FaultStage::Ranking, pb::FaultMode::Stall).await;
    t.fault(pb::FaultStage::Cache, pb::FaultMode::Fail).await;
    t.fault(pb::FaultStage::Rules, pb::FaultMode::Fail).await;
    let (r, took) = decide_within(
        &mut t,
        decide_req("generic-shopper", pb::Surface::Home),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(tier(&r), pb::FallbackTier::Generic);
    assert_eq!(r.items.len(), 10);
    assert!(r.items.iter().all(|i| i.reasons == ["merchandising"]));
    assert!(took < Duration::from_millis(200));
    // Guardrails apply to the generic list too: an unverified shopper sees nothing age-restricted.
    let restricted = [
        "Wine",
        "Beer",
        "Spirits",
        "Energy Drinks",
        "Kitchen Knives",
        "Mature Video Games",
    ];
    let mut req = decide_req("generic-shopper", pb::Surface::Home);
    req.limit = 100;
    let r = t.decide(req).await;
    assert_eq!(tier(&r), pb::FallbackTier::Generic);
    assert!(
        r.items
            .iter()
            .all(|i| !restricted.contains(&i.category.as_str()))
    );
    let mut per_category = std::collections::HashMap::new();
    for i in &r.items {
        *per_category.entry(i.category.clone()).or_insert(0) += 1;
    }
    assert!(per_category.values().all(|&n| n <= 3), "{per_category:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_deadline_too_short_for_ranking_still_gets_an_answer() {
    // A node that keeps 30 ms of every budget for the lower rungs: a caller giving 25 ms leaves ranking nothing.
    let mut config = common::config("hurried-node");
    config.safety_margin_ms = 30;
    let mut t = TestNode::start_with(config, common::demo()).await;
    let (r, took) = decide_within(
        &mut t,
        decide_req("hurried", pb::Surface::Home),
        Duration::from_millis(25),
    )
    .await;
    assert_eq!(tier(&r), pb::FallbackTier::Generic, "{}", r.fallback_reason);
    assert_eq!(r.fallback_reason, "session: no_budget");
    assert!(!r.items.is_empty());
    assert!(took < Duration::from_millis(25));
    // With a budget that leaves room, the same node ranks.
    let (r, _) = decide_within(
        &mut t,
        decide_req("hurried", pb::Surface::Home),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(tier(&r), pb::FallbackTier::Fresh);
    t.stop().await;
}

#[tokio::test]
async fn fault_injection_is_refused_unless_enabled() {
    let mut config = common::config("locked");
    config.fault_injection = false;
    let mut t = TestNode::start_with(config, common::demo()).await;
    let err = t
        .admin
        .set_fault(pb::SetFaultRequest {
            stage: pb::FaultStage::Ranking as i32,
            mode: pb::FaultMode::Stall as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("fault injection is disabled"));
    t.stop().await;
}

#[tokio::test]
async fn fallback_metrics_are_labelled_by_stage_and_reason_codes_only() {
    let mut t = TestNode::start().await;
    views(&mut t, "labelled-shopper", "Camping", 3).await;
    let drills = [
        (
            pb::FaultStage::Session,
            pb::FaultMode::Fail,
            "session: injected_failure",
        ),
        (
            pb::FaultStage::Session,
            pb::FaultMode::Stall,
            "session: deadline",
        ),
        (
            pb::FaultStage::Ranking,
            pb::FaultMode::Fail,
            "ranking: injected_failure",
        ),
        (
            pb::FaultStage::Ranking,
            pb::FaultMode::Stall,
            "ranking: deadline",
        ),
    ];
    for (stage, mode, reason) in drills {
        t.fault(stage, mode).await;
        for k in 0..3 {
            let mut req = decide_req("labelled-shopper", pb::Surface::Home);
            req.request_id = format!("drill-{k}");
            let r = t.decide(req).await;
            assert_eq!(r.fallback_reason, reason);
        }
        t.fault(stage, pb::FaultMode::None).await;
    }
    let (_, metrics) = http_get(&t.http(), "/metrics").await;
    let total = assert_bounded_fallback_labels(&metrics);
    assert!(total >= 12.0, "{total}");
    let series = fallback_series(&metrics);
    for (stage, reason) in [
        ("session", "injected_failure"),
        ("session", "deadline"),
        ("ranking", "injected_failure"),
        ("ranking", "deadline"),
    ] {
        assert!(
            series
                .iter()
                .any(|(l, _)| l[0].1 == stage && l[1].1 == reason),
            "{stage}/{reason} missing: {series:?}"
        );
    }
    t.stop().await;
}
