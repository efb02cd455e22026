//! Each candidate generator on tiny hand-made sessions whose right answers are known, the model bundle's
//! validation, and the guarantee that sharded scoring equals one-pass scoring.

use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventKind, LoggedEvent, LoggedSession};
use aisle_domain::request::{AgeBand, Channel, ShopperAttributes};
use aisle_domain::session::SessionView;
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_ranking::csr::Csr;
use aisle_ranking::features::{FEATURE_NAMES, Raw, index_of};
use aisle_ranking::fit::{FitConfig, generators_only, replay};
use aisle_ranking::model::{GeneratorParams, MAX_MODEL_CANDIDATES};
use aisle_ranking::score::{merge, score_partition};
use aisle_ranking::{Model, Query, ServedModel, rank_local, retrieve};
use aisle_session::SessionLimits;

fn session_at(id: &str, items: &[&str], start_ms: i64) -> LoggedSession {
    LoggedSession {
        id: id.into(),
        events: items
            .iter()
            .enumerate()
            .map(|(k, i)| LoggedEvent {
                item: i.to_string(),
                kind: EventKind::View,
                ts_ms: start_ms + 1_000 * k as i64,
            })
            .collect(),
    }
}

fn session(id: &str, items: &[&str]) -> LoggedSession {
    session_at(id, items, 0)
}

const HOUR: i64 = 3_600_000;

/// s1: A B C · s2: A B D · s3: B C · s4: A C, an hour apart in this order.
fn tiny_sessions() -> Vec<LoggedSession> {
    vec![
        session_at("s1", &["A", "B", "C"], HOUR),
        session_at("s2", &["A", "B", "D"], 2 * HOUR),
        session_at("s3", &["B", "C"], 3 * HOUR),
        session_at("s4", &["A", "C"], 4 * HOUR),
    ]
}

fn serve(model: &Model) -> (Arc<Catalog>, ServedModel) {
    let catalog = Arc::new(Catalog::plain("tiny", model.data.items.clone()));
    let served = ServedModel::bind(model, catalog.clone(), "test");
    (catalog, served)
}

fn tiny_with(config: &FitConfig) -> (Vec<LoggedSession>, Arc<Catalog>, ServedModel) {
    let sessions = tiny_sessions();
    let model = generators_only(&sessions, config);
    let (catalog, served) = serve(&model);
    (sessions, catalog, served)
}

fn tiny() -> (Vec<LoggedSession>, Arc<Catalog>, ServedModel) {
    tiny_with(&FitConfig::default())
}

fn retrieved(served: &ServedModel, catalog: &Catalog, prefix: &[&str]) -> aisle_ranking::Retrieved {
    let events: Vec<LoggedEvent> = session("q", prefix).events;
    let view = replay(catalog, &events).view(&SessionLimits::default());
    retrieve(
        served,
        &Query {
            view: &view,
            context: &[],
            candidates: None,
        },
    )
}

fn raw_scores(served: &ServedModel, catalog: &Catalog, prefix: &[&str]) -> Vec<(String, Raw)> {
    retrieved(served, catalog, prefix)
        .candidates
        .into_iter()
        .map(|(i, raw)| (catalog.item(i).id.to_string(), raw))
        .collect()
}

fn get<'a>(scores: &'a [(String, Raw)], id: &str) -> &'a Raw {
    &scores
        .iter()
        .find(|s| s.0 == id)
        .unwrap_or_else(|| panic!("{id} not retrieved"))
        .1
}

