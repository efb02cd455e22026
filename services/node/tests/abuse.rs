//! Resource exhaustion from outside: what a flood of made-up ids can make a node hold is bounded by its caps.
//! One test per binary, so that the process's memory is this test's alone.

mod common;

use std::time::Duration;

use aisle_node::Config;
use aisle_proto::v1 as pb;

/// The process's resident memory, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_with_random_store_ids_leave_stores_sessions_and_memory_bounded() {
    const MAX_STORES: usize = 500;
    const MAX_SESSIONS: usize = 1_000;
    let config = Config {
        max_stores: MAX_STORES,
        max_sessions: MAX_SESSIONS,
        ..common::config("abused-node")
    };
    let mut t = common::TestNode::start_with(config, common::demo()).await;
    // An item low enough in stock that putting it in a cart in a store raises a replenish suggestion for that
    // store: every made-up store id becomes a store with an assist log, unless the hub bounds them.
    let catalog = common::catalog();
    let low = catalog
        .items
        .iter()
        .find(|i| i.stock <= 3)
        .expect("the demo has low-stock items")
        .id
        .to_string();
    let hub = t.node.node.push.hub.clone();
    let sessions = t.node.node.shoppers.sessions.clone();
    let before = rss_bytes();
    let mut accepted = 0;
    for batch in 0..50 {
        let mut events = Vec::new();
        for k in 0..100 {
            let n = batch * 100 + k;
            let shopper = format!("flood-{n}");
            let store = format!(
                "store-{:016x}",
                aisle_domain::hash::stable_hash(&[&shopper])
            );
            events.push(pb::TrackEvent {
                store_id: store.clone(),
                ..common::event(&shopper, pb::EventType::StoreEnter, "")
            });
            events.push(pb::TrackEvent {
                store_id: store,
                consent: Some(true),
                ..common::event(&shopper, pb::EventType::AddToCart, &low)
            });
        }
        accepted += t.track(events).await.accepted;
    }
    assert_eq!(accepted, 10_000, "every event is accepted");
    // The flood did make store logs, up to the cap.
    common::eventually("store logs reach the cap", Duration::from_secs(10), || {
        let n = hub.stores();
        async move { n >= MAX_STORES / 2 }
    })
    .await;
    assert!(
        hub.stores() <= MAX_STORES,
        "{} store logs, cap {MAX_STORES}",
        hub.stores()
    );
    let shards = common::config("x").session_shards;
    let cap = MAX_SESSIONS.div_ceil(shards) * shards;
    assert!(
        sessions.active_sessions() <= cap,
        "{} sessions, cap {cap}",
        sessions.active_sessions()
    );
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    // The node still serves, and the caps are counted.
    let d = t
        .decide(common::decide_req("after-the-flood", pb::Surface::Home))
        .await;
    assert!(!d.items.is_empty());
    let (_, metrics) = common::http_get(&t.http(), "/metrics").await;
    assert!(
        metrics.contains("aisle_store_logs_dropped_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aisle_sessions_evicted_total"),
        "{metrics}"
    );
    t.stop().await;
}
