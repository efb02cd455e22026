//! The engine: one node's decide pipeline with its fallback ladder, event application, and erasure — everything
//! the API services do once a request is valid.
//!
//! One decision, within its budget:
//! 1. read the snapshots (catalog + models, rules, experiments) and assign experiments (pure, no I/O);
//! 2. read the shopper's session from its session actor — only with consent; without it the shopper is ranked as
//!    an anonymous one;
//! 3. FRESH: retrieve candidates, scatter them to the ranking shards, gather under the guardrails;
//! 4. else CACHED: the shopper's last FRESH decision for the surface, re-checked by the guardrails;
//! 5. else RULES: top sellers of the shopper's (or the on-screen items') categories;
//! 6. else GENERIC: the merchandising list.
//!
//! Every rung passes the guardrails; the last two are synchronous and take microseconds, so a decision always
//! answers. A safety margin is kept at the end of the budget for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx};
use aisle_domain::event::{EventRecord, ShopperEvent};
use aisle_domain::request::{Channel, ShopperAttributes, Surface};
use aisle_domain::session::SessionView;
use aisle_experiment::{Assignment, ExperimentsHandle};
use aisle_policy::{
    Exclusion, ExclusionCounts, Guard, Policy, Rules, ServedOffer, may_personalise,
};
use aisle_ranking::score::merge;
use aisle_ranking::{PolicyInputs, Query, Ranking, ScoreJob, ServedModel, retrieve};
use aisle_session::{AssistSignal, SessionError, Sessions};
use tokio::time::Instant;

use crate::assist::assist_event;
use crate::audit::{AuditLog, DecisionRecord, EventLog};
use crate::cache::{CachedDecision, DecisionCache};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::ApiError;
use crate::faults::{Faults, Mode, Stage};
use crate::push::PushHub;
use crate::world::{World, Worlds};

/// Fallback stages named by the cluster layer, as the static strings metric labels want.
fn cluster_stage(stage: &str) -> &'static str {
    match stage {
        "handoff" => "handoff",
        "owner" => "owner",
        _ => "membership",
    }
}

/// Which rung answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Ranked now.
    Fresh,
    /// The shopper's last decision.
    Cached,
    /// Category top sellers.
    Rules,
    /// Merchandising list.
    Generic,
}

impl Tier {
    /// The lowercase name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fresh => "fresh",
            Tier::Cached => "cached",
            Tier::Rules => "rules",
            Tier::Generic => "generic",
        }
    }
}

/// A validated Decide request.
#[derive(Debug, Clone)]
pub struct DecideInput {
    /// The shopper.
    pub shopper_id: String,
    /// Where.
    pub surface: Surface,
    /// Who asks.
    pub channel: Channel,
    /// Items wanted.
    pub limit: usize,
    /// Items to rank (known ones), when the storefront gives them.
    pub candidates: Option<Vec<ItemIdx>>,
    /// Given candidates the catalog does not know (excluded: fail closed).
    pub unknown_candidates: usize,
    /// Items on screen (known ones).
    pub context: Vec<ItemIdx>,
    /// Consent stated by the request.
    pub consent: Option<bool>,
    /// Verified age, loyalty.
    pub attributes: ShopperAttributes,
    /// Store, region, device, request id: recorded for audit.
    pub store_id: String,
    /// Region.
    pub region: String,
    /// Device.
    pub device: String,
    /// Caller's request id.
    pub request_id: String,
}

/// An item of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedItem {
    /// The item.
    pub item: ItemIdx,
    /// Its score from the answering rung.
    pub score: f32,
    /// Its cleared offer.
    pub offer: Option<ServedOffer>,
    /// Why it is here.
    pub reasons: Vec<String>,
}

/// A decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Unique id.
    pub decision_id: String,
    /// Items, best first.
    pub items: Vec<DecidedItem>,
    /// The answering rung.
    pub tier: Tier,
    /// Why not FRESH (empty when FRESH).
    pub fallback_reason: String,
    /// The catalog the items index.
    pub catalog: Arc<Catalog>,
    /// Model version.
    pub model_version: String,
    /// Rules version.
    pub rules_version: String,
    /// Experiments version.
    pub experiments_version: String,
    /// Experiment assignment.
    pub assignment: Assignment,
    /// Server time spent.
    pub latency: Duration,
    /// Membership epoch the decision was made under.
    pub epoch: u64,
}

