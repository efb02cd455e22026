//! The binary end to end: `--json` output against a test health server, `--floor`, and exit codes.

mod common;

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aisle-loadtest");

async fn run_bin(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().expect("run binary"))
        .await
        .expect("join")
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn last_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_has_the_required_fields() {
    let server = common::health_server().await;
    let out = run_bin(args(&format!(
        "run --target {} --scenario health --rate 200 --duration 1s --json",
        server.url()
    )))
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = last_json_line(&out);
    assert_eq!(v["scenario"], "health");
    assert_eq!(f(&v, "offered_rps"), 200.0);
    let achieved = f(&v, "achieved_rps");
    assert!((180.0..=205.0).contains(&achieved), "achieved {achieved}");
    assert_eq!(v["ok"], 200);
    assert_eq!(v["errors"], 0);
    assert!(v["errors_by_code"].as_object().unwrap().is_empty());
    let (p50, p90, p99, p999, max) = (
        f(&v, "p50_ms"),
        f(&v, "p90_ms"),
        f(&v, "p99_ms"),
        f(&v, "p999_ms"),
        f(&v, "max_ms"),
    );
    assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= p999, "{v}");
    assert!(p999 <= max * 1.01, "{v}");
    let tiers = v["tiers"].as_object().unwrap();
    for t in ["FRESH", "CACHED", "RULES", "GENERIC"] {
        assert_eq!(tiers[t], 0, "{t}");
    }
    assert!(v.get("floor_p99_ms").is_none());
    assert!(f(&v, "send_lag_max_ms") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_adds_the_floor_fields() {
    let server = common::health_server().await;
    let out = run_bin(args(&format!(
        "run --target {} --scenario health --rate 200 --duration 1s --floor --floor-window 250ms --json",
        server.url()
    )))
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = last_json_line(&out);
    // Two 250 ms windows of each at 200 req/s: 100 requests each.
    assert_eq!(v["ok"], 100, "{v}");
    assert_eq!(v["floor_ok"], 100, "{v}");
    assert!(f(&v, "floor_p50_ms") > 0.0);
    assert!(f(&v, "floor_p99_ms") >= f(&v, "floor_p50_ms"));
    assert!(f(&v, "p99_over_floor_p99") > 0.0);
    let achieved = f(&v, "floor_achieved_rps");
    assert!((180.0..=205.0).contains(&achieved), "{achieved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_and_ramp_json() {
    let server = common::health_server().await;
    let out = run_bin(args(&format!(
        "run --target {} --scenario health --rate 100 --duration 300ms --quiet",
        server.url()
    )))
    .await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("p99 ms") && text.contains("errors: none"),
        "{text}"
    );

    let out = run_bin(args(&format!(
        "ramp --target {} --scenario health --start 50 --step 50 --max 100 --step-duration 300ms --settle 0s \
         --p99-target-ms 500 --json",
        server.url()
    )))
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let v = last_json_line(&out);
    assert_eq!(v["mode"], "ramp");
    assert_eq!(v["saturation_rps"], 100.0);
}

#[tokio::test]
async fn bad_arguments_and_unreachable_targets_exit_non_zero() {
    let out = run_bin(args(
        "run --target 127.0.0.1:1 --scenario health --rate 0 --duration 1s",
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));

    let out = run_bin(args(
        "run --target 127.0.0.1:1 --scenario health --rate 10 --duration 10parsecs",
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run_bin(args(&format!(
        "run --target 127.0.0.1:{port} --scenario health --rate 10 --duration 1s --json"
    )))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
}
