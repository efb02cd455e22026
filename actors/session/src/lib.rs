//! The shopper session: what Aisle knows about what a shopper did seconds ago.
//!
//! - [`context`]: `SessionContext`, the pure, bounded state of one session and how events change it.
//! - [`shard`]: the ractor actors that own sessions (one owner per shopper, ordered per shopper) and their
//!   supervisor.
//! - [`Sessions`]: the typed handle the node uses — routing by shopper, explicit call timeouts.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod context;
pub mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::ShopperEvent;
use aisle_domain::hash::stable_hash;
use aisle_domain::session::SessionView;
use aisle_kit::pool::Pool;
use ractor::ActorRef;
use ractor::rpc::CallResult;

pub use context::{AssistRules, AssistSignal, PortableSession, SessionContext, SessionLimits};
pub use shard::{
    Applied, Delivery, OwnerGate, SessionError, SessionMsg, SessionSettings, SessionShard,
    SessionTable, SessionTransfer, ShardStats,
};

/// The typed handle to the session actors. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pool: Pool<SessionShard>,
    /// Session count per shard, published by the shards.
    counts: Arc<Vec<Arc<AtomicUsize>>>,
    /// Each shard's sessions, for reads without a message.
    tables: Arc<Vec<Arc<SessionTable>>>,
    /// The ownership gate the shards apply.
    gate: OwnerGate,
    /// Bounds of the views.
    limits: SessionLimits,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("shards", &self.counts.len())
            .finish()
    }
}

fn outcome<T>(
    result: Result<CallResult<T>, impl std::fmt::Debug>,
    timeout: Duration,
) -> Result<T, SessionError> {
    match result {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(SessionError::Timeout(timeout)),
        Ok(CallResult::SenderError) | Err(_) => Err(SessionError::Unavailable),
    }
}

impl Sessions {
    /// Starts `shards` session shards under a supervisor.
    ///
    /// # Errors
    /// Fails when the actors cannot be spawned.
    pub async fn start(shards: usize, settings: SessionSettings) -> Result<Self, ractor::SpawnErr> {
        Self::start_gated(shards, settings, Arc::new(|_: &str| true)).await
    }

    /// Starts the shards with an ownership gate: `Apply` and `View` for a shopper the gate refuses fail with
    /// [`SessionError::NotOwner`] (and create nothing).
    ///
    /// # Errors
    /// Fails when the actors cannot be spawned.
    pub async fn start_gated(
        shards: usize,
        settings: SessionSettings,
        gate: OwnerGate,
    ) -> Result<Self, ractor::SpawnErr> {
        let counts: Arc<Vec<Arc<AtomicUsize>>> = Arc::new(
            (0..shards.max(1))
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
        );
        let tables: Arc<Vec<Arc<SessionTable>>> = Arc::new(
            (0..counts.len())
                .map(|_| Arc::new(SessionTable::default()))
                .collect(),
        );
        let args = counts
            .iter()
            .zip(tables.iter())
            .enumerate()
            .map(|(index, (count, table))| {
                (index, settings, count.clone(), gate.clone(), table.clone())
            })
            .collect();
        let pool = Pool::start("session", SessionShard, args).await?;
        Ok(Self {
            pool,
            counts,
            tables,
            gate,
            limits: settings.limits,
        })
    }

    /// Index of the shard owning `shopper_id`.
    pub fn shard_of(&self, shopper_id: &str) -> usize {
        (stable_hash(&["session-shard", shopper_id]) % self.counts.len() as u64) as usize
    }

    fn route(&self, shopper_id: &str) -> ActorRef<SessionMsg> {
        self.pool.member(self.shard_of(shopper_id))
    }

    /// Applies events, in order, to one shopper's session. With a `delivery` (a queue's entry), only once: an entry
    /// the session already applied changes nothing and is reported as [`Applied::duplicate`].
    ///
    /// # Errors
    /// [`SessionError::Timeout`] or [`SessionError::Unavailable`] when the shard does not answer (nothing is
    /// known to be applied then); [`SessionError::Reset`] when applying hit an internal error.
    pub async fn apply(
        &self,
        shopper_id: &str,
        events: Vec<ShopperEvent>,
        catalog: Arc<Catalog>,
        delivery: Option<Delivery>,
        timeout: Duration,
    ) -> Result<Applied, SessionError> {
        let shopper_id: Box<str> = shopper_id.into();
        let result = self
            .route(&shopper_id)
            .call(
                |reply| SessionMsg::Apply {
                    shopper_id,
                    events,
                    catalog,
                    delivery,
                    reply,
                },
                Some(timeout),
            )
            .await;
        outcome(result, timeout)?
    }

