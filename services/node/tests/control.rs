//! The control records, end to end: a real etcd (TLS, client certificates, auth), real `aisle` node processes and
//! real TLS gRPC clients. Kill switches reach every member within a second, survive restarts and need
//! `admin:write`; a promotion recorded in etcd reaches a member started after it; ClusterStatus shows what every
//! member serves. Static mode (no etcd) is checked on an in-process node.

mod common;

use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use common::cluster::{TempDir, TestCluster, http_get};
use common::pki;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A Decide for `shopper` on `surface` with an item on screen (so the RULES rung has a category to draw from).
fn decide_req(shopper: &str, surface: pb::Surface) -> pb::DecideRequest {
    pb::DecideRequest {
        context_item_ids: vec![common::catalog().items[0].id.to_string()],
        ..common::decide_req(shopper, surface)
    }
}

async fn decide(
    client: &mut DecisionServiceClient<Channel>,
    shopper: &str,
    surface: pb::Surface,
) -> Result<pb::DecideResponse, tonic::Status> {
    let mut req = Request::new(decide_req(shopper, surface));
    req.set_timeout(Duration::from_secs(2));
    client.decide(req).await.map(|r| r.into_inner())
}

/// Whether a decision was answered from RULES because of the kill switch with this reason.
fn switched(r: &pb::DecideResponse, reason: &str) -> bool {
    r.fallback_tier == pb::FallbackTier::Rules as i32
        && r.fallback_reason.starts_with("control: kill_switch (")
        && r.fallback_reason.contains(reason)
}

fn fresh(r: &pb::DecideResponse) -> bool {
    r.fallback_tier == pb::FallbackTier::Fresh as i32 && r.fallback_reason.is_empty()
}

