//! The per-shopper use cases: what a node does for one shopper's request once it is authenticated, whichever API
//! it came through (a storefront, an operator, a peer, a store edge). Each runs at the shopper's owner through the
//! cluster's router; the adapters above (`api`) only turn protobuf into calls of these and back.
//!
//! | use case | what |
//! |---|---|
//! | [`decide`] | a decision at the owner, else from the fallback ladder here; recorded in the trail |
//! | [`track`] | a batch of events applied at each shopper's owner, or queued in the outbox |
//! | [`deliver`] | queued events delivered to their owners, once each, in order |
//! | [`describe`] | a data-subject access request: the session at the owner, everything else on every member |
//! | [`fetch`] | a copy of a session for a store edge |
//! | [`erase`] | ForgetShopper: on every member at once, tombstone first |
//! | [`validate`] | every field of a request checked before anything is applied |

pub mod decide;
pub mod deliver;
pub mod describe;
pub mod erase;
pub mod fetch;
pub mod track;
pub mod validate;

use std::time::Duration;

use aisle_proto::v1 as pb;
use tokio::time::Instant;

use crate::cluster::SharedView;
use crate::error::ApiError;
use crate::node::Node;

/// How long a describe or an erasure may take at the owner.
pub const SHOPPER_CALL: Duration = Duration::from_secs(5);

/// A shopper id given to an operator's or an edge's call: required, at most 256 bytes.
///
/// # Errors
/// INVALID_ARGUMENT naming `shopper_id`.
pub fn shopper_id(value: &str) -> Result<&str, ApiError> {
    if value.is_empty() {
        return Err(ApiError::required("shopper_id"));
    }
    validate::id(|| "shopper_id".into(), value, true)?;
    Ok(value)
}

/// A per-shopper request for the shopper's owner under `view`, due by `deadline` (describe, session copy).
fn owner_request(
    node: &Node,
    shopper_id: &str,
    view: &SharedView,
    deadline: Instant,
) -> tonic::Request<pb::ForwardDescribeRequest> {
    let mut call = tonic::Request::new(pb::ForwardDescribeRequest {
        shopper_id: shopper_id.to_string(),
        epoch: view.epoch,
        from_node: node.id().to_string(),
        view_fingerprint: view.fingerprint,
        store_id: String::new(),
    });
    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
    call
}
