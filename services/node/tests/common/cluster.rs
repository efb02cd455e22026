//! The cluster test harness: a real etcd (Debian's `etcd-server`) and real `aisle` node processes on loopback,
//! with helpers to wait for membership, kill, pause, terminate and restart nodes, cut a node off from etcd, drive
//! steady load and check what every answer said.
//!
//! ```ignore
//! let mut c = TestCluster::builder().nodes(3).start().await;
//! c.wait_for_members(3, Duration::from_secs(20)).await;
//! ```
//! Everything started is stopped (SIGKILL) and every temp dir removed when the cluster is dropped.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::pki;

const AISLE: &str = env!("CARGO_BIN_EXE_aisle");

/// A free loopback port for a process that binds it later, and again after a restart.
///
/// A port from `bind(:0)` is taken from the kernel's ephemeral range, which is also where every outgoing
/// connection on the machine gets its local port: between releasing it and the node binding it (or re-binding it
/// after a kill), any client socket may take it. So ports come from the range just below the ephemeral one, which
/// the kernel never hands out on its own; a process-wide counter (started at an offset drawn from the pid, so two
/// test binaries do not walk the same ports) never hands the same one out twice, and a trial bind skips one that
/// some other program holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let base = low.saturating_sub(SPAN).max(1_024);
    let span = low - base;
    let start = std::process::id() * 7_919 % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {base}..{low}");
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "aisle-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real single-member etcd on loopback, secured as in production: TLS on its client port, client certificates
/// required (`--client-cert-auth`) and etcd authentication enabled, with a `root` user and an `aisle` user whose
/// role may read and write only `/aisle/`. Nodes authenticate with a client certificate whose CN is `aisle`.
pub struct Etcd {
    proc: Option<Proc>,
    dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    pub files: pki::Files,
}

impl Etcd {
    pub fn start(dir: &Path, files: pki::Files) -> Self {
        let mut e = Self {
            proc: None,
            dir: dir.join("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            files,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("https://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let f = &self.files;
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.dir)
            .arg("--cert-file")
            .arg(&f.etcd_server_cert)
            .arg("--key-file")
            .arg(&f.etcd_server_key)
            .arg("--trusted-ca-file")
            .arg(&f.etcd_ca)
            .arg("--client-cert-auth")
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (install etcd-server: make deps)");
        self.proc = Some(Proc(child));
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// A client of this etcd as `who` (etcd maps its certificate's CN to the user).
    pub async fn client(&self, who: &pki::Pem) -> Result<etcd_client::Client, etcd_client::Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2))
            .with_tls(pki::etcd_tls(who));
        etcd_client::Client::connect([self.url()], Some(options)).await
    }

    /// Waits until etcd answers a status request over TLS.
    pub async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(mut c) = self.client(&pki::pki().etcd_root).await
                && c.status().await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Turns etcd's authentication on: users `root` and `aisle`, the `aisle` role with read-write on `/aisle/`
    /// only. From then on a client is its certificate's CN.
    pub async fn enable_auth(&self) {
        use etcd_client::Permission;
        let mut c = self
            .client(&pki::pki().etcd_root)
            .await
            .expect("etcd as root");
        c.user_add("root", "root-password-unused", None)
            .await
            .unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("aisle").await.unwrap();
        c.role_grant_permission("aisle", Permission::read_write("/aisle/").with_prefix())
            .await
            .unwrap();
        c.user_add("aisle", "aisle-password-unused", None)
            .await
            .unwrap();
        c.user_grant_role("aisle", "aisle").await.unwrap();
        c.auth_enable().await.unwrap();
    }

    /// Stops etcd abruptly.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// A TCP proxy that can black-hole traffic (connections stay open but no byte crosses, as when packets are
