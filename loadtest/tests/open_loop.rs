//! The schedule is open-loop against real gRPC: a stalling server gets requests at the offered rate all the same,
//! and the stall shows up as latency; the ramp finds where a load-sensitive server gives out.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aisle_loadtest::ramp::{RampConfig, ramp};
use aisle_loadtest::target::Target;
use aisle_loadtest::{RunConfig, Scenario, run};
use common::{LoadSensitiveHealth, StallHealth, load_sensitive_health_server, stall_health_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_server_gets_the_full_rate_and_the_stall_shows_as_latency() {
    let stall = Arc::new(StallHealth {
        from: Duration::from_secs(1),
        to: Duration::from_secs(2),
        hold: Duration::from_millis(300),
        ..StallHealth::default()
    });
    let server = stall_health_server(stall.clone()).await;
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Health,
        rate: 200.0,
        duration: Duration::from_secs(3),
        timeout: Duration::from_secs(2),
        ..RunConfig::default()
    };
    let report = run(&config).await.expect("run completes");
    let d = &report.main;
    // Open loop: exactly rate × duration went out and arrived, and the stalled second got its share.
    assert_eq!(d.sent, 600);
    assert_eq!(d.ok(), 600, "errors: {:?}", d.errors_by_code());
    // (Plus the start-up probe: one health check per connection.)
    assert_eq!(stall.received.load(Ordering::SeqCst), 600 + 4);
    let in_stall = stall.received_in_stall.load(Ordering::SeqCst);
    assert!(
        (170..=230).contains(&in_stall),
        "{in_stall} requests arrived during the stall"
    );
    // A third of the requests were held 300 ms: p99 shows it, the median does not.
    let p99 = d.latency_quantile_us(0.99);
    let p50 = d.latency_quantile_us(0.5);
    assert!(p99 >= 300_000, "p99 {p99} µs");
    assert!(p50 < 300_000, "p50 {p50} µs");
    assert!(report.achieved_rps() > 190.0, "{}", report.achieved_rps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_stops_at_the_first_failing_step() {
    // More than 30 requests in 200 ms (150 req/s) makes every answer 150 ms slow.
    let health = Arc::new(LoadSensitiveHealth::new(30, Duration::from_millis(150)));
    let server = load_sensitive_health_server(health).await;
    let target = Target::connect(&server.url(), 2).await.expect("connect");
    let config = RampConfig {
        base: RunConfig {
            target: server.url(),
            scenario: Scenario::Health,
            connections: 2,
            ..RunConfig::default()
        },
        start: 50.0,
        step: 250.0,
        max: 800.0,
        step_duration: Duration::from_millis(600),
        settle: Duration::from_millis(250),
        // Generous: the machine is shared, and only the load-induced 150 ms must fail a step.
        p99_target: Duration::from_millis(75),
        stop_after_failures: 1,
    };
    let mut seen = Vec::new();
    let result = ramp(&target, &config, |s| {
        seen.push((s.report.offered_rps, s.passed))
    })
    .await
    .expect("ramp completes");
    // 50 req/s passes, 300 req/s fails (p99 ≥ 150 ms) and ends the ramp before 550 and 800.
    assert_eq!(seen, vec![(50.0, true), (300.0, false)]);
    assert_eq!(result.saturation_rps, Some(50.0));
    assert!(result.steps[1].reason.as_deref().unwrap().contains("p99"));
    let json = result.to_json("health");
    assert_eq!(json["saturation_rps"], 50.0);
    assert_eq!(json["steps"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_unreachable_target_is_an_error() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = RunConfig {
        target: format!("127.0.0.1:{port}"),
        scenario: Scenario::Health,
        duration: Duration::from_millis(100),
        ..RunConfig::default()
    };
    let err = run(&config).await.unwrap_err().to_string();
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_reports_the_time_it_ran() {
    let counter = Arc::new(StallHealth::default());
    let server = stall_health_server(counter.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = RunConfig {
        target: server.url(),
        scenario: Scenario::Health,
        rate: 200.0,
        duration: Duration::from_secs(20),
        stop: Some(stop.clone()),
        ..RunConfig::default()
    };
    let run = tokio::spawn(async move { run(&config).await });
    // Stop once 100 requests arrived (waiting on the condition, with a deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counter.received.load(Ordering::SeqCst) < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let report = run.await.unwrap().expect("run completes");
    assert!(report.interrupted);
    assert!(
        report.main.sent >= 96 && report.main.sent < 400,
        "{}",
        report.main.sent
    );
    assert!(
        report.duration < Duration::from_secs(2),
        "{:?}",
        report.duration
    );
    // The rate is judged over the time actually run.
    let achieved = report.achieved_rps();
    assert!((180.0..=210.0).contains(&achieved), "{achieved}");
    assert_eq!(report.to_json()["interrupted"], true);
}
