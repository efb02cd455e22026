//! The model lifecycle in a running node: a new model file is picked up and swapped in without a restart, an
//! invalid one is refused while the last good one keeps serving, a canary experiment routes its share of shoppers
//! to the candidate model, and promotion and rollback switch the default.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use aisle_proto::v1 as pb;
use common::{TestNode, decide_req, eventually, http_get};

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("aisle-models-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The demo model under another version label.
fn model_bytes(version: &str) -> Vec<u8> {
    let mut model = common::demo().model.0;
    model.header.version = version.into();
    model.to_bytes()
}

fn write_catalog(files: &Files) {
    let file = common::catalog().to_file();
    std::fs::write(
        files.path("catalog.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_new_model_file_is_swapped_in_and_an_invalid_one_refused() {
    let files = Files::new("swap");
    write_catalog(&files);
    std::fs::write(files.path("model.bin"), model_bytes("model-a")).unwrap();
    let mut config = common::config("swapping-node");
    config.catalog = Some(files.path("catalog.json"));
    config.model = Some(files.path("model.bin"));
    config.bundle_poll_secs = 1;
    let prepared = aisle_node::prepare(&config).await.unwrap();
    let mut t = TestNode::start_with(config, prepared).await;
    assert_eq!(
        t.decide(decide_req("m1", pb::Surface::Home))
            .await
            .model_version,
        "model-a"
    );

    // A new version: decisions move to it without a restart.
    std::fs::write(files.path("model.bin"), model_bytes("model-b")).unwrap();
    let mut decisions = t.decisions.clone();
    eventually("model-b serves", Duration::from_secs(15), || {
        let mut d = decisions.clone();
        async move {
            d.decide(decide_req("m1", pb::Surface::Home))
                .await
                .unwrap()
                .into_inner()
                .model_version
                == "model-b"
        }
    })
    .await;
    let status = t
        .admin
        .bundle_status(pb::BundleStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let model = status
        .bundles
        .iter()
        .find(|b| b.kind == "model" && b.role == "default")
        .unwrap();
    assert_eq!(model.version, "model-b");
    assert_eq!(model.content_hash.len(), 64);

    // A truncated file is refused: model-b keeps serving, and metrics say so.
    let mut broken = model_bytes("model-c");
    broken.truncate(broken.len() / 2);
    std::fs::write(files.path("model.bin"), broken).unwrap();
    let http = t.http();
    eventually("the refusal is counted", Duration::from_secs(15), || {
        let http = http.clone();
        async move {
            http_get(&http, "/metrics")
                .await
                .1
                .contains("aisle_bundle_refused_total{kind=\"model\"} 1")
        }
    })
    .await;
    for _ in 0..20 {
        let r = decisions
            .decide(decide_req("m1", pb::Surface::Home))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_version, "model-b");
        assert_eq!(r.fallback_tier, pb::FallbackTier::Fresh as i32);
    }
    // A model trained on another feature schema is refused with the reason.
    let mut other = common::demo().model.0;
    other.header.version = "model-z".into();
    other.header.feature_schema_version += 1;
    let err = t
        .node
        .node
        .bundles
        .worlds()
        .load_model(
            other.to_bytes(),
            "test",
            aisle_node::bundles::ModelRole::Default,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature schema"), "{err}");
    t.stop().await;
}

#[tokio::test]
async fn a_canary_experiment_routes_its_share_to_the_candidate_and_promotion_switches_the_default()
{
    let files = Files::new("canary");
    write_catalog(&files);
    std::fs::write(files.path("model.bin"), model_bytes("stable-1")).unwrap();
    std::fs::write(files.path("candidate.bin"), model_bytes("candidate-2")).unwrap();
    std::fs::write(
        files.path("experiments.json"),
        serde_json::json!({
            "format_version": 1,
            "version": "canary-exp-1",
            "experiments": [{
                "key": "ranker-canary",
                "variants": [
                    {"name": "control", "weight": 80},
                    {"name": "candidate", "weight": 20, "params": {"model": "candidate"}}
                ]
            }]
        })
        .to_string(),
    )
    .unwrap();
    let mut config = common::config("canary-node");
    config.catalog = Some(files.path("catalog.json"));
    config.model = Some(files.path("model.bin"));
    config.candidate_model = Some(files.path("candidate.bin"));
    config.experiments = Some(files.path("experiments.json"));
    let prepared = aisle_node::prepare(&config).await.unwrap();
    let mut t = TestNode::start_with(config, prepared).await;

    let mut by_model: HashMap<String, usize> = HashMap::new();
    for k in 0..500 {
        let r = t
            .decide(decide_req(&format!("canary-{k}"), pb::Surface::Home))
            .await;
        let variant = &r.experiments["ranker-canary"].variant;
        let expected = if variant == "candidate" {
            "candidate-2"
        } else {
            "stable-1"
        };
        assert_eq!(
            r.model_version, expected,
            "shopper canary-{k} in variant {variant}"
        );
        *by_model.entry(r.model_version).or_default() += 1;
    }
    let share = by_model["candidate-2"] as f64 / 500.0;
    assert!((0.14..0.26).contains(&share), "{by_model:?}");
    // Operators compare the two in metrics.
    let metrics = http_get(&t.http(), "/metrics").await.1;
    assert!(
        metrics.contains("aisle_model_decisions_total{model=\"candidate-2\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("aisle_model_decisions_total{model=\"stable-1\"}"));
    let status = t
        .admin
        .bundle_status(pb::BundleStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let roles: Vec<(String, String)> = status
        .bundles
        .iter()
        .filter(|b| b.kind == "model")
        .map(|b| (b.role.clone(), b.version.clone()))
        .collect();
    assert_eq!(
        roles,
        [
            ("default".into(), "stable-1".into()),
            ("candidate".into(), "candidate-2".into())
        ]
    );

    // Promote: everyone gets the candidate; roll back: everyone gets the stable model again.
    let promoted = t
        .admin
        .promote_model(pb::PromoteModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.default_model, "candidate-2");
    let control = (0..500)
        .map(|k| format!("canary-{k}"))
        .find(|s| {
            aisle_experiment::Experiments::from_json(
                &std::fs::read(files.path("experiments.json")).unwrap(),
                "t",
            )
            .unwrap()
            .assign(s, aisle_domain::request::Surface::Home)
            .variants[0]
                .1
                .as_ref()
                == "control"
        })
        .unwrap();
    assert_eq!(
        t.decide(decide_req(&control, pb::Surface::Home))
            .await
            .model_version,
        "candidate-2"
    );
    let rolled = t
        .admin
        .rollback_model(pb::RollbackModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.default_model, "stable-1");
    assert_eq!(
        t.decide(decide_req(&control, pb::Surface::Home))
            .await
            .model_version,
        "stable-1"
    );
    // Nothing to roll back to twice.
    let err = t
        .admin
        .rollback_model(pb::RollbackModelRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    t.stop().await;
}
