//! Fair share per caller: a token (or certificate identity) may carry `rate_per_sec` — a token bucket refilled at
//! that rate holding at most one second of it — and `max_concurrent`, a cap on its requests in flight. A request
//! beyond either gets RESOURCE_EXHAUSTED with a retry hint before any handler runs, so one caller's flood is
//! answered cheaply and leaves the node's capacity to the others. The state lives with the identity: it starts
//! afresh when the token file is re-read.
//!
//! Long-lived streams are capped apart ([`StreamSlots`]): Subscribe streams (`max_subscribe_streams`) and store edges'
//! bundle feeds (`max_edge_feeds`), each in total and per identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Highest `rate_per_sec` a token file may give.
pub const MAX_RATE_PER_SEC: u32 = 1_000_000;
/// Highest `max_concurrent` a token file may give.
pub const MAX_CONCURRENT: u32 = 100_000;

/// A caller's limits and their state.
#[derive(Debug)]
pub struct Limits {
    rate_per_sec: Option<u32>,
    max_concurrent: Option<u32>,
    bucket: Mutex<Bucket>,
    inflight: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a request was not admitted, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Over {
    /// Past `rate_per_sec`.
    Rate {
        /// The caller's rate.
        rate_per_sec: u32,
        /// When the bucket holds a request again, milliseconds from now.
        retry_ms: u64,
    },
    /// `max_concurrent` requests in flight already.
    Concurrency {
        /// The caller's cap.
        max_concurrent: u32,
    },
}

impl Over {
    /// The retry hint, milliseconds.
    pub fn retry_ms(&self) -> u64 {
        match self {
            Over::Rate { retry_ms, .. } => *retry_ms,
            // A request in flight usually ends within a decision budget.
            Over::Concurrency { .. } => 50,
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Over::Rate { .. } => "rate_limited",
            Over::Concurrency { .. } => "too_many_concurrent",
        }
    }
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Over::Rate {
                rate_per_sec,
                retry_ms,
            } => write!(
                f,
                "past rate_per_sec ({rate_per_sec}/s); retry in {retry_ms} ms"
            ),
            Over::Concurrency { max_concurrent } => write!(
                f,
                "max_concurrent ({max_concurrent}) requests already in flight; retry when one ends"
            ),
        }
    }
}

