//! A refit after an erasure excludes the shopper: a node writes its event log (shoppers named by pseudonym),
//! `aisle-train fit` learns from it, the shopper is forgotten, and the same command on the same log learns nothing
//! of them — the items only they looked at are gone from the model, and no session of theirs is read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aisle_node::bundles::{Prepared, embedded_experiments, embedded_rules};
use aisle_node::{Config, start};
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use aisle_ranking::Model;
use aisle_trainer::data::{Format, read_sessions};
use tokio::net::TcpListener;

fn s64(n: usize) -> i64 {
    i64::try_from(n).unwrap()
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("aisle-trainer-erasure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `aisle-train fit` on the event log; the model's items.
fn fit(log: &Path, out: &Path) -> Vec<String> {
    let run = Command::new(env!("CARGO_BIN_EXE_aisle-train"))
        .args(["fit", "--train"])
        .arg(log)
        .arg("--out")
        .arg(out)
        .output()
        .expect("aisle-train runs");
    assert!(
        run.status.success(),
        "aisle-train fit failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    Model::from_bytes(&std::fs::read(out).unwrap())
        .expect("a model bundle")
        .data
        .items
}

/// A consented view `hours_ago` hours ago.
fn view(shopper: &str, item: &str, hours_ago: i64) -> pb::TrackEvent {
    let at_ms = aisle_domain::now_ms() - hours_ago * 3_600_000;
    pb::TrackEvent {
        shopper_id: shopper.into(),
        r#type: pb::EventType::View as i32,
        item_id: item.into(),
        consent: Some(true),
        timestamp: Some(prost_types::Timestamp {
            seconds: at_ms / 1000,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refit_after_forget_shopper_learns_nothing_of_the_shopper() {
    let dir = scratch();
    let log = dir.join("events.jsonl");
    let (catalog, model) =
        aisle_node::bundles::demo::demo(aisle_domain::now_ms()).expect("demo trains");
    let config = Config {
        node_id: "erasure-node".into(),
        event_log: Some(log.clone()),
        log_sync_ms: 20,
        ranking_shards: 1,
        session_shards: 2,
        bundle_poll_secs: 0,
        ..Config::default()
    };
    let prepared = Prepared {
        catalog: Some(catalog),
        model: (model, "demo".into()),
        candidate: None,
        rules: embedded_rules(),
        experiments: embedded_experiments(),
        files: Vec::new(),
        trusted: None,
    };
    let node = start(
        config,
        prepared,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .expect("node starts");
    let url = format!("http://{}", node.grpc_addr);
    let mut decisions = DecisionServiceClient::connect(url.clone()).await.unwrap();
    let mut admin = AdminServiceClient::connect(url).await.unwrap();

    // Many shoppers browse the first items, over three days (the trainer learns from earlier sessions what it
    // ranks in later ones); one shopper alone browses three others.
    let mut events = Vec::new();
    for s in 0..200 {
        let hours_ago = 72 - s64(s) * 72 / 200;
        for item in ["sku-000001", "sku-000002", "sku-000003", "sku-000004"] {
            events.push(view(&format!("crowd-{s}"), item, hours_ago));
        }
    }
    let only_theirs = ["sku-000401", "sku-000402", "sku-000403"];
    for hours_ago in [60, 30, 1] {
        for item in only_theirs {
            events.push(view("erased-shopper", item, hours_ago));
        }
    }
    let tracked = events.len();
    for chunk in events.chunks(100) {
        decisions
            .track(pb::TrackRequest {
                events: chunk.to_vec(),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count()
        < tracked
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the event log was not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = fit(&log, &dir.join("before.bin"));
    for item in only_theirs {
        assert!(
            before.iter().any(|i| i == item),
            "{item}: the shopper's items are learnt before the erasure"
        );
    }
    let forgotten = admin
        .forget_shopper(pb::ForgetShopperRequest {
            shopper_id: "erased-shopper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgotten.receipts[0].event_log_records_removed, 9);

    let after = fit(&log, &dir.join("after.bin"));
    for item in only_theirs {
        assert!(
            !after.iter().any(|i| i == item),
            "{item}: the refit still learnt from the erased shopper"
        );
    }
    assert!(
        after.iter().any(|i| i == "sku-000001"),
        "the others' data is kept"
    );
    let sessions = read_sessions(&log, Some(Format::Events)).unwrap();
    assert!(
        sessions
            .iter()
            .all(|s| !s.id.contains(&forgotten.shopper_ref)),
        "a session of the erased shopper is still read"
    );
    assert_eq!(
        sessions.iter().map(|s| s.events.len()).sum::<usize>(),
        tracked - 9
    );
    node.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
