//! The CACHED rung: each shopper's last FRESH decision per surface, for a TTL. A shopper's events invalidate their
//! entries (the cached answer no longer reflects them), and so does `ForgetShopper`. Entries remember the catalog
//! they were made against and are ignored after a catalog change.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::ItemIdx;
use aisle_domain::request::Surface;
use quick_cache::sync::Cache;
use tokio::time::Instant;

/// An item of a cached decision.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedItem {
    /// The item.
    pub item: ItemIdx,
    /// Its score when ranked.
    pub score: f32,
    /// Why it was ranked there.
    pub reasons: Vec<String>,
}

/// A cached decision.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDecision {
    /// Items, best first (re-checked by the guardrails when served).
    pub items: Vec<CachedItem>,
    /// The model that ranked them.
    pub model_version: String,
    /// The catalog they index (content hash).
    pub catalog_hash: String,
    /// When it was made.
    pub made_at: Instant,
}

/// Last decisions by (shopper, surface).
pub struct DecisionCache {
    cache: Cache<(Box<str>, Surface), Arc<CachedDecision>>,
    ttl: Duration,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("len", &self.cache.len())
            .finish()
    }
}

impl DecisionCache {
    /// A cache of at most `capacity` decisions, each served for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            cache: Cache::new(capacity.max(1)),
            ttl,
        }
    }

    /// Remembers a decision.
    pub fn put(&self, shopper_id: &str, surface: Surface, decision: CachedDecision) {
        self.cache
            .insert((shopper_id.into(), surface), Arc::new(decision));
    }

    /// The shopper's last decision for the surface, if fresh enough and made against this catalog.
    pub fn get(
        &self,
        shopper_id: &str,
        surface: Surface,
        catalog_hash: &str,
    ) -> Option<Arc<CachedDecision>> {
        let hit = self.cache.get(&(shopper_id.into(), surface))?;
        (hit.made_at.elapsed() <= self.ttl && hit.catalog_hash == catalog_hash).then_some(hit)
    }

    /// Forgets every decision of the shopper; returns how many were held.
    pub fn invalidate(&self, shopper_id: &str) -> usize {
        let mut removed = 0;
        for surface in Surface::ALL {
            if self.cache.remove(&(shopper_id.into(), *surface)).is_some() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> CachedDecision {
        CachedDecision {
            items: vec![CachedItem {
                item: 1,
                score: 0.5,
                reasons: vec![],
            }],
            model_version: "m".into(),
            catalog_hash: "h".into(),
            made_at: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_invalidated_per_shopper() {
        let c = DecisionCache::new(100, Duration::from_secs(60));
        c.put("a", Surface::Home, decision());
        c.put("a", Surface::Cart, decision());
        c.put("b", Surface::Home, decision());
        assert!(c.get("a", Surface::Home, "h").is_some());
        assert!(c.get("a", Surface::Home, "other catalog").is_none());
        assert_eq!(c.invalidate("a"), 2);
        assert!(c.get("a", Surface::Cart, "h").is_none());
        assert!(c.get("b", Surface::Home, "h").is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(c.get("b", Surface::Home, "h").is_none());
    }
}
