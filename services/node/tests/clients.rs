//! Third-party clients against a real node on `127.0.0.1:0`: Python grpcio, which knows the API only through
//! server reflection (v1alpha) and builds its requests from the discovered descriptors.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestNode;

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
