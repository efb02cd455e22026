//! The `mixed` scenario's traffic: shoppers running sessions (online, or in a store), about 70% of requests
//! `Track` batches of their events and 30% `Decide` for a shopper in a session.
//!
//! Every shopper's events go out in order: a shopper with a `Track` in flight is busy and is not given another
//! one until the first is answered ([`MixedGen::complete`]); the open-loop arrival schedule is kept by picking
//! another, idle shopper, and the pool of concurrent sessions grows when every shopper is busy.

use std::collections::HashSet;
use std::sync::Arc;

use aisle_domain::rng::{SplitMix64, Zipf};
use aisle_proto::v1::{Channel, DecideRequest, EventType, Surface, TrackEvent, TrackRequest};

use crate::catalog::ItemUniverse;
use crate::scenario::decide::{DECIDE_LIMIT, channel_for, shopper_id, store_id};

/// Shortest session, in events.
pub const MIN_SESSION_EVENTS: usize = 5;
/// Longest session, in events.
pub const MAX_SESSION_EVENTS: usize = 30;

/// Shape of the `mixed` traffic.
#[derive(Debug, Clone)]
pub struct MixedConfig {
    /// Shopper population (`lt-0..lt-{n-1}`), drawn Zipf.
    pub shoppers: usize,
    /// Zipf exponent of the population.
    pub zipf_exponent: f64,
    /// Stores `store-1..=store-{stores}` that in-store sessions happen in.
    pub stores: u64,
    /// Share of sessions that happen in a store.
    pub in_store_share: f64,
    /// Share of requests that are `Decide` (the rest are `Track`).
    pub decide_share: f64,
    /// Events per `Track` request.
    pub events_per_track: usize,
    /// Sessions kept running at once (the pool grows beyond this when all are busy).
    pub sessions: usize,
    /// Make in-store sessions trigger assist events: expensive missions, more carts.
    pub assist_heavy: bool,
}

impl Default for MixedConfig {
    fn default() -> Self {
        Self {
            shoppers: 100_000,
            zipf_exponent: 1.0,
            stores: 20,
            in_store_share: 0.15,
            decide_share: 0.3,
            events_per_track: 8,
            sessions: 1_000,
            assist_heavy: false,
        }
    }
}

/// Identifies a `Track` in flight, to hand back to [`MixedGen::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slot: usize,
    session: u64,
}

/// One request of the `mixed` scenario.
#[derive(Debug, Clone)]
pub enum MixedOp {
    /// A batch of one shopper's next events; its shopper is busy until [`MixedGen::complete`] is called.
    Track {
        /// Hand back on completion.
        ticket: Ticket,
        /// The request.
        request: TrackRequest,
    },
    /// A decision for a shopper in a session.
    Decide(DecideRequest),
}

#[derive(Debug)]
struct Session {
    id: u64,
    shopper: usize,
    shopper_id: String,
    events: Vec<TrackEvent>,
    /// Events handed out so far.
    cursor: usize,
    batches: u32,
    busy: bool,
}

/// Generates the `mixed` traffic and tracks which shoppers are busy.
#[derive(Debug)]
pub struct MixedGen {
    config: MixedConfig,
    universe: Arc<ItemUniverse>,
    shoppers: Zipf,
    rng: SplitMix64,
    slots: Vec<Session>,
    /// Slots whose shopper is not busy.
    ready: Vec<usize>,
    active_shoppers: HashSet<usize>,
    next_session: u64,
    /// Track requests that could not be given a shopper (only with a population smaller than the pool).
    skipped_tracks: u64,
}

/// What became of a `Track`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackOutcome {
    /// Answered OK: the session goes on.
    Applied,
    /// Failed or timed out: the session is abandoned (its later events could overtake a late batch).
    Failed,
}

