//! The `aisle` binary as a new user runs it: `serve` with embedded demo data, the client commands against it,
//! and a graceful exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const AISLE: &str = env!("CARGO_BIN_EXE_aisle");

/// A child process killed on drop if still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `aisle serve` on free ports; returns the process and its gRPC and HTTP addresses.
fn serve(extra: &[&str]) -> (Proc, String, String, mpsc::Receiver<String>) {
    let mut child = Command::new(AISLE)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--node-id", "cli-node"])
        .args(extra)
        .env_remove("AISLE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aisle starts");
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the node logs `serving` within 120 s");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == "serving" {
            let grpc = v["fields"]["grpc"].as_str().unwrap().to_string();
            let http = v["fields"]["http"].as_str().unwrap().to_string();
            return (proc, format!("http://{grpc}"), http, rx);
        }
    }
}

fn aisle(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(AISLE).args(args).output().expect("aisle runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = aisle(args);
    assert!(ok, "aisle {args:?} failed: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn wait_exit(proc: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_user_serves_the_demo_and_talks_to_it() {
    let (mut node, addr, http, _logs) = serve(&[]);
    let d = json(&[
        "decide",
        "--addr",
        &addr,
        "--shopper",
        "s1",
        "--surface",
        "home",
        "--json",
    ]);
    assert_eq!(d["fallback_tier"], "FRESH");
    assert!(d["model_version"].as_str().unwrap().starts_with("demo-"));
    assert_eq!(d["rules_version"], "rules-default-1");
    assert!(d["experiments"]["diversity"]["variant"].is_string());
    assert_eq!(d["served_by"], "cli-node");
    assert_eq!(d["items"].as_array().unwrap().len(), 10);

    // Track a few views of one category; the next decision follows them.
    for item in ["sku-000200", "sku-000201", "sku-000215"] {
        let t = json(&[
            "track",
            "--addr",
            &addr,
            "--shopper",
            "s1",
            "--type",
            "view",
            "--item",
            item,
            "--json",
        ]);
        assert_eq!(t["accepted"], 1);
    }
    let after = json(&[
        "decide",
        "--addr",
        &addr,
        "--shopper",
        "s1",
        "--surface",
        "home",
        "--consent",
        "true",
        "--json",
    ]);
    let categories: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["category"].as_str().unwrap())
        .collect();
    assert!(categories.contains(&"Tea"), "{categories:?}");
    // Without --consent no statement is sent: the node's closed default keeps the shopper anonymous.
    let unstated = json(&[
        "decide",
        "--addr",
        &addr,
        "--shopper",
        "s1",
        "--surface",
        "home",
        "--json",
    ]);
    let item_ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(item_ids(&unstated), item_ids(&d));

    // A handheld subscribed to a store gets the assist event an in-store shopper causes.
    let mut handheld = Proc(
        Command::new(AISLE)
            .args([
                "subscribe",
                "--addr",
                &addr,
                "--store",
                "store-1",
                "--count",
                "1",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let handheld_out = handheld.0.stdout.take().unwrap();
    // Wait until the subscription is registered (the gauge counts it), then trigger the event.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(&http).contains("aisle_subscribers 1") {
        assert!(Instant::now() < deadline, "subscriber not registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    for args in [
        vec![
            "--type",
            "store_enter",
            "--store",
            "store-1",
            "--consent",
            "true",
        ],
        vec![
            "--type",
            "add_to_cart",
            "--item",
            "sku-006911",
            "--store",
            "store-1",
            "--quantity",
            "40",
        ],
    ] {
        let mut full = vec!["track", "--addr", &addr, "--shopper", "in-store"];
        full.extend(args);
        let (ok, _, stderr) = aisle(&full);
        assert!(ok, "{stderr}");
    }
    assert!(wait_exit(&mut handheld, Duration::from_secs(30)).success());
    let line = BufReader::new(handheld_out)
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["store_id"], "store-1");
    assert_eq!(event["sequence"], 1);

    let f = json(&["forget", "--addr", &addr, "--shopper", "s1", "--json"]);
    assert_eq!(f["session_erased"], true);
    let b = json(&["bundles", "--addr", &addr, "--json"]);
    let kinds: Vec<&str> = b["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    for k in ["catalog", "model", "rules", "experiments"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let (ok, _, stderr) = aisle(&[
        "decide",
        "--addr",
        &addr,
        "--shopper",
        "",
        "--surface",
        "home",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("InvalidArgument: shopper_id: required"),
        "{stderr}"
    );

    // SIGTERM: graceful exit with status 0.
    let pid = node.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_exit(&mut node, Duration::from_secs(30)).success());
}

fn metrics(http: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn bad_configuration_is_reported_by_name() {
    let dir = std::env::temp_dir().join(format!("aisle-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "decide_budget_msec = 20\n").unwrap();
    let (ok, _, stderr) = aisle(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("decide_budget_msec"), "{stderr}");
    let (ok, _, stderr) = aisle(&[
        "serve",
        "--catalog",
        "/nonexistent/catalog.json",
        "--grpc-addr",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("given without a model"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_trusted_keys_only_signed_bundles_load_at_start_and_on_change() {
    let dir = std::env::temp_dir().join(format!("aisle-cli-signed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ok, _, stderr) = aisle(&["export-demo", "--out", &path("bundles")]);
    assert!(ok, "{stderr}");
    let (ok, public, stderr) = aisle(&["bundle", "keygen", "--out", &path("release.key")]);
    assert!(ok, "{stderr}");
    std::fs::write(path("trusted.pub"), &public).unwrap();
    let (ok, _, stderr) = aisle(&["bundle", "keygen", "--out", &path("release.key")]);
    assert!(
        !ok && stderr.contains("release.key"),
        "keygen never overwrites a key: {stderr}"
    );
    let model = path("bundles/model.bin");
    let catalog = path("bundles/catalog.json");
    let serve_args = |trail: &str| {
        vec![
            "--trusted-keys".to_string(),
            path("trusted.pub"),
            "--data-dir".into(),
            path("bundles"),
            "--decision-log".into(),
            path(trail),
        ]
    };
    let refused_start = |why: &str| {
        let mut args = vec![
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ];
        let extra = serve_args("refused.jsonl");
        args.extend(extra.iter().map(String::as_str));
        let (ok, _, stderr) = aisle(&args);
        assert!(!ok, "the node started: {stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    };
    // Unsigned: the node does not start, and says which file and why.
    refused_start("unsigned");
    for file in [&model, &catalog] {
        let (ok, out, stderr) = aisle(&["bundle", "sign", "--key", &path("release.key"), file]);
        assert!(ok, "{stderr}");
        assert_eq!(out.trim(), format!("{file}.sig"));
    }
    // Tampered after signing: refused too.
    let good = std::fs::read(&model).unwrap();
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    std::fs::write(&model, &tampered).unwrap();
    refused_start("bad signature");
    std::fs::write(&model, &good).unwrap();

    // Signed: it serves; a tampered new version is refused on change, the signed one keeps serving, and the
    // refusal is counted and in the trail.
    let extra = serve_args("trail.jsonl");
    let (mut proc, grpc, http, _logs) =
        serve(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    let version = |grpc: &str| {
        json(&["decide", "--addr", grpc, "--shopper", "s1", "--json"])["model_version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = version(&grpc);
    std::fs::write(&model, &tampered).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(&http).contains("aisle_bundle_signature_refused_total{kind=\"model\"} 1") {
        assert!(
            Instant::now() < deadline,
            "no refusal counted: {}",
            metrics(&http)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(version(&grpc), first, "the signed model keeps serving");
    let _ = proc.0.kill();
    wait_exit(&mut proc, Duration::from_secs(10));
    let trail = std::fs::read_to_string(path("trail.jsonl")).unwrap();
    let refusal = trail
        .lines()
        .find(|l| l.contains("bundle_refused"))
        .unwrap_or_else(|| panic!("no refusal in the trail: {trail}"));
    assert!(refusal.contains("bad signature"), "{refusal}");
    std::fs::remove_dir_all(&dir).unwrap();
}