    /// Reads a shopper's session; `Ok(None)` when the shopper has none.
    ///
    /// # Errors
    /// When the shard does not answer within `timeout`.
    pub async fn view(
        &self,
        shopper_id: &str,
        timeout: Duration,
    ) -> Result<Option<SessionView>, SessionError> {
        let shopper_id: Box<str> = shopper_id.into();
        let result = self
            .route(&shopper_id)
            .call(
                |reply| SessionMsg::View { shopper_id, reply },
                Some(timeout),
            )
            .await;
        outcome(result, timeout)?
    }

    /// Reads a shopper's session now, in the calling thread, without a message to its shard; `Ok(None)` when the
    /// shopper has none. The same answer as [`Sessions::view`] (every event batch a shard has acknowledged is
    /// visible), without the two thread hand-offs of a call: the one to use on the decision path.
    ///
    /// # Errors
    /// [`SessionError::NotOwner`] when this node does not own the shopper.
    pub fn view_now(&self, shopper_id: &str) -> Result<Option<SessionView>, SessionError> {
        if !(self.gate)(shopper_id) {
            return Err(SessionError::NotOwner);
        }
        let table = &self.tables[self.shard_of(shopper_id)];
        Ok(table
            .read()
            .get(shopper_id)
            .map(|e| e.context.view(&self.limits)))
    }

    /// A copy of a shopper's whole session, read now from its shard's table without a message and without the
    /// ownership gate (replication copies what this node holds; it checks ownership itself).
    pub fn snapshot_now(&self, shopper_id: &str) -> Option<SessionContext> {
        self.tables[self.shard_of(shopper_id)]
            .read()
            .get(shopper_id)
            .map(|e| e.context.clone())
    }

    /// Whether a session of the shopper is held now (no copy, no message).
    pub fn holds_now(&self, shopper_id: &str) -> bool {
        self.tables[self.shard_of(shopper_id)]
            .read()
            .contains_key(shopper_id)
    }

