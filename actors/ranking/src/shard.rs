//! Ranking shards: the actors that score a decision's candidates, one partition of the catalog each
//! (`item % shards`), in parallel.
//!
//! A shard is stateless between decisions: the model, the candidates and the guardrail inputs arrive in the job,
//! as one `Arc` shared by every shard. A shard that panics is restarted in place by its pool supervisor; the
//! decision that hit it falls back to a lower rung.

use std::sync::Arc;

use aisle_domain::TimestampMs;
use aisle_domain::catalog::ItemIdx;
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_kit::pool::Pool;
use aisle_policy::{Guard, PolicyContext, Rules};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::retrieve::Retrieved;
use crate::score::{PartitionResult, score_partition};
use crate::served::ServedModel;

/// The guardrail inputs of a decision, owned so they can travel to the shards.
#[derive(Debug, Clone)]
pub struct PolicyInputs {
    /// Verified age and loyalty tier.
    pub attributes: ShopperAttributes,
    /// The channel asking.
    pub channel: Channel,
    /// Items bought in the session.
    pub purchased: Vec<ItemIdx>,
    /// Now, for offers.
    pub now_ms: TimestampMs,
    /// Per-category cap for this decision.
    pub max_items_per_category: usize,
}

impl PolicyInputs {
    /// The borrowed form the guard takes.
    pub fn context(&self) -> PolicyContext<'_> {
        PolicyContext {
            attributes: self.attributes,
            channel: self.channel,
            purchased: &self.purchased,
            now_ms: self.now_ms,
            max_items_per_category: self.max_items_per_category,
        }
    }
}

/// One decision's scoring work, shared by every shard.
#[derive(Debug)]
pub struct ScoreJob {
    /// The model to rank with.
    pub model: Arc<ServedModel>,
    /// The candidates.
    pub retrieved: Retrieved,
    /// The guardrail rules.
    pub rules: Arc<Rules>,
    /// The guardrail inputs.
    pub policy: PolicyInputs,
    /// Items in the answer.
    pub limit: usize,
}

impl ScoreJob {
    /// Scores partition `part` of `parts`.
    pub fn score(&self, part: usize, parts: usize) -> PartitionResult {
        let guard = Guard::new(&self.rules, &self.model.catalog, self.policy.context());
        score_partition(
            &self.model,
            &self.retrieved.profile,
            &self.retrieved.candidates,
            part,
            parts,
            &guard,
            self.limit,
        )
    }
}

/// Messages of a [`RankingShard`].
pub enum ShardMsg {
    /// Score this shard's partition of the job.
    Score {
        /// The job.
        job: Arc<ScoreJob>,
        /// Number of partitions.
        parts: usize,
        /// The result.
        reply: RpcReplyPort<PartitionResult>,
    },
}

/// A ranking shard; its argument is its partition index.
#[derive(Debug, Clone, Copy)]
pub struct RankingShard;

impl Actor for RankingShard {
    type Msg = ShardMsg;
    type State = usize;
    type Arguments = usize;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        part: usize,
    ) -> Result<usize, ActorProcessingErr> {
        Ok(part)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        part: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        let ShardMsg::Score { job, parts, reply } = msg;
        if !reply.is_closed() {
            let _ = reply.send(job.score(*part, parts));
        }
        Ok(())
    }
}

/// Why ranking did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RankError {
    /// Not every shard answered before the deadline.
    #[error("ranking shards did not answer before the deadline")]
    Deadline,
    /// A shard is gone (restarting or shutting down).
    #[error("a ranking shard is unavailable")]
    Unavailable,
}

/// The typed handle to the ranking shards.
#[derive(Clone)]
pub struct Ranking {
    pool: Pool<RankingShard>,
}

impl std::fmt::Debug for Ranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranking")
            .field("shards", &self.pool.len())
            .finish()
    }
}

impl Ranking {
    /// Starts `shards` ranking shards under a supervisor.
    ///
    /// # Errors
    /// When the actors cannot be spawned.
    pub async fn start(shards: usize) -> Result<Self, ractor::SpawnErr> {
        let pool = Pool::start("ranking", RankingShard, (0..shards.max(1)).collect()).await?;
        Ok(Self { pool })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.pool.len()
    }

    /// Scatters the job to every shard and gathers their partitions' results.
    ///
    /// # Errors
    /// [`RankError::Deadline`] when not every shard answered by `deadline`; [`RankError::Unavailable`] when a
    /// shard could not take or finish the job.
    pub async fn score(
        &self,
        job: Arc<ScoreJob>,
        deadline: Instant,
    ) -> Result<Vec<PartitionResult>, RankError> {
        let members = self.pool.members();
        let parts = members.len();
        let mut pending = Vec::with_capacity(parts);
        for member in members.iter() {
            let (tx, rx) = ractor::concurrency::oneshot();
            member
                .cast(ShardMsg::Score {
                    job: job.clone(),
                    parts,
                    reply: tx.into(),
                })
                .map_err(|_| RankError::Unavailable)?;
            pending.push(rx);
        }
        let mut out = Vec::with_capacity(parts);
        for rx in pending {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(result)) => out.push(result),
                Ok(Err(_)) => return Err(RankError::Unavailable),
                Err(_) => return Err(RankError::Deadline),
            }
        }
        Ok(out)
    }

    /// Stops the shards.
    pub async fn stop(&self) {
        self.pool.stop().await;
    }
}
