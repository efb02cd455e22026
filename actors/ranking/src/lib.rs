//! Ranking: what a shopper is most likely to want next.
//!
//! Pure logic, shared by the node and the trainer so that there is no training/serving skew:
//! - [`features`]: the feature schema and its one implementation, over plain per-item and per-decision inputs.
//! - [`model`]: the versioned model bundle (generator indexes + learned ranker) and its validation.
//! - [`served`]: a model bound to a catalog, with the fallback rungs' lists.
//! - [`retrieve`]: request-level candidate retrieval (V-SKNN, sequential and association rules, session rules, top
//!   sellers) with every generator's raw score, normalisers and log-ranks among the candidates.
//! - [`score`]: scoring a partition of the candidates and merging partitions under the guardrails.
//! - [`fit`]: building generators from sessions and training the ranker with linfa.
//!
//! And the actors: [`shard`], the ranking shards that score partitions in parallel. [`rank_local`] runs the same
//! steps in one thread (the trainer's offline path and the benchmarks).
//!
//! The files import each other in one direction only. Bottom to top, each with the files it uses (all below it):
//! ```text
//! csr.rs       compressed rows, the generator indexes' layout       —
//! order.rs     sort keys: a score and an index in one u64           —
//! features.rs  feature schema and `compute`, from plain inputs      —
//! model.rs     the model bundle: indexes, ranker, trained schema    csr, features
//! served.rs    a model bound to a catalog, dense item inputs        csr, features, model
//! retrieve.rs  one decision's candidates and raw generator scores   features, order, served
//! score.rs     scores, guardrails, merge; the anonymous order       features, order, retrieve, served
//! fit.rs       training: generators, examples, logistic ranker      csr, features, model, retrieve, served
//! shard.rs     the ranking shard actors                             retrieve, score, served
//! lib.rs       `rank_local`, re-exports                             model, retrieve, score, served, shard
//! ```
//! Keeping `features` at the bottom is what lets the trainer and the node share it: a feature vector depends only
//! on what it is given, never on which model or which path asked.

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
/// as those of the full path. A query whose only signal is the items on screen ([`Query::is_on_screen_only`]) gets
/// the same top sellers, less those the on-screen rules touched: only the touched candidates are scored per
/// decision, and the rest come from that same order.
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
            candidates: score::anonymous(model).candidates.len(),
        };
    }
    if query.is_on_screen_only()
        && let Some(on) = retrieve::retrieve_on_screen(model, score::anonymous(model), query)
    {
        // No session: no last item to name in a reason.
        let part = score::score_on_screen(model, &on, guard, limit);
        let items = score::merge(model, vec![part], guard, limit, None, &mut exclusions);
        return LocalRanking {
            items,
            exclusions,
            candidates: on.candidates,
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
