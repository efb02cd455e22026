//! What a run records: per request kind, successes, errors by gRPC code and latency (µs, HdrHistogram) from the
//! scheduled send time; per lane, how late the generator sent; for `Decide`, answers per fallback tier; for
//! `Track`, events accepted; for `Subscribe`, assist-event delivery latency.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use aisle_proto::v1::{AssistKind, FallbackTier};
use hdrhistogram::Histogram;

/// Highest latency the histograms track: one hour, in µs (longer values are clamped to it).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A latency histogram in µs: 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

/// Quantile `q` of `h` (0 when empty), capped at the exact maximum `max` (a histogram reports the top of a
/// value's bucket, which can exceed the largest value actually recorded).
pub fn clamped_quantile(h: &Histogram<u64>, q: f64, max: u64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q).min(max)
    }
}

/// Microseconds from `from` to `to` (0 when `to` is earlier).
pub fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

/// The request kinds a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `grpc.health.v1.Health/Check`.
    Health,
    /// `aisle.v1.DecisionService/Decide`.
    Decide,
    /// `aisle.v1.DecisionService/Track`.
    Track,
}

impl Kind {
    /// Lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Health => "health",
            Kind::Decide => "decide",
            Kind::Track => "track",
        }
    }
}

/// The canonical name of a gRPC status code, as in the gRPC spec (`DEADLINE_EXCEEDED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Report name of a fallback tier.
pub fn tier_name(tier: FallbackTier) -> &'static str {
    match tier {
        FallbackTier::Fresh => "FRESH",
        FallbackTier::Cached => "CACHED",
        FallbackTier::Rules => "RULES",
        FallbackTier::Generic => "GENERIC",
        FallbackTier::Unspecified => "UNSPECIFIED",
    }
}

/// Report name of an assist kind.
pub fn assist_kind_name(kind: AssistKind) -> &'static str {
    match kind {
        AssistKind::HighIntentCart => "HIGH_INTENT_CART",
        AssistKind::Lingering => "LINGERING",
        AssistKind::Replenish => "REPLENISH",
        AssistKind::Unspecified => "UNSPECIFIED",
    }
}

/// Outcomes and latency of one request kind.
#[derive(Debug, Clone)]
pub struct KindStats {
    /// Answered OK.
    pub ok: u64,
    /// Failed, by gRPC code name (a client-side timeout counts as `DEADLINE_EXCEEDED`).
    pub errors: BTreeMap<&'static str, u64>,
    /// Latency from the scheduled send time, µs, of OK answers and of timeouts (a timed-out request counts at
    /// the moment it was given up); other errors are counted but not timed.
    pub latency: Histogram<u64>,
    /// Exact largest latency, µs.
    pub max_us: u64,
}

impl Default for KindStats {
    fn default() -> Self {
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            latency: new_histogram(),
            max_us: 0,
        }
    }
}

impl KindStats {
    fn time(&mut self, us: u64) {
        self.latency.saturating_record(us.max(1));
        self.max_us = self.max_us.max(us);
    }

    /// Quantile `q` of the latency, µs (0 with no sample), never above the exact maximum.
    pub fn quantile_us(&self, q: f64) -> u64 {
        clamped_quantile(&self.latency, q, self.max_us)
    }

    /// All errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Everything recorded for one lane (the scenario, or the floor).
#[derive(Debug, Clone)]
pub struct LaneData {
    /// Requests sent.
    pub sent: u64,
    /// How late the generator sent each request after its due time, µs.
    pub send_lag: Histogram<u64>,
    /// Exact largest send lag, µs.
    pub send_lag_max_us: u64,
    /// Per request kind.
    pub kinds: BTreeMap<Kind, KindStats>,
    /// `Decide` answers per fallback tier.
    pub tiers: BTreeMap<&'static str, u64>,
    /// Events accepted by `Track`.
    pub tracked_events: u64,
    /// Of those, events naming items the server does not know.
    pub unknown_items: u64,
}

impl Default for LaneData {
    fn default() -> Self {
        Self {
            sent: 0,
            send_lag: new_histogram(),
            send_lag_max_us: 0,
            kinds: BTreeMap::new(),
            tiers: BTreeMap::new(),
            tracked_events: 0,
            unknown_items: 0,
        }
    }
}

impl LaneData {
    /// OK answers of every kind.
    pub fn ok(&self) -> u64 {
        self.kinds.values().map(|k| k.ok).sum()
    }

    /// Errors of every kind.
    pub fn errors(&self) -> u64 {
        self.kinds.values().map(KindStats::error_count).sum()
    }

