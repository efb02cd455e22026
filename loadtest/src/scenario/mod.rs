//! What a run sends: the scenarios and their request generators.

pub mod decide;
pub mod mixed;

/// The traffic of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// `Decide` for a Zipf-skewed shopper population over mixed surfaces and channels.
    Decide,
    /// Shopper sessions: ~70% `Track` batches, ~30% `Decide` for shoppers in a session.
    Mixed,
    /// `mixed`, in-store heavy, with associates' `Subscribe` streams open; measures assist delivery latency.
    Subscribe,
    /// `grpc.health.v1.Health/Check`: the floor (same server, transport and connections, no work).
    Health,
}

impl Scenario {
    /// Lowercase name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Decide => "decide",
            Scenario::Mixed => "mixed",
            Scenario::Subscribe => "subscribe",
            Scenario::Health => "health",
        }
    }

    /// True when the scenario sends `Track` and `Decide` (so its headline is `Decide` latency).
    pub fn is_session_traffic(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::Subscribe)
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
