//! One run: the open-loop scheduler on its own thread hands each due request to a task on the async runtime,
//! which sends it on the next connection (round-robin) with the client timeout as gRPC deadline, and records the
//! outcome and the latency from the due time.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use aisle_proto::v1::{DecideRequest, TrackRequest};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::catalog::ItemUniverse;
use crate::error::Error;
use crate::node_cpu::{CpuMark, MetricsEndpoint};
use crate::report::RunReport;
use crate::scenario::Scenario;
use crate::scenario::decide::DecideGen;
use crate::scenario::mixed::{MixedConfig, MixedGen, MixedOp, Ticket, TrackOutcome};
use crate::schedule::{Lane, Schedule, SystemClock, Tick, drive};
use crate::stats::{Kind, LaneStats, code_name};
use crate::subscribe::Subscribers;
use crate::target::{Credentials, Target, authorize};

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Server URL (or `host:port`).
    pub target: String,
    /// TLS CA and bearer token for a secured node.
    pub credentials: Credentials,
    /// What to send.
    pub scenario: Scenario,
    /// Offered requests per second.
    pub rate: f64,
    /// Recorded time.
    pub duration: Duration,
    /// Unrecorded time at the same rate before it.
    pub warmup: Duration,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Client timeout per request, sent as the gRPC deadline.
    pub timeout: Duration,
    /// Seed of the request generators.
    pub seed: u64,
    /// Interleave health-check windows (the floor) with the scenario's.
    pub floor: bool,
    /// Length of each main or floor window.
    pub floor_window: Duration,
    /// Shopper population.
    pub shoppers: usize,
    /// Zipf exponent of shopper and item popularity.
    pub zipf_exponent: f64,
    /// Item universe size.
    pub items: usize,
    /// Events per `Track` (mixed, subscribe).
    pub events_per_track: usize,
    /// Concurrent shopper sessions (mixed, subscribe).
    pub sessions: usize,
    /// Stores of in-store sessions and decisions (mixed, decide); subscribe uses `handhelds`.
    pub stores: u64,
    /// Share of in-store sessions; default 0.15 for mixed, 0.7 for subscribe.
    pub in_store_share: Option<f64>,
    /// `Subscribe` streams (subscribe).
    pub handhelds: usize,
    /// Print a progress line on stderr about once a second.
    pub progress: bool,
    /// The node's Prometheus endpoint (`http://HOST:PORT/metrics`): when set, its `process_cpu_seconds_total` is
    /// read at both ends of the recorded window and the report gives the node's CPU per request.
    pub metrics_url: Option<String>,
    /// Set to stop early (Ctrl-C): no new request is sent, in-flight ones finish, and the report covers the
    /// time actually run.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:50051".into(),
            credentials: Credentials::default(),
            scenario: Scenario::Decide,
            rate: 100.0,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            connections: 4,
            timeout: Duration::from_secs(1),
            seed: 42,
            floor: false,
            floor_window: Duration::from_secs(1),
            shoppers: 100_000,
            zipf_exponent: 1.0,
            items: crate::catalog::DEMO_ITEMS,
            events_per_track: 8,
            sessions: 1_000,
            stores: 20,
            in_store_share: None,
            handhelds: 20,
            progress: false,
            metrics_url: None,
            stop: None,
        }
    }
}

