//! Third-party clients against a real node on `127.0.0.1:0`: Python grpcio, which knows the API only through
//! server reflection (v1alpha) and builds its requests from the discovered descriptors, and a Prometheus-style
//! scrape of `/metrics` for the standard process series.

mod common;

use std::path::Path;
use std::time::Duration;

use aisle_proto::v1 as pb;
use common::{TestNode, decide_req, http_get};

/// Long enough for the first run to create `.aisle/grpc-venv` and install its pinned packages.
const CLIENT_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test]
async fn python_grpcio_discovers_the_api_by_reflection_and_calls_it() {
    let t = TestNode::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio/reflect_client.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(t.node.grpc_addr.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {CLIENT_DEADLINE:?}", script.display()))
        .unwrap_or_else(|e| panic!("cannot run python3 (scripts/deps.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(2) => panic!(
            "the grpcio client could not be set up (its venv needs python3-venv and PyPI once):\n{stderr}\n{stdout}"
        ),
        code => {
            panic!("the grpcio client failed ({code:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
    // Shown with `--nocapture`: what the client saw.
    println!("{stdout}");
    for expected in [
        "ok: reflection v1alpha lists ",
        "aisle.v1.DecisionService",
        "grpc.health.v1.Health",
        "ok: descriptors resolved: aisle.v1.DecideRequest",
        "ok: Decide: 5 items ranked 1..5",
        "ok: Decide: fallback tier FALLBACK_TIER_",
        "ok: Track: accepted 4 of 4 events, 0 unknown items",
        "ok: Decide after Track: ",
        "ok: Track of an invalid batch: INVALID_ARGUMENT: events[1].shopper_id",
        "ok: Health/Check (server): SERVING",
        "ok: Health/Check aisle.v1.DecisionService: SERVING",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{stdout}"
    );
    t.stop().await;
}

/// The value of an unlabelled series in a Prometheus text exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_expose_the_process_series_and_cpu_time_grows_with_work() {
    let mut t = TestNode::start().await;
    let (status, text) = http_get(&t.http(), "/metrics").await;
    assert_eq!(status, 200);
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_threads", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} in {text}"
        );
        assert!(series(&text, name).is_some(), "{name} in {text}");
    }
    // The node's own series are still there.
    assert!(text.contains("aisle_active_sessions"), "{text}");
    let start = series(&text, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now && start > now - 3_600.0,
        "start {start}, now {now}"
    );
    // Open sockets are file descriptors: at least the two listeners and this scrape's connection.
    assert!(series(&text, "process_open_fds").unwrap() >= 3.0, "{text}");

    // Each scrape reads the OS afresh: decisions cost CPU, and the counter shows it (it moves by the kernel's
    // tick, so decide until it does, within a deadline).
    let before = series(&text, "process_cpu_seconds_total").unwrap();
    let mut decided = 0;
    let http = t.http();
    let deadline = Duration::from_secs(30);
    let end = tokio::time::Instant::now() + deadline;
    loop {
        for i in 0..50 {
            let r = t
                .decide(decide_req(&format!("cpu-{i}"), pb::Surface::Home))
                .await;
            assert!(!r.items.is_empty());
            decided += 1;
        }
        let (_, text) = http_get(&http, "/metrics").await;
        let after = series(&text, "process_cpu_seconds_total").unwrap();
        if after > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "process_cpu_seconds_total stayed at {before} after {decided} decisions"
        );
    }
    t.stop().await;
}
