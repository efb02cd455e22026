//! A fixed number of FRESH-rung decisions on the demo world, for instruction counting: criterion's timing loop is
//! too noisy on a shared machine to tell a few percent apart, callgrind's counts are not.
//!
//! ```text
//! cargo bench -p aisle-ranking --bench rank_count --no-run
//! valgrind --tool=callgrind --toggle-collect='aisle_ranking::rank_local*' \
//!     target/release/deps/rank_count-<hash> 2000
//! ```
//!
//! With `anonymous`, every decision is for a shopper the node knows nothing about (the default session view);
//! with `full` too, those go through retrieval and scoring of every candidate instead of `rank_local`'s
//! precomputed order (`aisle_ranking::score::rank` in the toggle then).
//!
//! The model is fitted once and kept in `AISLE_PROFILE_MODEL` (default `target/rank_count-model.bin`), so a run
//! under valgrind spends its time in the decisions, not in training. The first argument is the number of
//! decisions; without valgrind, the time per decision is printed too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aisle_domain::demo::{DEMO_SEED, DemoWorld};
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_domain::session::SessionView;
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_ranking::fit::{FitConfig, fit, replay};
use aisle_ranking::{Model, Query, ServedModel, rank_local, retrieve, score};
use aisle_session::SessionLimits;

const ANCHOR_MS: i64 = 1_700_000_000_000;

/// FNV-1a over the answers (items and reasons), so a change that alters any answer shows.
fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let decisions: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2_000);
    let anonymous = args.iter().any(|a| a == "anonymous");
    let full = args.iter().any(|a| a == "full");
    let world = DemoWorld::generate(DEMO_SEED, ANCHOR_MS, 25_000);
    let catalog = Arc::new(world.load_catalog());
    let path = std::env::var_os("AISLE_PROFILE_MODEL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/rank_count-model.bin"),
        PathBuf::from,
    );
    let model = match std::fs::read(&path) {
        Ok(bytes) => Model::from_bytes(&bytes).expect("model"),
        Err(_) => {
            let config = FitConfig {
                max_positions: 4_000,
                negatives: 10,
                max_iterations: 50,
                ..FitConfig::default()
            };
            let model = fit(&world.history, catalog.clone(), &config, &mut |_| {}).expect("fits");
            std::fs::write(&path, model.to_bytes()).expect("model written");
            model
        }
    };
    let served = ServedModel::bind(&model, catalog.clone(), "rank_count");
    let views: Vec<SessionView> = if anonymous {
        vec![SessionView::default()]
    } else {
        world.history[world.history.len() - 300..]
            .iter()
            .flat_map(|s| {
                (1..s.events.len())
                    .map(|p| replay(&catalog, &s.events[..p]).view(&SessionLimits::default()))
            })
            .take(decisions.max(1))
            .collect()
    };
    let rules = Rules::embedded();
    let started = Instant::now();
    let mut checksum = 0f64;
    let mut fingerprint = 0xcbf2_9ce4_8422_2325u64;
    for k in 0..decisions {
        let view = &views[k % views.len()];
        let guard = Guard::new(
            &rules,
            &served.catalog,
            PolicyContext {
                attributes: ShopperAttributes::default(),
                channel: Channel::Web,
                purchased: &view.purchased,
                now_ms: ANCHOR_MS,
                max_items_per_category: 2,
            },
        );
        let query = Query {
            view,
            context: &[],
            candidates: None,
        };
        let items = if full {
            let retrieved = retrieve(&served, &query);
            let mut exclusions = ExclusionCounts::default();
            score::rank(&served, &retrieved, &guard, 10, &mut exclusions)
        } else {
            rank_local(&served, &query, &guard, 10).items
        };
        for item in &items {
            checksum += f64::from(item.admitted.score);
            fingerprint = mix(fingerprint, &item.admitted.item.to_le_bytes());
            for reason in &item.reasons {
                fingerprint = mix(fingerprint, reason.as_bytes());
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{decisions} decisions over {} views: {:.1} µs each, checksum {checksum:.6}, fingerprint {fingerprint:016x}",
        views.len(),
        elapsed.as_secs_f64() * 1e6 / decisions as f64
    );
}
