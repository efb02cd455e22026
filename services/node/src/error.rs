//! The one mapping between errors and gRPC status codes, both ways.
//!
//! - Out: every error a service returns is an [`ApiError`] first: errors of the layers below (session actors, the
//!   world keeper, peers) convert into it, and only `From<ApiError> for Status` builds a status. Messages are
//!   lowercase, without a trailing period, and name the offending field or the limit.
//! - In: a status another node (a peer, the cloud seen from a store edge) answered with is decoded once, into a
//!   [`RemoteError`]: what the caller may do about it — re-resolve, pass it on, give up on this remote.

use aisle_session::SessionError;
use tonic::{Code, Status};

/// An error at the API edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. `events[3].item_id`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of its allowed range in size.
    #[error("{field}: {reason}")]
    OutOfRange {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The request cannot run in the node's current state or configuration (for peers: the sender's view or
    /// ownership differs from this node's; the sender re-resolves).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency inside the node, or the shopper's owner, did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The node is overloaded, or a cap is reached (the message names it).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller is authenticated but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The shopper's owner refused a forwarded request as invalid: its code and message are passed on.
    #[error("{message}")]
    Owner {
        /// The owner's code.
        code: Code,
        /// The owner's message.
        message: String,
    },
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid-argument error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Self::invalid(field, "required")
    }

    /// Whether the request itself is wrong (here or at the owner): the caller must change it, not retry it.
    pub fn is_the_callers(&self) -> bool {
        matches!(
            self,
            ApiError::InvalidArgument { .. } | ApiError::OutOfRange { .. } | ApiError::Owner { .. }
        )
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::OutOfRange { .. } => Code::OutOfRange,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Owner { code, .. } => *code,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotOwner => ApiError::FailedPrecondition(
                "ownership moved: this node does not own the shopper".into(),
            ),
            other => ApiError::Unavailable(format!("session actor: {other}")),
        }
    }
}

/// Why a call to another node (a peer, or the cloud from a store edge) produced no answer: its status decoded once,
/// so that callers decide on what it means, not on codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteError {
    /// FAILED_PRECONDITION: the remote's view or ownership differs from the sender's; re-resolve and retry.
    Stale(String),
    /// INVALID_ARGUMENT or OUT_OF_RANGE: the request itself is wrong; the remote's code and message are passed on.
    Invalid(ApiError),
    /// UNAUTHENTICATED or PERMISSION_DENIED: the remote refuses this node's credentials.
    Denied(String),
    /// DEADLINE_EXCEEDED, or no answer within the caller's time.
    Deadline(String),
    /// Anything else: the remote could not be reached or failed (`CODE: message`).
    Unreachable(String),
    /// Too little of the budget was left to send the request at all.
    NoBudget,
}

impl RemoteError {
    /// The short name of the outcome (a metric label value from a closed set).
    pub fn as_str(&self) -> &'static str {
        match self {
            RemoteError::Stale(_) => "stale",
            RemoteError::Invalid(_) => "invalid",
            RemoteError::Denied(_) => "denied",
            RemoteError::Deadline(_) => "deadline",
            RemoteError::Unreachable(_) => "unreachable",
            RemoteError::NoBudget => "no_budget",
        }
    }

    /// Whether the remote will never take this request (it is wrong), rather than not now.
    pub fn is_final(&self) -> bool {
        matches!(self, RemoteError::Invalid(_))
    }
}

impl From<Status> for RemoteError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::FailedPrecondition => RemoteError::Stale(s.message().into()),
            Code::InvalidArgument | Code::OutOfRange => RemoteError::Invalid(ApiError::Owner {
                code: s.code(),
                message: s.message().into(),
            }),
            Code::Unauthenticated | Code::PermissionDenied => {
                RemoteError::Denied(format!("{:?}: {}", s.code(), s.message()))
            }
            Code::DeadlineExceeded => RemoteError::Deadline(s.message().into()),
            code => RemoteError::Unreachable(format!("{code:?}: {}", s.message())),
        }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Stale(m) | RemoteError::Denied(m) | RemoteError::Unreachable(m) => {
                f.write_str(m)
            }
            RemoteError::Deadline(m) => write!(f, "DeadlineExceeded: {m}"),
            RemoteError::Invalid(e) => write!(f, "{e}"),
            RemoteError::NoBudget => f.write_str("no budget left to forward"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_code_and_field() {
        let s: Status = ApiError::invalid("events[3].item_id", "required").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "events[3].item_id: required");
        let s: Status = ApiError::ResourceExhausted("overloaded".into()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = ApiError::Owner {
            code: Code::OutOfRange,
            message: "limit: at most 100".into(),
        }
        .into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "limit: at most 100")
        );
    }

    #[test]
    fn lower_layers_map_to_their_codes() {
        let s: Status = ApiError::from(SessionError::NotOwner).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ApiError::from(SessionError::Unavailable).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "session actor: session actor unavailable");
    }

    #[test]
    fn a_remote_status_is_decoded_once_into_what_the_caller_can_do() {
        let stale = RemoteError::from(Status::failed_precondition("stale epoch"));
        assert_eq!(stale, RemoteError::Stale("stale epoch".into()));
        let invalid = RemoteError::from(Status::out_of_range("limit: at most 100"));
        assert!(invalid.is_final());
        match invalid {
            RemoteError::Invalid(e) => {
                assert_eq!(
                    (e.code(), e.to_string()),
                    (Code::OutOfRange, "limit: at most 100".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            RemoteError::from(Status::permission_denied("no scope")).as_str(),
            "denied"
        );
        assert_eq!(
            RemoteError::from(Status::deadline_exceeded("late")).as_str(),
            "deadline"
        );
        let down = RemoteError::from(Status::unavailable("connection refused"));
        assert_eq!(down.to_string(), "Unavailable: connection refused");
        assert!(!down.is_final());
        assert_eq!(RemoteError::NoBudget.as_str(), "no_budget");
    }
}
