//! Associates' handhelds: `AssociateService/Subscribe` streams, one per store, recording how long each assist
//! event took from the shopper event that caused it (`source_received_at_us`, server clock) to its receipt here
//! (same machine, so the same clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aisle_proto::v1::SubscribeRequest;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::scenario::decide::store_id;
use crate::stats::{DeliveryData, DeliveryStats, code_name};
use crate::target::{CONNECT_TIMEOUT, Target};

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Open `Subscribe` streams and what they received.
#[derive(Debug)]
pub struct Subscribers {
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<DeliveryStats>,
    recording: Arc<AtomicBool>,
}

impl Subscribers {
    /// Opens one stream per store `store-1..=store-{handhelds}` over the target's connections (round-robin).
    /// Events are counted only while [`Subscribers::set_recording`] is on.
    pub async fn open(target: &Target, handhelds: usize) -> Result<Self, Error> {
        let stats = Arc::new(DeliveryStats::default());
        let recording = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(handhelds);
        for i in 0..handhelds {
            let store = store_id(i as u64 + 1);
            let mut client = AssociateServiceClient::new(target.channel(i as u64));
            let request = SubscribeRequest {
                store_id: store.clone(),
                associate_id: format!("loadtest-{}", i + 1),
                kinds: Vec::new(),
                resume_after: None,
            };
            let mut request = tonic::Request::new(request);
            target.authorize(&mut request);
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, client.subscribe(request))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(
                        "no response headers within the connect timeout",
                    ))
                });
            let mut stream = match opened {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    for t in &tasks {
                        JoinHandle::abort(t);
                    }
                    return Err(Error::Subscribe {
                        target: target.url().to_string(),
                        store,
                        status: Box::new(status),
                    });
                }
            };
            let stats = stats.clone();
            let recording = recording.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            let received = now_unix_us();
                            if recording.load(Ordering::Relaxed) {
                                stats.record(event.kind(), event.source_received_at_us, received);
                            }
                        }
                        Ok(None) => {
                            stats.record_stream_error("STREAM_ENDED");
                            break;
                        }
                        Err(status) => {
                            stats.record_stream_error(code_name(status.code()));
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Self {
            tasks,
            stats,
            recording,
        })
    }

    /// Starts or stops counting received events.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// The flag [`Subscribers::set_recording`] sets, for the scheduler to turn on when recording starts.
    pub fn recording_flag(&self) -> Arc<AtomicBool> {
        self.recording.clone()
    }

    /// What was received so far.
    pub fn snapshot(&self) -> DeliveryData {
        self.stats.snapshot()
    }

    /// Stops recording, closes the streams and returns what was received.
    pub fn close(self) -> DeliveryData {
        self.set_recording(false);
        for t in &self.tasks {
            t.abort();
        }
        self.stats.snapshot()
    }
}
