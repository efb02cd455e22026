//! Privacy, end to end, on a real `aisle serve` process with its event log and decision trail on: nothing it
//! writes names a shopper by id; ForgetShopper reaches the session, the retained assist events and both logs;
//! the trail verifies, and `aisle audit verify` catches every kind of tampering; a full disk is loud and loses
//! nothing silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use common::cluster::{TempDir, free_port, http_get};
use common::pki;
use tonic::transport::Channel;

const AISLE: &str = env!("CARGO_BIN_EXE_aisle");
/// A shopper id as distinctive as an email address.
const SHOPPER: &str = "loyalty-4711-jane.doe@example.com";

/// `aisle serve` with both logs in `dir`, stderr to `dir/node.log`; killed on drop.
struct Node {
    child: Child,
    grpc: u16,
    http: u16,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts the node through `sh` (so a test can set a file-size limit first) and waits for `/readyz`.
    async fn start(dir: &Path, shell_prefix: &str, extra: &[&str]) -> Node {
        let (grpc, http) = (free_port(), free_port());
        let files = pki::pki().write(&dir.join("pki"));
        let mut args = vec![
            "serve".to_string(),
            format!("--grpc-addr=127.0.0.1:{grpc}"),
            format!("--http-addr=127.0.0.1:{http}"),
            format!("--event-log={}", dir.join("events.jsonl").display()),
            format!("--decision-log={}", dir.join("decisions.jsonl").display()),
            format!("--auth-tokens={}", files.tokens.display()),
            "--log-sync-ms=20".into(),
            "--ranking-shards=1".into(),
            "--session-shards=4".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("{shell_prefix} exec '{AISLE}' {}", quoted.join(" "));
        let child = Command::new("sh")
            .args(["-c", &script])
            .env_remove("AISLE_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
            .spawn()
            .expect("aisle runs");
        let node = Node {
            child,
            grpc,
            http,
            dir: dir.to_path_buf(),
        };
        let base = node.http_base();
        common::eventually("the node is ready", Duration::from_secs(120), || {
            let base = base.clone();
            async move { http_get(&base, "/readyz").await.0 == 200 }
        })
        .await;
        node
    }

    fn http_base(&self) -> String {
        format!("127.0.0.1:{}", self.http)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", pki::TOKEN_ALL).parse().unwrap(),
    );
    r
}

fn in_store(kind: pb::EventType, item: &str) -> pb::TrackEvent {
    pb::TrackEvent {
        consent: Some(true),
        store_id: "store-1".into(),
        aisle: "A7".into(),
        quantity: if kind == pb::EventType::AddToCart {
            90
        } else {
            0
        },
        ..common::event(SHOPPER, kind, item)
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`, except the test's own PKI.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "pki") {
            continue;
        }
        if path.is_dir() {
            out.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            out.push(path);
        }
    }
    out
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Runs `aisle audit verify` on `paths`: (success, stdout + stderr).
fn verify(paths: &[&Path]) -> (bool, String) {
    let out = Command::new(AISLE)
        .args(["audit", "verify"])
        .args(paths)
        .output()
        .expect("aisle runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The retained assist events of store-1, replayed from the start.
async fn retained(channel: Channel) -> Vec<pb::AssistEvent> {
    let mut associates = AssociateServiceClient::new(channel);
    let mut stream = associates
        .subscribe(authed(pb::SubscribeRequest {
            store_id: "store-1".into(),
            associate_id: "privacy-test".into(),
            kinds: Vec::new(),
            resume_after: Some(0),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    // The replay comes in one go once the stream opens (allow a busy machine 10 s for its first event); live events
    // would follow later, and there are none.
    let mut wait = Duration::from_secs(10);
    while let Ok(Ok(Some(e))) = tokio::time::timeout(wait, stream.message()).await {
        out.push(e);
        wait = Duration::from_secs(1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_written_names_the_shopper_and_forget_reaches_every_copy() {
    let dir = TempDir::new("privacy");
    let node = Node::start(&dir.0, "", &[]).await;
    let channel = node.channel().await;
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel.clone());

    // Web views and a search, then in-store: views in one aisle and a full cart (assist events name the shopper).
    let mut events = vec![
        pb::TrackEvent {
            consent: Some(true),
            ..common::event(SHOPPER, pb::EventType::View, "sku-000001")
        },
        pb::TrackEvent {
            consent: Some(true),
            query: "gluten free pasta".into(),
            ..common::event(SHOPPER, pb::EventType::Search, "")
        },
        in_store(pb::EventType::StoreEnter, ""),
    ];
    for item in ["sku-000002", "sku-000003", "sku-000004", "sku-000005"] {
        events.push(in_store(pb::EventType::View, item));
    }
    events.push(in_store(pb::EventType::AddToCart, "sku-000006"));
    events.push(in_store(pb::EventType::AddToCart, "sku-000007"));
    let tracked = events.len();
    decisions
        .track(authed(pb::TrackRequest {
            events,
            request_id: "privacy-track".into(),
        }))
        .await
        .unwrap();
    for _ in 0..2 {
        decisions
            .decide(authed(common::decide_req(SHOPPER, pb::Surface::Home)))
            .await
            .unwrap();
    }
    let described = admin
        .describe_shopper(authed(pb::DescribeShopperRequest {
            shopper_id: SHOPPER.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(described.has_session);
    let pseudonym = described.shopper_ref.clone();
    assert!(
        aisle_node::security::pseudonyms::is_pseudonym(&pseudonym),
        "{pseudonym}"
    );

    common::eventually(
        "the events and decisions are in the logs",
        Duration::from_secs(20),
        || {
            let dir = dir.0.clone();
            let pseudonym = pseudonym.clone();
            async move {
                read(&dir, "events.jsonl").matches(&pseudonym).count() == tracked
                    && read(&dir, "decisions.jsonl").matches(&pseudonym).count() >= 2
            }
        },
    )
    .await;
    // The access request's answer: the session, and what the node holds in its logs and push hub.
    let export = admin
        .describe_shopper(authed(pb::DescribeShopperRequest {
            shopper_id: SHOPPER.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let held = &export.held[0];
    assert_eq!(held.event_log_total, tracked as u64, "{held:?}");
    assert_eq!(held.event_log_records.len(), tracked);
    assert!(held.event_log_records[1].contains("gluten free pasta"));
    assert!(
        held.decision_total >= 2 && held.decision_records.len() == held.decision_total as usize
    );
    assert!(!held.assist_events.is_empty(), "{held:?}");
    let before = retained(channel.clone()).await;
    assert!(
        before.iter().any(|e| e.shopper_ref == pseudonym),
        "the in-store activity raised an assist event about the shopper: {before:?}"
    );
    assert_eq!(
        files_containing(&dir.0, SHOPPER),
        Vec::<PathBuf>::new(),
        "a file the node wrote names the shopper by id"
    );

    // Erasure, as an operator with a token: a receipt per member (one here), and then nothing left.
    let forgotten = admin
        .forget_shopper(authed(pb::ForgetShopperRequest {
            shopper_id: SHOPPER.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgotten.shopper_ref, pseudonym);
    let receipt = &forgotten.receipts[..];
    assert_eq!(receipt.len(), 1, "{forgotten:?}");
    assert!(receipt[0].session_erased);
    assert_eq!(receipt[0].event_log_records_removed, tracked as u64);
    assert!(receipt[0].decision_records_redacted >= 2, "{forgotten:?}");
    assert!(receipt[0].assist_events_redacted >= 1, "{forgotten:?}");
    let after = admin
        .describe_shopper(authed(pb::DescribeShopperRequest {
            shopper_id: SHOPPER.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!after.has_session && after.recent_item_ids.is_empty() && after.searches.is_empty());
    let held = &after.held[0];
    assert!(
        held.event_log_total == 0 && held.decision_total == 0 && held.assist_events.is_empty(),
        "still held after the erasure: {held:?}"
    );
    assert!(
        !read(&dir.0, "events.jsonl").contains(&pseudonym),
        "the event log still holds the shopper's lines"
    );
    let replay = retained(channel.clone()).await;
    assert_eq!(replay.len(), before.len(), "redaction keeps the sequence");
    assert!(replay.iter().all(|e| e.shopper_ref.is_empty()
        || e.shopper_ref != pseudonym && !e.message.contains(&pseudonym[..8])));
    // The trail still names the pseudonym once: in the record of the erasure itself, with who asked.
    let trail = read(&dir.0, "decisions.jsonl");
    let mentions: Vec<&str> = trail.lines().filter(|l| l.contains(&pseudonym)).collect();
    assert!(
        !mentions.is_empty()
            && mentions
                .iter()
                .all(|l| l.contains("\"admin\"") && l.contains("forget")),
        "only the erasure record may name the shopper: {mentions:#?}"
    );
    assert!(
        mentions.iter().all(|l| l.contains("token:all")),
        "the erasure record names the caller: {mentions:#?}"
    );
    // Asking again is safe and erases nothing more.
    let again = admin
        .forget_shopper(authed(pb::ForgetShopperRequest {
            shopper_id: SHOPPER.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.session_erased && again.receipts[0].event_log_records_removed == 0);

    // The trail of the real node verifies, before and after tampering with a copy.
    let trail_path = dir.0.join("decisions.jsonl");
    common::eventually("the trail is durable", Duration::from_secs(10), || {
        let p = trail_path.clone();
        async move { verify(&[&p]).0 }
    })
    .await;
    drop(node);
    let (ok, out) = verify(&[&trail_path]);
    assert!(ok, "{out}");
    let lines: Vec<String> = read(&dir.0, "decisions.jsonl")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    let head = dir.0.join("decisions.jsonl.head");
    let tampered = |name: &str, content: String| -> (bool, String) {
        let copy = dir.0.join(name);
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("decisions.jsonl"), content).unwrap();
        if head.exists() {
            std::fs::copy(&head, copy.join("decisions.jsonl.head")).unwrap();
        }
        verify(&[&copy.join("decisions.jsonl")])
    };
    let join = |l: &[String]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    let mut edited = lines.clone();
    edited[1] = edited[1].replacen("\"fresh\"", "\"rules\"", 1);
    if edited[1] == lines[1] {
        edited[1] = edited[1].replacen('1', "2", 1);
    }
    let mut deleted = lines.clone();
    deleted.remove(1);
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let whole = join(&lines);
    let cases = [
        ("edited", join(&edited)),
        ("deleted", join(&deleted)),
        ("swapped", join(&swapped)),
        (
            "truncated mid-record",
            whole[..whole.len() - 10].to_string(),
        ),
        ("truncated by a record", join(&lines[..lines.len() - 1])),
    ];
    for (what, content) in cases {
        let (ok, out) = tampered(&what.replace(' ', "-"), content);
        assert!(!ok, "{what}: verify passed: {out}");
        assert!(
            out.contains("seq") || out.contains("line"),
            "{what}: the first bad record is not named: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_loud_the_node_keeps_serving_and_drops_are_counted_in_the_trail() {
    let dir = TempDir::new("disk-full");
    // A 256 KiB file-size limit (the shell's `ulimit -f` counts 512-byte blocks here; SIGXFSZ ignored, so writes
    // beyond it fail with EFBIG the way they fail with ENOSPC on a full volume).
    let node = Node::start(
        &dir.0,
        "trap '' XFSZ; ulimit -S -f 512;",
        &["--log-segment-bytes=67108864"],
    )
    .await;
    let channel = node.channel().await;
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let mut served = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for k in 0..50 {
            let r = decisions
                .decide(authed(common::decide_req(
                    &format!("disk-{k}"),
                    pb::Surface::Home,
                )))
                .await
                .expect("a decision is answered while the disk is full")
                .into_inner();
            assert!(!r.items.is_empty());
            served += 1;
        }
        let (status, body) = http_get(&node.http_base(), "/readyz").await;
        if body.contains("degraded") {
            assert_eq!(
                status, 200,
                "a node that cannot write its trail still serves"
            );
            assert!(body.contains("decision"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the write failure never showed in /readyz after {served} decisions: {body}; {}",
            node.log()
        );
    }
    let (_, metrics) = http_get(&node.http_base(), "/metrics").await;
    assert!(
        metrics.contains("aisle_log_healthy{log=\"decisions\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aisle_log_write_errors_total{log=\"decisions\"}"),
        "{metrics}"
    );
    assert!(node.log().contains("WARN") || node.log().contains("ERROR"));

    // Space comes back (the limit is lifted): the trail resumes, its gap records count what was shed, and it
    // verifies.
    let pid = node.child.id();
    let lifted = Command::new("prlimit")
        .args([format!("--pid={pid}"), "--fsize=unlimited:unlimited".into()])
        .status()
        .unwrap();
    assert!(lifted.success());
    let base = node.http_base();
    common::eventually("the trail recovers", Duration::from_secs(30), || {
        let base = base.clone();
        async move { !http_get(&base, "/readyz").await.1.contains("degraded") }
    })
    .await;
    decisions
        .decide(authed(common::decide_req("after", pb::Surface::Home)))
        .await
        .unwrap();
    let (_, metrics) = http_get(&node.http_base(), "/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("aisle_log_records_dropped_total{log=\"decisions\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    let trail = dir.0.join("decisions.jsonl");
    common::eventually("the trail is durable", Duration::from_secs(10), || {
        let p = trail.clone();
        async move { verify(&[&p]).0 }
    })
    .await;
    let (ok, out) = verify(&[&trail]);
    assert!(ok, "{out}");
    let written = std::fs::read_to_string(&trail).unwrap_or_default()
        + &std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let name = p.file_name()?.to_string_lossy().to_string();
                (name.starts_with("decisions.jsonl.") && !name.ends_with(".head"))
                    .then(|| std::fs::read_to_string(&p).unwrap_or_default())
            })
            .collect::<String>();
    let decided = written
        .lines()
        .filter(|l| l.contains("\"decision\""))
        .count() as f64;
    let gaps: f64 = written
        .lines()
        .filter(|l| l.contains("\"gap\""))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.get("body")?.get("dropped")?.as_f64()
        })
        .sum();
    assert_eq!(gaps, dropped, "every shed record is stated in a gap record");
    assert_eq!(
        decided + dropped,
        (served + 1) as f64,
        "every decision is either in the trail or counted as shed"
    );
}
