//! Test harness: real nodes on `127.0.0.1:0`, real gRPC clients, the demo world built once per test binary.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aisle_node::bundles::{Prepared, embedded_experiments, embedded_rules};
use aisle_node::{Config, RunningNode};
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub mod cluster;
pub mod edge;
pub mod pki;

/// The demo world and its trained model, built once for the whole test binary.
pub fn demo() -> Prepared {
    static DEMO: OnceLock<(Arc<aisle_domain::catalog::Catalog>, aisle_ranking::Model)> =
        OnceLock::new();
    let (catalog, model) = DEMO
        .get_or_init(|| {
            aisle_node::bundles::demo::demo(aisle_domain::now_ms()).expect("demo trains")
        })
        .clone();
    Prepared {
        catalog: Some(catalog),
        model: (model, "test demo".into()),
        candidate: None,
        rules: embedded_rules(),
        experiments: embedded_experiments(),
        files: Vec::new(),
        trusted: None,
    }
}

/// The demo model under another version, as a (candidate) model file in `dir`.
pub fn candidate_file(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let mut model = demo().model.0;
    model.header.version = version.into();
    let path = dir.join(format!("{version}.bin"));
    std::fs::write(&path, model.to_bytes()).unwrap();
    path
}

/// A configuration for tests: ports chosen by the OS, fault injection on.
pub fn config(node_id: &str) -> Config {
    Config {
        node_id: node_id.into(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        fault_injection: true,
        session_shards: 4,
        ranking_shards: 2,
        bundle_poll_secs: 0,
        ..Config::default()
    }
}

/// A node under test with clients.
pub struct TestNode {
    pub node: RunningNode,
    pub decisions: DecisionServiceClient<Channel>,
    pub associates: AssociateServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub channel: Channel,
}

impl TestNode {
    /// Starts a node with the demo bundles.
    pub async fn start() -> Self {
        Self::start_with(config("test-node"), demo()).await
    }

    /// Starts a node with the given configuration and bundles.
    pub async fn start_with(config: Config, prepared: Prepared) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = aisle_node::start(config, prepared, grpc, http)
            .await
            .expect("node starts");
        let channel = Channel::from_shared(format!("http://{}", node.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        Self {
            decisions: DecisionServiceClient::new(channel.clone()),
            associates: AssociateServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            channel,
            node,
        }
    }

    /// The HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.node.http_addr)
    }

    pub async fn decide(&mut self, req: pb::DecideRequest) -> pb::DecideResponse {
        self.decisions
            .decide(req)
            .await
            .expect("decide")
            .into_inner()
    }

    pub async fn track(&mut self, events: Vec<pb::TrackEvent>) -> pb::TrackResponse {
        self.decisions
            .track(pb::TrackRequest {
                events,
                request_id: String::new(),
            })
            .await
            .expect("track")
            .into_inner()
    }

    pub async fn fault(&mut self, stage: pb::FaultStage, mode: pb::FaultMode) {
        self.admin
            .set_fault(pb::SetFaultRequest {
                stage: stage as i32,
                mode: mode as i32,
            })
            .await
            .expect("set fault");
    }

    pub async fn stop(self) {
        self.node.shutdown().await;
    }
}

/// A Decide request for a consenting shopper on a surface.
pub fn decide_req(shopper: &str, surface: pb::Surface) -> pb::DecideRequest {
    pb::DecideRequest {
        shopper_id: shopper.into(),
        surface: surface as i32,
        channel: pb::Channel::Web as i32,
        consent: Some(true),
        ..Default::default()
    }
}

/// In-stock, unrestricted items of a category, by category name.
pub fn items_of(category: &str) -> Vec<String> {
    let c = catalog();
    let idx = c
        .categories
        .iter()
        .position(|x| x.name == category)
        .unwrap() as u16;
    c.items_in_category(idx)
        .iter()
        .filter(|&&i| c.item(i).stock >= 5)
        .map(|&i| c.item(i).id.to_string())
        .collect()
}

/// An event of a shopper.
pub fn event(shopper: &str, kind: pb::EventType, item: &str) -> pb::TrackEvent {
    pb::TrackEvent {
        shopper_id: shopper.into(),
        r#type: kind as i32,
        item_id: item.into(),
        ..Default::default()
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connects");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The catalog of the demo.
pub fn catalog() -> Arc<aisle_domain::catalog::Catalog> {
    demo().catalog.expect("demo has a catalog")
}

/// The `aisle_fallbacks_total` series of a `/metrics` page: each one's labels and count.
pub fn fallback_series(metrics: &str) -> Vec<(Vec<(String, String)>, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("aisle_fallbacks_total{"))
        .map(|rest| {
            let (labels, value) = rest.split_once("} ").expect("a labelled sample");
            let labels = labels
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (labels, value.trim().parse().expect("a number"))
        })
        .collect()
}

/// Asserts that every `aisle_fallbacks_total` series is labelled by `stage` and `reason` only, with values from
/// their closed sets (so node ids, epochs and error text never make new series); returns the total count.
pub fn assert_bounded_fallback_labels(metrics: &str) -> f64 {
    use aisle_node::engine::decision::{Reason, Stage};
    let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
    let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let series = fallback_series(metrics);
    assert!(series.len() <= stages.len() * reasons.len(), "{series:?}");
    let mut total = 0.0;
    for (labels, count) in &series {
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["stage", "reason"], "{labels:?}");
        assert!(stages.contains(&labels[0].1.as_str()), "{labels:?}");
        assert!(reasons.contains(&labels[1].1.as_str()), "{labels:?}");
        total += count;
    }
    total
}
