//! The decider: one node's decide pipeline with its fallback ladder — what is done for a decision once its request
//! is valid and routed here. It reads the bundles and the shopper state and writes nothing but the CACHED rung; it
//! knows nothing of the cluster, the API, the logs or the push hub: the caller says how it may serve ([`Serve`]) and
//! records the [`Decision`] it returns.
//!
//! One decision, within its budget:
//! 1. read the snapshots (catalog + models, rules, experiments) and assign experiments (pure, no I/O);
//! 2. read the shopper's session from its session shard's table (no message; the shard actor is its only writer) —
//!    unless the request refuses consent. The most restrictive statement wins: a refusal in the request or
//!    recorded by the shopper's events, or neither a grant (request, else recorded) nor an open default for the
//!    request's region, and the shopper is ranked as an anonymous one (empty view, no CACHED rung, nothing kept);
//! 3. FRESH: retrieve candidates and score them under the guardrails — in the request's own task (no thread
//!    hand-off) unless the storefront gave a long candidate list, which is scattered to the ranking shards;
//! 4. else CACHED: the shopper's last FRESH decision for the surface, re-checked by the guardrails;
//! 5. else RULES: top sellers of the shopper's (or the on-screen items') categories;
//! 6. else GENERIC: the merchandising list.
//!
//! The rungs are pure functions ([`ladder`]); every rung passes the guardrails (one [`Guard`] per decision); the
//! last two are synchronous and take microseconds, so a decision always answers. A safety margin is kept at the
//! end of the budget for them.
//!
//! A kill switch on for the decision's surface and channel ([`Switchboard`]) skips FRESH and CACHED: the decision
//! answers from the switch's rung (RULES, else GENERIC), and its fallback names the switch
//! (`control: kill_switch (…)`).

pub mod ladder;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aisle_domain::session::SessionView;
use aisle_experiment::{Assignment, Experiments};
use aisle_policy::{ConsentDefaults, Exclusion, ExclusionCounts, Guard, Rules, may_personalise};
use aisle_ranking::score::merge;
use aisle_ranking::{PolicyInputs, RankError, Ranking, ScoreJob, ServedModel, retrieve};
use tokio::time::Instant;

use self::metrics::DecisionMetrics;
use crate::bundles::{Bundles, World};
use crate::config::{Config, INLINE_SCORING_MAX};
use crate::engine::cache::{CachedDecision, CachedItem};
use crate::engine::decision::{
    DecideInput, DecidedItem, Decision, Fallback, Reason, Serve, Stage, Tier,
};
use crate::engine::faults::{self, Faults, Mode};
use crate::engine::kill_switch::{Switchboard, Switched};
use crate::engine::shoppers::Shoppers;

/// What the decider needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct DeciderSettings {
    /// This node's id (prefix of decision ids).
    pub node_id: String,
    /// Consent assumed when neither the request nor the shopper's events state it, per region.
    pub consent: ConsentDefaults,
    /// Decisions in flight above which new ones answer GENERIC at once (0: no limit).
    pub max_inflight_decisions: usize,
    /// Fixed part of the safety margin kept at the end of a budget.
    pub safety_margin: Duration,
    /// Candidates up to which a decision is scored in its own task rather than scattered to the ranking shards.
    pub inline_scoring_max: usize,
}

impl DeciderSettings {
    /// The settings a configuration gives.
    pub fn from_config(config: &Config) -> Self {
        Self {
            node_id: config.node_id.clone(),
            consent: config.consent(),
            max_inflight_decisions: config.max_inflight_decisions,
            safety_margin: Duration::from_millis(config.safety_margin_ms),
            inline_scoring_max: INLINE_SCORING_MAX,
        }
    }

    /// The part of a `budget` kept for the lower rungs and the response.
    pub fn margin(&self, budget: Duration) -> Duration {
        self.safety_margin.max(budget / 10)
    }
}

/// The decide pipeline of one node.
pub struct Decider {
    settings: DeciderSettings,
    bundles: Arc<Bundles>,
    shoppers: Shoppers,
    ranking: Ranking,
    faults: Faults,
    /// The kill switches in force (set by the control records).
    kill_switches: Arc<Switchboard>,
    metrics: DecisionMetrics,
    /// `<node>-<boot time>-`: decision ids are this and a sequence number, unique across restarts of a node id.
    id_prefix: String,
    sequence: AtomicU64,
    inflight: AtomicUsize,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("node_id", &self.settings.node_id)
            .finish_non_exhaustive()
    }
}

struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the rungs of one decision work with.
struct Attempt<'a> {
    inputs: &'a Inputs,
    input: &'a DecideInput,
    /// The session (`None`: not read).
    view: Option<&'a SessionView>,
    policy: &'a PolicyInputs,
    guard: &'a Guard<'a>,
    /// When ranking must be done (the safety margin is left for the lower rungs).
    deadline: Instant,
    /// Whether the CACHED rung may answer: consent, an owner, not overloaded.
    may_cache: bool,
    overloaded: bool,
    /// The kill switch that governs this decision, if one is on for its surface and channel.
    switched: Option<Switched>,
}

/// What one decision reads, taken once at its start.
struct Inputs {
    world: Arc<World>,
    model: Arc<ServedModel>,
    rules: Arc<Rules>,
    experiments: Arc<Experiments>,
    assignment: Assignment,
    /// Consent assumed for the request's region when neither the request nor the shopper's events state it.
    default_consent: bool,
    cap: usize,
}

/// What a decision reads of the shopper's session: the view (`None`: not read, with why), and whether it may use
/// behavioural data at all.
struct Read {
    view: Option<SessionView>,
    fallback: Option<Fallback>,
    personalise: bool,
}

impl Decider {
    /// A decider over the node's bundles and shopper state, scoring long candidate lists on `ranking`.
    pub fn new(
        settings: DeciderSettings,
        bundles: Arc<Bundles>,
        shoppers: Shoppers,
        ranking: Ranking,
    ) -> Self {
        Self {
            id_prefix: format!("{}-{:x}-", settings.node_id, aisle_domain::now_ms()),
            metrics: DecisionMetrics::new(),
            sequence: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            faults: Faults::default(),
            kill_switches: Arc::default(),
            settings,
            bundles,
            shoppers,
            ranking,
        }
    }

    /// Fault injection switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The kill switches decisions follow.
    pub fn kill_switches(&self) -> &Arc<Switchboard> {
        &self.kill_switches
    }

    /// The settings.
    pub fn settings(&self) -> &DeciderSettings {
        &self.settings
    }

    /// Decisions in flight on this node now.
    pub fn inflight_decisions(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Stops the ranking shards.
    pub async fn stop(&self) {
        self.ranking.stop().await;
    }

    fn next_decision_id(&self) -> String {
        use std::fmt::Write;
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.id_prefix.len() + 16);
        id.push_str(&self.id_prefix);
        let _ = write!(id, "{n:x}");
        id
    }

    fn inputs(&self, world: Arc<World>, input: &DecideInput) -> Inputs {
        let rules = self.bundles.rules();
        let experiments = self.bundles.experiments();
        let assignment = experiments.assign(&input.shopper_id, input.surface);
        // The category cap diversifies what the engine retrieves; candidates the storefront chose (a search
        // result, a product page's alternatives) are ranked as given, under every other guardrail.
        let cap = if input.candidates.is_some() {
            0
        } else {
            assignment
                .params
                .max_items_per_category
                .unwrap_or(rules.max_items_per_category)
        };
        Inputs {
            model: world.model_for(assignment.params.model.as_deref()).clone(),
            world,
            rules,
            experiments,
            assignment,
            default_consent: self.settings.consent.for_region(&input.region),
            cap,
        }
    }

    /// Makes a decision that answers by `deadline` (a decision never fails: the ladder ends in GENERIC). `world`
    /// must be the snapshot the input's item indices were resolved against.
    pub async fn decide(
        &self,
        world: Arc<World>,
        input: &DecideInput,
        deadline: Instant,
        serve: Serve,
    ) -> Decision {
        let started = Instant::now();
        let inflight = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let _inflight = InflightGuard(&self.inflight);
        let inputs = self.inputs(world, input);
        let margin = self
            .settings
            .margin(deadline.saturating_duration_since(started));
        let work_deadline = deadline.checked_sub(margin).unwrap_or(started).max(started);
        let mut exclusions = ExclusionCounts::default();
        for _ in 0..input.unknown_candidates {
            exclusions.add(Exclusion::UnknownItem);
        }
        let overloaded = self.settings.max_inflight_decisions > 0
            && inflight > self.settings.max_inflight_decisions;
        let epoch = serve.epoch();
        let owner = matches!(serve, Serve::Owner { .. });

        let read = self
            .read_session(serve, overloaded, &inputs, input, work_deadline)
            .await;
        let policy = PolicyInputs {
            attributes: input.attributes,
            channel: input.channel,
            purchased: read
                .view
                .as_ref()
                .map(|v| v.purchased.clone())
                .unwrap_or_default(),
            now_ms: aisle_domain::now_ms(),
            max_items_per_category: inputs.cap,
        };
        let guard = Guard::new(&inputs.rules, &inputs.world.catalog, policy.context());
        let attempt = Attempt {
            inputs: &inputs,
            input,
            view: read.view.as_ref(),
            policy: &policy,
            guard: &guard,
            deadline: work_deadline,
            may_cache: read.personalise && !overloaded && owner,
            overloaded,
            switched: self.kill_switches.matching(input.surface, input.channel),
        };
        let (tier, items, fallback) = self.ladder(&attempt, read.fallback, &mut exclusions).await;
        if tier == Tier::Fresh && read.personalise {
            self.remember(input, &inputs, &items);
        }
        let decision = Decision {
            decision_id: self.next_decision_id(),
            items,
            tier,
            fallback,
            catalog: inputs.world.catalog.clone(),
            model_version: inputs.model.version().to_string(),
            rules_version: inputs.rules.meta.version.clone(),
            experiments_version: inputs.experiments.meta.version.clone(),
            assignment: inputs.assignment,
            latency: started.elapsed(),
            epoch,
        };
        self.metrics.record(input.surface, &decision, &exclusions);
        decision
    }

