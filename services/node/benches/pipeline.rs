//! The whole decide pipeline in-process, without gRPC: experiments, the session actor read, retrieval of ~500
//! candidates, scoring on the ranking shards, guardrails, the response built — for a shopper with a realistic
//! session, through a node started exactly as `aisle serve` starts it (demo world, embedded rules and
//! experiments).

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_domain::request::{Channel, ShopperAttributes, Surface};
use aisle_node::bundles::{Prepared, embedded_experiments, embedded_rules};
use aisle_node::engine::decision::{DecideInput, Serve, Tier};
use aisle_node::{Config, RunningNode};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::net::TcpListener;

fn input(shopper: &str) -> DecideInput {
    DecideInput {
        shopper_id: shopper.to_string(),
        surface: Surface::Home,
        channel: Channel::Web,
        limit: 10,
        candidates: None,
        unknown_candidates: 0,
        context: Vec::new(),
        consent: Some(true),
        attributes: ShopperAttributes::default(),
        store_id: String::new(),
        region: String::new(),
        device: String::new(),
        request_id: String::new(),
        client: String::new(),
    }
}

async fn node() -> RunningNode {
    let (catalog, model) = aisle_node::bundles::demo::demo(aisle_domain::now_ms()).unwrap();
    let prepared = Prepared {
        catalog: Some(catalog),
        model: (model, "bench".into()),
        candidate: None,
        rules: embedded_rules(),
        experiments: embedded_experiments(),
        files: Vec::new(),
        trusted: None,
    };
    let mut config = Config {
        node_id: "bench".into(),
        bundle_poll_secs: 0,
        ..Config::default()
    };
    if let Some(n) = std::env::var("BENCH_RANKING_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.ranking_shards = n;
    }
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    aisle_node::start(config, prepared, grpc, http)
        .await
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(node());
    let decider = node.node.decider.clone();
    let shoppers = node.node.shoppers.clone();
    let bundles = node.node.bundles.clone();
    // 1,000 shoppers, each with a session of 12 views in two related categories.
    let world = bundles.world();
    let catalog = world.catalog.clone();
    runtime.block_on(async {
        for s in 0..1_000u32 {
            let events: Vec<ShopperEvent> = (0..12u32)
                .map(|k| ShopperEvent {
                    kind: EventKind::View,
                    item: Some(ItemRef::Known((s * 37 + k * 3) % 340)),
                    query: None,
                    quantity: 1,
                    price_cents: 0,
                    store_id: None,
                    aisle: None,
                    ts_ms: 1_700_000_000_000 + k as i64 * 30_000,
                    received_at_us: 0,
                    consent: None,
                    default_consent: false,
                })
                .collect();
            shoppers
                .apply(&format!("bench-{s}"), events, catalog.clone(), None)
                .await
                .unwrap();
        }
    });
    // Decisions run one after another in a task on the node's runtime, as a gRPC handler's would (not on the
    // benchmark's thread, which would add a thread hand-off per actor message that a server does not pay).
    c.bench_function("pipeline/decide_in_process", |b| {
        b.iter_custom(|iters| {
            let (decider, bundles) = (decider.clone(), bundles.clone());
            runtime.block_on(async move {
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    for k in 0..iters {
                        let world = bundles.world();
                        let shopper = format!("bench-{}", k % 1_000);
                        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
                        let d = decider
                            .decide(world, &input(&shopper), deadline, Serve::Owner { epoch: 0 })
                            .await;
                        assert_eq!(d.tier, Tier::Fresh);
                        std::hint::black_box(Arc::new(d));
                    }
                    started.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
    runtime.block_on(node.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
