//! Each candidate generator on tiny hand-made sessions whose right answers are known, the model bundle's
//! validation, and the guarantee that sharded scoring equals one-pass scoring.

use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventKind, LoggedEvent, LoggedSession};
use aisle_domain::request::{AgeBand, Channel, ShopperAttributes};
use aisle_domain::session::SessionView;
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_ranking::features::{FEATURE_NAMES, index_of};
use aisle_ranking::fit::{FitConfig, generators_only, replay};
use aisle_ranking::score::{merge, score_partition};
use aisle_ranking::{Model, Query, ServedModel, rank_local, retrieve};
use aisle_session::SessionLimits;

fn session(id: &str, items: &[&str]) -> LoggedSession {
    LoggedSession {
        id: id.into(),
        events: items
            .iter()
            .enumerate()
            .map(|(k, i)| LoggedEvent {
                item: i.to_string(),
                kind: EventKind::View,
                ts_ms: 1_000 * (id.len() as i64 * 100 + k as i64),
            })
            .collect(),
    }
}

/// s1: A B C · s2: A B D · s3: B C · s4: A C (in this time order).
fn tiny() -> (Vec<LoggedSession>, Arc<Catalog>, ServedModel) {
    let sessions = vec![
        session("s1", &["A", "B", "C"]),
        session("s2", &["A", "B", "D"]),
        session("s3", &["B", "C"]),
        session("s4", &["A", "C"]),
    ];
    let model = generators_only(&sessions, &FitConfig::default());
    let catalog = Arc::new(Catalog::plain("tiny", model.data.items.clone()));
    let served = ServedModel::bind(&model, catalog.clone(), "test");
    (sessions, catalog, served)
}

fn raw_scores(
    served: &ServedModel,
    catalog: &Catalog,
    prefix: &[&str],
) -> Vec<(String, aisle_ranking::features::Raw)> {
    let events: Vec<LoggedEvent> = session("q", prefix).events;
    let view = replay(catalog, &events).view(&SessionLimits::default());
    let r = retrieve(
        served,
        &Query {
            view: &view,
            context: &[],
            candidates: None,
        },
    );
    r.candidates
        .into_iter()
        .map(|(i, raw)| (catalog.item(i).id.to_string(), raw))
        .collect()
}

fn get<'a>(
    scores: &'a [(String, aisle_ranking::features::Raw)],
    id: &str,
) -> &'a aisle_ranking::features::Raw {
    &scores
        .iter()
        .find(|s| s.0 == id)
        .unwrap_or_else(|| panic!("{id} not retrieved"))
        .1
}

#[test]
fn association_rules_count_co_occurrence() {
    let (_, catalog, served) = tiny();
    let s = raw_scores(&served, &catalog, &["A"]);
    // A co-occurs with B twice, C twice, D once; normalised to the strongest.
    assert_eq!(get(&s, "B").ar_last, 1.0);
    assert_eq!(get(&s, "C").ar_last, 1.0);
    assert_eq!(get(&s, "D").ar_last, 0.5);
}

#[test]
fn sequential_rules_weigh_order_and_distance() {
    let (_, catalog, served) = tiny();
    let s = raw_scores(&served, &catalog, &["A"]);
    // After A: B at distance 1 twice (2), C at 2 once and 1 once (1.5), D at 2 once (0.5); normalised by 2.
    assert_eq!(get(&s, "B").sr_last, 1.0);
    assert_eq!(get(&s, "C").sr_last, 0.75);
    assert_eq!(get(&s, "D").sr_last, 0.25);
    // Nothing ever follows D.
    let after_d = raw_scores(&served, &catalog, &["D"]);
    assert!(after_d.iter().all(|(_, r)| r.sr_last == 0.0));
}

#[test]
fn session_knn_scores_items_of_similar_sessions() {
    let (_, catalog, served) = tiny();
    let s = raw_scores(&served, &catalog, &["A", "B"]);
    // Weights: A 0.5, B 1. Similarity = overlap / (sqrt(2) * sqrt(len)):
    // s1 1.5/(1.414*1.732) = 0.612, s2 0.612, s3 1/(1.414*1.414) = 0.5, s4 0.5/2 = 0.25; total 1.974.
    // C is in s1, s3, s4: (0.612 + 0.5 + 0.25) / 1.974 = 0.690; D only in s2: 0.310.
    assert!(
        (get(&s, "C").sknn - 0.690).abs() < 0.002,
        "{}",
        get(&s, "C").sknn
    );
    assert!(
        (get(&s, "D").sknn - 0.310).abs() < 0.002,
        "{}",
        get(&s, "D").sknn
    );
}

