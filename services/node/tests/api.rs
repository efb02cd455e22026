//! The node's gRPC API over real sockets: response fields, personalisation, guardrails, erasure, health,
//! reflection, readiness, and every bad-input case.

mod common;

use std::time::Duration;

use aisle_proto::v1 as pb;
use common::{TestNode, catalog, decide_req, event, http_get, items_of};
use tonic::Code;

fn ids(r: &pb::DecideResponse) -> Vec<String> {
    r.items.iter().map(|i| i.item_id.clone()).collect()
}

#[tokio::test]
async fn a_decision_carries_every_response_field() {
    let mut t = TestNode::start().await;
    let mut req = decide_req("field-shopper", pb::Surface::Home);
    req.request_id = "req-1".into();
    let r = t.decide(req).await;
    assert!(!r.decision_id.is_empty());
    assert_eq!(r.items.len(), 10);
    for (k, item) in r.items.iter().enumerate() {
        assert_eq!(item.rank as usize, k + 1);
        assert!(!item.item_id.is_empty() && !item.name.is_empty() && !item.category.is_empty());
        assert!(item.score.is_finite());
        assert!(!item.reasons.is_empty());
    }
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert!(r.fallback_reason.is_empty());
    assert!(r.model_version.starts_with("demo-"));
    assert_eq!(r.rules_version, "rules-default-1");
    assert_eq!(r.experiments_version, "experiments-default-1");
    assert!(r.catalog_version.starts_with("demo-"));
    let diversity = r
        .experiments
        .get("diversity")
        .expect("experiment assignment");
    assert!(["control", "two-per-category"].contains(&diversity.variant.as_str()));
    assert_eq!(diversity.in_holdout, r.in_holdout);
    assert_eq!(r.served_by, "test-node");
    assert!(r.server_latency_us > 0);
    assert_eq!(r.request_id, "req-1");
    // Two decisions have different ids and the same assignment.
    let again = t
        .decide(decide_req("field-shopper", pb::Surface::Cart))
        .await;
    assert_ne!(again.decision_id, r.decision_id);
    assert_eq!(again.experiments, r.experiments);
    t.stop().await;
}

#[tokio::test]
async fn viewing_a_category_raises_its_share_of_the_top_ten() {
    let mut t = TestNode::start().await;
    let shoes = items_of("Running Shoes");
    let share = |r: &pb::DecideResponse| {
        r.items
            .iter()
            .filter(|i| i.category == "Running Shoes")
            .count()
    };
    let before = share(&t.decide(decide_req("runner", pb::Surface::Home)).await);
    let views: Vec<_> = shoes
        .iter()
        .take(6)
        .map(|id| event("runner", pb::EventType::View, id))
        .collect();
    assert_eq!(t.track(views).await.accepted, 6);
    let r = t.decide(decide_req("runner", pb::Surface::Home)).await;
    let after = share(&r);
    assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert!(
        after > before,
        "share before {before}, after {after}: {:?}",
        ids(&r)
    );
    assert!(after >= 2, "{after}");
    t.stop().await;
}

#[tokio::test]
async fn a_purchased_item_is_not_recommended_again() {
    let mut t = TestNode::start().await;
    let coffee = items_of("Coffee");
    let target = coffee[0].clone();
    let candidates: Vec<String> = coffee.iter().take(8).cloned().collect();
    t.track(vec![
        event("buyer", pb::EventType::View, &target),
        event("buyer", pb::EventType::View, &coffee[1]),
        event("buyer", pb::EventType::View, &target),
    ])
    .await;
    let mut with_candidates = decide_req("buyer", pb::Surface::ProductPage);
    with_candidates.candidate_item_ids = candidates.clone();
    let before = t.decide(with_candidates.clone()).await;
    assert!(ids(&before).contains(&target), "{:?}", ids(&before));
    let retrieved = t.decide(decide_req("buyer", pb::Surface::Home)).await;
    assert!(
        ids(&retrieved).contains(&target),
        "recently viewed item retrieved: {:?}",
        ids(&retrieved)
    );

    t.track(vec![
        event("buyer", pb::EventType::AddToCart, &target),
        event("buyer", pb::EventType::Purchase, &target),
    ])
    .await;
    let after = t.decide(with_candidates).await;
    assert!(!ids(&after).contains(&target), "{:?}", ids(&after));
    assert_eq!(after.items.len(), candidates.len() - 1);
    for surface in [pb::Surface::Home, pb::Surface::Cart, pb::Surface::Checkout] {
        let r = t.decide(decide_req("buyer", surface)).await;
        assert!(!ids(&r).contains(&target), "{surface:?}: {:?}", ids(&r));
    }
    t.stop().await;
}

