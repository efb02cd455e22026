//! A store edge node process for the edge tests: a real `aisle serve --role edge` whose WAN link to one cloud node
//! goes through a [`Proxy`] the test cuts or slows. The edge's own client port is secured like the cloud's (TLS,
//! the test token file), so the cluster harness's clients and load driver speak to it unchanged.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::cluster::{
    Proxy, SMALL_NODE_ARGS, TempDir, TestCluster, client_port_args, connect, free_port, http_get,
    metric_at, tail,
};
use super::pki;

const AISLE: &str = env!("CARGO_BIN_EXE_aisle");

/// One edge node and its WAN.
pub struct EdgeNode {
    pub store_id: String,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The WAN: between the edge and the cloud node it talks to.
    pub wan: Proxy,
    /// The edge's directory (bundles, queue): kept across restarts.
    pub dir: TempDir,
    files: pki::Files,
    extra_args: Vec<String>,
    proc: Option<std::process::Child>,
    log: PathBuf,
}

impl EdgeNode {
    /// Starts an edge for `store_id` whose upstream is cloud node `cloud`, through a fresh WAN proxy.
    pub async fn start(c: &TestCluster, cloud: usize, store_id: &str, extra_args: &[&str]) -> Self {
        let target = format!("127.0.0.1:{}", c.nodes[cloud].grpc_port);
        let wan = Proxy::start(target.parse().unwrap()).await;
        let dir = TempDir::new("edge");
        let files = pki::pki().write(&dir.0.join("pki"));
        let mut e = Self {
            store_id: store_id.to_string(),
            grpc_port: free_port(),
            http_port: free_port(),
            wan,
            log: dir.0.join("edge.log"),
            dir,
            files,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let f = &self.files;
        let token = self.dir.0.join("upstream.token");
        std::fs::write(&token, pki::TOKEN_EDGE).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(AISLE)
            .args(["serve", "--node-id", &format!("edge-{}", self.store_id)])
            .args(["--role", "edge", "--store-id", &self.store_id])
            .args([
                "--upstream",
                &format!("https://127.0.0.1:{}", self.wan.port),
            ])
            .arg("--upstream-token-file")
            .arg(&token)
            .arg("--upstream-ca")
            .arg(&f.client_ca)
            .arg("--edge-dir")
            .arg(self.dir.0.join("state"))
            .args(["--grpc-addr", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http_port)])
            .args(client_port_args(f))
            .args(SMALL_NODE_ARGS)
            .args(&self.extra_args)
            .env("AISLE_LOG", "info,aisle_node::edge=debug")
            .env_remove("AISLE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("aisle runs");
        self.proc = Some(child);
    }

    pub fn addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// SIGKILLs the edge.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// SIGKILLs and starts the edge again on the same directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until the edge answers /readyz 200.
    pub async fn wait_ready(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if http_get(&self.http(), "/readyz").await.0 == 200 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the edge is not ready within {within:?}:\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the edge hears from the cloud (`aisle_edge_offline_seconds` published and 0).
    pub async fn wait_online(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (_, metrics) = http_get(&self.http(), "/metrics").await;
            if metrics.lines().any(|l| l == "aisle_edge_offline_seconds 0") {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the edge is not online within {within:?}:\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(connect(&self.addr()).await.expect("connects"))
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(connect(&self.addr()).await.expect("connects"))
    }

    /// The sum of the edge's series of metric `name` (0 when it has none or does not answer).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.http(), name).await
    }

    /// Waits until the edge's queue for the cloud is empty.
    pub async fn wait_for_queue_drained(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (status, metrics) = http_get(&self.http(), "/metrics").await;
            let queued = metrics
                .lines()
                .find_map(|l| l.strip_prefix("aisle_outbox_events "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if status == 200 && queued == Some(0.0) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the edge's queue did not drain within {within:?} ({queued:?} left):\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- the edge's log (last 60 lines):\n{}", self.log_tail(60));
        }
    }
}
