//! The decider: one node's decide pipeline with its fallback ladder, event application, and erasure — everything
//! done for a shopper once a request is valid and routed here. It knows nothing of the cluster, the API or the
//! push hub: the router tells it how it may serve ([`Serve`]), and what a Track raises for associates is returned
//! to the caller to publish.
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
//! Every rung passes the guardrails (one [`Guard`] per decision); the last two are synchronous and take
//! microseconds, so a decision always answers. A safety margin is kept at the end of the budget for them.
//!
//! A kill switch on for the decision's surface and channel ([`Switchboard`]) skips FRESH and CACHED: the decision
//! answers from the switch's rung (RULES, else GENERIC), and its fallback names the switch
//! (`control: kill_switch (…)`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx};
use aisle_domain::event::{EventRecord, ItemRef, ShopperEvent};
use aisle_domain::request::Surface;
use aisle_domain::session::SessionView;
use aisle_experiment::{Assignment, Experiments, ExperimentsHandle};
use aisle_policy::{
    ConsentDefaults, Exclusion, ExclusionCounts, Guard, Policy, Rules, may_personalise,
};
use aisle_ranking::score::merge;
use aisle_ranking::{
    PolicyInputs, Query, RankError, RankedItem, Ranking, ScoreJob, ServedModel, rank_local,
    retrieve,
};
use aisle_session::{AssistSignal, Delivery, SessionContext, SessionError, Sessions};
use metrics::{Counter, Histogram};
use tokio::time::Instant;

use crate::cache::{CachedDecision, CachedItem, DecisionCache};
use crate::control::kill_switch::{Switchboard, Switched};
use crate::decision::{
    DecideInput, DecidedItem, Decision, Fallback, Reason, Serve, Stage, Tier, TrackOutcome,
};
use crate::faults::{self, Faults, Mode};
use crate::logs::audit::{AdminRecord, AuditLog, EventLog, decision_entry};
use crate::logs::journal::{Entry, Journal};
use crate::privacy::{Pseudonyms, Tombstones};
use crate::world::{World, Worlds};

/// How long a Track, a describe or an erasure may wait for a session actor.
const SESSION_CALL: Duration = Duration::from_secs(2);

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
    /// The part of a `budget` kept for the lower rungs and the response.
    pub fn margin(&self, budget: Duration) -> Duration {
        self.safety_margin.max(budget / 10)
    }
}

/// The parts a decider is made of.
pub struct DeciderParts {
    /// Catalog and models.
    pub worlds: Worlds,
    /// Guardrail rules.
    pub policy: Policy,
    /// Experiments.
    pub experiments: ExperimentsHandle,
    /// Session actors.
    pub sessions: Sessions,
    /// Ranking shards.
    pub ranking: Ranking,
    /// The CACHED rung.
    pub cache: Arc<DecisionCache>,
    /// Decision records.
    pub audit: Option<AuditLog>,
    /// Applied shopper events, for training.
    pub event_log: Option<EventLog>,
    /// What names shoppers outside this node's memory.
    pub pseudonyms: Arc<Pseudonyms>,
    /// Forgotten shoppers whose old session copies must not come back.
    pub tombstones: Arc<Tombstones>,
}

/// What erasing a shopper from this node's logs did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErasedFromLogs {
    /// Event-log lines removed.
    pub event_records: u64,
    /// Decision-trail records whose shopper reference was redacted.
    pub decision_records: u64,
}

/// What applying one shopper's events did.
#[derive(Debug)]
pub struct Applied {
    /// Counts.
    pub outcome: TrackOutcome,
    /// Signals the session raised for store associates.
    pub signals: Vec<AssistSignal>,
    /// When the first event was received (µs since the epoch).
    pub received_at_us: i64,
}

