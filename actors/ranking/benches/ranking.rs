//! Ranking one decision with a served model: retrieval (all generators, the candidate union of up to 500 items,
//! normalisers and log-ranks), every feature of every candidate, the ranker's score, guardrails and top-20 — the
//! FRESH rung's work in one thread (`rank_local`).
//!
//! Two worlds: the YooChoose sample when `../shared/data/rsc15-100k` is present (a model trained on `train_tr`,
//! decisions replayed from `train_valid`; set `AISLE_BENCH_MODEL` to a bundle from `aisle-train fit` to use it
//! instead of the quick fit), and the demo world (10,710 items with categories, brands, prices and offers).
//! Every iteration ranks the next of a few thousand real session prefixes.

use std::path::PathBuf;
use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::demo::{DEMO_SEED, DemoWorld};
use aisle_domain::event::{EventKind, LoggedEvent, LoggedSession};
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_domain::session::SessionView;
use aisle_policy::{Guard, PolicyContext, Rules};
use aisle_ranking::fit::{FitConfig, fit, replay, vocabulary};
use aisle_ranking::{Model, Query, ServedModel, rank_local, retrieve};
use aisle_session::SessionLimits;
use criterion::{Criterion, criterion_group, criterion_main};

fn rsc15_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/rsc15-100k");
    dir.join("train_tr.tsv").exists().then_some(dir)
}

/// A minimal reader of session-rec TSV (the trainer has the full one).
fn read_tsv(path: &std::path::Path) -> Vec<LoggedSession> {
    let text = std::fs::read_to_string(path).expect("readable");
    let mut out: Vec<LoggedSession> = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if out.last().is_none_or(|s| s.id != f[0]) {
            out.push(LoggedSession {
                id: f[0].to_string(),
                events: Vec::new(),
            });
        }
        let t: f64 = f[2].parse().expect("time");
        out.last_mut().expect("pushed").events.push(LoggedEvent {
            item: f[1].to_string(),
            kind: EventKind::View,
            ts_ms: (t * 1000.0).round() as i64,
        });
    }
    out
}

/// The views of every prefix of `sessions`, up to `max`.
fn views(catalog: &Catalog, sessions: &[LoggedSession], max: usize) -> Vec<SessionView> {
    let mut out = Vec::new();
    'all: for s in sessions {
        for p in 1..s.events.len() {
            out.push(replay(catalog, &s.events[..p]).view(&SessionLimits::default()));
            if out.len() >= max {
                break 'all;
            }
        }
    }
    out
}

fn quick() -> FitConfig {
    FitConfig {
        max_positions: 3_000,
        negatives: 10,
        ..FitConfig::default()
    }
}

fn bench_world(
    c: &mut Criterion,
    name: &str,
    served: &ServedModel,
    views: &[SessionView],
    cap: usize,
) {
    let rules = Rules::embedded();
    let mean_candidates = views
        .iter()
        .map(|v| {
            retrieve(
                served,
                &Query {
                    view: v,
                    context: &[],
                    candidates: None,
                },
            )
            .candidates
            .len()
        })
        .sum::<usize>() as f64
        / views.len() as f64;
    eprintln!(
        "{name}: {} decisions, {mean_candidates:.0} candidates on average, {} items",
        views.len(),
        served.items.len()
    );
    let mut k = 0usize;
    c.bench_function(&format!("rank_one_decision/{name}"), |b| {
        b.iter(|| {
            let view = &views[k % views.len()];
            k += 1;
            let guard = Guard::new(
                &rules,
                &served.catalog,
                PolicyContext {
                    attributes: ShopperAttributes::default(),
                    channel: Channel::Web,
                    purchased: &view.purchased,
                    now_ms: 1_700_000_000_000,
                    max_items_per_category: cap,
                },
            );
            rank_local(
                served,
                &Query {
                    view,
                    context: &[],
                    candidates: None,
                },
                &guard,
                20,
            )
        })
    });
}

fn ranking(c: &mut Criterion) {
    if let Some(dir) = rsc15_dir() {
        let train = read_tsv(&dir.join("train_tr.tsv"));
        let valid = read_tsv(&dir.join("train_valid.tsv"));
        let model = match std::env::var_os("AISLE_BENCH_MODEL") {
            Some(path) => {
                Model::from_bytes(&std::fs::read(path).expect("model file")).expect("model")
            }
            None => {
                let training = Arc::new(Catalog::plain("bench", vocabulary(&train)));
                fit(&train, training, &quick(), &mut |_| {}).expect("fits")
            }
        };
        let catalog = Arc::new(Catalog::plain("bench", model.data.items.clone()));
        let served = ServedModel::bind(&model, catalog.clone(), "bench");
        let views = views(&catalog, &valid, 4_000);
        bench_world(c, "rsc15", &served, &views, 0);
    } else {
        eprintln!("rsc15: ../shared/data/rsc15-100k not found, skipping the real-data benchmark");
    }

    let world = DemoWorld::generate(DEMO_SEED, 1_700_000_000_000, 25_000);
    let catalog = Arc::new(world.load_catalog());
    let model = fit(&world.history, catalog.clone(), &quick(), &mut |_| {}).expect("fits");
    let served = ServedModel::bind(&model, catalog.clone(), "bench");
    let recent = &world.history[world.history.len() - 1_000..];
    let views = views(&catalog, recent, 4_000);
    bench_world(c, "demo", &served, &views, 2);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60);
    targets = ranking
}
criterion_main!(benches);
