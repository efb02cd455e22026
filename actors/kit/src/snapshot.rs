//! Read-mostly state done once: an actor owns some state and is its only writer; it publishes an immutable
//! snapshot that readers take from an `ArcSwap` without a message or a lock, so no actor sits on the path of
//! every decision.
//!
//! [`Keeper`] is the general form: the owner applies typed changes ([`Owned::apply`]) one at a time and publishes
//! the snapshot each change produces (the node's world keeper — catalog and models — is one). [`Snapshot`] is the
//! common case of one versioned bundle replaced whole (rules, experiments): a replacement is parsed and validated
//! by the owner before it is published; an invalid bundle is refused with its reason, counted in
//! `aisle_bundle_refused_total{kind}`, and the last good one keeps serving.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use aisle_domain::bundle::{BundleError, BundleKind, BundleMeta};
use arc_swap::ArcSwap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// State owned by one actor, published to readers as immutable snapshots.
pub trait Owned: Send + 'static {
    /// What readers see.
    type Snapshot: Send + Sync + 'static;
    /// A change the owner applies.
    type Change: Send + 'static;
    /// What applying a change answers.
    type Outcome: Send + 'static;

    /// Applies a change; returns its outcome and, when the change took, the snapshot to publish.
    fn apply(
        &mut self,
        change: Self::Change,
    ) -> impl Future<Output = (Self::Outcome, Option<Self::Snapshot>)> + Send;
}

/// Messages of a [`KeeperActor`].
pub struct Change<S: Owned> {
    /// The change.
    pub change: S::Change,
    /// Its outcome.
    pub reply: RpcReplyPort<S::Outcome>,
}

/// The actor owning a state `S`.
pub struct KeeperActor<S>(PhantomData<fn() -> S>);

impl<S> Default for KeeperActor<S> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<S: Owned> Actor for KeeperActor<S> {
    type Msg = Change<S>;
    type State = (S, Arc<ArcSwap<S::Snapshot>>);
    type Arguments = (S, Arc<ArcSwap<S::Snapshot>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        (state, published): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (outcome, next) = state.apply(msg.change).await;
        if let Some(next) = next {
            published.store(Arc::new(next));
        }
        let _ = msg.reply.send(outcome);
        Ok(())
    }
}

/// The owner did not answer (stopped, or slower than the caller's timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("snapshot owner unavailable")]
pub struct OwnerUnavailable;

/// The typed handle of a [`KeeperActor`]: lock-free reads of the current snapshot, changes through the owner.
pub struct Keeper<S: Owned> {
    published: Arc<ArcSwap<S::Snapshot>>,
    owner: ActorRef<Change<S>>,
}

impl<S: Owned> Clone for Keeper<S> {
    fn clone(&self) -> Self {
        Self {
            published: self.published.clone(),
            owner: self.owner.clone(),
        }
    }
}

impl<S: Owned> std::fmt::Debug for Keeper<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}

impl<S: Owned> Keeper<S> {
    /// Starts the owner of `state`, publishing `initial`.
    ///
    /// # Errors
    /// When the actor cannot be spawned.
    pub async fn start(state: S, initial: S::Snapshot) -> Result<Self, ractor::SpawnErr> {
        let published = Arc::new(ArcSwap::from_pointee(initial));
        let (owner, _) = Actor::spawn(
            None,
            KeeperActor::<S>::default(),
            (state, published.clone()),
        )
        .await?;
        Ok(Self { published, owner })
    }

    /// The current snapshot. Lock-free; never waits for a change in progress.
    pub fn current(&self) -> Arc<S::Snapshot> {
        self.published.load_full()
    }

    /// Applies a change through the owner.
    ///
    /// # Errors
    /// [`OwnerUnavailable`] when the owner does not answer within `timeout`.
    pub async fn change(
        &self,
        change: S::Change,
        timeout: Duration,
    ) -> Result<S::Outcome, OwnerUnavailable> {
        match self
            .owner
            .call(|reply| Change { change, reply }, Some(timeout))
            .await
        {
            Ok(CallResult::Success(outcome)) => Ok(outcome),
            _ => Err(OwnerUnavailable),
        }
    }

    /// Stops the owner.
    pub fn stop(&self) {
        self.owner.stop(None);
    }
}

/// A bundle type an owner actor can load.
pub trait Versioned: Send + Sync + Sized + 'static {
    /// Which kind of bundle this is.
    const KIND: BundleKind;

    /// Parses and validates the bundle.
    ///
    /// # Errors
    /// When the bytes are not a valid bundle of this kind.
    fn parse(bytes: &[u8], source: &str) -> Result<Self, BundleError>;

    /// Its identity.
    fn meta(&self) -> &BundleMeta;
}

