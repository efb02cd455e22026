//! `Rules::from_json` on arbitrary bytes; rules it accepts are evaluated on every item of a fixed catalog (admit,
//! offers, select), re-read from their own file, and used for a ranking.
#![no_main]

use aisle_domain::catalog::Catalog;
use aisle_fuzz::{catalog, evaluate_rules, rank_all, sample_session, served};
use aisle_policy::{Rules, RulesFile};
use aisle_session::SessionLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rules) = Rules::from_json(data, "fuzz") else {
        return;
    };
    let file: RulesFile = serde_json::from_slice(data).expect("accepted rules are a rules file");
    let bytes = serde_json::to_vec(&file).expect("rules files serialise");
    let again = Rules::from_json(&bytes, "fuzz-again").expect("a rules file's own bytes are valid");
    assert_eq!(
        (
            again.min_stock,
            again.max_discount_percent,
            again.max_items_per_category,
            again.exclude_purchased
        ),
        (
            rules.min_stock,
            rules.max_discount_percent,
            rules.max_items_per_category,
            rules.exclude_purchased
        )
    );

    evaluate_rules(&rules, catalog());
    // A second catalog (the per-catalog cache is re-resolved), then the first again.
    let plain = Catalog::plain("plain", ["sock-1".to_string(), "x".to_string()]);
    evaluate_rules(&rules, &plain);
    evaluate_rules(&rules, catalog());

    let view = sample_session().view(&SessionLimits::default());
    rank_all(served(), &rules, &view);
});
