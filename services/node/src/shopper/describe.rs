//! DescribeShopper: what the owner holds about a shopper in their session, and what every member holds about them
//! elsewhere (logs, retained assist events, queued events) — the answer to a data-subject access request.

use aisle_domain::catalog::ItemIdx;
use aisle_proto::v1 as pb;
use aisle_session::SessionContext;
use tokio::time::Instant;

use super::{SHOPPER_CALL, erase, owner_request};
use crate::cluster::{AtOwner, Key, LocalError, Member, Router, SharedView};
use crate::error::{ApiError, RemoteError};
use crate::node::Node;

/// What an owner tells of a shopper's session.
fn describe_response(
    node: &Node,
    shopper_id: &str,
    session: Option<SessionContext>,
) -> pb::DescribeShopperResponse {
    let mut out = pb::DescribeShopperResponse {
        served_by: node.id().to_string(),
        shopper_ref: node.shoppers.pseudonyms.of(shopper_id),
        ..Default::default()
    };
    let Some(context) = session else {
        return out;
    };
    let catalog = node.bundles.world().catalog.clone();
    let view = context.view(&node.config.session_limits);
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
    out
}

/// A DescribeShopper at the shopper's owner.
pub struct DescribeCall<'a> {
    /// The node.
    pub node: &'a Node,
    /// The shopper.
    pub shopper_id: &'a str,
}

impl AtOwner for DescribeCall<'_> {
    type Output = pb::DescribeShopperResponse;
    const RPC: &'static str = "describe";

    fn key(&self) -> Key<'_> {
        Key::Shopper(self.shopper_id)
    }

    async fn local(&self, _view: &SharedView) -> Result<Self::Output, LocalError> {
        let session = self.node.shoppers.session(self.shopper_id).await?;
        Ok(describe_response(self.node, self.shopper_id, session))
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<Self::Output, RemoteError> {
        let call = owner_request(self.node, self.shopper_id, view, deadline);
        let mut client = self.node.cluster.peers.client(&owner.addr)?;
        Ok(client.forward_describe(call).await?.into_inner())
    }
}

/// What the shopper's owner holds in their session, and what every member holds about them elsewhere.
///
/// # Errors
/// UNAVAILABLE when no owner can be reached (the message says why); the owner's or this node's error otherwise.
pub async fn describe(
    node: &Node,
    shopper_id: &str,
) -> Result<pb::DescribeShopperResponse, ApiError> {
    let call = DescribeCall { node, shopper_id };
    let mut r = Router::new(&node.cluster)
        .run(&call, Instant::now() + SHOPPER_CALL)
        .await?;
    r.held = erase::held_everywhere(node, shopper_id).await;
    Ok(r)
}
