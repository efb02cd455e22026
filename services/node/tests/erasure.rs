//! Erasure against hand-off: a batch that was in flight when the shopper was forgotten arrives late and must not
//! bring the session back; a session written after the erasure still moves. Real session actors and the real
//! hand-off receiver, under views fed by the test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_node::bundles::Bundles;
use aisle_node::cluster::handoff::{self, Holdings};
use aisle_node::cluster::{Cluster, Member, SharedView, View};
use aisle_node::engine::cache::DecisionCache;
use aisle_node::engine::shoppers::Shoppers;
use aisle_node::engine::tombstones::Tombstones;
use aisle_node::security::pseudonyms::Pseudonyms;
use aisle_proto::v1 as pb;
use aisle_session::Sessions;
use tokio::sync::watch;

const CALL: Duration = Duration::from_secs(5);

fn member(id: &str) -> Member {
    Member {
        node_id: id.into(),
        addr: format!("{id}:1"),
        incarnation: "1".into(),
        leaving: false,
    }
}

/// Node "a" of a view {a, b}, its hand-off holdings, and the view.
async fn node_a() -> (
    Holdings,
    Arc<Cluster>,
    SharedView,
    watch::Sender<Option<SharedView>>,
) {
    let view: SharedView = Arc::new(View::new(7, vec![member("a"), member("b")]));
    let (tx, rx) = watch::channel(Some(view.clone()));
    let cluster = Cluster::with_views("a", "a:1", rx);
    cluster.begin_epoch(&view);
    for m in &view.members {
        cluster.done_from(&m.node_id, view.fingerprint);
    }
    let bundles = Arc::new(Bundles::start(common::demo()).await.unwrap());
    let gate = cluster.clone();
    let sessions = Sessions::start_gated(
        2,
        common::config("a").session_settings(),
        Arc::new(move |s: &str| gate.owns(s)),
    )
    .await
    .unwrap();
    let holdings = Holdings {
        shoppers: Shoppers {
            sessions,
            cache: Arc::new(DecisionCache::new(100, Duration::from_secs(60))),
            pseudonyms: Arc::new(Pseudonyms::with_key(vec![7; 32], false)),
            tombstones: Arc::new(Tombstones::new(Duration::from_secs(3_600))),
        },
        bundles,
        replication: aisle_node::cluster::Replication::off(),
    };
    (holdings, cluster, view, tx)
}

fn owned_by(view: &View, node: &str, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|s| view.shopper_owner(s).is_some_and(|m| m.node_id == node))
        .unwrap()
}

fn view_event(item: u32, ts_ms: i64) -> ShopperEvent {
    ShopperEvent {
        kind: EventKind::View,
        item: Some(ItemRef::Known(item)),
        query: None,
        quantity: 0,
        price_cents: 0,
        store_id: None,
        aisle: None,
        ts_ms,
        received_at_us: 0,
        consent: Some(true),
        default_consent: false,
    }
}

/// A session for `shopper` as its previous owner sealed it: built by the session actors, then exported.
async fn sealed(holdings: &Holdings, shopper: &str) -> pb::SessionRecord {
    let catalog = holdings.bundles.world().catalog.clone();
    let now = aisle_domain::now_ms();
    holdings
        .shoppers
        .sessions
        .apply(
            shopper,
            vec![view_event(1, now), view_event(2, now)],
            catalog.clone(),
            None,
            CALL,
        )
        .await
        .unwrap();
    let target = shopper.to_string();
    let mut out = holdings
        .shoppers
        .sessions
        .export(Arc::new(move |s: &str| s == target), CALL)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    let t = out.pop().unwrap();
    pb::SessionRecord {
        shopper_id: t.shopper_id.to_string(),
        context: serde_json::to_vec(&t.context.to_portable(&catalog)).unwrap(),
        version: t.context.version(),
    }
}

fn batch(view: &View, record: pb::SessionRecord) -> pb::HandOffRequest {
    pb::HandOffRequest {
        epoch: view.epoch,
        from_node: "b".into(),
        sessions: vec![record],
        done: false,
        view_fingerprint: view.fingerprint,
        tombstones: Vec::new(),
    }
}

