//! `Catalog::from_json` on arbitrary bytes; what it accepts must be consistent, round-trip through the file format
//! and rebase over (and under) another catalog version as the node does on a catalog update.
#![no_main]

use aisle_domain::catalog::Catalog;
use aisle_fuzz::{catalog, check_catalog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Catalog::from_json(data, "fuzz") else {
        return;
    };
    check_catalog(&c);

    // The file format round-trips.
    let bytes = serde_json::to_vec(&c.to_file()).expect("catalog files serialise");
    let again = Catalog::from_json(&bytes, "fuzz-again").expect("a catalog's own file is valid");
    assert_eq!(c.items, again.items);
    assert_eq!(c.categories, again.categories);
    assert_eq!(c.brands, again.brands);
    assert_eq!(c.offers, again.offers);

    // The new version over the current one (the node's catalog update): known items keep their index.
    let base = catalog();
    if let Ok(r) = Catalog::from_json_over(data, "fuzz", base) {
        check_catalog(&r);
        for (i, it) in base.items.iter().enumerate() {
            assert_eq!(r.lookup(&it.id), Some(i as u32), "{:?} moved", it.id);
        }
        for it in &c.items {
            assert!(!r.item(r.lookup(&it.id).expect("listed")).delisted);
        }
        let bytes = serde_json::to_vec(&r.to_file()).expect("catalog files serialise");
        Catalog::from_json(&bytes, "fuzz-again").expect("a rebased catalog's own file is valid");
        // And the fixture back over that one: a base with delisted items.
        if let Ok(back) = (**base).clone().rebased(&r) {
            check_catalog(&back);
            for (i, it) in r.items.iter().enumerate() {
                assert_eq!(back.lookup(&it.id), Some(i as u32), "{:?} moved", it.id);
            }
        }
    }
    // The fixture over the fuzzed catalog.
    if let Ok(r) = (**base).clone().rebased(&c) {
        check_catalog(&r);
        for (i, it) in c.items.iter().enumerate() {
            assert_eq!(r.lookup(&it.id), Some(i as u32), "{:?} moved", it.id);
        }
    }
});