    /// The shopper's session as this decision may use it, and whether the decision may use behavioural data at
    /// all (the CACHED rung, keeping a FRESH answer for it). The view is `None` (with why) when it is not read —
    /// this node is not the owner, it is overloaded, or the session could not be read in time; it is an empty
    /// view without consent (the shopper is ranked as an anonymous one, exactly as for a request saying `false`).
    ///
    /// A request that refuses consent is answered without reading the session. Otherwise the session is read,
    /// and [`may_personalise`] weighs the request's statement, the recorded one and the region's default.
    async fn read_session(
        &self,
        serve: Serve,
        overloaded: bool,
        inputs: &Inputs,
        input: &DecideInput,
        deadline: Instant,
    ) -> Read {
        let anonymous = || Read {
            view: Some(SessionView::default()),
            fallback: None,
            personalise: false,
        };
        match serve {
            Serve::Fallback { why, .. } => Read {
                view: None,
                fallback: Some(why),
                personalise: false,
            },
            Serve::Owner { .. } if overloaded => Read {
                view: None,
                fallback: Some(Fallback::new(Stage::Admission, Reason::Overload)),
                personalise: false,
            },
            Serve::Owner { .. } if input.consent == Some(false) => anonymous(),
            Serve::Owner { .. } => match self.session_view(&input.shopper_id, deadline).await {
                Ok(view) => {
                    let recorded = view.as_ref().and_then(|v| v.consent);
                    if may_personalise(input.consent, recorded, inputs.default_consent) {
                        Read {
                            view: Some(view.unwrap_or_default()),
                            fallback: None,
                            personalise: true,
                        }
                    } else {
                        anonymous()
                    }
                }
                // The recorded statement is unknown. The CACHED rung may still answer on the request's statement
                // (else the default): a cached decision exists only if it was made after the shopper's last Track
                // (every Track invalidates them) from a session that was not revoked.
                Err(why) => Read {
                    view: None,
                    fallback: Some(why),
                    personalise: may_personalise(input.consent, None, inputs.default_consent),
                },
            },
        }
    }

    /// Walks the ladder from the highest rung this decision may try down to GENERIC, which always answers.
    /// Returns the rung, its items and why FRESH did not answer (when it did not).
    async fn ladder(
        &self,
        a: &Attempt<'_>,
        mut fallback: Option<Fallback>,
        exclusions: &mut ExclusionCounts,
    ) -> (Tier, Vec<DecidedItem>, Option<Fallback>) {
        let model = &a.inputs.model;
        if let Some(switched) = &a.switched {
            // An operator's order: the model and the cache are not consulted; the reported fallback is the switch.
            let fallback = Some(switched.fallback.clone());
            if switched.tier == Tier::Rules
                && !a.overloaded
                && let Some(items) = self.rules(model, a.view, a.input, a.guard, exclusions)
            {
                return (Tier::Rules, items, fallback);
            }
            let items = ladder::generic(model, a.input, a.guard, exclusions);
            return (Tier::Generic, items, fallback);
        }
        if let Some(view) = a.view
            && fallback.is_none()
        {
            match self.fresh(a, view, exclusions).await {
                Ok(items) => return (Tier::Fresh, items, None),
                Err(why) => fallback = Some(why),
            }
        }
        if a.may_cache
            && let Some(items) = self.cached(a.input, &a.inputs.world, a.guard, exclusions)
        {
            return (Tier::Cached, items, fallback);
        }
        if !a.overloaded
            && let Some(items) = self.rules(model, a.view, a.input, a.guard, exclusions)
        {
            return (Tier::Rules, items, fallback);
        }
        let items = ladder::generic(model, a.input, a.guard, exclusions);
        (Tier::Generic, items, fallback)
    }