impl MixedGen {
    /// A generator with `config` over `universe`, deterministic for `seed` and a completion order.
    pub fn new(config: MixedConfig, universe: Arc<ItemUniverse>, seed: u64) -> Self {
        let shoppers = Zipf::new(config.shoppers.max(1), config.zipf_exponent);
        let mut generator = Self {
            config,
            universe,
            shoppers,
            rng: SplitMix64::new(seed),
            slots: Vec::new(),
            ready: Vec::new(),
            active_shoppers: HashSet::new(),
            next_session: 0,
            skipped_tracks: 0,
        };
        let initial = generator
            .config
            .sessions
            .clamp(1, generator.config.shoppers.max(1));
        for _ in 0..initial {
            if let Some(session) = generator.new_session() {
                generator.ready.push(generator.slots.len());
                generator.slots.push(session);
            }
        }
        generator
    }

    /// Sessions in the pool (running sessions, busy or not).
    pub fn sessions(&self) -> usize {
        self.slots.len()
    }

    /// Shoppers with a `Track` in flight.
    pub fn busy(&self) -> usize {
        self.slots.len() - self.ready.len()
    }

    /// `Track` requests turned into `Decide` because no shopper was free (population smaller than the demand).
    pub fn skipped_tracks(&self) -> u64 {
        self.skipped_tracks
    }

    /// The next request; `seq` numbers `Decide` request ids.
    pub fn next_op(&mut self, seq: u64) -> MixedOp {
        if !self.rng.chance(self.config.decide_share) {
            if let Some(slot) = self.take_ready_slot() {
                return self.track(slot);
            }
            self.skipped_tracks += 1;
        }
        let slot = self.rng.below(self.slots.len() as u64) as usize;
        MixedOp::Decide(self.decide_for(slot, seq))
    }

    /// Marks the `Track` of `ticket` answered: its shopper is free again (or its session ends).
    pub fn complete(&mut self, ticket: Ticket, outcome: TrackOutcome) {
        let Some(session) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        if session.id != ticket.session || !session.busy {
            return;
        }
        session.busy = false;
        if outcome == TrackOutcome::Failed || session.cursor >= session.events.len() {
            let shopper = session.shopper;
            self.active_shoppers.remove(&shopper);
            match self.new_session() {
                Some(next) => self.slots[ticket.slot] = next,
                // No other shopper is free: the same one starts over.
                None => {
                    self.active_shoppers.insert(shopper);
                    let s = &mut self.slots[ticket.slot];
                    s.cursor = 0;
                    s.batches = 0;
                }
            }
        }
        self.ready.push(ticket.slot);
    }

    fn take_ready_slot(&mut self) -> Option<usize> {
        if self.ready.is_empty() {
            // Every shopper is busy: open-loop means the request goes out anyway, for a new shopper.
            let session = self.new_session()?;
            self.slots.push(session);
            return Some(self.slots.len() - 1);
        }
        let i = self.rng.below(self.ready.len() as u64) as usize;
        Some(self.ready.swap_remove(i))
    }

    fn track(&mut self, slot: usize) -> MixedOp {
        let k = self.config.events_per_track.max(1);
        let session = &mut self.slots[slot];
        let end = (session.cursor + k).min(session.events.len());
        let events = session.events[session.cursor..end].to_vec();
        session.cursor = end;
        session.busy = true;
        let request_id = format!(
            "{}/s{}/b{}",
            session.shopper_id, session.id, session.batches
        );
        session.batches += 1;
        MixedOp::Track {
            ticket: Ticket {
                slot,
                session: session.id,
            },
            request: TrackRequest { events, request_id },
        }
    }

