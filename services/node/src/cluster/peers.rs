//! Connections to the other nodes: one lazily connected tonic channel per peer address, and an ordered outbound
//! queue per peer for assist-event replication (one sender task per peer, so a store's events reach each replica
//! in sequence order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_client::PeerServiceClient;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Events queued per peer before replication to it starts dropping (it then catches up by fetching).
const REPLICATION_QUEUE: usize = 16_384;

/// Clients to peers, by address.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    replication: Mutex<HashMap<String, mpsc::Sender<pb::AssistEvent>>>,
    node_id: String,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Clients for this node.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            ..Default::default()
        }
    }

    /// A client to the peer at `addr` (connects on first use; the channel reconnects by itself).
    pub fn client(&self, addr: &str) -> PeerServiceClient<Channel> {
        let mut channels = self.channels.lock().expect("peers lock");
        let channel = channels
            .entry(addr.to_string())
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("peer addresses are host:port")
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .connect_lazy()
            })
            .clone();
        PeerServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// Forgets the channel to `addr` (after the peer left or restarted).
    pub fn forget(&self, addr: &str) {
        self.channels.lock().expect("peers lock").remove(addr);
        self.replication.lock().expect("peers lock").remove(addr);
    }

    /// Queues an assist event for replication to the peer at `addr`, in order.
    pub fn replicate(self: &Arc<Self>, addr: &str, event: pb::AssistEvent) {
        let mut queues = self.replication.lock().expect("peers lock");
        let tx = queues.entry(addr.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(REPLICATION_QUEUE);
            tokio::spawn(replicate_to(self.client(addr), self.node_id.clone(), rx));
            tx
        });
        if tx.try_send(event).is_err() {
            metrics::counter!("aisle_assist_replication_dropped_total").increment(1);
        }
    }
}

/// Sends queued events to one peer in order, batching what is queued.
async fn replicate_to(
    mut client: PeerServiceClient<Channel>,
    node_id: String,
    mut rx: mpsc::Receiver<pb::AssistEvent>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        while events.len() < 256 {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let request = pb::ReplicateAssistRequest {
            events,
            from_node: node_id.clone(),
        };
        let mut call = tonic::Request::new(request);
        call.set_timeout(Duration::from_secs(2));
        if let Err(e) = client.replicate_assist(call).await {
            // The replica catches up by fetching from the orderer when it notices the gap.
            metrics::counter!("aisle_assist_replication_failed_total").increment(1);
            tracing::debug!(error = %e, "assist replication failed");
        }
    }
}
