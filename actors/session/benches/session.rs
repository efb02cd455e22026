//! Session work: applying one event to a session that holds a realistic few dozen events, activating a session
//! (first event), reading a session's view — pure, and through the session actors.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::demo::DemoWorld;
use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_session::{AssistRules, SessionContext, SessionLimits, SessionSettings, Sessions};
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn event(item: u32, ts: i64) -> ShopperEvent {
    ShopperEvent {
        kind: EventKind::View,
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

fn bench(c: &mut Criterion) {
    let catalog = Arc::new(DemoWorld::generate(1, 1_700_000_000_000, 10).load_catalog());
    let limits = SessionLimits::default();
    let assist = AssistRules::default();
    let mut session = SessionContext::new();
    for k in 0..40u32 {
        session.apply(
            &event((k * 131) % 10_000, k as i64 * 20_000),
            &catalog,
            &limits,
            &assist,
        );
    }
    let mut ts = 1_000_000;
    c.bench_function("session/apply_one_event", |b| {
        b.iter(|| {
            ts += 1_000;
            session.apply(black_box(&event(4_242, ts)), &catalog, &limits, &assist)
        })
    });
    c.bench_function("session/activate", |b| {
        b.iter(|| {
            let mut s = SessionContext::new();
            s.apply(black_box(&event(77, 1)), &catalog, &limits, &assist);
            s
        })
    });
    c.bench_function("session/view_of_40_events", |b| {
        b.iter(|| black_box(&session).view(&limits))
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sessions = runtime
        .block_on(Sessions::start(8, SessionSettings::default()))
        .unwrap();
    let timeout = Duration::from_secs(5);
    let mut n = 0u64;
    c.bench_function("session/actor_apply_one_event", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let shopper = format!("s{}", n % 10_000);
            let sessions = sessions.clone();
            let catalog = catalog.clone();
            async move {
                sessions
                    .apply(&shopper, vec![event(5, n as i64)], catalog, None, timeout)
                    .await
                    .unwrap()
            }
        })
    });
    c.bench_function("session/actor_view", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let shopper = format!("s{}", n % 10_000);
            let sessions = sessions.clone();
            async move { sessions.view(&shopper, timeout).await.unwrap() }
        })
    });
    runtime.block_on(sessions.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