fn row(
    served: &ServedModel,
    catalog: &Catalog,
    csr: &aisle_ranking::csr::Csr,
    id: &str,
) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = csr
        .pairs(catalog.lookup(id).unwrap() as usize)
        .map(|(t, w)| (catalog.item(t).id.to_string(), w))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let _ = served;
    v
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn association_rules_count_every_pair_of_events_both_ways() {
    let (_, catalog, served) = tiny();
    // A co-occurs with B in s1 and s2, with C in s1 and s4, with D in s2: raw counts, strongest first.
    assert_eq!(
        row(&served, &catalog, &served.ar, "A"),
        [("B".into(), 2.0), ("C".into(), 2.0), ("D".into(), 1.0)]
    );
    assert_eq!(
        served
            .ar
            .pairs(catalog.lookup("A").unwrap() as usize)
            .last()
            .unwrap()
            .1,
        1.0
    );
    // Repeats count too (session-rec): A A B gives A a self-rule.
    let model = generators_only(&[session("r", &["A", "A", "B"])], &FitConfig::default());
    let (catalog, served) = serve(&model);
    assert_eq!(
        row(&served, &catalog, &served.ar, "A"),
        [("A".into(), 2.0), ("B".into(), 2.0)]
    );
    assert_eq!(
        row(&served, &catalog, &served.sr, "A"),
        [("A".into(), 1.0), ("B".into(), 1.5)]
    );
}

