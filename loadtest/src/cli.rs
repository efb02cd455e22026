//! The command line: `aisle-loadtest run …` and `aisle-loadtest ramp …`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::ramp::{RampConfig, ramp};
use crate::report::Verdict;
use crate::runner::{RunConfig, check_target, run_on};
use crate::scenario::Scenario;
use crate::target::{Credentials, Target};

/// Open-loop gRPC load generator for Aisle.
#[derive(Debug, Parser)]
#[command(name = "aisle-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one scenario at a fixed rate for a fixed time and report latency and errors.
    Run(RunArgs),
    /// Raise the rate step by step and report the highest rate whose p99 stays under the target with no errors.
    Ramp(RampArgs),
}

/// Options shared by `run` and `ramp`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Server URL, e.g. http://127.0.0.1:50051 (a bare host:port gets http://).
    #[arg(long, env = "AISLE_TARGET")]
    pub target: String,
    /// Scenario.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Client timeout per request, also sent as the gRPC deadline (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object as the last line (and no progress line).
    #[arg(long)]
    pub json: bool,
    /// Also run health checks at the same rate in alternating windows (the floor) and report both.
    #[arg(long)]
    pub floor: bool,
    /// Length of each scenario or floor window with --floor (shrunk to half the run if longer).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub floor_window: Duration,
    /// Unrecorded time at the same rate before recording starts.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Seed of the request generators.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shopper population (ids lt-0 … lt-{N-1}, Zipf-distributed).
    #[arg(long, default_value_t = 100_000)]
    pub shoppers: usize,
    /// Zipf exponent of shopper and item popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Item universe (ids sku-000000 …); 10710 is the server's demo catalog.
    #[arg(long, default_value_t = crate::catalog::DEMO_ITEMS)]
    pub items: usize,
    /// Events per Track request (mixed, subscribe).
    #[arg(long, default_value_t = 8)]
    pub events_per_track: usize,
    /// Concurrent shopper sessions (mixed, subscribe); the pool grows when every shopper is busy.
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
    /// Stores (store-1 … store-N) of in-store sessions and decisions (decide, mixed).
    #[arg(long, default_value_t = 20)]
    pub stores: u64,
    /// Share of in-store sessions (default 0.15 for mixed, 0.7 for subscribe).
    #[arg(long)]
    pub in_store_share: Option<f64>,
    /// Subscribe streams, one per store store-1 … store-N (subscribe).
    #[arg(long, default_value_t = 20)]
    pub handhelds: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The node's Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics: report the node's CPU µs per request
    /// (growth of its process_cpu_seconds_total over the recorded window, per request completed in it).
    #[arg(long, env = "AISLE_METRICS_URL")]
    pub metrics_url: Option<String>,
    /// PEM CA certificate of a node serving TLS (`--target https://…`) [default: the system's roots].
    #[arg(long, env = "AISLE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Bearer token sent with every request (a node with a token file needs one with the scenario's scopes).
    #[arg(long, env = "AISLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Offered requests per second (open loop).
    #[arg(long)]
    pub rate: f64,
    /// Recorded time (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Judge the run: its headline p99 (`Decide` p99 for mixed/subscribe) against this many ms, with no errors.
    #[arg(long)]
    pub p99_target_ms: Option<f64>,
}

/// `ramp`'s options.
#[derive(Debug, Args)]
pub struct RampArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// First rate.
    #[arg(long)]
    pub start: f64,
    /// Rate added at each step.
    #[arg(long)]
    pub step: f64,
    /// Highest rate tried.
    #[arg(long)]
    pub max: f64,
    /// Recorded time of each step.
    #[arg(long, value_parser = parse_duration)]
    pub step_duration: Duration,
    /// A step passes when its p99 (Decide p99 for mixed/subscribe) is under this and it has no error.
    #[arg(long, default_value_t = 10.0)]
    pub p99_target_ms: f64,
    /// Pause between steps, for the server to drain.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Stop after this many failing steps.
    #[arg(long, default_value_t = 1)]
    pub stop_after_failures: usize,
}

/// Parses `10s`, `500ms`, `250us`, `2m`, `1h`, `1.5s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use us, ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl CommonArgs {
    fn run_config(&self, rate: f64, duration: Duration) -> RunConfig {
        RunConfig {
            target: self.target.clone(),
            credentials: Credentials {
                ca_cert: self.ca_cert.clone(),
                token: self.token.clone(),
            },
            scenario: self.scenario,
            rate,
            duration,
            warmup: self.warmup,
            connections: self.connections,
            timeout: self.timeout,
            seed: self.seed,
            floor: self.floor,
            floor_window: self.floor_window,
            shoppers: self.shoppers,
            zipf_exponent: self.zipf,
            items: self.items,
            events_per_track: self.events_per_track,
            sessions: self.sessions,
            stores: self.stores,
            in_store_share: self.in_store_share,
            handhelds: self.handhelds,
            progress: !self.json && !self.quiet,
            metrics_url: self.metrics_url.clone(),
            stop: None,
        }
    }
}

