//! Errors that stop a run before it starts (bad arguments, unreachable target).

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The target is not a usable URL.
    #[error("invalid target {target:?}: {source}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection could be made to the target.
    #[error("target {target} is unreachable: {detail}")]
    Unreachable {
        /// The target.
        target: String,
        /// The transport error and its causes.
        detail: String,
    },
    /// The target lacks a service the run needs.
    #[error("target {target} does not implement {service}, which {needed_by} needs")]
    MissingService {
        /// The target.
        target: String,
        /// The gRPC service.
        service: &'static str,
        /// What needs it.
        needed_by: &'static str,
    },
    /// A `Subscribe` stream could not be opened at the start.
    #[error("cannot subscribe to {store} on {target}: {status}")]
    Subscribe {
        /// The target.
        target: String,
        /// The store subscribed to.
        store: String,
        /// The server's answer.
        status: Box<tonic::Status>,
    },
    /// `--metrics-url` does not serve the node's CPU time.
    #[error("cannot read the node's CPU time from {url}: {detail}")]
    Metrics {
        /// The metrics URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The scheduler thread could not be started or died.
    #[error("scheduler thread failed: {0}")]
    Scheduler(String),
}

/// Renders an error with its chain of causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
