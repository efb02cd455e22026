//! Evaluating the guardrails for one decision. Every rung of the fallback ladder passes through [`Guard::select`];
//! ranking also calls [`Guard::admit`] early so that excluded items do not take the places of admissible ones.
//!
//! Everything fails closed: an item the catalog does not know, an age restriction the shopper's verified age does
//! not clear (an unverified shopper clears none), an offer whose terms cannot be confirmed — each is excluded (or,
//! for offers, withheld) with a reason code.

use std::sync::Arc;

use aisle_domain::TimestampMs;
use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx, Offer};
use aisle_domain::request::{Channel, ShopperAttributes};

use crate::rules::{Resolved, Rules};

/// Why an item (or its offer) was kept from a shopper. The codes are stable: they label metrics and decision
/// records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exclusion {
    /// The item's id is not in the catalog.
    UnknownItem,
    /// Stock below the rules' minimum.
    OutOfStock,
    /// The category or item needs a verified age the shopper does not have.
    AgeRestricted,
    /// Bought in this session.
    AlreadyPurchased,
    /// The answer already holds the maximum number of items of this category.
    CategoryCap,
    /// The offer has expired (the item stays, without the offer).
    OfferExpired,
    /// The offer has not started (the item stays, without the offer).
    OfferNotStarted,
    /// The shopper's loyalty tier is below the offer's (the item stays, without the offer).
    OfferLoyaltyTier,
    /// The offer is not valid on this channel (the item stays, without the offer).
    OfferChannel,
    /// The offer's discount exceeds the cap (the item stays, without the offer).
    OfferDiscountCap,
}

impl Exclusion {
    /// Every code, in a fixed order (indexes [`ExclusionCounts`]).
    pub const ALL: [Exclusion; 10] = [
        Exclusion::UnknownItem,
        Exclusion::OutOfStock,
        Exclusion::AgeRestricted,
        Exclusion::AlreadyPurchased,
        Exclusion::CategoryCap,
        Exclusion::OfferExpired,
        Exclusion::OfferNotStarted,
        Exclusion::OfferLoyaltyTier,
        Exclusion::OfferChannel,
        Exclusion::OfferDiscountCap,
    ];

    /// The reason code, e.g. `out_of_stock`.
    pub fn code(self) -> &'static str {
        match self {
            Exclusion::UnknownItem => "unknown_item",
            Exclusion::OutOfStock => "out_of_stock",
            Exclusion::AgeRestricted => "age_restricted",
            Exclusion::AlreadyPurchased => "already_purchased",
            Exclusion::CategoryCap => "category_cap",
            Exclusion::OfferExpired => "offer_expired",
            Exclusion::OfferNotStarted => "offer_not_started",
            Exclusion::OfferLoyaltyTier => "offer_loyalty_tier",
            Exclusion::OfferChannel => "offer_channel",
            Exclusion::OfferDiscountCap => "offer_discount_cap",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&e| e == self).expect("listed")
    }
}

/// How many times each [`Exclusion`] applied in one decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExclusionCounts([u32; Exclusion::ALL.len()]);

impl ExclusionCounts {
    /// Counts one exclusion.
    pub fn add(&mut self, e: Exclusion) {
        self.0[e.index()] += 1;
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &ExclusionCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The count of one code.
    pub fn get(&self, e: Exclusion) -> u32 {
        self.0[e.index()]
    }

    /// The non-zero counts.
    pub fn iter(&self) -> impl Iterator<Item = (Exclusion, u32)> + '_ {
        Exclusion::ALL
            .iter()
            .copied()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
    }
}

/// What the guardrails need to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// Verified age and loyalty tier.
    pub attributes: ShopperAttributes,
    /// The channel asking.
    pub channel: Channel,
    /// Items bought in this session (empty without consent).
    pub purchased: &'a [ItemIdx],
    /// Now, for offer validity.
    pub now_ms: TimestampMs,
    /// Per-category cap for this decision (the rules' unless an experiment variant sets one; 0: none).
    pub max_items_per_category: usize,
}

/// An offer cleared for this shopper, now.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedOffer {
    /// External offer id.
    pub offer_id: Box<str>,
    /// Discount in percent.
    pub discount_percent: u32,
    /// Price after the discount, in cents.
    pub price_cents: i64,
    /// Valid until.
    pub expires_at_ms: TimestampMs,
}

/// An item that passed the guardrails, with its offer if one was cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The item.
    pub item: ItemIdx,
    /// Its score from the rung that proposed it.
    pub score: f32,
    /// The offer, if cleared.
    pub offer: Option<ServedOffer>,
}

/// The guardrails bound to one decision: rules, catalog and request.
#[derive(Debug)]
pub struct Guard<'a> {
    rules: &'a Rules,
    catalog: &'a Catalog,
    resolved: Arc<Resolved>,
    ctx: PolicyContext<'a>,
    min_age_cleared: u8,
}

impl<'a> Guard<'a> {
    /// Binds the rules to a catalog and a request.
    pub fn new(rules: &'a Rules, catalog: &'a Catalog, ctx: PolicyContext<'a>) -> Self {
        Self {
            resolved: rules.resolved(catalog),
            min_age_cleared: ctx.attributes.verified_min_age(),
            rules,
            catalog,
            ctx,
        }
    }

    /// The per-category cap in force.
    pub fn category_cap(&self) -> usize {
        self.ctx.max_items_per_category
    }