impl RunConfig {
    /// Checks the figures before anything is sent.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("--rate must be a positive number");
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive");
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be positive");
        }
        if self.connections == 0 {
            return bad("--connections must be at least 1");
        }
        if self.shoppers == 0 || self.items == 0 {
            return bad("--shoppers and --items must be at least 1");
        }
        if self.events_per_track == 0 || self.events_per_track > 1_000 {
            return bad("--events-per-track must be within 1..=1000");
        }
        if self.sessions == 0 {
            return bad("--sessions must be at least 1");
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return bad("--zipf must be a number >= 0");
        }
        if let Some(s) = self.in_store_share
            && !(0.0..=1.0).contains(&s)
        {
            return bad("--in-store-share must be within 0..=1");
        }
        if self.scenario == Scenario::Subscribe && self.handhelds == 0 {
            return bad("--handhelds must be at least 1");
        }
        if self.floor && self.floor_window.is_zero() {
            return bad("--floor-window must be positive");
        }
        if let Some(url) = &self.metrics_url {
            MetricsEndpoint::parse(url)?;
        }
        let in_flight = self.rate * self.timeout.as_secs_f64();
        if in_flight > 1_000_000.0 {
            return bad("--rate × --timeout allows over a million requests in flight");
        }
        Ok(())
    }

    /// The metrics endpoint of `--metrics-url`, parsed.
    pub fn metrics_endpoint(&self) -> Result<Option<MetricsEndpoint>, Error> {
        self.metrics_url
            .as_deref()
            .map(MetricsEndpoint::parse)
            .transpose()
    }

    /// The floor window actually used: `floor_window`, shrunk so that the run holds at least two windows.
    pub fn effective_floor_window(&self) -> Option<Duration> {
        self.floor
            .then(|| self.floor_window.min(self.duration / 2))
            .filter(|w| !w.is_zero())
    }

    fn mixed_config(&self) -> MixedConfig {
        let subscribe = self.scenario == Scenario::Subscribe;
        MixedConfig {
            shoppers: self.shoppers,
            zipf_exponent: self.zipf_exponent,
            stores: if subscribe {
                self.handhelds as u64
            } else {
                self.stores
            },
            in_store_share: self
                .in_store_share
                .unwrap_or(if subscribe { 0.7 } else { 0.15 }),
            decide_share: 0.3,
            events_per_track: self.events_per_track,
            sessions: self.sessions,
            assist_heavy: subscribe,
        }
    }
}

/// Connects to the target and runs `config`.
pub async fn run(config: &RunConfig) -> Result<RunReport, Error> {
    config.validate()?;
    let target =
        Target::connect_with(&config.target, config.connections, &config.credentials).await?;
    check_target(&target, config).await?;
    run_on(&target, config).await
}

/// Probes a freshly connected target: it must answer gRPC, serve health checks when the run sends them, and
/// with `--metrics-url` serve `process_cpu_seconds_total` there.
pub async fn check_target(target: &Target, config: &RunConfig) -> Result<(), Error> {
    if let Some(endpoint) = config.metrics_endpoint()? {
        endpoint
            .cpu_seconds()
            .await
            .map_err(|detail| Error::Metrics {
                url: endpoint.url().to_string(),
                detail,
            })?;
    }
    let health = target
        .probe(config.timeout.max(Duration::from_secs(1)))
        .await?;
    if !health && (config.scenario == Scenario::Health || config.floor) {
        return Err(Error::MissingService {
            target: target.url().to_string(),
            service: "grpc.health.v1.Health",
            needed_by: if config.floor {
                "--floor"
            } else {
                "--scenario health"
            },
        });
    }
    Ok(())
}

/// What a scheduled request does.
#[derive(Debug)]
enum Op {
    Health,
    Decide(Box<DecideRequest>),
    Track {
        request: TrackRequest,
        ticket: Ticket,
    },
}

/// The request generator of the main lane.
#[derive(Debug)]
enum Workload {
    Health,
    Decide(Box<DecideGen>),
    Mixed(Arc<Mutex<MixedGen>>),
}

impl Workload {
    fn next(&mut self, seq: u64) -> Op {
        match self {
            Workload::Health => Op::Health,
            Workload::Decide(g) => Op::Decide(Box::new(g.next_request(seq))),
            Workload::Mixed(g) => match g
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_op(seq)
            {
                MixedOp::Track { ticket, request } => Op::Track { request, ticket },
                MixedOp::Decide(r) => Op::Decide(Box::new(r)),
            },
        }
    }
}

