//! The `decide` scenario's requests: `Decide` for a Zipf-skewed shopper population over mixed surfaces and channels.

use std::sync::Arc;

use aisle_domain::rng::{SplitMix64, Zipf};
use aisle_proto::v1::{AgeBand, Channel, DecideRequest, LoyaltyTier, ShopperAttributes, Surface};

use crate::catalog::ItemUniverse;

/// Items asked for per decision.
pub const DECIDE_LIMIT: u32 = 10;

/// How often each surface is asked about.
const SURFACES: &[(Surface, f64)] = &[
    (Surface::Home, 22.0),
    (Surface::ProductPage, 25.0),
    (Surface::CategoryPage, 14.0),
    (Surface::Search, 12.0),
    (Surface::Cart, 10.0),
    (Surface::Checkout, 3.0),
    (Surface::StoreAisle, 7.0),
    (Surface::KioskIdle, 3.0),
    (Surface::Email, 4.0),
];

const REGIONS: &[(&str, f64)] = &[("us-east", 5.0), ("us-west", 3.0), ("eu-west", 2.0)];

const LOYALTY: &[(LoyaltyTier, f64)] = &[
    (LoyaltyTier::Unspecified, 3.0),
    (LoyaltyTier::None, 4.0),
    (LoyaltyTier::Silver, 2.0),
    (LoyaltyTier::Gold, 0.8),
    (LoyaltyTier::Platinum, 0.2),
];

/// The shopper id of population member `n`: `lt-{n}` (`lt-0` is the most active).
pub fn shopper_id(n: usize) -> String {
    format!("lt-{n}")
}

/// The id of store `k` (1-based): `store-{k}`.
pub fn store_id(k: u64) -> String {
    format!("store-{k}")
}

/// Picks a channel (and device) that can show `surface`.
pub(crate) fn channel_for(surface: Surface, rng: &mut SplitMix64) -> (Channel, &'static str) {
    match surface {
        Surface::StoreAisle => *rng.weighted(&[
            ((Channel::AssociateHandheld, "handheld"), 4.0),
            ((Channel::App, "ios"), 2.5),
            ((Channel::App, "android"), 1.5),
            ((Channel::Kiosk, "kiosk"), 2.0),
        ]),
        Surface::KioskIdle => (Channel::Kiosk, "kiosk"),
        Surface::Email => (Channel::Email, "email"),
        Surface::Checkout => *rng.weighted(&[
            ((Channel::Web, "desktop"), 3.0),
            ((Channel::Web, "mobile-web"), 2.0),
            ((Channel::App, "ios"), 2.0),
            ((Channel::App, "android"), 1.5),
            ((Channel::Pos, "pos"), 1.5),
        ]),
        _ => *rng.weighted(&[
            ((Channel::Web, "desktop"), 3.0),
            ((Channel::Web, "mobile-web"), 2.5),
            ((Channel::App, "ios"), 2.5),
            ((Channel::App, "android"), 2.0),
        ]),
    }
}

/// Channels that are in a store and so name one.
pub(crate) fn channel_in_store(channel: Channel, surface: Surface) -> bool {
    matches!(
        channel,
        Channel::Kiosk | Channel::Pos | Channel::AssociateHandheld
    ) || surface == Surface::StoreAisle
}

/// Generates the `decide` scenario's requests. Deterministic for a seed.
#[derive(Debug)]
pub struct DecideGen {
    universe: Arc<ItemUniverse>,
    shoppers: Zipf,
    stores: u64,
    rng: SplitMix64,
}

impl DecideGen {
    /// A generator over `shoppers` shoppers (Zipf with exponent `s`), the items of `universe` and stores
    /// `store-1..=store-{stores}`.
    pub fn new(
        universe: Arc<ItemUniverse>,
        shoppers: usize,
        s: f64,
        stores: u64,
        seed: u64,
    ) -> Self {
        Self {
            universe,
            shoppers: Zipf::new(shoppers.max(1), s),
            stores: stores.max(1),
            rng: SplitMix64::new(seed),
        }
    }

