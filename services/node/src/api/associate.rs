//! `aisle.v1.AssociateService`: the push stream of assist events for a store, for associates' handhelds (scope
//! `subscribe`, optionally limited to some stores). Streams are capped in total and per caller; a node shutting
//! down ends them so that handhelds resume on another node after their last sequence.

use std::pin::Pin;
use std::sync::Arc;

use aisle_proto::v1 as pb;
use aisle_proto::v1::associate_service_server::AssociateService;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::node::Node;
use crate::push::hub::{PushHub, Subscription};
use crate::security::auth::Identity;
use crate::security::fair::{Slot, StreamSlots};
use crate::shopper::validate;

/// Events buffered per subscriber between the hub and the connection.
const STREAM_BUFFER: usize = 256;

/// The Associate service.
#[derive(Debug, Clone)]
pub struct AssociateApi {
    hub: Arc<PushHub>,
    slots: Arc<StreamSlots>,
    /// Turns true when the node shuts down: open streams end so handhelds reconnect to another node.
    shutdown: watch::Receiver<bool>,
}

impl AssociateApi {
    /// A service over the node's hub, with its stream caps.
    pub fn new(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> Self {
        let config = &node.config;
        Self {
            hub: node.push.hub.clone(),
            slots: Arc::new(StreamSlots::new(
                "max_subscribe_streams",
                config.max_subscribe_streams,
                config.max_subscribe_streams_per_caller,
            )),
            shutdown,
        }
    }
}

/// Keeps the subscriber gauge true however the stream ends.
struct Subscribed;

impl Subscribed {
    fn new() -> Self {
        metrics::gauge!("aisle_subscribers").increment(1.0);
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        metrics::gauge!("aisle_subscribers").decrement(1.0);
    }
}

/// Forwards a subscription to the client: replay, then live events, in sequence order, each once.
async fn forward(
    sub: Subscription,
    kinds: Vec<i32>,
    tx: mpsc::Sender<Result<pb::AssistEvent, Status>>,
    mut shutdown: watch::Receiver<bool>,
    slot: Slot,
    caller: Identity,
) {
    let revoked = caller.revoked();
    tokio::pin!(revoked);
    let _subscribed = Subscribed::new();
    let _slot = slot;
    let wanted = |e: &pb::AssistEvent| kinds.is_empty() || kinds.contains(&e.kind);
    let Subscription {
        replay, live, log, ..
    } = sub;
    let mut live = live;
    let mut last = 0u64;
    for e in replay {
        last = e.sequence;
        if wanted(&e) && tx.send(Ok((*e).clone())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(e) => {
                    if e.sequence <= last {
                        continue;
                    }
                    last = e.sequence;
                    if wanted(&e) && tx.send(Ok((*e).clone())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Catch up from the retained log; if what we missed is gone, say so.
                    let (missed, gap) = log.since(last);
                    if gap {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "subscriber fell behind the retention window; resume after sequence {last}"
                            ))))
                            .await;
                        return;
                    }
                    for e in missed {
                        last = e.sequence;
                        if wanted(&e) && tx.send(Ok((*e).clone())).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            () = &mut revoked => {
                tracing::info!(caller = %caller.name, "subscribe stream ended: credential revoked");
                let _ = tx
                    .send(Err(Status::unauthenticated("credential revoked or changed in the token file")))
                    .await;
                return;
            }
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "node shutting down; reconnect with resume_after = {last}"
                    ))))
                    .await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl AssociateService for AssociateApi {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::AssistEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Identity::of(&request);
        let req = request.into_inner();
        if req.store_id.is_empty() {
            return Err(ApiError::invalid("store_id", "required").into());
        }
        validate::id(|| "store_id".into(), &req.store_id, true)?;
        validate::id(|| "associate_id".into(), &req.associate_id, false)?;
        for (i, k) in req.kinds.iter().enumerate() {
            if pb::AssistKind::try_from(*k).is_err() || *k == 0 {
                return Err(ApiError::invalid(
                    format!("kinds[{i}]"),
                    format!("unknown assist kind {k}"),
                )
                .into());
            }
        }
        if !caller.may_subscribe(&req.store_id) {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not subscribe to store {:?}",
                caller.name, req.store_id
            ))
            .into());
        }
        let slot = self.slots.take(&caller.name)?;
        let sub = self.hub.subscribe(&req.store_id, req.resume_after);
        tracing::info!(store = %req.store_id, associate = %req.associate_id, resume_after = ?req.resume_after,
            replay = sub.replay.len(), gap = sub.gap, "handheld subscribed");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(forward(
            sub,
            req.kinds,
            tx,
            self.shutdown.clone(),
            slot,
            caller,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