/// State shared by the scheduler and every request task.
#[derive(Debug)]
struct Shared {
    timeout: Duration,
    token: Option<tonic::metadata::AsciiMetadataValue>,
    main: LaneStats,
    floor: LaneStats,
    mixed: Option<Arc<Mutex<MixedGen>>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Shared {
    fn lane(&self, lane: Lane) -> &LaneStats {
        match lane {
            Lane::Main => &self.main,
            Lane::Floor => &self.floor,
        }
    }
}

/// Runs `config` over an already connected target (ramp reuses one across steps).
pub async fn run_on(target: &Target, config: &RunConfig) -> Result<RunReport, Error> {
    config.validate()?;
    let universe = Arc::new(ItemUniverse::new(config.items, config.zipf_exponent));
    let workload = match config.scenario {
        Scenario::Health => Workload::Health,
        Scenario::Decide => Workload::Decide(Box::new(DecideGen::new(
            universe,
            config.shoppers,
            config.zipf_exponent,
            config.stores,
            config.seed,
        ))),
        Scenario::Mixed | Scenario::Subscribe => Workload::Mixed(Arc::new(Mutex::new(
            MixedGen::new(config.mixed_config(), universe, config.seed),
        ))),
    };
    let subscribers = if config.scenario == Scenario::Subscribe {
        Some(Subscribers::open(target, config.handhelds).await?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        timeout: config.timeout,
        token: target.token(),
        main: LaneStats::default(),
        floor: LaneStats::default(),
        mixed: match &workload {
            Workload::Mixed(g) => Some(g.clone()),
            _ => None,
        },
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
    });
    let metrics = config.metrics_endpoint()?;
    // A short lead so the first request is not born late.
    let start = Instant::now() + Duration::from_millis(5);
    // The node's CPU time as the recorded window opens (after the warm-up, whose requests may still be going).
    let window_mark: Option<tokio::task::JoinHandle<Result<CpuMark, String>>> =
        metrics.clone().map(|m| {
            let opens = tokio::time::Instant::from_std(start + config.warmup);
            tokio::spawn(async move {
                tokio::time::sleep_until(opens).await;
                m.mark().await
            })
        });
    let schedule = Schedule::new(
        start,
        config.rate,
        config.warmup,
        config.duration,
        config.effective_floor_window(),
    );
    let handle = tokio::runtime::Handle::current();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let finished = Arc::new(AtomicBool::new(false));
    let progress = config.progress.then(|| {
        tokio::spawn(progress_loop(
            shared.clone(),
            start + config.warmup,
            config.duration,
            finished.clone(),
        ))
    });
    let recording = subscribers.as_ref().map(Subscribers::recording_flag);
    let stop = config.stop.clone();
    let scheduler = {
        let shared = shared.clone();
        let target = target.clone();
        let schedule = schedule.clone();
        tokio::task::spawn_blocking(move || {
            let mut workload = workload;
            drive(
                &SystemClock,
                &schedule,
                || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)),
                |tick| {
                    if tick.measured
                        && let Some(flag) = &recording
                    {
                        flag.store(true, Ordering::Relaxed);
                    }
                    let op = match tick.lane {
                        Lane::Main => workload.next(tick.index),
                        Lane::Floor => Op::Health,
                    };
                    let channel = target.channel(tick.index);
                    let shared = shared.clone();
                    let guard = done_tx.clone();
                    handle.spawn(async move {
                        execute(&shared, op, channel, tick).await;
                        drop(guard);
                    });
                },
            )
        })
    };
    let summary = scheduler
        .await
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    // Every request task holds a sender: when the last is dropped, every request has completed (each is bounded
    // by the client timeout).
    let _ = done_rx.recv().await;
    let node_cpu = match (metrics, window_mark) {
        (Some(m), Some(mark)) => {
            let completed = |l: &LaneStats| {
                let (_, ok, errors) = l.counts();
                ok + errors
            };
            let requests = completed(&shared.main) + completed(&shared.floor);
            Some(match mark.await {
                Ok(Ok(mark)) => m.since(mark, requests).await,
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("the scrape task failed: {e}")),
            })
        }
        _ => None,
    };
    let delivery = match subscribers {
        Some(s) => {
            // Assist events caused by the last batches are still on their way.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some(s.close())
        }
        None => None,
    };
    finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let recorded = schedule.recorded_after(summary.dispatched);
    let (sessions_peak, skipped_tracks) = match &shared.mixed {
        Some(g) => {
            let g = g.lock().unwrap_or_else(PoisonError::into_inner);
            (Some(g.sessions()), g.skipped_tracks())
        }
        None => (None, 0),
    };
    Ok(RunReport {
        scenario: config.scenario,
        target: target.url().to_string(),
        offered_rps: config.rate,
        duration: recorded,
        interrupted: summary.dispatched < schedule.count(),
        connections: target.connections(),
        timeout: config.timeout,
        main_time: schedule.lane_time_within(Lane::Main, recorded),
        main: shared.main.snapshot(),
        floor: config.effective_floor_window().map(|w| {
            (
                shared.floor.snapshot(),
                schedule.lane_time_within(Lane::Floor, recorded),
                w,
            )
        }),
        delivery,
        handhelds: (config.scenario == Scenario::Subscribe).then_some(config.handhelds),
        max_in_flight: shared.max_in_flight.load(Ordering::Relaxed),
        scheduler_lag_max: summary.max_dispatch_lag,
        sessions_peak,
        skipped_tracks,
        node_cpu,
    })
}

