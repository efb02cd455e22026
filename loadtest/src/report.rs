//! The end of a run: one JSON object (`--json`) or a readable table.
//!
//! # JSON fields
//!
//! Times are milliseconds (µs precision); latencies run from each request's *scheduled* send time.
//!
//! - Always: `scenario`, `target`, `offered_rps`, `achieved_rps` (OK answers per second of recorded scenario
//!   time), `duration_s`, `interrupted`, `connections`, `timeout_ms`, `sent`, `ok`, `errors`, `errors_by_code`
//!   (gRPC code name → count; a client timeout is `DEADLINE_EXCEEDED`, an unhealthy health answer `NOT_SERVING`), `p50_ms`,
//!   `p90_ms`, `p99_ms`, `p999_ms`, `max_ms`, `mean_ms` (over OK answers and timeouts; other errors are counted,
//!   not timed), `tiers` (`FRESH`, `CACHED`, `RULES`, `GENERIC` → count of `Decide` answers, plus
//!   `UNSPECIFIED` if any), `headline_p99_ms` (`Decide` p99 for mixed/subscribe, else `p99_ms`),
//!   `send_lag_p99_ms`, `send_lag_max_ms` (how late the generator sent after the due time), `max_in_flight`.
//! - mixed and subscribe: `tracked_events`, `tracked_events_per_s`, `unknown_items`, `track_ok`,
//!   `track_errors`, `track_errors_by_code`, `track_p50_ms`, `track_p99_ms`, `track_max_ms`, `decide_ok`,
//!   `decide_errors`, `decide_errors_by_code`, `decide_p50_ms`, `decide_p90_ms`, `decide_p99_ms`,
//!   `decide_max_ms`, `sessions_peak`, `skipped_tracks`.
//! - subscribe: `handhelds`, `delivered`, `delivered_by_kind`, `delivery_p50_ms`, `delivery_p99_ms`,
//!   `delivery_max_ms` (receive time − `source_received_at_us`), `delivery_untimed`, `stream_errors`.
//! - `--floor`: `floor_window_ms`, `floor_offered_rps`, `floor_achieved_rps`, `floor_sent`, `floor_ok`,
//!   `floor_errors`, `floor_errors_by_code`, `floor_p50_ms`, `floor_p90_ms`, `floor_p99_ms`, `floor_max_ms`,
//!   `floor_send_lag_p99_ms`, `p99_over_floor_p99` (`p99_ms / floor_p99_ms`) and `headline_p99_over_floor_p99`
//!   (`headline_p99_ms / floor_p99_ms`); the ratios are null when the floor recorded nothing.
//! - `run --p99-target-ms T`: `p99_target_ms` and `p99_target_met` (the headline p99 ≤ T, answers recorded and no
//!   error; see [`Verdict`]).
//! - `--metrics-url URL` (see [`crate::node_cpu`]): `node_cpu_us_per_request` (the node's CPU µs per request
//!   completed in the recorded window: growth of its `process_cpu_seconds_total` over `node_cpu_requests`; null
//!   without requests), `node_cpu_seconds` (that growth), `node_cpu_cores` (`node_cpu_seconds` over
//!   `node_cpu_window_s`, the wall time between the two scrapes), `node_cpu_requests` (requests completed in the
//!   window, every lane: with `--floor` the health checks too) and `node_cpu_error` (null, or why
//!   the figure is missing: every other `node_cpu_` field is then null). In `ramp`, on every step's line and in
//!   the summary's `steps` (`node_cpu_us_per_request`, `node_cpu_cores`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::node_cpu::NodeCpu;
use crate::scenario::Scenario;
use crate::stats::{DeliveryData, Kind, KindStats, LaneData};

/// The four fallback tiers, always present in `tiers`.
const TIERS: [&str; 4] = ["FRESH", "CACHED", "RULES", "GENERIC"];