/// The decide pipeline and the shoppers' sessions of one node.
pub struct Decider {
    settings: DeciderSettings,
    worlds: Worlds,
    policy: Policy,
    experiments: ExperimentsHandle,
    sessions: Sessions,
    ranking: Ranking,
    cache: Arc<DecisionCache>,
    audit: Option<AuditLog>,
    event_log: Option<EventLog>,
    pseudonyms: Arc<Pseudonyms>,
    tombstones: Arc<Tombstones>,
    faults: Faults,
    /// The kill switches in force (set by [`crate::control`]).
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

impl Decider {
    /// Assembles a decider.
    pub fn new(settings: DeciderSettings, parts: DeciderParts) -> Self {
        Self {
            id_prefix: format!("{}-{:x}-", settings.node_id, aisle_domain::now_ms()),
            metrics: DecisionMetrics::new(),
            sequence: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            faults: Faults::default(),
            kill_switches: Arc::default(),
            settings,
            worlds: parts.worlds,
            policy: parts.policy,
            experiments: parts.experiments,
            sessions: parts.sessions,
            ranking: parts.ranking,
            cache: parts.cache,
            audit: parts.audit,
            event_log: parts.event_log,
            pseudonyms: parts.pseudonyms,
            tombstones: parts.tombstones,
        }
    }

    /// The shopper pseudonyms.
    pub fn pseudonyms(&self) -> &Arc<Pseudonyms> {
        &self.pseudonyms
    }

    /// The tombstones of forgotten shoppers.
    pub fn tombstones(&self) -> &Arc<Tombstones> {
        &self.tombstones
    }

    /// The catalog and models.
    pub fn worlds(&self) -> &Worlds {
        &self.worlds
    }

    /// The guardrail rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The experiments.
    pub fn experiments(&self) -> &ExperimentsHandle {
        &self.experiments
    }

