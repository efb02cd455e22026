//! Test servers on 127.0.0.1:0: a health service that can stall, and canned Aisle services (DecisionService and
//! AssociateService) that count what they receive. Each server stops when its handle is dropped.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aisle_proto::v1::associate_service_server::{AssociateService, AssociateServiceServer};
use aisle_proto::v1::decision_service_server::{DecisionService, DecisionServiceServer};
use aisle_proto::v1::{
    AssistEvent, AssistKind, DecideRequest, DecideResponse, EventType, FallbackTier,
    SubscribeRequest, TrackRequest, TrackResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::{Stream, StreamExt as _, wrappers::BroadcastStream};
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A server running on a background task; dropped = shut down.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = rx.await;
                })
                .await
                .expect("test server");
        });
        Self {
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The standard health service (always SERVING).
pub async fn health_server() -> TestServer {
    let (_reporter, service) = tonic_health::server::health_reporter();
    TestServer::start(Server::builder().add_service(service)).await
}

/// A health service that holds every request arriving in `[first + from, first + to)` (times counted from the
/// first request it receives) for `hold`, and counts what arrives.
#[derive(Default)]
pub struct StallHealth {
    pub from: Duration,
    pub to: Duration,
    pub hold: Duration,
    pub first: Mutex<Option<Instant>>,
    pub received: AtomicU64,
    pub received_in_stall: AtomicU64,
}

/// The [`Health`] service of a [`StallHealth`].
pub struct Stalling(pub Arc<StallHealth>);

/// The [`Health`] service of a [`LoadSensitiveHealth`].
pub struct LoadSensitive(pub Arc<LoadSensitiveHealth>);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Stalling {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let now = Instant::now();
        let first = *self.0.first.lock().unwrap().get_or_insert(now);
        self.0.received.fetch_add(1, Ordering::SeqCst);
        let since = now - first;
        if since >= self.0.from && since < self.0.to {
            self.0.received_in_stall.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.0.hold).await;
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = ResponseStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

pub async fn stall_health_server(stall: Arc<StallHealth>) -> TestServer {
    TestServer::start(Server::builder().add_service(HealthServer::new(Stalling(stall)))).await
}

/// A health service that slows down (by `slow`) when more than `limit` requests arrived in the last 200 ms.
pub struct LoadSensitiveHealth {
    pub limit: usize,
    pub slow: Duration,
    arrivals: Mutex<VecDeque<Instant>>,
}

impl LoadSensitiveHealth {
    pub fn new(limit: usize, slow: Duration) -> Self {
        Self {
            limit,
            slow,
            arrivals: Mutex::new(VecDeque::new()),
        }
    }
}

#[tonic::async_trait]
impl Health for LoadSensitive {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let busy = {
            let now = Instant::now();
            let mut a = self.0.arrivals.lock().unwrap();
            a.push_back(now);
            while a
                .front()
                .is_some_and(|t| now - *t > Duration::from_millis(200))
            {
                a.pop_front();
            }
            a.len() > self.0.limit
        };
        if busy {
            tokio::time::sleep(self.0.slow).await;
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = ResponseStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

pub async fn load_sensitive_health_server(h: Arc<LoadSensitiveHealth>) -> TestServer {
    TestServer::start(Server::builder().add_service(HealthServer::new(LoadSensitive(h)))).await
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// What the canned Aisle server saw and answered.
#[derive(Default)]
pub struct AisleCounters {
    pub decides: u64,
    pub tracks: u64,
    pub events: u64,
    pub tiers: HashMap<&'static str, u64>,
    pub errors: HashMap<&'static str, u64>,
    /// Problems with requests (malformed, out of order, overlapping Tracks of one shopper).
    pub violations: Vec<String>,
    /// Shoppers with a Track in progress.
    busy: HashMap<String, ()>,
    /// session tag ("lt-N/sK") -> next batch expected.
    next_batch: HashMap<String, u32>,
    pub published: u64,
}

/// A canned DecisionService + AssociateService.
///
/// Decide number n (0-based): n % 10 == 9 → UNAVAILABLE; n % 25 == 12 → held past the client timeout;
/// otherwise tier [FRESH, CACHED, RULES, GENERIC][n % 4]. Track holds each batch `track_hold`, checks the
/// shopper's batches arrive one at a time and in order, and publishes an assist event to the store's subscribers
/// for every in-store ADD_TO_CART (source time 2 ms before receipt).
pub struct CannedAisle {
    pub counters: Mutex<AisleCounters>,
    pub decide_n: AtomicU64,
    pub track_hold: Duration,
    pub slow_hold: Duration,
    stores: Mutex<HashMap<String, broadcast::Sender<AssistEvent>>>,
}

impl CannedAisle {
    pub fn new(track_hold: Duration, slow_hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            counters: Mutex::new(AisleCounters::default()),
            decide_n: AtomicU64::new(0),
            track_hold,
            slow_hold,
            stores: Mutex::new(HashMap::new()),
        })
    }

    fn store(&self, store: &str) -> broadcast::Sender<AssistEvent> {
        self.stores
            .lock()
            .unwrap()
            .entry(store.to_string())
            .or_insert_with(|| broadcast::channel(4_096).0)
            .clone()
    }
}

#[derive(Clone)]
pub struct Canned(pub Arc<CannedAisle>);

#[tonic::async_trait]
impl DecisionService for Canned {
    async fn decide(
        &self,
        request: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        let r = request.into_inner();
        let n = self.0.decide_n.fetch_add(1, Ordering::SeqCst);
        {
            let mut c = self.0.counters.lock().unwrap();
            c.decides += 1;
            if r.limit != 10 || r.consent != Some(true) || r.shopper_id.is_empty() || r.surface == 0
            {
                c.violations.push(format!("malformed decide {r:?}"));
            }
        }
        if n % 10 == 9 {
            *self
                .0
                .counters
                .lock()
                .unwrap()
                .errors
                .entry("UNAVAILABLE")
                .or_default() += 1;
            return Err(Status::unavailable("canned failure"));
        }
        if n % 25 == 12 {
            *self
                .0
                .counters
                .lock()
                .unwrap()
                .errors
                .entry("DEADLINE_EXCEEDED")
                .or_default() += 1;
            tokio::time::sleep(self.0.slow_hold).await;
        }
        let tier = [
            FallbackTier::Fresh,
            FallbackTier::Cached,
            FallbackTier::Rules,
            FallbackTier::Generic,
        ][(n % 4) as usize];
        if n % 25 != 12 {
            let name = match tier {
                FallbackTier::Fresh => "FRESH",
                FallbackTier::Cached => "CACHED",
                FallbackTier::Rules => "RULES",
                _ => "GENERIC",
            };
            *self
                .0
                .counters
                .lock()
                .unwrap()
                .tiers
                .entry(name)
                .or_default() += 1;
        }
        Ok(Response::new(DecideResponse {
            fallback_tier: tier as i32,
            request_id: r.request_id,
            ..DecideResponse::default()
        }))
    }

    async fn track(
        &self,
        request: Request<TrackRequest>,
    ) -> Result<Response<TrackResponse>, Status> {
        let received_us = now_us();
        let r = request.into_inner();
        let shopper = r
            .events
            .first()
            .map(|e| e.shopper_id.clone())
            .unwrap_or_default();
        {
            let mut guard = self.0.counters.lock().unwrap();
            let c = &mut *guard;
            c.tracks += 1;
            if r.events.is_empty() || r.events.iter().any(|e| e.shopper_id != shopper) {
                c.violations
                    .push(format!("batch {} mixes shoppers", r.request_id));
            }
            if c.busy.insert(shopper.clone(), ()).is_some() {
                c.violations
                    .push(format!("{shopper} has two Tracks in flight"));
            }
            match r.request_id.rsplit_once("/b") {
                Some((session, batch)) => {
                    let batch: u32 = batch.parse().unwrap_or(u32::MAX);
                    let expected = c.next_batch.entry(session.to_string()).or_insert(0);
                    if *expected != batch {
                        let msg = format!("{session}: batch {batch} arrived, {expected} expected");
                        c.violations.push(msg);
                    }
                    *expected = batch + 1;
                }
                None => c
                    .violations
                    .push(format!("bad request id {}", r.request_id)),
            }
        }
        tokio::time::sleep(self.0.track_hold).await;
        let mut published = 0;
        for e in &r.events {
            if e.r#type() == EventType::AddToCart && !e.store_id.is_empty() {
                let event = AssistEvent {
                    store_id: e.store_id.clone(),
                    kind: AssistKind::HighIntentCart as i32,
                    source_received_at_us: received_us - 2_000,
                    ..AssistEvent::default()
                };
                if self.0.store(&e.store_id).send(event).is_ok() {
                    published += 1;
                }
            }
        }
        let mut c = self.0.counters.lock().unwrap();
        c.busy.remove(&shopper);
        c.events += r.events.len() as u64;
        c.published += published;
        Ok(Response::new(TrackResponse {
            accepted: r.events.len() as u32,
            unknown_items: 0,
            served_by: "canned".into(),
            ..TrackResponse::default()
        }))
    }
}

#[tonic::async_trait]
impl AssociateService for Canned {
    type SubscribeStream = ResponseStream<AssistEvent>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        if r.store_id.is_empty() {
            return Err(Status::invalid_argument("store_id"));
        }
        let rx = self.0.store(&r.store_id).subscribe();
        let stream = BroadcastStream::new(rx).filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}

pub async fn aisle_server(aisle: Arc<CannedAisle>) -> TestServer {
    let (_reporter, health) = tonic_health::server::health_reporter();
    TestServer::start(
        Server::builder()
            .add_service(health)
            .add_service(DecisionServiceServer::new(Canned(aisle.clone())))
            .add_service(AssociateServiceServer::new(Canned(aisle))),
    )
    .await
}

/// The canned DecisionService alone: no health service.
pub async fn decision_only_server(aisle: Arc<CannedAisle>) -> TestServer {
    TestServer::start(Server::builder().add_service(DecisionServiceServer::new(Canned(aisle))))
        .await
}
