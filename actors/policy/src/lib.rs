//! Policy guardrails: what may never be shown, whatever ranking prefers.
//!
//! - [`rules`]: the versioned rules bundle (stock minimum, age restrictions, discount cap, category cap,
//!   purchased-item exclusion) and its validation.
//! - [`guard`]: evaluating the rules for one decision, with a reason code for every exclusion. Pure.
//! - [`PolicyActor`]: the actor that owns the rules and swaps in validated new versions; decisions read the
//!   current rules from a lock-free snapshot, so the actor is never on the hot path.
//!
//! Consent is a guardrail too: [`may_personalise`] decides whether a decision may use the shopper's session, from
//! the request's statement, the shopper's recorded one and the region's default ([`ConsentDefaults`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod guard;
pub mod rules;

pub use guard::{Admitted, Exclusion, ExclusionCounts, Guard, PolicyContext, ServedOffer};
pub use rules::{Rules, RulesFile};

/// The actor owning the guardrail rules.
pub type PolicyActor = aisle_kit::snapshot::KeeperActor<aisle_kit::snapshot::SnapshotOwner<Rules>>;
/// The typed handle to the [`PolicyActor`]: lock-free reads of the current rules, validated loads.
pub type Policy = aisle_kit::snapshot::Snapshot<Rules>;

/// Whether behavioural data (the session) may be used: only with consent, and the most restrictive statement
/// wins. `requested` is the request's statement, `recorded` the latest one the shopper's events recorded (`None`
/// when there is none, or the session was not read), `default_consent` the node's default for the request's region.
///
/// A refusal, requested or recorded, always wins: a revocation sent with a Track binds every later decision until
/// a new grant is tracked, even one whose request says `true`. Otherwise the request's statement, else the
/// recorded one, else the default.
pub fn may_personalise(
    requested: Option<bool>,
    recorded: Option<bool>,
    default_consent: bool,
) -> bool {
    if requested == Some(false) || recorded == Some(false) {
        return false;
    }
    requested.or(recorded).unwrap_or(default_consent)
}

/// Longest region name, in bytes (a region key of `consent_defaults`, a Track event's `region`).
pub const MAX_REGION_BYTES: usize = 64;

/// Consent assumed for shoppers who stated none, per region: privacy law differs between markets (opt-in in one,
/// opt-out in another), so the operator sets a default per region and one for every other region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentDefaults {
    /// Default for a region neither named nor under a named one.
    pub fallback: bool,
    /// Region → default; keys are region names (`EU`, `US`, `US-CA`, …).
    pub regions: std::collections::BTreeMap<String, bool>,
}

