//! Fault injection for fallback drills and tests: make one stage of the decide pipeline fail or stall. Off unless
//! the node is started with `fault_injection = true`; switched through `AdminService/SetFault`.

use std::sync::atomic::{AtomicU8, Ordering};

/// A stage that can be made to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the shopper's session.
    Session = 0,
    /// Ranking (the FRESH rung).
    Ranking = 1,
    /// The decision cache (the CACHED rung).
    Cache = 2,
    /// Category rules (the RULES rung).
    Rules = 3,
}

/// How a stage misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It works.
    None = 0,
    /// It fails at once.
    Fail = 1,
    /// It does not answer until the deadline.
    Stall = 2,
}

/// The current faults, one per stage.
#[derive(Debug, Default)]
pub struct Faults {
    stages: [AtomicU8; 4],
}

impl Faults {
    /// Sets a stage's fault.
    pub fn set(&self, stage: Stage, mode: Mode) {
        self.stages[stage as usize].store(mode as u8, Ordering::Relaxed);
    }

    /// A stage's fault.
    pub fn get(&self, stage: Stage) -> Mode {
        match self.stages[stage as usize].load(Ordering::Relaxed) {
            1 => Mode::Fail,
            2 => Mode::Stall,
            _ => Mode::None,
        }
    }
}
