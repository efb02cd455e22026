//! Owner routing, in one place: every request that belongs to a shopper (Decide, Track, DescribeShopper, a session
//! copy for a store edge) or to a store (its assist events' ordering) runs at the owner of its [`Key`] through the
//! same loop, on both sides.
//!
//! The sender ([`Router::at_owner`], [`Router::run`]):
//! 1. resolve the owner under this node's current view;
//! 2. this node: wait for the hand-off barrier (a shopper newly owned here may still have its session on the way;
//!    stores have no barrier), then run the request here;
//! 3. another node: forward it with the view's epoch and fingerprint and what is left of the budget;
//! 4. classify the outcome ([`RemoteError`]): an answer; a refusal because the views differ or ownership moved
//!    (wait briefly for a newer view, re-resolve, retry once); an owner that cannot be reached; an invalid request
//!    (passed on); no budget left to forward.
//!
//! The owner ([`Router::receive`]): check that the sender's view is this node's and names this node the owner
//! (else FAILED_PRECONDITION, on which the sender re-resolves), wait for the barrier, run the request here.
//!
//! What "no owner could serve" means is each request's own choice ([`AtOwner::unserved`]): Decide answers from
//! the fallback ladder; the others fail with UNAVAILABLE, or — Track — wait in the outbox.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{Cluster, Member, Route, SharedView, Unowned};
use crate::engine::decision::{Fallback, Reason, Stage};
use crate::error::{ApiError, RemoteError};

/// Attempts per request: the first, and one retry after a stale view.
const ATTEMPTS: usize = 2;
/// How long a request may wait for a newer view before its retry.
const VIEW_WAIT: Duration = Duration::from_millis(100);

/// What a request belongs to: its owner runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A shopper: their session lives at the owner (the hand-off barrier applies).
    Shopper(&'a str),
    /// A store: its owner orders the store's assist events.
    Store(&'a str),
}

impl Key<'_> {
    /// The key's owner under `view`.
    pub fn owner_in<'v>(&self, view: &'v SharedView) -> Option<&'v Member> {
        match *self {
            Key::Shopper(id) => view.shopper_owner(id),
            Key::Store(id) => view.store_owner(id),
        }
    }

    /// What the key names, in messages.
    pub fn what(&self) -> &'static str {
        match self {
            Key::Shopper(_) => "shopper",
            Key::Store(_) => "store",
        }
    }
}

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

impl From<ApiError> for LocalError {
    fn from(e: ApiError) -> Self {
        LocalError::Failed(e)
    }
}

/// A request that runs at its key's owner.
pub trait AtOwner: Sync {
    /// What it answers.
    type Output: Send;
    /// The RPC's name in `aisle_forwarded_total{rpc}`.
    const RPC: &'static str;

    /// What it belongs to.
    fn key(&self) -> Key<'_>;

    /// Until when it may wait for the hand-off barrier (by default, the deadline).
    fn barrier_deadline(&self, deadline: Instant) -> Instant {
        deadline
    }

    /// Runs it here, as the owner under `view` (the barrier has let it through).
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
    ) -> impl Future<Output = Result<Self::Output, RemoteError>> + Send;

    /// What the caller gets when no owner could serve it: by default UNAVAILABLE, saying why.
    fn unserved(
        &self,
        why: Fallback,
    ) -> impl Future<Output = Result<Self::Output, ApiError>> + Send {
        let what = self.key().what();
        async move {
            Err(ApiError::Unavailable(format!(
                "the {what}'s owner cannot be reached ({why}); retry"
            )))
        }
    }

    /// What the owner answers when the hand-off barrier kept the request out until its deadline: by default a
    /// refusal the sender re-resolves on (FAILED_PRECONDITION).
    fn pending_here(
        &self,
        why: Fallback,
    ) -> impl Future<Output = Result<Self::Output, ApiError>> + Send {
        async move { Err(ApiError::FailedPrecondition(why.to_string())) }
    }
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

/// The view a forwarded request was sent under, as its sender names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The sender's epoch (for messages).
    pub epoch: u64,
    /// The fingerprint of the sender's view: it must be this node's.
    pub fingerprint: u64,
}

fn unowned(why: Unowned) -> Fallback {
    match why {
        Unowned::NotMember => Fallback::new(Stage::Membership, Reason::NotMember),
        Unowned::NoOwner => Fallback::new(Stage::Membership, Reason::NoOwner),
    }
}

/// Why a forward got no answer, as a decision's fallback.
fn forward_fallback(error: RemoteError, owner: &Member, epoch: u64) -> Fallback {
    match error {
        RemoteError::Stale(refusal) => {
            Fallback::with_detail(Stage::Owner, Reason::StaleView, refusal)
        }
        RemoteError::NoBudget => Fallback::new(Stage::Owner, Reason::NoBudget),
        other => Fallback::with_detail(
            Stage::Owner,
            Reason::Unavailable,
            format!("{} at epoch {epoch}: {other}", owner.node_id),
        ),
    }
}

/// Runs requests at their owners.
#[derive(Debug, Clone, Copy)]
pub struct Router<'a> {
    cluster: &'a Cluster,
}

impl<'a> Router<'a> {
    /// A router over this node's cluster handle.
    pub fn new(cluster: &'a Cluster) -> Self {
        Self { cluster }
    }

