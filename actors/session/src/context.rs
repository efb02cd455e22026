//! `SessionContext`: everything Aisle holds about one active shopper, and how events change it. Pure logic: no
//! actor, no clock, no I/O — time comes from the events themselves, so replaying the same events always gives the
//! same context (the trainer relies on this to build exactly the views the node builds).

use std::collections::VecDeque;

use aisle_domain::TimestampMs;
use aisle_domain::catalog::{BrandIdx, Catalog, CategoryIdx, ItemIdx};
use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_domain::session::{SessionView, ViewedItem};
use serde::{Deserialize, Serialize};

/// Bounds on what one session may hold. Every collection in a session is capped, so a session's memory is
/// bounded whatever a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionLimits {
    /// Item interactions kept (a ring: the oldest goes first).
    pub history: usize,
    /// Search queries kept.
    pub searches: usize,
    /// Purchased items kept (never recommended again while kept).
    pub purchased: usize,
    /// Distinct cart lines kept.
    pub cart_lines: usize,
    /// Category and brand affinities kept (each).
    pub affinities: usize,
    /// Half-life of category and brand affinities, in event time.
    pub affinity_half_life_ms: i64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            history: 64,
            searches: 8,
            purchased: 32,
            cart_lines: 32,
            affinities: 12,
            affinity_half_life_ms: 30 * 60 * 1000,
        }
    }
}

/// When session activity becomes a suggestion for store associates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssistRules {
    /// An in-store shopper whose cart reaches this value (cents) is worth assisting.
    pub cart_value_threshold_cents: i64,
    /// This many views or scans in one category within `linger_window_ms` is lingering.
    pub linger_events: u32,
    /// Window for lingering.
    pub linger_window_ms: i64,
    /// At most one lingering suggestion per shopper and category in this time.
    pub linger_cooldown_ms: i64,
    /// An item added to a cart with this stock or less needs replenishing.
    pub low_stock_threshold: u32,
}

impl Default for AssistRules {
    fn default() -> Self {
        Self {
            cart_value_threshold_cents: 15_000,
            linger_events: 4,
            linger_window_ms: 10 * 60 * 1000,
            linger_cooldown_ms: 15 * 60 * 1000,
            low_stock_threshold: 3,
        }
    }
}

/// Something in the session that store associates should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum AssistSignal {
    /// The in-store shopper's cart passed the value threshold.
    HighIntentCart {
        /// The store.
        store_id: Box<str>,
        /// Last aisle seen, if any.
        aisle: Option<Box<str>>,
        /// Cart value in cents.
        cart_value_cents: i64,
        /// The cart's items.
        cart: Vec<ItemIdx>,
    },
    /// The in-store shopper keeps looking at one category.
    Lingering {
        /// The store.
        store_id: Box<str>,
        /// Last aisle seen, if any.
        aisle: Option<Box<str>>,
        /// The category.
        category: CategoryIdx,
        /// Items of the category the shopper looked at, most recent last.
        seen: Vec<ItemIdx>,
    },
    /// A low-stock item went into a cart.
    Replenish {
        /// The store.
        store_id: Box<str>,
        /// The item.
        item: ItemIdx,
        /// Its stock.
        stock: u32,
    },
}

/// One remembered item interaction: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Interaction {
    /// Catalog index, or `UNKNOWN_ITEM`.
    item: u32,
    kind: EventKind,
    ts_ms: TimestampMs,
}

const UNKNOWN_ITEM: u32 = u32::MAX;

/// A decayed score per key (category or brand), capped in size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Affinities<K> {
    /// (key, score as of `ts_ms`, `ts_ms`)
    entries: Vec<(K, f32, TimestampMs)>,
}

impl<K: Copy + PartialEq> Affinities<K> {
    fn decay(score: f32, from: TimestampMs, to: TimestampMs, half_life_ms: i64) -> f32 {
        let dt = to.saturating_sub(from).max(0) as f32;
        score * (-(dt / half_life_ms as f32) * std::f32::consts::LN_2).exp()
    }

    /// Keeps the `n` strongest entries, judged at the latest moment any of them was touched.
    fn keep_strongest(&mut self, n: usize, half_life_ms: i64) {
        if self.entries.len() <= n {
            return;
        }
        let now = self.entries.iter().map(|e| e.2).max().unwrap_or(0);
        self.entries.sort_by(|a, b| {
            Self::decay(b.1, b.2, now, half_life_ms).total_cmp(&Self::decay(
                a.1,
                a.2,
                now,
                half_life_ms,
            ))
        });
        self.entries.truncate(n);
    }