    /// Keeps a FRESH answer for the CACHED rung. A revocation tracked while this decision was ranking has
    /// invalidated the cache before the answer was kept, or is visible now: then the answer, made from the revoked
    /// session, goes too.
    fn remember(&self, input: &DecideInput, inputs: &Inputs, items: &[DecidedItem]) {
        let cache = &self.shoppers.cache;
        cache.put(
            &input.shopper_id,
            input.surface,
            CachedDecision {
                items: items
                    .iter()
                    .map(|i| CachedItem {
                        item: i.item,
                        score: i.score,
                        reasons: i.reasons.clone(),
                    })
                    .collect(),
                model_version: inputs.model.version().to_string(),
                catalog_hash: inputs.world.catalog.meta.content_hash.clone(),
                made_at: Instant::now(),
            },
        );
        if matches!(
            self.shoppers.sessions.consent_now(&input.shopper_id),
            Ok(Some(false))
        ) {
            cache.invalidate(&input.shopper_id);
        }
    }

    /// The injected fault of a stage, as the fallback it causes (after stalling until `deadline` for a stall).
    async fn injected(
        &self,
        fault: faults::Stage,
        stage: Stage,
        deadline: Instant,
    ) -> Option<Fallback> {
        match self.faults.get(fault) {
            Mode::None => None,
            Mode::Fail => Some(Fallback::new(stage, Reason::InjectedFailure)),
            Mode::Stall => {
                tokio::time::sleep_until(deadline).await;
                Some(Fallback::new(stage, Reason::Deadline))
            }
        }
    }

    async fn session_view(
        &self,
        shopper_id: &str,
        deadline: Instant,
    ) -> Result<Option<SessionView>, Fallback> {
        if let Some(why) = self
            .injected(faults::Stage::Session, Stage::Session, deadline)
            .await
        {
            return Err(why);
        }
        if deadline <= Instant::now() {
            return Err(Fallback::new(Stage::Session, Reason::NoBudget));
        }
        // The session is read from its shard's table, without a message: the shard is its only writer, and every
        // event a Track acknowledged is visible here.
        self.shoppers
            .sessions
            .view_now(shopper_id)
            .map_err(|e| Fallback::with_detail(Stage::Session, Reason::Unavailable, e.to_string()))
    }

    /// The FRESH rung: in this task, or — for a long list of the storefront's own candidates — scattered over the
    /// ranking shards and merged.
    async fn fresh(
        &self,
        a: &Attempt<'_>,
        view: &SessionView,
        exclusions: &mut ExclusionCounts,
    ) -> Result<Vec<DecidedItem>, Fallback> {
        if let Some(why) = self
            .injected(faults::Stage::Ranking, Stage::Ranking, a.deadline)
            .await
        {
            return Err(why);
        }
        if Instant::now() >= a.deadline {
            return Err(Fallback::new(Stage::Ranking, Reason::NoBudget));
        }
        let model = &a.inputs.model;
        let small = a
            .input
            .candidates
            .as_ref()
            .is_none_or(|c| c.len() <= self.settings.inline_scoring_max);
        if small {
            return Ok(ladder::fresh(model, view, a.input, a.guard, exclusions));
        }
        let retrieved = retrieve(model, &ladder::query(view, a.input));
        let last_item = retrieved.last_item;
        let job = Arc::new(ScoreJob {
            model: model.clone(),
            retrieved,
            rules: a.inputs.rules.clone(),
            policy: a.policy.clone(),
            limit: a.input.limit,
        });
        let parts = self
            .ranking
            .score(job, a.deadline)
            .await
            .map_err(|e| match e {
                RankError::Deadline => Fallback::new(Stage::Ranking, Reason::Deadline),
                other => {
                    Fallback::with_detail(Stage::Ranking, Reason::Unavailable, other.to_string())
                }
            })?;
        let ranked = merge(model, parts, a.guard, a.input.limit, last_item, exclusions);
        Ok(ladder::decided(ranked))
    }

    fn cached(
        &self,
        input: &DecideInput,
        world: &World,
        guard: &Guard<'_>,
        exclusions: &mut ExclusionCounts,
    ) -> Option<Vec<DecidedItem>> {
        if self.faults.get(faults::Stage::Cache) != Mode::None {
            return None;
        }
        let hit = self.shoppers.cache.get(
            &input.shopper_id,
            input.surface,
            &world.catalog.meta.content_hash,
        )?;
        ladder::cached(&hit, input, guard, exclusions)
    }

    fn rules(
        &self,
        model: &ServedModel,
        view: Option<&SessionView>,
        input: &DecideInput,
        guard: &Guard<'_>,
        exclusions: &mut ExclusionCounts,
    ) -> Option<Vec<DecidedItem>> {
        if self.faults.get(faults::Stage::Rules) != Mode::None {
            return None;
        }
        ladder::rules(model, view, input, guard, exclusions)
    }
}

#[cfg(test)]
mod tests;