/// Send lag above which the report warns that the generator fell behind (and its lag is in the latencies).
const LAG_WARNING_US: u64 = 1_000;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The target URL.
    pub target: String,
    /// Offered requests per second.
    pub offered_rps: f64,
    /// Recorded time (shorter than asked when the run was stopped early).
    pub duration: Duration,
    /// Stopped early (Ctrl-C).
    pub interrupted: bool,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Client timeout.
    pub timeout: Duration,
    /// Recorded time spent in main windows (all of `duration` without `--floor`).
    pub main_time: Duration,
    /// The scenario's figures.
    pub main: LaneData,
    /// With `--floor`: the health lane's figures, its recorded time and the window length.
    pub floor: Option<(LaneData, Duration, Duration)>,
    /// With `subscribe`: assist events received.
    pub delivery: Option<DeliveryData>,
    /// With `subscribe`: streams open.
    pub handhelds: Option<usize>,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// The scheduler's own largest hand-out delay.
    pub scheduler_lag_max: Duration,
    /// With session traffic: sessions in the pool at the end (grows when every shopper is busy).
    pub sessions_peak: Option<usize>,
    /// With session traffic: Tracks turned into Decides because every shopper was busy.
    pub skipped_tracks: u64,
    /// With `--metrics-url`: the node's CPU over the recorded window, or why it could not be read.
    pub node_cpu: Option<Result<NodeCpu, String>>,
}

/// µs → ms, rounded to the µs.
fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

