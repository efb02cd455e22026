//! Owner routing, in one place: every per-shopper request (Decide, Track, DescribeShopper, ForgetShopper) runs at
//! the shopper's owner through the same loop.
//!
//! 1. resolve the owner under this node's current view;
//! 2. this node: wait for the hand-off barrier (a newly owned shopper's session may still be on its way), then run
//!    the request here;
//! 3. another node: forward it with the view's epoch and fingerprint and what is left of the budget;
//! 4. classify the outcome: an answer; a refusal because the views differ or ownership moved (wait briefly for a
//!    newer view, re-resolve, retry once); an owner that cannot be reached; an invalid request (passed on).
//!
//! What happens when no owner can serve is the caller's choice: Decide answers from the fallback ladder, the
//! others fail with UNAVAILABLE. Each request kind is an [`AtOwner`]: how it runs here, how it is forwarded.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::cluster::{Cluster, Member, Route, SharedView, Unowned};
use crate::decision::{Fallback, Reason, Stage};
use crate::error::ApiError;

/// Attempts per request: the first, and one retry after a stale view.
const ATTEMPTS: usize = 2;
/// How long a request may wait for a newer view before its retry.
const VIEW_WAIT: Duration = Duration::from_millis(100);

/// Why running a request here did not produce an answer.
#[derive(Debug)]
pub enum LocalError {
    /// Ownership moved away from this node meanwhile: re-resolve.
    NotOwner,
    /// It failed here (the caller is told).
    Failed(ApiError),
}

impl From<aisle_session::SessionError> for LocalError {
    fn from(e: aisle_session::SessionError) -> Self {
        match e {
            aisle_session::SessionError::NotOwner => LocalError::NotOwner,
            other => LocalError::Failed(other.into()),
        }
    }
}

/// A request that runs at a shopper's owner.
pub trait AtOwner: Sync {
    /// What it answers.
    type Output: Send;
    /// The RPC's name in `aisle_forwarded_total{rpc}`.
    const RPC: &'static str;

    /// The shopper whose owner runs it.
    fn shopper(&self) -> &str;

    /// Until when it may wait for the hand-off barrier (by default, the deadline).
    fn barrier_deadline(&self, deadline: Instant) -> Instant {
        deadline
    }

    /// Runs it here, as the owner under `view` (the barrier has let the shopper through).
    fn local(
        &self,
        view: &SharedView,
    ) -> impl Future<Output = Result<Self::Output, LocalError>> + Send;

    /// Forwards it to `owner` under `view`, to answer by `deadline`.
    fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Output, Status>> + Send;
}

/// Where a request ended.
#[derive(Debug)]
pub enum Routed<T> {
    /// The owner (this node or another) answered.
    Answered(T),
    /// No owner could serve it: why.
    NoOwner(Fallback),
    /// It failed, here or at the owner: the error to return.
    Failed(ApiError),
}

/// How a forward ended.
enum Forwarded<T> {
    Answer(T),
    /// The peer's view or ownership differs: re-resolve and retry.
    Stale(String),
    /// The peer could not be reached or did not answer in time.
    Unreachable(String),
    /// The peer refused the request itself.
    Invalid(ApiError),
}