#[test]
fn sequential_rules_weigh_order_and_distance() {
    let (_, catalog, served) = tiny();
    let s = raw_scores(&served, &catalog, &["A"]);
    // After A: B at distance 1 twice (2), C at 2 (s1) and 1 (s4) (1.5), D at 2 once (0.5). Raw weights.
    assert_eq!(get(&s, "B").sr_last, 2.0);
    assert_eq!(get(&s, "C").sr_last, 1.5);
    assert_eq!(get(&s, "D").sr_last, 0.5);
    // Only `sr_steps` back.
    let (_, catalog, served) = tiny_with(&FitConfig {
        params: GeneratorParams {
            sr_steps: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let s = raw_scores(&served, &catalog, &["A"]);
    assert_eq!(get(&s, "C").sr_last, 1.0, "only s4's A C is one step apart");
    assert_eq!(get(&s, "D").sr_last, 0.0);
}

#[test]
fn session_rules_use_the_earlier_distinct_items() {
    let (_, catalog, served) = tiny();
    // Last item A, earlier distinct item B (k = 1).
    let s = raw_scores(&served, &catalog, &["B", "A"]);
    // SR[B]: C 1 (s1) + 1 (s3) = 2, D 1 (s2); AR[B]: A 2, C 2, D 1.
    assert_eq!(get(&s, "C").sr_session, 2.0);
    assert_eq!(get(&s, "D").sr_session, 1.0);
    assert_eq!(get(&s, "A").ar_session, 2.0);
    assert_eq!(get(&s, "D").ar_session, 1.0);
    // srall = SR[A] + SR[B]/1.
    assert_eq!(get(&s, "B").sr_all, 2.0);
    assert_eq!(get(&s, "C").sr_all, 3.5);
    assert_eq!(get(&s, "D").sr_all, 1.5);
    // Beyond `session_rule_items` distinct items back, only srall keeps counting (weight 1/k).
    let (_, catalog, served) = tiny_with(&FitConfig {
        params: GeneratorParams {
            session_rule_items: 0,
            ..Default::default()
        },
        ..Default::default()
    });
    let s = raw_scores(&served, &catalog, &["B", "A"]);
    assert_eq!(get(&s, "C").sr_session, 0.0);
    assert_eq!(get(&s, "C").sr_all, 3.5);
}

#[test]
fn vsknn_weighs_positions_and_decays_by_step() {
    let (_, catalog, served) = tiny();
    let r = retrieved(&served, &catalog, &["A", "B"]);
    let s: Vec<(String, Raw)> = r
        .candidates
        .iter()
        .map(|(i, raw)| (catalog.item(*i).id.to_string(), *raw))
        .collect();
    // Position weights A (1/2)² = 0.25, B 1; 2 distinct items. s1 {A,B,C}: 1.25/2, step 1. s2 {A,B,D}: 0.625.
    // s3 {B,C}: 0.5. s4 {A,C}: 0.125, its latest session item is A, one step back: 0.125/4.
    assert!(close(get(&s, "A").vsknn, 0.625 + 0.625 + 0.03125));
    assert!(close(get(&s, "B").vsknn, 0.625 + 0.625 + 0.5));
    assert!(close(get(&s, "C").vsknn, 0.625 + 0.5 + 0.03125));
    assert!(close(get(&s, "D").vsknn, 0.625));
    assert_eq!(get(&s, "C").neighbours, 3.0);
    assert_eq!(get(&s, "D").neighbours, 1.0);
    assert!(close(r.profile.log_neighbours, 5f32.ln()));
    // Normalised by the strongest (B) and log-ranked among the candidates: B 1, A 2, C 3, D 4.
    assert!(close(r.profile.scale.vsknn, 1.0 / 1.75));
    assert!(close(get(&s, "B").vsknn_lrank, 2f32.ln()));
    assert!(close(get(&s, "C").vsknn_lrank, 4f32.ln()));
    assert!(close(get(&s, "D").vsknn_lrank, 5f32.ln()));
    // Only the k most similar neighbours, among the `sknn_sample` most recent sessions.
    let (_, catalog, served) = tiny_with(&FitConfig {
        params: GeneratorParams {
            sknn_sample: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let s = raw_scores(&served, &catalog, &["A", "B"]);
    assert!(
        close(get(&s, "C").vsknn, 0.03125),
        "only s4, the most recent"
    );
    assert_eq!(get(&s, "D").vsknn, 0.0);
}

#[test]
fn popularity_windows_end_with_the_data() {
    let sessions = tiny_sessions();
    let config = FitConfig {
        params: GeneratorParams {
            recent_window_ms: HOUR + 5_000,
            short_window_ms: 500,
            ..Default::default()
        },
        ..Default::default()
    };
    let (catalog, served) = serve(&generators_only(&sessions, &config));
    let info = |id: &str| served.items[catalog.lookup(id).unwrap() as usize];
    let inputs = |id: &str| info(id).inputs;
    // The data end with s4's C. All time: A, B, C 3 events, D 1. The last hour and 5 s: s3 (B C) and s4 (A C).
    // The last half second: s4's C.
    assert!(close(inputs("A").lpop, 4f32.ln()));
    assert!(close(inputs("D").lpop, 2f32.ln()));
    assert!(close(inputs("C").lrpop, 3f32.ln()), "C in s3 and s4");
    assert!(close(inputs("A").lrpop, 2f32.ln()));
    assert_eq!(inputs("D").lrpop, 0.0);
    assert!(close(inputs("C").lr6pop, 2f32.ln()));
    assert_eq!(inputs("A").lr6pop, 0.0);
    assert_eq!(info("A").popularity, 1.0);
}

#[test]
fn candidates_are_the_union_by_priority_then_top_sellers() {
    let (_, catalog, served) = tiny_with(&FitConfig {
        params: GeneratorParams {
            max_candidates: 4,
            ..Default::default()
        },
        ..Default::default()
    });
    let ids = |prefix: &[&str]| -> Vec<String> {
        raw_scores(&served, &catalog, prefix)
            .into_iter()
            .map(|c| c.0)
            .collect()
    };
    // After D: D itself, A and B (rules, V-SKNN), then C as a top seller. Candidates come in item order.
    assert_eq!(ids(&["D"]), ["A", "B", "C", "D"]);
    assert_eq!(ids(&["C"]).len(), 4);
    let (_, catalog, served) = tiny_with(&FitConfig {
        params: GeneratorParams {
            max_candidates: 3,
            ..Default::default()
        },
        ..Default::default()
    });
    // After A: the session item first, then by priority B (1) and C (1) before D (0.5).
    let kept: Vec<String> = raw_scores(&served, &catalog, &["A"])
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, ["A", "B", "C"]);
    // Session items: counts and recency.
    let (_, catalog, served) = tiny();
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
        .map(|n| f32::from(u8::from(*n == "sr_norm")))
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
    assert!(index_of("sr_norm").is_some());
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

/// Found by fuzzing (`fuzz/`, target `model`): a model whose `max_candidates` was about 10^9 passed validation and
/// then aborted the process on a 4 GB allocation at its first decision; one with an index row per item too many
/// passed validation and then panicked in `ServedModel::bind`. Both are refused when the bundle is read.
#[test]
fn model_bundles_refuse_what_would_break_serving() {
    let (sessions, _, _) = tiny();
    let model = generators_only(&sessions, &FitConfig::default());
    let n = model.data.items.len();

    let mut greedy = model.clone();
    greedy.data.params.max_candidates = 1_040_200_754;
    let err = Model::from_bytes(&greedy.to_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("params: max_candidates"), "{err}");

    let one_row_too_many = || Csr::from_rows((0..=n).map(|_| Vec::<(u32, f32)>::new()));
    for part in ["ar", "sr", "item_sessions"] {
        let mut bad = model.clone();
        match part {
            "ar" => bad.data.ar = one_row_too_many(),
            "sr" => bad.data.sr = one_row_too_many(),
            _ => bad.data.item_sessions = one_row_too_many(),
        }
        let err = Model::from_bytes(&bad.to_bytes()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{part}: {} rows for {n} items", n + 1)),
            "{err}"
        );
    }

    // The largest accepted value is served.
    let mut widest = model.clone();
    widest.data.params.max_candidates = MAX_MODEL_CANDIDATES;
    let (catalog, served) = serve(&Model::from_bytes(&widest.to_bytes()).unwrap());
    let rules = Rules::embedded();
    let ctx = PolicyContext {
        attributes: ShopperAttributes::default(),
        channel: Channel::Web,
        purchased: &[],
        now_ms: 0,
        max_items_per_category: 0,
    };
    let view = SessionView::default();
    let query = Query {
        view: &view,
        context: &[],
        candidates: None,
    };
    let ranked = rank_local(&served, &query, &Guard::new(&rules, &catalog, ctx), 3);
    assert_eq!(ranked.items.len(), 3);
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

/// The demo world's catalog and a model fitted on its history, served: the world the fast paths are checked on.
fn demo_served() -> (Arc<Catalog>, ServedModel) {
    let world = aisle_domain::demo::DemoWorld::generate(5, 1_700_000_000_000, 2_000);
    let catalog = Arc::new(world.load_catalog());
    let model = aisle_ranking::fit::fit(
        &world.history,
        catalog.clone(),
        &FitConfig {
            max_positions: 1_000,
            negatives: 5,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let served = ServedModel::bind(&model, catalog.clone(), "test");
    (catalog, served)
}

/// Ranks `query` with `rank_local` (whose fast paths are under test) and with the full path (`retrieved` scored by
/// `score::rank`) under four guards — default and verified shoppers, with and without a per-category cap, limits
/// below and above a page — and asserts the same items, exclusion counts and candidate count. Returns each
/// guard's (items returned, limit).
fn assert_ranks_as_the_full_path(
    served: &ServedModel,
    query: &Query<'_>,
    retrieved: &aisle_ranking::Retrieved,
    rules: &Rules,
    what: &str,
) -> Vec<(usize, usize)> {
    let verified = ShopperAttributes {
        age_verified: true,
        age_band: AgeBand::From21,
        ..Default::default()
    };
    let mut returned = Vec::new();
    for (attributes, cap, limit) in [
        (ShopperAttributes::default(), 0, 10),
        (ShopperAttributes::default(), 2, 10),
        (verified, 1, 20),
        (verified, 0, 3),
    ] {
        let guard = Guard::new(
            rules,
            &served.catalog,
            PolicyContext {
                attributes,
                channel: Channel::Web,
                purchased: &query.view.purchased,
                now_ms: 1_700_000_000_000,
                max_items_per_category: cap,
            },
        );
        let fast = rank_local(served, query, &guard, limit);
        let mut exclusions = ExclusionCounts::default();
        let full = aisle_ranking::score::rank(served, retrieved, &guard, limit, &mut exclusions);
        assert_eq!(fast.items, full, "{what}, cap {cap}, limit {limit}");
        assert_eq!(fast.exclusions, exclusions, "{what}, cap {cap}");
        assert_eq!(fast.candidates, retrieved.candidates.len(), "{what}");
        returned.push((fast.items.len(), limit));
    }
    returned
}

#[test]
fn anonymous_queries_rank_as_the_full_path_does() {
    let (catalog, served) = demo_served();
    let rules = Rules::embedded();
    // Anonymous views: nothing at all; only searches and purchases (which the guardrails use, not ranking); only
    // items the catalog does not know.
    let mut searched = SessionView::default();
    searched.searches.push("socks".into());
    searched.purchased = catalog
        .items_in_category(0)
        .iter()
        .take(3)
        .copied()
        .collect();
    let mut unknown = SessionView::default();
    unknown.items.push(aisle_domain::session::ViewedItem {
        item: aisle_domain::event::ItemRef::Unknown,
        kind: EventKind::View,
        ts_ms: 1,
    });
    for view in [SessionView::default(), searched, unknown] {
        let query = Query {
            view: &view,
            context: &[],
            candidates: None,
        };
        assert!(query.is_anonymous());
        let retrieved = retrieve(&served, &query);
        for (returned, limit) in
            assert_ranks_as_the_full_path(&served, &query, &retrieved, &rules, "anonymous")
        {
            assert_eq!(returned, limit);
        }
    }
    // Anything about the shopper takes the full path.
    let mut viewed = SessionView::default();
    viewed.cart.push(1);
    let query = Query {
        view: &viewed,
        context: &[],
        candidates: None,
    };
    assert!(!query.is_anonymous());
    let on_screen = [1];
    let query = Query {
        view: &SessionView::default(),
        context: &on_screen,
        candidates: None,
    };
    assert!(!query.is_anonymous());
}

#[test]
fn on_screen_queries_rank_as_the_full_path_does() {
    let (catalog, served) = demo_served();
    let rules = Rules::embedded();
    let n = catalog.items.len() as u32;
    // Items on screen: top sellers (their rules touch other top sellers, which then are scored as touched),
    // items from the whole catalog, several at once, more than are considered, and an index the catalog does not
    // have (ignored, as if nothing were on screen).
    let mut screens: Vec<Vec<u32>> = served.popular.iter().take(12).map(|&i| vec![i]).collect();
    let mut x = 0x9e37_79b9_u32;
    for k in 0..40 {
        let len = 1 + k % 4;
        screens.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x % n
                })
                .collect(),
        );
    }
    screens.push(served.popular.iter().take(14).copied().collect());
    screens.push(vec![n + 5]);
    let purchased = SessionView {
        purchased: served.popular.iter().take(4).copied().collect(),
        ..SessionView::default()
    };
    let mut touched_top_sellers = 0;
    for (s, screen) in screens.iter().enumerate() {
        let view = if s % 3 == 0 {
            &purchased
        } else {
            &SessionView::default()
        };
        let query = Query {
            view,
            context: screen,
            candidates: None,
        };
        assert!(query.is_on_screen_only() && !query.is_anonymous());
        let retrieved = retrieve(&served, &query);
        touched_top_sellers += retrieved
            .candidates
            .iter()
            .filter(|(i, raw)| raw.context > 0.0 && served.popular[..50].contains(i))
            .count();
        assert_ranks_as_the_full_path(
            &served,
            &query,
            &retrieved,
            &rules,
            &format!("screen {screen:?}"),
        );
    }
    // The interesting case happened: top sellers touched by the rules, so scored here rather than taken from
    // the anonymous order.
    assert!(touched_top_sellers > 0);
}