impl ConsentDefaults {
    /// The default for `region`: the region's own entry, else the entry of the part before its first `-` (`US-CA`
    /// falls back to `US`), else [`ConsentDefaults::fallback`]. An empty region gets the fallback.
    pub fn for_region(&self, region: &str) -> bool {
        if region.is_empty() {
            return self.fallback;
        }
        if let Some(&c) = self.regions.get(region) {
            return c;
        }
        region
            .split_once('-')
            .and_then(|(parent, _)| self.regions.get(parent).copied())
            .unwrap_or(self.fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_domain::catalog::Catalog;
    use aisle_domain::request::{AgeBand, Channel, LoyaltyTier, ShopperAttributes};

    const NOW: i64 = 1_000_000;

    fn catalog() -> Catalog {
        let json = serde_json::json!({
            "format_version": 1,
            "version": "t",
            "categories": [{"name": "Wine"}, {"name": "Socks"}, {"name": "Knives", "min_age": 18}],
            "items": [
                {"id": "wine", "name": "w", "category": "Wine", "price_cents": 2000, "stock": 5},
                {"id": "sock-a", "name": "a", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "sock-b", "name": "b", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "sock-c", "name": "c", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "sock-d", "name": "d", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "gone", "name": "g", "category": "Socks", "price_cents": 1000, "stock": 0},
                {"id": "knife", "name": "k", "category": "Knives", "price_cents": 5000, "stock": 5},
                {"id": "offer-ok", "name": "o1", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "offer-old", "name": "o2", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "offer-gold", "name": "o3", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "offer-app", "name": "o4", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "offer-deep", "name": "o5", "category": "Socks", "price_cents": 1000, "stock": 5},
                {"id": "offer-soon", "name": "o6", "category": "Socks", "price_cents": 1000, "stock": 5}
            ],
            "offers": [
                {"id": "ok", "item_id": "offer-ok", "discount_percent": 20, "starts_at_ms": 0, "expires_at_ms": NOW + 1},
                {"id": "old", "item_id": "offer-old", "discount_percent": 20, "starts_at_ms": 0, "expires_at_ms": NOW},
                {"id": "gold", "item_id": "offer-gold", "discount_percent": 20, "min_loyalty": "gold",
                 "starts_at_ms": 0, "expires_at_ms": NOW + 1},
                {"id": "app", "item_id": "offer-app", "discount_percent": 20, "channels": ["app"],
                 "starts_at_ms": 0, "expires_at_ms": NOW + 1},
                {"id": "deep", "item_id": "offer-deep", "discount_percent": 50, "starts_at_ms": 0, "expires_at_ms": NOW + 1},
                {"id": "soon", "item_id": "offer-soon", "discount_percent": 10, "starts_at_ms": NOW + 5,
                 "expires_at_ms": NOW + 10}
            ]
        });
        Catalog::from_json(json.to_string().as_bytes(), "test").unwrap()
    }

    fn ctx(purchased: &[u32]) -> PolicyContext<'_> {
        PolicyContext {
            attributes: ShopperAttributes::default(),
            channel: Channel::Web,
            purchased,
            now_ms: NOW,
            max_items_per_category: 3,
        }
    }

    fn idx(c: &Catalog, id: &str) -> u32 {
        c.lookup(id).unwrap()
    }

    #[test]
    fn out_of_stock_is_excluded() {
        let (c, r) = (catalog(), Rules::embedded());
        let g = Guard::new(&r, &c, ctx(&[]));
        assert_eq!(g.admit(idx(&c, "gone")), Err(Exclusion::OutOfStock));
        assert_eq!(g.admit(idx(&c, "sock-a")), Ok(()));
    }

    #[test]
    fn admit_all_counts_what_admit_says_item_by_item() {
        let c = catalog();
        let everything: Vec<u32> = (0..c.items.len() as u32 + 2).collect();
        let purchased = [idx(&c, "sock-b"), idx(&c, "gone")];
        let verified = ShopperAttributes {
            age_verified: true,
            age_band: AgeBand::From21,
            ..Default::default()
        };
        for (rules, attributes, bought) in [
            (
                Rules::embedded(),
                ShopperAttributes::default(),
                &purchased[..],
            ),
            (Rules::embedded(), verified, &purchased[..]),
            (Rules::embedded(), ShopperAttributes::default(), &[][..]),
        ] {
            let g = Guard::new(
                &rules,
                &c,
                PolicyContext {
                    attributes,
                    ..ctx(bought)
                },
            );
            let mut one_by_one = ExclusionCounts::default();
            let mut admitted = 0;
            for &i in &everything {
                match g.admit(i) {
                    Ok(()) => admitted += 1,
                    Err(e) => one_by_one.add(e),
                }
            }
            let mut all = ExclusionCounts::default();
            assert_eq!(g.admit_all(everything.iter().copied(), &mut all), admitted);
            assert_eq!(all, one_by_one);
            assert!(one_by_one.get(Exclusion::UnknownItem) == 2);
        }
    }

    #[test]
    fn one_rules_bundle_resolves_each_catalog_it_guards() {
        let r = Rules::embedded();
        let c = catalog();
        let g = Guard::new(&r, &c, ctx(&[]));
        assert_eq!(g.admit(idx(&c, "sock-a")), Ok(()));
        assert_eq!(g.admit(c.items.len() as u32), Err(Exclusion::UnknownItem));
        // The same content re-indexed over a catalog with one more item: the same content hash, a longer item
        // table, that item delisted. The rules must not reuse what they resolved for the first catalog.
        let json = serde_json::json!({
            "format_version": 1,
            "version": "base",
            "categories": [{"name": "Socks"}],
            "items": [{"id": "extra", "name": "x", "category": "Socks", "price_cents": 1, "stock": 9}]
        });
        let base = Catalog::from_json(json.to_string().as_bytes(), "base").unwrap();
        let over = catalog().rebased(&base).unwrap();
        assert_eq!(over.meta.content_hash, c.meta.content_hash);
        let g = Guard::new(&r, &over, ctx(&[]));
        assert_eq!(g.admit(idx(&over, "extra")), Err(Exclusion::UnknownItem));
        assert_eq!(g.admit(idx(&over, "sock-a")), Ok(()));
        assert_eq!(g.admit(idx(&over, "gone")), Err(Exclusion::OutOfStock));
        assert_eq!(g.admit(idx(&over, "knife")), Err(Exclusion::AgeRestricted));
    }

    #[test]
    fn age_restrictions_need_a_verified_age_above_the_threshold() {
        let (c, r) = (catalog(), Rules::embedded());
        let (wine, knife) = (idx(&c, "wine"), idx(&c, "knife"));
        // The rules restrict Wine to 21; the catalog restricts Knives to 18.
        let g = Guard::new(&r, &c, ctx(&[]));
        assert_eq!(g.admit(wine), Err(Exclusion::AgeRestricted));
        assert_eq!(g.admit(knife), Err(Exclusion::AgeRestricted));
        // A claimed but unverified band clears nothing.
        let mut claimed = ctx(&[]);
        claimed.attributes.age_band = AgeBand::From21;
        assert_eq!(
            Guard::new(&r, &c, claimed).admit(wine),
            Err(Exclusion::AgeRestricted)
        );
        let mut eighteen = ctx(&[]);
        eighteen.attributes = ShopperAttributes {
            age_verified: true,
            age_band: AgeBand::From18To20,
            loyalty_tier: LoyaltyTier::None,
        };
        let g = Guard::new(&r, &c, eighteen);
        assert_eq!(g.admit(knife), Ok(()));
        assert_eq!(g.admit(wine), Err(Exclusion::AgeRestricted));
        let mut adult = eighteen;
        adult.attributes.age_band = AgeBand::From21;
        assert_eq!(Guard::new(&r, &c, adult).admit(wine), Ok(()));
    }

    #[test]
    fn purchased_items_are_excluded() {
        let (c, r) = (catalog(), Rules::embedded());
        let bought = [idx(&c, "sock-a")];
        let g = Guard::new(&r, &c, ctx(&bought));
        assert_eq!(g.admit(bought[0]), Err(Exclusion::AlreadyPurchased));
    }

    #[test]
    fn unknown_items_fail_closed() {
        let (c, r) = (catalog(), Rules::embedded());
        let g = Guard::new(&r, &c, ctx(&[]));
        assert_eq!(g.admit(10_000), Err(Exclusion::UnknownItem));
    }

    #[test]
    fn offers_are_served_only_when_eligible_unexpired_and_within_the_cap() {
        let (c, r) = (catalog(), Rules::embedded());
        let g = Guard::new(&r, &c, ctx(&[]));
        let ok = g.offer(idx(&c, "offer-ok")).unwrap().unwrap();
        assert_eq!(ok.price_cents, 800);
        assert_eq!(&*ok.offer_id, "ok");
        assert_eq!(g.offer(idx(&c, "offer-old")), Err(Exclusion::OfferExpired));
        assert_eq!(
            g.offer(idx(&c, "offer-soon")),
            Err(Exclusion::OfferNotStarted)
        );
        assert_eq!(
            g.offer(idx(&c, "offer-gold")),
            Err(Exclusion::OfferLoyaltyTier)
        );
        assert_eq!(g.offer(idx(&c, "offer-app")), Err(Exclusion::OfferChannel));
        assert_eq!(
            g.offer(idx(&c, "offer-deep")),
            Err(Exclusion::OfferDiscountCap)
        );
        assert_eq!(g.offer(idx(&c, "sock-a")), Ok(None));
        let mut gold_app = ctx(&[]);
        gold_app.attributes.loyalty_tier = LoyaltyTier::Platinum;
        gold_app.channel = Channel::App;
        let g = Guard::new(&r, &c, gold_app);
        assert!(g.offer(idx(&c, "offer-gold")).unwrap().is_some());
        assert!(g.offer(idx(&c, "offer-app")).unwrap().is_some());
    }

    #[test]
    fn select_applies_every_rule_and_counts_reasons() {
        let (c, r) = (catalog(), Rules::embedded());
        let g = Guard::new(&r, &c, ctx(&[]));
        let order = [
            "wine",
            "gone",
            "sock-a",
            "sock-a",
            "sock-b",
            "sock-c",
            "sock-d",
            "knife",
            "offer-old",
        ];
        let candidates: Vec<(u32, f32)> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (idx(&c, id), 10.0 - i as f32))
            .collect();
        let mut counts = ExclusionCounts::default();
        let kept = g.select(candidates, 10, &mut counts);
        let ids: Vec<&str> = kept.iter().map(|a| &*c.item(a.item).id).collect();
        assert_eq!(
            ids,
            ["sock-a", "sock-b", "sock-c"],
            "cap of 3 socks; duplicates once"
        );
        assert_eq!(counts.get(Exclusion::AgeRestricted), 2);
        assert_eq!(counts.get(Exclusion::OutOfStock), 1);
        assert_eq!(counts.get(Exclusion::CategoryCap), 2);
    }