    /// The next request; `seq` becomes its request id (`lt-d{seq}`).
    pub fn next_request(&mut self, seq: u64) -> DecideRequest {
        let rng = &mut self.rng;
        let shopper = self.shoppers.sample(rng);
        let surface = *rng.weighted(SURFACES);
        let (channel, device) = channel_for(surface, rng);
        let context_item_ids = match surface {
            Surface::ProductPage | Surface::Cart => {
                let n = 1 + rng.below(2) as usize;
                (0..n)
                    .map(|_| ItemUniverse::item_id(self.universe.popular_item(rng)))
                    .collect()
            }
            _ => Vec::new(),
        };
        let store_id = if channel_in_store(channel, surface) {
            store_id(rng.range_inclusive(1, self.stores))
        } else {
            String::new()
        };
        let age_verified = rng.chance(0.2);
        let attributes = ShopperAttributes {
            age_verified,
            age_band: if age_verified {
                *rng.weighted(&[
                    (AgeBand::Under18, 0.5),
                    (AgeBand::AgeBand18To20, 1.0),
                    (AgeBand::AgeBand21Plus, 8.5),
                ]) as i32
            } else {
                AgeBand::Unspecified as i32
            },
            loyalty_tier: *rng.weighted(LOYALTY) as i32,
        };
        DecideRequest {
            shopper_id: shopper_id(shopper),
            surface: surface as i32,
            channel: channel as i32,
            limit: DECIDE_LIMIT,
            candidate_item_ids: Vec::new(),
            context_item_ids,
            store_id,
            region: rng.weighted(REGIONS).to_string(),
            device: device.to_string(),
            consent: Some(true),
            attributes: Some(attributes),
            request_id: format!("lt-d{seq}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn generator(seed: u64) -> DecideGen {
        DecideGen::new(Arc::new(ItemUniverse::demo()), 100_000, 1.0, 20, seed)
    }

    #[test]
    fn requests_are_well_formed() {
        let mut g = generator(1);
        for seq in 0..5_000 {
            let r = g.next_request(seq);
            assert_eq!(r.limit, 10);
            assert_eq!(r.consent, Some(true));
            assert!(r.candidate_item_ids.is_empty());
            let n: usize = r.shopper_id.strip_prefix("lt-").unwrap().parse().unwrap();
            assert!(n < 100_000);
            let surface = r.surface();
            assert_ne!(surface, Surface::Unspecified);
            assert_ne!(r.channel(), Channel::Unspecified);
            match surface {
                Surface::ProductPage | Surface::Cart => {
                    assert!((1..=2).contains(&r.context_item_ids.len()), "{r:?}");
                }
                _ => assert!(r.context_item_ids.is_empty()),
            }
            for id in &r.context_item_ids {
                let i: usize = id.strip_prefix("sku-").unwrap().parse().unwrap();
                assert!(i < 10_710);
                assert_eq!(id.len(), "sku-000000".len());
            }
            if surface == Surface::StoreAisle || surface == Surface::KioskIdle {
                assert!(r.store_id.starts_with("store-"), "{r:?}");
            }
            assert_eq!(r.request_id, format!("lt-d{seq}"));
        }
    }

    #[test]
    fn population_is_skewed_and_surfaces_are_mixed() {
        let mut g = generator(2);
        let mut shoppers: BTreeMap<String, u64> = BTreeMap::new();
        let mut surfaces = BTreeSet::new();
        let mut channels = BTreeSet::new();
        let draws = 20_000;
        for seq in 0..draws {
            let r = g.next_request(seq);
            *shoppers.entry(r.shopper_id.clone()).or_default() += 1;
            surfaces.insert(r.surface);
            channels.insert(r.channel);
        }
        // lt-0 gets 1/H(100000) ≈ 8% of the traffic; many shoppers appear.
        let top = shoppers["lt-0"] as f64 / draws as f64;
        assert!((0.07..0.10).contains(&top), "lt-0 share {top}");
        assert!(shoppers["lt-0"] > shoppers.get("lt-1").copied().unwrap_or(0));
        assert!(
            shoppers.len() > 5_000,
            "{} distinct shoppers",
            shoppers.len()
        );
        assert_eq!(surfaces.len(), SURFACES.len());
        assert!(channels.len() >= 6, "{channels:?}");
    }

    #[test]
    fn same_seed_same_requests() {
        let mut a = generator(3);
        let mut b = generator(3);
        for seq in 0..100 {
            assert_eq!(a.next_request(seq), b.next_request(seq));
        }
    }
}
