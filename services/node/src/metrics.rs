//! Prometheus metrics: every name is prefixed `aisle_`. The recorder is process-wide (the `metrics` facade has
//! one global recorder), installed by the first node started in the process.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `aisle_decide_latency_seconds` | histogram | surface, tier | server time of a Decide |
//! | `aisle_decisions_total` | counter | surface, tier | decisions made |
//! | `aisle_fallbacks_total` | counter | stage, reason | why a decision left FRESH: codes from closed sets (`decision::{Stage, Reason}`) |
//! | `aisle_policy_exclusions_total` | counter | reason | items (or offers) kept from shoppers |
//! | `aisle_experiment_exposures_total` | counter | experiment, variant | decisions per variant |
//! | `aisle_holdout_decisions_total` | counter | | decisions for shoppers in the global holdout |
//! | `aisle_model_decisions_total` | counter | model | FRESH decisions per model version (canary comparison) |
//! | `aisle_active_sessions` | gauge | | sessions held |
//! | `aisle_track_events_total` | counter | type | events applied |
//! | `aisle_track_rejected_total` | counter | | Track batches refused as invalid |
//! | `aisle_track_events_unlogged_total` | counter | reason | events kept out of the event log (`no_consent`) |
//! | `aisle_subscribers` | gauge | | open Subscribe streams |
//! | `aisle_assist_events_total` | counter | kind | assist events published |
//! | `aisle_bundle_loads_total`, `aisle_bundle_refused_total` | counter | kind | bundle swaps and refusals |
//! | `aisle_inflight_requests` | gauge | | gRPC requests being handled |
//! | `aisle_shed_requests_total` | counter | | requests refused with RESOURCE_EXHAUSTED |
//! | `aisle_log_*` | | log | the logs' writers: records written, dropped, failed, write errors, syncs, health, bytes, segments, segments deleted (`logs::journal::describe_metrics`) |
//! | `aisle_erasures_total` | counter | | ForgetShopper erasures carried out on this node |
//! | `aisle_tombstones` | gauge | | tombstones of forgotten shoppers held |
//! | `aisle_handoff_sessions_tombstoned_total` | counter | | handed-off sessions dropped because their shopper was forgotten |
//! | `aisle_sessions_erased_by_tombstone_total` | counter | | kept session copies erased by tombstones a member sent |
//! | `aisle_outbox_events`, `aisle_outbox_bytes` | gauge | | Track events (and their bytes) waiting in this node's outbox for their owner |
//! | `aisle_outbox_oldest_seconds` | gauge | | age of the oldest waiting entry (0 when none waits) |
//! | `aisle_outbox_queued_events_total` | counter | | events queued in the outbox (acknowledged to the caller once on disk) |
//! | `aisle_outbox_delivered_events_total` | counter | result | queued events the owner took: `applied`, or `duplicate` (applied before; not again) |
//! | `aisle_outbox_duplicates_total` | counter | | at an owner: events of a resent call or entry already applied, not applied again |
//! | `aisle_outbox_entries_dropped_total` | counter | reason | entries that left without being applied: `erased` (shopper forgotten after), `refused` (invalid at the owner) |
//! | `aisle_outbox_full_total`, `aisle_outbox_write_errors_total` | counter | | Track calls refused because the outbox was full, or could not be written |
//! | `aisle_edge_decisions_total` | counter | at | at a store edge: decisions made `edge` (here) or `cloud` (forwarded and answered there); the edge hit ratio is `edge` / all |
//! | `aisle_edge_cloud_fallbacks_total` | counter | reason | at an edge: surfaces placed in the cloud answered here instead: `offline`, `deadline`, `no_budget`, `denied` (the token lacks `decide`), `failed` |
//! | `aisle_edge_offline_seconds` | gauge | | at an edge: seconds since the cloud was last heard from (0 while the link is up) |
//! | `aisle_edge_model_freshness_lag_seconds` | gauge | | at an edge: 0 while the feed confirms it serves the cloud's versions; else the seconds since it last could (or since it refused a version the cloud serves) |
//! | `aisle_edge_model_created_seconds` | gauge | | at an edge: build time of the model it serves (Unix seconds) |
//! | `aisle_edge_uploaded_events_total` | counter | result | at an edge: queued events the cloud took: `applied`, or `duplicate` (applied before) |
//! | `aisle_edge_session_fetches_total` | counter | result | at an edge: copies of the cloud's session asked for: `installed`, `none`, `failed`, `invalid` |
//! | `aisle_edge_sessions_handed_back_total` | counter | | at an edge: session copies dropped at `STORE_EXIT` |
//! | `aisle_edge_feeds_opened_total`, `aisle_edge_feed_bundles_sent_total` | counter | kind | at a cloud node: bundle feeds edges opened, bundle versions sent down |
//! | `aisle_kill_switch_active` | gauge | | kill switches this node applies |
//! | `aisle_kill_switch_decisions_total` | counter | tier | decisions a kill switch sent to RULES or GENERIC |
//! | `aisle_fleet_version_skew` | gauge | | 1 while this node serves other versions than the fleet's record (etcd mode) |
//! | `aisle_control_records_invalid_total` | counter | record | control records in etcd that did not parse (ignored) |
//!
//! After them come the standard process series every Prometheus exporter serves, read from the OS at each scrape
//! ([`render`]): `process_cpu_seconds_total` (counter, user + system, fractional seconds), `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_virtual_memory_max_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds` and `process_threads` (gauges). Dividing the growth of `process_cpu_seconds_total`
//! by the requests answered meanwhile gives the node's CPU per request (`aisle-loadtest --metrics-url` does so).