/// A request carrying a bearer token (it takes precedence over the harness's operator certificate).
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn switch_on(surface: &str, reason: &str) -> pb::SetKillSwitchRequest {
    pb::SetKillSwitchRequest {
        on: true,
        surface: surface.into(),
        tier: pb::FallbackTier::Rules as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

/// For each node, a shopper it owns (asked of node 0).
async fn owned_shoppers(c: &TestCluster, tag: &str) -> Vec<String> {
    let mut admin = c.admin(0).await;
    let mut found: Vec<Option<String>> = vec![None; c.nodes.len()];
    for k in 0..1_000 {
        let shopper = format!("{tag}-{k}");
        let owner = admin
            .cluster_status(pb::ClusterStatusRequest {
                shopper_id: shopper.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .shopper_owner;
        if let Some(i) = c.nodes.iter().position(|n| n.id == owner)
            && found[i].is_none()
        {
            found[i] = Some(shopper);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("no shopper for some node: {found:?}");
}

/// Asks node `i` about its own shopper every 10 ms until `done` holds for the answer (made by node `i`); how long
/// that took from `since`. Fails after `within`.
async fn until_node_answers(
    c: &TestCluster,
    i: usize,
    shopper: &str,
    since: Instant,
    within: Duration,
    done: impl Fn(&pb::DecideResponse) -> bool,
) -> Duration {
    let mut client = c.client(i).await;
    let node = c.nodes[i].id.clone();
    loop {
        let r = decide(&mut client, shopper, pb::Surface::Home).await;
        if let Ok(r) = &r
            && r.served_by == node
            && done(r)
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{node} did not answer as expected within {within:?}; last answer: {r:?}\n{}",
            c.nodes[i].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_reaches_every_member_within_a_second_and_survives_a_restart() {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let shoppers = owned_shoppers(&c, "ks").await;
    for (i, shopper) in shoppers.iter().enumerate() {
        let since = Instant::now();
        until_node_answers(&c, i, shopper, since, Duration::from_secs(20), fresh).await;
    }

    // On, asked of node 0: every member applies it within a second of the answer.
    let reason = "drill: the ranker misbehaves";
    let mut admin = c.admin(0).await;
    let asked = Instant::now();
    let r = admin
        .set_kill_switch(switch_on("home", reason))
        .await
        .unwrap()
        .into_inner();
    let returned = Instant::now();
    assert!(r.changed, "{r:?}");
    assert_eq!(r.scope, "cluster");
    assert_eq!(r.active.len(), 1, "{r:?}");
    assert_eq!(
        (
            r.active[0].surface.as_str(),
            r.active[0].channel.as_str(),
            r.active[0].tier
        ),
        ("home", "", pb::FallbackTier::Rules as i32)
    );
    assert_eq!(r.active[0].reason, reason);
    assert_eq!(r.active[0].caller, "cert:operator");
    let applied = |i: usize| {
        until_node_answers(
            &c,
            i,
            &shoppers[i],
            returned,
            Duration::from_secs(10),
            |d| switched(d, reason),
        )
    };
    let (w0, w1, w2) = tokio::join!(applied(0), applied(1), applied(2));
    let waits = [w0, w1, w2];
    let call = returned - asked;
    eprintln!(
        "kill switch applied by each node {waits:?} after the answer ({call:?} after the call; confirmed by {:?})",
        r.applied_by
    );
    for (i, wait) in waits.iter().enumerate() {
        assert!(
            *wait < Duration::from_secs(1),
            "node-{i} applied the switch {wait:?} after the answer (all: {waits:?})"
        );
    }
    // The answer waits (up to a second) for the members to confirm in etcd; even counted from the call, every
    // member applied the switch within a second.
    assert!(
        call + *waits.iter().max().unwrap() < Duration::from_secs(1),
        "{call:?} + {waits:?}"
    );
    let mut confirmed = r.applied_by.clone();
    confirmed.sort();
    assert_eq!(confirmed, ["node-0", "node-1", "node-2"], "{r:?}");
    // Other surfaces are untouched; the counters say what happened.
    let mut client = c.client(1).await;
    let cart = decide(&mut client, &shoppers[1], pb::Surface::Cart)
        .await
        .unwrap();
    assert!(fresh(&cart), "{cart:?}");
    let metrics = http_get(&c.nodes[1].http(), "/metrics").await.1;
    assert_eq!(metric(&metrics, "aisle_kill_switch_active"), Some(1.0));
    assert!(
        metric(
            &metrics,
            "aisle_kill_switch_decisions_total{tier=\"rules\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    // The record is in etcd, with the switch.
    let mut etcd = c.etcd.client(&pki::pki().etcd_root).await.unwrap();
    let key = format!("{}kill-switch", c.control_prefix());
    let stored = etcd.get(key.as_str(), None).await.unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(stored.kvs()[0].value()).expect("a JSON record");
    assert_eq!(record["switches"][0]["reason"], reason, "{record}");

    // A restarted node applies it again as soon as it is back.
    c.restart(2);
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let back = Instant::now();
    until_node_answers(&c, 2, &shoppers[2], back, Duration::from_secs(10), |d| {
        switched(d, reason)
    })
    .await;
    let status = c.status(2).await.unwrap();
    assert_eq!(status.kill_switches.len(), 1, "{status:?}");

    // Off, asked of another node: FRESH again everywhere.
    let mut admin = c.admin(1).await;
    let off = admin
        .set_kill_switch(pb::SetKillSwitchRequest {
            on: false,
            surface: "home".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let returned = Instant::now();
    assert!(off.changed && off.active.is_empty(), "{off:?}");
    for (i, shopper) in shoppers.iter().enumerate() {
        until_node_answers(&c, i, shopper, returned, Duration::from_secs(5), fresh).await;
    }
    // Turning off what is not on changes nothing.
    let again = admin
        .set_kill_switch(pb::SetKillSwitchRequest {
            on: false,
            surface: "home".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_needs_admin_write_and_names_what_is_wrong_with_a_request() {
    let c = TestCluster::builder().nodes(1).start().await;
    c.wait_for_members(1, Duration::from_secs(60)).await;
    let mut admin = c.admin(0).await;
    // admin:read is not enough; admin:write is.
    let denied = admin
        .set_kill_switch(with_token(
            switch_on("cart", "scope check"),
            pki::TOKEN_ADMIN_READ,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let decide_only = admin
        .set_kill_switch(with_token(
            switch_on("cart", "scope check"),
            pki::TOKEN_DECIDE,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        decide_only.code(),
        Code::PermissionDenied,
        "{decide_only:?}"
    );
    let allowed = admin
        .set_kill_switch(with_token(
            switch_on("cart", "scope check"),
            pki::TOKEN_ADMIN_WRITE,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.active[0].caller, "token:ops-write", "{allowed:?}");
    assert_eq!(allowed.applied_by, ["node-0"], "{allowed:?}");

    // Each invalid request names its field.
    let long = "x".repeat(501);
    let cases = [
        (switch_on("attic", "r"), "surface"),
        (
            pb::SetKillSwitchRequest {
                channel: "fax".into(),
                ..switch_on("", "r")
            },
            "channel",
        ),
        (switch_on("", "r"), "all"),
        (
            pb::SetKillSwitchRequest {
                all: true,
                ..switch_on("home", "r")
            },
            "all",
        ),
        (switch_on("home", ""), "reason"),
        (switch_on("home", &long), "reason"),
        (
            pb::SetKillSwitchRequest {
                tier: pb::FallbackTier::Fresh as i32,
                ..switch_on("home", "r")
            },
            "tier",
        ),
    ];
    for (req, field) in cases {
        let e = admin.set_kill_switch(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{req:?}: {}",
            e.message()
        );
    }
    // Nothing invalid was applied: the one valid switch is all there is.
    let status = c.status(0).await.unwrap();
    assert_eq!(status.kill_switches.len(), 1, "{status:?}");
    // Off for everything.
    let off = admin
        .set_kill_switch(pb::SetKillSwitchRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(off.active.is_empty(), "{off:?}");
}

#[tokio::test]
async fn in_static_mode_a_kill_switch_holds_in_the_nodes_memory() {
    let mut t = common::TestNode::start().await;
    let before = t.decide(decide_req("static-1", pb::Surface::Home)).await;
    assert!(fresh(&before), "{before:?}");
    let r = t
        .admin
        .set_kill_switch(pb::SetKillSwitchRequest {
            on: true,
            all: true,
            tier: pb::FallbackTier::Generic as i32,
            reason: "freeze for the audit".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.scope, "node");
    // Applied when the call returns: every surface answers GENERIC, still under the guardrails (items present,
    // none excluded as unknown).
    for surface in [pb::Surface::Home, pb::Surface::Cart] {
        let d = t.decide(decide_req("static-1", surface)).await;
        assert_eq!(d.fallback_tier, pb::FallbackTier::Generic as i32, "{d:?}");
        assert_eq!(
            d.fallback_reason,
            "control: kill_switch (surface any, channel any: freeze for the audit)"
        );
        assert!(!d.items.is_empty());
    }
    let status = t
        .admin
        .cluster_status(pb::ClusterStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.mode.as_str(), status.kill_switches.len()),
        ("static", 1)
    );
    assert!(
        status.desired.is_none() && !status.version_skew,
        "{status:?}"
    );
    assert_eq!(
        status.members[0].versions.as_ref().unwrap().default_model,
        before.model_version
    );
    t.admin
        .set_kill_switch(pb::SetKillSwitchRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let after = t.decide(decide_req("static-1", pb::Surface::Home)).await;
    assert!(fresh(&after), "{after:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switches_hold_while_etcd_is_down_and_a_node_started_meanwhile_applies_them_when_it_answers()
 {
    let mut c = TestCluster::builder().nodes(3).start().await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let shoppers = owned_shoppers(&c, "outage").await;
    let reason = "drill: etcd outage";
    c.admin(0)
        .await
        .set_kill_switch(switch_on("home", reason))
        .await
        .unwrap();

    // etcd goes away: for longer than the re-read interval (3 s), every node keeps applying the switch.
    c.etcd.kill();
    let cut = Instant::now();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(c.client(i).await);
    }
    let mut answers = 0;
    while cut.elapsed() < Duration::from_secs(5) {
        for (i, client) in clients.iter_mut().enumerate() {
            let d = decide(client, &shoppers[i], pb::Surface::Home)
                .await
                .unwrap();
            assert!(
                switched(&d, reason),
                "{:?} after etcd stopped: {d:?}",
                cut.elapsed()
            );
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answers >= 30, "{answers}");

    // A node (re)started while etcd is down knows no switch; it applies the switch once etcd answers.
    c.restart(1);
    let restarted = Instant::now();
    let d = loop {
        if let Ok(channel) = common::cluster::connect(&c.nodes[1].addr()).await
            && let Ok(d) = decide(
                &mut DecisionServiceClient::new(channel),
                &shoppers[1],
                pb::Surface::Home,
            )
            .await
        {
            break d;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "node-1 did not answer after its restart:\n{}",
            c.nodes[1].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!d.fallback_reason.contains("kill_switch"), "{d:?}");
    c.etcd.restart();
    c.etcd.wait_healthy(Duration::from_secs(30)).await;
    let healed = Instant::now();
    until_node_answers(&c, 1, &shoppers[1], healed, Duration::from_secs(20), |d| {
        switched(d, reason)
    })
    .await;
}

/// Node 0's ClusterStatus once `ok` holds for it (within `within`).
async fn status_when(
    c: &TestCluster,
    within: Duration,
    what: &str,
    ok: impl Fn(&pb::ClusterStatusResponse) -> bool,
) -> pb::ClusterStatusResponse {
    let started = Instant::now();
    loop {
        let status = c.status(0).await;
        if let Some(s) = &status
            && ok(s)
        {
            return status.unwrap();
        }
        assert!(
            started.elapsed() < within,
            "not within {within:?}: {what}; last status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn served(s: &pb::ClusterStatusResponse, node: &str) -> Option<pb::FleetVersions> {
    s.members
        .iter()
        .find(|m| m.node_id == node)
        .and_then(|m| m.versions.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_reaches_a_member_started_after_it_and_skew_is_reported() {
    let files = TempDir::new("control-models");
    let candidate = common::candidate_file(&files.0, "fleet-candidate-2");
    let stable = common::demo().model.0.header.version.clone();
    let mut c = TestCluster::builder().nodes(0).start().await;
    for _ in 0..3 {
        let i = c.add_node();
        c.start_with_candidate(i, &candidate);
    }
    c.wait_for_members(3, Duration::from_secs(60)).await;

    // The first node recorded what it serves; every member publishes the same.
    let status = status_when(
        &c,
        Duration::from_secs(20),
        "every member's versions",
        |s| s.members.iter().all(|m| m.versions.is_some()) && s.desired.is_some(),
    )
    .await;
    let desired = status.desired.as_ref().unwrap();
    assert_eq!(desired.change, "seed");
    let recorded = desired.versions.as_ref().unwrap();
    assert_eq!(
        (
            recorded.default_model.as_str(),
            recorded.candidate_model.as_str()
        ),
        (stable.as_str(), "fleet-candidate-2")
    );
    assert!(!status.version_skew, "{status:?}");
    for m in &status.members {
        assert_eq!(m.versions.as_ref(), Some(recorded), "{status:?}");
    }

    // Promote, asked of node 1: the record changes and every member follows.
    let promoted = c
        .admin(1)
        .await
        .promote_model(pb::PromoteModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.default_model, "fleet-candidate-2");
    assert_eq!(promoted.members.len(), 3, "{promoted:?}");
    assert!(
        promoted
            .members
            .iter()
            .all(|m| m.converged && m.default_model == "fleet-candidate-2"),
        "{promoted:?}"
    );
    let shoppers = owned_shoppers(&c, "fleet").await;
    for (i, shopper) in shoppers.iter().enumerate() {
        until_node_answers(
            &c,
            i,
            shopper,
            Instant::now(),
            Duration::from_secs(5),
            |d| d.model_version == "fleet-candidate-2",
        )
        .await;
    }

    // A node restarted after the promotion loads the old default and the candidate from its files, reads the
    // record, and promotes within seconds of rejoining.
    c.start_with_candidate(2, &candidate);
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let rejoined = Instant::now();
    let converged = until_node_answers(
        &c,
        2,
        &shoppers[2],
        rejoined,
        Duration::from_secs(10),
        |d| d.model_version == "fleet-candidate-2",
    )
    .await;
    assert!(converged < Duration::from_secs(5), "{converged:?}");
    let status = status_when(
        &c,
        Duration::from_secs(10),
        "no skew after convergence",
        |s| !s.version_skew && s.members.len() == 3,
    )
    .await;
    for m in &status.members {
        let v = m.versions.as_ref().unwrap();
        assert_eq!(
            (
                v.default_model.as_str(),
                v.candidate_model.as_str(),
                v.previous_model.as_str()
            ),
            ("fleet-candidate-2", "", stable.as_str()),
            "{status:?}"
        );
        assert!(m.skew.is_empty(), "{status:?}");
    }

    // A node restarted without the promoted model cannot follow: it serves what it has and reports skew.
    c.restart(1);
    c.wait_for_members(3, Duration::from_secs(60)).await;
    let status = status_when(&c, Duration::from_secs(15), "node-1 skewed", |s| {
        s.version_skew
            && s.members
                .iter()
                .any(|m| m.node_id == "node-1" && m.skew.iter().any(|f| f == "default_model"))
    })
    .await;
    assert_eq!(
        served(&status, "node-1").unwrap().default_model,
        stable,
        "{status:?}"
    );
    let http = c.nodes[1].http();
    common::eventually("node-1 exports its skew", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            metric(
                &http_get(&http, "/metrics").await.1,
                "aisle_fleet_version_skew",
            ) == Some(1.0)
        }
    })
    .await;
    // Given the candidate file again, it converges.
    c.start_with_candidate(1, &candidate);
    c.wait_for_members(3, Duration::from_secs(60)).await;
    status_when(&c, Duration::from_secs(15), "node-1 converged", |s| {
        !s.version_skew
            && served(s, "node-1").is_some_and(|v| v.default_model == "fleet-candidate-2")
    })
    .await;

    // Roll back, asked of node 2: the whole fleet goes back.
    let rolled = c
        .admin(2)
        .await
        .rollback_model(pb::RollbackModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.default_model, stable);
    assert!(
        rolled
            .members
            .iter()
            .all(|m| m.converged && m.default_model == stable),
        "{rolled:?}"
    );
}