    /// Whether the cap applies to the category (the catch-all of a catalog without categories is exempt).
    pub fn caps_category(&self, category: CategoryIdx) -> bool {
        self.ctx.max_items_per_category > 0 && !self.catalog.is_uncategorised(category)
    }

    /// Whether the item may be shown at all to this shopper (stock, age, purchase), ignoring caps and offers.
    ///
    /// # Errors
    /// The exclusion that applies.
    #[inline]
    pub fn admit(&self, item: ItemIdx) -> Result<(), Exclusion> {
        // One read of the resolved bars per candidate: ranking calls this for every candidate of a decision.
        let bar = self
            .resolved
            .bars
            .get(item as usize)
            .copied()
            .unwrap_or(Resolved::UNKNOWN);
        if bar >= Resolved::OUT_OF_STOCK {
            return Err(if bar == Resolved::OUT_OF_STOCK {
                Exclusion::OutOfStock
            } else {
                Exclusion::UnknownItem
            });
        }
        if bar > 0 && u16::from(self.min_age_cleared) < bar {
            return Err(Exclusion::AgeRestricted);
        }
        if self.rules.exclude_purchased && self.ctx.purchased.contains(&item) {
            return Err(Exclusion::AlreadyPurchased);
        }
        Ok(())
    }

    /// Applies [`Guard::admit`] to every item and counts the exclusions: returns how many it admits. The same
    /// counts as calling it item by item, in one loop with a single comparison for an admissible item — ranking
    /// counts some 500 candidates per decision this way.
    pub fn admit_all(
        &self,
        items: impl Iterator<Item = ItemIdx>,
        counts: &mut ExclusionCounts,
    ) -> usize {
        let bars = &self.resolved.bars;
        // A bar above the shopper's cleared age excludes: both flags are above any age, and an age bar of 0
        // never is.
        let cleared = u16::from(self.min_age_cleared);
        let purchased = if self.rules.exclude_purchased {
            self.ctx.purchased
        } else {
            &[]
        };
        let mut admitted = 0;
        for item in items {
            let bar = bars
                .get(item as usize)
                .copied()
                .unwrap_or(Resolved::UNKNOWN);
            if bar > cleared {
                counts.add(match bar {
                    Resolved::UNKNOWN => Exclusion::UnknownItem,
                    Resolved::OUT_OF_STOCK => Exclusion::OutOfStock,
                    _ => Exclusion::AgeRestricted,
                });
            } else if !purchased.is_empty() && purchased.contains(&item) {
                counts.add(Exclusion::AlreadyPurchased);
            } else {
                admitted += 1;
            }
        }
        admitted
    }

    /// The item's offer, if it clears every offer rule now.
    ///
    /// # Errors
    /// The reason the item's offer is withheld (the item itself stays admissible).
    pub fn offer(&self, item: ItemIdx) -> Result<Option<ServedOffer>, Exclusion> {
        let it = self.catalog.item(item);
        let Some(offer_idx) = it.offer else {
            return Ok(None);
        };
        let Some(offer) = self.catalog.offers.get(offer_idx as usize) else {
            return Ok(None);
        };
        self.check_offer(offer)?;
        let price_cents = it.price_cents - it.price_cents * offer.discount_percent as i64 / 100;
        Ok(Some(ServedOffer {
            offer_id: offer.id.clone(),
            discount_percent: offer.discount_percent,
            price_cents,
            expires_at_ms: offer.expires_at_ms,
        }))
    }

    fn check_offer(&self, offer: &Offer) -> Result<(), Exclusion> {
        let now = self.ctx.now_ms;
        if now >= offer.expires_at_ms {
            return Err(Exclusion::OfferExpired);
        }
        if now < offer.starts_at_ms {
            return Err(Exclusion::OfferNotStarted);
        }
        if self.ctx.attributes.loyalty_tier < offer.min_loyalty {
            return Err(Exclusion::OfferLoyaltyTier);
        }
        if !offer.channels.is_empty() && !offer.channels.contains(&self.ctx.channel) {
            return Err(Exclusion::OfferChannel);
        }
        if offer.discount_percent > self.rules.max_discount_percent {
            return Err(Exclusion::OfferDiscountCap);
        }
        Ok(())
    }

    /// Walks candidates best first and keeps up to `limit` that pass every rule: admissible, within the category
    /// cap, not repeated; offers attached only when cleared. Counts every exclusion.
    pub fn select(
        &self,
        candidates: impl IntoIterator<Item = (ItemIdx, f32)>,
        limit: usize,
        counts: &mut ExclusionCounts,
    ) -> Vec<Admitted> {
        let mut out: Vec<Admitted> = Vec::with_capacity(limit);
        let mut per_category: Vec<(CategoryIdx, usize)> = Vec::new();
        for (item, score) in candidates {
            if out.len() >= limit {
                break;
            }
            if out.iter().any(|a| a.item == item) {
                continue;
            }
            if let Err(e) = self.admit(item) {
                counts.add(e);
                continue;
            }
            let category = self.catalog.item(item).category;
            if self.caps_category(category) {
                match per_category.iter_mut().find(|c| c.0 == category) {
                    Some(c) if c.1 >= self.ctx.max_items_per_category => {
                        counts.add(Exclusion::CategoryCap);
                        continue;
                    }
                    Some(c) => c.1 += 1,
                    None => per_category.push((category, 1)),
                }
            }
            let offer = match self.offer(item) {
                Ok(o) => o,
                Err(e) => {
                    counts.add(e);
                    None
                }
            };
            out.push(Admitted { item, score, offer });
        }
        out
    }
}
