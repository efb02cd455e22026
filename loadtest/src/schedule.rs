//! The open-loop arrival schedule: request `i` is due at `start + i / rate`, whether or not earlier requests were
//! answered. A request's latency is measured from its due time, not from when the generator got round to sending
//! it, so a slow server or a generator that falls behind shows up as latency (no coordinated omission); how late
//! the generator itself sent is recorded apart, as send lag.

use std::time::{Duration, Instant};

/// Time as the scheduler sees it; tests drive a manual clock.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Blocks until `deadline` (returns at once if it has passed).
    fn sleep_until(&self, deadline: Instant);
}

/// The real clock: `Instant::now` and `std::thread::sleep` (high-resolution timers on Linux, tens of µs late,
/// far finer than an async runtime's millisecond timer wheel).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
}

/// Which kind of traffic a window of the run carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The scenario under test.
    Main,
    /// Health checks (the floor), with `--floor`.
    Floor,
}

/// A fixed-rate schedule of `count` requests from `start`, optionally alternating main and floor windows.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    window: Option<Duration>,
}

/// One scheduled request as handed to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// 0-based sequence number.
    pub index: u64,
    /// When it was due.
    pub scheduled: Instant,
    /// When the scheduler handed it out (≥ `scheduled`).
    pub dispatched: Instant,
    /// Which traffic it carries.
    pub lane: Lane,
    /// False during warm-up: sent but not recorded.
    pub measured: bool,
}

impl Schedule {
    /// Requests at `rate` per second from `start`: `warmup` unrecorded, then `duration` recorded. With `window`,
    /// windows of that length alternate main and floor traffic (main first), counted from the end of warm-up.
    pub fn new(
        start: Instant,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        window: Option<Duration>,
    ) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        Self {
            start,
            rate,
            warmup,
            duration,
            window: window.filter(|w| !w.is_zero()),
        }
    }

    /// When the run starts.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Recorded time actually covered when the first `dispatched` requests went out (all of `duration` when
    /// every request did).
    pub fn recorded_after(&self, dispatched: u64) -> Duration {
        if dispatched >= self.count() {
            self.duration
        } else {
            self.offset(dispatched)
                .saturating_sub(self.warmup)
                .min(self.duration)
        }
    }

    /// Total number of requests (warm-up included): every `i` with `i / rate < warmup + duration`.
    pub fn count(&self) -> u64 {
        let total = (self.warmup + self.duration).as_secs_f64() * self.rate;
        // ceil, but a product that is an integer up to rounding error is that integer.
        let n = total.round();
        if (total - n).abs() < 1e-6 {
            n as u64
        } else {
            total.ceil() as u64
        }
    }

    /// Offset of request `i` from the start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// When request `i` is due.
    pub fn at(&self, i: u64) -> Instant {
        self.start + self.offset(i)
    }

    /// The lane and whether it is recorded, for a request due `offset` after the start.
    pub fn classify(&self, offset: Duration) -> (Lane, bool) {
        let measured = offset >= self.warmup;
        let lane = match self.window {
            None => Lane::Main,
            Some(w) => {
                let since = offset.saturating_sub(self.warmup).as_secs_f64();
                if ((since / w.as_secs_f64()).floor() as u64).is_multiple_of(2) {
                    Lane::Main
                } else {
                    Lane::Floor
                }
            }
        };
        (lane, measured)
    }

    /// Recorded time spent in `lane`'s windows.
    pub fn lane_time(&self, lane: Lane) -> Duration {
        self.lane_time_within(lane, self.duration)
    }

    /// Time spent in `lane`'s windows during the first `recorded` of the recorded period (for a run stopped
    /// early).
    pub fn lane_time_within(&self, lane: Lane, recorded: Duration) -> Duration {
        let recorded = recorded.min(self.duration);
        let Some(w) = self.window else {
            return match lane {
                Lane::Main => recorded,
                Lane::Floor => Duration::ZERO,
            };
        };
        let (d, w) = (recorded.as_secs_f64(), w.as_secs_f64());
        let full = (d / w).floor();
        let rest = d - full * w;
        let pairs = (full / 2.0).floor();
        let odd = full - 2.0 * pairs; // 1 when a main window is complete and a floor window is partial
        let (main, floor) = if odd > 0.5 {
            (pairs * w + w, pairs * w + rest)
        } else {
            (pairs * w + rest, pairs * w)
        };
        Duration::from_secs_f64(match lane {
            Lane::Main => main,
            Lane::Floor => floor,
        })
    }
}