/// A new version of a bundle: its bytes and where they came from.
#[derive(Debug)]
pub struct Load {
    /// The bundle's bytes.
    pub bytes: Vec<u8>,
    /// Where they came from.
    pub source: String,
}

/// The owner state of one versioned bundle replaced whole: nothing beyond the published snapshot.
pub struct SnapshotOwner<T>(PhantomData<fn() -> T>);

impl<T: Versioned> Owned for SnapshotOwner<T> {
    type Snapshot = T;
    type Change = Load;
    type Outcome = Result<BundleMeta, BundleError>;

    async fn apply(&mut self, load: Load) -> (Self::Outcome, Option<T>) {
        match T::parse(&load.bytes, &load.source) {
            Ok(next) => {
                let meta = next.meta().clone();
                tracing::info!(kind = %T::KIND, version = %meta.version, source = %load.source, "bundle loaded");
                metrics::counter!("aisle_bundle_loads_total", "kind" => T::KIND.as_str())
                    .increment(1);
                (Ok(meta), Some(next))
            }
            Err(error) => {
                tracing::warn!(kind = %T::KIND, source = %load.source, %error, "bundle refused; the last good one keeps serving");
                metrics::counter!("aisle_bundle_refused_total", "kind" => T::KIND.as_str())
                    .increment(1);
                (Err(error), None)
            }
        }
    }
}

/// Why a load request did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bundle was refused.
    #[error(transparent)]
    Refused(BundleError),
    /// The owner actor did not answer.
    #[error("bundle owner unavailable")]
    Unavailable,
}

/// The typed handle of one versioned bundle: lock-free reads of the current version, loads through its owner.
pub struct Snapshot<T: Versioned>(Keeper<SnapshotOwner<T>>);

impl<T: Versioned> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Versioned> std::fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("kind", &T::KIND)
            .field("version", &self.current().meta().version)
            .finish()
    }
}

impl<T: Versioned> Snapshot<T> {
    /// Starts the owner actor, serving `initial`.
    ///
    /// # Errors
    /// When the actor cannot be spawned.
    pub async fn start(initial: T) -> Result<Self, ractor::SpawnErr> {
        Ok(Self(
            Keeper::start(SnapshotOwner(PhantomData), initial).await?,
        ))
    }

    /// The current version. Lock-free; never waits for a load in progress.
    pub fn current(&self) -> Arc<T> {
        self.0.current()
    }

    /// Loads a new version through the owner actor.
    ///
    /// # Errors
    /// [`LoadError::Refused`] with the reason when the bundle is invalid (the current version stays);
    /// [`LoadError::Unavailable`] when the owner does not answer within `timeout`.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        source: &str,
        timeout: Duration,
    ) -> Result<BundleMeta, LoadError> {
        let load = Load {
            bytes,
            source: source.to_string(),
        };
        match self.0.change(load, timeout).await {
            Ok(Ok(meta)) => Ok(meta),
            Ok(Err(e)) => Err(LoadError::Refused(e)),
            Err(OwnerUnavailable) => Err(LoadError::Unavailable),
        }
    }

    /// Stops the owner actor.
    pub fn stop(&self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Label(BundleMeta, String);

    impl Versioned for Label {
        const KIND: BundleKind = BundleKind::Rules;

        fn parse(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| BundleError::invalid(Self::KIND, e.to_string()))?;
            if text.is_empty() {
                return Err(BundleError::invalid(Self::KIND, "version: empty"));
            }
            Ok(Label(
                BundleMeta::computed(Self::KIND, 1, text, 0, bytes).with_source(source),
                text.to_string(),
            ))
        }

        fn meta(&self) -> &BundleMeta {
            &self.0
        }
    }

    #[tokio::test]
    async fn loads_publish_and_refusals_keep_the_last_good_version() {
        let s = Snapshot::start(Label::parse(b"v1", "init").unwrap())
            .await
            .unwrap();
        let reader = s.current();
        let meta = s
            .load(b"v2".to_vec(), "file", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(meta.version, "v2");
        assert_eq!(s.current().1, "v2");
        // A reader holding the old snapshot keeps a consistent view.
        assert_eq!(reader.1, "v1");
        let err = s
            .load(Vec::new(), "bad", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("version: empty"), "{err}");
        assert_eq!(s.current().1, "v2");
        s.stop();
    }
}