/// The answer of a successful call, reduced to what is recorded.
enum Answer {
    Health(ServingStatus),
    Decide(aisle_proto::v1::FallbackTier),
    Track { accepted: u32, unknown: u32 },
}

async fn call(
    op: Op,
    channel: Channel,
    timeout: Duration,
    token: Option<&tonic::metadata::AsciiMetadataValue>,
) -> Result<Answer, tonic::Status> {
    match op {
        Op::Health => {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(timeout);
            let response = HealthClient::new(channel).check(request).await?;
            Ok(Answer::Health(response.into_inner().status()))
        }
        Op::Decide(req) => {
            let mut request = tonic::Request::new(*req);
            request.set_timeout(timeout);
            authorize(&mut request, token);
            let response = DecisionServiceClient::new(channel).decide(request).await?;
            Ok(Answer::Decide(response.into_inner().fallback_tier()))
        }
        Op::Track { request: req, .. } => {
            let mut request = tonic::Request::new(req);
            request.set_timeout(timeout);
            authorize(&mut request, token);
            let response = DecisionServiceClient::new(channel)
                .track(request)
                .await?
                .into_inner();
            Ok(Answer::Track {
                accepted: response.accepted,
                unknown: response.unknown_items,
            })
        }
    }
}

/// Sends one request and records it in its lane (when the tick is measured).
async fn execute(shared: &Shared, op: Op, channel: Channel, tick: Tick) {
    let in_flight = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
    let stats = shared.lane(tick.lane);
    let kind = match &op {
        Op::Health => Kind::Health,
        Op::Decide(_) => Kind::Decide,
        Op::Track { .. } => Kind::Track,
    };
    let ticket = match &op {
        Op::Track { ticket, .. } => Some(*ticket),
        _ => None,
    };
    let sent = Instant::now();
    if tick.measured {
        stats.record_sent(tick.scheduled, sent);
    }
    let result = tokio::time::timeout(
        shared.timeout,
        call(op, channel, shared.timeout, shared.token.as_ref()),
    )
    .await;
    let done = Instant::now();
    let outcome = match result {
        Err(_elapsed) => Err("DEADLINE_EXCEEDED"),
        Ok(Err(status)) => Err(error_code(&status, done - sent, shared.timeout)),
        Ok(Ok(answer)) => Ok(answer),
    };
    if let (Some(ticket), Some(mixed)) = (ticket, &shared.mixed) {
        let track_outcome = if outcome.is_ok() {
            TrackOutcome::Applied
        } else {
            TrackOutcome::Failed
        };
        mixed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .complete(ticket, track_outcome);
    }
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    if !tick.measured {
        return;
    }
    match outcome {
        Err(code) => stats.record_error(kind, code, tick.scheduled, done),
        Ok(Answer::Health(ServingStatus::Serving)) => {
            stats.record_ok(Kind::Health, tick.scheduled, done);
        }
        Ok(Answer::Health(_)) => stats.record_error(kind, "NOT_SERVING", tick.scheduled, done),
        Ok(Answer::Decide(tier)) => stats.record_decide(tick.scheduled, done, tier),
        Ok(Answer::Track { accepted, unknown }) => {
            stats.record_track(tick.scheduled, done, accepted, unknown);
        }
    }
}

