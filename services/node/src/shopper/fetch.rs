//! A copy of a shopper's session for a store edge, taken at their owner: the edge serves the shopper in the store
//! from it, while the owner keeps the session of record.
//!
//! An edge reaches only its store: the owner hands out a copy only when its session of record places the shopper
//! in the asking edge's store (their store entry, or another event at that store, reached the cloud — the edge
//! uploads it before it asks). Any other shopper, and one the cloud holds nothing of, is PERMISSION_DENIED.

use aisle_proto::v1 as pb;
use tokio::time::Instant;

use super::owner_request;
use crate::cluster::{AtOwner, Key, LocalError, Member, Router, SharedView};
use crate::error::{ApiError, RemoteError};
use crate::node::Node;

/// How long the owner may take to hand out a session copy.
const FETCH_CALL: std::time::Duration = std::time::Duration::from_secs(2);

/// A copy of a shopper's session, at their owner.
pub struct FetchSessionCall<'a> {
    /// The node.
    pub node: &'a Node,
    /// The shopper.
    pub shopper_id: &'a str,
    /// The store whose edge asks.
    pub store_id: &'a str,
}

impl AtOwner for FetchSessionCall<'_> {
    type Output = pb::FetchSessionResponse;
    const RPC: &'static str = "fetch_session";

    fn key(&self) -> Key<'_> {
        Key::Shopper(self.shopper_id)
    }

    async fn local(&self, _view: &SharedView) -> Result<Self::Output, LocalError> {
        let node = self.node;
        let context = node
            .shoppers
            .sessions
            .snapshot_now(self.shopper_id)
            .filter(|c| c.store_id() == Some(self.store_id))
            .ok_or_else(|| {
                LocalError::Failed(ApiError::PermissionDenied(
                    "shopper_id: not in store_id's store by the events the cloud holds (upload the store entry \
                     first)"
                        .into(),
                ))
            })?;
        let catalog = node.bundles.world().catalog.clone();
        let session =
            serde_json::to_vec(&context.to_portable(&catalog)).expect("sessions serialise");
        Ok(pb::FetchSessionResponse {
            session,
            served_by: node.id().to_string(),
        })
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<Self::Output, RemoteError> {
        let mut call = owner_request(self.node, self.shopper_id, view, deadline);
        call.get_mut().store_id = self.store_id.to_string();
        let mut client = self.node.cluster.peers.client(&owner.addr)?;
        match client.fetch_session(call).await {
            Ok(answer) => Ok(answer.into_inner()),
            // The owner's refusal (not in the store) is the edge's answer, word for word, not a reason to look
            // elsewhere.
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                Err(RemoteError::Invalid(ApiError::Owner {
                    code: s.code(),
                    message: s.message().to_string(),
                }))
            }
            Err(s) => Err(s.into()),
        }
    }
}

/// A copy of the shopper's session from their owner, for the edge of `store_id`.
///
/// # Errors
/// PERMISSION_DENIED when the owner's session does not place the shopper in that store; UNAVAILABLE when no owner
/// can be reached (the message says why); the owner's error otherwise.
pub async fn fetch(
    node: &Node,
    shopper_id: &str,
    store_id: &str,
) -> Result<pb::FetchSessionResponse, ApiError> {
    let call = FetchSessionCall {
        node,
        shopper_id,
        store_id,
    };
    Router::new(&node.cluster)
        .run(&call, Instant::now() + FETCH_CALL)
        .await
}
