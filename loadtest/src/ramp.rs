//! Finding the saturation point: the rate is raised step by step (with a pause between steps for the server to
//! drain) and each step passes when it has no error and its headline p99 stays under the target. The ramp stops
//! after `stop_after_failures` failing steps (1 by default: the first failing step ends it); the saturation point
//! is the highest passing rate. With `--metrics-url` every step also gives the node's CPU per request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::Error;
use crate::report::RunReport;
use crate::runner::{RunConfig, run_on};
use crate::target::Target;

/// How to ramp.
#[derive(Debug, Clone)]
pub struct RampConfig {
    /// Everything but the rate and duration of each step.
    pub base: RunConfig,
    /// First rate.
    pub start: f64,
    /// Added at each step.
    pub step: f64,
    /// Highest rate tried.
    pub max: f64,
    /// Recorded time of each step.
    pub step_duration: Duration,
    /// Pause between steps.
    pub settle: Duration,
    /// A step passes when its headline p99 is under this and it has no error.
    pub p99_target: Duration,
    /// Failing steps after which the ramp stops.
    pub stop_after_failures: usize,
}

impl RampConfig {
    /// The rates of the steps, `start, start + step, …` up to `max`.
    pub fn rates(&self) -> Result<Vec<f64>, Error> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if !(self.start.is_finite() && self.start > 0.0) {
            return bad("--start must be a positive rate");
        }
        if !(self.max.is_finite() && self.max >= self.start) {
            return bad("--max must be at least --start");
        }
        if !(self.step.is_finite() && self.step > 0.0) {
            return bad("--step must be a positive rate");
        }
        if self.step_duration.is_zero() {
            return bad("--step-duration must be positive");
        }
        if self.stop_after_failures == 0 {
            return bad("--stop-after-failures must be at least 1");
        }
        let steps = ((self.max - self.start) / self.step + 1e-9).floor() as usize + 1;
        if steps > 1_000 {
            return bad("more than 1,000 steps: raise --step");
        }
        Ok((0..steps)
            .map(|i| self.start + i as f64 * self.step)
            .collect())
    }
}

/// One step's outcome.
#[derive(Debug, Clone)]
pub struct RampStep {
    /// 1-based step number.
    pub number: usize,
    /// The run at this rate.
    pub report: RunReport,
    /// No error and p99 under the target.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

impl RampStep {
    /// The step as a JSON line: the run's report plus `step`, `passed`, `fail_reason`.
    pub fn to_json(&self) -> Value {
        let mut v = self.report.to_json();
        if let Value::Object(o) = &mut v {
            o.insert("step".into(), json!(self.number));
            o.insert("passed".into(), json!(self.passed));
            o.insert("fail_reason".into(), json!(self.reason));
        }
        v
    }

