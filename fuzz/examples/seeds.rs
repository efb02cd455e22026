//! Writes the seed corpora of every fuzz target into `<dir>/<target>/` (default `corpus/`), from valid inputs: the
//! fixture and demo catalogs, the fixture model (bundle and bare payload), the embedded default rules and
//! experiments, exported sessions, and valid Decide and Track requests. Deterministic; run by `seeds.sh`.

use std::path::{Path, PathBuf};

use aisle_domain::demo::DemoWorld;
use aisle_fuzz::{
    NOW_MS, catalog, catalog_json, next_catalog_json, sample_session, store_visit, tiny_model,
};
use aisle_proto::v1 as pb;
use aisle_session::{AssistRules, SessionContext, SessionLimits};
use prost::Message;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create corpus dir");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));

    // catalog
    write(&dir, "catalog", "fixture.json", catalog_json().as_bytes());
    write(&dir, "catalog", "next.json", next_catalog_json().as_bytes());
    write(
        &dir,
        "catalog",
        "minimal.json",
        br#"{"format_version":1,"version":"v","categories":[],"items":[]}"#,
    );
    let mut demo = DemoWorld::generate(1, NOW_MS, 0).catalog;
    demo.items.truncate(40);
    let keep: Vec<String> = demo.items.iter().map(|i| i.id.clone()).collect();
    demo.offers.retain(|o| keep.contains(&o.item_id));
    write(
        &dir,
        "catalog",
        "demo-40.json",
        &serde_json::to_vec_pretty(&demo).unwrap(),
    );

    // model: whole bundles, and bare payloads (the target wraps those in a valid envelope)
    let model = tiny_model();
    let bundle = model.to_bytes();
    write(&dir, "model", "fixture.bundle", &bundle);
    let payload_at = bundle.iter().skip(13).position(|&b| b == b'\n').unwrap() + 14;
    write(&dir, "model", "fixture.payload", &bundle[payload_at..]);
    let world = DemoWorld::generate(2, NOW_MS, 12);
    let demo_model = aisle_ranking::fit::generators_only(&world.history, &Default::default());
    let demo_bytes = demo_model.to_bytes();
    let at = demo_bytes
        .iter()
        .skip(13)
        .position(|&b| b == b'\n')
        .unwrap()
        + 14;
    write(&dir, "model", "demo-12.payload", &demo_bytes[at..]);

    // rules
    let rules = aisle_policy::rules::default_rules_file();
    write(
        &dir,
        "rules",
        "default.json",
        &serde_json::to_vec_pretty(&rules).unwrap(),
    );
    write(
        &dir,
        "rules",
        "minimal.json",
        br#"{"format_version":1,"version":"x"}"#,
    );
    write(
        &dir,
        "rules",
        "strict.json",
        br#"{"format_version":1,"version":"strict","min_stock":10,"max_discount_percent":0,"max_items_per_category":1,"exclude_purchased":false,"age_restrictions":[{"category":"Socks","min_age":99},{"category":"Hats","min_age":18}]}"#,
    );

    // experiments
    let experiments = aisle_experiment::default_experiments_file();
    write(
        &dir,
        "experiments",
        "default.json",
        &serde_json::to_vec_pretty(&experiments).unwrap(),
    );
    write(
        &dir,
        "experiments",
        "three-way.json",
        br#"{"format_version":1,"version":"e2","holdout":{"percent":50,"salt":"h"},"experiments":[{"key":"a","salt":"s","coverage_percent":80,"surfaces":["home","cart"],"variants":[{"name":"control","weight":1},{"name":"b","weight":2,"params":{"model":"candidate"}},{"name":"c","weight":0,"params":{"max_items_per_category":1}}]},{"key":"b","variants":[{"name":"x","weight":5}]}]}"#,
    );

    // session_import: sessions as peers hand them off
    let c = catalog();
    let session = sample_session();
    write(
        &dir,
        "session_import",
        "visit.json",
        &serde_json::to_vec(&session.to_portable(c)).unwrap(),
    );
    write(
        &dir,
        "session_import",
        "empty.json",
        &serde_json::to_vec(&SessionContext::new().to_portable(c)).unwrap(),
    );
    let mut tight = SessionContext::new();
    let limits = SessionLimits {
        history: 3,
        searches: 1,
        purchased: 1,
        cart_lines: 1,
        affinities: 1,
        ..Default::default()
    };
    let assist = AssistRules {
        linger_events: 2,
        cart_value_threshold_cents: 100,
        ..Default::default()
    };
    for e in store_visit().iter().chain(store_visit()[..6].iter()) {
        tight.apply(e, c, &limits, &assist);
    }
    write(
        &dir,
        "session_import",
        "tight.json",
        &serde_json::to_vec(&tight.to_portable(c)).unwrap(),
    );
    // Regression: the first crash found (a cart worth more than i64::MAX, through the structured decoding).
    write(
        &dir,
        "session_import",
        "regression-cart-overflow.bin",
        b"\"r\\u0000\\u0001",
    );

    // request_validation: protobuf Decide and Track requests
    let decide = pb::DecideRequest {
        shopper_id: "shopper-1".into(),
        surface: pb::Surface::ProductPage as i32,
        channel: pb::Channel::App as i32,
        limit: 5,
        candidate_item_ids: vec![
            "sock-1".into(),
            "wine-1".into(),
            "nope".into(),
            "sock-1".into(),
        ],
        context_item_ids: vec!["hat-1".into()],
        consent: Some(true),
        attributes: Some(pb::ShopperAttributes {
            age_verified: true,
            age_band: pb::AgeBand::AgeBand21Plus as i32,
            loyalty_tier: pb::LoyaltyTier::Gold as i32,
        }),
        store_id: "store-1".into(),
        region: "eu".into(),
        device: "d".into(),
        request_id: "r-1".into(),
    };
    write(
        &dir,
        "request_validation",
        "decide.pb",
        &decide.encode_to_vec(),
    );
    let minimal = pb::DecideRequest {
        shopper_id: "s".into(),
        surface: pb::Surface::Home as i32,
        ..Default::default()
    };
    write(
        &dir,
        "request_validation",
        "decide-minimal.pb",
        &minimal.encode_to_vec(),
    );
    let ev = |shopper: &str, kind: pb::EventType, item: &str| pb::TrackEvent {
        shopper_id: shopper.into(),
        r#type: kind as i32,
        item_id: item.into(),
        ..Default::default()
    };
    let mut search = ev("s2", pb::EventType::Search, "");
    search.query = "red socks".into();
    let mut scan = ev("s1", pb::EventType::AisleScan, "sock-2");
    scan.store_id = "store-1".into();
    scan.aisle = "B01".into();
    let mut buy = ev("s1", pb::EventType::Purchase, "sock-2");
    buy.quantity = 2;
    buy.price = 6.99;
    buy.consent = Some(true);
    buy.timestamp = Some(prost_types::Timestamp {
        seconds: NOW_MS / 1000 - 60,
        nanos: 5_000_000,
    });
    let mut enter = ev("s1", pb::EventType::StoreEnter, "");
    enter.store_id = "store-1".into();
    let track = pb::TrackRequest {
        events: vec![
            enter,
            ev("s1", pb::EventType::View, "sock-1"),
            scan,
            ev("s1", pb::EventType::AddToCart, "sock-2"),
            search,
            buy,
            ev("s2", pb::EventType::View, "unknown-item"),
            ev("s1", pb::EventType::RemoveFromCart, "sock-2"),
            ev("s1", pb::EventType::StoreExit, ""),
        ],
        request_id: "t-1".into(),
    };
    write(
        &dir,
        "request_validation",
        "track.pb",
        &track.encode_to_vec(),
    );
    // assertion: the first byte picks the mode (0 raw text, 1 signed claims, 2 signed header and claims)
    let claims = format!(
        r#"{{"sub":"shopper-1","exp":{},"store":"store-1"}}"#,
        NOW_MS / 1000 + 600
    );
    write(
        &dir,
        "assertion",
        "claims",
        &[&[1u8][..], claims.as_bytes()].concat(),
    );
    let header = br#"{"alg":"HS256","typ":"JWT"}"#;
    let both = [&[2u8, header.len() as u8][..], header, claims.as_bytes()].concat();
    write(&dir, "assertion", "header-claims", &both);
    write(
        &dir,
        "assertion",
        "raw",
        b"\0eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzIiwiZXhwIjoxfQ.c2lnbmF0dXJl",
    );

    // bundle_signature: the first byte picks the mode (0 trusted-keys file, 1 signature file, 2 a signed file)
    write(
        &dir,
        "bundle_signature",
        "keys",
        b"\0# release key\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\nO2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=\n",
    );
    let sig = format!("{}\n", "A".repeat(86) + "==");
    write(
        &dir,
        "bundle_signature",
        "sig",
        &[&[1u8][..], sig.as_bytes()].concat(),
    );
    write(
        &dir,
        "bundle_signature",
        "file",
        &[&[2u8][..], catalog_json().as_bytes()].concat(),
    );
    eprintln!("seeds written under {}", dir.display());
}
