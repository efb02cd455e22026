//! Memory and activation of sessions in a node's session actors: activate 1,000,000 sessions (first event each),
//! then bring each to a realistic few dozen events, and report the activation rate and the resident memory they
//! take, under the allocator the `aisle` binary uses. Prints one JSON line.
//!
//! `cargo bench -p aisle-node --bench sessions_memory` (SESSIONS=N to change the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_domain::demo::DemoWorld;
use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_session::{SessionSettings, Sessions};

/// The allocator the `aisle` binary ships with (`src/main.rs`), so the resident memory is the node's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn event(kind: EventKind, item: u32, ts: i64) -> ShopperEvent {
    ShopperEvent {
        kind,
        item: Some(ItemRef::Known(item)),
        query: None,
        quantity: 1,
        price_cents: 0,
        store_id: None,
        aisle: None,
        ts_ms: ts,
        received_at_us: 0,
        consent: None,
        default_consent: false,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benchmarks; this one has no listable cases.
        return;
    }
    let n: u64 = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let catalog = Arc::new(DemoWorld::generate(1, 1_700_000_000_000, 10).load_catalog());
    let items = catalog.len() as u32;
    runtime.block_on(async move {
        let sessions = Sessions::start(16, SessionSettings::default())
            .await
            .unwrap();
        let baseline = rss_kib();
        let timeout = Duration::from_secs(30);
        // Activation: the first event of each session, from many concurrent callers.
        let started = Instant::now();
        let workers = 64u64;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let sessions = sessions.clone();
            let catalog = catalog.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = w;
                while s < n {
                    let e = event(EventKind::View, (s as u32 * 7) % items, 1_700_000_000_000);
                    sessions
                        .apply(
                            &format!("shopper-{s:08}"),
                            vec![e],
                            catalog.clone(),
                            None,
                            timeout,
                        )
                        .await
                        .unwrap();
                    s += workers;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let activation = started.elapsed();
        // A few dozen events each: views in two categories, a cart add, a search-free mix.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let sessions = sessions.clone();
            let catalog = catalog.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = w;
                while s < n {
                    let base = (s as u32 * 131) % items;
                    let events: Vec<ShopperEvent> = (1..36u32)
                        .map(|k| {
                            let kind = if k % 12 == 0 {
                                EventKind::AddToCart
                            } else {
                                EventKind::View
                            };
                            event(
                                kind,
                                (base + k * 3) % items,
                                1_700_000_000_000 + k as i64 * 20_000,
                            )
                        })
                        .collect();
                    sessions
                        .apply(
                            &format!("shopper-{s:08}"),
                            events,
                            catalog.clone(),
                            None,
                            timeout,
                        )
                        .await
                        .unwrap();
                    s += workers;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let filling = started.elapsed();
        let stats = sessions.stats(timeout).await.unwrap();
        let rss = rss_kib();
        let per_session = (rss - baseline) as f64 * 1024.0 / n as f64;
        println!(
            "{}",
            serde_json::json!({
                "sessions": stats.sessions,
                "events_per_session": 36,
                "activation_s": activation.as_secs_f64(),
                "activations_per_s": n as f64 / activation.as_secs_f64(),
                "fill_s": filling.as_secs_f64(),
                "rss_baseline_mib": baseline as f64 / 1024.0,
                "rss_mib": rss as f64 / 1024.0,
                "rss_delta_gib": (rss - baseline) as f64 / 1024.0 / 1024.0,
                "bytes_per_session_rss": per_session,
                "context_heap_bytes_per_session": stats.heap_bytes as f64 / n as f64,
            })
        );
        sessions.stop().await;
    });
}
