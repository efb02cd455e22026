//! The Aisle scenarios against a canned DecisionService/AssociateService: the runner's accounting of tiers,
//! error codes and timeouts, shoppers' event order in `mixed`, and assist delivery in `subscribe`.

mod common;

use std::time::Duration;

use aisle_loadtest::stats::Kind;
use aisle_loadtest::{RunConfig, Scenario, run};
use common::{CannedAisle, aisle_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_counts_tiers_errors_and_timeouts_as_the_server_answered() {
    // Every 25th Decide is held 2 s, well past the 500 ms client timeout.
    let aisle = CannedAisle::new(Duration::ZERO, Duration::from_secs(2));
    let server = aisle_server(aisle.clone()).await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Decide,
        rate: 250.0,
        duration: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        ..RunConfig::default()
    };
    let report = run(&config).await.expect("run completes");
    let c = aisle.counters.lock().unwrap();
    assert!(
        c.violations.is_empty(),
        "{:?}",
        &c.violations[..c.violations.len().min(5)]
    );
    let d = &report.main;
    assert_eq!(d.sent, 250);
    assert_eq!(c.decides, 250);
    assert_eq!(d.ok() + d.errors(), 250);
    for tier in ["FRESH", "CACHED", "RULES", "GENERIC"] {
        assert_eq!(
            d.tiers.get(tier).copied().unwrap_or(0),
            c.tiers[tier],
            "{tier}"
        );
    }
    let by_code = d.errors_by_code();
    assert_eq!(by_code["UNAVAILABLE"], c.errors["UNAVAILABLE"]);
    assert_eq!(by_code["DEADLINE_EXCEEDED"], c.errors["DEADLINE_EXCEEDED"]);
    assert_eq!(by_code.len(), 2, "{by_code:?}");
    // Timeouts are timed at the moment they were given up: the max is about the client timeout.
    assert!(d.max_latency_us() >= 500_000, "{}", d.max_latency_us());
    assert!(d.max_latency_us() < 2_000_000, "{}", d.max_latency_us());
    let json = report.to_json();
    assert_eq!(json["tiers"]["FRESH"], c.tiers["FRESH"]);
    assert_eq!(
        json["errors_by_code"]["UNAVAILABLE"],
        c.errors["UNAVAILABLE"]
    );
    assert_eq!(json["scenario"], "decide");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_keeps_each_shoppers_events_in_order_at_the_offered_rate() {
    // Each Track takes 20 ms, so shoppers are often busy and the generator must pick others.
    let aisle = CannedAisle::new(Duration::from_millis(20), Duration::ZERO);
    let server = aisle_server(aisle.clone()).await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Mixed,
        rate: 400.0,
        duration: Duration::from_secs(1),
        sessions: 40,
        events_per_track: 4,
        ..RunConfig::default()
    };
    let report = run(&config).await.expect("run completes");
    let c = aisle.counters.lock().unwrap();
    assert!(
        c.violations.is_empty(),
        "{:?}",
        &c.violations[..c.violations.len().min(5)]
    );
    let d = &report.main;
    assert_eq!(d.sent, 400);
    assert_eq!(c.tracks + c.decides, 400);
    let track_share = c.tracks as f64 / 400.0;
    assert!(
        (0.6..0.8).contains(&track_share),
        "track share {track_share}"
    );
    assert_eq!(d.kind(Kind::Track).ok, c.tracks);
    assert_eq!(d.tracked_events, c.events);
    let json = report.to_json();
    assert_eq!(json["tracked_events"], c.events);
    let per_s = json["tracked_events_per_s"].as_f64().unwrap();
    assert!((per_s - c.events as f64).abs() < 1.0, "{per_s}");
    assert!(json["track_p99_ms"].as_f64().unwrap() >= 20.0);
    assert!(json["decide_p99_ms"].is_number());
    // The sessions grew past 40 because 20 ms Tracks at 280/s keep ~6 busy at once; never blocked.
    assert!(json["sessions_peak"].as_u64().unwrap() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_measures_delivery_from_the_source_time() {
    let aisle = CannedAisle::new(Duration::ZERO, Duration::ZERO);
    let server = aisle_server(aisle.clone()).await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Subscribe,
        rate: 300.0,
        duration: Duration::from_secs(1),
        handhelds: 3,
        sessions: 30,
        ..RunConfig::default()
    };
    let report = run(&config).await.expect("run completes");
    let published = aisle.counters.lock().unwrap().published;
    let delivery = report.delivery.clone().expect("subscribe reports delivery");
    assert!(
        published > 0,
        "in-store carts must reach the handhelds' stores"
    );
    assert!(delivery.delivered <= published);
    assert!(
        delivery.delivered * 10 >= published * 9,
        "{} of {published} delivered",
        delivery.delivered
    );
    assert_eq!(delivery.by_kind["HIGH_INTENT_CART"], delivery.delivered);
    assert!(
        delivery.stream_errors.is_empty(),
        "{:?}",
        delivery.stream_errors
    );
    let json = report.to_json();
    // The canned server dates the source 2 ms before the Track arrived.
    assert!(json["delivery_p50_ms"].as_f64().unwrap() >= 2.0, "{json}");
    assert!(json["delivery_p99_ms"].as_f64().unwrap() >= json["delivery_p50_ms"].as_f64().unwrap());
    assert_eq!(json["delivered"], delivery.delivered);
    assert_eq!(json["scenario"], "subscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_at_start_when_the_stream_cannot_open() {
    // A server with only health: Subscribe is UNIMPLEMENTED.
    let server = common::health_server().await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Subscribe,
        rate: 10.0,
        duration: Duration::from_millis(200),
        handhelds: 2,
        ..RunConfig::default()
    };
    let err = run(&config).await.unwrap_err().to_string();
    assert!(err.contains("cannot subscribe to store-1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_runs_need_the_health_service_but_decide_does_not() {
    let aisle = CannedAisle::new(Duration::ZERO, Duration::ZERO);
    let server = common::decision_only_server(aisle.clone()).await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Decide,
        rate: 50.0,
        duration: Duration::from_millis(200),
        ..RunConfig::default()
    };
    let report = run(&config).await.expect("decide needs no health service");
    assert_eq!(report.main.sent, 10);
    let floor = RunConfig {
        floor: true,
        ..config.clone()
    };
    let err = run(&floor).await.unwrap_err().to_string();
    assert!(
        err.contains("does not implement grpc.health.v1.Health, which --floor needs"),
        "{err}"
    );
    let health = RunConfig {
        scenario: Scenario::Health,
        ..config
    };
    let err = run(&health).await.unwrap_err().to_string();
    assert!(err.contains("--scenario health"), "{err}");
}