fn per_second(n: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        round3(n as f64 / time.as_secs_f64())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

impl RunReport {
    /// Successful scenario answers per second of its recorded time.
    pub fn achieved_rps(&self) -> f64 {
        per_second(self.main.ok(), self.main_time)
    }

    /// The latency that matters for the scenario, µs: `Decide` p99 for session traffic, else p99 of all.
    pub fn headline_p99_us(&self) -> u64 {
        if self.scenario.is_session_traffic() {
            self.main.kind(Kind::Decide).quantile_us(0.99)
        } else {
            self.main.latency_quantile_us(0.99)
        }
    }

    /// Send lag p99 of the scenario, µs.
    pub fn send_lag_p99_us(&self) -> u64 {
        self.main.send_lag_quantile_us(0.99)
    }

    /// The floor's p99, µs (with `--floor`, and when it has samples).
    fn floor_p99_us(&self) -> Option<u64> {
        let (floor, _, _) = self.floor.as_ref()?;
        Some(floor.latency_quantile_us(0.99)).filter(|&f| f > 0)
    }

    /// `p99_ms / floor_p99_ms`: the scenario's p99 (all its requests) over the floor's.
    pub fn p99_over_floor_p99(&self) -> Option<f64> {
        let f = self.floor_p99_us()?;
        Some(round3(
            self.main.latency_quantile_us(0.99) as f64 / f as f64,
        ))
    }

    /// The headline p99 (`Decide` for mixed and subscribe) over the floor's p99.
    pub fn headline_p99_over_floor_p99(&self) -> Option<f64> {
        let f = self.floor_p99_us()?;
        Some(round3(self.headline_p99_us() as f64 / f as f64))
    }

    /// The node's CPU µs per request (with `--metrics-url`, when it was read and requests completed).
    pub fn node_cpu_us_per_request(&self) -> Option<f64> {
        self.node_cpu.as_ref()?.as_ref().ok()?.us_per_request()
    }

    /// The node's CPU figures (with `--metrics-url`) as JSON fields.
    fn node_cpu_json(&self, put: &mut impl FnMut(&str, Value)) {
        let Some(cpu) = &self.node_cpu else {
            return;
        };
        let ok = cpu.as_ref().ok();
        put(
            "node_cpu_us_per_request",
            json!(ok.and_then(NodeCpu::us_per_request).map(round3)),
        );
        put("node_cpu_seconds", json!(ok.map(|c| round3(c.cpu_seconds))));
        put("node_cpu_cores", json!(ok.map(|c| round3(c.cores()))));
        put(
            "node_cpu_window_s",
            json!(ok.map(|c| round3(c.window.as_secs_f64()))),
        );
        put("node_cpu_requests", json!(ok.map(|c| c.requests)));
        put("node_cpu_error", json!(cpu.as_ref().err()));
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let m = &self.main;
        let lat = m.latency();
        let mut o = Map::new();
        let mut put = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        self.node_cpu_json(&mut put);
        put("scenario", json!(self.scenario.name()));
        put("target", json!(self.target));
        put("offered_rps", json!(self.offered_rps));
        put("achieved_rps", json!(self.achieved_rps()));
        put("duration_s", json!(round3(self.duration.as_secs_f64())));
        put("interrupted", json!(self.interrupted));
        put("connections", json!(self.connections));
        put("timeout_ms", json!(self.timeout.as_millis() as u64));
        put("sent", json!(m.sent));
        put("ok", json!(m.ok()));
        put("errors", json!(m.errors()));
        put("errors_by_code", json!(m.errors_by_code()));
        put("p50_ms", json!(ms(m.latency_quantile_us(0.5))));
        put("p90_ms", json!(ms(m.latency_quantile_us(0.9))));
        put("p99_ms", json!(ms(m.latency_quantile_us(0.99))));
        put("p999_ms", json!(ms(m.latency_quantile_us(0.999))));
        put("max_ms", json!(ms(m.max_latency_us())));
        put(
            "mean_ms",
            json!(round3(if lat.is_empty() { 0.0 } else { lat.mean() } / 1e3)),
        );
        let mut tiers: BTreeMap<&str, u64> = TIERS.iter().map(|t| (*t, 0)).collect();
        for (t, n) in &m.tiers {
            *tiers.entry(t).or_insert(0) += n;
        }
        put("tiers", json!(tiers));
        put("headline_p99_ms", json!(ms(self.headline_p99_us())));
        put("send_lag_p99_ms", json!(ms(self.send_lag_p99_us())));
        put("send_lag_max_ms", json!(ms(m.send_lag_max_us())));
        put("max_in_flight", json!(self.max_in_flight));
        if self.scenario.is_session_traffic() {
            let track = m.kind(Kind::Track);
            let decide = m.kind(Kind::Decide);
            put("tracked_events", json!(m.tracked_events));
            put(
                "tracked_events_per_s",
                json!(per_second(m.tracked_events, self.main_time)),
            );
            put("unknown_items", json!(m.unknown_items));
            put("track_ok", json!(track.ok));
            put("track_errors", json!(track.error_count()));
            put("track_errors_by_code", json!(track.errors));
            put("track_p50_ms", json!(ms(track.quantile_us(0.5))));
            put("track_p99_ms", json!(ms(track.quantile_us(0.99))));
            put("track_max_ms", json!(ms(track.max_us)));
            put("decide_ok", json!(decide.ok));
            put("decide_errors", json!(decide.error_count()));
            put("decide_errors_by_code", json!(decide.errors));
            put("decide_p50_ms", json!(ms(decide.quantile_us(0.5))));
            put("decide_p90_ms", json!(ms(decide.quantile_us(0.9))));
            put("decide_p99_ms", json!(ms(decide.quantile_us(0.99))));
            put("decide_max_ms", json!(ms(decide.max_us)));
            put("sessions_peak", json!(self.sessions_peak));
            put("skipped_tracks", json!(self.skipped_tracks));
        }
        if let Some(d) = &self.delivery {
            put("handhelds", json!(self.handhelds));
            put("delivered", json!(d.delivered));
            put("delivered_by_kind", json!(d.by_kind));
            put("delivery_p50_ms", json!(ms(d.quantile_us(0.5))));
            put("delivery_p99_ms", json!(ms(d.quantile_us(0.99))));
            put("delivery_max_ms", json!(ms(d.max_us)));
            put("delivery_untimed", json!(d.untimed));
            put("stream_errors", json!(d.stream_errors));
        }
        if let Some((f, time, window)) = &self.floor {
            put("floor_window_ms", json!(window.as_millis() as u64));
            put("floor_offered_rps", json!(self.offered_rps));
            put("floor_achieved_rps", json!(per_second(f.ok(), *time)));
            put("floor_sent", json!(f.sent));
            put("floor_ok", json!(f.ok()));
            put("floor_errors", json!(f.errors()));
            put("floor_errors_by_code", json!(f.errors_by_code()));
            put("floor_p50_ms", json!(ms(f.latency_quantile_us(0.5))));
            put("floor_p90_ms", json!(ms(f.latency_quantile_us(0.9))));
            put("floor_p99_ms", json!(ms(f.latency_quantile_us(0.99))));
            put("floor_max_ms", json!(ms(f.max_latency_us())));
            put(
                "floor_send_lag_p99_ms",
                json!(ms(f.send_lag_quantile_us(0.99))),
            );
            put("p99_over_floor_p99", json!(self.p99_over_floor_p99()));
            put(
                "headline_p99_over_floor_p99",
                json!(self.headline_p99_over_floor_p99()),
            );
        }
        Value::Object(o)
    }
}

/// One table row: `k`'s figures over `time`.
fn row(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    sent: Option<u64>,
    k: &KindStats,
    time: Duration,
) -> fmt::Result {
    let sent = sent.map_or_else(|| "-".to_string(), |s| s.to_string());
    writeln!(
        f,
        "{name:<17} {sent:>9} {:>9} {:>7} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        k.ok,
        k.error_count(),
        per_second(k.ok, time),
        ms(k.quantile_us(0.5)),
        ms(k.quantile_us(0.9)),
        ms(k.quantile_us(0.99)),
        ms(k.quantile_us(0.999)),
        ms(k.max_us),
    )
}

fn list(map: &BTreeMap<&str, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.main;
        writeln!(
            f,
            "{} against {}: {:.1} s recorded at {} req/s offered, {} connection(s), timeout {} ms",
            self.scenario,
            self.target,
            self.duration.as_secs_f64(),
            self.offered_rps,
            self.connections,
            self.timeout.as_millis()
        )?;
        if self.interrupted {
            writeln!(f, "interrupted: the figures cover the time actually run")?;
        }
        writeln!(
            f,
            "{:<17} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "sent", "ok", "errors", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        )?;
        if self.scenario.is_session_traffic() {
            row(
                f,
                "decide (headline)",
                None,
                &m.kind(Kind::Decide),
                self.main_time,
            )?;
            row(f, "track", None, &m.kind(Kind::Track), self.main_time)?;
        }
        row(
            f,
            self.scenario.name(),
            Some(m.sent),
            &m.total(),
            self.main_time,
        )?;
        if let Some((fl, time, _)) = &self.floor {
            row(f, "floor (health)", Some(fl.sent), &fl.total(), *time)?;
        }
        if let Some(d) = &self.delivery {
            writeln!(
                f,
                "assist delivery: {} event(s) on {} stream(s){}; p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms{}",
                d.delivered,
                self.handhelds.unwrap_or(0),
                if d.by_kind.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", list(&d.by_kind))
                },
                ms(d.quantile_us(0.5)),
                ms(d.quantile_us(0.99)),
                ms(d.max_us),
                if d.untimed > 0 {
                    format!(", {} without a usable source time", d.untimed)
                } else {
                    String::new()
                },
            )?;
            if !d.stream_errors.is_empty() {
                writeln!(f, "streams ended: {}", list(&d.stream_errors))?;
            }
        }
        if self.scenario.is_session_traffic() {
            writeln!(
                f,
                "tracked events: {} ({:.1}/s), {} naming unknown items; sessions in pool: {}",
                m.tracked_events,
                per_second(m.tracked_events, self.main_time),
                m.unknown_items,
                self.sessions_peak.unwrap_or(0)
            )?;
        }
        if !m.tiers.is_empty() {
            writeln!(f, "fallback tiers: {}", list(&m.tiers))?;
        }
        let errors = m.errors_by_code();
        if errors.is_empty() {
            writeln!(f, "errors: none")?;
        } else {
            writeln!(f, "errors: {}", list(&errors))?;
        }
        if let Some(ratio) = self.p99_over_floor_p99() {
            write!(f, "p99 / floor p99: {ratio:.2}")?;
            if self.scenario.is_session_traffic()
                && let Some(headline) = self.headline_p99_over_floor_p99()
            {
                write!(f, " (decide p99 / floor p99: {headline:.2})")?;
            }
            writeln!(f)?;
        }
        match &self.node_cpu {
            Some(Ok(cpu)) => writeln!(
                f,
                "node CPU ({}): {} per request, {:.2} cores ({:.3} s over {:.1} s, {} requests)",
                cpu.url,
                cpu.us_per_request()
                    .map_or_else(|| "-".to_string(), |us| format!("{us:.1} µs")),
                cpu.cores(),
                cpu.cpu_seconds,
                cpu.window.as_secs_f64(),
                cpu.requests
            )?,
            Some(Err(why)) => writeln!(f, "node CPU: not measured ({why})")?,
            None => {}
        }
        let lag_p99 = self.send_lag_p99_us();
        writeln!(
            f,
            "send lag (sent after due time): p99 {:.3} ms, max {:.3} ms; most in flight: {}",
            ms(lag_p99),
            ms(m.send_lag_max_us()),
            self.max_in_flight
        )?;
        if lag_p99 > LAG_WARNING_US {
            writeln!(
                f,
                "warning: the generator fell behind its schedule (send lag p99 {:.3} ms); latencies are measured \
                 from the due time and include that lag",
                ms(lag_p99)
            )?;
        }
        Ok(())
    }
}