/// The code a failed call counts under: a tonic server whose deadline expired answers CANCELLED, which is our
/// timeout too.
pub fn error_code(status: &tonic::Status, elapsed: Duration, timeout: Duration) -> &'static str {
    if status.code() == tonic::Code::Cancelled
        && elapsed.as_secs_f64() >= 0.95 * timeout.as_secs_f64()
    {
        "DEADLINE_EXCEEDED"
    } else {
        code_name(status.code())
    }
}

/// Rewrites a one-line progress report on stderr about once a second.
async fn progress_loop(
    shared: Arc<Shared>,
    measured_from: Instant,
    duration: Duration,
    finished: Arc<AtomicBool>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_line_len: usize = 0;
    while !finished.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = Instant::now();
        let line = if now < measured_from {
            format!(
                "warming up … {:.0}s to go",
                (measured_from - now).as_secs_f64().ceil()
            )
        } else {
            let elapsed = (now - measured_from).min(duration).as_secs_f64();
            let d = shared.main.snapshot();
            let (fsent, fok, ferr) = shared.floor.counts();
            let mut line = format!(
                "[{elapsed:5.1}s/{:.1}s] sent {}  ok {}  err {}  in-flight {}  p99 {:.2} ms  send-lag p99 {:.2} ms",
                duration.as_secs_f64(),
                d.sent,
                d.ok(),
                d.errors(),
                shared.in_flight.load(Ordering::Relaxed),
                d.latency_quantile_us(0.99) as f64 / 1e3,
                d.send_lag_quantile_us(0.99) as f64 / 1e3,
            );
            if fsent > 0 {
                line.push_str(&format!("  | floor sent {fsent} ok {fok} err {ferr}"));
            }
            line
        };
        let pad = last_line_len.saturating_sub(line.len());
        last_line_len = line.len();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_at_the_deadline_is_a_timeout() {
        let t = Duration::from_secs(1);
        let cancelled = tonic::Status::cancelled("Timeout expired");
        assert_eq!(error_code(&cancelled, t, t), "DEADLINE_EXCEEDED");
        assert_eq!(error_code(&cancelled, t / 10, t), "CANCELLED");
        let unavailable = tonic::Status::unavailable("down");
        assert_eq!(error_code(&unavailable, t, t), "UNAVAILABLE");
    }

    #[test]
    fn bad_figures_are_refused() {
        let ok = RunConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            RunConfig {
                rate: 0.0,
                ..ok.clone()
            },
            RunConfig {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            RunConfig {
                connections: 0,
                ..ok.clone()
            },
            RunConfig {
                events_per_track: 0,
                ..ok.clone()
            },
            RunConfig {
                in_store_share: Some(1.5),
                ..ok.clone()
            },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.starts_with("invalid argument: "), "{err}");
        }
    }

    #[test]
    fn the_floor_window_fits_the_run() {
        let c = RunConfig {
            floor: true,
            duration: Duration::from_secs(1),
            ..RunConfig::default()
        };
        assert_eq!(c.effective_floor_window(), Some(Duration::from_millis(500)));
        let c = RunConfig { floor: false, ..c };
        assert_eq!(c.effective_floor_window(), None);
    }
}