#[tokio::test]
async fn without_consent_the_decision_equals_an_anonymous_shoppers() {
    let mut t = TestNode::start().await;
    let mut anonymous = decide_req("private", pb::Surface::Home);
    anonymous.consent = Some(false);
    let before = t.decide(anonymous.clone()).await;
    let tea = items_of("Tea");
    t.track(
        tea.iter()
            .take(5)
            .map(|i| event("private", pb::EventType::View, i))
            .collect(),
    )
    .await;
    let consented = t.decide(decide_req("private", pb::Surface::Home)).await;
    let refused = t.decide(anonymous.clone()).await;
    let mut unstated = anonymous.clone();
    unstated.consent = None;
    let unstated = t.decide(unstated).await;
    assert_eq!(
        ids(&refused),
        ids(&before),
        "no consent: same as before any history"
    );
    assert_eq!(
        ids(&unstated),
        ids(&before),
        "no statement: the default (no consent)"
    );
    assert_ne!(
        ids(&consented),
        ids(&before),
        "with consent the history is used"
    );
    // And the same as a shopper never seen, in the same experiment variant.
    let twin = (0..)
        .map(|k| format!("stranger-{k}"))
        .find(|id| {
            let e = aisle_experiment::Experiments::embedded();
            e.assign(id, aisle_domain::request::Surface::Home)
                == e.assign("private", aisle_domain::request::Surface::Home)
        })
        .unwrap();
    let mut stranger = anonymous;
    stranger.shopper_id = twin;
    assert_eq!(ids(&t.decide(stranger).await), ids(&refused));
    t.stop().await;
}

#[tokio::test]
async fn age_restricted_items_never_reach_unverified_shoppers() {
    let mut t = TestNode::start().await;
    let wine = items_of("Wine");
    t.track(
        wine.iter()
            .take(6)
            .map(|i| event("wine-lover", pb::EventType::View, i))
            .collect(),
    )
    .await;
    let restricted = [
        "Wine",
        "Beer",
        "Spirits",
        "Energy Drinks",
        "Kitchen Knives",
        "Mature Video Games",
    ];
    let mut req = decide_req("wine-lover", pb::Surface::Home);
    req.limit = 100;
    let unverified = t.decide(req.clone()).await;
    assert!(
        unverified
            .items
            .iter()
            .all(|i| !restricted.contains(&i.category.as_str()))
    );
    let mut claimed = req.clone();
    claimed.attributes = Some(pb::ShopperAttributes {
        age_verified: false,
        age_band: pb::AgeBand::AgeBand21Plus as i32,
        ..Default::default()
    });
    let claimed = t.decide(claimed).await;
    assert!(
        claimed
            .items
            .iter()
            .all(|i| !restricted.contains(&i.category.as_str()))
    );
    let mut given = req.clone();
    given.candidate_item_ids = wine.iter().take(10).cloned().collect();
    assert!(
        t.decide(given.clone()).await.items.is_empty(),
        "given wine candidates are all excluded"
    );
    // A verified 21+ shopper does see them (the guardrail, not the ranking, kept them out).
    given.attributes = Some(pb::ShopperAttributes {
        age_verified: true,
        age_band: pb::AgeBand::AgeBand21Plus as i32,
        ..Default::default()
    });
    assert_eq!(t.decide(given).await.items.len(), 10);
    req.attributes = Some(pb::ShopperAttributes {
        age_verified: true,
        age_band: pb::AgeBand::AgeBand18To20 as i32,
        ..Default::default()
    });
    let eighteen = t.decide(req).await;
    assert!(
        eighteen
            .items
            .iter()
            .all(|i| !["Wine", "Beer", "Spirits"].contains(&i.category.as_str()))
    );
    t.stop().await;
}

