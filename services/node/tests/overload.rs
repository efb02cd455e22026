//! Overload protection over real gRPC: beyond `max_inflight_requests` the server answers RESOURCE_EXHAUSTED at
//! once (health checks still pass); beyond `max_inflight_decisions` decisions answer from the GENERIC rung at once;
//! and once the load is gone the node serves fresh decisions again.

mod common;

use std::time::{Duration, Instant};

use aisle_proto::v1 as pb;
use common::{TestNode, decide_req, eventually};
use tokio::task::JoinHandle;

/// Decides that stall in the session stage until `budget` runs out, holding their slots meanwhile.
fn stalled_decides(t: &TestNode, n: usize, budget: Duration) -> Vec<JoinHandle<pb::FallbackTier>> {
    (0..n)
        .map(|i| {
            let mut client = t.decisions.clone();
            tokio::spawn(async move {
                let mut req =
                    tonic::Request::new(decide_req(&format!("held-{i}"), pb::Surface::Home));
                req.set_timeout(budget);
                let r = client.decide(req).await.expect("a fallback answer");
                pb::FallbackTier::try_from(r.into_inner().fallback_tier).unwrap()
            })
        })
        .collect()
}

/// Waits until `n` decisions are in flight in the node's decider (so past admission).
async fn held_in_flight(t: &TestNode, n: usize) {
    let decider = t.node.node.decider.clone();
    eventually(
        "the held decisions in flight",
        Duration::from_secs(3),
        || {
            let decider = decider.clone();
            async move { decider.inflight_decisions() == n }
        },
    )
    .await;
}

/// A node whose session stage stalls, with `n` decisions held in flight (5 s budgets).
async fn saturated(
    config: aisle_node::Config,
    n: usize,
) -> (TestNode, Vec<JoinHandle<pb::FallbackTier>>) {
    let mut t = TestNode::start_with(config, common::demo()).await;
    t.fault(pb::FaultStage::Session, pb::FaultMode::Stall).await;
    let held = stalled_decides(&t, n, Duration::from_secs(5));
    held_in_flight(&t, n).await;
    (t, held)
}

/// One more Decide (2 s budget): its result and how long it took.
async fn probe(t: &mut TestNode) -> (Result<pb::DecideResponse, tonic::Status>, Duration) {
    let mut req = tonic::Request::new(decide_req("extra", pb::Surface::Home));
    req.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let r = t.decisions.decide(req).await.map(|r| r.into_inner());
    (r, started.elapsed())
}

/// The held decisions end from a lower rung; with the fault cleared the node decides FRESH again.
async fn recovers(t: &mut TestNode, held: Vec<JoinHandle<pb::FallbackTier>>) {
    for h in held {
        assert_ne!(h.await.unwrap(), pb::FallbackTier::Fresh);
    }
    t.fault(pb::FaultStage::Session, pb::FaultMode::None).await;
    let r = t.decide(decide_req("after", pb::Surface::Home)).await;
    assert_eq!(
        pb::FallbackTier::try_from(r.fallback_tier).unwrap(),
        pb::FallbackTier::Fresh
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_limit_are_refused_at_once_with_resource_exhausted() {
    let mut config = common::config("admission");
    config.max_inflight_requests = 2;
    let (mut t, held) = saturated(config, 2).await;

    // With both slots taken, the next request is refused without waiting.
    let (r, took) = probe(&mut t).await;
    let status = r.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("node overloaded") && status.message().contains("limit 2"),
        "{}",
        status.message()
    );
    assert!(took < Duration::from_millis(500), "refused after {took:?}");

    // Track is refused the same way, and nothing of the refused batch is applied.
    let err = t
        .decisions
        .track(pb::TrackRequest {
            events: vec![common::event(
                "refused-tracker",
                pb::EventType::View,
                &common::catalog().item(0).id,
            )],
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    // Health checks are always admitted: the node is overloaded, not dead.
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers under overload")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The held requests end (from a lower rung), the fault is cleared, and the node decides fresh again.
    recovers(&mut t, held).await;
    let h = t
        .decisions
        .track(pb::TrackRequest {
            events: vec![common::event(
                "refused-tracker",
                pb::EventType::View,
                &common::catalog().item(0).id,
            )],
            request_id: String::new(),
        })
        .await
        .expect("track admitted again")
        .into_inner();
    assert_eq!(h.accepted, 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_beyond_the_limit_answer_generic_at_once() {
    let mut config = common::config("shedding");
    config.max_inflight_decisions = 1;
    let (mut t, held) = saturated(config, 1).await;

    // The session stage still stalls, but the decision beyond the limit does not reach it.
    let (r, took) = probe(&mut t).await;
    let r = r.expect("an answer");
    assert_eq!(r.fallback_reason, "admission: overload");
    assert_eq!(
        pb::FallbackTier::try_from(r.fallback_tier).unwrap(),
        pb::FallbackTier::Generic
    );
    assert!(!r.items.is_empty(), "a shed decision still answers items");
    assert!(took < Duration::from_millis(500), "shed after {took:?}");

    recovers(&mut t, held).await;
    t.stop().await;
}
