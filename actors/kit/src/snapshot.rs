//! Read-mostly state done once: an actor owns one versioned bundle (rules, experiments, ...) and is the only
//! writer; readers take the current immutable snapshot from an `ArcSwap` without a message or a lock, so no actor
//! sits on the path of every decision.
//!
//! A replacement is parsed and validated by the actor before it is published: an invalid bundle is refused with
//! its reason, counted in `aisle_bundle_refused_total{kind}`, and the last good one keeps serving.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use aisle_domain::bundle::{BundleError, BundleKind, BundleMeta};
use arc_swap::ArcSwap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

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

/// Messages of a [`SnapshotOwner`].
pub enum OwnerMsg {
    /// Parse, validate and publish a new version.
    Load {
        /// The bundle's bytes.
        bytes: Vec<u8>,
        /// Where they came from.
        source: String,
        /// The new version's identity, or why it was refused.
        reply: RpcReplyPort<Result<BundleMeta, BundleError>>,
    },
}

/// The actor owning one bundle of type `T`.
pub struct SnapshotOwner<T>(PhantomData<fn() -> T>);

impl<T> Default for SnapshotOwner<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: Versioned> Actor for SnapshotOwner<T> {
    type Msg = OwnerMsg;
    type State = Arc<ArcSwap<T>>;
    type Arguments = Arc<ArcSwap<T>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        published: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(published)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        published: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let OwnerMsg::Load {
            bytes,
            source,
            reply,
        } = msg;
        let outcome = T::parse(&bytes, &source).map(|next| {
            let meta = next.meta().clone();
            published.store(Arc::new(next));
            meta
        });
        match &outcome {
            Ok(meta) => {
                tracing::info!(kind = %T::KIND, version = %meta.version, source = %source, "bundle loaded");
                metrics::counter!("aisle_bundle_loads_total", "kind" => T::KIND.as_str())
                    .increment(1);
            }
            Err(error) => {
                tracing::warn!(kind = %T::KIND, source = %source, %error, "bundle refused; the last good one keeps serving");
                metrics::counter!("aisle_bundle_refused_total", "kind" => T::KIND.as_str())
                    .increment(1);
            }
        }
        let _ = reply.send(outcome);
        Ok(())
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

/// The typed handle: lock-free reads of the current snapshot, loads through the owner actor.
pub struct Snapshot<T: Versioned> {
    published: Arc<ArcSwap<T>>,
    owner: ActorRef<OwnerMsg>,
}

impl<T: Versioned> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Self {
            published: self.published.clone(),
            owner: self.owner.clone(),
        }
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
        let published = Arc::new(ArcSwap::from_pointee(initial));
        let (owner, _) =
            Actor::spawn(None, SnapshotOwner::<T>::default(), published.clone()).await?;
        Ok(Self { published, owner })
    }

    /// The current version. Lock-free; never waits for a load in progress.
    pub fn current(&self) -> Arc<T> {
        self.published.load_full()
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
        let source = source.to_string();
        match self
            .owner
            .call(
                |reply| OwnerMsg::Load {
                    bytes,
                    source,
                    reply,
                },
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(Ok(meta))) => Ok(meta),
            Ok(CallResult::Success(Err(e))) => Err(LoadError::Refused(e)),
            _ => Err(LoadError::Unavailable),
        }
    }

    /// Stops the owner actor.
    pub fn stop(&self) {
        self.owner.stop(None);
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