#[test]
fn popularity_and_session_recency() {
    let (_, catalog, served) = tiny();
    let a = catalog.lookup("A").unwrap() as usize;
    let d = catalog.lookup("D").unwrap() as usize;
    // A was seen 3 times, D once: log-normalised popularity 1 and ln 2 / ln 4 = 0.5.
    assert_eq!(served.items[a].popularity, 1.0);
    assert!((served.items[d].popularity - 0.5).abs() < 1e-6);
    let s = raw_scores(&served, &catalog, &["A", "B", "A"]);
    assert_eq!(get(&s, "A").seen_steps, 0);
    assert_eq!(get(&s, "A").seen_count, 2);
    assert_eq!(get(&s, "B").seen_steps, 1);
    assert_eq!(get(&s, "D").seen_steps, u16::MAX);
}

fn open_rules() -> Rules {
    Rules::from_json(
        br#"{"format_version":1,"version":"open","min_stock":0,"max_items_per_category":0,"exclude_purchased":false}"#,
        "test",
    )
    .unwrap()
}

fn adult() -> PolicyContext<'static> {
    PolicyContext {
        attributes: ShopperAttributes {
            age_verified: true,
            age_band: AgeBand::From21,
            ..Default::default()
        },
        channel: Channel::Web,
        purchased: &[],
        now_ms: 0,
        max_items_per_category: 0,
    }
}

#[test]
fn the_ranker_orders_by_its_weights() {
    let (sessions, catalog, _) = tiny();
    let mut model = generators_only(&sessions, &FitConfig::default());
    // A ranker that only trusts sequential rules.
    model.data.ranker.weights = FEATURE_NAMES
        .iter()
        .map(|n| f32::from(u8::from(*n == "sr_last")))
        .collect();
    let served = ServedModel::bind(&model, catalog.clone(), "test");
    let rules = open_rules();
    let guard = Guard::new(&rules, &catalog, adult());
    let view = replay(&catalog, &session("q", &["A"]).events).view(&SessionLimits::default());
    let ranked = rank_local(
        &served,
        &Query {
            view: &view,
            context: &[],
            candidates: None,
        },
        &guard,
        3,
    );
    let ids: Vec<&str> = ranked
        .items
        .iter()
        .map(|r| &*catalog.item(r.admitted.item).id)
        .collect();
    assert_eq!(ids, ["B", "C", "D"]);
    assert_eq!(ranked.items[0].reasons[0], "often_next:A");
    assert!(index_of("sr_last").is_some());
}

#[test]
fn model_bundles_round_trip_and_refuse_what_they_cannot_serve() {
    let (sessions, _, _) = tiny();
    let model = generators_only(&sessions, &FitConfig::default());
    let bytes = model.to_bytes();
    let back = Model::from_bytes(&bytes).unwrap();
    assert_eq!(back.data, model.data);
    assert_eq!(back.header.content_hash.len(), 64);

    let mut corrupt = bytes.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let err = Model::from_bytes(&corrupt).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");

    let mut other_schema = model.clone();
    other_schema.header.feature_names.push("shoe_size".into());
    let err = Model::from_bytes(&other_schema.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature schema"), "{err}");

    let mut future = model.clone();
    future.header.format_version = 99;
    let err = Model::from_bytes(&future.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("format version 99"), "{err}");
}

#[test]
fn sharded_scoring_equals_one_pass_scoring() {
    let world = aisle_domain::demo::DemoWorld::generate(3, 1_700_000_000_000, 3_000);
    let catalog = Arc::new(world.load_catalog());
    let model = aisle_ranking::fit::fit(
        &world.history,
        catalog.clone(),
        &FitConfig {
            max_positions: 2_000,
            negatives: 5,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let served = ServedModel::bind(&model, catalog.clone(), "test");
    let rules = Rules::embedded();
    for s in world.history.iter().take(150) {
        let view: SessionView = replay(&catalog, &s.events).view(&SessionLimits::default());
        let ctx = PolicyContext {
            attributes: ShopperAttributes::default(),
            channel: Channel::Web,
            purchased: &view.purchased,
            now_ms: 1_700_000_000_000,
            max_items_per_category: 2,
        };
        let guard = Guard::new(&rules, &catalog, ctx);
        let query = Query {
            view: &view,
            context: &[],
            candidates: None,
        };
        let one = rank_local(&served, &query, &guard, 10);
        let r = retrieve(&served, &query);
        for parts in [2, 3, 5] {
            let results = (0..parts)
                .map(|p| score_partition(&served, &r.profile, &r.candidates, p, parts, &guard, 10))
                .collect();
            let mut counts = ExclusionCounts::default();
            let sharded = merge(&served, results, &guard, 10, r.last_item, &mut counts);
            assert_eq!(
                sharded, one.items,
                "session {} with {parts} partitions",
                s.id
            );
        }
        assert!(one.items.len() == 10, "{}", one.items.len());
    }
}
