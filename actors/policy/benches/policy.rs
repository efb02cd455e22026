//! Guardrails over 500 candidates: the per-item rules ranking applies to every candidate, and the final
//! selection (caps, offers) over a ranked list.

use aisle_domain::demo::DemoWorld;
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let catalog = DemoWorld::generate(1, 1_700_000_000_000, 10).load_catalog();
    let rules = Rules::embedded();
    let candidates: Vec<(u32, f32)> = (0..500u32)
        .map(|k| ((k * 7_919) % catalog.len() as u32, 1.0 - k as f32 / 500.0))
        .collect();
    let purchased = [candidates[3].0, candidates[40].0];
    let ctx = PolicyContext {
        attributes: ShopperAttributes::default(),
        channel: Channel::Web,
        purchased: &purchased,
        now_ms: 1_700_000_000_000,
        max_items_per_category: 3,
    };
    let guard = Guard::new(&rules, &catalog, ctx);
    c.bench_function("policy/admit_500_candidates", |b| {
        b.iter(|| {
            candidates
                .iter()
                .filter(|(i, _)| guard.admit(black_box(*i)).is_ok())
                .count()
        })
    });
    c.bench_function("policy/select_10_of_500", |b| {
        b.iter(|| {
            let mut counts = ExclusionCounts::default();
            guard.select(black_box(candidates.iter().copied()), 10, &mut counts)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
