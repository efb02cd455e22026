//! The OTTO sample (`../shared/data/otto-sample`): clicks, carts and orders read as views, add-to-carts and
//! purchases, with the format detected. Skips, saying why, when the data is absent.

use std::path::Path;

use aisle_domain::event::EventKind;
use aisle_trainer::data::read_sessions;

#[test]
fn the_otto_sample_reads_as_sessions_of_views_carts_and_orders() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/otto-sample/train.jsonl");
    if !path.exists() {
        eprintln!("SKIPPED: {} not found", path.display());
        return;
    }
    let sessions = read_sessions(&path, None).unwrap();
    assert_eq!(sessions.len(), 20);
    let count = |kind: EventKind| {
        sessions
            .iter()
            .flat_map(|s| &s.events)
            .filter(|e| e.kind == kind)
            .count()
    };
    assert_eq!(count(EventKind::View), 800);
    assert_eq!(count(EventKind::AddToCart), 52);
    assert_eq!(count(EventKind::Purchase), 10);
    assert!(
        sessions
            .iter()
            .all(|s| s.events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms))
    );
}