/// What the scheduler saw of itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveSummary {
    /// Requests handed out.
    pub dispatched: u64,
    /// Largest gap between a request's due time and its hand-out.
    pub max_dispatch_lag: Duration,
}

/// Hands out every request of `schedule` at its due time: sleeps while ahead, and when behind hands out the
/// overdue requests at once (never skipping or re-timing one). `dispatch` must not block for long: it runs on
/// the scheduler's thread. Returns early when `stop` returns true (checked before every request).
pub fn drive<C: Clock>(
    clock: &C,
    schedule: &Schedule,
    mut stop: impl FnMut() -> bool,
    mut dispatch: impl FnMut(Tick),
) -> DriveSummary {
    let mut summary = DriveSummary::default();
    for index in 0..schedule.count() {
        if stop() {
            break;
        }
        let offset = schedule.offset(index);
        let scheduled = schedule.start + offset;
        if clock.now() < scheduled {
            clock.sleep_until(scheduled);
        }
        let dispatched = clock.now().max(scheduled);
        summary.max_dispatch_lag = summary.max_dispatch_lag.max(dispatched - scheduled);
        let (lane, measured) = schedule.classify(offset);
        dispatch(Tick {
            index,
            scheduled,
            dispatched,
            lane,
            measured,
        });
        summary.dispatched += 1;
    }
    summary
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::stats::LaneStats;

    /// A clock that only moves when slept on or advanced by hand.
    struct ManualClock {
        now: Cell<Instant>,
    }

    impl ManualClock {
        fn advance(&self, d: Duration) {
            self.now.set(self.now.get() + d);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn sleep_until(&self, deadline: Instant) {
            if deadline > self.now.get() {
                self.now.set(deadline);
            }
        }
    }

    #[test]
    fn count_is_rate_times_duration() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 200.0, Duration::ZERO, Duration::from_secs(3), None);
        assert_eq!(s.count(), 600);
        let s = Schedule::new(t0, 3.0, Duration::ZERO, Duration::from_millis(500), None);
        assert_eq!(s.count(), 2); // at 0 and 1/3 s
        let s = Schedule::new(
            t0,
            100.0,
            Duration::from_secs(1),
            Duration::from_secs(2),
            None,
        );
        assert_eq!(s.count(), 300);
        assert_eq!(s.at(150), t0 + Duration::from_millis(1500));
    }

    /// The generator falls behind (each dispatch takes 3 ms at 1,000 rps): every request keeps its due time,
    /// none is skipped, and the recorded latency runs from the due time, so the generator's own lag is in it.
    #[test]
    fn a_slow_generator_keeps_due_times_and_latency_counts_from_them() {
        let t0 = Instant::now();
        let clock = ManualClock { now: Cell::new(t0) };
        let s = Schedule::new(
            t0,
            1_000.0,
            Duration::ZERO,
            Duration::from_millis(100),
            None,
        );
        let stats = LaneStats::default();
        let mut ticks = Vec::new();
        let summary = drive(
            &clock,
            &s,
            || false,
            |tick| {
                ticks.push(tick);
                // Dispatching is slow; the server answers 1 ms after the request leaves.
                clock.advance(Duration::from_millis(3));
                let sent = clock.now();
                let done = sent + Duration::from_millis(1);
                stats.record_sent(tick.scheduled, sent);
                stats.record_ok(crate::stats::Kind::Health, tick.scheduled, done);
            },
        );
        assert_eq!(summary.dispatched, 100);
        assert_eq!(ticks.len(), 100);
        for (i, t) in ticks.iter().enumerate() {
            assert_eq!(t.index, i as u64);
            assert_eq!(t.scheduled, t0 + Duration::from_millis(i as u64));
        }
        // Request i leaves at 3(i+1) ms and is answered 1 ms later: latency from due time = 2i + 4 ms.
        let snap = stats.snapshot();
        assert_eq!(snap.max_latency_us(), 2 * 99 * 1_000 + 4_000);
        assert!(snap.latency_quantile_us(0.0) >= 3_990);
        assert!(snap.send_lag_max_us() >= 2 * 99 * 1_000);
    }

    /// An on-time generator sleeps to each due time and hands out with no lag.
    #[test]
    fn an_on_time_generator_has_no_lag() {
        let t0 = Instant::now();
        let clock = ManualClock { now: Cell::new(t0) };
        let s = Schedule::new(t0, 50.0, Duration::ZERO, Duration::from_secs(1), None);
        let mut last = None;
        let summary = drive(
            &clock,
            &s,
            || false,
            |tick| {
                assert_eq!(tick.dispatched, tick.scheduled);
                last = Some(tick);
            },
        );
        assert_eq!(summary.dispatched, 50);
        assert_eq!(summary.max_dispatch_lag, Duration::ZERO);
        assert_eq!(last.unwrap().scheduled, t0 + Duration::from_millis(980));
    }

    #[test]
    fn windows_alternate_after_warmup() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            10.0,
            Duration::from_secs(1),
            Duration::from_millis(3_500),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(s.classify(Duration::from_millis(500)), (Lane::Main, false));
        assert_eq!(s.classify(Duration::from_millis(1_000)), (Lane::Main, true));
        assert_eq!(
            s.classify(Duration::from_millis(2_100)),
            (Lane::Floor, true)
        );
        assert_eq!(s.classify(Duration::from_millis(3_100)), (Lane::Main, true));
        assert_eq!(
            s.classify(Duration::from_millis(4_400)),
            (Lane::Floor, true)
        );
        assert_eq!(s.lane_time(Lane::Main), Duration::from_secs(2));
        assert_eq!(s.lane_time(Lane::Floor), Duration::from_millis(1_500));
        // Stopped after 2.5 s of recording (request 35 of 45 due at 3.5 s from the start).
        assert_eq!(s.recorded_after(35), Duration::from_millis(2_500));
        assert_eq!(s.recorded_after(45), Duration::from_millis(3_500));
        assert_eq!(s.recorded_after(3), Duration::ZERO);
        let main = s.lane_time_within(Lane::Main, s.recorded_after(35));
        assert_eq!(main, Duration::from_millis(1_500));
        let clock = ManualClock { now: Cell::new(t0) };
        let (mut main, mut floor) = (0, 0);
        drive(
            &clock,
            &s,
            || false,
            |t| match (t.lane, t.measured) {
                (Lane::Main, true) => main += 1,
                (Lane::Floor, true) => floor += 1,
                _ => {}
            },
        );
        assert_eq!((main, floor), (20, 15));
        let plain = Schedule::new(t0, 10.0, Duration::ZERO, Duration::from_secs(2), None);
        assert_eq!(plain.lane_time(Lane::Main), Duration::from_secs(2));
        assert_eq!(plain.lane_time(Lane::Floor), Duration::ZERO);
    }

    #[test]
    fn stop_ends_the_schedule_early() {
        let t0 = Instant::now();
        let clock = ManualClock { now: Cell::new(t0) };
        let s = Schedule::new(t0, 100.0, Duration::ZERO, Duration::from_secs(1), None);
        let n = Cell::new(0);
        let summary = drive(&clock, &s, || n.get() >= 10, |_| n.set(n.get() + 1));
        assert_eq!(summary.dispatched, 10);
    }
}
