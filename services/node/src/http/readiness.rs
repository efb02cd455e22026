//! What `/readyz`, `/healthz` and gRPC health report, in one place.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The node's readiness: every condition must hold to take traffic.
#[derive(Debug)]
pub struct Readiness {
    alive: AtomicBool,
    /// Conditions not yet met (or no longer met), by name, with a reason.
    pending: Mutex<Vec<(&'static str, String)>>,
    /// What is wrong without stopping the node from serving (a log that cannot be written), by name, with a
    /// reason: shown by `/readyz`, which still answers 200.
    degraded: Mutex<Vec<(&'static str, String)>>,
}

impl Readiness {
    /// Not ready until `conditions` are each marked met.
    pub fn new(conditions: &[&'static str]) -> Self {
        Self {
            alive: AtomicBool::new(true),
            pending: Mutex::new(
                conditions
                    .iter()
                    .map(|c| (*c, "starting".to_string()))
                    .collect(),
            ),
            degraded: Mutex::new(Vec::new()),
        }
    }

    /// Marks a condition met.
    pub fn met(&self, condition: &'static str) {
        self.pending
            .lock()
            .expect("readiness lock")
            .retain(|(c, _)| *c != condition);
    }

    /// Marks a condition unmet, with why.
    pub fn unmet(&self, condition: &'static str, reason: impl Into<String>) {
        let mut pending = self.pending.lock().expect("readiness lock");
        pending.retain(|(c, _)| *c != condition);
        pending.push((condition, reason.into()));
    }

    /// Marks the node degraded in `what` (it keeps serving), with why.
    pub fn degrade(&self, what: &'static str, reason: impl Into<String>) {
        let mut degraded = self.degraded.lock().expect("readiness lock");
        degraded.retain(|(c, _)| *c != what);
        degraded.push((what, reason.into()));
    }

    /// `what` works again.
    pub fn restore(&self, what: &'static str) {
        self.degraded
            .lock()
            .expect("readiness lock")
            .retain(|(c, _)| *c != what);
    }

    /// What is degraded, or `None`.
    pub fn degraded_reason(&self) -> Option<String> {
        listed(&self.degraded.lock().expect("readiness lock"))
    }

    /// Why the node is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        listed(&self.pending.lock().expect("readiness lock"))
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Whether the process is alive (false once it is shutting down).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// The node is stopping: not ready, not alive.
    pub fn stopping(&self) {
        self.unmet("serving", "shutting down");
        self.alive.store(false, Ordering::Relaxed);
    }
}

/// `name (reason), …`, or `None` for an empty list.
fn listed(conditions: &[(&'static str, String)]) -> Option<String> {
    (!conditions.is_empty()).then(|| {
        conditions
            .iter()
            .map(|(c, r)| format!("{c} ({r})"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let r = Readiness::new(&["bundles", "serving"]);
        assert!(!r.is_ready());
        r.met("bundles");
        assert_eq!(r.not_ready_reason().unwrap(), "serving (starting)");
        r.met("serving");
        assert!(r.is_ready());
        r.stopping();
        assert!(!r.is_ready() && !r.alive());
    }

    #[test]
    fn degraded_keeps_the_node_ready_and_says_why() {
        let r = Readiness::new(&[]);
        r.degrade("decision trail", "write failing: No space left on device");
        assert!(r.is_ready());
        assert_eq!(
            r.degraded_reason().unwrap(),
            "decision trail (write failing: No space left on device)"
        );
        r.restore("decision trail");
        assert!(r.degraded_reason().is_none());
    }
}
