//! `aisle-loadtest`: an open-loop gRPC load generator for Aisle.
//!
//! Requests go out on a fixed arrival schedule (request `i` at `start + i / rate`) whether or not earlier ones
//! were answered, spread round-robin over several HTTP/2 connections, and each request's latency is measured from
//! its *scheduled* time, so a stalled server shows up as latency, never as a quietly lower send rate (no
//! coordinated omission). Latencies go into HdrHistograms; how far behind schedule the generator itself sent is
//! recorded too, since it shares the machine with the server.
//!
//! Scenarios ([`scenario::Scenario`]): `decide`, `mixed` (shopper sessions: Track batches and Decide),
//! `subscribe` (mixed plus associates' assist streams) and `health` (the floor: same server, transport and
//! connections, no work). `--floor` interleaves health windows with the scenario's so their ratio holds even
//! when the machine's speed drifts; `ramp` raises the rate until p99 or errors give out.
//!
//! The binary is a thin shell over [`cli`]; [`runner::run`] and [`ramp::ramp`] are usable from tests.
//!
//! ```text
//! aisle-loadtest run  --target URL --scenario decide|mixed|subscribe|health --rate R --duration D
//!                     [--connections 4] [--timeout 1s] [--json] [--floor [--floor-window 1s]] [--warmup D]
//!                     [--seed 42] [--shoppers 100000] [--items 10710] [--zipf 1.0] [--events-per-track 8]
//!                     [--sessions 1000] [--stores 20] [--in-store-share F] [--handhelds 20] [--quiet]
//!                     [--metrics-url http://HOST:PORT/metrics]
//! aisle-loadtest ramp --target URL --scenario S --start R --step R --max R --step-duration D
//!                     [--p99-target-ms 10] [--settle 1s] [--stop-after-failures 1] [--json] (+ run's options)
//! ```
//!
//! With `--json` the last line on stdout is one JSON object (fields: see [`report`]; for `ramp`, every step's
//! object, then a summary with `saturation_rps`). Exit code 0 when the run completed (errors or not), 1 when the
//! target is unreachable or lacks a needed service, 2 for bad arguments.
//!
//! Design notes:
//! - The scheduler runs on its own thread ([`schedule::drive`]) and sleeps with the OS's high-resolution
//!   timer; each due request becomes a task on the async runtime. Send lag is measured when that task starts,
//!   so it includes the runtime's own queueing.
//! - In `mixed`, a shopper never has two `Track`s in flight ([`scenario::mixed`]); a failed or timed-out Track
//!   ends its session (a late batch could otherwise be overtaken by the next).
//! - `subscribe` keeps the streams open 300 ms after the last answer, for assist events still on their way.
//! - `--metrics-url` reads the node's `process_cpu_seconds_total` when the recorded window opens and after its
//!   last answer, and reports the node's CPU µs per request ([`node_cpu`]); in `ramp`, for every step.

pub mod catalog;
pub mod cli;
pub mod error;
pub mod node_cpu;
pub mod ramp;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod subscribe;
pub mod target;

pub use error::Error;
pub use report::RunReport;
pub use runner::{RunConfig, run, run_on};
pub use scenario::Scenario;