    fn add(&mut self, key: K, weight: f32, ts: TimestampMs, limits: &SessionLimits) {
        let hl = limits.affinity_half_life_ms;
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == key) {
            e.1 = Self::decay(e.1, e.2, ts, hl) + weight;
            e.2 = e.2.max(ts);
            return;
        }
        if self.entries.len() >= limits.affinities {
            // Evict the weakest, judged at the same moment.
            let weakest = self
                .entries
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    Self::decay(a.1.1, a.1.2, ts, hl).total_cmp(&Self::decay(b.1.1, b.1.2, ts, hl))
                })
                .map(|(i, _)| i);
            if let Some(i) = weakest {
                self.entries.swap_remove(i);
            }
        }
        self.entries.push((key, weight, ts));
    }

    /// Scores decayed to `now`, normalised to sum 1, strongest first.
    fn normalised(&self, now: TimestampMs, half_life_ms: i64) -> Vec<(K, f32)> {
        let mut out: Vec<(K, f32)> = self
            .entries
            .iter()
            .map(|&(k, s, t)| (k, Self::decay(s, t, now, half_life_ms)))
            .collect();
        let total: f32 = out.iter().map(|e| e.1).sum();
        if total > 0.0 {
            for e in &mut out {
                e.1 /= total;
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CartLine {
    item: ItemIdx,
    quantity: u32,
    unit_price_cents: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Location {
    store_id: Option<Box<str>>,
    aisle: Option<Box<str>>,
}

/// Running mean and variance of log prices (Welford).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct LogPrice {
    n: u32,
    mean: f32,
    m2: f32,
}

impl LogPrice {
    fn add(&mut self, price_cents: i64) {
        if price_cents <= 0 {
            return;
        }
        let x = (price_cents as f32).ln();
        self.n = self.n.saturating_add(1);
        let delta = x - self.mean;
        self.mean += delta / self.n as f32;
        self.m2 += delta * (x - self.mean);
    }

    fn summary(&self) -> Option<(f32, f32)> {
        (self.n > 0).then(|| {
            let var = if self.n > 1 {
                self.m2 / (self.n - 1) as f32
            } else {
                0.0
            };
            (self.mean, var.sqrt())
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AssistState {
    /// Whether the high-intent-cart suggestion was made and the cart is still above the threshold.
    cart_alert_active: bool,
    /// (category, views in the current run, when the run started)
    linger: Option<(CategoryIdx, u32, TimestampMs)>,
    /// (category, when) of the last lingering suggestion.
    last_linger_alert: Option<(CategoryIdx, TimestampMs)>,
}

/// Everything held about one shopper. Every collection is bounded by [`SessionLimits`].
///
/// Consent binds at once: an event stating `consent: false` drops everything behavioural the session holds
/// (history, affinities, cart, purchases, searches, location, price statistics, assist state), and until an event
/// states `consent: true` again, events are counted but change nothing else and raise no assist signal. Only the
/// consent statement itself, the event count and the version (which orders hand-offs) survive a revocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionContext {
    history: VecDeque<Interaction>,
    categories: Affinities<CategoryIdx>,
    brands: Affinities<BrandIdx>,
    cart: Vec<CartLine>,
    purchased: VecDeque<ItemIdx>,
    searches: VecDeque<Box<str>>,
    location: Location,
    consent: Option<bool>,
    log_price: LogPrice,
    last_event_ms: TimestampMs,
    events_applied: u64,
    version: u64,
    assist: AssistState,
    /// Per queue that delivered events to this session, the highest sequence number applied (see
    /// [`SessionContext::delivered`]); the most recently used last, at most [`MAX_DELIVERY_ORIGINS`].
    #[serde(default)]
    deliveries: Vec<(Box<str>, u64)>,
}

/// How many delivering queues a session remembers. A queue is one node's or store's outbox: a shopper meets a few.
/// Beyond this, the queue heard from least recently is forgotten (a redelivery from it would apply again).
pub const MAX_DELIVERY_ORIGINS: usize = 32;

impl SessionContext {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of events applied since the session started.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    /// The session's version: the owner's clock (ms) at its last write, strictly increasing per session. A
    /// session imported in a hand-off never replaces a local copy with the same or a higher version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Marks a write at `now_ms` (the owner's clock): the version becomes `now_ms`, or one more than before if
    /// the clock has not moved past it (a version already at `u64::MAX`, which only a hand-off can bring, stays).
    pub fn stamp_version(&mut self, now_ms: u64) {
        self.version = now_ms.max(self.version.saturating_add(1));
    }

    /// Cuts the session to `limits`, as applying events keeps it: the newest interactions, searches and purchases,
    /// the first cart lines, the strongest affinities. A session from elsewhere (a hand-off) may exceed the limits
    /// of this node; one within them is unchanged.
    pub fn bound(&mut self, limits: &SessionLimits) {
        fn keep_newest<T>(q: &mut VecDeque<T>, n: usize) {
            let excess = q.len().saturating_sub(n);
            q.drain(..excess);
        }
        keep_newest(&mut self.history, limits.history);
        keep_newest(&mut self.searches, limits.searches);
        keep_newest(&mut self.purchased, limits.purchased);
        self.cart.truncate(limits.cart_lines);
        let half_life = limits.affinity_half_life_ms.max(1);
        self.categories.keep_strongest(limits.affinities, half_life);
        self.brands.keep_strongest(limits.affinities, half_life);
    }

    /// The consent the shopper's events stated, if any (the latest statement).
    pub fn consent(&self) -> Option<bool> {
        self.consent
    }

    /// Whether the shopper consents now: the recorded statement, else `default_consent` (the default of the
    /// shopper's region). Events applied without it are not written to the event log.
    pub fn consents(&self, default_consent: bool) -> bool {
        self.consent.unwrap_or(default_consent)
    }

    /// Drops everything behavioural: only the consent statement, the event count, the version and the delivery
    /// marks are kept. Built from the default rather than cleared field by field, so a field added later is
    /// dropped too.
    fn drop_behaviour(&mut self) {
        *self = Self {
            consent: self.consent,
            events_applied: self.events_applied,
            version: self.version,
            deliveries: std::mem::take(&mut self.deliveries),
            ..Self::default()
        };
    }

    /// The highest sequence number of queue `origin` applied to this session (0: none).
    pub fn delivered(&self, origin: &str) -> u64 {
        self.deliveries
            .iter()
            .find(|(o, _)| &**o == origin)
            .map_or(0, |&(_, seq)| seq)
    }

    /// Records that entry `seq` of queue `origin` was applied (a queue delivers each shopper's entries in order).
    pub fn mark_delivered(&mut self, origin: &str, seq: u64) {
        let seq = match self.deliveries.iter().position(|(o, _)| &**o == origin) {
            Some(k) => self.deliveries.remove(k).1.max(seq),
            None => seq,
        };
        if self.deliveries.len() >= MAX_DELIVERY_ORIGINS {
            self.deliveries.remove(0);
        }
        self.deliveries.push((origin.into(), seq));
    }

    /// The store the shopper is in, if known.
    pub fn store_id(&self) -> Option<&str> {
        self.location.store_id.as_deref()
    }

    /// Applies one event and returns what associates should hear about because of it.
    ///
    /// An event stating `consent: false`, and every event after it until one states `consent: true`, is counted
    /// and changes nothing else: the session drops what it held and raises no signal (not even a replenishing
    /// one). An event stating `consent: true` applies normally.
    pub fn apply(
        &mut self,
        event: &ShopperEvent,
        catalog: &Catalog,
        limits: &SessionLimits,
        assist: &AssistRules,
    ) -> Vec<AssistSignal> {
        self.events_applied = self.events_applied.saturating_add(1);
        if let Some(consent) = event.consent {
            self.consent = Some(consent);
        }
        if self.consent == Some(false) {
            // Cheap when already dropped; also empties a revoked session an older node handed over with data.
            self.drop_behaviour();
            return Vec::new();
        }
        self.last_event_ms = self.last_event_ms.max(event.ts_ms);
        if let Some(store) = &event.store_id
            && event.kind != EventKind::StoreExit
            && self.location.store_id.as_deref() != Some(store)
        {
            self.location = Location {
                store_id: Some(store.clone()),
                aisle: None,
            };
        }
        let mut signals = Vec::new();
        let known = event
            .item
            .and_then(ItemRef::known)
            .filter(|&i| (i as usize) < catalog.len());
        if let Some(item) = event.item {
            let interaction = Interaction {
                item: item.known().unwrap_or(UNKNOWN_ITEM),
                kind: event.kind,
                ts_ms: event.ts_ms,
            };
            if self.history.len() >= limits.history {
                self.history.pop_front();
            }
            self.history.push_back(interaction);
        }
        if let Some(idx) = known {
            let item = catalog.item(idx);
            let weight = event.kind.interest_weight();
            if weight > 0.0 {
                self.categories
                    .add(item.category, weight, event.ts_ms, limits);
                self.brands.add(item.brand, weight, event.ts_ms, limits);
                self.log_price.add(item.price_cents);
            }
        }
        match event.kind {
            EventKind::Search => {
                if let Some(q) = &event.query {
                    if self.searches.len() >= limits.searches {
                        self.searches.pop_front();
                    }
                    self.searches.push_back(q.clone());
                }
            }
            EventKind::AddToCart => {
                if let Some(idx) = known {
                    let price = if event.price_cents > 0 {
                        event.price_cents
                    } else {
                        catalog.item(idx).price_cents
                    };
                    self.add_to_cart(idx, event.quantity.max(1), price, limits);
                    let stock = catalog.item(idx).stock;
                    if stock <= assist.low_stock_threshold
                        && let Some(store) = &self.location.store_id
                    {
                        signals.push(AssistSignal::Replenish {
                            store_id: store.clone(),
                            item: idx,
                            stock,
                        });
                    }
                }
            }
            EventKind::RemoveFromCart => {
                if let Some(idx) = known {
                    self.remove_from_cart(idx, event.quantity.max(1));
                }
            }
            EventKind::Purchase => {
                if let Some(idx) = known {
                    self.cart.retain(|l| l.item != idx);
                    if !self.purchased.contains(&idx) {
                        if self.purchased.len() >= limits.purchased {
                            self.purchased.pop_front();
                        }
                        self.purchased.push_back(idx);
                    }
                }
            }
            EventKind::StoreEnter => {}
            EventKind::StoreExit => {
                self.location = Location::default();
                self.assist.linger = None;
            }
            EventKind::AisleScan => {
                if let Some(aisle) = &event.aisle {
                    self.location.aisle = Some(aisle.clone());
                }
            }
            EventKind::View => {}
        }
        if self.consents(event.default_consent) && self.location.store_id.is_some() {
            self.check_cart(catalog, assist, &mut signals);
            if matches!(event.kind, EventKind::View | EventKind::AisleScan)
                && let Some(idx) = known
            {
                self.check_linger(catalog, idx, event.ts_ms, assist, &mut signals);
            }
        }
        signals
    }

    fn add_to_cart(
        &mut self,
        item: ItemIdx,
        quantity: u32,
        unit_price_cents: i64,
        limits: &SessionLimits,
    ) {
        if let Some(line) = self.cart.iter_mut().find(|l| l.item == item) {
            line.quantity = line.quantity.saturating_add(quantity);
            line.unit_price_cents = unit_price_cents;
            return;
        }
        if self.cart.len() >= limits.cart_lines {
            // The oldest line goes; a cart this long is almost certainly a bot or a bulk order.
            self.cart.remove(0);
        }
        self.cart.push(CartLine {
            item,
            quantity,
            unit_price_cents,
        });
    }

    fn remove_from_cart(&mut self, item: ItemIdx, quantity: u32) {
        if let Some(pos) = self.cart.iter().position(|l| l.item == item) {
            let line = &mut self.cart[pos];
            line.quantity = line.quantity.saturating_sub(quantity);
            if line.quantity == 0 {
                self.cart.remove(pos);
            }
        }
    }

    /// Value of the cart in cents (saturating: quantities and prices are bounded per event, not per session).
    pub fn cart_value_cents(&self) -> i64 {
        self.cart
            .iter()
            .map(|l| l.unit_price_cents.saturating_mul(l.quantity as i64))
            .fold(0, i64::saturating_add)
    }

    fn check_cart(
        &mut self,
        _catalog: &Catalog,
        assist: &AssistRules,
        signals: &mut Vec<AssistSignal>,
    ) {
        let value = self.cart_value_cents();
        if value >= assist.cart_value_threshold_cents {
            if !self.assist.cart_alert_active {
                self.assist.cart_alert_active = true;
                signals.push(AssistSignal::HighIntentCart {
                    store_id: self.location.store_id.clone().unwrap_or_default(),
                    aisle: self.location.aisle.clone(),
                    cart_value_cents: value,
                    cart: self.cart.iter().map(|l| l.item).collect(),
                });
            }
        } else {
            self.assist.cart_alert_active = false;
        }
    }

    fn check_linger(
        &mut self,
        catalog: &Catalog,
        item: ItemIdx,
        ts: TimestampMs,
        assist: &AssistRules,
        signals: &mut Vec<AssistSignal>,
    ) {
        let category = catalog.item(item).category;
        let run = match self.assist.linger {
            Some((c, n, start))
                if c == category && ts.saturating_sub(start) <= assist.linger_window_ms =>
            {
                (c, n.saturating_add(1), start)
            }
            _ => (category, 1, ts),
        };
        self.assist.linger = Some(run);
        if run.1 < assist.linger_events {
            return;
        }
        let cooled = match self.assist.last_linger_alert {
            Some((c, at)) => c != category || ts.saturating_sub(at) >= assist.linger_cooldown_ms,
            None => true,
        };
        if cooled {
            self.assist.last_linger_alert = Some((category, ts));
            let seen = self
                .history
                .iter()
                .filter(|i| i.item != UNKNOWN_ITEM && catalog.item(i.item).category == category)
                .map(|i| i.item)
                .collect();
            signals.push(AssistSignal::Lingering {
                store_id: self.location.store_id.clone().unwrap_or_default(),
                aisle: self.location.aisle.clone(),
                category,
                seen,
            });
        }
    }

    /// The session as ranking sees it.
    pub fn view(&self, limits: &SessionLimits) -> SessionView {
        let hl = limits.affinity_half_life_ms;
        SessionView {
            items: self
                .history
                .iter()
                .map(|i| ViewedItem {
                    item: if i.item == UNKNOWN_ITEM {
                        ItemRef::Unknown
                    } else {
                        ItemRef::Known(i.item)
                    },
                    kind: i.kind,
                    ts_ms: i.ts_ms,
                })
                .collect(),
            category_affinity: self.categories.normalised(self.last_event_ms, hl),
            brand_affinity: self.brands.normalised(self.last_event_ms, hl),
            cart: self.cart.iter().map(|l| l.item).collect(),
            purchased: self.purchased.iter().copied().collect(),
            searches: self.searches.iter().cloned().collect(),
            log_price: self.log_price.summary(),
            last_event_ms: self.last_event_ms,
            consent: self.consent,
        }
    }

    /// Re-maps every item reference through `map` (old catalog index → new index, `None` when the item left the
    /// catalog). Used when a session moves between nodes or catalogs.
    pub fn remap_items(&mut self, map: impl Fn(ItemIdx) -> Option<ItemIdx>) {
        for i in &mut self.history {
            if i.item != UNKNOWN_ITEM {
                i.item = map(i.item).unwrap_or(UNKNOWN_ITEM);
            }
        }
        self.cart.retain_mut(|l| match map(l.item) {
            Some(new) => {
                l.item = new;
                true
            }
            None => false,
        });
        self.purchased = self.purchased.iter().filter_map(|&i| map(i)).collect();
    }

    /// Every catalog item the session refers to (for re-mapping across catalogs).
    pub fn referenced_items(&self) -> Vec<ItemIdx> {
        let mut out: Vec<ItemIdx> = self
            .history
            .iter()
            .map(|i| i.item)
            .filter(|&i| i != UNKNOWN_ITEM)
            .chain(self.cart.iter().map(|l| l.item))
            .chain(self.purchased.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Approximate heap bytes held (for the memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.history.capacity() * std::mem::size_of::<Interaction>()
            + self.categories.entries.capacity()
                * std::mem::size_of::<(CategoryIdx, f32, TimestampMs)>()
            + self.brands.entries.capacity() * std::mem::size_of::<(BrandIdx, f32, TimestampMs)>()
            + self.cart.capacity() * std::mem::size_of::<CartLine>()
            + self.purchased.capacity() * std::mem::size_of::<ItemIdx>()
            + self
                .searches
                .iter()
                .map(|s| s.len() + std::mem::size_of::<Box<str>>())
                .sum::<usize>()
            + self
                .deliveries
                .iter()
                .map(|(o, _)| o.len() + std::mem::size_of::<(Box<str>, u64)>())
                .sum::<usize>()
    }
}

/// A session in a form any node can read: items, categories and brands named by external id and name rather than
/// by this node's catalog indices. Used to hand sessions off between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortableSession {
    history: Vec<(Option<String>, EventKind, TimestampMs)>,
    categories: Vec<(String, f32, TimestampMs)>,
    brands: Vec<(String, f32, TimestampMs)>,
    cart: Vec<(String, u32, i64)>,
    purchased: Vec<String>,
    searches: Vec<String>,
    store_id: Option<String>,
    aisle: Option<String>,
    consent: Option<bool>,
    log_price: (u32, f32, f32),
    last_event_ms: TimestampMs,
    events_applied: u64,
    /// Absent in sessions handed off by older nodes: 0, older than any local write.
    #[serde(default)]
    version: u64,
    cart_alert_active: bool,
    linger: Option<(String, u32, TimestampMs)>,
    last_linger_alert: Option<(String, TimestampMs)>,
    /// Absent in sessions handed off by older nodes: no queue delivered to them.
    #[serde(default)]
    deliveries: Vec<(String, u64)>,
}

impl SessionContext {
    /// The session in portable form.
    pub fn to_portable(&self, catalog: &Catalog) -> PortableSession {
        let item = |i: ItemIdx| catalog.items.get(i as usize).map(|it| it.id.to_string());
        let category = |c: CategoryIdx| catalog.categories[c as usize].name.clone();
        PortableSession {
            history: self
                .history
                .iter()
                .map(|i| {
                    (
                        if i.item == UNKNOWN_ITEM {
                            None
                        } else {
                            item(i.item)
                        },
                        i.kind,
                        i.ts_ms,
                    )
                })
                .collect(),
            categories: self
                .categories
                .entries
                .iter()
                .map(|&(c, s, t)| (category(c), s, t))
                .collect(),
            brands: self
                .brands
                .entries
                .iter()
                .map(|&(b, s, t)| (catalog.brands[b as usize].to_string(), s, t))
                .collect(),
            cart: self
                .cart
                .iter()
                .filter_map(|l| item(l.item).map(|id| (id, l.quantity, l.unit_price_cents)))
                .collect(),
            purchased: self.purchased.iter().filter_map(|&i| item(i)).collect(),
            searches: self.searches.iter().map(|s| s.to_string()).collect(),
            store_id: self.location.store_id.as_deref().map(str::to_string),
            aisle: self.location.aisle.as_deref().map(str::to_string),
            consent: self.consent,
            log_price: (self.log_price.n, self.log_price.mean, self.log_price.m2),
            last_event_ms: self.last_event_ms,
            events_applied: self.events_applied,
            version: self.version,
            cart_alert_active: self.assist.cart_alert_active,
            linger: self.assist.linger.map(|(c, n, t)| (category(c), n, t)),
            last_linger_alert: self.assist.last_linger_alert.map(|(c, t)| (category(c), t)),
            deliveries: self
                .deliveries
                .iter()
                .map(|(o, seq)| (o.to_string(), *seq))
                .collect(),
        }
    }

    /// Rebuilds a session from its portable form against this node's catalog: items the catalog does not know
    /// stay in the history as unknown items and leave the cart and purchases; unknown categories and brands are
    /// dropped. A session whose shopper revoked consent arrives empty of behavioural data (an older node may have
    /// sent some).
    pub fn from_portable(p: PortableSession, catalog: &Catalog) -> Self {
        let category = |name: &str| {
            catalog
                .categories
                .iter()
                .position(|c| c.name == name)
                .map(|c| c as CategoryIdx)
        };
        let brand = |name: &str| {
            catalog
                .brands
                .iter()
                .position(|b| &**b == name)
                .map(|b| b as BrandIdx)
        };
        let mut session = Self {
            history: p
                .history
                .into_iter()
                .map(|(id, kind, ts_ms)| Interaction {
                    item: id
                        .and_then(|id| catalog.lookup(&id))
                        .unwrap_or(UNKNOWN_ITEM),
                    kind,
                    ts_ms,
                })
                .collect(),
            categories: Affinities {
                entries: p
                    .categories
                    .into_iter()
                    .filter_map(|(n, s, t)| category(&n).map(|c| (c, s, t)))
                    .collect(),
            },
            brands: Affinities {
                entries: p
                    .brands
                    .into_iter()
                    .filter_map(|(n, s, t)| brand(&n).map(|b| (b, s, t)))
                    .collect(),
            },
            cart: p
                .cart
                .into_iter()
                .filter_map(|(id, quantity, unit_price_cents)| {
                    catalog.lookup(&id).map(|item| CartLine {
                        item,
                        quantity,
                        unit_price_cents,
                    })
                })
                .collect(),
            purchased: p
                .purchased
                .iter()
                .filter_map(|id| catalog.lookup(id))
                .collect(),
            searches: p.searches.into_iter().map(Into::into).collect(),
            location: Location {
                store_id: p.store_id.map(Into::into),
                aisle: p.aisle.map(Into::into),
            },
            consent: p.consent,
            log_price: LogPrice {
                n: p.log_price.0,
                mean: p.log_price.1,
                m2: p.log_price.2,
            },
            last_event_ms: p.last_event_ms,
            events_applied: p.events_applied,
            version: p.version,
            assist: AssistState {
                cart_alert_active: p.cart_alert_active,
                linger: p
                    .linger
                    .and_then(|(n, k, t)| category(&n).map(|c| (c, k, t))),
                last_linger_alert: p
                    .last_linger_alert
                    .and_then(|(n, t)| category(&n).map(|c| (c, t))),
            },
            deliveries: p
                .deliveries
                .into_iter()
                .rev()
                .take(MAX_DELIVERY_ORIGINS)
                .rev()
                .map(|(o, seq)| (o.into(), seq))
                .collect(),
        };
        if session.consent == Some(false) {
            session.drop_behaviour();
        }
        session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_domain::demo::DemoWorld;
    use std::sync::OnceLock;

    fn catalog() -> &'static Catalog {
        static C: OnceLock<Catalog> = OnceLock::new();
        C.get_or_init(|| DemoWorld::generate(1, 1_700_000_000_000, 10).load_catalog())
    }

    fn ev(kind: EventKind, item: Option<ItemIdx>, ts: i64) -> ShopperEvent {
        ShopperEvent {
            kind,
            item: item.map(ItemRef::Known),
            query: None,
            quantity: 1,
            price_cents: 0,
            store_id: None,
            aisle: None,
            ts_ms: ts,
            received_at_us: 0,
            consent: None,
            default_consent: false,
        }
    }

    fn apply(s: &mut SessionContext, e: ShopperEvent) -> Vec<AssistSignal> {
        s.apply(
            &e,
            catalog(),
            &SessionLimits::default(),
            &AssistRules::default(),
        )
    }

    #[test]
    fn views_build_category_affinity() {
        let c = catalog();
        let mut s = SessionContext::new();
        let wine = c.items_in_category(10);
        for (k, &item) in wine.iter().take(5).enumerate() {
            apply(&mut s, ev(EventKind::View, Some(item), 1_000 + k as i64));
        }
        apply(
            &mut s,
            ev(EventKind::View, Some(c.items_in_category(3)[0]), 2_000),
        );
        let v = s.view(&SessionLimits::default());
        assert_eq!(v.category_affinity[0].0, 10);
        assert!((v.category_affinity.iter().map(|a| a.1).sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(v.category_affinity[0].1 > 0.8);
        assert_eq!(v.items.len(), 6);
        assert!(v.log_price.is_some());
    }

    #[test]
    fn affinity_decays_with_event_time() {
        let c = catalog();
        let limits = SessionLimits::default();
        let mut s = SessionContext::new();
        let a = c.items_in_category(1)[0];
        let b = c.items_in_category(2)[0];
        apply(&mut s, ev(EventKind::View, Some(a), 0));
        apply(&mut s, ev(EventKind::View, Some(a), 0));
        // Two half-lives later, one view of b outweighs two old views of a (2 * 0.25 < 1).
        apply(
            &mut s,
            ev(EventKind::View, Some(b), 2 * limits.affinity_half_life_ms),
        );
        let v = s.view(&limits);
        assert_eq!(v.category_affinity[0].0, 2);
        assert!(
            (v.category_affinity[0].1 - 1.0 / 1.5).abs() < 1e-3,
            "{:?}",
            v.category_affinity
        );
    }

    #[test]
    fn every_collection_is_bounded() {
        let c = catalog();
        let limits = SessionLimits::default();
        let mut s = SessionContext::new();
        for k in 0..5_000u32 {
            let item = k % c.len() as u32;
            let mut e = ev(EventKind::AddToCart, Some(item), k as i64);
            if k % 3 == 0 {
                e.kind = EventKind::Purchase;
            }
            apply(&mut s, e);
            let mut q = ev(EventKind::Search, None, k as i64);
            q.query = Some(format!("query {k}").into());
            apply(&mut s, q);
        }
        let v = s.view(&limits);
        assert_eq!(v.items.len(), limits.history);
        assert!(v.cart.len() <= limits.cart_lines);
        assert_eq!(v.purchased.len(), limits.purchased);
        assert_eq!(v.searches.len(), limits.searches);
        assert!(v.category_affinity.len() <= limits.affinities);
        assert!(s.heap_bytes() < 4_096, "{}", s.heap_bytes());
    }

    #[test]
    fn cart_and_purchases() {
        let c = catalog();
        let mut s = SessionContext::new();
        let (a, b) = (c.items_in_category(0)[0], c.items_in_category(0)[1]);
        apply(&mut s, ev(EventKind::AddToCart, Some(a), 1));
        let mut two = ev(EventKind::AddToCart, Some(b), 2);
        two.quantity = 2;
        apply(&mut s, two);
        assert_eq!(
            s.cart_value_cents(),
            c.item(a).price_cents + 2 * c.item(b).price_cents
        );
        apply(&mut s, ev(EventKind::RemoveFromCart, Some(b), 3));
        assert_eq!(
            s.cart_value_cents(),
            c.item(a).price_cents + c.item(b).price_cents
        );
        apply(&mut s, ev(EventKind::Purchase, Some(a), 4));
        let v = s.view(&SessionLimits::default());
        assert_eq!(v.cart, vec![b]);
        assert_eq!(v.purchased, vec![a]);
    }

    #[test]
    fn unknown_items_keep_their_place_but_give_no_signal() {
        let mut s = SessionContext::new();
        let mut e = ev(EventKind::View, None, 5);
        e.item = Some(ItemRef::Unknown);
        apply(&mut s, e);
        let v = s.view(&SessionLimits::default());
        assert_eq!(v.items.len(), 1);
        assert_eq!(v.items[0].item, ItemRef::Unknown);
        assert!(v.category_affinity.is_empty());
    }

    fn in_store(kind: EventKind, item: Option<ItemIdx>, ts: i64) -> ShopperEvent {
        let mut e = ev(kind, item, ts);
        e.store_id = Some("store-7".into());
        e.consent = Some(true);
        e
    }

    #[test]
    fn high_intent_cart_fires_once_per_crossing() {
        let c = catalog();
        let expensive = (0..c.len() as u32)
            .find(|&i| c.item(i).price_cents >= 20_000 && c.item(i).stock > 10)
            .unwrap();
        let mut s = SessionContext::new();
        apply(&mut s, in_store(EventKind::StoreEnter, None, 0));
        let signals = apply(&mut s, in_store(EventKind::AddToCart, Some(expensive), 1));
        assert!(
            matches!(&signals[..], [AssistSignal::HighIntentCart { store_id, .. }] if &**store_id == "store-7"),
            "{signals:?}"
        );
        // Still above the threshold: no repeat.
        assert!(apply(&mut s, in_store(EventKind::View, Some(expensive), 2)).is_empty());
        // Drops below, then crosses again: fires again.
        apply(
            &mut s,
            in_store(EventKind::RemoveFromCart, Some(expensive), 3),
        );
        let again = apply(&mut s, in_store(EventKind::AddToCart, Some(expensive), 4));
        assert!(
            again
                .iter()
                .any(|s| matches!(s, AssistSignal::HighIntentCart { .. }))
        );
    }

    #[test]
    fn no_shopper_suggestions_without_consent_or_outside_a_store() {
        let c = catalog();
        let expensive = (0..c.len() as u32)
            .find(|&i| c.item(i).price_cents >= 20_000 && c.item(i).stock > 10)
            .unwrap();
        let mut online = SessionContext::new();
        let mut e = ev(EventKind::AddToCart, Some(expensive), 1);
        e.consent = Some(true);
        assert!(apply(&mut online, e).is_empty());
        let mut refused = SessionContext::new();
        let mut e = in_store(EventKind::AddToCart, Some(expensive), 1);
        e.consent = Some(false);
        assert!(apply(&mut refused, e).is_empty());
    }

    #[test]
    fn lingering_in_one_category_fires_with_cooldown() {
        let c = catalog();
        let items = c.items_in_category(5);
        let mut s = SessionContext::new();
        let rules = AssistRules::default();
        let mut fired = Vec::new();
        for (k, &item) in items.iter().take(rules.linger_events as usize).enumerate() {
            let mut e = in_store(EventKind::AisleScan, Some(item), k as i64 * 1_000);
            e.aisle = Some("G06".into());
            fired.extend(apply(&mut s, e));
        }
        assert!(
            matches!(&fired[..], [AssistSignal::Lingering { category: 5, aisle: Some(a), seen, .. }] if &**a == "G06" && seen.len() == 4),
            "{fired:?}"
        );
        // More scans within the cooldown: nothing new.
        for (k, &item) in items.iter().take(4).enumerate() {
            let again = in_store(EventKind::View, Some(item), 10_000 + k as i64);
            assert!(apply(&mut s, again).is_empty());
        }
    }

    #[test]
    fn replenish_on_low_stock_add_to_cart_in_store() {
        let c = catalog();
        let low = (0..c.len() as u32)
            .find(|&i| (1..=3).contains(&c.item(i).stock) && c.item(i).price_cents < 5_000)
            .unwrap();
        let mut s = SessionContext::new();
        let mut e = in_store(EventKind::AddToCart, Some(low), 1);
        // Replenishing is about the item, not the shopper: no consent needed (none stated, a closed default)...
        e.consent = None;
        let signals = apply(&mut s, e.clone());
        assert!(
            matches!(&signals[..], [AssistSignal::Replenish { item, .. }] if *item == low),
            "{signals:?}"
        );
        // ...but a shopper who revoked consent raises nothing at all: their cart is not kept.
        let mut revoked = SessionContext::new();
        e.consent = Some(false);
        assert!(apply(&mut revoked, e).is_empty());
    }

    /// A session holding something of every kind: in a store, in an aisle, views, a search, a cart, a purchase,
    /// an assist alert raised.
    fn rich_session() -> SessionContext {
        let c = catalog();
        let expensive = (0..c.len() as u32)
            .find(|&i| c.item(i).price_cents >= 20_000 && c.item(i).stock > 10)
            .unwrap();
        let mut s = SessionContext::new();
        apply(&mut s, in_store(EventKind::StoreEnter, None, 1));
        let mut scan = in_store(EventKind::AisleScan, Some(c.items_in_category(5)[0]), 2);
        scan.aisle = Some("G06".into());
        apply(&mut s, scan);
        for (k, &item) in c.items_in_category(5).iter().take(3).enumerate() {
            apply(&mut s, in_store(EventKind::View, Some(item), 3 + k as i64));
        }
        let mut q = in_store(EventKind::Search, None, 10);
        q.query = Some("running shoes".into());
        apply(&mut s, q);
        let alert = apply(&mut s, in_store(EventKind::AddToCart, Some(expensive), 11));
        assert!(!alert.is_empty(), "the cart alert is raised");
        apply(
            &mut s,
            in_store(EventKind::Purchase, Some(c.items_in_category(7)[0]), 12),
        );
        s.stamp_version(1_000);
        s
    }

    #[test]
    fn a_revocation_drops_everything_behavioural_at_once() {
        let limits = SessionLimits::default();
        let mut s = rich_session();
        let held = s.view(&limits);
        assert!(!held.items.is_empty() && !held.cart.is_empty() && !held.purchased.is_empty());
        assert!(!held.searches.is_empty() && held.log_price.is_some() && s.store_id().is_some());
        let (events, version) = (s.events_applied(), s.version());
        // The revoking event is an in-store view: it shapes nothing either.
        let mut revoke = in_store(EventKind::View, Some(catalog().items_in_category(5)[1]), 20);
        revoke.consent = Some(false);
        assert!(apply(&mut s, revoke).is_empty());
        // Nothing is left but the statement, the event count and the version.
        assert_eq!(
            s,
            SessionContext {
                consent: Some(false),
                events_applied: events + 1,
                version,
                ..SessionContext::default()
            }
        );
        assert_eq!(
            s.view(&limits),
            SessionView {
                consent: Some(false),
                ..SessionView::default()
            }
        );
        assert_eq!(s.heap_bytes(), 0);
        assert_eq!(s.cart_value_cents(), 0);
        assert_eq!(s.store_id(), None);
        assert!(!s.consents(true), "a recorded refusal beats any default");
        // The version still advances, so hand-offs keep their order.
        s.stamp_version(1_000);
        assert!(s.version() > version);
    }

    #[test]
    fn while_revoked_events_are_counted_and_inert_until_a_grant() {
        let c = catalog();
        let limits = SessionLimits::default();
        let mut s = rich_session();
        let mut revoke = ev(EventKind::View, None, 20);
        revoke.item = Some(ItemRef::Known(c.items_in_category(1)[0]));
        revoke.consent = Some(false);
        apply(&mut s, revoke);
        let revoked = s.clone();
        let low = (0..c.len() as u32)
            .find(|&i| (1..=3).contains(&c.item(i).stock))
            .unwrap();
        // Events that state nothing, even with an open regional default: no history, no cart, no location, no
        // signal of any kind (lingering, cart value, replenishing).
        let mut quiet = Vec::new();
        for (k, &item) in c.items_in_category(5).iter().take(6).enumerate() {
            let mut e = in_store(EventKind::AisleScan, Some(item), 30 + k as i64);
            e.consent = None;
            e.default_consent = true;
            e.aisle = Some("G06".into());
            quiet.push(e);
        }
        for kind in [EventKind::AddToCart, EventKind::Purchase] {
            let mut e = in_store(kind, Some(low), 40);
            e.consent = None;
            e.default_consent = true;
            e.quantity = 100;
            quiet.push(e);
        }
        let mut search = ev(EventKind::Search, None, 41);
        search.query = Some("tea".into());
        quiet.push(search);
        let n = quiet.len() as u64;
        for e in quiet {
            assert!(apply(&mut s, e).is_empty(), "no signal while revoked");
        }
        assert_eq!(s.events_applied(), revoked.events_applied() + n, "counted");
        assert_eq!(
            SessionContext {
                events_applied: revoked.events_applied(),
                ..s.clone()
            },
            revoked,
            "nothing else changed"
        );
        // A grant applies its own event and everything after it.
        let item = c.items_in_category(2)[0];
        let mut grant = ev(EventKind::View, Some(item), 50);
        grant.consent = Some(true);
        apply(&mut s, grant);
        apply(&mut s, ev(EventKind::View, Some(item + 1), 51));
        let v = s.view(&limits);
        assert_eq!(v.known_items().collect::<Vec<_>>(), vec![item, item + 1]);
        assert_eq!(v.consent, Some(true));
        assert_eq!(v.last_event_ms, 51);
        // And signals about the shopper come back with the grant.
        let expensive = (0..c.len() as u32)
            .find(|&i| c.item(i).price_cents >= 20_000 && c.item(i).stock > 10)
            .unwrap();
        apply(&mut s, in_store(EventKind::StoreEnter, None, 52));
        let signals = apply(&mut s, in_store(EventKind::AddToCart, Some(expensive), 53));
        assert!(
            matches!(&signals[..], [AssistSignal::HighIntentCart { .. }]),
            "{signals:?}"
        );
    }

    #[test]
    fn the_regional_default_decides_shopper_signals_when_nothing_is_stated() {
        let c = catalog();
        let expensive = (0..c.len() as u32)
            .find(|&i| c.item(i).price_cents >= 20_000 && c.item(i).stock > 10)
            .unwrap();
        for (default_consent, fires) in [(false, false), (true, true)] {
            let mut s = SessionContext::new();
            let unstated = |kind, item, ts| ShopperEvent {
                consent: None,
                default_consent,
                ..in_store(kind, item, ts)
            };
            apply(&mut s, unstated(EventKind::StoreEnter, None, 1));
            let signals = apply(&mut s, unstated(EventKind::AddToCart, Some(expensive), 2));
            assert_eq!(!signals.is_empty(), fires, "{default_consent}: {signals:?}");
            assert_eq!(s.consents(default_consent), default_consent);
            // Unstated consent never drops the session: the decision reads the default itself.
            assert_eq!(s.view(&SessionLimits::default()).cart, vec![expensive]);
        }
    }

    #[test]
    fn a_revoked_session_handed_over_with_data_arrives_empty() {
        let c = catalog();
        let mut p = rich_session().to_portable(c);
        p.consent = Some(false);
        let s = SessionContext::from_portable(p, c);
        assert!(s.view(&SessionLimits::default()).is_anonymous());
        assert_eq!(s.store_id(), None);
        assert_eq!(s.consent(), Some(false));
        assert_eq!(s.version(), rich_session().version());
    }

    #[test]
    fn portable_sessions_survive_a_different_catalog_layout() {
        let c = catalog();
        let mut s = SessionContext::new();
        for k in 0..10u32 {
            apply(&mut s, ev(EventKind::View, Some(k * 101), k as i64 * 1_000));
        }
        apply(&mut s, ev(EventKind::AddToCart, Some(505), 20_000));
        apply(&mut s, ev(EventKind::Purchase, Some(909), 21_000));
        let portable = s.to_portable(c);
        // Round trip through JSON into the same catalog gives the same session.
        let json = serde_json::to_vec(&portable).unwrap();
        let back = SessionContext::from_portable(serde_json::from_slice(&json).unwrap(), c);
        assert_eq!(back, s);
        // Into a catalog that lists the items in another order, the view names the same items.
        let mut file = c.to_file();
        file.items.reverse();
        let other = Catalog::from_json(&serde_json::to_vec(&file).unwrap(), "reordered").unwrap();
        let moved = SessionContext::from_portable(portable, &other);
        let ids = |v: &SessionView, cat: &Catalog| -> Vec<String> {
            v.known_items()
                .map(|i| cat.item(i).id.to_string())
                .collect()
        };
        let limits = SessionLimits::default();
        assert_eq!(ids(&moved.view(&limits), &other), ids(&s.view(&limits), c));
        assert_eq!(moved.cart_value_cents(), s.cart_value_cents());
    }

    /// Found by fuzzing (`fuzz/`, target `session_import`): a handed-off session holds whatever a peer sent, and
    /// counters, versions, prices and times at the ends of their ranges overflowed when the imported session was
    /// viewed or given more events (a panic with overflow checks, a wrapped value without). The first input found
    /// (14 bytes) imported one cart line of 1,546,661,936 × 211,261,862,005 cents, worth `i64::MAX` after the
    /// saturating product, and the cart's value overflowed at the next add-to-cart. The arithmetic saturates now.
    #[test]
    fn an_oversized_session_is_cut_to_the_limits_keeping_the_newest_and_strongest() {
        let c = catalog();
        let limits = SessionLimits::default();
        let t0 = 1_700_000_000_000;
        let mut base = SessionContext::new();
        for k in 0..5 {
            apply(&mut base, ev(EventKind::View, Some(k), t0 + i64::from(k)));
        }
        let mut p = base.to_portable(c);
        // What a faulty or hostile peer could send: every collection far over its limit.
        let first = p.history[0].clone();
        p.history = (0..70_000)
            .map(|k| (first.0.clone(), first.1, t0 + k))
            .collect();
        p.searches = (0..1_000).map(|k| format!("q{k}")).collect();
        p.purchased = vec![c.item(1).id.to_string(); 1_000];
        p.cart = (0..1_000)
            .map(|_| (c.item(2).id.to_string(), 1, 100))
            .collect();
        p.categories = c
            .categories
            .iter()
            .enumerate()
            .map(|(k, cat)| (cat.name.clone(), k as f32, t0))
            .collect();
        let mut s = SessionContext::from_portable(p, c);
        s.bound(&limits);
        assert_eq!(s.history.len(), limits.history);
        assert_eq!(
            s.history.back().unwrap().ts_ms,
            t0 + 69_999,
            "the newest are kept"
        );
        assert_eq!(s.searches.len(), limits.searches);
        assert_eq!(&*s.searches[limits.searches - 1], "q999");
        assert_eq!(s.purchased.len(), limits.purchased);
        assert_eq!(s.cart.len(), limits.cart_lines);
        let n = c.categories.len().min(limits.affinities);
        assert_eq!(s.categories.entries.len(), n);
        let strongest = c.categories.len() - 1;
        assert_eq!(
            s.categories.entries[0].0 as usize, strongest,
            "the strongest are kept"
        );
        // And the session keeps working: viewed, and given more events.
        let _ = s.view(&limits);
        apply(&mut s, ev(EventKind::View, Some(3), t0 + 80_000));
        assert_eq!(s.history.len(), limits.history);
    }

    #[test]
    fn handed_off_sessions_at_the_ends_of_every_range_keep_working() {
        let c = catalog();
        let limits = SessionLimits::default();
        let t0 = 1_700_000_000_000;
        let (a, b) = (c.items_in_category(3)[0], c.items_in_category(3)[1]);
        let in_store = |kind, item, ts| ShopperEvent {
            store_id: Some("store-1".into()),
            consent: Some(true),
            ..ev(kind, item, ts)
        };
        let mut base = SessionContext::new();
        for e in [
            in_store(EventKind::StoreEnter, None, t0),
            in_store(EventKind::View, Some(a), t0 + 1),
            in_store(EventKind::AddToCart, Some(b), t0 + 2),
        ] {
            apply(&mut base, e);
        }
        let portable = base.to_portable(c);
        let category = c.category_of(a).name.clone();
        let brand = c.brands[c.item(a).brand as usize].to_string();
        let (id_a, id_b) = (c.item(a).id.to_string(), c.item(b).id.to_string());
        type Edit<'a> = Box<dyn Fn(&mut PortableSession) + 'a>;
        let cases: Vec<(&str, Edit<'_>)> = vec![
            ("events_applied", Box::new(|p| p.events_applied = u64::MAX)),
            ("version", Box::new(|p| p.version = u64::MAX)),
            ("log_price.n", Box::new(|p| p.log_price.0 = u32::MAX)),
            (
                "categories",
                Box::new(|p| p.categories = vec![(category.clone(), 1.0, i64::MIN)]),
            ),
            (
                "brands",
                Box::new(|p| p.brands = vec![(brand.clone(), 1.0, i64::MIN)]),
            ),
            (
                "last_event_ms min",
                Box::new(|p| p.last_event_ms = i64::MIN),
            ),
            (
                "last_event_ms max",
                Box::new(|p| p.last_event_ms = i64::MAX),
            ),
            (
                "linger count",
                Box::new(|p| p.linger = Some((category.clone(), u32::MAX, t0))),
            ),
            (
                "linger start",
                Box::new(|p| p.linger = Some((category.clone(), 1, i64::MIN))),
            ),
            (
                "linger alert",
                Box::new(|p| {
                    p.linger = Some((category.clone(), 100, t0));
                    p.last_linger_alert = Some((category.clone(), i64::MIN));
                }),
            ),
            (
                "cart",
                Box::new(|p| {
                    p.cart = vec![
                        (id_a.clone(), u32::MAX, i64::MAX),
                        (id_b.clone(), u32::MAX, i64::MAX),
                    ];
                }),
            ),
        ];
        for (name, edit) in cases {
            let mut p = portable.clone();
            edit(&mut p);
            let mut s = SessionContext::from_portable(p, c);
            let _ = s.view(&limits);
            for e in [
                in_store(EventKind::View, Some(a), t0 + 10),
                in_store(EventKind::AddToCart, Some(a), t0 + 11),
                in_store(EventKind::View, Some(b), t0 + 12),
            ] {
                apply(&mut s, e);
            }
            s.stamp_version(t0 as u64);
            let v = s.view(&limits);
            assert!(
                v.category_affinity.iter().all(|x| x.1.is_finite()),
                "{name}"
            );
            match name {
                "events_applied" => assert_eq!(s.events_applied(), u64::MAX),
                "version" => assert_eq!(s.version(), u64::MAX),
                "cart" => assert_eq!(s.cart_value_cents(), i64::MAX),
                _ => assert!(s.version() >= t0 as u64, "{name}"),
            }
        }
    }

    #[test]
    fn replay_is_deterministic() {
        let c = catalog();
        let run = || {
            let mut s = SessionContext::new();
            for k in 0..50u32 {
                apply(
                    &mut s,
                    ev(
                        EventKind::View,
                        Some((k * 37) % c.len() as u32),
                        k as i64 * 7_000,
                    ),
                );
            }
            s.view(&SessionLimits::default())
        };
        assert_eq!(run(), run());
    }
}
