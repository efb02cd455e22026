//! Connections to the other nodes: one lazily connected tonic channel per peer address, and an ordered outbound
//! queue per peer for assist-event replication (one sender task per peer, so a store's events reach each replica
//! in sequence order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_client::PeerServiceClient;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::security::tls::{ClientTlsFiles, stamp};

/// Events queued per peer before replication to it starts dropping (it then catches up by fetching).
const REPLICATION_QUEUE: usize = 16_384;

/// Clients to peers, by address.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    replication: Mutex<HashMap<String, mpsc::Sender<pb::AssistEvent>>>,
    node_id: String,
    tls: Option<PeerTls>,
    max_message_bytes: usize,
}

/// Mutual TLS towards peers: the cluster CA and this node's certificate, re-read when the files change (new
/// channels then use the new files; open connections keep the certificate they were made with).
struct PeerTls {
    files: ClientTlsFiles,
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Plaintext clients for this node (tests and `--insecure` clusters).
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            max_message_bytes: 64 * 1024 * 1024,
            ..Default::default()
        }
    }

    /// Clients speaking mutual TLS with `files` when given, with messages of at most `max_message_bytes`.
    pub fn with_tls(
        node_id: &str,
        files: Option<ClientTlsFiles>,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            node_id: node_id.to_string(),
            tls: files.map(|files| PeerTls {
                seen: Mutex::new(files.paths().into_iter().map(stamp).collect()),
                files,
            }),
            max_message_bytes,
            ..Default::default()
        }
    }

    /// Drops every channel when the TLS files changed, so that new connections present the new certificate.
    pub fn reload_if_changed(&self) {
        let Some(tls) = &self.tls else { return };
        let now: Vec<_> = tls.files.paths().into_iter().map(stamp).collect();
        let changed = {
            let mut seen = tls.seen.lock().unwrap_or_else(|e| e.into_inner());
            let changed = *seen != now;
            *seen = now;
            changed
        };
        if changed {
            tracing::info!("peer TLS files changed: reconnecting to peers with them");
            self.channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// The channel to a peer, built outside any lock (an address that is not `host:port`, or unreadable TLS
    /// files, give an error instead).
    fn connect(&self, addr: &str) -> Result<Channel, Status> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Status::unavailable(format!("peer address {addr:?} is unusable: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            let config = tls
                .files
                .tonic_config(None)
                .map_err(|e| Status::unavailable(format!("peer TLS: {e:#}")))?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Status::unavailable(format!("peer TLS: {e}")))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// A client to the peer at `addr` (connects on first use; the channel reconnects by itself).
    ///
    /// # Errors
    /// UNAVAILABLE when `addr` is not a usable address or the TLS files cannot be read.
    pub fn client(&self, addr: &str) -> Result<PeerServiceClient<Channel>, Status> {
        let known = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        let channel = match known {
            Some(c) => c,
            None => {
                let fresh = self.connect(addr)?;
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(addr.to_string())
                    .or_insert(fresh)
                    .clone()
            }
        };
        Ok(PeerServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// Forgets the channel to `addr` (after the peer left or restarted).
    pub fn forget(&self, addr: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
        self.replication
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    /// Queues an assist event for replication to the peer at `addr`, in order.
    pub fn replicate(self: &Arc<Self>, addr: &str, event: pb::AssistEvent) {
        let known = self
            .replication
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        let tx = match known {
            Some(tx) => tx,
            None => {
                let client = match self.client(addr) {
                    Ok(c) => c,
                    Err(e) => {
                        metrics::counter!("aisle_assist_replication_dropped_total").increment(1);
                        tracing::warn!(peer = addr, error = %e.message(), "cannot replicate to peer");
                        return;
                    }
                };
                let mut queues = self.replication.lock().unwrap_or_else(|e| e.into_inner());
                queues
                    .entry(addr.to_string())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(REPLICATION_QUEUE);
                        tokio::spawn(replicate_to(client, self.node_id.clone(), rx));
                        tx
                    })
                    .clone()
            }
        };
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