#[tokio::test]
async fn expired_offers_are_never_served() {
    let mut t = TestNode::start().await;
    let c = catalog();
    let now = aisle_domain::now_ms();
    let with_offers: Vec<String> = c
        .offers
        .iter()
        .filter(|o| c.item(o.item).stock >= 1 && c.min_age(o.item) == 0)
        .map(|o| c.item(o.item).id.to_string())
        .take(1_000)
        .collect();
    let expired: Vec<&String> = with_offers
        .iter()
        .filter(|id| {
            let o = &c.offers[c.item(c.lookup(id).unwrap()).offer.unwrap() as usize];
            o.expires_at_ms <= now
        })
        .collect();
    assert!(!expired.is_empty());
    let mut req = decide_req("bargain-hunter", pb::Surface::Home);
    req.candidate_item_ids = with_offers.clone();
    req.limit = 100;
    let r = t.decide(req).await;
    let mut served = 0;
    for item in &r.items {
        if let Some(offer) = &item.offer {
            served += 1;
            let expires = offer.expires_at.as_ref().unwrap();
            assert!(
                expires.seconds * 1000 > now,
                "expired offer {} served",
                offer.offer_id
            );
            assert!(offer.discount_percent <= 30, "offer over the discount cap");
            let o = &c.offers[c.item(c.lookup(&item.item_id).unwrap()).offer.unwrap() as usize];
            assert!(
                o.starts_at_ms <= now && o.min_loyalty == aisle_domain::request::LoyaltyTier::None
            );
            assert!(
                o.channels.is_empty() || o.channels.contains(&aisle_domain::request::Channel::Web)
            );
        }
        if expired.contains(&&item.item_id) {
            assert!(
                item.offer.is_none(),
                "item {} kept its expired offer",
                item.item_id
            );
        }
    }
    assert!(served > 0, "eligible, unexpired offers are served");
    t.stop().await;
}