    #[test]
    fn limit_is_respected_and_offers_withheld_keep_the_item() {
        let (c, r) = (catalog(), Rules::embedded());
        let g = Guard::new(&r, &c, ctx(&[]));
        let mut counts = ExclusionCounts::default();
        let kept = g.select(
            [(idx(&c, "offer-old"), 1.0), (idx(&c, "sock-a"), 0.5)],
            1,
            &mut counts,
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].offer, None);
        assert_eq!(counts.get(Exclusion::OfferExpired), 1);
    }

    #[test]
    fn consent_defaults_closed() {
        assert!(!may_personalise(None, None, false));
        assert!(!may_personalise(Some(false), None, true));
        assert!(may_personalise(Some(true), None, false));
        assert!(may_personalise(None, None, true));
    }

    #[test]
    fn the_most_restrictive_statement_wins() {
        // A recorded revocation binds even a request that says yes, and whatever the default.
        for default in [false, true] {
            assert!(!may_personalise(Some(true), Some(false), default));
            assert!(!may_personalise(None, Some(false), default));
            assert!(!may_personalise(Some(false), Some(true), default));
        }
        // A request that says nothing takes the recorded grant over a closed default.
        assert!(may_personalise(None, Some(true), false));
        assert!(may_personalise(Some(true), Some(true), false));
    }

    #[test]
    fn region_defaults_look_up_the_region_then_its_parent_then_the_fallback() {
        let d = ConsentDefaults {
            fallback: false,
            regions: [("EU", false), ("US", true), ("US-CA", false), ("CA", true)]
                .into_iter()
                .map(|(r, c)| (r.to_string(), c))
                .collect(),
        };
        assert!(d.for_region("US"));
        assert!(d.for_region("US-NY"), "the part before the first '-'");
        assert!(!d.for_region("US-CA"), "the exact region first");
        assert!(
            d.for_region("US-CA-SF"),
            "the part before the first '-', not US-CA"
        );
        assert!(!d.for_region("EU"));
        assert!(!d.for_region("BR"), "unknown: the fallback");
        assert!(!d.for_region(""), "none: the fallback");
        assert!(!d.for_region("us"), "names are exact");
        assert!(d.for_region("CA-QC"));
        let open = ConsentDefaults {
            fallback: true,
            ..d
        };
        assert!(open.for_region("BR"));
        assert!(open.for_region(""));
        assert!(!open.for_region("EU-FR"));
    }

    #[test]
    fn rules_files_are_validated_naming_the_field() {
        let err = Rules::from_json(
            br#"{"format_version":1,"version":"x","max_discount_percent":120}"#,
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_discount_percent"), "{err}");
        let err = Rules::from_json(br#"{"format_version":2,"version":"x"}"#, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format version 2"), "{err}");
        let err = Rules::from_json(br#"{"format_version":1,"version":"x","typo":1}"#, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("typo"), "{err}");
        let ok = Rules::from_json(br#"{"format_version":1,"version":"x"}"#, "t").unwrap();
        assert_eq!(
            (
                ok.min_stock,
                ok.max_discount_percent,
                ok.max_items_per_category
            ),
            (1, 30, 3)
        );
    }

    #[tokio::test]
    async fn the_policy_actor_swaps_rules_and_keeps_the_last_good_ones() {
        let policy = Policy::start(Rules::embedded()).await.unwrap();
        let t = std::time::Duration::from_secs(5);
        policy
            .load(
                br#"{"format_version":1,"version":"r2","max_discount_percent":10}"#.to_vec(),
                "t",
                t,
            )
            .await
            .unwrap();
        assert_eq!(policy.current().meta.version, "r2");
        assert!(policy.load(b"{}".to_vec(), "t", t).await.is_err());
        assert_eq!(policy.current().max_discount_percent, 10);
        policy.stop();
    }
}
