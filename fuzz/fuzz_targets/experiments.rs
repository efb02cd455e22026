//! `Experiments::from_json` on arbitrary bytes; experiments it accepts assign fixed shoppers on every surface,
//! deterministically, and re-read from their own file.
#![no_main]

use aisle_domain::request::Surface;
use aisle_experiment::{Experiments, ExperimentsFile};
use libfuzzer_sys::fuzz_target;

const SHOPPERS: [&str; 4] = ["shopper-1", "", "s-42", "ünïcödé shopper"];

fuzz_target!(|data: &[u8]| {
    let Ok(experiments) = Experiments::from_json(data, "fuzz") else {
        return;
    };
    let file: ExperimentsFile =
        serde_json::from_slice(data).expect("accepted experiments are a file");
    for shopper in SHOPPERS {
        for &surface in Surface::ALL {
            let a = experiments.assign(shopper, surface);
            assert_eq!(
                a,
                experiments.assign(shopper, surface),
                "assignment is not deterministic"
            );
            assert_eq!(a.in_holdout, experiments.in_holdout(shopper));
            assert!(a.variants.len() <= file.experiments.len());
            for (key, variant) in &a.variants {
                let e = file
                    .experiments
                    .iter()
                    .find(|e| e.key == **key)
                    .expect("assigned to a listed experiment");
                assert!(
                    e.variants.iter().any(|v| v.name == **variant),
                    "unlisted variant"
                );
                if a.in_holdout {
                    assert_eq!(
                        **variant, e.variants[0].name,
                        "a held-out shopper gets the control"
                    );
                }
            }
        }
    }
    let bytes = serde_json::to_vec(&file).expect("experiments files serialise");
    Experiments::from_json(&bytes, "fuzz-again")
        .expect("an experiments file's own bytes are valid");
});
