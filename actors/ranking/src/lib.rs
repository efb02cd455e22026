//! Ranking: what a shopper is most likely to want next.
//!
//! Pure logic, shared by the node and the trainer so that there is no training/serving skew:
//! - [`model`]: the versioned model bundle (generator indexes + learned ranker) and its validation.
//! - [`fit`]: building generators from sessions and training the ranker with linfa.
//! - [`served`]: a model bound to a catalog, with the fallback rungs' lists.
//! - [`retrieve`]: request-level candidate retrieval (V-SKNN, sequential and association rules, session rules, top
//!   sellers) with every generator's raw score, normalisers and log-ranks among the candidates.
//! - [`features`]: the feature schema and its one implementation.
//! - [`score`]: scoring a partition of the candidates and merging partitions under the guardrails.
//!
//! And the actors: [`shard`], the ranking shards that score partitions in parallel. [`rank_local`] runs the same
//! steps in one thread (the trainer's offline path and the benchmarks).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod csr;
pub mod features;
pub mod fit;
pub mod model;
mod order;
pub mod retrieve;
pub mod score;
pub mod served;
pub mod shard;

use aisle_policy::{ExclusionCounts, Guard};

pub use model::Model;
pub use retrieve::{Query, Retrieved, retrieve};
pub use score::RankedItem;
pub use served::ServedModel;
pub use shard::{PolicyInputs, RankError, Ranking, ScoreJob};

/// A ranking made in the calling thread.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRanking {
    /// The answer, best first.
    pub items: Vec<RankedItem>,
    /// Exclusions applied.
    pub exclusions: ExclusionCounts,
    /// Candidates retrieved.
    pub candidates: usize,
}

/// Retrieves, scores and selects in the calling thread: the same steps, in the same order, as a decision through
/// the ranking shards, with one partition — the FRESH rung's whole work, and the node's way to rank without a
/// thread hand-off.
///
/// A query that carries nothing about the shopper ([`Query::is_anonymous`]: a first visit, a shopper without
/// consent) always gets the same candidates with the same scores; their order is computed once per served model
/// and each such decision only applies the guardrails to it. The answer and the exclusions counted are the same
/// as those of the full path.
pub fn rank_local(
    model: &ServedModel,
    query: &Query<'_>,
    guard: &Guard<'_>,
    limit: usize,
) -> LocalRanking {
    let mut exclusions = ExclusionCounts::default();
    if query.is_anonymous() {
        let part = score::score_anonymous(model, guard, limit);
        let items = score::merge(model, vec![part], guard, limit, None, &mut exclusions);
        return LocalRanking {
            items,
            exclusions,
            candidates: model.anonymous().retrieved.candidates.len(),
        };
    }
    let retrieved = retrieve(model, query);
    let items = score::rank(model, &retrieved, guard, limit, &mut exclusions);
    LocalRanking {
        items,
        exclusions,
        candidates: retrieved.candidates.len(),
    }
}