#[tokio::test]
async fn a_batch_in_flight_when_the_shopper_was_forgotten_does_not_bring_the_session_back() {
    let (holdings, cluster, view, _tx) = node_a().await;
    let shopper = owned_by(&view, "a", "forgotten");
    let in_flight = sealed(&holdings, &shopper).await;

    // The erasure reaches node a while b's batch is still on its way.
    let forgotten_at = aisle_domain::now_ms() + 1;
    assert!(
        holdings
            .shoppers
            .tombstones
            .record(&holdings.shoppers.pseudonyms.of(&shopper), forgotten_at)
    );
    let (installed, _) = handoff::receive(&holdings, &cluster, batch(&view, in_flight))
        .await
        .unwrap();
    assert_eq!(installed, 0, "the late batch was installed");
    assert!(
        holdings
            .shoppers
            .sessions
            .describe(&shopper, CALL)
            .await
            .unwrap()
            .is_none(),
        "the forgotten session came back"
    );

    // A session written after the erasure (the shopper came back and was tracked anew) still moves.
    let fresh = owned_by(&view, "a", "returning");
    let record = sealed(&holdings, &fresh).await;
    holdings.shoppers.tombstones.record(
        &holdings.shoppers.pseudonyms.of(&fresh),
        aisle_domain::now_ms() - 60_000,
    );
    let (installed, _) = handoff::receive(&holdings, &cluster, batch(&view, record))
        .await
        .unwrap();
    assert_eq!(
        installed, 1,
        "a session newer than the erasure is not covered by it"
    );
    let held = holdings
        .shoppers
        .sessions
        .describe(&fresh, CALL)
        .await
        .unwrap();
    assert_eq!(held.map(|c| c.events_applied()), Some(2));
}

#[tokio::test]
async fn tombstones_in_a_done_message_erase_a_copy_kept_here_before_the_barrier_completes() {
    // Node a kept a copy of a session while it was away (fenced); b forgot the shopper meanwhile and tells a in
    // its `done` for the new view.
    let (holdings, cluster, view, _tx) = node_a().await;
    let shopper = owned_by(&view, "a", "kept");
    let kept_after = owned_by(&view, "a", "kept-after");
    let catalog = holdings.bundles.world().catalog.clone();
    let now = aisle_domain::now_ms();
    for s in [&shopper, &kept_after] {
        holdings
            .shoppers
            .sessions
            .apply(s, vec![view_event(3, now)], catalog.clone(), None, CALL)
            .await
            .unwrap();
    }
    let done = pb::HandOffRequest {
        epoch: view.epoch,
        from_node: "b".into(),
        sessions: Vec::new(),
        done: true,
        view_fingerprint: view.fingerprint,
        tombstones: vec![
            pb::Tombstone {
                shopper_ref: holdings.shoppers.pseudonyms.of(&shopper),
                forgotten_at_ms: aisle_domain::now_ms() + 1,
            },
            // An erasure older than the copy held here (the shopper came back since): the copy stays.
            pb::Tombstone {
                shopper_ref: holdings.shoppers.pseudonyms.of(&kept_after),
                forgotten_at_ms: now - 60_000,
            },
        ],
    };
    handoff::receive(&holdings, &cluster, done).await.unwrap();
    assert!(
        holdings
            .shoppers
            .sessions
            .describe(&shopper, CALL)
            .await
            .unwrap()
            .is_none(),
        "the kept copy of a forgotten shopper survived the tombstone"
    );
    assert!(
        holdings
            .shoppers
            .sessions
            .describe(&kept_after, CALL)
            .await
            .unwrap()
            .is_some(),
        "a session written after its erasure was dropped"
    );
    // The tombstone is now this node's too: it passes it on in its own `done` messages.
    assert!(
        holdings
            .shoppers
            .tombstones
            .live()
            .iter()
            .any(|(r, _)| *r == holdings.shoppers.pseudonyms.of(&shopper))
    );
}
