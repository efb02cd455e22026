//! Associates' push stream over real gRPC: assist events caused by in-store Track events, and resuming after a
//! sequence number without gaps or duplicates.

mod common;

use std::time::Duration;

use aisle_proto::v1 as pb;
use common::{TestNode, catalog, event};
use tonic::Streaming;

async fn subscribe(
    t: &mut TestNode,
    store: &str,
    resume_after: Option<u64>,
    kinds: Vec<pb::AssistKind>,
) -> Streaming<pb::AssistEvent> {
    t.associates
        .subscribe(pb::SubscribeRequest {
            store_id: store.into(),
            associate_id: "test-handheld".into(),
            kinds: kinds.into_iter().map(|k| k as i32).collect(),
            resume_after,
        })
        .await
        .expect("subscribe")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::AssistEvent>) -> pb::AssistEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an assist event within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

fn in_store(shopper: &str, kind: pb::EventType, item: &str, store: &str) -> pb::TrackEvent {
    pb::TrackEvent {
        store_id: store.into(),
        consent: Some(true),
        ..event(shopper, kind, item)
    }
}

fn item_where(pred: impl Fn(&aisle_domain::catalog::Item, u8) -> bool) -> String {
    let c = catalog();
    (0..c.len() as u32)
        .find(|&i| pred(c.item(i), c.min_age(i)))
        .map(|i| c.item(i).id.to_string())
        .unwrap()
}

#[tokio::test]
async fn an_in_store_cart_passing_the_threshold_alerts_the_stores_handhelds() {
    let mut t = TestNode::start().await;
    let mut handheld = subscribe(&mut t, "store-7", None, vec![]).await;
    let mut other_store = subscribe(&mut t, "store-8", None, vec![]).await;
    let pricey = item_where(|it, age| it.price_cents >= 20_000 && it.stock > 10 && age == 0);
    let mut enter = in_store("vip", pb::EventType::StoreEnter, "", "store-7");
    enter.item_id.clear();
    t.track(vec![enter]).await;
    t.track(vec![pb::TrackEvent {
        aisle: "E07".into(),
        ..in_store("vip", pb::EventType::AisleScan, &pricey, "store-7")
    }])
    .await;
    t.track(vec![in_store(
        "vip",
        pb::EventType::AddToCart,
        &pricey,
        "store-7",
    )])
    .await;
    let e = next(&mut handheld).await;
    assert_eq!(e.kind, pb::AssistKind::HighIntentCart as i32);
    assert_eq!(e.store_id, "store-7");
    assert_eq!(e.sequence, 1);
    assert_eq!(e.aisle, "E07");
    assert_eq!(e.produced_by, "test-node");
    assert!(e.message.starts_with("assist shopper "), "{}", e.message);
    assert!(e.message.contains("in aisle E07"), "{}", e.message);
    assert!(
        !e.shopper_ref.is_empty() && !e.message.contains("vip"),
        "the handheld never sees the shopper id"
    );
    assert!(!e.suggested_items.is_empty());
    assert!(e.source_received_at_us > 0);
    // Nothing for another store.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other_store.message())
            .await
            .is_err()
    );
    t.stop().await;
}