fn classify<T>(result: Result<T, Status>) -> Forwarded<T> {
    match result {
        Ok(answer) => Forwarded::Answer(answer),
        Err(s) if s.code() == Code::FailedPrecondition => Forwarded::Stale(s.message().into()),
        Err(s) if matches!(s.code(), Code::InvalidArgument | Code::OutOfRange) => {
            Forwarded::Invalid(ApiError::Owner {
                code: s.code(),
                message: s.message().into(),
            })
        }
        Err(s) => Forwarded::Unreachable(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn unowned(why: Unowned) -> Fallback {
    match why {
        Unowned::NotMember => Fallback::new(Stage::Membership, Reason::NotMember),
        Unowned::NoOwner => Fallback::new(Stage::Membership, Reason::NoOwner),
    }
}

/// Runs requests at their shoppers' owners.
#[derive(Debug, Clone, Copy)]
pub struct Router<'a> {
    cluster: &'a Cluster,
}

impl<'a> Router<'a> {
    /// A router over this node's cluster handle.
    pub fn new(cluster: &'a Cluster) -> Self {
        Self { cluster }
    }

    /// Runs `call` at its shopper's owner by `deadline`.
    pub async fn at_owner<C: AtOwner>(&self, call: &C, deadline: Instant) -> Routed<C::Output> {
        let barrier_until = call.barrier_deadline(deadline);
        let mut last = Fallback::new(Stage::Owner, Reason::StaleView);
        for attempt in 0..ATTEMPTS {
            let (view, owner) = match self.cluster.route(call.shopper()) {
                Route::Unowned(why) => return Routed::NoOwner(unowned(why)),
                Route::Local(view) => match self.here(call, &view, barrier_until).await {
                    Err(why) => {
                        last = why;
                        if Instant::now() >= barrier_until {
                            return Routed::NoOwner(last);
                        }
                        continue;
                    }
                    Ok(routed) => return routed,
                },
                Route::Remote(view, owner) => (view, owner),
            };
            let outcome = classify(call.remote(&view, &owner, deadline).await);
            let result = match &outcome {
                Forwarded::Answer(_) => "ok",
                Forwarded::Stale(_) => "stale",
                Forwarded::Unreachable(_) => "unreachable",
                Forwarded::Invalid(_) => "invalid",
            };
            metrics::counter!("aisle_forwarded_total", "rpc" => C::RPC, "result" => result)
                .increment(1);
            match outcome {
                Forwarded::Answer(answer) => return Routed::Answered(answer),
                Forwarded::Invalid(e) => return Routed::Failed(e),
                Forwarded::Unreachable(error) => {
                    let detail = format!("{} at epoch {}: {error}", owner.node_id, view.epoch);
                    return Routed::NoOwner(Fallback::with_detail(
                        Stage::Owner,
                        Reason::Unavailable,
                        detail,
                    ));
                }
                Forwarded::Stale(refusal) => {
                    last = Fallback::with_detail(Stage::Owner, Reason::StaleView, refusal);
                    if attempt + 1 < ATTEMPTS {
                        self.wait_for_newer_view(view.fingerprint, deadline).await;
                    }
                }
            }
        }
        Routed::NoOwner(last)
    }

    /// Runs `call` here as the owner under `view`, once the hand-off barrier lets its shopper through (waiting at
    /// most until `barrier_until`, see [`AtOwner::barrier_deadline`]). `Err`: why it cannot run here (barrier still
    /// closed, view changed, ownership moved); the caller re-resolves or falls back.
    pub async fn here<C: AtOwner>(
        &self,
        call: &C,
        view: &SharedView,
        barrier_until: Instant,
    ) -> Result<Routed<C::Output>, Fallback> {
        if !self
            .cluster
            .ready_for(call.shopper(), view, barrier_until)
            .await
        {
            return Err(Fallback::new(Stage::Handoff, Reason::Pending));
        }
        match call.local(view).await {
            Ok(answer) => Ok(Routed::Answered(answer)),
            Err(LocalError::Failed(e)) => Ok(Routed::Failed(e)),
            Err(LocalError::NotOwner) => Err(Fallback::with_detail(
                Stage::Owner,
                Reason::StaleView,
                "ownership moved",
            )),
        }
    }

    async fn wait_for_newer_view(&self, than: u64, deadline: Instant) {
        let mut views = self.cluster.views();
        let until = deadline.min(Instant::now() + VIEW_WAIT);
        let _ = tokio::time::timeout_at(
            until,
            views.wait_for(|v| v.as_ref().is_some_and(|v| v.fingerprint != than)),
        )
        .await;
    }
}

/// A forwarded request's refusal when this node's view or ownership differs from the sender's (by fingerprint).
///
/// # Errors
/// FAILED_PRECONDITION naming what differs; the sender re-resolves on it.
pub fn owned_at(
    cluster: &Cluster,
    shopper_id: &str,
    epoch: u64,
    fingerprint: u64,
) -> Result<SharedView, ApiError> {
    let Some(view) = cluster.current() else {
        return Err(ApiError::FailedPrecondition("not a cluster member".into()));
    };
    if view.fingerprint != fingerprint {
        return Err(ApiError::FailedPrecondition(format!(
            "stale epoch: the sender's view (epoch {epoch}) differs from this node's (epoch {})",
            view.epoch
        )));
    }
    if view
        .shopper_owner(shopper_id)
        .is_none_or(|m| m.node_id != cluster.node_id)
    {
        return Err(ApiError::FailedPrecondition(format!(
            "not the owner under epoch {}",
            view.epoch
        )));
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;
    use crate::cluster::View;
    use crate::cluster::view::testing::{member, view};

    /// A shopper `owner` owns under `v`.
    fn owned_by(v: &View, owner: &str) -> String {
        (0..1_000)
            .map(|i| format!("s{i}"))
            .find(|s| v.shopper_owner(s).unwrap().node_id == owner)
            .unwrap()
    }

    /// Node "a" of a cluster whose views the test feeds, at `v`, with the barrier open.
    fn cluster_at(v: &SharedView) -> (Arc<Cluster>, watch::Sender<Option<SharedView>>) {
        let (tx, rx) = watch::channel(Some(v.clone()));
        let cluster = Cluster::with_views("a", "a:1", rx);
        cluster.begin_epoch(v);
        for m in &v.members {
            cluster.done_from(&m.node_id, v.fingerprint);
        }
        (cluster, tx)
    }

    /// A request whose local and remote outcomes are scripted; it records where it ran.
    struct Scripted {
        shopper: String,
        local: Mutex<VecDeque<Result<&'static str, LocalError>>>,
        remote: Mutex<VecDeque<Result<&'static str, Status>>>,
        ran: Mutex<Vec<String>>,
        /// Runs when a forward is refused as stale (e.g. the view moves on).
        on_stale: Option<Box<dyn Fn() + Send + Sync>>,
    }

    impl Scripted {
        fn new(shopper: &str) -> Self {
            Self {
                shopper: shopper.into(),
                local: Mutex::default(),
                remote: Mutex::default(),
                ran: Mutex::default(),
                on_stale: None,
            }
        }

        fn local(self, r: Result<&'static str, LocalError>) -> Self {
            self.local.lock().unwrap().push_back(r);
            self
        }

        fn remote(self, r: Result<&'static str, Status>) -> Self {
            self.remote.lock().unwrap().push_back(r);
            self
        }

        fn ran(&self) -> Vec<String> {
            self.ran.lock().unwrap().clone()
        }
    }

    impl AtOwner for Scripted {
        type Output = &'static str;
        const RPC: &'static str = "test";

        fn shopper(&self) -> &str {
            &self.shopper
        }

        async fn local(&self, view: &SharedView) -> Result<&'static str, LocalError> {
            self.ran
                .lock()
                .unwrap()
                .push(format!("local@{}", view.epoch));
            self.local
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted local outcome")
        }

        async fn remote(
            &self,
            view: &SharedView,
            owner: &Member,
            _deadline: Instant,
        ) -> Result<&'static str, Status> {
            self.ran
                .lock()
                .unwrap()
                .push(format!("{}@{}", owner.node_id, view.epoch));
            let r = self
                .remote
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted remote outcome");
            if r.as_ref()
                .is_err_and(|s| s.code() == Code::FailedPrecondition)
                && let Some(f) = &self.on_stale
            {
                f();
            }
            r
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test]
    async fn a_shopper_owned_here_runs_here() {
        let v = view(1, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "a")).local(Ok("here"));
        let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
        assert!(matches!(routed, Routed::Answered("here")), "{routed:?}");
        assert_eq!(call.ran(), ["local@1"]);
    }

    #[tokio::test]
    async fn a_shopper_owned_elsewhere_is_forwarded_to_its_owner() {
        let v = view(1, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "b")).remote(Ok("there"));
        let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
        assert!(matches!(routed, Routed::Answered("there")), "{routed:?}");
        assert_eq!(call.ran(), ["b@1"]);
    }

    #[tokio::test]
    async fn a_stale_refusal_is_retried_under_the_newer_view() {
        let v1 = view(1, &["a", "b"]);
        let (cluster, tx) = cluster_at(&v1);
        let shopper = owned_by(&v1, "b");
        // b leaves: under the next view the shopper is a's.
        let v2 = view(2, &["a"]);
        let mut call = Scripted::new(&shopper)
            .remote(Err(Status::failed_precondition("stale epoch")))
            .local(Ok("here"));
        let (moved_cluster, moved_view) = (cluster.clone(), v2.clone());
        call.on_stale = Some(Box::new(move || {
            tx.send_replace(Some(moved_view.clone()));
            moved_cluster.begin_epoch(&moved_view);
        }));
        let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
        assert!(matches!(routed, Routed::Answered("here")), "{routed:?}");
        assert_eq!(call.ran(), ["b@1", "local@2"]);
    }

    #[tokio::test]
    async fn views_that_keep_differing_end_in_a_stale_view_fallback() {
        let v = view(1, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "b"))
            .remote(Err(Status::failed_precondition("stale epoch")))
            .remote(Err(Status::failed_precondition("stale epoch")));
        let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
        match routed {
            Routed::NoOwner(f) => {
                assert_eq!((f.stage, f.reason), (Stage::Owner, Reason::StaleView));
                assert_eq!(f.detail, "stale epoch");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(call.ran(), ["b@1", "b@1"]);
    }

    #[tokio::test]
    async fn an_unreachable_owner_is_reported_with_its_name_but_a_bounded_code() {
        let v = view(7, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "b")).remote(Err(Status::unavailable("refused")));
        match Router::new(&cluster).at_owner(&call, deadline()).await {
            Routed::NoOwner(f) => {
                assert_eq!((f.stage, f.reason), (Stage::Owner, Reason::Unavailable));
                assert!(f.detail.starts_with("b at epoch 7"), "{}", f.detail);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(call.ran(), ["b@7"], "an unreachable owner is not retried");
    }

    #[tokio::test]
    async fn an_owner_refusing_the_request_itself_fails_it_with_the_owners_code() {
        let v = view(1, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "b"))
            .remote(Err(Status::invalid_argument("limit: at most 100")));
        match Router::new(&cluster).at_owner(&call, deadline()).await {
            Routed::Failed(e) => {
                assert_eq!(e.code(), Code::InvalidArgument);
                assert_eq!(e.to_string(), "limit: at most 100");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn ownership_moving_away_during_a_local_run_is_retried() {
        let v = view(1, &["a", "b"]);
        let (cluster, _tx) = cluster_at(&v);
        let call = Scripted::new(&owned_by(&v, "a"))
            .local(Err(LocalError::NotOwner))
            .local(Ok("here"));
        let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
        assert!(matches!(routed, Routed::Answered("here")), "{routed:?}");
        assert_eq!(call.ran(), ["local@1", "local@1"]);
    }

    #[tokio::test]
    async fn a_node_without_a_view_owns_nothing() {
        let (_tx, rx) = watch::channel(None);
        let cluster = Cluster::with_views("a", "a:1", rx);
        let call = Scripted::new("s1");
        match Router::new(&cluster).at_owner(&call, deadline()).await {
            Routed::NoOwner(f) => {
                assert_eq!((f.stage, f.reason), (Stage::Membership, Reason::NotMember));
            }
            other => panic!("{other:?}"),
        }
        assert!(call.ran().is_empty());
        let all_leaving = Arc::new(View::new(
            3,
            vec![Member {
                leaving: true,
                ..member("a")
            }],
        ));
        let (_tx, rx) = watch::channel(Some(all_leaving));
        let cluster = Cluster::with_views("a", "a:1", rx);
        match Router::new(&cluster).at_owner(&call, deadline()).await {
            Routed::NoOwner(f) => assert_eq!(f.reason, Reason::NoOwner),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_newly_owned_shopper_waits_for_the_hand_off_then_falls_back_at_its_deadline() {
        let v = view(1, &["a", "b"]);
        let (tx, rx) = watch::channel(Some(v.clone()));
        let cluster = Cluster::with_views("a", "a:1", rx);
        // a just joined: b has not handed its sessions over yet.
        cluster.begin_epoch(&v);
        let call = Scripted::new(&owned_by(&v, "a"));
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        match Router::new(&cluster).at_owner(&call, deadline).await {
            Routed::NoOwner(f) => {
                assert_eq!((f.stage, f.reason), (Stage::Handoff, Reason::Pending))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Instant::now(),
            deadline,
            "it waited for the barrier until its deadline"
        );
        assert!(
            call.ran().is_empty(),
            "nothing ran before the session arrived"
        );

        // Once b is done, the same shopper is served at once.
        cluster.done_from("b", v.fingerprint);
        let call = Scripted::new(&owned_by(&v, "a")).local(Ok("here"));
        let routed = Router::new(&cluster)
            .at_owner(&call, Instant::now() + Duration::from_millis(50))
            .await;
        assert!(matches!(routed, Routed::Answered("here")), "{routed:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hand_off_opening_lets_a_waiting_request_through() {
        let v = view(1, &["a", "b"]);
        let (_tx, rx) = watch::channel(Some(v.clone()));
        let cluster = Cluster::with_views("a", "a:1", rx);
        cluster.begin_epoch(&v);
        let opener = cluster.clone();
        let fingerprint = v.fingerprint;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            opener.done_from("b", fingerprint);
        });
        let call = Scripted::new(&owned_by(&v, "a")).local(Ok("here"));
        let started = Instant::now();
        let routed = Router::new(&cluster)
            .at_owner(&call, started + Duration::from_millis(500))
            .await;
        assert!(matches!(routed, Routed::Answered("here")), "{routed:?}");
        assert_eq!(Instant::now() - started, Duration::from_millis(20));
    }
}
