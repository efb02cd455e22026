//! A copy of a shopper's session for a store edge, taken at their owner: the edge serves the shopper in the store
//! from it, while the owner keeps the session of record.

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
}

impl AtOwner for FetchSessionCall<'_> {
    type Output = pb::FetchSessionResponse;
    const RPC: &'static str = "fetch_session";

    fn key(&self) -> Key<'_> {
        Key::Shopper(self.shopper_id)
    }

    async fn local(&self, _view: &SharedView) -> Result<Self::Output, LocalError> {
        let node = self.node;
        let session = node
            .shoppers
            .sessions
            .snapshot_now(self.shopper_id)
            .map(|context| {
                let catalog = node.bundles.world().catalog.clone();
                serde_json::to_vec(&context.to_portable(&catalog)).expect("sessions serialise")
            })
            .unwrap_or_default();
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
        let call = owner_request(self.node, self.shopper_id, view, deadline);
        let mut client = self.node.cluster.peers.client(&owner.addr)?;
        Ok(client.fetch_session(call).await?.into_inner())
    }
}

/// A copy of the shopper's session from their owner (empty when they have none).
///
/// # Errors
/// UNAVAILABLE when no owner can be reached (the message says why); the owner's error otherwise.
pub async fn fetch(node: &Node, shopper_id: &str) -> Result<pb::FetchSessionResponse, ApiError> {
    let call = FetchSessionCall { node, shopper_id };
    Router::new(&node.cluster)
        .run(&call, Instant::now() + FETCH_CALL)
        .await
}
