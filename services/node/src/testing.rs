//! A small real world for the node's unit tests, built once per test binary: the demo catalog (every category,
//! stock levels, age-restricted items, offers) and a model of its candidate generators fitted on 2,000 of its
//! sessions — no logistic training, so it takes milliseconds.

use std::sync::{Arc, OnceLock};

use aisle_domain::catalog::Catalog;
use aisle_domain::demo::{DEMO_SEED, DemoWorld};
use aisle_domain::event::{EventKind, LoggedEvent};
use aisle_domain::session::SessionView;
use aisle_ranking::fit::{FitConfig, generators_only, replay};
use aisle_ranking::{Model, ServedModel};
use aisle_session::SessionLimits;

/// The catalog and the model, shared.
pub(crate) fn world() -> (Arc<Catalog>, Model) {
    static WORLD: OnceLock<(Arc<Catalog>, Model)> = OnceLock::new();
    WORLD
        .get_or_init(|| {
            let world = DemoWorld::generate(DEMO_SEED, 1_700_000_000_000, 2_000);
            let catalog = Arc::new(world.load_catalog());
            let config = FitConfig {
                version: "unit-test".into(),
                ..FitConfig::default()
            };
            (catalog, generators_only(&world.history, &config))
        })
        .clone()
}

/// The model bound to the catalog.
pub(crate) fn served() -> Arc<ServedModel> {
    static SERVED: OnceLock<Arc<ServedModel>> = OnceLock::new();
    SERVED
        .get_or_init(|| {
            let (catalog, model) = world();
            Arc::new(ServedModel::bind(&model, catalog, "unit test"))
        })
        .clone()
}

/// The view of a session that viewed `items` (catalog indices), a minute apart.
pub(crate) fn viewed(catalog: &Catalog, items: &[u32]) -> SessionView {
    let events: Vec<LoggedEvent> = items
        .iter()
        .enumerate()
        .map(|(k, &i)| LoggedEvent {
            item: catalog.item(i).id.to_string(),
            kind: EventKind::View,
            ts_ms: 1_700_000_000_000 + 60_000 * k as i64,
        })
        .collect();
    replay(catalog, &events).view(&SessionLimits::default())
}