#[tokio::test]
async fn forget_shopper_erases_session_and_cached_decisions() {
    let mut t = TestNode::start().await;
    let mut anonymous = decide_req("forgettable", pb::Surface::Home);
    anonymous.consent = Some(false);
    let anonymous_items = ids(&t.decide(anonymous).await);
    let socks = items_of("Socks");
    t.track(
        socks
            .iter()
            .take(5)
            .map(|i| event("forgettable", pb::EventType::View, i))
            .collect(),
    )
    .await;
    let personal = t.decide(decide_req("forgettable", pb::Surface::Home)).await;
    assert_ne!(ids(&personal), anonymous_items);
    let r = t
        .admin
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: "forgettable".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.session_erased);
    assert_eq!(r.cached_decisions_erased, 1);
    // The next decision treats them as new and anonymous.
    let next = t.decide(decide_req("forgettable", pb::Surface::Home)).await;
    assert_eq!(ids(&next), anonymous_items);
    assert!(
        t.node
            .node
            .shoppers
            .sessions
            .view("forgettable", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    // Nothing cached survives: with ranking failing, no CACHED answer of the old session.
    t.fault(pb::FaultStage::Ranking, pb::FaultMode::Fail).await;
    let fallback = t
        .decide(decide_req("forgettable-2", pb::Surface::Home))
        .await;
    assert_ne!(fallback.fallback_tier, pb::FallbackTier::Cached as i32);
    t.stop().await;
}

#[tokio::test]
async fn health_reflection_and_readiness() {
    let t = TestNode::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel.clone());
    for service in [
        "",
        "aisle.v1.DecisionService",
        "aisle.v1.AssociateService",
        "aisle.v1.AdminService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(t.channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "aisle.v1.DecisionService",
        "aisle.v1.AssociateService",
        "aisle.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    assert_eq!(http_get(&t.http(), "/readyz").await.0, 200);
    assert_eq!(http_get(&t.http(), "/healthz").await.0, 200);
    let (status, metrics) = http_get(&t.http(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("aisle_active_sessions"), "{metrics}");
    t.node.readiness.unmet("membership", "test");
    let (status, body) = http_get(&t.http(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("membership (test)"), "{body}");
    t.stop().await;
}

async fn refused(t: &mut TestNode, req: pb::DecideRequest) -> tonic::Status {
    t.decisions.decide(req).await.expect_err("refused")
}

async fn refused_track(t: &mut TestNode, events: Vec<pb::TrackEvent>) -> tonic::Status {
    t.decisions
        .track(pb::TrackRequest {
            events,
            request_id: String::new(),
        })
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_accepted_is_lost() {
    let mut t = TestNode::start().await;
    let coffee = items_of("Coffee");
    t.track(
        coffee
            .iter()
            .take(4)
            .map(|i| event("steady", pb::EventType::View, i))
            .collect(),
    )
    .await;
    let before = t
        .node
        .node
        .shoppers
        .sessions
        .view("steady", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let baseline = ids(&t.decide(decide_req("steady", pb::Surface::Home)).await);

    let s = refused(&mut t, decide_req("", pb::Surface::Home)).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "shopper_id: required")
    );
    let s = refused(&mut t, decide_req(&"x".repeat(257), pb::Surface::Home)).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().starts_with("shopper_id: longer than 256 bytes"),
        "{}",
        s.message()
    );
    let mut r = decide_req("steady", pb::Surface::Home);
    r.limit = 101;
    let s = refused(&mut t, r).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "limit: at most 100, got 101")
    );
    let mut r = decide_req("steady", pb::Surface::Home);
    r.candidate_item_ids = (0..1_001).map(|k| format!("sku-{k:06}")).collect();
    let s = refused(&mut t, r).await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "candidate_item_ids: at most 1000 items, got 1001"
        )
    );
    let mut r = decide_req("steady", pb::Surface::Home);
    r.candidate_item_ids = vec!["y".repeat(300)];
    let s = refused(&mut t, r).await;
    assert!(
        s.message()
            .starts_with("candidate_item_ids[0]: longer than 256 bytes"),
        "{}",
        s.message()
    );
    let s = refused(&mut t, decide_req("steady", pb::Surface::Unspecified)).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "surface: required")
    );

    let s = refused_track(
        &mut t,
        vec![pb::TrackEvent {
            r#type: 77,
            ..event("steady", pb::EventType::View, &coffee[0])
        }],
    )
    .await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "events[0].type: unknown event type 77"
        )
    );
    let s = refused_track(&mut t, vec![event("", pb::EventType::View, &coffee[0])]).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "events[0].shopper_id: required")
    );
    let mut future = event("steady", pb::EventType::View, &coffee[0]);
    future.timestamp = Some(prost_types::Timestamp {
        seconds: aisle_domain::now_ms() / 1000 + 24 * 3600,
        nanos: 0,
    });
    let s = refused_track(&mut t, vec![future]).await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "events[0].timestamp: more than 300 s in the future"
        )
    );
    // A batch with one bad event is refused whole: the good events before it are not applied.
    let s = refused_track(
        &mut t,
        vec![
            event("steady", pb::EventType::Purchase, &coffee[0]),
            event("steady", pb::EventType::AddToCart, &coffee[1]),
            event("steady", pb::EventType::View, ""),
        ],
    )
    .await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "events[2].item_id: required")
    );
    let s = refused_track(
        &mut t,
        vec![event(
            "z".repeat(300).as_str(),
            pb::EventType::View,
            &coffee[0],
        )],
    )
    .await;
    assert!(
        s.message()
            .starts_with("events[0].shopper_id: longer than 256 bytes"),
        "{}",
        s.message()
    );
    // NUL, a right-to-left override and a newline in ids and free text: refused, naming the field and the
    // character, in Decide, Track and Subscribe alike.
    for (bad, code_point) in [
        ("shop\0per", "U+0000"),
        ("evil\u{202E}gpj", "U+202E"),
        ("two\nlines", "U+000A"),
    ] {
        let s = refused(&mut t, decide_req(bad, pb::Surface::Home)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
        assert!(
            s.message().starts_with("shopper_id: ") && s.message().contains(code_point),
            "{bad:?}: {}",
            s.message()
        );
        let s = refused(
            &mut t,
            pb::DecideRequest {
                store_id: bad.into(),
                ..decide_req("steady", pb::Surface::Home)
            },
        )
        .await;
        assert!(s.message().starts_with("store_id: "), "{}", s.message());
        let s = refused_track(
            &mut t,
            vec![
                event("steady", pb::EventType::View, &coffee[0]),
                pb::TrackEvent {
                    aisle: bad.into(),
                    store_id: "store-1".into(),
                    ..event("steady", pb::EventType::AisleScan, &coffee[1])
                },
            ],
        )
        .await;
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().starts_with("events[1].aisle: ") && s.message().contains(code_point),
            "{}",
            s.message()
        );
        let s = refused_track(
            &mut t,
            vec![pb::TrackEvent {
                query: bad.into(),
                ..event("steady", pb::EventType::Search, "")
            }],
        )
        .await;
        assert!(
            s.message().starts_with("events[0].query: "),
            "{}",
            s.message()
        );
        let s = t
            .associates
            .subscribe(pb::SubscribeRequest {
                store_id: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("store_id: "), "{}", s.message());
    }
    // Over 256 KiB: OUT_OF_RANGE, naming the size.
    let huge: Vec<_> = (0..1_000)
        .map(|_| pb::TrackEvent {
            query: "q".repeat(250),
            ..event("steady", pb::EventType::Search, "")
        })
        .map(|mut e| {
            e.item_id = "i".repeat(250);
            e
        })
        .collect();
    let s = refused_track(&mut t, huge).await;
    assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());
    assert!(
        s.message().contains("message length too large"),
        "{}",
        s.message()
    );

    // The node is healthy and the shopper's session is exactly as it was.
    let after = t
        .node
        .node
        .shoppers
        .sessions
        .view("steady", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, before);
    let r = t.decide(decide_req("steady", pb::Surface::Home)).await;
    assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert_eq!(ids(&r), baseline);
    assert_eq!(http_get(&t.http(), "/readyz").await.0, 200);
    t.stop().await;
}