use std::fmt::Write as _;
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
    describe_counter!(
        "aisle_track_events_unlogged_total",
        "shopper events kept out of the event log, by reason (no_consent: applied without the shopper's consent)"
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
    crate::logs::journal::describe_metrics();
    describe_counter!(
        "aisle_erasures_total",
        "ForgetShopper erasures carried out on this node"
    );
    describe_gauge!("aisle_tombstones", "tombstones of forgotten shoppers held");
    describe_counter!(
        "aisle_handoff_sessions_tombstoned_total",
        "handed-off sessions dropped because their shopper was forgotten"
    );
    describe_counter!(
        "aisle_sessions_erased_by_tombstone_total",
        "session copies erased by tombstones a member sent"
    );
    describe_gauge!(
        "aisle_outbox_events",
        "Track events waiting in this node's outbox for their owner"
    );
    describe_gauge!(
        "aisle_outbox_bytes",
        "bytes of the entries waiting in the outbox"
    );
    describe_gauge!(
        "aisle_outbox_oldest_seconds",
        "age of the oldest entry waiting in the outbox (0 when none waits)"
    );
    describe_counter!(
        "aisle_outbox_queued_events_total",
        "events queued in the outbox, acknowledged once on disk"
    );
    describe_counter!(
        "aisle_outbox_delivered_events_total",
        "queued events their owner took: applied, or duplicate (applied before, not again)"
    );
    describe_counter!(
        "aisle_outbox_duplicates_total",
        "at an owner: events of a resent Track call or outbox entry already applied (not applied again)"
    );
    describe_counter!(
        "aisle_outbox_entries_dropped_total",
        "outbox entries that left without being applied: erased (shopper forgotten after), refused (invalid)"
    );
    describe_counter!(
        "aisle_outbox_full_total",
        "Track calls refused because the outbox held its limit"
    );
    describe_counter!(
        "aisle_outbox_write_errors_total",
        "Track calls refused because the outbox could not be written"
    );
    describe_counter!(
        "aisle_edge_decisions_total",
        "store edge: decisions made at the edge or forwarded to the cloud, by where they were made"
    );
    describe_counter!(
        "aisle_edge_cloud_fallbacks_total",
        "store edge: surfaces placed in the cloud answered at the edge, by why"
    );
    describe_gauge!(
        "aisle_edge_offline_seconds",
        "store edge: seconds since the cloud was last heard from (0 while the link is up)"
    );
    describe_gauge!(
        "aisle_edge_model_freshness_lag_seconds",
        "store edge: seconds the served bundles may be behind the cloud's (0 while confirmed current)"
    );
    describe_gauge!(
        "aisle_edge_model_created_seconds",
        "store edge: build time of the served model (Unix seconds)"
    );
    describe_counter!(
        "aisle_edge_uploaded_events_total",
        "store edge: queued events the cloud took, applied or duplicate"
    );
    describe_counter!(
        "aisle_edge_session_fetches_total",
        "store edge: copies of the cloud's session asked for, by result"
    );
    describe_counter!(
        "aisle_edge_sessions_handed_back_total",
        "store edge: session copies dropped when the shopper left the store"
    );
    describe_counter!(
        "aisle_edge_feeds_opened_total",
        "cloud: bundle feeds opened by store edges"
    );
    describe_counter!(
        "aisle_edge_feed_bundles_sent_total",
        "cloud: bundle versions sent to store edges, by kind"
    );
    describe_gauge!(
        "aisle_kill_switch_active",
        "kill switches this node applies"
    );
    describe_counter!(
        "aisle_kill_switch_decisions_total",
        "decisions a kill switch sent to a lower rung, by the rung that answered"
    );
    describe_gauge!(
        "aisle_fleet_version_skew",
        "1 while this node serves other model, rules or experiments versions than the fleet's record, else 0"
    );
    describe_counter!(
        "aisle_control_records_invalid_total",
        "control records in etcd that did not parse and were ignored, by record"
    );
}

/// Renders `/metrics`: the recorder's series, then the process series read now.
///
/// The process series are not kept in the recorder: the `metrics` facade's counters are integers, and CPU time in
/// whole seconds would be useless for CPU per request. They are read from the OS at each scrape instead, as the
/// Prometheus client libraries do.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    text.push_str(&process_series());
    text
}

/// The standard `process_*` series of this process, in the Prometheus text format; a figure the OS does not
/// give is left out.
pub fn process_series() -> String {
    let m = metrics_process::collector::collect();
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            );
        }
    };
    series(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        m.cpu_seconds_total.map(|v| v.to_string()),
    );
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            m.resident_memory_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            m.virtual_memory_bytes,
        ),
        (
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes (0: unlimited).",
            m.virtual_memory_max_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            m.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors (0: unlimited).",
            m.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            m.start_time_seconds,
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            m.threads,
        ),
    ];
    for (name, help, value) in gauges {
        series(name, "gauge", help, value.map(|v| v.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of an unlabelled series in a Prometheus text exposition.
    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_process_series_are_typed_and_cpu_time_grows() {
        let before = process_series();
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_threads", "gauge"),
        ] {
            assert!(
                before.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} in {before}"
            );
            assert!(value(&before, name).is_some(), "{name} in {before}");
        }
        assert!(value(&before, "process_resident_memory_bytes").unwrap() > 0.0);
        assert!(value(&before, "process_threads").unwrap() >= 1.0);
        let cpu = value(&before, "process_cpu_seconds_total").unwrap();
        // Spin until the kernel has charged this process another tick; bounded by a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let now = value(&process_series(), "process_cpu_seconds_total").unwrap();
            if now > cpu {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process_cpu_seconds_total stayed at {cpu}"
            );
        }
    }
}