    /// A decision for the shopper of `slot`, on a surface that fits what the session has done so far.
    fn decide_for(&mut self, slot: usize, seq: u64) -> DecideRequest {
        let session = &self.slots[slot];
        let sent = &session.events[..session.cursor];
        let rng = &mut self.rng;
        // Where the shopper is: the store of the last STORE_ENTER not followed by a STORE_EXIT.
        let mut store = String::new();
        for e in sent {
            match e.r#type() {
                EventType::StoreEnter => store = e.store_id.clone(),
                EventType::StoreExit => store.clear(),
                _ => {}
            }
        }
        let mut cart: Vec<&str> = Vec::new();
        for e in sent {
            match e.r#type() {
                EventType::AddToCart => cart.push(&e.item_id),
                EventType::RemoveFromCart | EventType::Purchase => {
                    cart.retain(|i| *i != e.item_id);
                }
                _ => {}
            }
        }
        let last_item = sent
            .iter()
            .rev()
            .find(|e| !e.item_id.is_empty())
            .map(|e| e.item_id.clone());
        let last_was_search = sent.last().is_some_and(|e| e.r#type() == EventType::Search);
        let (surface, context): (Surface, Vec<String>) = if !store.is_empty() {
            (Surface::StoreAisle, last_item.into_iter().collect())
        } else if !cart.is_empty() && rng.chance(0.3) {
            let n = cart.len().min(1 + rng.below(2) as usize);
            (
                Surface::Cart,
                cart[cart.len() - n..]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        } else if last_was_search {
            (Surface::Search, Vec::new())
        } else if let Some(item) = last_item.filter(|_| rng.chance(0.75)) {
            (Surface::ProductPage, vec![item])
        } else if rng.chance(0.5) {
            (Surface::CategoryPage, Vec::new())
        } else {
            (Surface::Home, Vec::new())
        };
        let (channel, device) = channel_for(surface, rng);
        DecideRequest {
            shopper_id: session.shopper_id.clone(),
            surface: surface as i32,
            channel: channel as i32,
            limit: DECIDE_LIMIT,
            candidate_item_ids: Vec::new(),
            context_item_ids: context,
            store_id: store,
            region: String::new(),
            device: device.to_string(),
            consent: Some(true),
            attributes: None,
            request_id: format!("lt-m{seq}"),
        }
    }

    /// Starts a session for a shopper not already in one; `None` when every shopper is in a session.
    fn new_session(&mut self) -> Option<Session> {
        if self.active_shoppers.len() >= self.shoppers.len() {
            return None;
        }
        let mut shopper = self.shoppers.sample(&mut self.rng);
        let mut tries = 0;
        while self.active_shoppers.contains(&shopper) {
            tries += 1;
            shopper = if tries < 32 {
                self.shoppers.sample(&mut self.rng)
            } else {
                self.rng.below(self.shoppers.len() as u64) as usize
            };
        }
        self.active_shoppers.insert(shopper);
        let id = self.next_session;
        self.next_session += 1;
        let shopper_id = shopper_id(shopper);
        let events = plan_session(&shopper_id, &self.config, &self.universe, &mut self.rng);
        Some(Session {
            id,
            shopper,
            shopper_id,
            events,
            cursor: 0,
            batches: 0,
            busy: false,
        })
    }
}

fn event(shopper_id: &str, kind: EventType) -> TrackEvent {
    TrackEvent {
        shopper_id: shopper_id.to_string(),
        r#type: kind as i32,
        consent: Some(true),
        ..TrackEvent::default()
    }
}

const QUERY_PREFIXES: &[(&str, f64)] = &[
    ("", 5.0),
    ("best ", 1.0),
    ("cheap ", 1.0),
    ("new ", 1.0),
    ("gift ", 0.5),
];