    /// The shoppers whose sessions are held now, over all shards.
    pub fn shoppers_now(&self) -> Vec<Box<str>> {
        self.tables
            .iter()
            .flat_map(|t| t.read().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// The consent statement a shopper's events recorded, read now like [`Sessions::view_now`] but without
    /// building a view; `Ok(None)` when the shopper has no session or stated nothing.
    ///
    /// # Errors
    /// [`SessionError::NotOwner`] when this node does not own the shopper.
    pub fn consent_now(&self, shopper_id: &str) -> Result<Option<bool>, SessionError> {
        if !(self.gate)(shopper_id) {
            return Err(SessionError::NotOwner);
        }
        let table = &self.tables[self.shard_of(shopper_id)];
        Ok(table
            .read()
            .get(shopper_id)
            .and_then(|e| e.context.consent()))
    }

    /// A copy of a shopper's whole session; `Ok(None)` when the shopper has none.
    ///
    /// # Errors
    /// When the shard does not answer within `timeout`, or this node does not own the shopper.
    pub async fn describe(
        &self,
        shopper_id: &str,
        timeout: Duration,
    ) -> Result<Option<SessionContext>, SessionError> {
        let shopper_id: Box<str> = shopper_id.into();
        let result = self
            .route(&shopper_id)
            .call(
                |reply| SessionMsg::Describe { shopper_id, reply },
                Some(timeout),
            )
            .await;
        outcome(result, timeout)?
    }

    /// Erases a shopper's session; returns whether one existed.
    ///
    /// # Errors
    /// When the shard does not answer within `timeout`.
    pub async fn forget(&self, shopper_id: &str, timeout: Duration) -> Result<bool, SessionError> {
        let shopper_id: Box<str> = shopper_id.into();
        let result = self
            .route(&shopper_id)
            .call(
                |reply| SessionMsg::Forget { shopper_id, reply },
                Some(timeout),
            )
            .await;
        outcome(result, timeout)
    }

    /// Removes and returns, from every shard, the sessions of the shoppers `select` picks.
    ///
    /// # Errors
    /// When a shard does not answer within `timeout` (sessions exported by other shards are returned to their
    /// shards first, so nothing is lost).
    pub async fn export(
        &self,
        select: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        timeout: Duration,
    ) -> Result<Vec<SessionTransfer>, SessionError> {
        let mut out = Vec::new();
        for shard in self.pool.members().iter() {
            let select = select.clone();
            let result = shard
                .call(
                    |reply| SessionMsg::Export {
                        select: Box::new(move |s| select(s)),
                        reply,
                    },
                    Some(timeout),
                )
                .await;
            match outcome(result, timeout) {
                Ok(sessions) => out.extend(sessions),
                Err(e) => {
                    self.import(out, timeout).await?;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Installs sessions handed over from elsewhere, each in its shard.
    ///
    /// # Errors
    /// When a shard does not answer within `timeout`.
    pub async fn import(
        &self,
        sessions: Vec<SessionTransfer>,
        timeout: Duration,
    ) -> Result<usize, SessionError> {
        let routes = self.pool.members();
        let mut by_shard: Vec<Vec<SessionTransfer>> =
            (0..routes.len()).map(|_| Vec::new()).collect();
        for s in sessions {
            by_shard[self.shard_of(&s.shopper_id)].push(s);
        }
        let mut installed = 0;
        for (shard, batch) in routes.iter().zip(by_shard) {
            if batch.is_empty() {
                continue;
            }
            let result = shard
                .call(
                    |reply| SessionMsg::Import {
                        sessions: batch,
                        reply,
                    },
                    Some(timeout),
                )
                .await;
            installed += outcome(result, timeout)?;
        }
        Ok(installed)
    }

    /// Sessions held now, over all shards.
    pub fn active_sessions(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Counters of every shard.
    ///
    /// # Errors
    /// When a shard does not answer within `timeout`.
    pub async fn stats(&self, timeout: Duration) -> Result<ShardStats, SessionError> {
        let mut total = ShardStats::default();
        for shard in self.pool.members().iter() {
            let s = outcome(shard.call(SessionMsg::Stats, Some(timeout)).await, timeout)?;
            total.sessions += s.sessions;
            total.heap_bytes += s.heap_bytes;
        }
        Ok(total)
    }

    /// Passivates idle sessions now, in every shard (the shards also do it on their own schedule).
    pub fn passivate_now(&self) {
        for shard in self.pool.members().iter() {
            let _ = shard.cast(SessionMsg::Passivate);
        }
    }

    /// Stops every session actor; sessions are dropped.
    pub async fn stop(&self) {
        self.pool.stop().await;
    }

    #[cfg(test)]
    fn shard_ref(&self, index: usize) -> ActorRef<SessionMsg> {
        self.pool.member(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_domain::demo::DemoWorld;
    use aisle_domain::event::{EventKind, ItemRef};
    use std::sync::OnceLock;

    const T: Duration = Duration::from_secs(5);

    fn catalog() -> Arc<Catalog> {
        static C: OnceLock<Arc<Catalog>> = OnceLock::new();
        C.get_or_init(|| Arc::new(DemoWorld::generate(1, 1_700_000_000_000, 10).load_catalog()))
            .clone()
    }

    fn view_event(item: u32, ts: i64) -> ShopperEvent {
        ShopperEvent {
            kind: EventKind::View,
            item: Some(ItemRef::Known(item)),
            query: None,
            quantity: 1,
            price_cents: 0,
            store_id: None,
            aisle: None,
            ts_ms: ts,
            received_at_us: 0,
            consent: None,
            default_consent: false,
        }
    }

    async fn wait_until(mut cond: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_queue_entry_is_applied_once_and_its_mark_travels_with_the_session() {
        let s = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        let entry = |seq| {
            Some(Delivery {
                origin: "node-2/7f".into(),
                seq,
            })
        };
        let first = s
            .apply("dora", vec![view_event(1, 10)], catalog(), entry(1), T)
            .await
            .unwrap();
        assert!(!first.duplicate);
        // The same entry again (its answer was lost, say): nothing changes.
        let again = s
            .apply("dora", vec![view_event(1, 10)], catalog(), entry(1), T)
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.loggable, vec![false]);
        let next = s
            .apply("dora", vec![view_event(2, 20)], catalog(), entry(2), T)
            .await
            .unwrap();
        assert!(!next.duplicate);
        // Another queue's entry 1 is its own.
        let other = Some(Delivery {
            origin: "store-9/01".into(),
            seq: 1,
        });
        assert!(
            !s.apply("dora", vec![view_event(3, 30)], catalog(), other, T)
                .await
                .unwrap()
                .duplicate
        );
        let session = s.describe("dora", T).await.unwrap().unwrap();
        assert_eq!(session.events_applied(), 3);
        assert_eq!(session.delivered("node-2/7f"), 2);
        // Handed off (portable form) to a node with the same catalog, the marks still refuse a redelivery.
        let moved = SessionContext::from_portable(session.to_portable(&catalog()), &catalog());
        assert_eq!(moved.delivered("node-2/7f"), 2);
        assert_eq!(moved.delivered("store-9/01"), 1);
        let t = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        t.import(
            vec![SessionTransfer {
                shopper_id: "dora".into(),
                context: moved,
            }],
            T,
        )
        .await
        .unwrap();
        assert!(
            t.apply("dora", vec![view_event(2, 20)], catalog(), entry(2), T)
                .await
                .unwrap()
                .duplicate
        );
        s.stop().await;
        t.stop().await;
    }
    #[tokio::test]
    async fn session_is_created_on_first_event_and_read_back() {
        let s = Sessions::start(4, SessionSettings::default())
            .await
            .unwrap();
        assert_eq!(s.view("alice", T).await.unwrap(), None);
        let applied = s
            .apply(
                "alice",
                vec![view_event(1, 10), view_event(2, 20)],
                catalog(),
                None,
                T,
            )
            .await
            .unwrap();
        assert!(applied.created);
        let again = s
            .apply("alice", vec![view_event(3, 30)], catalog(), None, T)
            .await
            .unwrap();
        assert!(!again.created);
        let v = s.view("alice", T).await.unwrap().unwrap();
        let items: Vec<_> = v.known_items().collect();
        assert_eq!(items, vec![1, 2, 3], "events apply in order");
        assert_eq!(s.active_sessions(), 1);
        assert!(s.forget("alice", T).await.unwrap());
        assert_eq!(s.view("alice", T).await.unwrap(), None);
        assert_eq!(s.active_sessions(), 0);
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_are_passivated_after_the_ttl() {
        let settings = SessionSettings {
            idle_ttl: Duration::from_secs(60),
            passivation_interval: Duration::from_secs(10),
            ..Default::default()
        };
        let s = Sessions::start(2, settings).await.unwrap();
        s.apply("idle", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        s.apply("busy", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        let refusal = ShopperEvent {
            consent: Some(false),
            ..view_event(1, 1)
        };
        s.apply("refused", vec![refusal], catalog(), None, T)
            .await
            .unwrap();
        for minute in 0..4 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            s.apply("busy", vec![view_event(2, minute)], catalog(), None, T)
                .await
                .unwrap();
        }
        // 80 s without activity for "idle": passivated by a periodic check; "busy" stays.
        wait_until(async || s.view("idle", T).await.unwrap().is_none()).await;
        assert!(s.view("busy", T).await.unwrap().is_some());
        // A refusal of consent is not passivated: it binds the shopper's next decision, however late.
        let refused = s
            .view("refused", T)
            .await
            .unwrap()
            .expect("the refusal is kept");
        assert_eq!(refused.consent, Some(false));
        assert_eq!(s.active_sessions(), 2);
        s.stop().await;
    }

    #[tokio::test]
    async fn a_panic_in_one_session_resets_only_that_session() {
        let s = Sessions::start(1, SessionSettings::default())
            .await
            .unwrap();
        s.apply("a", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        s.apply("b", vec![view_event(2, 1)], catalog(), None, T)
            .await
            .unwrap();
        let shard = s.shard_ref(0);
        let result = shard
            .call(|reply| SessionMsg::CrashSession("a".into(), reply), Some(T))
            .await
            .unwrap();
        assert!(matches!(
            result,
            CallResult::Success(Err(SessionError::Reset))
        ));
        assert_eq!(
            s.view("a", T).await.unwrap(),
            None,
            "the panicking session is dropped"
        );
        assert!(
            s.view("b", T).await.unwrap().is_some(),
            "its neighbours are untouched"
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn a_crashed_shard_is_restarted_empty_and_routes_follow() {
        let s = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        let victim = s.shard_of("carol");
        s.apply("carol", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        let before = s.shard_ref(victim);
        before.cast(SessionMsg::CrashShard).unwrap();
        wait_until(async || s.shard_ref(victim).get_id() != before.get_id()).await;
        // The restarted shard is empty and serves again.
        assert_eq!(s.view("carol", T).await.unwrap(), None);
        assert_eq!(
            s.view_now("carol").unwrap(),
            None,
            "the table was cleared too"
        );
        assert_eq!(s.active_sessions(), 0);
        s.apply("carol", vec![view_event(2, 2)], catalog(), None, T)
            .await
            .unwrap();
        assert!(s.view("carol", T).await.unwrap().is_some());
        s.stop().await;
    }

    #[tokio::test]
    async fn reading_now_sees_what_the_shard_acknowledged() {
        let s = Sessions::start(4, SessionSettings::default())
            .await
            .unwrap();
        assert_eq!(s.view_now("dora").unwrap(), None);
        for k in 0..30u32 {
            s.apply(
                "dora",
                vec![view_event(k % 7, i64::from(k))],
                catalog(),
                None,
                T,
            )
            .await
            .unwrap();
            // Every acknowledged batch is visible at once, and the same as the shard's own answer.
            let now = s.view_now("dora").unwrap().expect("a session");
            assert_eq!(
                now.items.len(),
                s.view("dora", T).await.unwrap().unwrap().items.len()
            );
            assert_eq!(Some(now), s.view("dora", T).await.unwrap());
        }
        assert!(s.forget("dora", T).await.unwrap());
        assert_eq!(s.view_now("dora").unwrap(), None);
        s.stop().await;
    }

    #[tokio::test]
    async fn the_owner_gate_refuses_shoppers_this_node_does_not_own() {
        let owned = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = owned.clone();
        let s = Sessions::start_gated(
            2,
            SessionSettings::default(),
            Arc::new(move |_: &str| flag.load(Ordering::SeqCst)),
        )
        .await
        .unwrap();
        s.apply("moving", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        owned.store(false, Ordering::SeqCst);
        assert_eq!(
            s.apply("moving", vec![view_event(2, 2)], catalog(), None, T)
                .await,
            Err(SessionError::NotOwner)
        );
        assert_eq!(s.view("moving", T).await, Err(SessionError::NotOwner));
        assert_eq!(s.view_now("moving"), Err(SessionError::NotOwner));
        assert_eq!(
            s.apply("other", vec![view_event(2, 2)], catalog(), None, T)
                .await,
            Err(SessionError::NotOwner)
        );
        assert_eq!(
            s.active_sessions(),
            1,
            "nothing created for a shopper owned elsewhere"
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn export_and_import_move_sessions_with_their_context() {
        let a = Sessions::start(3, SessionSettings::default())
            .await
            .unwrap();
        let b = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        for k in 0..20 {
            a.apply(&format!("s{k}"), vec![view_event(k, 1)], catalog(), None, T)
                .await
                .unwrap();
        }
        let moved = a
            .export(Arc::new(|s: &str| s.ends_with('1')), T)
            .await
            .unwrap();
        assert_eq!(moved.len(), 2); // s1, s11
        assert_eq!(a.active_sessions(), 18);
        let before = moved[0].context.view(&SessionLimits::default());
        let who = moved[0].shopper_id.clone();
        assert_eq!(b.import(moved, T).await.unwrap(), 2);
        assert_eq!(b.view(&who, T).await.unwrap().unwrap(), before);
        assert_eq!(a.view(&who, T).await.unwrap(), None);
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test]
    async fn an_import_never_replaces_a_session_written_later() {
        let s = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        s.apply("x", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        let older = s.export(Arc::new(|_: &str| true), T).await.unwrap();
        assert_eq!(older.len(), 1);
        // Written here after the copy was taken: the stale copy must not win.
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.apply(
            "x",
            vec![view_event(2, 2), view_event(3, 3)],
            catalog(),
            None,
            T,
        )
        .await
        .unwrap();
        let newer = s.describe("x", T).await.unwrap().unwrap();
        assert!(newer.version() > older[0].context.version());
        assert_eq!(s.import(older, T).await.unwrap(), 0);
        assert_eq!(
            s.describe("x", T).await.unwrap().unwrap().events_applied(),
            2
        );
        // A newer copy does replace an older local one.
        let mut newest = s.export(Arc::new(|_: &str| true), T).await.unwrap();
        s.apply("x", vec![view_event(4, 4)], catalog(), None, T)
            .await
            .unwrap();
        newest[0].context.stamp_version(u64::MAX / 2);
        assert_eq!(s.import(newest, T).await.unwrap(), 1);
        assert_eq!(
            s.describe("x", T).await.unwrap().unwrap().events_applied(),
            2
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn a_shard_holds_at_most_its_cap_passivating_the_least_recently_active() {
        let settings = SessionSettings {
            max_sessions_per_shard: 80,
            ..SessionSettings::default()
        };
        let s = Sessions::start(1, settings).await.unwrap();
        s.apply("first", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        for k in 0..1_000 {
            s.apply(&format!("s{k}"), vec![view_event(1, 1)], catalog(), None, T)
                .await
                .unwrap();
            // The first shopper stays active: never the least recently active.
            if k % 20 == 0 {
                s.apply("first", vec![view_event(2, 2)], catalog(), None, T)
                    .await
                    .unwrap();
            }
        }
        wait_until(async || s.active_sessions() <= 80).await;
        assert!(s.view("first", T).await.unwrap().is_some());
        assert!(s.view("s0", T).await.unwrap().is_none(), "the oldest went");
        assert!(s.view("s999", T).await.unwrap().is_some());
        s.stop().await;
    }

    #[tokio::test]
    async fn each_event_is_loggable_only_with_consent_after_applying_it() {
        let s = Sessions::start(2, SessionSettings::default())
            .await
            .unwrap();
        let stating = |item, ts, consent: Option<bool>, default_consent| ShopperEvent {
            consent,
            default_consent,
            ..view_event(item, ts)
        };
        // (event, loggable): no statement takes the event's regional default; a statement binds what follows.
        let steps = [
            (stating(1, 1, None, false), false),
            (stating(2, 2, None, true), true),
            (stating(3, 3, Some(true), false), true),
            (stating(4, 4, None, false), true),
            (stating(5, 5, Some(false), true), false),
            (stating(6, 6, None, true), false),
            (stating(7, 7, Some(true), false), true),
        ];
        let (events, expected): (Vec<_>, Vec<_>) = steps.into_iter().unzip();
        let applied = s.apply("mixed", events, catalog(), None, T).await.unwrap();
        assert_eq!(applied.loggable, expected);
        assert_eq!(s.consent_now("mixed").unwrap(), Some(true));
        // After the revocation only the grant's event shapes the session.
        let v = s.view_now("mixed").unwrap().unwrap();
        assert_eq!(v.known_items().collect::<Vec<_>>(), vec![7]);
        assert_eq!(v.consent, Some(true));
        assert_eq!(s.consent_now("nobody").unwrap(), None);
        s.stop().await;
    }

    #[tokio::test]
    async fn a_revocation_still_advances_the_version_for_hand_offs() {
        let s = Sessions::start(1, SessionSettings::default())
            .await
            .unwrap();
        s.apply("r", vec![view_event(1, 1)], catalog(), None, T)
            .await
            .unwrap();
        let before = s.describe("r", T).await.unwrap().unwrap().version();
        let revoke = ShopperEvent {
            consent: Some(false),
            ..view_event(2, 2)
        };
        let applied = s
            .apply("r", vec![revoke], catalog(), None, T)
            .await
            .unwrap();
        assert_eq!(applied.loggable, vec![false]);
        let after = s.describe("r", T).await.unwrap().unwrap();
        assert!(after.version() > before);
        assert_eq!(after.events_applied(), 2);
        let v = s.view("r", T).await.unwrap().unwrap();
        assert!(v.is_anonymous());
        assert_eq!(v.consent, Some(false));
        s.stop().await;
    }
}