    /// Runs `call` at its owner by `deadline`; when no owner can serve it, what [`AtOwner::unserved`] says.
    ///
    /// # Errors
    /// The request's own error (here or at the owner), or what `unserved` answers.
    pub async fn run<C: AtOwner>(
        &self,
        call: &C,
        deadline: Instant,
    ) -> Result<C::Output, ApiError> {
        match self.at_owner(call, deadline).await {
            Routed::Answered(answer) => Ok(answer),
            Routed::NoOwner(why) => call.unserved(why).await,
            Routed::Failed(e) => Err(e),
        }
    }

    /// Runs `call` at its owner by `deadline`, and says where it ended.
    pub async fn at_owner<C: AtOwner>(&self, call: &C, deadline: Instant) -> Routed<C::Output> {
        let barrier_until = call.barrier_deadline(deadline);
        let mut last = Fallback::new(Stage::Owner, Reason::StaleView);
        for attempt in 0..ATTEMPTS {
            let (view, owner) = match self.cluster.route(call.key()) {
                Route::Unowned(why) => return Routed::NoOwner(unowned(why)),
                Route::Local(view) => match self.here(call, &view, barrier_until).await {
                    Err(why) if Instant::now() < barrier_until => {
                        last = why;
                        continue;
                    }
                    Err(why) => return Routed::NoOwner(why),
                    Ok(routed) => return routed,
                },
                Route::Remote(view, owner) => (view, owner),
            };
            let outcome = call.remote(&view, &owner, deadline).await;
            let result = match &outcome {
                Ok(_) => "ok",
                Err(RemoteError::Stale(_)) => "stale",
                Err(RemoteError::Invalid(_)) => "invalid",
                Err(RemoteError::NoBudget) => "no_budget",
                Err(_) => "unreachable",
            };
            metrics::counter!("aisle_forwarded_total", "rpc" => C::RPC, "result" => result)
                .increment(1);
            match outcome {
                Ok(answer) => return Routed::Answered(answer),
                Err(RemoteError::Invalid(e)) => return Routed::Failed(e),
                Err(e @ RemoteError::Stale(_)) => {
                    last = forward_fallback(e, &owner, view.epoch);
                    if attempt + 1 < ATTEMPTS {
                        self.wait_for_newer_view(view.fingerprint, deadline).await;
                    }
                }
                Err(e) => return Routed::NoOwner(forward_fallback(e, &owner, view.epoch)),
            }
        }
        Routed::NoOwner(last)
    }

    /// The owner's side of a forwarded request: runs `call` here when `sender`'s view is this node's and names
    /// this node the owner of its key, once the hand-off barrier lets it through (by the call's barrier deadline
    /// for `deadline`).
    ///
    /// # Errors
    /// FAILED_PRECONDITION when the views differ or ownership moved (the sender re-resolves); what
    /// [`AtOwner::pending_here`] says when the barrier stayed closed; the request's own error.
    pub async fn receive<C: AtOwner>(
        &self,
        call: &C,
        sender: Sender,
        deadline: Instant,
    ) -> Result<C::Output, ApiError> {
        let view = self.owned_at(call.key(), sender)?;
        match self
            .here(call, &view, call.barrier_deadline(deadline))
            .await
        {
            Ok(Routed::Answered(answer)) => Ok(answer),
            Ok(Routed::Failed(e)) => Err(e),
            Ok(Routed::NoOwner(why)) | Err(why) => call.pending_here(why).await,
        }
    }

    /// This node's view, when it is `sender`'s and names this node the owner of `key`.
    ///
    /// # Errors
    /// FAILED_PRECONDITION naming what differs; the sender re-resolves on it.
    pub fn owned_at(&self, key: Key<'_>, sender: Sender) -> Result<SharedView, ApiError> {
        let view = self.same_view(sender)?;
        if key
            .owner_in(&view)
            .is_none_or(|m| m.node_id != self.cluster.node_id)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "not the owner of this {} under epoch {}",
                key.what(),
                view.epoch
            )));
        }
        Ok(view)
    }

    /// This node's view, when it is `sender`'s.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when this node has no view or another one.
    pub fn same_view(&self, sender: Sender) -> Result<SharedView, ApiError> {
        let Some(view) = self.cluster.current() else {
            return Err(ApiError::FailedPrecondition("not a cluster member".into()));
        };
        if view.fingerprint != sender.fingerprint {
            return Err(ApiError::FailedPrecondition(format!(
                "stale epoch: the sender's view (epoch {}) differs from this node's (epoch {})",
                sender.epoch, view.epoch
            )));
        }
        Ok(view)
    }

    /// Runs `call` here as the owner under `view`, once the hand-off barrier lets a shopper through (waiting at
    /// most until `barrier_until`). `Err`: why it cannot run here (barrier still closed, view changed, ownership
    /// moved); the caller re-resolves or falls back.
    async fn here<C: AtOwner>(
        &self,
        call: &C,
        view: &SharedView,
        barrier_until: Instant,
    ) -> Result<Routed<C::Output>, Fallback> {
        if let Key::Shopper(shopper) = call.key()
            && !self.cluster.ready_for(shopper, view, barrier_until).await
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

#[cfg(test)]
mod tests;