    /// Errors of every kind by code.
    pub fn errors_by_code(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for k in self.kinds.values() {
            for (code, n) in &k.errors {
                *out.entry(*code).or_insert(0) += n;
            }
        }
        out
    }

    /// Latency of every kind together.
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for k in self.kinds.values() {
            h.add(&k.latency).expect("histograms share bounds");
        }
        h
    }

    /// Every kind merged into one.
    pub fn total(&self) -> KindStats {
        KindStats {
            ok: self.ok(),
            errors: self.errors_by_code(),
            latency: self.latency(),
            max_us: self.max_latency_us(),
        }
    }

    /// The stats of one kind (empty if none was sent).
    pub fn kind(&self, kind: Kind) -> KindStats {
        self.kinds.get(&kind).cloned().unwrap_or_default()
    }

    /// Quantile `q` of the latency of every kind, µs (0 with no sample).
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        clamped_quantile(&self.latency(), q, self.max_latency_us())
    }

    /// Quantile `q` of the send lag, µs.
    pub fn send_lag_quantile_us(&self, q: f64) -> u64 {
        clamped_quantile(&self.send_lag, q, self.send_lag_max_us)
    }

    /// Exact largest latency of every kind, µs.
    pub fn max_latency_us(&self) -> u64 {
        self.kinds.values().map(|k| k.max_us).max().unwrap_or(0)
    }

    /// Exact largest send lag, µs.
    pub fn send_lag_max_us(&self) -> u64 {
        self.send_lag_max_us
    }
}

/// The recorder of one lane, shared by the scheduler and the request tasks.
#[derive(Debug, Default)]
pub struct LaneStats {
    inner: Mutex<LaneData>,
}

impl LaneStats {
    fn lock(&self) -> MutexGuard<'_, LaneData> {
        // A panic in a recording task leaves plain counters behind: still worth reporting.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request due at `scheduled` left at `sent`.
    pub fn record_sent(&self, scheduled: Instant, sent: Instant) {
        let lag = micros_between(scheduled, sent);
        let mut d = self.lock();
        d.sent += 1;
        d.send_lag.saturating_record(lag.max(1));
        d.send_lag_max_us = d.send_lag_max_us.max(lag);
    }

    /// A request due at `scheduled` was answered OK at `done`.
    pub fn record_ok(&self, kind: Kind, scheduled: Instant, done: Instant) {
        let us = micros_between(scheduled, done);
        let mut d = self.lock();
        let k = d.kinds.entry(kind).or_default();
        k.ok += 1;
        k.time(us);
    }

    /// A `Decide` due at `scheduled` was answered OK at `done` from `tier`.
    pub fn record_decide(&self, scheduled: Instant, done: Instant, tier: FallbackTier) {
        let us = micros_between(scheduled, done);
        let mut d = self.lock();
        let k = d.kinds.entry(Kind::Decide).or_default();
        k.ok += 1;
        k.time(us);
        *d.tiers.entry(tier_name(tier)).or_insert(0) += 1;
    }

    /// A `Track` due at `scheduled` was answered OK at `done`, accepting `accepted` events.
    pub fn record_track(&self, scheduled: Instant, done: Instant, accepted: u32, unknown: u32) {
        let us = micros_between(scheduled, done);
        let mut d = self.lock();
        let k = d.kinds.entry(Kind::Track).or_default();
        k.ok += 1;
        k.time(us);
        d.tracked_events += u64::from(accepted);
        d.unknown_items += u64::from(unknown);
    }

    /// A request due at `scheduled` failed at `done` with `code`; timeouts are timed too.
    pub fn record_error(&self, kind: Kind, code: &'static str, scheduled: Instant, done: Instant) {
        let us = micros_between(scheduled, done);
        let mut d = self.lock();
        let k = d.kinds.entry(kind).or_default();
        *k.errors.entry(code).or_insert(0) += 1;
        if code == "DEADLINE_EXCEEDED" {
            k.time(us);
        }
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> LaneData {
        self.lock().clone()
    }

    /// Cheap figures for the progress line: (sent, ok, errors).
    pub fn counts(&self) -> (u64, u64, u64) {
        let d = self.lock();
        (d.sent, d.ok(), d.errors())
    }
}

/// Assist events received on `Subscribe` streams.
#[derive(Debug, Clone)]
pub struct DeliveryData {
    /// Events received (while recording).
    pub delivered: u64,
    /// By assist kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Receive time − `source_received_at_us`, µs (events without a source time are not timed).
    pub latency: Histogram<u64>,
    /// Exact largest delivery latency, µs.
    pub max_us: u64,
    /// Events whose source time was missing or later than their receipt (clock trouble).
    pub untimed: u64,
    /// Streams that ended with an error, by code.
    pub stream_errors: BTreeMap<&'static str, u64>,
}

impl DeliveryData {
    /// Quantile `q` of the delivery latency, µs (0 with no sample).
    pub fn quantile_us(&self, q: f64) -> u64 {
        clamped_quantile(&self.latency, q, self.max_us)
    }
}

impl Default for DeliveryData {
    fn default() -> Self {
        Self {
            delivered: 0,
            by_kind: BTreeMap::new(),
            latency: new_histogram(),
            max_us: 0,
            untimed: 0,
            stream_errors: BTreeMap::new(),
        }
    }
}

/// The recorder of assist-event deliveries, shared by the stream readers.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    inner: Mutex<DeliveryData>,
}

