//! Prometheus metrics: every name is prefixed `aisle_`. The recorder is process-wide (the `metrics` facade has
//! one global recorder), installed by the first node started in the process.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `aisle_decide_latency_seconds` | histogram | surface, tier | server time of a Decide |
//! | `aisle_decisions_total` | counter | surface, tier | decisions made |
//! | `aisle_fallbacks_total` | counter | stage, reason | why a decision left a rung |
//! | `aisle_policy_exclusions_total` | counter | reason | items (or offers) kept from shoppers |
//! | `aisle_experiment_exposures_total` | counter | experiment, variant | decisions per variant |
//! | `aisle_holdout_decisions_total` | counter | | decisions for shoppers in the global holdout |
//! | `aisle_model_decisions_total` | counter | model | FRESH decisions per model version (canary comparison) |
//! | `aisle_active_sessions` | gauge | | sessions held |
//! | `aisle_track_events_total` | counter | type | events applied |
//! | `aisle_track_rejected_total` | counter | | Track batches refused as invalid |
//! | `aisle_subscribers` | gauge | | open Subscribe streams |
//! | `aisle_assist_events_total` | counter | kind | assist events published |
//! | `aisle_bundle_loads_total`, `aisle_bundle_refused_total` | counter | kind | bundle swaps and refusals |
//! | `aisle_inflight_requests` | gauge | | gRPC requests being handled |
//! | `aisle_shed_requests_total` | counter | | requests refused with RESOURCE_EXHAUSTED |
//! | `aisle_log_records_dropped_total` | counter | log | decision or event records dropped because a log lagged |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: fine below 10 ms, where Aisle's targets are.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding application): then our handle
            // renders nothing new, which is still safe.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Registers descriptions so `/metrics` documents itself.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "aisle_decide_latency_seconds",
        metrics::Unit::Seconds,
        "server time of a Decide"
    );
    describe_counter!(
        "aisle_decisions_total",
        "decisions made, by surface and fallback tier"
    );
    describe_counter!(
        "aisle_fallbacks_total",
        "decisions that left a rung, by stage and reason"
    );
    describe_counter!(
        "aisle_policy_exclusions_total",
        "items or offers kept from shoppers, by reason code"
    );
    describe_counter!(
        "aisle_experiment_exposures_total",
        "decisions per experiment variant"
    );
    describe_counter!(
        "aisle_holdout_decisions_total",
        "decisions for shoppers in the global holdout"
    );
    describe_counter!(
        "aisle_model_decisions_total",
        "FRESH decisions per model version"
    );
    describe_gauge!("aisle_active_sessions", "sessions held in memory");
    describe_counter!(
        "aisle_track_events_total",
        "shopper events applied, by type"
    );
    describe_counter!(
        "aisle_track_rejected_total",
        "Track batches refused as invalid"
    );
    describe_gauge!("aisle_subscribers", "open Subscribe streams");
    describe_counter!(
        "aisle_assist_events_total",
        "assist events published, by kind"
    );
    describe_gauge!("aisle_inflight_requests", "gRPC requests being handled");
    describe_counter!(
        "aisle_shed_requests_total",
        "requests refused with RESOURCE_EXHAUSTED under overload"
    );
    describe_counter!(
        "aisle_log_records_dropped_total",
        "decision or event records dropped because a log lagged"
    );
}