/// Sets `stop` on the first Ctrl-C (the run winds down and reports); a second Ctrl-C exits at once.
fn stop_on_ctrl_c(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        stop.store(true, Ordering::Relaxed);
        eprintln!("\ninterrupted: finishing requests in flight (Ctrl-C again to quit at once)");
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

/// Runs the command, printing the report(s) to `out`. Ctrl-C ends the run early with a report of what ran.
pub async fn execute(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    match cli.command {
        Command::Run(args) => {
            let config = RunConfig {
                stop: Some(stop),
                ..args.common.run_config(args.rate, args.duration)
            };
            config.validate()?;
            if let Some(t) = args.p99_target_ms
                && !(t.is_finite() && t > 0.0)
            {
                return Err(Error::InvalidArgument(
                    "--p99-target-ms must be positive".into(),
                ));
            }
            let target =
                Target::connect_with(&config.target, config.connections, &config.credentials)
                    .await?;
            check_target(&target, &config).await?;
            let report = run_on(&target, &config).await?;
            let verdict = args.p99_target_ms.map(|t| Verdict::of(&report, t));
            if args.common.json {
                let mut json = report.to_json();
                if let (Some(v), Some(o)) = (&verdict, json.as_object_mut()) {
                    o.insert("p99_target_ms".into(), v.target_ms.into());
                    o.insert("p99_target_met".into(), v.met().into());
                }
                let _ = writeln!(out, "{json}");
            } else {
                let _ = write!(out, "{report}");
                if let Some(v) = verdict {
                    let _ = writeln!(out, "{v}");
                }
            }
        }
        Command::Ramp(args) => {
            let json = args.common.json;
            if !(args.p99_target_ms.is_finite() && args.p99_target_ms > 0.0) {
                return Err(Error::InvalidArgument(
                    "--p99-target-ms must be positive".into(),
                ));
            }
            let config = RampConfig {
                base: RunConfig {
                    progress: false,
                    stop: Some(stop),
                    ..args.common.run_config(args.start, args.step_duration)
                },
                start: args.start,
                step: args.step,
                max: args.max,
                step_duration: args.step_duration,
                settle: args.settle,
                p99_target: Duration::from_secs_f64(args.p99_target_ms / 1e3),
                stop_after_failures: args.stop_after_failures,
            };
            config.rates()?;
            config.base.validate()?;
            let target = Target::connect_with(
                &config.base.target,
                config.base.connections,
                &config.base.credentials,
            )
            .await?;
            check_target(&target, &config.base).await?;
            if !json {
                let _ = writeln!(
                    out,
                    "ramping {} against {}: {} → {} req/s by {}, {:.1} s per step, p99 target {} ms",
                    args.common.scenario,
                    target.url(),
                    args.start,
                    args.max,
                    args.step,
                    args.step_duration.as_secs_f64(),
                    args.p99_target_ms
                );
            }
            let result = ramp(&target, &config, |step| {
                let _ = if json {
                    writeln!(out, "{}", step.to_json())
                } else {
                    writeln!(out, "{}", step.line())
                };
                let _ = out.flush();
            })
            .await?;
            if json {
                let _ = writeln!(out, "{}", result.to_json(args.common.scenario.name()));
            } else {
                match result.saturation_rps {
                    Some(rps) => {
                        let _ = writeln!(
                            out,
                            "saturation point: {rps} req/s (highest rate with p99 under {} ms and no errors)",
                            args.p99_target_ms
                        );
                    }
                    None => {
                        let _ = writeln!(out, "saturation point: none (no step passed)");
                    }
                }
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "aisle-loadtest",
            "run",
            "--target",
            "127.0.0.1:1",
            "--scenario",
            "mixed",
            "--rate",
            "500",
            "--duration",
            "10s",
            "--floor",
            "--json",
            "--events-per-track",
            "4",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.common.scenario, Scenario::Mixed);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert!(args.common.floor && args.common.json);
        assert_eq!(args.common.connections, 4);
        assert_eq!(args.common.timeout, Duration::from_secs(1));
        let c = args.common.run_config(args.rate, args.duration);
        assert!(!c.progress);
        assert_eq!(c.events_per_track, 4);

        let cli = Cli::try_parse_from([
            "aisle-loadtest",
            "ramp",
            "--target",
            "x:1",
            "--scenario",
            "decide",
            "--start",
            "100",
            "--step",
            "100",
            "--max",
            "1000",
            "--step-duration",
            "5s",
        ])
        .unwrap();
        let Command::Ramp(args) = cli.command else {
            panic!("not ramp")
        };
        assert_eq!(args.p99_target_ms, 10.0);
        assert!(
            Cli::try_parse_from([
                "aisle-loadtest",
                "run",
                "--target",
                "x:1",
                "--scenario",
                "nope"
            ])
            .is_err()
        );
    }
}
