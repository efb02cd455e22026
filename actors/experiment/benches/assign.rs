//! Experiment assignment of one shopper (embedded experiments: a holdout and one two-variant experiment).

use aisle_domain::request::Surface;
use aisle_experiment::Experiments;
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let experiments = Experiments::embedded();
    let shoppers: Vec<String> = (0..1_024).map(|k| format!("shopper-{k}")).collect();
    let mut k = 0;
    c.bench_function("experiment/assign", |b| {
        b.iter(|| {
            k = (k + 1) % shoppers.len();
            experiments.assign(black_box(&shoppers[k]), Surface::Home)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
