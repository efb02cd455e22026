//! The store edge against a real cloud side: etcd and two cloud node processes, and a real edge node process
//! (`aisle serve --role edge`) whose WAN link goes through a proxy the test black-holes or slows. Everything speaks
//! TLS gRPC over loopback sockets.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_node::bundles::signature;
use aisle_proto::v1 as pb;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use aisle_proto::v1::edge_service_client::EdgeServiceClient;
use common::cluster::{TempDir, TestCluster, connect, describe};
use common::edge::EdgeNode;
use tokio::time::Instant;
use tonic::transport::Channel;

const STORE: &str = "store-1";

/// A cloud of two nodes serving the demo model as default and `candidate` (another version) as candidate, and an
/// edge for [`STORE`] whose upstream is node 0.
async fn cloud_and_edge(candidate: Option<&Path>, edge_args: &[&str]) -> (TestCluster, EdgeNode) {
    cloud_and_edge_from(TestCluster::builder(), candidate, edge_args).await
}

/// [`cloud_and_edge`] with the cloud's nodes built by `builder`.
async fn cloud_and_edge_from(
    builder: common::cluster::Builder,
    candidate: Option<&Path>,
    edge_args: &[&str],
) -> (TestCluster, EdgeNode) {
    let mut c = builder.nodes(0).start().await;
    for _ in 0..2 {
        let i = c.add_node();
        match candidate {
            Some(file) => c.start_with_candidate(i, file),
            None => c.restart(i),
        }
    }
    c.wait_for_members(2, Duration::from_secs(60)).await;
    let edge = EdgeNode::start(&c, 0, STORE, edge_args).await;
    edge.wait_ready(Duration::from_secs(60)).await;
    edge.wait_online(Duration::from_secs(20)).await;
    (c, edge)
}

fn in_store(shopper: &str, kind: pb::EventType, item: &str) -> pb::TrackEvent {
    pb::TrackEvent {
        store_id: STORE.into(),
        consent: Some(true),
        ..common::event(shopper, kind, item)
    }
}

fn decide_req(shopper: &str, surface: pb::Surface, channel: pb::Channel) -> pb::DecideRequest {
    pb::DecideRequest {
        shopper_id: shopper.into(),
        surface: surface as i32,
        channel: channel as i32,
        store_id: STORE.into(),
        consent: Some(true),
        ..Default::default()
    }
}

async fn track(
    client: &mut DecisionServiceClient<Channel>,
    events: Vec<pb::TrackEvent>,
) -> Result<pb::TrackResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::TrackRequest {
        events,
        request_id: String::new(),
    });
    req.set_timeout(Duration::from_secs(2));
    client.track(req).await.map(tonic::Response::into_inner)
}

async fn decide(
    client: &mut DecisionServiceClient<Channel>,
    req: pb::DecideRequest,
    timeout: Duration,
) -> Result<pb::DecideResponse, tonic::Status> {
    let mut req = tonic::Request::new(req);
    req.set_timeout(timeout);
    client.decide(req).await.map(tonic::Response::into_inner)
}

