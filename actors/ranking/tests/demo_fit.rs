//! Training on the demo world: the learned ranker beats each of its generators alone on held-out sessions.

use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::demo::DemoWorld;
use aisle_domain::event::LoggedSession;
use aisle_domain::request::{AgeBand, Channel, ShopperAttributes};
use aisle_policy::{Guard, PolicyContext, Rules};
use aisle_ranking::features::FEATURE_NAMES;
use aisle_ranking::fit::{FitConfig, fit, positions, replay};
use aisle_ranking::{Model, Query, ServedModel, rank_local};
use aisle_session::SessionLimits;

/// HR@20 of `model` over every position of `sessions`.
fn hit_rate(model: &Model, catalog: &Arc<Catalog>, sessions: &[LoggedSession]) -> f64 {
    let served = ServedModel::bind(model, catalog.clone(), "test");
    let rules = Rules::from_json(
        br#"{"format_version":1,"version":"t","min_stock":0,"max_items_per_category":0,"exclude_purchased":false}"#,
        "t",
    )
    .unwrap();
    let ctx = PolicyContext {
        attributes: ShopperAttributes {
            age_verified: true,
            age_band: AgeBand::From21,
            ..Default::default()
        },
        channel: Channel::Web,
        purchased: &[],
        now_ms: 0,
        max_items_per_category: 0,
    };
    let guard = Guard::new(&rules, catalog, ctx);
    let (mut hits, mut n) = (0usize, 0usize);
    for s in sessions {
        for (_, prefix, next) in positions(s) {
            let view = replay(catalog, prefix).view(&SessionLimits::default());
            let query = Query {
                view: &view,
                context: &[],
                candidates: None,
            };
            let ranked = rank_local(&served, &query, &guard, 20);
            let target = catalog.lookup(&next.item).unwrap();
            n += 1;
            hits += usize::from(ranked.items.iter().any(|i| i.admitted.item == target));
        }
    }
    hits as f64 / n as f64
}

#[test]
fn the_learned_ranker_beats_every_single_generator() {
    let world = DemoWorld::generate(11, 1_700_000_000_000, 8_000);
    let catalog = Arc::new(world.load_catalog());
    let (train, test) = world.history.split_at(world.history.len() - 600);
    let config = FitConfig {
        max_positions: 4_000,
        negatives: 10,
        max_iterations: 50,
        ..Default::default()
    };
    let learned = fit(train, catalog.clone(), &config, &mut |_| {}).unwrap();
    let learned_hr = hit_rate(&learned, &catalog, test);
    for single in ["vsknn_norm", "sr_norm", "srall_norm", "lpop"] {
        let mut alone = learned.clone();
        alone.data.ranker.weights = FEATURE_NAMES
            .iter()
            .map(|n| f32::from(u8::from(*n == single)))
            .collect();
        let hr = hit_rate(&alone, &catalog, test);
        eprintln!("HR@20 learned {learned_hr:.3}, {single} alone {hr:.3}");
        assert!(
            learned_hr > hr + 0.01,
            "learned {learned_hr:.3} vs {single} alone {hr:.3}"
        );
    }
    assert!(learned_hr > 0.4, "{learned_hr}");
}
