//! A handed-off session (`PortableSession` as JSON, as peers send them) imported with `SessionContext::from_portable`
//! against a fixed catalog, then used as the node uses it: exported again, viewed, ranked for, given more events
//! and version-stamped.
//!
//! Every input is tried twice: as the JSON bytes themselves, and as the structure of a session (decoded with
//! `arbitrary`, written as JSON with the fixture's names) — the second reaches every field's whole range, which
//! byte mutations of JSON text rarely do.
#![no_main]

use aisle_domain::event::EventKind;
use aisle_fuzz::{NOW_MS, catalog, rank_all, rules, served, store_visit};
use aisle_session::{AssistRules, PortableSession, SessionContext, SessionLimits};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, Serializer};

fn import(json: &[u8]) {
    let Ok(portable) = serde_json::from_slice::<PortableSession>(json) else {
        return;
    };
    let catalog = catalog();
    let mut session = SessionContext::from_portable(portable, catalog);

    // Export and import again: nothing changes.
    let exported = session.to_portable(catalog);
    assert_eq!(
        SessionContext::from_portable(exported.clone(), catalog),
        session
    );
    let _ = serde_json::to_vec(&exported).expect("portable sessions serialise");

    let limits = SessionLimits::default();
    let _ = (
        session.referenced_items(),
        session.heap_bytes(),
        session.cart_value_cents(),
    );
    let view = session.view(&limits);
    rank_all(served(), rules(), &view);

    // More events, as the shopper carries on at the new owner (a shard applies a batch, then stamps the version).
    let imported_version = session.version();
    for event in store_visit() {
        let _ = session.apply(&event, catalog, &limits, &AssistRules::default());
    }
    session.stamp_version(NOW_MS as u64);
    assert!(session.version() > imported_version || imported_version == u64::MAX);
    let view = session.view(&limits);
    rank_all(served(), rules(), &view);
    let _ = session.to_portable(catalog);
}

/// Item ids, categories and brands of the fixture catalog, and names it does not know.
const NAMES: [&str; 24] = [
    "wine-1", "wine-2", "beer-1", "sock-1", "sock-2", "sock-3", "sock-4", "knife-1", "hat-1",
    "hat-2", "gone-1", "cheap-1", "Wine", "Beer", "Socks", "Knives", "Hats", "Vino", "Hops",
    "Toes", "Luxe", "Edge", "", "unknown",
];

#[derive(Debug, Arbitrary)]
struct Name(u8);

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(NAMES[self.0 as usize % NAMES.len()])
    }
}

#[derive(Debug, Arbitrary)]
struct Kind(u8);

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventKind::ALL[self.0 as usize % EventKind::ALL.len()].serialize(s)
    }
}

/// The shape of `PortableSession` (its fields are private), every field arbitrary.
#[derive(Debug, Arbitrary, Serialize)]
struct Portable {
    history: Vec<(Option<Name>, Kind, i64)>,
    categories: Vec<(Name, f32, i64)>,
    brands: Vec<(Name, f32, i64)>,
    cart: Vec<(Name, u32, i64)>,
    purchased: Vec<Name>,
    searches: Vec<String>,
    store_id: Option<String>,
    aisle: Option<String>,
    consent: Option<bool>,
    log_price: (u32, f32, f32),
    last_event_ms: i64,
    events_applied: u64,
    version: u64,
    cart_alert_active: bool,
    linger: Option<(Name, u32, i64)>,
    last_linger_alert: Option<(Name, i64)>,
}

fuzz_target!(|data: &[u8]| {
    import(data);
    if let Ok(p) = Portable::arbitrary(&mut Unstructured::new(data)) {
        import(&serde_json::to_vec(&p).expect("sessions serialise"));
    }
});