    /// The step as one readable line.
    pub fn line(&self) -> String {
        let r = &self.report;
        let cpu = match &r.node_cpu {
            None => String::new(),
            Some(Ok(c)) => format!(
                ", node CPU {} µs/req ({:.2} cores)",
                c.us_per_request()
                    .map_or_else(|| "-".to_string(), |us| format!("{us:.1}")),
                c.cores()
            ),
            Some(Err(_)) => ", node CPU not measured".to_string(),
        };
        format!(
            "step {:>2}: {:>8.1} req/s offered, {:>8.1} ok/s, errors {:>5}, p50 {:>8.3} ms, p99 {:>8.3} ms, max {:>8.3} ms, \
             send lag p99 {:.3} ms{cpu}: {}",
            self.number,
            r.offered_rps,
            r.achieved_rps(),
            r.main.errors(),
            r.main.latency_quantile_us(0.5) as f64 / 1e3,
            r.headline_p99_us() as f64 / 1e3,
            r.main.max_latency_us() as f64 / 1e3,
            r.send_lag_p99_us() as f64 / 1e3,
            match &self.reason {
                None => "pass".to_string(),
                Some(why) => format!("FAIL ({why})"),
            }
        )
    }
}

/// The whole ramp.
#[derive(Debug, Clone)]
pub struct RampReport {
    /// The steps run, in order.
    pub steps: Vec<RampStep>,
    /// Highest passing rate.
    pub saturation_rps: Option<f64>,
    /// The target.
    pub p99_target: Duration,
}

impl RampReport {
    /// The summary as one JSON object.
    pub fn to_json(&self, scenario: &str) -> Value {
        json!({
            "mode": "ramp",
            "scenario": scenario,
            "p99_target_ms": self.p99_target.as_secs_f64() * 1e3,
            "saturation_rps": self.saturation_rps,
            "steps": self.steps.iter().map(|s| json!({
                "rate": s.report.offered_rps,
                "achieved_rps": s.report.achieved_rps(),
                "ok": s.report.main.ok(),
                "errors": s.report.main.errors(),
                "p50_ms": s.report.main.latency_quantile_us(0.5) as f64 / 1e3,
                "p99_ms": s.report.headline_p99_us() as f64 / 1e3,
                "max_ms": s.report.main.max_latency_us() as f64 / 1e3,
                "send_lag_p99_ms": s.report.send_lag_p99_us() as f64 / 1e3,
                "node_cpu_us_per_request": s.report.node_cpu_us_per_request(),
                "node_cpu_cores": s.report.node_cpu.as_ref().and_then(|c| c.as_ref().ok()).map(|c| c.cores()),
                "passed": s.passed,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Judges one step.
pub fn judge(report: &RunReport, p99_target: Duration) -> Option<String> {
    let errors = report.main.errors();
    let p99 = Duration::from_micros(report.headline_p99_us());
    let mut why = Vec::new();
    if errors > 0 {
        why.push(format!("{errors} error(s)"));
    }
    if p99 >= p99_target {
        why.push(format!(
            "p99 {:.3} ms >= {:.3} ms",
            p99.as_secs_f64() * 1e3,
            p99_target.as_secs_f64() * 1e3
        ));
    }
    if report.main.ok() == 0 {
        why.push("no successful answer".into());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Runs the ramp over `target`, calling `on_step` after each step.
pub async fn ramp(
    target: &Target,
    config: &RampConfig,
    mut on_step: impl FnMut(&RampStep),
) -> Result<RampReport, Error> {
    let rates = config.rates()?;
    let mut steps = Vec::new();
    let mut failures = 0;
    let stopped = || {
        config
            .base
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    };
    for (i, rate) in rates.into_iter().enumerate() {
        if i > 0 && !config.settle.is_zero() {
            tokio::time::sleep(config.settle).await;
        }
        if stopped() {
            break;
        }
        let run = RunConfig {
            rate,
            duration: config.step_duration,
            ..config.base.clone()
        };
        let report = run_on(target, &run).await?;
        let reason = judge(&report, config.p99_target);
        let step = RampStep {
            number: i + 1,
            passed: reason.is_none(),
            reason,
            report,
        };
        on_step(&step);
        if step.report.interrupted {
            // A cut-short step is reported but judges nothing.
            break;
        }
        let passed = step.passed;
        steps.push(step);
        if !passed {
            failures += 1;
            if failures >= config.stop_after_failures {
                break;
            }
        }
    }
    let saturation_rps = steps
        .iter()
        .filter(|s| s.passed)
        .map(|s| s.report.offered_rps)
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.max(r)))
        });
    Ok(RampReport {
        steps,
        saturation_rps,
        p99_target: config.p99_target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(start: f64, step: f64, max: f64) -> RampConfig {
        RampConfig {
            base: RunConfig::default(),
            start,
            step,
            max,
            step_duration: Duration::from_secs(1),
            settle: Duration::ZERO,
            p99_target: Duration::from_millis(10),
            stop_after_failures: 1,
        }
    }

    #[test]
    fn rates_run_from_start_to_max() {
        assert_eq!(
            config(100.0, 100.0, 500.0).rates().unwrap(),
            vec![100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(
            config(100.0, 150.0, 500.0).rates().unwrap(),
            vec![100.0, 250.0, 400.0]
        );
        assert_eq!(config(0.3, 0.1, 0.6).rates().unwrap().len(), 4);
        assert!(config(100.0, 0.0, 500.0).rates().is_err());
        assert!(config(500.0, 10.0, 100.0).rates().is_err());
    }
}