/// Plans one session of 5–30 events for `shopper_id`: online (views, searches, carts, purchases) or in a store
/// (STORE_ENTER, aisle scans and views with the store and aisle, carts, STORE_EXIT).
pub fn plan_session(
    shopper_id: &str,
    config: &MixedConfig,
    universe: &ItemUniverse,
    rng: &mut SplitMix64,
) -> Vec<TrackEvent> {
    let len = rng.range_inclusive(MIN_SESSION_EVENTS as u64, MAX_SESSION_EVENTS as u64) as usize;
    let in_store = rng.chance(config.in_store_share);
    let mut category = if in_store
        && config.assist_heavy
        && !universe.expensive_categories().is_empty()
        && rng.chance(0.6)
    {
        let e = universe.expensive_categories();
        e[rng.below(e.len() as u64) as usize]
    } else {
        universe.popular_category(rng)
    };
    let purchase_intent = rng.chance(if in_store { 0.3 } else { 0.35 });
    let cart_rate = match (in_store, config.assist_heavy) {
        (true, true) => 0.25,
        (true, false) => 0.15,
        (false, _) => 0.12,
    };
    let mut events = Vec::with_capacity(len);
    let mut cart: Vec<usize> = Vec::new();
    let mut last_item: Option<usize> = None;
    let store = in_store.then(|| store_id(rng.range_inclusive(1, config.stores.max(1))));
    // In a store the session closes with a STORE_EXIT most of the time.
    let exits = in_store && rng.chance(0.7);
    let body_len = len - usize::from(exits);
    if let Some(store) = &store {
        let mut e = event(shopper_id, EventType::StoreEnter);
        e.store_id = store.clone();
        events.push(e);
    }
    while events.len() < body_len {
        let remaining = body_len - events.len();
        if purchase_intent && !cart.is_empty() && cart.len() >= remaining {
            for &item in cart.iter().take(remaining) {
                let mut e = event(shopper_id, EventType::Purchase);
                e.item_id = ItemUniverse::item_id(item);
                e.store_id = store.clone().unwrap_or_default();
                events.push(e);
            }
            break;
        }
        let roll = rng.next_f64();
        let e = if roll < 0.08 {
            // A search, sometimes leading to another category.
            let mut e = event(shopper_id, EventType::Search);
            if rng.chance(0.3) {
                category = universe.popular_category(rng);
            }
            e.query = format!(
                "{}{}",
                rng.weighted(QUERY_PREFIXES),
                universe.categories()[category].name.to_lowercase()
            );
            e.store_id = store.clone().unwrap_or_default();
            e
        } else if roll < 0.08 + cart_rate && last_item.is_some_and(|i| !cart.contains(&i)) {
            let item = last_item.unwrap_or_default();
            cart.push(item);
            let mut e = event(shopper_id, EventType::AddToCart);
            e.item_id = ItemUniverse::item_id(item);
            e.quantity = if rng.chance(0.15) { 2 } else { 1 };
            e.store_id = store.clone().unwrap_or_default();
            e
        } else if roll < 0.1 + cart_rate && !cart.is_empty() && !in_store {
            let item = cart.swap_remove(rng.below(cart.len() as u64) as usize);
            let mut e = event(shopper_id, EventType::RemoveFromCart);
            e.item_id = ItemUniverse::item_id(item);
            e
        } else {
            // A view (or, in a store, an aisle scan), mostly in the mission category.
            if rng.chance(if in_store { 0.06 } else { 0.12 }) {
                category = universe.popular_category(rng);
            }
            let item = universe.item_in(category, rng);
            last_item = Some(item);
            let kind = if in_store && rng.chance(0.55) {
                EventType::AisleScan
            } else {
                EventType::View
            };
            let mut e = event(shopper_id, kind);
            e.item_id = ItemUniverse::item_id(item);
            if let Some(store) = &store {
                e.store_id = store.clone();
                e.aisle = universe.categories()[universe.category_of(item)]
                    .aisle
                    .to_string();
            }
            e
        };
        events.push(e);
    }
    if exits && let Some(store) = store {
        let mut e = event(shopper_id, EventType::StoreExit);
        e.store_id = store;
        events.push(e);
    }
    events
}

