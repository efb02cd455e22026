//! `Model::from_bytes` on arbitrary bytes, and on arbitrary payloads wrapped in a well-formed envelope (so that the
//! fuzzer gets past the content hash to the postcard decoder and the validation). A model it accepts must re-encode,
//! bind to a catalog and rank, as the node does right after loading one.
#![no_main]

use aisle_domain::bundle::BundleError;
use aisle_fuzz::{catalog, model_bundle, rank_all, rules, sample_session};
use aisle_ranking::{Model, ServedModel};
use aisle_session::SessionLimits;
use libfuzzer_sys::fuzz_target;

fn exercise(result: Result<Model, BundleError>) {
    let Ok(model) = result else {
        return;
    };
    let again = Model::from_bytes(&model.to_bytes()).expect("a model's own bundle is valid");
    assert_eq!(again.data, model.data);
    let served = ServedModel::bind(&model, catalog().clone(), "fuzz");
    let view = sample_session().view(&SessionLimits::default());
    rank_all(&served, rules(), &view);
}

fuzz_target!(|data: &[u8]| {
    exercise(Model::from_bytes(data));
    if !data.starts_with(b"AISLE-BUNDLE\n") {
        exercise(Model::from_bytes(&model_bundle(data)));
    }
});