#[tokio::test]
async fn event_and_decision_logs_are_written_as_json_lines() {
    let dir = std::env::temp_dir().join(format!("aisle-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = common::config("logging-node");
    config.event_log = Some(dir.join("events.jsonl"));
    config.decision_log = Some(dir.join("decisions.jsonl"));
    let mut t = TestNode::start_with(config, common::demo()).await;
    // With consent: events without it are not logged (tests/consent.rs).
    t.track(vec![
        pb::TrackEvent {
            consent: Some(true),
            ..event("logged", pb::EventType::View, "sku-000001")
        },
        event("logged", pb::EventType::View, "not-in-catalog"),
        pb::TrackEvent {
            query: "green tea".into(),
            ..event("logged", pb::EventType::Search, "")
        },
    ])
    .await;
    let r = t.decide(decide_req("logged", pb::Surface::Home)).await;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    common::eventually("both logs written", Duration::from_secs(10), || {
        let (e, d) = (read("events.jsonl"), read("decisions.jsonl"));
        // The trail opens with an `open` record, then the decision.
        async move { e.lines().count() == 3 && d.lines().any(|l| l.contains("\"decision\"")) }
    })
    .await;
    let events: Vec<aisle_domain::event::EventRecord> = read("events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0].item_id, "sku-000001");
    assert_eq!(
        events[1].item_id, "not-in-catalog",
        "unknown items are logged as given"
    );
    assert_eq!(events[2].query, "green tea");
    assert!(
        events
            .iter()
            .all(|e| aisle_node::security::pseudonyms::is_pseudonym(&e.shopper_id) && e.ts_ms > 0),
        "the event log names shoppers by pseudonym"
    );
    assert!(
        !read("events.jsonl").contains("\"logged\""),
        "the event log carries no shopper id"
    );
    let record: serde_json::Value = serde_json::from_str(
        read("decisions.jsonl")
            .lines()
            .find(|l| l.contains("\"decision\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["kind"], "decision");
    assert!(aisle_node::security::pseudonyms::is_pseudonym(
        record["subject"]["ref"].as_str().unwrap()
    ));
    let decision = &record["body"];
    assert_eq!(decision["decision_id"], r.decision_id);
    assert_eq!(decision["tier"], "fresh");
    assert_eq!(decision["items"].as_array().unwrap().len(), r.items.len());
    assert!(
        !read("decisions.jsonl").contains("\"logged\""),
        "decision records carry no shopper id"
    );
    t.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