impl DeliveryStats {
    fn lock(&self) -> MutexGuard<'_, DeliveryData> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An event of `kind` caused at `source_us` (µs since the epoch, 0 if unknown) arrived at `received_us`.
    pub fn record(&self, kind: AssistKind, source_us: i64, received_us: i64) {
        let mut d = self.lock();
        d.delivered += 1;
        *d.by_kind.entry(assist_kind_name(kind)).or_insert(0) += 1;
        if source_us > 0 && received_us >= source_us {
            let us = (received_us - source_us) as u64;
            d.latency.saturating_record(us.max(1));
            d.max_us = d.max_us.max(us);
        } else {
            d.untimed += 1;
        }
    }

    /// A stream ended with `code`.
    pub fn record_stream_error(&self, code: &'static str) {
        *self.lock().stream_errors.entry(code).or_insert(0) += 1;
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> DeliveryData {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Latency runs from the due time, not from when the request actually left.
    #[test]
    fn latency_is_measured_from_the_scheduled_time() {
        let stats = LaneStats::default();
        let due = Instant::now();
        let sent = due + Duration::from_millis(50);
        let done = sent + Duration::from_millis(10);
        stats.record_sent(due, sent);
        stats.record_ok(Kind::Health, due, done);
        let d = stats.snapshot();
        assert_eq!(d.sent, 1);
        assert_eq!(d.ok(), 1);
        assert_eq!(d.max_latency_us(), 60_000);
        let p50 = d.latency_quantile_us(0.5);
        assert!((59_900..=60_100).contains(&p50), "{p50}");
        assert_eq!(d.send_lag_max_us(), 50_000);
    }

    #[test]
    fn errors_tiers_and_tracks_are_counted() {
        let stats = LaneStats::default();
        let t = Instant::now();
        let later = t + Duration::from_millis(2);
        stats.record_decide(t, later, FallbackTier::Fresh);
        stats.record_decide(t, later, FallbackTier::Fresh);
        stats.record_decide(t, later, FallbackTier::Generic);
        stats.record_track(t, later, 8, 1);
        stats.record_error(Kind::Decide, "UNAVAILABLE", t, later);
        stats.record_error(
            Kind::Track,
            "DEADLINE_EXCEEDED",
            t,
            t + Duration::from_secs(1),
        );
        let d = stats.snapshot();
        assert_eq!(d.ok(), 4);
        assert_eq!(d.errors(), 2);
        assert_eq!(d.tiers["FRESH"], 2);
        assert_eq!(d.tiers["GENERIC"], 1);
        assert_eq!((d.tracked_events, d.unknown_items), (8, 1));
        let by_code = d.errors_by_code();
        assert_eq!(
            (by_code["UNAVAILABLE"], by_code["DEADLINE_EXCEEDED"]),
            (1, 1)
        );
        // The timeout is timed, the fast failure is not.
        assert_eq!(d.kind(Kind::Track).latency.len(), 2);
        assert_eq!(d.kind(Kind::Decide).latency.len(), 3);
        assert_eq!(d.max_latency_us(), 1_000_000);
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(tier_name(FallbackTier::Cached), "CACHED");
        assert_eq!(
            assist_kind_name(AssistKind::HighIntentCart),
            "HIGH_INTENT_CART"
        );
    }

    #[test]
    fn delivery_latency_uses_the_source_time() {
        let stats = DeliveryStats::default();
        stats.record(AssistKind::Lingering, 1_000_000, 1_004_000);
        stats.record(AssistKind::Replenish, 0, 1_004_000);
        let d = stats.snapshot();
        assert_eq!(d.delivered, 2);
        assert_eq!(d.untimed, 1);
        assert_eq!(d.max_us, 4_000);
        assert_eq!(d.by_kind["LINGERING"], 1);
    }
}