/// Holds one request's place under `max_concurrent` until dropped.
#[derive(Debug)]
pub struct Admitted(Option<Arc<AtomicUsize>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limits {
    /// Limits of `rate_per_sec` and `max_concurrent` (`None`: that one is not limited); `None` when neither is.
    pub fn new(rate_per_sec: Option<u32>, max_concurrent: Option<u32>) -> Option<Self> {
        if rate_per_sec.is_none() && max_concurrent.is_none() {
            return None;
        }
        Some(Self {
            rate_per_sec,
            max_concurrent,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(rate_per_sec.unwrap_or(0)),
                at: Instant::now(),
            }),
            inflight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Admits one request now, or says why not.
    ///
    /// # Errors
    /// Past the rate, or at the concurrency cap.
    pub fn admit(&self) -> Result<Admitted, Over> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<Admitted, Over> {
        let held = match self.max_concurrent {
            Some(max) => {
                let before = self.inflight.fetch_add(1, Ordering::AcqRel);
                let held = Admitted(Some(self.inflight.clone()));
                if before >= max as usize {
                    return Err(Over::Concurrency {
                        max_concurrent: max,
                    });
                }
                held
            }
            None => Admitted(None),
        };
        if let Some(rate) = self.rate_per_sec {
            let rate_f = f64::from(rate);
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate_f).min(rate_f.max(1.0));
            b.at = now;
            if b.tokens < 1.0 {
                let retry_ms = ((1.0 - b.tokens) / rate_f * 1_000.0).ceil().max(1.0) as u64;
                return Err(Over::Rate {
                    rate_per_sec: rate,
                    retry_ms,
                });
            }
            b.tokens -= 1.0;
        }
        Ok(held)
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// Open streams of one kind (Subscribe streams, edge feeds), in total and per identity, under their caps.
#[derive(Debug)]
pub struct StreamSlots {
    /// The setting of the total cap (the per-caller one is it with `_per_caller`), named in refusals.
    setting: &'static str,
    max_total: usize,
    max_per_caller: usize,
    open: Mutex<(usize, HashMap<Arc<str>, usize>)>,
}

/// One open stream's place; freed when the stream ends, however it ends.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<StreamSlots>,
    caller: Arc<str>,
}

impl StreamSlots {
    /// Caps of `max_total` streams, `max_per_caller` per identity, set by `setting` (and `{setting}_per_caller`).
    pub fn new(setting: &'static str, max_total: usize, max_per_caller: usize) -> Self {
        Self {
            setting,
            max_total,
            max_per_caller,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a place for `caller`'s new stream.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED naming the cap that is reached.
    pub fn take(self: &Arc<Self>, caller: &Arc<str>) -> Result<Slot, crate::error::ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max_total {
            return Err(crate::error::ApiError::ResourceExhausted(format!(
                "{} ({}) reached on this node",
                self.setting, self.max_total
            )));
        }
        let mine = open.1.entry(caller.clone()).or_insert(0);
        if *mine >= self.max_per_caller {
            return Err(crate::error::ApiError::ResourceExhausted(format!(
                "{}_per_caller ({}) reached for {caller}",
                self.setting, self.max_per_caller
            )));
        }
        *mine += 1;
        open.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            caller: caller.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rate_admits_a_second_of_burst_then_its_refill() {
        let l = Limits::new(Some(10), None).unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(l.admit_at(t0).is_ok(), "burst request {i}");
        }
        let over = l.admit_at(t0).unwrap_err();
        assert_eq!(
            over,
            Over::Rate {
                rate_per_sec: 10,
                retry_ms: 100
            }
        );
        assert!(over.to_string().contains("retry in 100 ms"));
        // 250 ms later: two more (the bucket refilled 2.5).
        let t1 = t0 + Duration::from_millis(250);
        assert!(l.admit_at(t1).is_ok());
        assert!(l.admit_at(t1).is_ok());
        assert!(l.admit_at(t1).is_err());
        // The bucket never holds more than a second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| l.admit_at(t2).is_ok()).count(), 10);
    }

    #[test]
    fn at_most_max_concurrent_in_flight_and_a_refused_one_holds_no_place() {
        let l = Limits::new(None, Some(2)).unwrap();
        let a = l.admit().unwrap();
        let b = l.admit().unwrap();
        assert_eq!(
            l.admit().unwrap_err(),
            Over::Concurrency { max_concurrent: 2 }
        );
        assert_eq!(l.inflight(), 2, "the refused request released its place");
        drop(a);
        let c = l.admit().unwrap();
        drop((b, c));
        assert_eq!(l.inflight(), 0);
        assert!(Limits::new(None, None).is_none());
    }

    #[test]
    fn stream_caps_are_per_identity_and_in_total_and_freed_when_streams_end() {
        let slots = Arc::new(StreamSlots::new("max_subscribe_streams", 3, 2));
        let (a, b): (Arc<str>, Arc<str>) = ("token:a".into(), "token:b".into());
        let a1 = slots.take(&a).unwrap();
        let _a2 = slots.take(&a).unwrap();
        let e = slots.take(&a).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.to_string()
                .contains("max_subscribe_streams_per_caller (2)"),
            "{e}"
        );
        let _b1 = slots.take(&b).unwrap();
        let e = slots.take(&b).unwrap_err();
        assert!(e.to_string().contains("max_subscribe_streams (3)"), "{e}");
        drop(a1);
        assert!(
            slots.take(&b).is_ok(),
            "a place is freed when a stream ends"
        );
    }
}