/// dropped on the path) and delay it (a WAN's latency).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Drops only what the target sends back (requests still arrive: their answers are lost).
    replies_cut: Arc<AtomicBool>,
    /// One-way delay added to every byte, in µs.
    delay_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let replies_cut = Arc::new(AtomicBool::new(false));
        let delay_us = Arc::new(AtomicU64::new(0));
        let (flag, replies_flag, delay) = (cut.clone(), replies_cut.clone(), delay_us.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (flag, replies_flag, delay) =
                    (flag.clone(), replies_flag.clone(), delay.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let (f1, d1) = (flag.clone(), delay.clone());
                    let up = tokio::spawn(async move { pump(&mut ri, &mut wo, &[&f1], &d1).await });
                    let down = tokio::spawn(async move {
                        pump(&mut ro, &mut wi, &[&flag, &replies_flag], &delay).await
                    });
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            port,
            cut,
            replies_cut,
            delay_us,
            task,
        }
    }

    /// Delays every byte by `one_way` in each direction from now on (a round trip of twice that).
    pub fn set_delay(&self, one_way: Duration) {
        self.delay_us
            .store(one_way.as_micros() as u64, Ordering::SeqCst);
    }

    /// Drops all traffic from now on (or lets it through again).
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Drops what the target answers from now on (or lets it through again); requests still reach it.
    pub fn set_replies_cut(&self, cut: bool) {
        self.replies_cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, dropping what arrives while any of `cut` is set and holding each chunk for the delay in
/// force when it arrived (chunks keep their order; a delay does not add up over queued chunks).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    cut: &[&AtomicBool],
    delay_us: &AtomicU64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if cut.iter().any(|c| c.load(Ordering::SeqCst)) {
                        continue;
                    }
                    let at =
                        Instant::now() + Duration::from_micros(delay_us.load(Ordering::SeqCst));
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

/// One node process.
pub struct NodeProc {
    pub id: String,
    pub grpc_port: u16,
    pub http_port: u16,
    pub peer_port: u16,
    etcd_endpoint: String,
    /// The peer address it advertises when not its own (a proxy that can cut it off from its peers).
    advertise: Option<String>,
    proc: Option<Proc>,
    log: PathBuf,
    pub paused: bool,
}

impl NodeProc {
    pub fn addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some() && !self.paused
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }

    /// The last lines of the node's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Writes the demo bundles (built once per test binary) into `dir`: (catalog.json, model.bin).
fn write_bundles(dir: &Path) -> (PathBuf, PathBuf) {
    let prepared = super::demo();
    let catalog = dir.join("catalog.json");
    let model = dir.join("model.bin");
    let file = prepared.catalog.as_ref().unwrap().to_file();
    std::fs::write(&catalog, serde_json::to_vec(&file).unwrap()).unwrap();
    std::fs::write(&model, prepared.model.0.to_bytes()).unwrap();
    (catalog, model)
}

/// A test node's client port: TLS with the test server certificate, client certificates of the test CA, the
/// test token file, and the test clusters' pseudonym key.
pub fn client_port_args(f: &pki::Files) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    for (flag, path) in [
        ("--tls-cert", &f.server_cert),
        ("--tls-key", &f.server_key),
        ("--tls-client-ca", &f.client_ca),
        ("--auth-tokens", &f.tokens),
        ("--pseudonym-key", &f.pseudonym_key),
    ] {
        args.push(flag.into());
        args.push(path.into());
    }
    args
}

/// JSON logs and few shards: a test node on a 2-core machine.
pub const SMALL_NODE_ARGS: [&str; 6] = [
    "--log-format",
    "json",
    "--session-shards",
    "4",
    "--ranking-shards",
    "2",
];

/// Builder of a [`TestCluster`].
pub struct Builder {
    nodes: usize,
    lease_ttl_secs: u64,
    proxied: HashSet<usize>,
    isolatable: HashSet<usize>,
    extra_args: Vec<String>,
}

