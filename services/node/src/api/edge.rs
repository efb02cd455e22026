//! `aisle.v1.EdgeService`: what store edge nodes ask of the cloud cluster. Served on the client port of cloud nodes;
//! every method needs the `edge` scope and names its store, which the caller must be allowed to act for (a token
//! per store, docs/security.md). See [`crate::edge`] for the edge's side.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use aisle_proto::v1 as pb;
use aisle_proto::v1::edge_service_server::EdgeService;
use aisle_session::Delivery;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::edge::feed;
use crate::engine::tombstones;
use crate::error::ApiError;
use crate::node::Node;
use crate::security::auth::Identity;
use crate::security::fair::StreamSlots;
use crate::shopper::deliver::{QueuedOutcome, apply_queued};
use crate::shopper::{fetch, shopper_id, validate};
/// Bundle kinds an edge may name as held.
const MAX_HELD: usize = 16;

/// Checks an edge's `store_id`: required, bounded, and one the caller may speak for.
fn store(identity: &Identity, store_id: &str) -> Result<(), ApiError> {
    if store_id.is_empty() {
        return Err(ApiError::required("store_id"));
    }
    validate::id(|| "store_id".into(), store_id, true)?;
    if !identity.may_act_for_store(store_id) {
        return Err(ApiError::PermissionDenied(format!(
            "{} may not act for store {store_id:?}",
            identity.name
        )));
    }
    Ok(())
}

/// The Edge service.
#[derive(Debug, Clone)]
pub struct EdgeApi {
    node: Arc<Node>,
    /// Open bundle feeds, under `max_edge_feeds` and `max_edge_feeds_per_caller`.
    feeds: Arc<StreamSlots>,
}

impl EdgeApi {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        let feeds = Arc::new(StreamSlots::new(
            "max_edge_feeds",
            node.config.max_edge_feeds,
            node.config.max_edge_feeds_per_caller,
        ));
        Self { node, feeds }
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl EdgeService for EdgeApi {
    type SyncBundlesStream = SyncStream;

    async fn sync_bundles(
        &self,
        request: Request<pb::SyncBundlesRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let identity = Identity::of(&request);
        let caller = identity.name.clone();
        let req = request.into_inner();
        store(&identity, &req.store_id)?;
        if req.held.len() > MAX_HELD {
            return Err(ApiError::invalid("held", format!("at most {MAX_HELD} bundles")).into());
        }
        if req.erasures_since_ms < 0 || tombstones::too_far_ahead(req.erasures_since_ms) {
            return Err(ApiError::invalid(
                "erasures_since_ms",
                "a time in ms since the epoch, not in the future",
            )
            .into());
        }
        // Each feed copies whole bundles: one identity may hold only a few at once.
        let slot = self.feeds.take(&caller)?;
        let held: BTreeMap<String, String> =
            req.held.into_iter().map(|h| (h.kind, h.digest)).collect();
        tracing::info!(target: "aisle::admin", %caller, store = %req.store_id, held = held.len(),
            "edge bundle feed opened");
        metrics::counter!("aisle_edge_feeds_opened_total").increment(1);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feed = feed::run(
            self.node.bundles.clone(),
            self.node.shoppers.tombstones.clone(),
            self.node.id().to_string(),
            held,
            req.erasures_since_ms,
            tx.clone(),
        );
        // The feed lasts as long as the edge's credential: a revoked token ends it within the reload interval.
        tokio::spawn(async move {
            // The feed's place is freed when it ends, however it ends.
            let _slot = slot;
            tokio::select! {
                () = feed => {}
                () = identity.revoked() => {
                    tracing::info!(target: "aisle::admin", caller = %identity.name, "edge bundle feed ended: credential revoked");
                    let _ = tx
                        .send(Err(Status::unauthenticated("credential revoked or changed in the token file")))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch_session(
        &self,
        request: Request<pb::FetchSessionRequest>,
    ) -> Result<Response<pb::FetchSessionResponse>, Status> {
        let identity = Identity::of(&request);
        let req = request.into_inner();
        store(&identity, &req.store_id)?;
        let shopper = shopper_id(&req.shopper_id)?;
        let answer = fetch::fetch(&self.node, shopper, &req.store_id).await;
        // Every session copy an edge asks for is in the trail: which edge, for which store, of whom (by pseudonym),
        // and whether it was handed out. A copy the trail cannot record is not handed out.
        let result = match &answer {
            Ok(_) => "copied",
            Err(e) if e.code() == tonic::Code::PermissionDenied => "refused",
            Err(_) => "failed",
        };
        let details = serde_json::json!({
            "store_id": req.store_id,
            "shopper_ref": self.node.shoppers.pseudonyms.of(shopper),
            "result": result,
        });
        self.node
            .logs
            .audit_action("edge_session_fetched", &identity.name, details)
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("the decision trail cannot record the copy: {e}"))
            })?;
        Ok(Response::new(answer?))
    }

    async fn upload(
        &self,
        request: Request<pb::UploadRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let identity = Identity::of(&request);
        let req = request.into_inner();
        store(&identity, &req.store_id)?;
        let delivery = req
            .delivery
            .as_ref()
            .ok_or_else(|| ApiError::required("delivery"))?;
        validate::id(|| "delivery.origin".into(), &delivery.origin, true)?;
        let track = req
            .request
            .as_ref()
            .ok_or_else(|| ApiError::required("request"))?;
        // An edge speaks for its store only: an event at another store is refused, and nothing of the upload is
        // applied. Events without a store (a web event passing through the store's node) are the edge's word.
        if let Some(i) = track
            .events
            .iter()
            .position(|e| !e.store_id.is_empty() && e.store_id != req.store_id)
        {
            return Err(ApiError::PermissionDenied(format!(
                "request.events[{i}].store_id: not the store this upload is for (store_id)"
            ))
            .into());
        }
        // The delivery origin is bound to the store: one store's edge cannot write into another's exactly-once
        // numbering.
        let origin = format!("{}@{}", delivery.origin, req.store_id);
        validate::id(|| "delivery.origin (with @store_id)".into(), &origin, true)?;
        let delivery = Delivery {
            origin: origin.into(),
            seq: delivery.seq,
        };
        match apply_queued(&self.node, track, req.received_at_us, delivery).await {
            QueuedOutcome::Applied(o) => Ok(Response::new(pb::TrackResponse {
                accepted: o.accepted as u32,
                unknown_items: o.unknown_items as u32,
                served_by: self.node.id().to_string(),
                queued: 0,
                duplicates: o.duplicates as u32,
            })),
            QueuedOutcome::Refused(e) => Err(e.into()),
            QueuedOutcome::Later(why) => Err(ApiError::Unavailable(format!(
                "the shopper's owner cannot take the events now ({why}); keep them and retry"
            ))
            .into()),
        }
    }
}