    /// The session actors.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The CACHED rung.
    pub fn cache(&self) -> &Arc<DecisionCache> {
        &self.cache
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

    /// Stops the actors.
    pub async fn stop(&self) {
        self.sessions.stop().await;
        self.ranking.stop().await;
        self.worlds.stop();
        self.policy.stop();
        self.experiments.stop();
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
        let rules = self.policy.current();
        let experiments = self.experiments.current();
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
        input: DecideInput,
        deadline: Instant,
        serve: Serve,
    ) -> Decision {
        let started = Instant::now();
        let inflight = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let _inflight = InflightGuard(&self.inflight);
        let inputs = self.inputs(world, &input);
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

        let (view, fallback, personalise) = self
            .read_session(serve, overloaded, &inputs, &input, work_deadline)
            .await;
        let policy = PolicyInputs {
            attributes: input.attributes,
            channel: input.channel,
            purchased: view
                .as_ref()
                .map(|v| v.purchased.clone())
                .unwrap_or_default(),
            now_ms: aisle_domain::now_ms(),
            max_items_per_category: inputs.cap,
        };
        let guard = Guard::new(&inputs.rules, &inputs.world.catalog, policy.context());
        let attempt = Attempt {
            inputs: &inputs,
            input: &input,
            view: view.as_ref(),
            policy: &policy,
            guard: &guard,
            deadline: work_deadline,
            may_cache: personalise && !overloaded && owner,
            overloaded,
            switched: self.kill_switches.matching(input.surface, input.channel),
        };
        let (tier, items, fallback) = self.ladder(&attempt, fallback, &mut exclusions).await;
        if tier == Tier::Fresh && personalise {
            self.remember(&input, &inputs, &items);
            // A revocation tracked while this decision was ranking has invalidated the cache before the answer
            // was kept, or is visible now: then the answer, made from the revoked session, goes too.
            if matches!(
                self.sessions.consent_now(&input.shopper_id),
                Ok(Some(false))
            ) {
                self.cache.invalidate(&input.shopper_id);
            }
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
        self.observe(&input, &decision, &exclusions);
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
    ) -> (Option<SessionView>, Option<Fallback>, bool) {
        match serve {
            Serve::Fallback { why, .. } => (None, Some(why), false),
            Serve::Owner { .. } if overloaded => (
                None,
                Some(Fallback::new(Stage::Admission, Reason::Overload)),
                false,
            ),
            Serve::Owner { .. } if input.consent == Some(false) => {
                (Some(SessionView::default()), None, false)
            }
            Serve::Owner { .. } => match self.session_view(&input.shopper_id, deadline).await {
                Ok(view) => {
                    let recorded = view.as_ref().and_then(|v| v.consent);
                    if may_personalise(input.consent, recorded, inputs.default_consent) {
                        (Some(view.unwrap_or_default()), None, true)
                    } else {
                        (Some(SessionView::default()), None, false)
                    }
                }
                // The recorded statement is unknown. The CACHED rung may still answer on the request's statement
                // (else the default): a cached decision exists only if it was made after the shopper's last Track
                // (every Track invalidates them) from a session that was not revoked.
                Err(why) => (
                    None,
                    Some(why),
                    may_personalise(input.consent, None, inputs.default_consent),
                ),
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
        if let Some(switched) = &a.switched {
            // An operator's order: the model and the cache are not consulted; the reported fallback is the switch.
            let fallback = Some(switched.fallback.clone());
            if switched.tier == Tier::Rules
                && !a.overloaded
                && let Some(items) =
                    self.rules_rung(&a.inputs.model, a.view, a.input, a.guard, exclusions)
            {
                return (Tier::Rules, items, fallback);
            }
            let items = generic_rung(&a.inputs.model, a.input, a.guard, exclusions);
            return (Tier::Generic, items, fallback);
        }
        if let Some(view) = a.view
            && fallback.is_none()
        {
            match self
                .fresh(
                    a.inputs, view, a.input, a.policy, a.guard, a.deadline, exclusions,
                )
                .await
            {
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
            && let Some(items) =
                self.rules_rung(&a.inputs.model, a.view, a.input, a.guard, exclusions)
        {
            return (Tier::Rules, items, fallback);
        }
        let items = generic_rung(&a.inputs.model, a.input, a.guard, exclusions);
        (Tier::Generic, items, fallback)
    }

    /// Keeps a FRESH answer for the CACHED rung.
    fn remember(&self, input: &DecideInput, inputs: &Inputs, items: &[DecidedItem]) {
        self.cache.put(
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
        self.sessions
            .view_now(shopper_id)
            .map_err(|e| Fallback::with_detail(Stage::Session, Reason::Unavailable, e.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn fresh(
        &self,
        inputs: &Inputs,
        view: &SessionView,
        input: &DecideInput,
        policy: &PolicyInputs,
        guard: &Guard<'_>,
        deadline: Instant,
        exclusions: &mut ExclusionCounts,
    ) -> Result<Vec<DecidedItem>, Fallback> {
        if let Some(why) = self
            .injected(faults::Stage::Ranking, Stage::Ranking, deadline)
            .await
        {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(Fallback::new(Stage::Ranking, Reason::NoBudget));
        }
        let model = &inputs.model;
        let query = Query {
            view,
            context: &input.context,
            candidates: input.candidates.as_deref(),
        };
        let small = input
            .candidates
            .as_ref()
            .is_none_or(|c| c.len() <= self.settings.inline_scoring_max);
        if small {
            // Retrieval yields about 500 candidates: scoring them here costs less than handing them to other
            // threads and back.
            let local = rank_local(model, &query, guard, input.limit);
            exclusions.merge(&local.exclusions);
            return Ok(decided(local.items));
        }
        let retrieved = retrieve(model, &query);
        let last_item = retrieved.last_item;
        let job = Arc::new(ScoreJob {
            model: model.clone(),
            retrieved,
            rules: inputs.rules.clone(),
            policy: policy.clone(),
            limit: input.limit,
        });
        let parts = self
            .ranking
            .score(job, deadline)
            .await
            .map_err(|e| match e {
                RankError::Deadline => Fallback::new(Stage::Ranking, Reason::Deadline),
                other => {
                    Fallback::with_detail(Stage::Ranking, Reason::Unavailable, other.to_string())
                }
            })?;
        let ranked = merge(model, parts, guard, input.limit, last_item, exclusions);
        Ok(decided(ranked))
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
        let hit = self.cache.get(
            &input.shopper_id,
            input.surface,
            &world.catalog.meta.content_hash,
        )?;
        let allowed = |item: ItemIdx| input.candidates.as_ref().is_none_or(|c| c.contains(&item));
        let admitted = guard.select(
            hit.items
                .iter()
                .filter(|c| allowed(c.item))
                .map(|c| (c.item, c.score)),
            input.limit,
            exclusions,
        );
        if admitted.is_empty() {
            return None;
        }
        Some(with_reasons(admitted, |item| {
            hit.items
                .iter()
                .find(|c| c.item == item)
                .map(|c| c.reasons.clone())
                .unwrap_or_default()
        }))
    }

    fn rules_rung(
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
        let popularity = |i: ItemIdx| model.items[i as usize].popularity;
        if let Some(given) = &input.candidates {
            // The storefront's own candidates, best sellers first.
            let mut ordered = given.clone();
            ordered.sort_by(|&a, &b| popularity(b).total_cmp(&popularity(a)).then(a.cmp(&b)));
            let admitted = guard.select(
                ordered.into_iter().map(|i| (i, popularity(i))),
                input.limit,
                exclusions,
            );
            return (!admitted.is_empty())
                .then(|| with_reasons(admitted, |_| vec!["top_seller".into()]));
        }
        let categories = rung_categories(&model.catalog, view, &input.context);
        if categories.is_empty() {
            return None;
        }
        // Take the categories' top sellers in turn; when the category cap leaves places, fill them from the
        // merchandising list.
        let lists: Vec<&Vec<ItemIdx>> = categories
            .iter()
            .map(|&c| &model.category_top[c as usize])
            .collect();
        let depth = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        let interleaved =
            (0..depth).flat_map(|d| lists.iter().filter_map(move |l| l.get(d).copied()));
        let padded = interleaved.chain(model.generic.iter().copied());
        let admitted = guard.select(padded.map(|i| (i, popularity(i))), input.limit, exclusions);
        let catalog = &model.catalog;
        (!admitted.is_empty()).then(|| {
            with_reasons(admitted, |item| {
                let category = catalog.item(item).category;
                if categories.contains(&category) {
                    vec![format!(
                        "top_in_category:{}",
                        catalog.categories[category as usize].name
                    )]
                } else {
                    vec!["merchandising".into()]
                }
            })
        })
    }

    fn observe(&self, input: &DecideInput, d: &Decision, exclusions: &ExclusionCounts) {
        self.metrics.record(input.surface, d, exclusions);
        if let Some(audit) = &self.audit {
            let shopper_ref = self.pseudonyms.of(&input.shopper_id);
            audit.record(decision_entry(
                &self.settings.node_id,
                shopper_ref,
                input,
                d,
            ));
        }
    }

    /// Applies one shopper's validated events, in order; invalidates their cached decisions and logs those the
    /// shopper consented to (`records` are the events' event-log records, in the same order).
    /// Returns the counts and the signals raised for store associates (the caller publishes them).
    ///
    /// # Errors
    /// The session actor's error: unavailable, timed out, reset, or [`SessionError::NotOwner`] when ownership
    /// moved away from this node (nothing was applied then).
    pub async fn apply_events(
        &self,
        shopper_id: &str,
        events: Vec<ShopperEvent>,
        records: Vec<EventRecord>,
        catalog: Arc<Catalog>,
        delivery: Option<Delivery>,
    ) -> Result<Applied, SessionError> {
        let mut outcome = TrackOutcome {
            accepted: events.len(),
            unknown_items: events
                .iter()
                .filter(|e| matches!(e.item, Some(ItemRef::Unknown)))
                .count(),
            ..TrackOutcome::default()
        };
        let received_at_us = events.first().map_or(0, |e| e.received_at_us);
        let kinds: Vec<&'static str> = events.iter().map(|e| e.kind.as_str()).collect();
        let applied = self
            .sessions
            .apply(shopper_id, events, catalog, delivery, SESSION_CALL)
            .await?;
        if applied.duplicate {
            // An outbox entry applied before (its answer was lost): nothing changed, nothing is logged again.
            metrics::counter!("aisle_outbox_duplicates_total").increment(kinds.len() as u64);
            outcome = TrackOutcome {
                duplicates: kinds.len(),
                ..TrackOutcome::default()
            };
            return Ok(Applied {
                outcome,
                signals: Vec::new(),
                received_at_us,
            });
        }
        self.cache.invalidate(shopper_id);
        for kind in kinds {
            metrics::counter!("aisle_track_events_total", "type" => kind).increment(1);
        }
        // Only events applied with the shopper's consent (recorded, else their region's default) are logged; the
        // others are only counted, in aggregate.
        let withheld = applied.loggable.iter().filter(|&&l| !l).count();
        if withheld > 0 && self.event_log.is_some() {
            metrics::counter!("aisle_track_events_unlogged_total", "reason" => "no_consent")
                .increment(withheld as u64);
        }
        let records: Vec<EventRecord> = records
            .into_iter()
            .zip(&applied.loggable)
            .filter_map(|(r, &loggable)| loggable.then_some(r))
            .collect();
        if let Some(log) = self.event_log.as_ref().filter(|_| !records.is_empty()) {
            let shopper_ref = self.pseudonyms.of(shopper_id);
            for mut r in records {
                r.shopper_id.clone_from(&shopper_ref);
                log.record(Entry::new("event", Some(shopper_ref.clone()), r));
            }
        }
        Ok(Applied {
            outcome,
            signals: applied.signals,
            received_at_us,
        })
    }

    /// The session this node holds for a shopper it owns (`None`: no session).
    ///
    /// # Errors
    /// The session actor's error; [`SessionError::NotOwner`] when this node does not own the shopper.
    pub async fn session(&self, shopper_id: &str) -> Result<Option<SessionContext>, SessionError> {
        self.sessions.describe(shopper_id, SESSION_CALL).await
    }

    /// Erases the session and cached decisions this node holds for a shopper, whether it owns them or keeps an
    /// old owner's copy. Returns whether a session was held and how many cached decisions were.
    ///
    /// # Errors
    /// The session actor's error (nothing is known to be erased then).
    pub async fn forget_session(&self, shopper_id: &str) -> Result<(bool, usize), SessionError> {
        // The shard's forget is not gated by ownership: it also erases a copy kept from an earlier view.
        let erased = self.sessions.forget(shopper_id, SESSION_CALL).await?;
        let cached = self.cache.invalidate(shopper_id);
        Ok((erased, cached))
    }

    /// Removes the shopper's lines (under any of their pseudonyms `refs`) from every segment of the event log and
    /// redacts their reference in every segment of the decision trail; then records the erasure, by `caller`, in
    /// the trail, durably.
    ///
    /// # Errors
    /// When a log could not be rewritten or the record made durable (erasure is idempotent: retry).
    pub async fn erase_logs(
        &self,
        refs: &[String],
        caller: &str,
    ) -> std::io::Result<ErasedFromLogs> {
        let mut out = ErasedFromLogs::default();
        if let Some(log) = &self.event_log {
            out.event_records = log.erase(refs.to_vec()).await?.records();
        }
        if let Some(trail) = &self.audit {
            out.decision_records = trail.erase(refs.to_vec()).await?.records();
        }
        self.audit_action(
            "forget",
            caller,
            serde_json::json!({
                // The erasure record names the shopper by pseudonym in its body, not as its subject: asking again
                // must not redact the record of the first erasure.
                "shopper_ref": refs[0],
                "event_log_records_removed": out.event_records,
                "decision_records_redacted": out.decision_records,
            }),
        )
        .await?;
        Ok(out)
    }

    /// Records an admin action in the decision trail, durably (nothing when there is no trail).
    ///
    /// # Errors
    /// When the record could not be made durable within the trail's sync timeout.
    pub async fn audit_action(
        &self,
        action: &'static str,
        caller: &str,
        details: serde_json::Value,
    ) -> std::io::Result<()> {
        let Some(trail) = &self.audit else {
            return Ok(());
        };
        trail
            .record_synced(Entry::new(
                "admin",
                None,
                AdminRecord {
                    action,
                    caller: caller.to_string(),
                    node: self.settings.node_id.clone(),
                    details,
                },
            ))
            .await
    }

    /// The decision trail, if written.
    pub fn trail(&self) -> Option<&Journal> {
        self.audit.as_ref()
    }

    /// The event log, if written.
    pub fn event_log(&self) -> Option<&Journal> {
        self.event_log.as_ref()
    }

    /// The logs (decision trail, event log) this node writes.
    pub fn logs(&self) -> Vec<Journal> {
        self.audit
            .iter()
            .chain(self.event_log.iter())
            .cloned()
            .collect()
    }
}

/// The items of a ranking, as decided.
fn decided(ranked: Vec<RankedItem>) -> Vec<DecidedItem> {
    ranked
        .into_iter()
        .map(|r| DecidedItem {
            item: r.admitted.item,
            score: r.admitted.score,
            offer: r.admitted.offer,
            reasons: r.reasons,
        })
        .collect()
}

/// The categories the RULES rung draws from: the session's top three, else those of the items on screen.
fn rung_categories(
    catalog: &Catalog,
    view: Option<&SessionView>,
    context: &[ItemIdx],
) -> Vec<CategoryIdx> {
    let mut categories: Vec<CategoryIdx> = view
        .map(|v| v.category_affinity.iter().take(3).map(|c| c.0).collect())
        .unwrap_or_default();
    if categories.is_empty() {
        for &c in context {
            let category = catalog.item(c).category;
            if !categories.contains(&category) && categories.len() < 3 {
                categories.push(category);
            }
        }
    }
    categories
}

fn with_reasons(
    admitted: Vec<aisle_policy::Admitted>,
    reasons: impl Fn(ItemIdx) -> Vec<String>,
) -> Vec<DecidedItem> {
    admitted
        .into_iter()
        .map(|a| DecidedItem {
            reasons: reasons(a.item),
            item: a.item,
            score: a.score,
            offer: a.offer,
        })
        .collect()
}

/// The last rung: never fails.
fn generic_rung(
    model: &ServedModel,
    input: &DecideInput,
    guard: &Guard<'_>,
    exclusions: &mut ExclusionCounts,
) -> Vec<DecidedItem> {
    let n = model.generic.len() as f32;
    let admitted = match &input.candidates {
        // The storefront's own candidates, in its order.
        Some(given) => guard.select(
            given
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, 1.0 - k as f32 / given.len().max(1) as f32)),
            input.limit,
            exclusions,
        ),
        None => guard.select(
            model
                .generic
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, 1.0 - k as f32 / n)),
            input.limit,
            exclusions,
        ),
    };
    with_reasons(admitted, |_| vec!["merchandising".into()])
}

/// The handles of the per-decision metrics, registered once: a decision then only increments, without building
/// and hashing label sets. Every label value comes from a closed set or from a loaded bundle's versions and keys,
/// never from a request or an error's text, so the number of series stays bounded.
struct DecisionMetrics {
    /// Latency and count per surface × tier (`Surface::ALL` order, then tier).
    outcomes: Vec<(Histogram, Counter)>,
    /// Fallbacks per stage × reason (`Stage::ALL` order, then `Reason::ALL`).
    fallbacks: Vec<Counter>,
    /// Exclusions per code (`Exclusion::ALL` order).
    exclusions: Vec<Counter>,
    holdout: Counter,
    /// Decisions a kill switch sent to RULES, and to GENERIC.
    kill_switched: [Counter; 2],
    /// FRESH decisions per model version (a handful of versions over a node's life).
    models: RwLock<HashMap<String, Counter>>,
    /// Exposures per experiment and variant.
    exposures: RwLock<HashMap<Exposure, Counter>>,
}

/// An experiment's key and a variant's name.
type Exposure = (Arc<str>, Arc<str>);

const TIERS: [Tier; 4] = [Tier::Fresh, Tier::Cached, Tier::Rules, Tier::Generic];

fn index_of<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter()
        .position(|v| v == value)
        .expect("closed sets hold every value")
}

impl DecisionMetrics {
    /// Registers the handles (after the recorder is installed).
    fn new() -> Self {
        let outcomes = Surface::ALL
            .iter()
            .flat_map(|s| TIERS.iter().map(move |t| (s.as_str(), t.as_str())))
            .map(|(surface, tier)| {
                (
                    metrics::histogram!("aisle_decide_latency_seconds", "surface" => surface, "tier" => tier),
                    metrics::counter!("aisle_decisions_total", "surface" => surface, "tier" => tier),
                )
            })
            .collect();
        let fallbacks = Stage::ALL
            .iter()
            .flat_map(|s| Reason::ALL.iter().map(move |r| (s.as_str(), r.as_str())))
            .map(|(stage, reason)| {
                metrics::counter!("aisle_fallbacks_total", "stage" => stage, "reason" => reason)
            })
            .collect();
        let exclusions = Exclusion::ALL
            .iter()
            .map(|e| metrics::counter!("aisle_policy_exclusions_total", "reason" => e.code()))
            .collect();
        Self {
            outcomes,
            fallbacks,
            exclusions,
            holdout: metrics::counter!("aisle_holdout_decisions_total"),
            kill_switched: [Tier::Rules, Tier::Generic].map(
                |t| metrics::counter!("aisle_kill_switch_decisions_total", "tier" => t.as_str()),
            ),
            models: RwLock::default(),
            exposures: RwLock::default(),
        }
    }

    fn record(&self, surface: Surface, d: &Decision, exclusions: &ExclusionCounts) {
        let outcome = index_of(Surface::ALL, &surface) * TIERS.len() + index_of(&TIERS, &d.tier);
        let (latency, count) = &self.outcomes[outcome];
        latency.record(d.latency.as_secs_f64());
        count.increment(1);
        match (d.tier, &d.fallback) {
            (Tier::Fresh, _) => self.model(&d.model_version).increment(1),
            (_, Some(f)) => {
                let at = index_of(Stage::ALL, &f.stage) * Reason::ALL.len()
                    + index_of(Reason::ALL, &f.reason);
                self.fallbacks[at].increment(1);
                if f.reason == Reason::KillSwitch {
                    self.kill_switched[usize::from(d.tier == Tier::Generic)].increment(1);
                }
            }
            (_, None) => {}
        }
        for (e, n) in exclusions.iter() {
            self.exclusions[index_of(&Exclusion::ALL, &e)].increment(u64::from(n));
        }
        for (key, variant) in &d.assignment.variants {
            self.exposure(key, variant).increment(1);
        }
        if d.assignment.in_holdout {
            self.holdout.increment(1);
        }
    }

    fn model(&self, version: &str) -> Counter {
        if let Some(c) = self.models.read().expect("metrics lock").get(version) {
            return c.clone();
        }
        let c = metrics::counter!("aisle_model_decisions_total", "model" => version.to_string());
        self.models
            .write()
            .expect("metrics lock")
            .insert(version.to_string(), c.clone());
        c
    }

    fn exposure(&self, experiment: &Arc<str>, variant: &Arc<str>) -> Counter {
        let key = (experiment.clone(), variant.clone());
        if let Some(c) = self.exposures.read().expect("metrics lock").get(&key) {
            return c.clone();
        }
        let c = metrics::counter!(
            "aisle_experiment_exposures_total",
            "experiment" => experiment.to_string(),
            "variant" => variant.to_string()
        );
        self.exposures
            .write()
            .expect("metrics lock")
            .insert(key, c.clone());
        c
    }
}
