//! `aisle.v1.AssociateService`: the push stream of assist events for a store.

use std::pin::Pin;
use std::sync::Arc;

use aisle_proto::v1 as pb;
use aisle_proto::v1::associate_service_server::AssociateService;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::push::{PushHub, Subscription};

/// Events buffered per subscriber between the hub and the connection.
const STREAM_BUFFER: usize = 256;

/// The Associate service.
#[derive(Debug, Clone)]
pub struct AssociateApi {
    hub: Arc<PushHub>,
    /// Turns true when the node shuts down: open streams end so handhelds reconnect to another node.
    shutdown: watch::Receiver<bool>,
}

impl AssociateApi {
    /// A service over the hub.
    pub fn new(hub: Arc<PushHub>, shutdown: watch::Receiver<bool>) -> Self {
        Self { hub, shutdown }
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
) {
    let _subscribed = Subscribed::new();
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
        let req = request.into_inner();
        if req.store_id.is_empty() {
            return Err(ApiError::invalid("store_id", "required").into());
        }
        if req.store_id.len() > aisle_domain::MAX_ID_BYTES {
            return Err(ApiError::invalid("store_id", "longer than 256 bytes").into());
        }
        if req.associate_id.len() > aisle_domain::MAX_ID_BYTES {
            return Err(ApiError::invalid("associate_id", "longer than 256 bytes").into());
        }
        for (i, k) in req.kinds.iter().enumerate() {
            if pb::AssistKind::try_from(*k).is_err() || *k == 0 {
                return Err(ApiError::invalid(
                    format!("kinds[{i}]"),
                    format!("unknown assist kind {k}"),
                )
                .into());
            }
        }
        let sub = self.hub.subscribe(&req.store_id, req.resume_after);
        tracing::info!(store = %req.store_id, associate = %req.associate_id, resume_after = ?req.resume_after,
            replay = sub.replay.len(), gap = sub.gap, "handheld subscribed");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(forward(sub, req.kinds, tx, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