/// Polls `check` every 50 ms until it holds; how long that took, or a panic naming `what` after `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn site(r: &pb::DecideResponse) -> pb::DecisionSite {
    pb::DecisionSite::try_from(r.decided_at).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_who_browsed_online_brings_their_session_into_the_store_and_hands_it_back() {
    let (c, edge) = cloud_and_edge(None, &[]).await;
    let shopper = "online-then-in-store";
    let viewed = ["sku-000100", "sku-000101", "sku-000102"];
    let mut cloud = c.client(1).await;
    for item in viewed {
        let mut e = common::event(shopper, pb::EventType::View, item);
        e.consent = Some(true);
        track(&mut cloud, vec![e]).await.unwrap();
    }
    let online = decide(
        &mut cloud,
        decide_req(shopper, pb::Surface::Home, pb::Channel::App),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(site(&online), pb::DecisionSite::Cloud);

    // Who may call EdgeService: the store's token for its own store only; not a decide token.
    let channel = Channel::from_shared(c.nodes[0].addr())
        .unwrap()
        .tls_config(common::pki::client_tls(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let fetch = |store: &str, token: &str| {
        let mut r = tonic::Request::new(pb::FetchSessionRequest {
            shopper_id: shopper.into(),
            store_id: store.into(),
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let mut as_edge = EdgeServiceClient::new(channel);
    // Not in the store yet (by what the cloud holds): no copy, even for the store's own token.
    let not_in_store = as_edge
        .fetch_session(fetch(STORE, common::pki::TOKEN_EDGE))
        .await
        .unwrap_err();
    assert_eq!(
        not_in_store.code(),
        tonic::Code::PermissionDenied,
        "{not_in_store:?}"
    );
    assert!(
        not_in_store.message().starts_with("shopper_id: "),
        "{not_in_store:?}"
    );
    // The same answer, word for word, whichever of the two cloud nodes owns the shopper (eight shoppers: both).
    for k in 0..8 {
        let mut r = fetch(STORE, common::pki::TOKEN_EDGE);
        r.get_mut().shopper_id = format!("never-in-store-{k}");
        let e = as_edge.fetch_session(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("shopper_id: "), "{e:?}");
    }
    let other_store = as_edge
        .fetch_session(fetch("store-2", common::pki::TOKEN_EDGE))
        .await
        .unwrap_err();
    assert_eq!(
        other_store.code(),
        tonic::Code::PermissionDenied,
        "{other_store:?}"
    );
    assert!(other_store.message().contains("store-2"));
    let not_an_edge = as_edge
        .fetch_session(fetch(STORE, common::pki::TOKEN_DECIDE))
        .await
        .unwrap_err();
    assert_eq!(not_an_edge.code(), tonic::Code::PermissionDenied);
    let no_store = as_edge
        .fetch_session(fetch("", common::pki::TOKEN_EDGE))
        .await
        .unwrap_err();
    assert_eq!(
        (no_store.code(), no_store.message()),
        (tonic::Code::InvalidArgument, "store_id: required")
    );

    // The shopper walks in: STORE_ENTER at the edge copies the cloud's session here.
    let mut at_edge = edge.client().await;
    let mut enter = in_store(shopper, pb::EventType::StoreEnter, "");
    enter.item_id.clear();
    let entered = track(&mut at_edge, vec![enter]).await.unwrap();
    assert_eq!((entered.accepted, entered.queued), (1, 1));
    let first = decide(
        &mut at_edge,
        decide_req(shopper, pb::Surface::Home, pb::Channel::App),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(site(&first), pb::DecisionSite::Edge);
    assert_eq!(
        first.fallback_tier,
        pb::FallbackTier::Fresh as i32,
        "{first:?}"
    );
    assert_eq!(first.served_by, format!("edge-{STORE}"));
    // The entry went up before the copy was taken: now the cloud places the shopper in the store.
    let copy = as_edge
        .fetch_session(fetch(STORE, common::pki::TOKEN_EDGE))
        .await
        .unwrap()
        .into_inner();
    assert!(!copy.session.is_empty(), "the owner's copy");
    let ids = |r: &pb::DecideResponse| {
        r.items
            .iter()
            .map(|i| i.item_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&first),
        ids(&online),
        "the edge's first answer is the online one"
    );
    assert!(
        first
            .items
            .iter()
            .any(|i| i.reasons.iter().any(|r| r == "recently_viewed")),
        "the online views shape the in-store answer: {first:?}"
    );
    // The same variant on both sides (same experiments bundle, same assignment).
    assert_eq!(first.experiments, online.experiments);
    assert_eq!(first.in_holdout, online.in_holdout);
    let stranger = decide(
        &mut at_edge,
        decide_req("never-seen-online", pb::Surface::Home, pb::Channel::App),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_ne!(
        ids(&stranger),
        ids(&first),
        "a shopper with no history gets another answer"
    );

    // A shopper whose first in-store call is a Decide (no STORE_ENTER, no scan): nothing reported them in the store,
    // so the cloud copies nothing and the edge answers from what it holds. Their entry then brings the copy.
    let walk_in = "online-then-kiosk";
    for item in ["sku-000200", "sku-000201"] {
        let mut e = common::event(walk_in, pb::EventType::View, item);
        e.consent = Some(true);
        track(&mut cloud, vec![e]).await.unwrap();
    }
    let req = || decide_req(walk_in, pb::Surface::Home, pb::Channel::Kiosk);
    let online = decide(&mut cloud, req(), Duration::from_secs(1))
        .await
        .unwrap();
    let refused = edge
        .metric("aisle_edge_session_fetches_total{result=\"refused\"}")
        .await;
    let unreported = decide(&mut at_edge, req(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(site(&unreported), pb::DecisionSite::Edge);
    let mut edge_admin = edge.admin().await;
    let held = describe(&mut edge_admin, walk_in).await;
    assert_eq!(held.events_applied, 0, "no copy without an entry: {held:?}");
    assert_eq!(
        edge.metric("aisle_edge_session_fetches_total{result=\"refused\"}")
            .await,
        refused + 1.0
    );
    let mut enter = in_store(walk_in, pb::EventType::StoreEnter, "");
    enter.item_id.clear();
    track(&mut at_edge, vec![enter]).await.unwrap();
    let first = decide(&mut at_edge, req(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(site(&first), pb::DecisionSite::Edge);
    assert_eq!(ids(&first), ids(&online), "the entry brought the session");

    // A first in-store Track (a POS scan, no STORE_ENTER) fetches the session too; a STORE_ENTER that refuses
    // consent copies nothing.
    for (who, consent) in [("online-then-pos", true), ("online-then-refuses", false)] {
        let mut e = common::event(who, pb::EventType::View, "sku-000300");
        e.consent = Some(true);
        track(&mut cloud, vec![e]).await.unwrap();
        let mut first = in_store(who, pb::EventType::StoreEnter, "");
        first.item_id.clear();
        if consent {
            first = in_store(who, pb::EventType::View, "sku-000301");
        }
        first.consent = Some(consent);
        track(&mut at_edge, vec![first]).await.unwrap();
        let held = describe(&mut edge_admin, who).await;
        let expected = if consent { 2 } else { 1 };
        assert_eq!(held.events_applied, expected, "{who}: {held:?}");
    }
    let here = describe(&mut edge_admin, shopper).await;
    assert_eq!(
        (here.events_applied, here.recent_item_ids.clone()),
        (4, viewed.map(String::from).to_vec())
    );

    // In store, then out: the edge's copy goes; the cloud holds every event, in order.
    track(
        &mut at_edge,
        vec![in_store(shopper, pb::EventType::View, "sku-000103")],
    )
    .await
    .unwrap();
    let mut exit = in_store(shopper, pb::EventType::StoreExit, "");
    exit.item_id.clear();
    track(&mut at_edge, vec![exit]).await.unwrap();
    edge.wait_for_queue_drained(Duration::from_secs(10)).await;
    let gone = describe(&mut edge_admin, shopper).await;
    assert_eq!(gone.events_applied, 0, "handed back: {gone:?}");
    let mut admin = c.admin(0).await;
    let cloud_copy = describe(&mut admin, shopper).await;
    assert_eq!(
        (cloud_copy.events_applied, cloud_copy.recent_item_ids),
        (
            6,
            ["sku-000100", "sku-000101", "sku-000102", "sku-000103"]
                .map(String::from)
                .to_vec()
        )
    );
}

/// What the in-store load saw.
#[derive(Default)]
struct Seen {
    /// Decisions: (sent while the WAN was cut, tier, site), or the error.
    decisions: Vec<Result<(bool, pb::FallbackTier, pb::DecisionSite), String>>,
    /// Views acknowledged, per shopper (events 0..n: sku-(200 + k)).
    acked: HashMap<String, usize>,
    failed_tracks: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_60_s_wan_cut_the_edge_decides_fresh_and_the_cloud_gets_every_event_once_in_order()
 {
    let files = TempDir::new("edge-models");
    let promoted = "edge-candidate-2";
    let candidate = common::candidate_file(&files.0, promoted);
    let (mut c, mut edge) = cloud_and_edge(Some(&candidate), &[]).await;
    let stable = common::demo().model.0.header.version.clone();
    let shoppers: Vec<String> = (0..8).map(|k| format!("in-store-{k}")).collect();
    let mut at_edge = edge.client().await;
    for s in &shoppers {
        let mut enter = in_store(s, pb::EventType::StoreEnter, "");
        enter.item_id.clear();
        track(&mut at_edge, vec![enter]).await.unwrap();
    }

    // A handheld on the store's push stream, at the edge.
    let mut handheld = AssociateServiceClient::new(connect(&edge.addr()).await.unwrap())
        .subscribe(pb::SubscribeRequest {
            store_id: STORE.into(),
            associate_id: "handheld-1".into(),
            kinds: vec![],
            resume_after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let assists = Arc::new(Mutex::new(Vec::<(Instant, pb::AssistEvent)>::new()));
    let assist_task = {
        let assists = assists.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = handheld.message().await {
                assists.lock().unwrap().push((Instant::now(), e));
            }
        })
    };

    // The mixed in-store load: every 25 ms a Decide or a view Track, round robin over the shoppers; at most 55
    // views each (the session's history shows them all).
    let cut = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = {
        let (cut, stop, seen, shoppers) =
            (cut.clone(), stop.clone(), seen.clone(), shoppers.clone());
        let mut client = edge.client().await;
        tokio::spawn(async move {
            let mut k = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let shopper = &shoppers[k % shoppers.len()];
                let is_track = (k / shoppers.len()).is_multiple_of(2);
                k += 1;
                let during_cut = cut.load(Ordering::SeqCst);
                if is_track {
                    let n = seen
                        .lock()
                        .unwrap()
                        .acked
                        .get(shopper)
                        .copied()
                        .unwrap_or(0);
                    if n >= 55 {
                        continue;
                    }
                    let item = format!("sku-{:06}", 200 + n);
                    match track(
                        &mut client,
                        vec![in_store(shopper, pb::EventType::View, &item)],
                    )
                    .await
                    {
                        Ok(_) => {
                            *seen
                                .lock()
                                .unwrap()
                                .acked
                                .entry(shopper.clone())
                                .or_default() += 1
                        }
                        Err(e) => seen
                            .lock()
                            .unwrap()
                            .failed_tracks
                            .push(format!("{shopper}: {e:?}")),
                    }
                } else {
                    let r = decide(
                        &mut client,
                        decide_req(shopper, pb::Surface::StoreAisle, pb::Channel::App),
                        Duration::from_millis(500),
                    )
                    .await;
                    seen.lock().unwrap().decisions.push(
                        r.map(|r| {
                            (
                                during_cut,
                                pb::FallbackTier::try_from(r.fallback_tier).unwrap(),
                                site(&r),
                            )
                        })
                        .map_err(|e| format!("{e:?}")),
                    );
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The WAN goes dark for 60 s.
    edge.wan.set_cut(true);
    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let queued_early = edge.metric("aisle_outbox_events").await;
    let offline = edge.metric("aisle_edge_offline_seconds").await;
    let lag = edge.metric("aisle_edge_model_freshness_lag_seconds").await;
    assert!(queued_early > 0.0, "the queue holds the events of the cut");
    assert!(
        offline >= 5.0,
        "seconds offline after 10 s of cut: {offline}"
    );
    assert!(lag >= 5.0, "freshness lag after 10 s of cut: {lag}");

    // Shoppers fill carts with pricey items during the cut: the handheld still hears of them.
    let pricey = {
        let cat = common::catalog();
        (0..cat.len() as u32)
            .find(|&i| {
                cat.item(i).price_cents >= 20_000 && cat.item(i).stock > 10 && cat.min_age(i) == 0
            })
            .map(|i| cat.item(i).id.to_string())
            .unwrap()
    };
    let cut_assists_from = Instant::now();
    for s in ["vip-0", "vip-1"] {
        let mut enter = in_store(s, pb::EventType::StoreEnter, "");
        enter.item_id.clear();
        track(&mut at_edge, vec![enter]).await.unwrap();
        let mut scan = in_store(s, pb::EventType::AisleScan, &pricey);
        scan.aisle = "E07".into();
        track(&mut at_edge, vec![scan]).await.unwrap();
        track(
            &mut at_edge,
            vec![in_store(s, pb::EventType::AddToCart, &pricey)],
        )
        .await
        .unwrap();
    }

    // A model promoted in the cloud meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let switched = c
        .admin(0)
        .await
        .promote_model(pb::PromoteModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(switched.default_model, promoted);
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed())).await;
    let queued_late = edge.metric("aisle_outbox_events").await;
    let lag_late = edge.metric("aisle_edge_model_freshness_lag_seconds").await;
    cut.store(false, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        queued_late > queued_early,
        "the queue grows: {queued_early} → {queued_late}"
    );
    assert!(
        lag_late >= 55.0,
        "freshness lag at the end of the cut: {lag_late}"
    );
    let during_cut: Vec<(Instant, pb::AssistEvent)> = assists
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= cut_assists_from)
        .cloned()
        .collect();
    assert!(
        during_cut
            .iter()
            .filter(|(_, e)| e.kind == pb::AssistKind::HighIntentCart as i32)
            .count()
            >= 2,
        "handheld events during the cut: {:?}",
        during_cut.iter().map(|(_, e)| e.kind).collect::<Vec<_>>()
    );

    // Still cut off: the edge crashes and comes back from its disk, and serves.
    let before_crash = edge.metric("aisle_outbox_events").await;
    edge.restart();
    edge.wait_ready(Duration::from_secs(60)).await;
    let after_crash = edge.metric("aisle_outbox_events").await;
    assert_eq!(
        after_crash, before_crash,
        "the queue read back after the crash"
    );
    let mut at_edge = edge.client().await;
    let offline_answer = decide(
        &mut at_edge,
        decide_req(&shoppers[0], pb::Surface::StoreAisle, pb::Channel::Kiosk),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert_eq!(offline_answer.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert_eq!(
        offline_answer.model_version, stable,
        "still the model from before the cut"
    );

    // The link heals, with a 80 ms round trip. The promoted model reaches the edge within 10 s, while the queue
    // still uploads (one entry per shopper in flight, each a round trip); then the edge crashes mid-upload.
    edge.wan.set_delay(Duration::from_millis(40));
    edge.wan.set_cut(false);
    let healed = Instant::now();
    let at_edge = edge.client().await;
    until(
        Duration::from_secs(10),
        "the promoted model at the edge within 10 s of the heal",
        || {
            let mut client = at_edge.clone();
            let req = decide_req(&shoppers[1], pb::Surface::Home, pb::Channel::Web);
            async move {
                decide(&mut client, req, Duration::from_millis(500))
                    .await
                    .is_ok_and(|r| r.model_version == promoted)
            }
        },
    )
    .await;
    let model_arrived = healed.elapsed();
    until(
        Duration::from_secs(5),
        "the freshness lag back to 0",
        || async { edge.metric("aisle_edge_model_freshness_lag_seconds").await == 0.0 },
    )
    .await;
    until(Duration::from_secs(20), "the upload starts", || async {
        edge.metric("aisle_edge_uploaded_events_total").await > 0.0
    })
    .await;
    let uploaded_before_crash = edge.metric("aisle_edge_uploaded_events_total").await;
    let left_at_crash = edge.metric("aisle_outbox_events").await;
    assert!(
        left_at_crash > 0.0,
        "the edge is still uploading when it crashes"
    );
    edge.restart();
    edge.wait_ready(Duration::from_secs(60)).await;
    edge.wait_for_queue_drained(Duration::from_secs(90)).await;
    let duplicates = edge
        .metric("aisle_edge_uploaded_events_total{result=\"duplicate\"}")
        .await;
    eprintln!(
        "cut: queue {queued_early} events after 10 s, {queued_late} after 60 s; promoted model at the edge \
         {model_arrived:?} after the heal; edge killed after uploading {uploaded_before_crash} events with \
         {left_at_crash} left; {duplicates} resent after the restart were refused by the cloud as duplicates"
    );

    // Exactly once, in order: each shopper's owner in the cloud holds STORE_ENTER then views 0..n.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failed_tracks.is_empty(),
        "Tracks failed: {:?}",
        seen.failed_tracks
    );
    let mut admin = c.admin(1).await;
    let mut total = 0;
    for s in &shoppers {
        let n = seen.acked.get(s).copied().unwrap_or(0);
        total += n;
        let held = describe(&mut admin, s).await;
        let expected: Vec<String> = (0..n).map(|k| format!("sku-{:06}", 200 + k)).collect();
        assert_eq!(
            (held.events_applied as usize, &held.recent_item_ids),
            (n + 1, &expected),
            "{s} (owner {}): STORE_ENTER and views 0..{n}",
            held.served_by
        );
    }
    assert!(total >= 8 * 40, "the store tracked {total} views");
    for s in ["vip-0", "vip-1"] {
        assert_eq!(describe(&mut admin, s).await.events_applied, 3, "{s}");
    }

    // Every Decide was answered; during the cut ≥ 99% FRESH, all at the edge.
    let errors: Vec<&String> = seen
        .decisions
        .iter()
        .filter_map(|d| d.as_ref().err())
        .collect();
    assert!(errors.is_empty(), "Decide failed: {errors:?}");
    let in_cut: Vec<_> = seen
        .decisions
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .filter(|d| d.0)
        .collect();
    let fresh = in_cut
        .iter()
        .filter(|d| d.1 == pb::FallbackTier::Fresh)
        .count();
    assert!(
        in_cut.len() >= 500,
        "{} decisions during the cut",
        in_cut.len()
    );
    assert!(
        fresh * 100 >= in_cut.len() * 99,
        "{fresh} of {} FRESH during the cut",
        in_cut.len()
    );
    assert!(in_cut.iter().all(|d| d.2 == pb::DecisionSite::Edge));
    eprintln!(
        "{} decisions during the cut, {fresh} FRESH; {total} views tracked; {} handheld events during the cut",
        in_cut.len(),
        during_cut.len()
    );
    assist_task.abort();
    c.kill(0);
}

/// Writes `bytes` to `path` and signs it with `key` (`path.sig`).
fn write_signed(key: &ring::signature::Ed25519KeyPair, path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::write(signature::sig_path(path), signature::sign(key, bytes)).unwrap();
}

/// The default model's version an edge serves, as its BundleStatus says.
async fn edge_model(edge: &EdgeNode) -> String {
    edge.admin()
        .await
        .bundle_status(pb::BundleStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .bundles
        .into_iter()
        .find(|b| b.kind == "model" && b.role == "default")
        .unwrap()
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_trusted_keys_refuses_an_unsigned_or_tampered_bundle_from_the_feed() {
    // Every bundle the cloud serves is signed; the cloud itself checks nothing, the edge trusts one key.
    let keys = TempDir::new("keys");
    let (pem, public) = signature::generate().unwrap();
    let key = signature::signing_key(pem.as_bytes()).unwrap();
    let trusted = keys.0.join("trusted.pub");
    std::fs::write(&trusted, format!("{public}\n")).unwrap();
    let rules = keys.0.join("rules.json");
    let experiments = keys.0.join("experiments.json");
    write_signed(
        &key,
        &rules,
        &serde_json::to_vec(&aisle_policy::rules::default_rules_file()).unwrap(),
    );
    write_signed(
        &key,
        &experiments,
        &serde_json::to_vec(&aisle_experiment::default_experiments_file()).unwrap(),
    );
    let mut c = TestCluster::builder()
        .nodes(0)
        .arg("--rules")
        .arg(rules.to_str().unwrap())
        .arg("--experiments")
        .arg(experiments.to_str().unwrap())
        .start()
        .await;
    let (catalog, model) = c.bundle_files();
    for file in [&catalog, &model] {
        let bytes = std::fs::read(file).unwrap();
        write_signed(&key, file, &bytes);
    }
    let i = c.add_node();
    c.restart(i);
    c.wait_for_members(1, Duration::from_secs(60)).await;
    let edge = EdgeNode::start(&c, 0, STORE, &["--trusted-keys", trusted.to_str().unwrap()]).await;
    edge.wait_ready(Duration::from_secs(60)).await;
    edge.wait_online(Duration::from_secs(20)).await;
    let first = common::demo().model.0.header.version.clone();
    assert_eq!(edge_model(&edge).await, first);

    // A new model whose file no longer matches its signature (tampered, or shipped unsigned beside an old .sig):
    // the cloud (no trusted keys) serves it, the edge refuses it and keeps serving the signed one.
    let mut next = common::demo().model.0;
    next.header.version = "unsigned-next".into();
    std::fs::write(&model, next.to_bytes()).unwrap();
    until(
        Duration::from_secs(30),
        "the edge refuses the model",
        || async { edge.metric("aisle_bundle_signature_refused_total").await >= 1.0 },
    )
    .await;
    assert_eq!(
        edge_model(&edge).await,
        first,
        "the signed model keeps serving"
    );
    let mut client = edge.client().await;
    let r = decide(
        &mut client,
        decide_req("signed-1", pb::Surface::Home, pb::Channel::Kiosk),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r.model_version, first);
    // The refusal is logged, naming the signature.
    let log = edge.log_tail(400);
    assert!(log.contains("bundle refused: signature"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_forgotten_in_the_cloud_is_erased_at_the_edge_queued_events_included() {
    let (c, edge) = cloud_and_edge(None, &[]).await;
    let mut at_edge = edge.client().await;
    edge.wan.set_cut(true);
    for s in ["forget-me", "keep-me"] {
        let mut enter = in_store(s, pb::EventType::StoreEnter, "");
        enter.item_id.clear();
        track(&mut at_edge, vec![enter]).await.unwrap();
        for k in 0..3 {
            track(
                &mut at_edge,
                vec![in_store(
                    s,
                    pb::EventType::View,
                    &format!("sku-{:06}", 300 + k),
                )],
            )
            .await
            .unwrap();
        }
    }
    let mut edge_admin = edge.admin().await;
    let held = describe(&mut edge_admin, "forget-me").await;
    assert_eq!(held.events_applied, 4);
    let queued: u32 = held.held.iter().map(|h| h.queued_events).sum();
    assert_eq!(queued, 4, "{held:?}");

    // Forgotten in the cloud while the store is cut off.
    let receipt = c
        .admin(0)
        .await
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: "forget-me".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.receipts.len(), 2);
    edge.wan.set_cut(false);
    until(
        Duration::from_secs(15),
        "the erasure reaches the edge",
        || {
            let mut admin = edge_admin.clone();
            async move {
                let d = describe(&mut admin, "forget-me").await;
                d.events_applied == 0 && d.held.iter().all(|h| h.queued_events == 0)
            }
        },
    )
    .await;
    edge.wait_for_queue_drained(Duration::from_secs(15)).await;
    // Nothing of the shopper in the edge's queue files. The session goes before the files are rewritten (an
    // erasure's last step), so this waits for the rewrite rather than reading the files once.
    let queue = edge.dir.0.join("state/queue");
    until(
        Duration::from_secs(15),
        "the forgotten shopper is gone from the queue files",
        || {
            let queue = queue.clone();
            async move {
                std::fs::read_dir(&queue).unwrap().all(|entry| {
                    let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
                    !bytes.windows(9).any(|w| w == b"forget-me")
                })
            }
        },
    )
    .await;
    let mut admin = c.admin(1).await;
    assert_eq!(describe(&mut admin, "forget-me").await.events_applied, 0);
    let kept = describe(&mut admin, "keep-me").await;
    assert_eq!(
        kept.events_applied, 4,
        "the other shopper's events reach the cloud"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_offline_for_twice_the_tombstone_ttl_uploads_nothing_of_a_shopper_forgotten_meanwhile()
 {
    // Short lifetimes in the cloud: a session idles out after 6 s, so a tombstone may expire after 10 s.
    const TOMBSTONE_TTL: Duration = Duration::from_secs(10);
    let builder = TestCluster::builder()
        .lease_ttl_secs(2)
        .arg("--session-idle-ttl-secs")
        .arg("6")
        .arg("--tombstone-ttl-secs")
        .arg("10");
    let (c, edge) = cloud_and_edge_from(builder, None, &[]).await;
    let mut at_edge = edge.client().await;
    edge.wan.set_cut(true);
    for s in ["gone-long", "stays-long"] {
        let mut enter = in_store(s, pb::EventType::StoreEnter, "");
        enter.item_id.clear();
        let mut events = vec![enter];
        events.extend(
            (0..3).map(|k| in_store(s, pb::EventType::View, &format!("sku-{:06}", 400 + k))),
        );
        track(&mut at_edge, events).await.unwrap();
    }
    let mut edge_admin = edge.admin().await;
    let held = describe(&mut edge_admin, "gone-long").await;
    assert_eq!(
        held.held.iter().map(|h| h.queued_events).sum::<u32>(),
        4,
        "{held:?}"
    );

    // Forgotten in the cloud while the store is cut off; the cut lasts twice the tombstone's life, so the cloud's
    // tombstone is gone when the edge comes back (the cut is the scenario: a fixed time, not a condition).
    let receipt = c
        .admin(0)
        .await
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: "gone-long".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.receipts.len(), 2);
    tokio::time::sleep(TOMBSTONE_TTL * 2).await;
    edge.wan.set_cut(false);

    edge.wait_for_queue_drained(Duration::from_secs(30)).await;
    let d = describe(&mut edge_admin, "gone-long").await;
    assert_eq!(d.events_applied, 0, "erased at the edge: {d:?}");
    for i in 0..2 {
        let mut admin = c.admin(i).await;
        assert_eq!(
            describe(&mut admin, "gone-long").await.events_applied,
            0,
            "the forgotten shopper came back to the cloud (asked at node {i})"
        );
    }
    let mut admin = c.admin(1).await;
    assert_eq!(
        describe(&mut admin, "stays-long").await.events_applied,
        4,
        "the other shopper's queued events went up"
    );
    assert!(edge.metric("aisle_edge_uploaded_events_total").await >= 4.0);
    assert_eq!(edge.metric("aisle_edge_erasure_gaps_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surface_placed_in_the_cloud_falls_back_to_the_edges_answer_when_the_cloud_is_slow_or_away()
 {
    let config_dir = TempDir::new("edge-placement");
    let config = config_dir.0.join("edge.toml");
    std::fs::write(
        &config,
        "[[placement]]\nsurface = \"home\"\nat = \"cloud\"\nbudget_ms = 200\n\n\
         [[placement]]\nsurface = \"store_aisle\"\nbudget_ms = 40\n",
    )
    .unwrap();
    let (c, edge) = cloud_and_edge(None, &["--config", config.to_str().unwrap()]).await;
    let mut at_edge = edge.client().await;
    let home = || decide_req("placed", pb::Surface::Home, pb::Channel::Kiosk);
    let cloud_ids: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();

    // The link is up: home is decided in the cloud, the aisle at the edge.
    let r = decide(&mut at_edge, home(), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(site(&r), pb::DecisionSite::Cloud, "{r:?}");
    assert!(cloud_ids.contains(&r.served_by), "{}", r.served_by);
    let r = decide(
        &mut at_edge,
        decide_req("placed", pb::Surface::StoreAisle, pb::Channel::Kiosk),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(site(&r), pb::DecisionSite::Edge);

    // A 300 ms round trip does not fit home's 200 ms budget: the edge answers itself, in time.
    edge.wan.set_delay(Duration::from_millis(150));
    for _ in 0..3 {
        let started = Instant::now();
        let mut req = tonic::Request::new(home());
        req.set_timeout(Duration::from_millis(200));
        let r = at_edge.decide(req).await.unwrap().into_inner();
        assert_eq!(site(&r), pb::DecisionSite::Edge);
        assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
        assert_eq!(r.served_by, format!("edge-{STORE}"));
        assert!(started.elapsed() < Duration::from_millis(400));
    }
    assert!(
        edge.metric("aisle_edge_cloud_fallbacks_total").await >= 3.0,
        "the fallbacks are counted"
    );

    // Cut: answered at the edge, never an error.
    edge.wan.set_delay(Duration::ZERO);
    edge.wan.set_cut(true);
    until(
        Duration::from_secs(10),
        "the edge notices the link is down",
        || async { edge.metric("aisle_edge_offline_seconds").await > 0.0 },
    )
    .await;
    for _ in 0..5 {
        let r = decide(&mut at_edge, home(), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(site(&r), pb::DecisionSite::Edge);
        assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    }
    assert!(edge.metric("aisle_edge_decisions_total").await >= 8.0);
}

/// One benchmark round: (p50, p99) of the edge, the cloud path and the local node.
type Round = ((u128, u128), (u128, u128), (u128, u128));

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Sequential Decides through `client`: (p50, p99) in µs, client side.
async fn latencies(
    client: &mut DecisionServiceClient<Channel>,
    shoppers: &[String],
    channel: pb::Channel,
    n: usize,
    expect: pb::DecisionSite,
) -> (u128, u128) {
    let mut took = Vec::with_capacity(n);
    for k in 0..n {
        let started = Instant::now();
        let r = decide(
            client,
            decide_req(&shoppers[k % shoppers.len()], pb::Surface::Home, channel),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        took.push(started.elapsed());
        assert_eq!(site(&r), expect, "{r:?}");
        assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    }
    took.sort();
    (
        percentile(&took, 0.50).as_micros(),
        percentile(&took, 0.99).as_micros(),
    )
}

/// In-store Decide latency, client side, in one run: at the edge, through the edge to the cloud over a WAN with
/// a 40 ms round trip, and at a cloud node directly (a local node, no WAN). Three alternations; the medians go to
/// docs/BENCHMARKS.md. Run: `cargo test --release -p aisle-node --test edge -- --ignored --nocapture
/// in_store_decide_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand in release mode"]
async fn in_store_decide_latency_at_the_edge_against_the_cloud_path() {
    let config_dir = TempDir::new("edge-bench");
    let config = config_dir.0.join("edge.toml");
    std::fs::write(
        &config,
        "[[placement]]\nsurface = \"home\"\nchannel = \"web\"\nat = \"cloud\"\nbudget_ms = 500\n",
    )
    .unwrap();
    let (c, edge) = cloud_and_edge(None, &["--config", config.to_str().unwrap()]).await;
    let shoppers: Vec<String> = (0..20).map(|k| format!("bench-{k}")).collect();
    let mut at_edge = edge.client().await;
    for (k, s) in shoppers.iter().enumerate() {
        let mut enter = in_store(s, pb::EventType::StoreEnter, "");
        enter.item_id.clear();
        let views = (0..5)
            .map(|j| {
                in_store(
                    s,
                    pb::EventType::View,
                    &format!("sku-{:06}", 100 + 7 * k + j),
                )
            })
            .collect();
        track(&mut at_edge, vec![enter]).await.unwrap();
        track(&mut at_edge, views).await.unwrap();
    }
    edge.wait_for_queue_drained(Duration::from_secs(20)).await;
    edge.wan.set_delay(Duration::from_millis(20));
    let mut local = c.client(0).await;
    let n = 400;
    // Warm-up of every path.
    latencies(
        &mut at_edge,
        &shoppers,
        pb::Channel::Kiosk,
        50,
        pb::DecisionSite::Edge,
    )
    .await;
    latencies(
        &mut at_edge,
        &shoppers,
        pb::Channel::Web,
        50,
        pb::DecisionSite::Cloud,
    )
    .await;
    latencies(
        &mut local,
        &shoppers,
        pb::Channel::Kiosk,
        50,
        pb::DecisionSite::Cloud,
    )
    .await;
    let mut rounds = Vec::new();
    for round in 0..3 {
        let e = latencies(
            &mut at_edge,
            &shoppers,
            pb::Channel::Kiosk,
            n,
            pb::DecisionSite::Edge,
        )
        .await;
        let w = latencies(
            &mut at_edge,
            &shoppers,
            pb::Channel::Web,
            n,
            pb::DecisionSite::Cloud,
        )
        .await;
        let l = latencies(
            &mut local,
            &shoppers,
            pb::Channel::Kiosk,
            n,
            pb::DecisionSite::Cloud,
        )
        .await;
        eprintln!(
            "round {round}: p50/p99 µs — edge {}/{}, through the edge to the cloud (40 ms RTT) {}/{}, local node \
             {}/{}; edge p99 / local p99 = {:.2}, cloud path p99 / edge p99 = {:.1}",
            e.0,
            e.1,
            w.0,
            w.1,
            l.0,
            l.1,
            e.1 as f64 / l.1 as f64,
            w.1 as f64 / e.1 as f64
        );
        rounds.push((e, w, l));
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "median of 3: edge p99 {:.0} µs, cloud path p99 {:.0} µs, local node p99 {:.0} µs; edge/local p99 {:.2}; \
         cloud path/edge p99 {:.1}",
        median(&|r| r.0.1 as f64),
        median(&|r| r.1.1 as f64),
        median(&|r| r.2.1 as f64),
        median(&|r| r.0.1 as f64 / r.2.1 as f64),
        median(&|r| r.1.1 as f64 / r.0.1 as f64),
    );
}
