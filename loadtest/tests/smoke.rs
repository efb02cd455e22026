//! A few-second smoke of the load generator against a real Aisle node on loopback (the demo world, real gRPC):
//! every scenario runs and reports. No speed verdict: CI machines vary, and figures belong in docs/BENCHMARKS.md.

use std::time::Duration;

use aisle_loadtest::stats::Kind;
use aisle_loadtest::{RunConfig, Scenario, run};
use aisle_node::{Config, RunningNode};
use tokio::net::TcpListener;

async fn node() -> RunningNode {
    let config = Config {
        node_id: "smoke".into(),
        bundle_poll_secs: 0,
        ..Config::default()
    };
    // No bundles configured: the embedded demo world, its model trained at start-up.
    let prepared = aisle_node::prepare(&config).await.expect("demo trains");
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    aisle_node::start(config, prepared, grpc, http)
        .await
        .expect("node starts")
}

fn config(node: &RunningNode, scenario: Scenario) -> RunConfig {
    RunConfig {
        target: format!("http://{}", node.grpc_addr),
        scenario,
        rate: 200.0,
        duration: Duration::from_secs(2),
        // Generous: a loaded CI machine may be slow, and this test judges function, not speed.
        timeout: Duration::from_secs(5),
        progress: false,
        ..RunConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_a_real_node_and_reports() {
    let node = node().await;

    // decide with the floor: both lanes answered, all Decides FRESH and counted by tier.
    let report = run(&RunConfig {
        floor: true,
        floor_window: Duration::from_millis(500),
        ..config(&node, Scenario::Decide)
    })
    .await
    .expect("decide runs");
    assert_eq!(
        report.main.errors(),
        0,
        "{:?}",
        report.main.errors_by_code()
    );
    assert!(report.main.ok() > 0);
    assert_eq!(
        report.main.tiers.get("FRESH").copied(),
        Some(report.main.ok())
    );
    let (floor, _, _) = report.floor.as_ref().expect("a floor lane");
    assert!(floor.ok() > 0 && floor.errors() == 0);
    let json = report.to_json();
    for key in [
        "scenario",
        "offered_rps",
        "achieved_rps",
        "ok",
        "errors",
        "errors_by_code",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "tiers",
        "floor_p50_ms",
        "floor_p99_ms",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}: {json}");
    }
    assert_eq!(json["scenario"], "decide");
    assert!(json["p99_ms"].as_f64().unwrap() > 0.0);

    // mixed: Track and Decide both answered, events counted.
    let report = run(&config(&node, Scenario::Mixed))
        .await
        .expect("mixed runs");
    assert_eq!(
        report.main.errors(),
        0,
        "{:?}",
        report.main.errors_by_code()
    );
    assert!(report.main.kind(Kind::Track).ok > 0);
    assert!(report.main.kind(Kind::Decide).ok > 0);
    assert!(report.main.tracked_events > 0);
    assert_eq!(
        report.main.unknown_items, 0,
        "the generator names the demo catalog's items"
    );

    // subscribe: handhelds receive assist events produced by the node from the tracked sessions.
    let report = run(&RunConfig {
        handhelds: 5,
        stores: 5,
        ..config(&node, Scenario::Subscribe)
    })
    .await
    .expect("subscribe runs");
    assert_eq!(
        report.main.errors(),
        0,
        "{:?}",
        report.main.errors_by_code()
    );
    let delivery = report.delivery.as_ref().expect("delivery figures");
    assert!(delivery.delivered > 0, "no assist event arrived");
    assert!(
        delivery.stream_errors.is_empty(),
        "{:?}",
        delivery.stream_errors
    );

    node.shutdown().await;
}