/// How this node may serve a decision.
#[derive(Debug, Clone)]
pub enum Serve {
    /// It owns the shopper (and the hand-off barrier let it through) at this epoch: every rung.
    Owner {
        /// The epoch.
        epoch: u64,
    },
    /// It cannot serve as owner (owner unreachable, hand-off in progress, not a member): the fallback ladder
    /// only, without touching any session.
    Fallback {
        /// The epoch of this node's view (0 when none).
        epoch: u64,
        /// Why, as `stage: reason`.
        reason: String,
    },
}

/// What a Track batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackOutcome {
    /// Events applied.
    pub accepted: usize,
    /// Of those, naming items the catalog does not know.
    pub unknown_items: usize,
}

/// Everything a node's API needs, shared.
pub struct Engine {
    /// This node's id.
    pub node_id: String,
    /// Configuration.
    pub config: Arc<Config>,
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
    /// CACHED rung.
    pub cache: DecisionCache,
    /// Push hub.
    pub hub: Arc<PushHub>,
    /// Fault injection.
    pub faults: Faults,
    /// Decision records.
    pub audit: Option<AuditLog>,
    /// Applied shopper events, for training.
    pub event_log: Option<EventLog>,
    /// Membership and peers.
    pub cluster: Arc<Cluster>,
    /// Where assist events go (the local hub, or their store's orderer in a cluster).
    pub assist: crate::push::Publisher,
    boot: String,
    sequence: AtomicU64,
    inflight: AtomicUsize,
    replenish_sent: Mutex<HashMap<(Box<str>, ItemIdx), Instant>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// At most one replenish suggestion per store and item in this time.
const REPLENISH_COOLDOWN: Duration = Duration::from_secs(10 * 60);
/// How long a Track may wait for a session actor.
const TRACK_TIMEOUT: Duration = Duration::from_secs(2);

struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    /// Assembles an engine from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        worlds: Worlds,
        policy: Policy,
        experiments: ExperimentsHandle,
        sessions: Sessions,
        ranking: Ranking,
        audit: Option<AuditLog>,
        event_log: Option<EventLog>,
        cluster: Arc<Cluster>,
    ) -> Self {
        let hub = Arc::new(PushHub::new(config.push_retention));
        Self {
            node_id: config.node_id.clone(),
            assist: crate::push::Publisher::start(hub.clone(), cluster.clone()),
            cluster,
            cache: DecisionCache::new(
                config.cache_capacity,
                Duration::from_secs(config.cache_ttl_secs),
            ),
            hub,
            faults: Faults::default(),
            boot: format!("{:x}", aisle_domain::now_ms()),
            sequence: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            replenish_sent: Mutex::new(HashMap::new()),
            config,
            worlds,
            policy,
            experiments,
            sessions,
            ranking,
            audit,
            event_log,
        }
    }

    fn next_decision_id(&self) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{n:x}", self.node_id, self.boot)
    }

    /// Makes a decision that answers by `deadline` (a decision never fails: the ladder ends in GENERIC). `world`
    /// must be the snapshot the input's item indices were resolved against.
    /// Decisions in flight on this node now.
    pub fn inflight_decisions(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

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
        let rules = self.policy.current();
        let experiments = self.experiments.current();
        let assignment = experiments.assign(&input.shopper_id, input.surface);
        let personalise = may_personalise(input.consent, self.config.default_consent);
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
        let model = world.model_for(assignment.params.model.as_deref()).clone();
        let margin = self
            .config
            .margin(deadline.saturating_duration_since(started));
        let work_deadline = deadline.checked_sub(margin).unwrap_or(started).max(started);
        let mut exclusions = ExclusionCounts::default();
        for _ in 0..input.unknown_candidates {
            exclusions.add(Exclusion::UnknownItem);
        }
        let overloaded =
            self.config.max_inflight_decisions > 0 && inflight > self.config.max_inflight_decisions;

        // The session, only with consent; `None` when it cannot be read in time.
        let mut fallback: Option<(&'static str, String)> = None;
        let epoch = match &serve {
            Serve::Owner { epoch } | Serve::Fallback { epoch, .. } => *epoch,
        };
        let view: Option<SessionView> = if let Serve::Fallback { reason, .. } = &serve {
            let (stage, why) = reason
                .split_once(": ")
                .unwrap_or(("cluster", reason.as_str()));
            fallback = Some((cluster_stage(stage), why.to_string()));
            None
        } else if overloaded {
            fallback = Some(("admission", "overload".into()));
            None
        } else if personalise {
            match self.session_view(&input.shopper_id, work_deadline).await {
                Ok(v) => Some(v.unwrap_or_default()),
                Err(reason) => {
                    fallback = Some(("session", reason));
                    None
                }
            }
        } else {
            Some(SessionView::default())
        };
        let purchased = view
            .as_ref()
            .map(|v| v.purchased.clone())
            .unwrap_or_default();
        let policy = PolicyInputs {
            attributes: input.attributes,
            channel: input.channel,
            purchased,
            now_ms: aisle_domain::now_ms(),
            max_items_per_category: cap,
        };
        let guard = Guard::new(&rules, &world.catalog, policy.context());

        let mut answer: Option<(Tier, Vec<DecidedItem>)> = None;
        if let Some(view) = &view
            && fallback.is_none()
        {
            match self
                .fresh(
                    &model,
                    view,
                    &input,
                    &rules,
                    &policy,
                    work_deadline,
                    &mut exclusions,
                )
                .await
            {
                Ok(items) => answer = Some((Tier::Fresh, items)),
                Err(reason) => fallback = Some(("ranking", reason)),
            }
        }
        let owner = matches!(serve, Serve::Owner { .. });
        if answer.is_none() && personalise && !overloaded && owner {
            answer = self
                .cached(&input, &world, &guard, &mut exclusions)
                .map(|items| (Tier::Cached, items));
        }
        if answer.is_none() && !overloaded {
            answer = self
                .rules_rung(&model, view.as_ref(), &input, &guard, &mut exclusions)
                .map(|items| (Tier::Rules, items));
        }
        let (tier, items) = answer.unwrap_or_else(|| {
            (
                Tier::Generic,
                generic_rung(&model, &input, &guard, &mut exclusions),
            )
        });

        if tier == Tier::Fresh && personalise {
            self.cache.put(
                &input.shopper_id,
                input.surface,
                CachedDecision {
                    items: items
                        .iter()
                        .map(|i| (i.item, i.score, i.reasons.clone()))
                        .collect(),
                    model_version: model.version().to_string(),
                    catalog_hash: world.catalog.meta.content_hash.clone(),
                    made_at: Instant::now(),
                },
            );
        }
        let decision = Decision {
            decision_id: self.next_decision_id(),
            items,
            tier,
            fallback_reason: fallback
                .filter(|_| tier != Tier::Fresh)
                .map(|(stage, reason)| format!("{stage}: {reason}"))
                .unwrap_or_default(),
            catalog: world.catalog.clone(),
            model_version: model.version().to_string(),
            rules_version: rules.meta.version.clone(),
            experiments_version: experiments.meta.version.clone(),
            assignment,
            latency: started.elapsed(),
            epoch,
        };
        self.observe(&input, &decision, &exclusions);
        decision
    }

    async fn session_view(
        &self,
        shopper_id: &str,
        deadline: Instant,
    ) -> Result<Option<SessionView>, String> {
        match self.faults.get(Stage::Session) {
            Mode::Fail => return Err("injected failure".into()),
            Mode::Stall => {
                tokio::time::sleep_until(deadline).await;
                return Err("deadline".into());
            }
            Mode::None => {}
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err("no budget left".into());
        }
        self.sessions
            .view(shopper_id, timeout)
            .await
            .map_err(|e| match e {
                SessionError::Timeout(_) => "deadline".to_string(),
                other => other.to_string(),
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn fresh(
        &self,
        model: &Arc<ServedModel>,
        view: &SessionView,
        input: &DecideInput,
        rules: &Arc<Rules>,
        policy: &PolicyInputs,
        deadline: Instant,
        exclusions: &mut ExclusionCounts,
    ) -> Result<Vec<DecidedItem>, String> {
        match self.faults.get(Stage::Ranking) {
            Mode::Fail => return Err("injected failure".into()),
            Mode::Stall => {
                tokio::time::sleep_until(deadline).await;
                return Err("deadline".into());
            }
            Mode::None => {}
        }
        if Instant::now() >= deadline {
            return Err("no budget left".into());
        }
        let retrieved = retrieve(
            model,
            &Query {
                view,
                context: &input.context,
                candidates: input.candidates.as_deref(),
            },
        );
        let last_item = retrieved.last_item;
        let job = Arc::new(ScoreJob {
            model: model.clone(),
            retrieved,
            rules: rules.clone(),
            policy: policy.clone(),
            limit: input.limit,
        });
        let parts = self
            .ranking
            .score(job, deadline)
            .await
            .map_err(|e| match e {
                aisle_ranking::RankError::Deadline => "deadline".to_string(),
                other => other.to_string(),
            })?;
        let guard = Guard::new(rules, &model.catalog, policy.context());
        let ranked = merge(model, parts, &guard, input.limit, last_item, exclusions);
        Ok(ranked
            .into_iter()
            .map(|r| DecidedItem {
                item: r.admitted.item,
                score: r.admitted.score,
                offer: r.admitted.offer,
                reasons: r.reasons,
            })
            .collect())
    }

    fn cached(
        &self,
        input: &DecideInput,
        world: &World,
        guard: &Guard<'_>,
        exclusions: &mut ExclusionCounts,
    ) -> Option<Vec<DecidedItem>> {
        if self.faults.get(Stage::Cache) != Mode::None {
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
                .filter(|c| allowed(c.0))
                .map(|c| (c.0, c.1)),
            input.limit,
            exclusions,
        );
        if admitted.is_empty() {
            return None;
        }
        Some(
            admitted
                .into_iter()
                .map(|a| {
                    let reasons = hit
                        .items
                        .iter()
                        .find(|c| c.0 == a.item)
                        .map(|c| c.2.clone())
                        .unwrap_or_default();
                    DecidedItem {
                        item: a.item,
                        score: a.score,
                        offer: a.offer,
                        reasons,
                    }
                })
                .collect(),
        )
    }

    fn rules_rung(
        &self,
        model: &ServedModel,
        view: Option<&SessionView>,
        input: &DecideInput,
        guard: &Guard<'_>,
        exclusions: &mut ExclusionCounts,
    ) -> Option<Vec<DecidedItem>> {
        if self.faults.get(Stage::Rules) != Mode::None {
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
        let mut categories: Vec<CategoryIdx> = view
            .map(|v| v.category_affinity.iter().take(3).map(|c| c.0).collect())
            .unwrap_or_default();
        if categories.is_empty() {
            for &c in &input.context {
                let category = model.catalog.item(c).category;
                if !categories.contains(&category) && categories.len() < 3 {
                    categories.push(category);
                }
            }
        }
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
        let surface = input.surface.as_str();
        let tier = d.tier.as_str();
        metrics::histogram!("aisle_decide_latency_seconds", "surface" => surface, "tier" => tier)
            .record(d.latency.as_secs_f64());
        metrics::counter!("aisle_decisions_total", "surface" => surface, "tier" => tier)
            .increment(1);
        if d.tier != Tier::Fresh {
            let (stage, reason) = d
                .fallback_reason
                .split_once(": ")
                .unwrap_or(("none", "none"));
            metrics::counter!("aisle_fallbacks_total", "stage" => stage.to_string(), "reason" => reason.to_string())
                .increment(1);
        } else {
            metrics::counter!("aisle_model_decisions_total", "model" => d.model_version.clone())
                .increment(1);
        }
        for (e, n) in exclusions.iter() {
            metrics::counter!("aisle_policy_exclusions_total", "reason" => e.code())
                .increment(n as u64);
        }
        for (key, variant) in &d.assignment.variants {
            metrics::counter!(
                "aisle_experiment_exposures_total",
                "experiment" => key.to_string(),
                "variant" => variant.to_string()
            )
            .increment(1);
        }
        if d.assignment.in_holdout {
            metrics::counter!("aisle_holdout_decisions_total").increment(1);
        }
        if let Some(audit) = &self.audit {
            audit.record(DecisionRecord::new(&self.node_id, input, d));
        }
    }

    /// Applies one shopper's validated events, in order; invalidates their cached decisions and publishes the
    /// assist events they cause. Returns (events applied, of which naming unknown items).
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
    ) -> Result<(usize, usize), SessionError> {
        let n = events.len();
        let unknown = events
            .iter()
            .filter(|e| matches!(e.item, Some(aisle_domain::event::ItemRef::Unknown)))
            .count();
        let received_at_us = events.first().map_or(0, |e| e.received_at_us);
        let kinds: Vec<&'static str> = events.iter().map(|e| e.kind.as_str()).collect();
        let applied = self
            .sessions
            .apply(shopper_id, events, catalog, TRACK_TIMEOUT)
            .await?;
        self.cache.invalidate(shopper_id);
        for kind in kinds {
            metrics::counter!("aisle_track_events_total", "type" => kind).increment(1);
        }
        if !applied.signals.is_empty() {
            self.publish_assist(shopper_id, &applied.signals, received_at_us);
        }
        if let Some(log) = &self.event_log {
            for r in records {
                log.record(r);
            }
        }
        Ok((n, unknown))
    }

    fn publish_assist(&self, shopper_id: &str, signals: &[AssistSignal], received_at_us: i64) {
        let world = self.worlds.current();
        let rules = self.policy.current();
        for signal in signals {
            if let AssistSignal::Replenish { store_id, item, .. } = signal {
                let mut sent = self.replenish_sent.lock().expect("replenish lock");
                let now = Instant::now();
                if sent.len() > 100_000 {
                    sent.retain(|_, at| now.duration_since(*at) < REPLENISH_COOLDOWN);
                }
                let key = (store_id.clone(), *item);
                if sent
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < REPLENISH_COOLDOWN)
                {
                    continue;
                }
                sent.insert(key, now);
            }
            let event = assist_event(
                signal,
                shopper_id,
                &world,
                &rules,
                &self.node_id,
                received_at_us,
            );
            self.assist.publish(event);
        }
    }

    /// What this node holds about a shopper it owns.
    ///
    /// # Errors
    /// [`ApiError::Unavailable`] when the session actor does not answer; [`ApiError::FailedPrecondition`] when
    /// this node does not own the shopper.
    pub async fn describe(
        &self,
        shopper_id: &str,
    ) -> Result<aisle_proto::v1::DescribeShopperResponse, ApiError> {
        let found = self
            .sessions
            .describe(shopper_id, TRACK_TIMEOUT)
            .await
            .map_err(|e| match e {
                SessionError::NotOwner => ApiError::FailedPrecondition("not the owner".into()),
                other => ApiError::Unavailable(format!("session actor: {other}")),
            })?;
        let mut out = aisle_proto::v1::DescribeShopperResponse {
            served_by: self.node_id.clone(),
            ..Default::default()
        };
        if let Some(context) = found {
            let catalog = self.worlds.current().catalog.clone();
            let view = context.view(&self.config.session_limits);
            let id = |i: ItemIdx| catalog.item(i).id.to_string();
            out.has_session = true;
            out.events_applied = context.events_applied();
            out.recent_item_ids = view
                .items
                .iter()
                .map(|v| v.item.known().map(id).unwrap_or_default())
                .collect();
            out.cart_item_ids = view.cart.iter().map(|&i| id(i)).collect();
            out.purchased_item_ids = view.purchased.iter().map(|&i| id(i)).collect();
            out.top_categories = view
                .category_affinity
                .iter()
                .map(|(c, _)| catalog.categories[*c as usize].name.clone())
                .collect();
            out.searches = view.searches.iter().map(|s| s.to_string()).collect();
            out.consent = context.consent();
            out.store_id = context.store_id().unwrap_or_default().to_string();
        }
        Ok(out)
    }

    /// Erases what this node holds about a shopper: session and cached decisions.
    ///
    /// # Errors
    /// [`ApiError::Unavailable`] when the session actor does not answer (nothing is known to be erased then).
    pub async fn forget(&self, shopper_id: &str) -> Result<(bool, usize), ApiError> {
        let erased = self
            .sessions
            .forget(shopper_id, TRACK_TIMEOUT)
            .await
            .map_err(|e| ApiError::Unavailable(format!("session actor: {e}")))?;
        let cached = self.cache.invalidate(shopper_id);
        Ok((erased, cached))
    }
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
