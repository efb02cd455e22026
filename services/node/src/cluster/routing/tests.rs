use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::{Code, Status};

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
    /// Whether the key is a store rather than a shopper.
    store: bool,
    local: Mutex<VecDeque<Result<&'static str, LocalError>>>,
    remote: Mutex<VecDeque<Result<&'static str, RemoteError>>>,
    ran: Mutex<Vec<String>>,
    /// Runs when a forward is refused as stale (e.g. the view moves on).
    on_stale: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Scripted {
    fn new(shopper: &str) -> Self {
        Self {
            shopper: shopper.into(),
            store: false,
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
        self.remote
            .lock()
            .unwrap()
            .push_back(r.map_err(RemoteError::from));
        self
    }

    fn remote_error(self, e: RemoteError) -> Self {
        self.remote.lock().unwrap().push_back(Err(e));
        self
    }

    fn ran(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
}

impl AtOwner for Scripted {
    type Output = &'static str;
    const RPC: &'static str = "test";

    fn key(&self) -> Key<'_> {
        if self.store {
            Key::Store(&self.shopper)
        } else {
            Key::Shopper(&self.shopper)
        }
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
    ) -> Result<&'static str, RemoteError> {
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
        if matches!(r, Err(RemoteError::Stale(_)))
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

#[tokio::test]
async fn a_forward_without_budget_left_falls_back_as_no_budget_not_unavailable() {
    let v = view(1, &["a", "b"]);
    let (cluster, _tx) = cluster_at(&v);
    let call = Scripted::new(&owned_by(&v, "b")).remote_error(RemoteError::NoBudget);
    match Router::new(&cluster).at_owner(&call, deadline()).await {
        Routed::NoOwner(f) => assert_eq!((f.stage, f.reason), (Stage::Owner, Reason::NoBudget)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn run_answers_what_the_request_says_when_no_owner_can_serve_it() {
    let v = view(1, &["a", "b"]);
    let (cluster, _tx) = cluster_at(&v);
    let call = Scripted::new(&owned_by(&v, "b")).remote(Err(Status::unavailable("refused")));
    let e = Router::new(&cluster)
        .run(&call, deadline())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.to_string()
            .starts_with("the shopper's owner cannot be reached (owner: unavailable (b at epoch 1"),
        "{e}"
    );
}

/// A request forwarded by `b`, which resolved node "a" as the owner under `v`.
fn from_b(v: &View) -> Sender {
    Sender {
        epoch: v.epoch,
        fingerprint: v.fingerprint,
    }
}

#[tokio::test]
async fn the_owner_runs_a_request_forwarded_under_its_own_view() {
    let v = view(3, &["a", "b"]);
    let (cluster, _tx) = cluster_at(&v);
    let call = Scripted::new(&owned_by(&v, "a")).local(Ok("here"));
    let answer = Router::new(&cluster)
        .receive(&call, from_b(&v), deadline())
        .await;
    assert_eq!(answer.unwrap(), "here");
    assert_eq!(call.ran(), ["local@3"]);
}

#[tokio::test]
async fn the_owner_refuses_a_sender_with_another_view_or_another_owner_and_runs_nothing() {
    let v = view(3, &["a", "b"]);
    let (cluster, _tx) = cluster_at(&v);
    let router = Router::new(&cluster);
    // The sender's view is another one (a member joined or left since it resolved the owner).
    let older = view(2, &["a", "b", "c"]);
    let call = Scripted::new(&owned_by(&v, "a"));
    let e = router
        .receive(&call, from_b(&older), deadline())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.to_string(),
        "stale epoch: the sender's view (epoch 2) differs from this node's (epoch 3)"
    );
    // Same view, but the shopper is b's.
    let theirs = Scripted::new(&owned_by(&v, "b"));
    let e = router
        .receive(&theirs, from_b(&v), deadline())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.to_string(), "not the owner of this shopper under epoch 3");
    // Not a member at all.
    let (_none, rx) = watch::channel(None);
    let fenced = Cluster::with_views("a", "a:1", rx);
    let e = Router::new(&fenced)
        .receive(&call, from_b(&v), deadline())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "not a cluster member");
    assert!(call.ran().is_empty() && theirs.ran().is_empty());
}

#[tokio::test]
async fn the_owner_passes_on_the_requests_own_failure() {
    let v = view(1, &["a", "b"]);
    let (cluster, _tx) = cluster_at(&v);
    let call = Scripted::new(&owned_by(&v, "a")).local(Err(LocalError::Failed(
        ApiError::Unavailable("session actor: timed out".into()),
    )));
    let e = Router::new(&cluster)
        .receive(&call, from_b(&v), deadline())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (Code::Unavailable, "session actor: timed out".into())
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_owner_a_closed_barrier_answers_what_the_request_says_at_its_deadline() {
    let v = view(1, &["a", "b"]);
    let (_tx, rx) = watch::channel(Some(v.clone()));
    let cluster = Cluster::with_views("a", "a:1", rx);
    // a just joined: b has not handed its sessions over yet.
    cluster.begin_epoch(&v);
    let call = Scripted::new(&owned_by(&v, "a"));
    let started = Instant::now();
    let e = Router::new(&cluster)
        .receive(&call, from_b(&v), started + Duration::from_millis(40))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "the sender re-resolves");
    assert_eq!(e.to_string(), "handoff: pending");
    assert_eq!(Instant::now() - started, Duration::from_millis(40));
    assert!(
        call.ran().is_empty(),
        "nothing ran before the session arrived"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_is_served_by_its_owner_without_waiting_for_the_shoppers_barrier() {
    let v = view(1, &["a", "b"]);
    let (_tx, rx) = watch::channel(Some(v.clone()));
    let cluster = Cluster::with_views("a", "a:1", rx);
    cluster.begin_epoch(&v);
    let store = (0..1_000)
        .map(|i| format!("store-{i}"))
        .find(|s| v.store_owner(s).unwrap().node_id == "a")
        .unwrap();
    let mut call = Scripted::new(&store).local(Ok("ordered"));
    call.store = true;
    let started = Instant::now();
    let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
    assert!(matches!(routed, Routed::Answered("ordered")), "{routed:?}");
    assert_eq!(Instant::now(), started, "no wait for the hand-off barrier");
    let elsewhere = (0..1_000)
        .map(|i| format!("store-{i}"))
        .find(|s| v.store_owner(s).unwrap().node_id == "b")
        .unwrap();
    let mut call = Scripted::new(&elsewhere).remote(Ok("ordered there"));
    call.store = true;
    let routed = Router::new(&cluster).at_owner(&call, deadline()).await;
    assert!(
        matches!(routed, Routed::Answered("ordered there")),
        "{routed:?}"
    );
    assert_eq!(call.ran(), ["b@1"]);
}