impl Builder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn lease_ttl_secs(mut self, s: u64) -> Self {
        self.lease_ttl_secs = s;
        self
    }

    /// Route this node's etcd traffic through a [`Proxy`] (to cut it off later).
    pub fn proxied(mut self, node: usize) -> Self {
        self.proxied.insert(node);
        self
    }

    /// Route this node's etcd traffic, and its peers' traffic to it, through [`Proxy`]s (to cut it off from both
    /// later, [`TestCluster::isolate`]): it advertises its peer proxy's address.
    pub fn isolatable(mut self, node: usize) -> Self {
        self.proxied.insert(node);
        self.isolatable.insert(node);
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_string());
        self
    }

    pub async fn start(self) -> TestCluster {
        // One cluster at a time per test binary: the scenarios measure seconds against a lease TTL, which a
        // machine busy with three other clusters would blur.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = TempDir::new("cluster");
        let files = pki::pki().write(&dir.0.join("pki"));
        let etcd = Etcd::start(&dir.0, files.clone());
        etcd.wait_healthy(Duration::from_secs(30)).await;
        etcd.enable_auth().await;
        let etcd_addr: SocketAddr = format!("127.0.0.1:{}", etcd.client_port).parse().unwrap();
        let mut proxies = HashMap::new();
        let mut peer_proxies = HashMap::new();
        let mut nodes = Vec::new();
        for i in 0..self.nodes {
            let endpoint = if self.proxied.contains(&i) {
                let p = Proxy::start(etcd_addr).await;
                let url = format!("https://127.0.0.1:{}", p.port);
                proxies.insert(i, p);
                url
            } else {
                etcd.url()
            };
            let peer_port = free_port();
            let advertise = if self.isolatable.contains(&i) {
                let p = Proxy::start(format!("127.0.0.1:{peer_port}").parse().unwrap()).await;
                let addr = format!("127.0.0.1:{}", p.port);
                peer_proxies.insert(i, p);
                Some(addr)
            } else {
                None
            };
            nodes.push(NodeProc {
                id: format!("node-{i}"),
                grpc_port: free_port(),
                http_port: free_port(),
                peer_port,
                etcd_endpoint: endpoint,
                advertise,
                proc: None,
                log: dir.0.join(format!("node-{i}.log")),
                paused: false,
            });
        }
        let bundles = write_bundles(&dir.0);
        let mut c = TestCluster {
            _turn: turn,
            bundles,
            name: format!(
                "test-{}-{}",
                std::process::id(),
                dir.0.file_name().unwrap().to_string_lossy()
            ),
            lease_ttl_secs: self.lease_ttl_secs,
            extra_args: self.extra_args,
            etcd,
            nodes,
            proxies,
            peer_proxies,
            dir,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }
}

/// etcd and node processes.
pub struct TestCluster {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    bundles: (PathBuf, PathBuf),
    name: String,
    pub lease_ttl_secs: u64,
    extra_args: Vec<String>,
    pub etcd: Etcd,
    pub nodes: Vec<NodeProc>,
    pub proxies: HashMap<usize, Proxy>,
    /// Proxies in front of the peer ports of [`Builder::isolatable`] nodes.
    pub peer_proxies: HashMap<usize, Proxy>,
    dir: TempDir,
}

impl TestCluster {
    /// The catalog and model files every node is started with.
    pub fn bundle_files(&self) -> (PathBuf, PathBuf) {
        self.bundles.clone()
    }