#[tokio::test]
async fn lingering_and_low_stock_produce_their_own_events() {
    let mut t = TestNode::start().await;
    let mut handheld = subscribe(&mut t, "store-3", None, vec![]).await;
    let c = catalog();
    let toys = c.categories.iter().position(|x| x.name == "Toys").unwrap() as u16;
    let scans: Vec<_> = c
        .items_in_category(toys)
        .iter()
        .take(4)
        .map(|&i| pb::TrackEvent {
            aisle: "T01".into(),
            ..in_store(
                "browser",
                pb::EventType::AisleScan,
                &c.item(i).id,
                "store-3",
            )
        })
        .collect();
    t.track(scans).await;
    let e = next(&mut handheld).await;
    assert_eq!(e.kind, pb::AssistKind::Lingering as i32);
    assert!(e.message.contains("browsing Toys"), "{}", e.message);
    assert!(e.suggested_items.iter().all(|s| s.category == "Toys"));

    let low =
        item_where(|it, age| (1..=3).contains(&it.stock) && it.price_cents < 3_000 && age == 0);
    // Replenishing is about the item: it needs no consent (none stated here, and the default is closed). A
    // shopper who revoked consent would raise nothing at all (their cart is not kept).
    let mut add = in_store("someone", pb::EventType::AddToCart, &low, "store-3");
    add.consent = None;
    t.track(vec![add]).await;
    let e = next(&mut handheld).await;
    assert_eq!(e.kind, pb::AssistKind::Replenish as i32);
    assert_eq!(e.item_id, low);
    assert!(e.shopper_ref.is_empty());
    assert_eq!(e.sequence, 2);
    t.stop().await;
}

#[tokio::test]
async fn a_reconnecting_handheld_resumes_without_gaps_or_duplicates() {
    let mut t = TestNode::start().await;
    let c = catalog();
    let low: Vec<String> = (0..c.len() as u32)
        .filter(|&i| (1..=3).contains(&c.item(i).stock) && c.min_age(i) == 0)
        .take(30)
        .map(|i| c.item(i).id.to_string())
        .collect();
    // 30 replenish events in store-9, one per distinct low-stock item.
    let mut first = subscribe(&mut t, "store-9", None, vec![]).await;
    for (k, item) in low.iter().enumerate() {
        t.track(vec![in_store(
            &format!("shopper-{k}"),
            pb::EventType::AddToCart,
            item,
            "store-9",
        )])
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(next(&mut first).await.sequence);
    }
    drop(first);
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());

    // Reconnect after 12: 13..=30 replayed, then live events continue the sequence.
    let mut again = subscribe(&mut t, "store-9", Some(12), vec![]).await;
    let mut resumed = Vec::new();
    for _ in 13..=30 {
        resumed.push(next(&mut again).await.sequence);
    }
    assert_eq!(resumed, (13..=30).collect::<Vec<_>>());
    let more = item_where(|it, age| {
        (1..=3).contains(&it.stock) && age == 0 && !low.contains(&it.id.to_string())
    });
    t.track(vec![in_store(
        "late",
        pb::EventType::AddToCart,
        &more,
        "store-9",
    )])
    .await;
    assert_eq!(next(&mut again).await.sequence, 31);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), again.message())
            .await
            .is_err(),
        "no duplicate"
    );

    // Filtering by kind: a handheld that only wants lingering shoppers gets none of these.
    let mut filtered = subscribe(&mut t, "store-9", Some(0), vec![pb::AssistKind::Lingering]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), filtered.message())
            .await
            .is_err()
    );
    t.stop().await;
}

#[tokio::test]
async fn at_least_the_last_thousand_events_are_retained_per_store() {
    let t = TestNode::start().await;
    for k in 0..1_500 {
        t.node.node.push.hub.publish(pb::AssistEvent {
            store_id: "busy-store".into(),
            kind: pb::AssistKind::Replenish as i32,
            message: format!("event {k}"),
            ..Default::default()
        });
    }
    let mut t = t;
    let mut stream = subscribe(&mut t, "busy-store", Some(400), vec![]).await;
    for expected in 401..=1_500 {
        assert_eq!(next(&mut stream).await.sequence, expected);
    }
    t.stop().await;
}

#[tokio::test]
async fn subscribe_requests_are_validated() {
    let mut t = TestNode::start().await;
    let err = t
        .associates
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::InvalidArgument, "store_id: required")
    );
    let err = t
        .associates
        .subscribe(pb::SubscribeRequest {
            store_id: "s".into(),
            kinds: vec![9],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "kinds[0]: unknown assist kind 9");
    t.stop().await;
}