/// A run judged against a p99 target (`run --p99-target-ms`): met when the headline p99 is at most the target and
/// nothing failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The target, ms.
    pub target_ms: f64,
    /// The headline p99 (`Decide` p99 for mixed/subscribe), ms.
    pub p99_ms: f64,
    /// Failed requests of the scenario.
    pub errors: u64,
    /// Answers the scenario recorded.
    pub ok: u64,
}

impl Verdict {
    /// Judges `report` against `target_ms`.
    pub fn of(report: &RunReport, target_ms: f64) -> Verdict {
        Verdict {
            target_ms,
            p99_ms: ms(report.headline_p99_us()),
            errors: report.main.errors(),
            ok: report.main.ok(),
        }
    }

    /// Whether the target was met: answers recorded, none failed, p99 within the target.
    pub fn met(&self) -> bool {
        self.ok > 0 && self.errors == 0 && self.p99_ms <= self.target_ms
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cmp = if self.p99_ms <= self.target_ms {
            "≤"
        } else {
            ">"
        };
        write!(
            f,
            "verdict: {} (p99 {:.3} ms {cmp} target {} ms; {} error(s))",
            if self.met() { "MET" } else { "MISSED" },
            self.p99_ms,
            self.target_ms,
            self.errors
        )?;
        if self.ok == 0 {
            write!(f, "; no answer recorded")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::Verdict;

    fn v(p99_ms: f64, errors: u64, ok: u64) -> Verdict {
        Verdict {
            target_ms: 2.0,
            p99_ms,
            errors,
            ok,
        }
    }

    #[test]
    fn met_needs_answers_no_errors_and_p99_within_the_target() {
        assert!(v(1.9, 0, 100).met());
        assert!(v(2.0, 0, 100).met());
        assert!(!v(2.001, 0, 100).met());
        assert!(!v(0.5, 1, 100).met());
        assert!(!v(0.0, 0, 0).met());
        assert_eq!(
            v(2.5, 0, 10).to_string(),
            "verdict: MISSED (p99 2.500 ms > target 2 ms; 0 error(s))"
        );
        assert_eq!(
            v(1.25, 0, 10).to_string(),
            "verdict: MET (p99 1.250 ms ≤ target 2 ms; 0 error(s))"
        );
    }
}