    pub fn builder() -> Builder {
        Builder {
            nodes: 3,
            lease_ttl_secs: 5,
            proxied: HashSet::new(),
            isolatable: HashSet::new(),
            extra_args: Vec::new(),
        }
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, None);
    }

    /// Starts node `i`; its candidate model file is `candidate`, or the default model's file.
    fn spawn_with(&mut self, i: usize, candidate: Option<&Path>) {
        let (catalog, model) = self.bundles.clone();
        let candidate = candidate.map_or_else(|| model.clone(), Path::to_path_buf);
        let f = self.etcd.files.clone();
        let outbox = self.dir.0.join(format!("node-{i}-outbox"));
        let n = &mut self.nodes[i];
        let (peer_cert, peer_key) = super::pki::pki().write_peer(&self.dir.0.join("pki"), &n.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = Command::new(AISLE)
            .args(["serve", "--node-id", &n.id])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", n.grpc_port)])
            .args(["--http-addr", &format!("127.0.0.1:{}", n.http_port)])
            .args(["--cluster", "etcd", "--etcd-endpoints", &n.etcd_endpoint])
            .args(["--peer-addr", &format!("127.0.0.1:{}", n.peer_port)])
            .args(
                n.advertise
                    .iter()
                    .flat_map(|a| ["--advertise-addr", a.as_str()]),
            )
            .arg("--outbox-dir")
            .arg(&outbox)
            .args(client_port_args(&f))
            .arg("--peer-tls-cert")
            .arg(&peer_cert)
            .arg("--peer-tls-key")
            .arg(&peer_key)
            .arg("--peer-tls-ca")
            .arg(&f.cluster_ca)
            .arg("--etcd-ca")
            .arg(&f.etcd_ca)
            .arg("--etcd-cert")
            .arg(&f.etcd_aisle_cert)
            .arg("--etcd-key")
            .arg(&f.etcd_aisle_key)
            .args(["--cluster-name", &self.name])
            .args(["--lease-ttl-secs", &self.lease_ttl_secs.to_string()])
            .arg("--catalog")
            .arg(&catalog)
            .arg("--model")
            .arg(&model)
            .arg("--candidate-model")
            .arg(&candidate)
            .args(SMALL_NODE_ARGS)
            .args(&self.extra_args)
            .env("AISLE_LOG", "info,aisle_node::cluster=debug")
            .env_remove("AISLE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("aisle runs");
        n.proc = Some(Proc(child));
        n.paused = false;
    }

    /// Writes a raw member record (as anyone with write access to etcd could) under this cluster's prefix.
    pub async fn put_member_record(&self, key_id: &str, value: &str) {
        let mut c = self
            .etcd
            .client(&pki::pki().etcd_root)
            .await
            .expect("etcd as root");
        c.put(
            format!("/aisle/{}/members/{key_id}", self.name),
            value,
            None,
        )
        .await
        .expect("put");
    }

    /// A decision client to node `i`.
    pub async fn client(&self, i: usize) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(connect(&self.nodes[i].addr()).await.expect("connects"))
    }

    /// An admin client to node `i`.
    pub async fn admin(&self, i: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(connect(&self.nodes[i].addr()).await.expect("connects"))
    }

    /// Node `i`'s view, if it answers.
    pub async fn status(&self, i: usize) -> Option<pb::ClusterStatusResponse> {
        let channel = connect(&self.nodes[i].addr()).await.ok()?;
        let mut admin = AdminServiceClient::new(channel);
        let mut req = tonic::Request::new(pb::ClusterStatusRequest::default());
        req.set_timeout(Duration::from_secs(1));
        admin.cluster_status(req).await.ok().map(|r| r.into_inner())
    }

    /// Waits until every running node is a member and they all see the same `n` members (none leaving).
    pub async fn wait_for_members(&self, n: usize, within: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + within;
        loop {
            let mut views = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.is_running() {
                    views.push(self.status(i).await);
                }
            }
            let agreed = views.iter().all(|v| {
                v.as_ref().is_some_and(|v| {
                    v.member && v.members.iter().filter(|m| !m.leaving).count() == n
                })
            }) && views.windows(2).all(|w| {
                let ids = |v: &Option<pb::ClusterStatusResponse>| -> Vec<(String, String)> {
                    v.as_ref()
                        .unwrap()
                        .members
                        .iter()
                        .map(|m| (m.node_id.clone(), m.incarnation.clone()))
                        .collect()
                };
                ids(&w[0]) == ids(&w[1])
            });
            if agreed && !views.is_empty() {
                return started.elapsed();
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.id, n.log_tail(15)))
                    .collect();
                panic!(
                    "members did not converge to {n} within {within:?}: {views:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s view as it reports it (ClusterStatus), to compute owners and successors as the nodes do.
    pub async fn view(&self, i: usize) -> aisle_node::cluster::View {
        let status = self.status(i).await.expect("the node answers");
        aisle_node::cluster::View::new(
            status.epoch,
            status
                .members
                .iter()
                .map(|m| aisle_node::cluster::Member {
                    node_id: m.node_id.clone(),
                    addr: m.addr.clone(),
                    incarnation: m.incarnation.clone(),
                    leaving: m.leaving,
                })
                .collect(),
        )
    }

    /// Waits until each of `nodes` is a member and lists the same `n` members (none leaving).
    pub async fn wait_for_view(&self, nodes: &[usize], n: usize, within: Duration) -> Duration {
        self.try_wait_for_view(nodes, n, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`TestCluster::wait_for_view`], but what it saw (with the nodes' log tails) is returned rather than
    /// panicked with, for a caller that reports it later.
    pub async fn try_wait_for_view(
        &self,
        nodes: &[usize],
        n: usize,
        within: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let mut views = Vec::new();
            for &i in nodes {
                views.push(self.status(i).await);
            }
            let sets: Vec<Option<Vec<(String, String)>>> = views
                .iter()
                .map(|v| {
                    v.as_ref().filter(|v| v.member).map(|v| {
                        v.members
                            .iter()
                            .filter(|m| !m.leaving)
                            .map(|m| (m.node_id.clone(), m.incarnation.clone()))
                            .collect()
                    })
                })
                .collect();
            if sets
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.len() == n))
                && sets.windows(2).all(|w| w[0] == w[1])
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= within {
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|&i| format!("--- {}\n{}", self.nodes[i].id, self.nodes[i].log_tail(15)))
                    .collect();
                return Err(format!(
                    "nodes {nodes:?} did not agree on {n} members within {within:?}: {views:?}\n{}",
                    logs.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until node `i` answers /readyz with `status`.
    pub async fn wait_ready(&self, i: usize, status: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if http_get(&self.nodes[i].http(), "/readyz").await.0 == status {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "node {i} /readyz not {status} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(mut p) = n.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
        n.paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        signal(self.nodes[i].pid(), "STOP");
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        signal(self.nodes[i].pid(), "CONT");
        self.nodes[i].paused = false;
    }

    /// SIGTERM, then waits for the exit; returns the exit status code and how long the exit took.
    pub async fn terminate(&mut self, i: usize, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        signal(self.nodes[i].pid(), "TERM");
        let mut proc = self.nodes[i].proc.take().unwrap();
        loop {
            if let Some(status) = proc.0.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "node {i} did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of node `i`'s series of metric `name` (0 when it has none or does not answer).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        metric_at(&self.nodes[i].http(), name).await
    }

    /// Waits until no running node's outbox holds an event (`aisle_outbox_events` 0 on each); `Err` names what
    /// still waits after `within`, with the nodes' log tails.
    pub async fn try_wait_for_outboxes(&self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let mut waiting = 0.0;
            for i in self.running() {
                waiting += self.metric(i, "aisle_outbox_events").await;
            }
            if waiting == 0.0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= within {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.id, n.log_tail(15)))
                    .collect();
                return Err(format!(
                    "{waiting} events still wait in outboxes after {within:?}\n{}",
                    logs.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// As [`TestCluster::try_wait_for_outboxes`], panicking with what still waits.
    pub async fn wait_for_outboxes(&self, within: Duration) -> Duration {
        self.try_wait_for_outboxes(within)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Cuts node `i` (built [`Builder::isolatable`]) off from etcd and from its peers' calls, or heals it: its
    /// etcd traffic and the traffic to its peer port are black-holed (connections stay open, bytes vanish).
    pub fn isolate(&self, i: usize, cut: bool) {
        self.proxies[&i].set_cut(cut);
        self.peer_proxies[&i].set_cut(cut);
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Indices of nodes that are running (not killed, not paused).
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// The etcd key prefix of this cluster's control records (`/aisle/<cluster>/control/`).
    pub fn control_prefix(&self) -> String {
        format!("/aisle/{}/control/", self.name)
    }

    /// Adds node `node-<n>` (not started: see [`TestCluster::start_with_candidate`]); its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(NodeProc {
            id: format!("node-{i}"),
            grpc_port: free_port(),
            http_port: free_port(),
            peer_port: free_port(),
            etcd_endpoint: self.etcd.url(),
            advertise: None,
            proc: None,
            log: self.dir.0.join(format!("node-{i}.log")),
            paused: false,
        });
        i
    }

    /// (Re)starts node `i` as the cluster starts its nodes, but with `candidate` as its candidate model file (the
    /// builder gives every node the default model file as candidate too: one version for both).
    pub fn start_with_candidate(&mut self, i: usize, candidate: &Path) {
        self.kill(i);
        self.spawn_with(i, Some(candidate));
    }
}

/// A channel to a secured node's client port at `addr` (`https://…`), identified as the `test-operator`
/// certificate (every scope in the test token file).
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(addr.to_string())
        .unwrap()
        .tls_config(pki::client_tls(Some(&pki::pki().operator)))?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
}

/// The sum of the series of metric `name` (a name, or a name with its labels) a node serves on its HTTP port
/// `http` (0 when it has none or does not answer).
pub async fn metric_at(http: &str, name: &str) -> f64 {
    let (_, metrics) = http_get(http, "/metrics").await;
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the shopper's owner holds, asked through `admin`.
pub async fn describe(
    admin: &mut AdminServiceClient<Channel>,
    shopper: &str,
) -> pb::DescribeShopperResponse {
    admin
        .describe_shopper(pb::DescribeShopperRequest {
            shopper_id: shopper.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// GET on a loopback HTTP port (`host:port`): (status, body); (0, "") when unreachable.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
    else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = String::new();
    if tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .is_err()
    {
        return (0, String::new());
    }
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

/// One answer (or failure) seen by the load driver.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request was sent, since the driver started.
    pub at: Duration,
    pub shopper: String,
    /// Node the request was sent to.
    pub asked: usize,
    pub served_by: String,
    pub epoch: u64,
    pub tier: pb::FallbackTier,
    /// Why the answer was not FRESH.
    pub reason: String,
    /// The failure, if the call failed (after the driver's retry, if any).
    pub error: Option<tonic::Code>,
    /// A Track call (one view event) rather than a Decide: `tier` is unspecified.
    pub track: bool,
    /// The item a Track call's event viewed.
    pub item: String,
    /// When the answer (or the failure) came, since the driver started.
    pub done: Duration,
}

/// Which nodes a client sends to: the members the cluster lists (refreshed in the background), like a load
/// balancer following readiness.
#[derive(Clone, Default)]
pub struct Targets(Arc<Mutex<Vec<usize>>>);

impl Targets {
    pub fn set(&self, v: Vec<usize>) {
        *self.0.lock().unwrap() = v;
    }

    pub fn get(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

/// Steady Decide load: `rate` requests per second over `shoppers` shoppers, each to a target node picked in
/// turn; on a transport failure (the node is gone), optionally retried once on another target, as gRPC clients
/// do for requests that never reached a server.
pub struct Driver {
    pub records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    pub started: Instant,
}

impl Driver {
    pub fn start(
        addrs: Vec<String>,
        targets: Targets,
        shoppers: Vec<String>,
        rate: u32,
        retry: bool,
    ) -> Self {
        Self::start_mixed(addrs, targets, shoppers, rate, retry, 0)
    }

    /// As [`Driver::start`], with every `track_every`-th call a Track of one view event instead of a Decide
    /// (0: Decide only).
    pub fn start_mixed(
        addrs: Vec<String>,
        targets: Targets,
        shoppers: Vec<String>,
        rate: u32,
        retry: bool,
        track_every: usize,
    ) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let task = {
            let records = records.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let clients: Vec<Option<DecisionServiceClient<Channel>>> = {
                    let mut v = Vec::new();
                    for a in &addrs {
                        let ch = Channel::from_shared(a.clone())
                            .unwrap()
                            .tls_config(pki::client_tls(Some(&pki::pki().operator)))
                            .unwrap()
                            .connect_timeout(Duration::from_millis(300))
                            .connect_lazy();
                        v.push(Some(DecisionServiceClient::new(ch)));
                    }
                    v
                };
                let period = Duration::from_secs_f64(1.0 / rate as f64);
                let mut next = Instant::now();
                let mut k = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep_until(next).await;
                    next += period;
                    let t = targets.get();
                    if t.is_empty() {
                        continue;
                    }
                    let asked = t[k % t.len()];
                    let alternative = t[(k + 1) % t.len()];
                    let shopper = shoppers[k % shoppers.len()].clone();
                    // Shifted by one each pass over the shoppers, so every shopper gets both kinds of call.
                    let track =
                        track_every > 0 && (k + k / shoppers.len()).is_multiple_of(track_every);
                    // Items differ between a shopper's events, so a session shows which of them it holds.
                    let item = if track {
                        format!("sku-{:06}", 200 + k % 800)
                    } else {
                        String::new()
                    };
                    k += 1;
                    let clients = clients.clone();
                    let records = records.clone();
                    tokio::spawn(async move {
                        let at = started.elapsed();
                        let viewed = item.clone();
                        let send = |client: DecisionServiceClient<Channel>, shopper: String| {
                            let item = viewed.clone();
                            async move {
                                if track {
                                    track_one(client, &shopper, &item).await
                                } else {
                                    call(client, &shopper).await
                                }
                            }
                        };
                        let mut result =
                            send(clients[asked].clone().unwrap(), shopper.clone()).await;
                        if retry
                            && let Err(code) = &result
                            && matches!(
                                code,
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                            )
                            && alternative != asked
                        {
                            result =
                                send(clients[alternative].clone().unwrap(), shopper.clone()).await;
                        }
                        let record = match result {
                            Ok(r) => Record {
                                at,
                                shopper,
                                asked,
                                served_by: r.served_by,
                                epoch: r.epoch,
                                tier: pb::FallbackTier::try_from(r.fallback_tier).unwrap(),
                                reason: r.fallback_reason,
                                error: None,
                                track,
                                item,
                                done: started.elapsed(),
                            },
                            Err(code) => Record {
                                at,
                                shopper,
                                asked,
                                served_by: String::new(),
                                epoch: 0,
                                tier: pb::FallbackTier::Unspecified,
                                reason: String::new(),
                                error: Some(code),
                                track,
                                item,
                                done: started.elapsed(),
                            },
                        };
                        records.lock().unwrap().push(record);
                    });
                }
            })
        };
        Self {
            records,
            stop,
            task,
            started,
        }
    }

    /// Stops sending and returns every record (waiting for calls in flight).
    pub async fn finish(self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let mut r = self.records.lock().unwrap().clone();
        r.sort_by_key(|x| x.at);
        r
    }
}

async fn call(
    mut client: DecisionServiceClient<Channel>,
    shopper: &str,
) -> Result<pb::DecideResponse, tonic::Code> {
    let mut req = tonic::Request::new(pb::DecideRequest {
        shopper_id: shopper.to_string(),
        surface: pb::Surface::Home as i32,
        channel: pb::Channel::Web as i32,
        consent: Some(true),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(500));
    client
        .decide(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

/// One view event for `shopper`, answered as a Decide record would be (a FRESH tier for an accepted event, the
/// node that received it).
async fn track_one(
    mut client: DecisionServiceClient<Channel>,
    shopper: &str,
    item: &str,
) -> Result<pb::DecideResponse, tonic::Code> {
    let mut req = tonic::Request::new(pb::TrackRequest {
        events: vec![pb::TrackEvent {
            consent: Some(true),
            ..super::event(shopper, pb::EventType::View, item)
        }],
        request_id: String::new(),
    });
    req.set_timeout(Duration::from_millis(500));
    client
        .track(req)
        .await
        .map(|r| pb::DecideResponse {
            served_by: r.into_inner().served_by,
            ..Default::default()
        })
        .map_err(|s| s.code())
}

/// Keeps `targets` equal to the members the running nodes list, every 100 ms, until dropped.
pub fn follow_members(cluster: &TestCluster, targets: Targets) -> tokio::task::JoinHandle<()> {
    let addrs: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.addr()))
        .collect();
    tokio::spawn(async move {
        loop {
            for (_, addr) in &addrs {
                let Ok(ch) = connect(addr).await else {
                    continue;
                };
                let mut admin = AdminServiceClient::new(ch);
                let mut req = tonic::Request::new(pb::ClusterStatusRequest::default());
                req.set_timeout(Duration::from_millis(300));
                if let Ok(r) = admin.cluster_status(req).await {
                    let r = r.into_inner();
                    if r.member {
                        let listed: Vec<usize> = r
                            .members
                            .iter()
                            .filter(|m| !m.leaving)
                            .filter_map(|m| addrs.iter().position(|(id, _)| *id == m.node_id))
                            .collect();
                        targets.set(listed);
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// No shopper was answered FRESH by two nodes in the same epoch.
pub fn assert_single_fresh_owner(records: &[Record]) {
    let mut owners: HashMap<(String, u64), HashSet<String>> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.error.is_none() && r.tier == pb::FallbackTier::Fresh)
    {
        owners
            .entry((r.shopper.clone(), r.epoch))
            .or_default()
            .insert(r.served_by.clone());
    }
    let doubles: Vec<_> = owners.iter().filter(|(_, nodes)| nodes.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "shoppers answered FRESH by two nodes in the same epoch: {doubles:?}"
    );
}
