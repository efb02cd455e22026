//! The cluster against a real etcd and real node processes: one owner per shopper, forwarding, hand-off, push
//! fan-in, and the fault scenarios — crash, rolling restart, pause, partition from etcd, etcd restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aisle_proto::v1 as pb;
use common::cluster::{
    Driver, Targets, TestCluster, assert_single_fresh_owner, describe, follow_members, http_get,
};
use common::{assert_bounded_fallback_labels, decide_req, event};
use tokio::time::Instant;

fn shoppers(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|k| format!("{tag}-{k}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_forwards_a_shopper_to_its_one_owner() {
    let c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    for i in 0..3 {
        c.wait_ready(i, 200, Duration::from_secs(10)).await;
    }
    // Malformed member records in etcd — an address that is no address, a record claiming another node's id —
    // are skipped by every node: nothing panics and forwarding keeps working below.
    let bogus = |id: &str, addr: &str| {
        format!(r#"{{"node_id":"{id}","addr":"{addr}","incarnation":"x","leaving":false}}"#)
    };
    c.put_member_record("bogus", &bogus("bogus", "::not an address::"))
        .await;
    c.put_member_record("impostor", &bogus("node-0", "127.0.0.1:1"))
        .await;
    c.put_member_record("garbage", "{not json").await;
    for i in 0..3 {
        let http = c.nodes[i].http();
        common::eventually(
            "the invalid records are seen and skipped",
            Duration::from_secs(10),
            || {
                let http = http.clone();
                async move {
                    let (_, m) = http_get(&http, "/metrics").await;
                    m.lines().any(|l| {
                        l.starts_with("aisle_member_records_invalid_total")
                            && l.split_whitespace()
                                .last()
                                .and_then(|v| v.parse::<f64>().ok())
                                >= Some(3.0)
                    })
                }
            },
        )
        .await;
    }
    c.wait_for_members(3, Duration::from_secs(10)).await;
    let mut clients = [c.client(0).await, c.client(1).await, c.client(2).await];
    let mut owners = HashMap::new();
    for shopper in shoppers(30, "fwd") {
        let mut served = HashSet::new();
        for client in clients.iter_mut() {
            let r = client
                .decide(decide_req(&shopper, pb::Surface::Home))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.fallback_tier,
                pb::FallbackTier::Fresh as i32,
                "{shopper}: {}",
                r.fallback_reason
            );
            served.insert((r.served_by, r.epoch));
        }
        assert_eq!(served.len(), 1, "{shopper} answered by {served:?}");
        let (owner, _) = served.into_iter().next().unwrap();
        let status = c
            .admin(1)
            .await
            .cluster_status(pb::ClusterStatusRequest {
                shopper_id: shopper.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.shopper_owner, owner);
        owners.insert(shopper, owner);
    }
    let distinct: HashSet<&String> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "30 shoppers spread over the 3 nodes");

    // Events sent to any node land in the owner's session; any node describes it.
    let shopper = "fwd-0";
    for (k, client) in clients.iter_mut().enumerate() {
        let item = format!("sku-{:06}", 200 + k);
        let r = client
            .track(pb::TrackRequest {
                events: vec![event(shopper, pb::EventType::View, &item)],
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 1);
    }
    let d = describe(&mut c.admin(2).await, shopper).await;
    assert_eq!(d.served_by, owners[shopper]);
    assert_eq!(
        d.recent_item_ids,
        ["sku-000200", "sku-000201", "sku-000202"]
    );
    // Forget through a non-owner erases at the owner.
    let non_owner = (0..3).find(|&i| c.nodes[i].id != owners[shopper]).unwrap();
    let f = c
        .admin(non_owner)
        .await
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: shopper.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(f.session_erased);
    assert_eq!(f.served_by, owners[shopper]);
    let d = describe(&mut c.admin(0).await, shopper).await;
    assert!(!d.has_session);

    // Model switches asked of one node reach every member over the peer port.
    let promoted = c
        .admin(1)
        .await
        .promote_model(pb::PromoteModelRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut switched: Vec<String> = promoted.members.iter().map(|m| m.node_id.clone()).collect();
    switched.sort();
    assert_eq!(switched, ["node-0", "node-1", "node-2"], "{promoted:?}");
    let rolled = c
        .admin(2)
        .await
        .rollback_model(pb::RollbackModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.members.len(), 3, "{rolled:?}");
}

/// Warms up sessions: one view each, through node 0.
async fn warm(c: &TestCluster, shoppers: &[String]) {
    let mut client = c.client(0).await;
    for chunk in shoppers.chunks(100) {
        let events = chunk
            .iter()
            .enumerate()
            .map(|(k, s)| event(s, pb::EventType::View, &format!("sku-{:06}", 100 + k)))
            .collect();
        client
            .track(pb::TrackRequest {
                events,
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
}

fn addrs(c: &TestCluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.addr()).collect()
}

/// Fault 1: SIGKILL one of three nodes under steady mixed load (Decide, and Track every third call). Its shoppers'
/// sessions were replicated to their successors, which take them over: every event acknowledged a second before
/// the kill is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_costs_a_few_seconds_of_fallback_answers_and_no_acknowledged_event() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let population = shoppers(150, "crash");
    warm(&c, &population).await;
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let follower = follow_members(&c, targets.clone());
    let driver = Driver::start_mixed(addrs(&c), targets, population.clone(), 200, false, 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = 1;
    let killed_at = driver.started.elapsed();
    c.kill(victim);
    let converged = c.wait_for_view(&[0, 2], 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let records = driver.finish().await;
    follower.abort();

    let window_end = killed_at + ttl + Duration::from_secs(1);
    let victim_id = &c.nodes[victim].id;
    // The dead node's shoppers: those it answered FRESH before the kill.
    // (A Decide's `served_by` is the owner that answered FRESH; a Track's is only the node that received it.)
    let orphans: HashSet<&String> = records
        .iter()
        .filter(|r| {
            r.at < killed_at
                && r.error.is_none()
                && !r.track
                && r.tier == pb::FallbackTier::Fresh
                && &r.served_by == victim_id
        })
        .map(|r| &r.shopper)
        .collect();
    assert!(orphans.len() > 25, "{}", orphans.len());
    for r in &records {
        // A Track of the dead node's shopper fails until its new owner takes over (a Decide falls back).
        let orphan_track = r.track && orphans.contains(&r.shopper);
        if let Some(code) = r.error {
            assert!(
                // (A call in flight at the kill may fail too.)
                (r.asked == victim || orphan_track) && r.done >= killed_at && r.at <= window_end,
                "failed call outside the window or on a live node: {r:?} ({code:?})"
            );
        }
        if r.asked != victim && !orphan_track {
            assert!(r.error.is_none(), "a live node failed a call: {r:?}");
        }
        if r.at > window_end && r.track {
            assert!(r.error.is_none(), "{r:?}");
        } else if r.at > window_end {
            assert!(r.error.is_none(), "{r:?}");
            assert_eq!(
                r.tier,
                pb::FallbackTier::Fresh,
                "after the window every answer is FRESH: {r:?}"
            );
            assert_ne!(&r.served_by, victim_id);
        }
    }
    // How long until each orphan was served FRESH by its new owner.
    let mut recovery = Duration::ZERO;
    for shopper in &orphans {
        let first = records
            .iter()
            .filter(|r| {
                &r.shopper == *shopper
                    && r.at > killed_at
                    && !r.track
                    && r.tier == pb::FallbackTier::Fresh
            })
            .map(|r| r.at)
            .min()
            .unwrap_or_else(|| panic!("{shopper} never served FRESH again"));
        recovery = recovery.max(first - killed_at);
    }
    let fallbacks = records
        .iter()
        .filter(|r| {
            r.at > killed_at
                && r.asked != victim
                && !r.track
                && r.tier != pb::FallbackTier::Fresh
                && r.error.is_none()
        })
        .count();
    // The target — FRESH again within a lease TTL and a second — is asserted above for every answer after the
    // window; `recovery` also counts the wait for each orphan's next Decide (about one a second each).
    println!(
        "crash: converged {converged:?} after the kill; orphans FRESH again within {recovery:?} (target {:?}, \
         plus the wait for their next Decide); {fallbacks} fallback answers meanwhile",
        ttl + Duration::from_secs(1)
    );
    assert_single_fresh_owner(&records);
    // No acknowledged event lost: each orphan's session on its new owner holds every item whose Track was
    // acknowledged at least a second before the kill.
    let cutoff = killed_at.saturating_sub(Duration::from_secs(1));
    let mut admin = c.admin(0).await;
    let (mut whole, mut checked_events) = (0, 0);
    for shopper in &orphans {
        let acked: Vec<&str> = records
            .iter()
            .filter(|r| r.track && &&r.shopper == shopper && r.error.is_none() && r.done <= cutoff)
            .map(|r| r.item.as_str())
            .collect();
        let held = describe(&mut admin, shopper).await;
        assert_ne!(&held.served_by, victim_id);
        checked_events += acked.len();
        if acked
            .iter()
            .all(|item| held.recent_item_ids.iter().any(|i| i == item))
        {
            whole += 1;
        } else {
            println!(
                "crash: {shopper} on {} lacks some of {acked:?}: {:?}",
                held.served_by, held.recent_item_ids
            );
        }
    }
    println!(
        "crash: {whole} of {} orphans hold every event acknowledged 1 s before the kill ({checked_events} events)",
        orphans.len()
    );
    assert!(
        checked_events > 25,
        "the load tracked events: {checked_events}"
    );
    assert!(
        whole * 100 >= orphans.len() * 99,
        "{whole} of {}",
        orphans.len()
    );
    // Unreachable owners, hand-offs and new epochs were all counted, and under the closed set of labels only.
    let mut counted = 0.0;
    for i in [0, 2] {
        let (status, metrics) = http_get(&c.nodes[i].http(), "/metrics").await;
        assert_eq!(status, 200);
        counted += assert_bounded_fallback_labels(&metrics);
    }
    assert!(
        counted >= fallbacks as f64,
        "{counted} counted, {fallbacks} answered"
    );
}

/// Fault 2: rolling restart (SIGTERM, restart, one node at a time) under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_call_and_keeps_every_session() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let population = shoppers(200, "roll");
    // Three events per shopper, through different nodes.
    for (k, node) in [0usize, 1, 2].into_iter().enumerate() {
        let mut client = c.client(node).await;
        for chunk in population.chunks(100) {
            let events = chunk
                .iter()
                .map(|s| event(s, pb::EventType::View, &format!("sku-{:06}", 300 + k)))
                .collect();
            client
                .track(pb::TrackRequest {
                    events,
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
    }
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let follower = follow_members(&c, targets.clone());
    let driver = Driver::start(addrs(&c), targets, population.clone(), 150, true);
    for i in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (code, took) = c.terminate(i, Duration::from_secs(30)).await;
        assert_eq!(
            code,
            Some(0),
            "node {i} exits 0 on SIGTERM:\n{}",
            c.nodes[i].log_tail(20)
        );
        println!("rolling restart: node {i} left in {took:?}");
        c.restart(i);
        c.wait_for_members(3, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = driver.finish().await;
    follower.abort();
    let failed: Vec<_> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} failed calls, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(records.len() > 500, "{}", records.len());
    let mut admin = c.admin(1).await;
    for shopper in &population {
        let d = describe(&mut admin, shopper).await;
        assert_eq!(
            d.recent_item_ids,
            ["sku-000300", "sku-000301", "sku-000302"],
            "{shopper} lost context (owner {})",
            d.served_by
        );
    }
    assert_single_fresh_owner(&records);
}

/// Fault 3: SIGSTOP a node for twice the lease TTL, then SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_never_answers_as_owner_with_a_stale_epoch_and_rejoins() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let population = shoppers(200, "pause");
    warm(&c, &population).await;
    let old_epoch = c.status(2).await.unwrap().epoch;
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let driver = Driver::start(addrs(&c), targets.clone(), population, 150, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.pause(2);
    tokio::time::sleep(ttl * 2).await;
    c.wait_for_view(&[0, 1], 2, Duration::from_secs(10)).await;
    let resumed_at = driver.started.elapsed();
    c.resume(2);
    let rejoined = c.wait_for_members(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = driver.finish().await;
    println!("pause: rejoined {rejoined:?} after SIGCONT");
    for r in &records {
        if r.at >= resumed_at && r.served_by == c.nodes[2].id && r.tier == pb::FallbackTier::Fresh {
            assert_ne!(
                r.epoch, old_epoch,
                "FRESH under the stale epoch after resuming: {r:?}"
            );
        }
    }
    assert_single_fresh_owner(&records);
    let after = records
        .iter()
        .filter(|r| r.at > resumed_at + rejoined && r.served_by == c.nodes[2].id)
        .count();
    assert!(after > 0, "the node serves again after rejoining");
}

/// Fault 4: cut one node off from etcd (its etcd traffic goes through a proxy that drops everything), then heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_fences_itself_and_rejoins_after_healing() {
    let c = TestCluster::builder().nodes(3).proxied(2).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let population = shoppers(200, "cut");
    warm(&c, &population).await;
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let driver = Driver::start(addrs(&c), targets, population, 150, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = driver.started.elapsed();
    c.proxies[&2].set_cut(true);
    let fenced = c.wait_ready(2, 503, ttl + Duration::from_secs(2)).await;
    assert!(
        fenced <= ttl,
        "self-fenced after {fenced:?}, lease TTL {ttl:?}"
    );
    let status = c.status(2).await.unwrap();
    assert!(!status.member, "{status:?}");
    c.wait_for_view(&[0, 1], 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healed_at = driver.started.elapsed();
    c.proxies[&2].set_cut(false);
    let rejoined = c.wait_for_members(3, Duration::from_secs(10)).await;
    c.wait_ready(2, 200, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = driver.finish().await;
    println!("partition: fenced {fenced:?} after the cut; rejoined {rejoined:?} after healing");
    for r in &records {
        if r.served_by == c.nodes[2].id && r.at > cut_at + ttl && r.at < healed_at {
            assert_ne!(
                r.tier,
                pb::FallbackTier::Fresh,
                "the fenced node answered as owner: {r:?}"
            );
        }
        assert!(
            r.error.is_none(),
            "the cut node still answers (from the fallback ladder): {r:?}"
        );
    }
    assert_single_fresh_owner(&records);
}

/// Fault 4b: one node cut off from etcd and from its peers' calls at once, crashed while cut, restarted, then
/// healed. Its clients' Decides are answered (from the fallback ladder once it fenced, never an error) and their
/// Tracks are acknowledged into its outbox on disk; the other two take its shoppers over; the crash loses nothing
/// queued; and once healed, every acknowledged event of every shopper is applied at the shopper's owner exactly
/// once and in the order it was acknowledged.
///
/// Each shopper's device sends its events one call at a time to one node (shopper k to node k % 3), event n
/// viewing item sku-(200 + n): the owner's history then shows exactly which events it holds and in which order.
/// Tracking pauses for 1.5 s before the cut, so that every event applied before it is also in a replica (the crash
/// test's promise: events acknowledged a second before a failure); after the cut, nothing relies on replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_and_peers_queues_tracks_and_each_reaches_its_owner_once() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    const EVENTS: usize = 60;
    let mut c = TestCluster::builder()
        .nodes(3)
        .lease_ttl_secs(3)
        .isolatable(2)
        .start()
        .await;
    c.wait_for_view(&[0, 1, 2], 3, Duration::from_secs(60))
        .await;
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let population = shoppers(12, "isolated");
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let driver = Driver::start(addrs(&c), targets.clone(), population.clone(), 40, true);

    let paused = Arc::new(AtomicBool::new(false));
    let node2_down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let queued_at_2 = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut devices = Vec::new();
    for (k, shopper) in population.iter().cloned().enumerate() {
        let node = k % 3;
        let mut client = c.client(node).await;
        let (paused, node2_down, stop) = (paused.clone(), node2_down.clone(), stop.clone());
        let (queued_at_2, acked, failures) = (queued_at_2.clone(), acked.clone(), failures.clone());
        devices.push(tokio::spawn(async move {
            let mut n = 0;
            while n < EVENTS && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if paused.load(Ordering::SeqCst) || (node == 2 && node2_down.load(Ordering::SeqCst))
                {
                    continue;
                }
                let item = format!("sku-{:06}", 200 + n);
                let mut req = tonic::Request::new(pb::TrackRequest {
                    events: vec![event(&shopper, pb::EventType::View, &item)],
                    request_id: String::new(),
                });
                req.set_timeout(Duration::from_secs(2));
                match client.track(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert_eq!(r.accepted, 1, "{r:?}");
                        if node == 2 {
                            queued_at_2.fetch_add(r.queued as usize, Ordering::SeqCst);
                        }
                        n += 1;
                        acked.lock().unwrap().insert(shopper.clone(), n);
                    }
                    Err(status) => {
                        // Not acknowledged: the event may or may not be applied, so this device stops here.
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{shopper} event {n} via node {node}: {status:?}"));
                        return;
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    paused.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cut_at = driver.started.elapsed();
    c.isolate(2, true);
    paused.store(false, Ordering::SeqCst);
    // The others take node 2's shoppers over once its lease is gone; node 2 fences itself first.
    let fenced = c.wait_ready(2, 503, ttl + Duration::from_secs(2)).await;
    c.wait_for_view(&[0, 1], 2, ttl + Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued_before_crash = queued_at_2.load(Ordering::SeqCst);
    assert!(
        queued_before_crash > 0,
        "node 2's clients' Tracks were not queued while it was cut off"
    );
    assert!(
        c.metric(2, "aisle_outbox_events").await > 0.0,
        "node 2's outbox holds nothing while cut off"
    );
    // A crash while cut off: what was acknowledged into the outbox is on disk.
    node2_down.store(true, Ordering::SeqCst);
    targets.set(vec![0, 1]);
    c.kill(2);
    c.restart(2);
    c.wait_ready(2, 503, Duration::from_secs(30)).await;
    let replayed = c.metric(2, "aisle_outbox_events").await;
    assert!(
        replayed >= 1.0,
        "the restarted node read back nothing from its outbox:\n{}",
        c.nodes[2].log_tail(20)
    );
    node2_down.store(false, Ordering::SeqCst);
    targets.set(vec![0, 1, 2]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healed_at = driver.started.elapsed();
    c.isolate(2, false);
    let rejoined = c
        .wait_for_view(&[0, 1, 2], 3, Duration::from_secs(20))
        .await;
    for device in devices {
        device.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "Tracks failed: {failures:?}");
    // Every outbox drains.
    c.wait_for_outboxes(Duration::from_secs(30)).await;
    let delivered_by_2 = c.metric(2, "aisle_outbox_delivered_events_total").await;
    let records = driver.finish().await;

    // Exactly once, in order: each shopper's owner holds events 0..n, each once.
    let acked = acked.lock().unwrap().clone();
    let mut admin = c.admin(0).await;
    for shopper in &population {
        let n = acked.get(shopper).copied().unwrap_or(0);
        let held = describe(&mut admin, shopper).await;
        let expected: Vec<String> = (0..n).map(|k| format!("sku-{:06}", 200 + k)).collect();
        assert_eq!(
            (held.events_applied as usize, &held.recent_item_ids),
            (n, &expected),
            "{shopper} (owner {}): acknowledged events 0..{n}",
            held.served_by
        );
    }
    let total: usize = acked.values().sum();
    assert!(total >= 12 * 40, "the devices tracked {total} events");

    for r in &records {
        assert!(r.error.is_none(), "a Decide failed: {r:?}");
        if r.served_by == c.nodes[2].id && r.at > cut_at + ttl && r.at < healed_at {
            assert_ne!(
                r.tier,
                pb::FallbackTier::Fresh,
                "the cut-off node answered as owner: {r:?}"
            );
        }
    }
    assert_single_fresh_owner(&records);
    println!(
        "cut from etcd and peers: fenced {fenced:?} after the cut; {queued_before_crash} events queued by node 2 \
         before its crash, {replayed} read back after it, {delivered_by_2} delivered after the heal; rejoined \
         {rejoined:?}; {total} events, each applied once in order"
    );
}

/// A forwarded Track whose answer is lost — the owner applied it, and its reply never came back — is queued by
/// the node that received it under the number it was sent with, sent again once the link heals, and answered as a
/// duplicate: the owner applies it once. (The owner, node 2, stays a member throughout: only its replies on the
/// peer port vanish.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_whose_answer_was_lost_is_queued_and_applied_once() {
    let c = TestCluster::builder().nodes(3).isolatable(2).start().await;
    c.wait_for_view(&[0, 1, 2], 3, Duration::from_secs(60))
        .await;
    let view = c.view(0).await;
    let owned_by_2: Vec<String> = (0..)
        .map(|k| format!("lost-answer-{k}"))
        .filter(|s| {
            view.shopper_owner(s)
                .is_some_and(|m| m.node_id == c.nodes[2].id)
        })
        .take(3)
        .collect();
    let mut client = c.client(0).await;
    let mut queued = 0;
    for n in 0..8 {
        if n == 3 {
            c.peer_proxies[&2].set_replies_cut(true);
        }
        if n == 6 {
            c.peer_proxies[&2].set_replies_cut(false);
        }
        for shopper in &owned_by_2 {
            let mut req = tonic::Request::new(pb::TrackRequest {
                events: vec![event(
                    shopper,
                    pb::EventType::View,
                    &format!("sku-{:06}", 200 + n),
                )],
                request_id: String::new(),
            });
            req.set_timeout(Duration::from_secs(2));
            let r = client.track(req).await.expect("acknowledged").into_inner();
            assert_eq!(r.accepted, 1);
            queued += r.queued;
        }
    }
    assert!(
        queued >= 3,
        "the calls whose answers were lost were not queued ({queued})"
    );
    c.wait_for_outboxes(Duration::from_secs(30)).await;
    let duplicates = c.metric(2, "aisle_outbox_duplicates_total").await;
    // Each shopper's first call after the cut reached the owner on the open connection and was applied; resent
    // from the outbox, it is a duplicate.
    assert!(
        duplicates >= 1.0,
        "the owner refused no duplicate: the resent calls were applied again or never applied"
    );
    let mut admin = c.admin(0).await;
    let expected: Vec<String> = (0..8).map(|n| format!("sku-{:06}", 200 + n)).collect();
    for shopper in &owned_by_2 {
        let held = describe(&mut admin, shopper).await;
        assert_eq!(
            (
                held.events_applied,
                &held.recent_item_ids,
                held.served_by.as_str()
            ),
            (8, &expected, c.nodes[2].id.as_str()),
            "{shopper}"
        );
    }
    println!("lost answers: {queued} calls queued, {duplicates} duplicates refused by the owner");
}

/// A shopper forgotten while their events wait in a cut-off node's outbox does not come back when that node
/// returns: the entries were received before the erasure, and the owner's tombstone drops them at delivery. The
/// other shopper's waiting events are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_before_an_erasure_never_bring_the_shopper_back() {
    let c = TestCluster::builder()
        .nodes(3)
        .lease_ttl_secs(3)
        .isolatable(2)
        .start()
        .await;
    c.wait_for_view(&[0, 1, 2], 3, Duration::from_secs(60))
        .await;
    c.isolate(2, true);
    c.wait_ready(2, 503, Duration::from_secs(10)).await;
    c.wait_for_view(&[0, 1], 2, Duration::from_secs(20)).await;
    let mut cut_off = c.client(2).await;
    for (shopper, n) in [("erased-later", 3), ("kept", 2)] {
        for k in 0..n {
            let r = cut_off
                .track(pb::TrackRequest {
                    events: vec![event(
                        shopper,
                        pb::EventType::View,
                        &format!("sku-{:06}", 300 + k),
                    )],
                    request_id: String::new(),
                })
                .await
                .expect("acknowledged into the outbox")
                .into_inner();
            assert_eq!((r.accepted, r.queued), (1, 1), "{r:?}");
        }
    }
    let mut admin = c.admin(0).await;
    let forgotten = admin
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: "erased-later".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgotten.receipts.len(), 2, "{forgotten:?}");
    c.isolate(2, false);
    c.wait_for_view(&[0, 1, 2], 3, Duration::from_secs(20))
        .await;
    c.wait_for_outboxes(Duration::from_secs(20)).await;
    let erased = describe(&mut admin, "erased-later").await;
    assert!(
        !erased.has_session && erased.events_applied == 0,
        "the forgotten shopper came back from the outbox: {erased:?}"
    );
    let kept = describe(&mut admin, "kept").await;
    assert_eq!(kept.events_applied, 2, "{kept:?}");
    let mut dropped = 0.0;
    for i in 0..3 {
        dropped += c.metric(i, "aisle_outbox_entries_dropped_total").await;
    }
    assert_eq!(
        dropped, 3.0,
        "each of the forgotten shopper's three entries is dropped as erased"
    );
}

/// Fault 5: etcd stopped for 20 s — four lease TTLs — under mixed load (Decide and Track on every node). The
/// members hold their view on each other's promise: no call fails, the answers stay FRESH from one owner per
/// shopper, and the view is the same one when etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_fails_no_call_and_ownership_holds() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let epoch_before = c.status(0).await.unwrap().epoch;
    let population = shoppers(150, "etcd");
    warm(&c, &population).await;
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let driver = Driver::start_mixed(addrs(&c), targets, population, 100, false, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = driver.started.elapsed();
    c.etcd.kill();
    let outage = Duration::from_secs(20);
    let held = Instant::now() + outage;
    // Every node stays a member (ready) through the outage: checked every second.
    while Instant::now() < held {
        for i in 0..3 {
            let status = c.status(i).await.expect("the node answers");
            assert!(
                status.member && status.epoch == epoch_before,
                "node {i} lost its view {:?} into the outage: {status:?}\n{}",
                driver.started.elapsed() - stopped_at,
                c.nodes[i].log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let restarted_at = driver.started.elapsed();
    c.etcd.restart();
    c.etcd.wait_healthy(Duration::from_secs(20)).await;
    c.wait_for_members(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = driver.finish().await;
    let failed: Vec<_> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} failed calls, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let during: Vec<_> = records
        .iter()
        .filter(|r| r.at >= stopped_at && r.at <= restarted_at)
        .collect();
    let tracks = during.iter().filter(|r| r.track).count();
    let decides: Vec<_> = during.iter().filter(|r| !r.track).collect();
    let fresh = decides
        .iter()
        .filter(|r| r.tier == pb::FallbackTier::Fresh)
        .count();
    println!(
        "etcd outage {outage:?}: {} decides ({fresh} FRESH), {tracks} tracks, 0 failed",
        decides.len()
    );
    assert!(tracks > 100 && decides.len() > 500, "the load ran");
    assert!(
        fresh * 100 >= decides.len() * 99,
        "{fresh} of {} FRESH during the outage",
        decides.len()
    );
    // One owner per shopper across the whole outage, not only per epoch.
    let mut owners: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in decides.iter().filter(|r| r.tier == pb::FallbackTier::Fresh) {
        owners.entry(&r.shopper).or_default().insert(&r.served_by);
    }
    assert!(owners.values().all(|o| o.len() == 1), "{owners:?}");
    assert_single_fresh_owner(&records);
    assert_eq!(c.status(0).await.unwrap().members.len(), 3);
}

/// Push across nodes: a handheld on any node gets its store's events from every node, in order; when its node
/// dies it resumes on another without gap or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handhelds_get_every_nodes_events_in_order_and_resume_elsewhere() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let store = "store-42";
    // The handheld's node: one that does not order the store's events.
    let view = c.view(0).await;
    let orderer = view.store_owner(store).unwrap().node_id.clone();
    let handheld_node = (0..3).find(|&i| c.nodes[i].id != orderer).unwrap();
    let other_node = (0..3)
        .find(|&i| i != handheld_node && c.nodes[i].id != orderer)
        .unwrap();
    let mut associates = aisle_proto::v1::associate_service_client::AssociateServiceClient::new(
        common::cluster::connect(&c.nodes[handheld_node].addr())
            .await
            .unwrap(),
    );
    let mut stream = associates
        .subscribe(pb::SubscribeRequest {
            store_id: store.into(),
            associate_id: "hh-1".into(),
            kinds: vec![],
            resume_after: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Low-stock items added to carts by in-store shoppers owned by every node: one replenish event each.
    let catalog = common::catalog();
    let low: Vec<String> = (0..catalog.len() as u32)
        .filter(|&i| (1..=3).contains(&catalog.item(i).stock) && catalog.min_age(i) == 0)
        .map(|i| catalog.item(i).id.to_string())
        .take(40)
        .collect();
    let mut producers: HashSet<String> = HashSet::new();
    let mut tracker = c.client(other_node).await;
    let add = |k: usize, item: &str| pb::TrackEvent {
        store_id: store.into(),
        ..event(&format!("push-shopper-{k}"), pb::EventType::AddToCart, item)
    };
    for (k, item) in low.iter().take(20).enumerate() {
        tracker
            .track(pb::TrackRequest {
                events: vec![add(k, item)],
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        producers.insert(e.produced_by.clone());
        seen.push(e.sequence);
    }
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<_>>(),
        "in the store's sequence order"
    );
    assert!(
        producers.len() >= 2,
        "events produced on several nodes: {producers:?}"
    );
    // The handheld's node dies; once its lease is gone, more events come; the handheld resumes on another node
    // after 20.
    c.kill(handheld_node);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != handheld_node).collect();
    c.wait_for_view(&survivors, 2, Duration::from_secs(15))
        .await;
    for (k, item) in low.iter().enumerate().skip(20) {
        tracker
            .track(pb::TrackRequest {
                events: vec![add(k, item)],
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let mut again = aisle_proto::v1::associate_service_client::AssociateServiceClient::new(
        common::cluster::connect(&c.nodes[other_node].addr())
            .await
            .unwrap(),
    )
    .subscribe(pb::SubscribeRequest {
        store_id: store.into(),
        associate_id: "hh-1".into(),
        kinds: vec![],
        resume_after: Some(20),
    })
    .await
    .unwrap()
    .into_inner();
    let mut resumed = Vec::new();
    for _ in 0..20 {
        let e = tokio::time::timeout(Duration::from_secs(15), again.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        resumed.push(e.sequence);
    }
    assert_eq!(resumed, (21..=40).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), again.message())
            .await
            .is_err(),
        "no duplicate"
    );
}

/// Graceful leave of a node holding 10,000 sessions: hand-off time, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_off_ten_thousand_sessions_quickly() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let view = c.view(0).await;
    let leaver = 0;
    let mine: Vec<String> = (0..)
        .map(|k| format!("bulk-{k}"))
        .filter(|s| view.shopper_owner(s).unwrap().node_id == c.nodes[leaver].id)
        .take(10_000)
        .collect();
    let mut client = c.client(leaver).await;
    for chunk in mine.chunks(250) {
        let events = chunk
            .iter()
            .flat_map(|s| {
                (0..3).map(move |k| event(s, pb::EventType::View, &format!("sku-{:06}", 500 + k)))
            })
            .collect();
        let r = client
            .track(pb::TrackRequest {
                events,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 750);
    }
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let follower = follow_members(&c, targets.clone());
    let driver = Driver::start(
        addrs(&c),
        targets,
        mine.iter().take(500).cloned().collect(),
        100,
        true,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let (code, took) = c.terminate(leaver, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    c.wait_for_view(&[1, 2], 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = driver.finish().await;
    follower.abort();
    let log = c.nodes[leaver].log_tail(200);
    let handoff_ms: u64 = log
        .lines()
        .filter(|l| l.contains("sessions handed off"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["elapsed_ms"].as_u64())
        .max()
        .expect("the leaving node logs its hand-off");
    println!(
        "graceful leave: 10,000 sessions handed off in {handoff_ms} ms; node exited {took:?} after SIGTERM"
    );
    assert!(handoff_ms <= 2_000, "{handoff_ms} ms");
    let failed: Vec<_> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} failed calls, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let mut admin = c.admin(1).await;
    for s in mine.iter().step_by(97) {
        let d = describe(&mut admin, s).await;
        assert_eq!(d.events_applied, 3, "{s} kept its context");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_single_fresh_owner(&records);
}

/// Erasure against a fenced owner: the owner is paused (its lease lapses, the others take its shoppers over), the
/// shopper is forgotten through the others, then the owner resumes and rejoins — owning the shopper again, and
/// holding the copy it kept while away. The tombstone in the others' hand-off `done` messages erases that copy
/// before it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_shopper_does_not_come_back_from_a_fenced_owner() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    for i in 0..3 {
        c.wait_ready(i, 200, Duration::from_secs(10)).await;
    }
    let mut admin = c.admin(0).await;
    let mut shopper = String::new();
    for k in 0.. {
        let candidate = format!("fenced-{k}");
        let status = admin
            .cluster_status(pb::ClusterStatusRequest {
                shopper_id: candidate.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if status.shopper_owner == c.nodes[2].id {
            shopper = candidate;
            break;
        }
    }
    let mut client = c.client(0).await;
    let views: Vec<pb::TrackEvent> = ["sku-000010", "sku-000011", "sku-000012"]
        .iter()
        .map(|item| pb::TrackEvent {
            consent: Some(true),
            ..event(&shopper, pb::EventType::View, item)
        })
        .collect();
    client
        .track(pb::TrackRequest {
            events: views,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let describe = |shopper: String| pb::DescribeShopperRequest {
        shopper_id: shopper,
    };
    let before = admin
        .describe_shopper(describe(shopper.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        before.has_session && before.served_by == c.nodes[2].id,
        "{before:?}"
    );

    c.pause(2);
    c.wait_for_view(&[0, 1], 2, Duration::from_secs(30)).await;
    let forgotten = admin
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: shopper.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut erased_on: Vec<&str> = forgotten.receipts.iter().map(|r| r.node.as_str()).collect();
    erased_on.sort_unstable();
    assert_eq!(erased_on, ["node-0", "node-1"], "{forgotten:?}");

    c.resume(2);
    c.wait_for_view(&[0, 1, 2], 3, Duration::from_secs(30))
        .await;
    let mut after = None;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(r) = admin.describe_shopper(describe(shopper.clone())).await {
            let r = r.into_inner();
            if r.served_by == c.nodes[2].id {
                after = Some(r);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = after.expect("the resumed node owns the shopper again");
    assert!(
        !after.has_session && after.recent_item_ids.is_empty(),
        "the fenced owner's copy came back: {after:?}"
    );
    let (_, metrics) = http_get(&c.nodes[2].http(), "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("aisle_sessions_erased_by_tombstone_total")
                && l.split_whitespace().last() == Some("1")
        ),
        "the copy was not erased by the tombstone: {}",
        c.nodes[2].log_tail(40)
    );
}

/// A hand-off batch that arrives late — a Track reached the shopper's owner first — never overwrites the newer
/// session: the batch is sent over the owner's peer port with a cluster certificate, as the member that held the
/// shopper before, under the current view, carrying an older copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_hand_off_batch_does_not_overwrite_a_newer_session() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let view = c.view(0).await;
    let shopper = "late-batch-shopper";
    let owner = view.shopper_owner(shopper).unwrap().clone();
    let sender = view
        .members
        .iter()
        .find(|m| m.node_id != owner.node_id)
        .unwrap()
        .clone();
    // The newer state: two events applied at the owner.
    let mut client = c.client(0).await;
    client
        .track(pb::TrackRequest {
            events: vec![
                pb::TrackEvent {
                    consent: Some(true),
                    ..event(shopper, pb::EventType::View, "sku-000031")
                },
                event(shopper, pb::EventType::View, "sku-000032"),
            ],
            request_id: String::new(),
        })
        .await
        .unwrap();
    // The late batch: the copy from before those events (none yet), written a minute ago.
    let catalog = common::catalog();
    let mut stale = aisle_session::SessionContext::new();
    stale.stamp_version((aisle_domain::now_ms() as u64).saturating_sub(60_000));
    let record = pb::SessionRecord {
        shopper_id: shopper.into(),
        context: serde_json::to_vec(&stale.to_portable(&catalog)).unwrap(),
        version: stale.version(),
    };
    let peer_port = c
        .nodes
        .iter()
        .find(|n| n.id == owner.node_id)
        .unwrap()
        .peer_port;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&common::pki::pki().cluster_ca.cert))
        .domain_name("localhost")
        .identity({
            let peer = common::pki::pki().peer(&sender.node_id);
            Identity::from_pem(&peer.cert, &peer.key)
        });
    let channel = Channel::from_shared(format!("https://127.0.0.1:{peer_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = aisle_proto::v1::peer_service_client::PeerServiceClient::new(channel)
        .hand_off(pb::HandOffRequest {
            epoch: view.epoch,
            from_node: sender.node_id.clone(),
            sessions: vec![record],
            done: false,
            view_fingerprint: view.fingerprint,
            tombstones: Vec::new(),
        })
        .await
        .expect("a batch from a member under the same view is accepted")
        .into_inner();
    assert_eq!(
        answer.installed, 0,
        "the older copy was installed: {answer:?}"
    );
    let held = describe(&mut c.admin(0).await, shopper).await;
    assert_eq!(held.served_by, owner.node_id);
    assert_eq!(held.events_applied, 2, "{held:?}");
    for item in ["sku-000031", "sku-000032"] {
        assert!(held.recent_item_ids.iter().any(|i| i == item), "{held:?}");
    }
}
