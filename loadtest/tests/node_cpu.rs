//! `--metrics-url`: the node's CPU per request, read from a real node's `/metrics` (the demo world, real gRPC and
//! HTTP on loopback), from the library and from the binary, in `run` and `ramp`; and a clear failure when the URL
//! serves no CPU time.

use std::process::{Command, Output};
use std::time::Duration;

use aisle_loadtest::{RunConfig, Scenario, run};
use aisle_node::{Config, RunningNode};
use serde_json::Value;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_aisle-loadtest");

async fn node() -> RunningNode {
    let config = Config {
        node_id: "cpu".into(),
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

async fn run_bin(args: String) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(args.split_whitespace())
            .output()
            .expect("run binary")
    })
    .await
    .expect("join")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_cpu_per_request_is_reported() {
    let node = node().await;
    let metrics = format!("http://{}/metrics", node.http_addr);

    // The library, with a warm-up and the floor: the window counts every completed request of both lanes. The node
    // runs in this process here, so its CPU includes the generator's: only the arithmetic is checked.
    let report = run(&RunConfig {
        target: format!("http://{}", node.grpc_addr),
        scenario: Scenario::Decide,
        rate: 400.0,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        floor: true,
        floor_window: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
        metrics_url: Some(metrics.clone()),
        ..RunConfig::default()
    })
    .await
    .expect("decide runs");
    let cpu = report
        .node_cpu
        .clone()
        .expect("asked for")
        .expect("measured");
    let (floor, _, _) = report.floor.as_ref().expect("floor lane");
    assert_eq!(
        cpu.requests,
        report.main.ok() + report.main.errors() + floor.ok() + floor.errors()
    );
    assert!(cpu.requests > 0 && cpu.cpu_seconds > 0.0, "{cpu:?}");
    assert!(
        (1.8..4.0).contains(&cpu.window.as_secs_f64()),
        "the window spans the recorded 2 s: {cpu:?}"
    );
    let per_request = cpu.us_per_request().unwrap();
    assert!(per_request.is_finite() && per_request > 0.0, "{cpu:?}");
    let json = report.to_json();
    assert_eq!(
        json["node_cpu_requests"].as_u64(),
        Some(cpu.requests),
        "{json}"
    );
    assert!(json["node_cpu_us_per_request"].as_f64().unwrap() > 0.0);
    assert!(json["node_cpu_error"].is_null());
    assert!(report.to_string().contains("µs per request"), "{report}");

    // The binary, no warm-up, JSON: the node now runs in another process than the generator.
    let v: Value = {
        let out = run_bin(format!(
            "run --target http://{} --scenario decide --rate 500 --duration 2s --timeout 5s --json --metrics-url {metrics}",
            node.grpc_addr
        ))
        .await;
        let text = stdout(&out);
        serde_json::from_str(text.lines().last().unwrap()).expect("JSON")
    };
    assert_eq!(v["node_cpu_requests"], v["sent"], "{v}");
    for key in [
        "node_cpu_us_per_request",
        "node_cpu_seconds",
        "node_cpu_cores",
        "node_cpu_window_s",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    assert!(v["node_cpu_error"].is_null(), "{v}");

    // ramp: every step has its own figure, on its line and in the summary.
    let out = run_bin(format!(
        "ramp --target http://{} --scenario decide --start 200 --step 200 --max 400 --step-duration 1s --settle 0s \
         --timeout 5s --p99-target-ms 1000 --metrics-url {}",
        node.grpc_addr, node.http_addr
    ))
    .await;
    let text = stdout(&out);
    let steps: Vec<&str> = text.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 2, "{text}");
    assert!(steps.iter().all(|l| l.contains(" µs/req (")), "{text}");
    let out = run_bin(format!(
        "ramp --target http://{} --scenario decide --start 300 --step 100 --max 300 --step-duration 1s \
         --timeout 5s --p99-target-ms 1000 --metrics-url {metrics} --json",
        node.grpc_addr
    ))
    .await;
    let text = stdout(&out);
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        summary["steps"][0]["node_cpu_us_per_request"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{summary}"
    );

    // A URL that serves no CPU time stops the run before it starts, saying why.
    let out = run_bin(format!(
        "run --target http://{} --scenario decide --rate 10 --duration 1s --metrics-url http://{}/nothing-here",
        node.grpc_addr, node.http_addr
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the node's CPU time from") && stderr.contains("404"),
        "{stderr}"
    );
    let out = run_bin(format!(
        "run --target http://{} --scenario decide --rate 10 --duration 1s --metrics-url https://{}/metrics",
        node.grpc_addr, node.http_addr
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));

    node.shutdown().await;
}
