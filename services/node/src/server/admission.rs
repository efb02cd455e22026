//! Admission control for the whole gRPC server: beyond `max_inflight_requests` requests in flight, a request is
//! answered at once with RESOURCE_EXHAUSTED instead of queueing — under overload the node answers fast rather
//! than slowly, and clients can retry elsewhere. Also keeps the `aisle_inflight_requests` gauge.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use metrics::Gauge;
use tonic::Status;
use tower::{Layer, Service};

/// The layer; 0 means no limit (the gauge is still kept).
#[derive(Debug, Clone)]
pub(super) struct AdmissionLayer {
    limit: usize,
    inflight: Arc<AtomicUsize>,
    /// The `aisle_inflight_requests` handle, registered once: every request sets it twice, and a lookup by name
    /// builds and hashes the key each time.
    gauge: Gauge,
}

impl AdmissionLayer {
    /// A layer admitting at most `limit` requests at once (0: unlimited). Make it after the metrics recorder is
    /// installed: the gauge's handle is taken here.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            inflight: Arc::new(AtomicUsize::new(0)),
            gauge: metrics::gauge!("aisle_inflight_requests"),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            limit: self.limit,
            inflight: self.inflight.clone(),
            gauge: self.gauge.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub(super) struct Admission<S> {
    inner: S,
    limit: usize,
    inflight: Arc<AtomicUsize>,
    gauge: Gauge,
}

struct Inflight(Arc<AtomicUsize>, Gauge);

impl Drop for Inflight {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        self.1.set(now as f64);
    }
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let now = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = Inflight(self.inflight.clone(), self.gauge.clone());
        // Health checks are always admitted: an overloaded node is still alive.
        let is_health = req.uri().path().starts_with("/grpc.health.v1.");
        if self.limit > 0 && now > self.limit && !is_health {
            drop(guard);
            metrics::counter!("aisle_shed_requests_total").increment(1);
            let status = Status::resource_exhausted(format!(
                "node overloaded: {} requests in flight (limit {}); retry with backoff",
                now - 1,
                self.limit
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        self.gauge.set(now as f64);
        // The clone that was polled ready serves this call; the fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await;
            drop(guard);
            response
        })
    }
}