/// Channels an in-store decision may come from (for tests and reports).
pub fn in_store_channels() -> [Channel; 3] {
    [Channel::AssociateHandheld, Channel::App, Channel::Kiosk]
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, VecDeque};

    use super::*;

    fn generator(config: MixedConfig, seed: u64) -> MixedGen {
        MixedGen::new(config, Arc::new(ItemUniverse::demo()), seed)
    }

    #[test]
    fn sessions_have_5_to_30_valid_events() {
        let universe = ItemUniverse::demo();
        let config = MixedConfig {
            in_store_share: 0.5,
            ..MixedConfig::default()
        };
        let mut rng = SplitMix64::new(11);
        let mut lengths = BTreeMap::new();
        let (mut stores, mut searches, mut carts, mut purchases) = (0, 0, 0, 0);
        let (mut looks, mut total) = (0, 0);
        for n in 0..3_000 {
            let id = format!("lt-{n}");
            let events = plan_session(&id, &config, &universe, &mut rng);
            assert!(
                (MIN_SESSION_EVENTS..=MAX_SESSION_EVENTS).contains(&events.len()),
                "{}",
                events.len()
            );
            *lengths.entry(events.len()).or_insert(0) += 1;
            let in_store = events[0].r#type() == EventType::StoreEnter;
            total += events.len();
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.shopper_id, id);
                assert_eq!(e.consent, Some(true));
                match e.r#type() {
                    EventType::View | EventType::AddToCart | EventType::RemoveFromCart => {
                        assert!(e.item_id.starts_with("sku-"));
                    }
                    EventType::Purchase => {
                        purchases += 1;
                        assert!(e.item_id.starts_with("sku-"));
                    }
                    EventType::Search => {
                        searches += 1;
                        assert!(!e.query.is_empty());
                    }
                    EventType::StoreEnter => {
                        stores += 1;
                        assert_eq!(i, 0);
                        assert!(e.store_id.starts_with("store-"));
                    }
                    EventType::StoreExit => assert_eq!(i, events.len() - 1),
                    EventType::AisleScan => {
                        assert!(in_store);
                        assert!(!e.store_id.is_empty() && !e.aisle.is_empty());
                    }
                    EventType::Unspecified => panic!("unspecified event"),
                }
                if in_store && matches!(e.r#type(), EventType::View | EventType::AisleScan) {
                    assert_eq!(e.store_id, events[0].store_id);
                    assert_eq!(e.aisle.len(), 3, "{e:?}");
                }
                if e.r#type() == EventType::AddToCart {
                    carts += 1;
                }
                if matches!(e.r#type(), EventType::View | EventType::AisleScan) {
                    looks += 1;
                }
            }
        }
        assert_eq!(lengths.len(), 26, "every length 5..=30 occurs");
        assert!(
            (1_200..1_800).contains(&stores),
            "in-store sessions {stores}"
        );
        assert!(searches > 1_000 && carts > 1_000 && purchases > 200);
        // Views (and aisle scans) dominate.
        assert!(
            looks * 10 > total * 6,
            "{looks} views/scans of {total} events"
        );
    }

    /// Drives the generator with completions in random order and checks the contract: a shopper never has two
    /// Tracks in flight, each session's batches come in order and add up to its whole plan, ~70/30 split.
    #[test]
    fn shoppers_events_go_out_in_order_and_the_split_is_70_30() {
        let config = MixedConfig {
            sessions: 50,
            ..MixedConfig::default()
        };
        let mut g = generator(config, 5);
        let mut rng = SplitMix64::new(6);
        let mut in_flight: VecDeque<(Ticket, String)> = VecDeque::new();
        let mut busy_shoppers: HashMap<String, ()> = HashMap::new();
        // session tag -> (next batch expected, events so far)
        let mut sessions: HashMap<String, (u32, usize, bool)> = HashMap::new();
        let (mut tracks, mut decides) = (0u64, 0u64);
        for seq in 0..20_000 {
            match g.next_op(seq) {
                MixedOp::Track { ticket, request } => {
                    tracks += 1;
                    let shopper = request.events[0].shopper_id.clone();
                    assert!(request.events.iter().all(|e| e.shopper_id == shopper));
                    assert!((1..=8).contains(&request.events.len()));
                    assert!(
                        busy_shoppers.insert(shopper.clone(), ()).is_none(),
                        "{shopper} got a second Track while one was in flight"
                    );
                    let (prefix, batch) = request.request_id.rsplit_once("/b").unwrap();
                    let batch: u32 = batch.parse().unwrap();
                    let entry = sessions.entry(prefix.to_string()).or_insert((0, 0, false));
                    assert_eq!(entry.0, batch, "batches of {prefix} out of order");
                    if batch == 0 && request.events[0].r#type() == EventType::StoreEnter {
                        entry.2 = true;
                    }
                    entry.0 += 1;
                    entry.1 += request.events.len();
                    in_flight.push_back((ticket, shopper));
                }
                MixedOp::Decide(r) => {
                    decides += 1;
                    assert_eq!(r.consent, Some(true));
                    assert!(r.shopper_id.starts_with("lt-"));
                }
            }
            // Answer a random number of the in-flight Tracks, in random order.
            while !in_flight.is_empty() && rng.chance(0.5) {
                let i = rng.below(in_flight.len() as u64) as usize;
                let (ticket, shopper) = in_flight.swap_remove_back(i).unwrap();
                busy_shoppers.remove(&shopper);
                g.complete(ticket, TrackOutcome::Applied);
            }
        }
        let share = decides as f64 / (tracks + decides) as f64;
        assert!((0.28..0.32).contains(&share), "decide share {share}");
        // Finished sessions (at least one batch after which the next batch of the slot is new) are 5..=30 long:
        // every session seen has at most 30 events; most have completed.
        assert!(sessions.values().all(|(_, n, _)| *n <= MAX_SESSION_EVENTS));
        let long_enough = sessions
            .values()
            .filter(|(_, n, _)| *n >= MIN_SESSION_EVENTS)
            .count();
        assert!(
            long_enough * 10 > sessions.len() * 8,
            "{long_enough} of {}",
            sessions.len()
        );
        assert_eq!(g.skipped_tracks(), 0);
    }

    #[test]
    fn busy_pool_grows_instead_of_blocking() {
        let config = MixedConfig {
            sessions: 10,
            decide_share: 0.0,
            ..MixedConfig::default()
        };
        let mut g = generator(config, 7);
        let mut tickets = Vec::new();
        for seq in 0..100 {
            match g.next_op(seq) {
                MixedOp::Track { ticket, .. } => tickets.push(ticket),
                MixedOp::Decide(_) => panic!("decide_share is 0"),
            }
        }
        assert_eq!(g.sessions(), 100);
        assert_eq!(g.busy(), 100);
        for t in tickets {
            g.complete(t, TrackOutcome::Failed);
        }
        assert_eq!(g.busy(), 0);
    }

    #[test]
    fn decides_follow_the_session() {
        let config = MixedConfig {
            sessions: 20,
            in_store_share: 1.0,
            ..MixedConfig::default()
        };
        let mut g = generator(config, 8);
        let mut saw_store = false;
        for seq in 0..2_000 {
            match g.next_op(seq) {
                MixedOp::Track { ticket, .. } => g.complete(ticket, TrackOutcome::Applied),
                MixedOp::Decide(r) => {
                    if r.surface() == Surface::StoreAisle {
                        saw_store = true;
                        assert!(r.store_id.starts_with("store-"));
                        assert!(in_store_channels().contains(&r.channel()));
                    }
                }
            }
        }
        assert!(saw_store);
    }

    #[test]
    fn tiny_population_never_double_books_a_shopper() {
        let config = MixedConfig {
            shoppers: 3,
            sessions: 10,
            decide_share: 0.0,
            ..MixedConfig::default()
        };
        let mut g = generator(config, 9);
        let mut tickets = Vec::new();
        let mut shoppers = HashMap::new();
        for seq in 0..10 {
            if let MixedOp::Track { ticket, request } = g.next_op(seq) {
                assert!(
                    shoppers
                        .insert(request.events[0].shopper_id.clone(), ())
                        .is_none()
                );
                tickets.push(ticket);
            }
        }
        assert_eq!(tickets.len(), 3);
        assert_eq!(g.skipped_tracks(), 7);
    }
}
