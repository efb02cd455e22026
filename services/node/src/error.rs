//! The one mapping from errors to gRPC status codes. Every error a service returns is an [`ApiError`] first:
//! errors of the layers below (session actors, the world keeper, peers) convert into it here, and only
//! `From<ApiError> for Status` builds a status. Messages are lowercase, without a trailing period, and name the
//! offending field or the limit.

use aisle_session::SessionError;
use tonic::{Code, Status};

use crate::world::WorldError;

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

impl From<WorldError> for ApiError {
    fn from(e: WorldError) -> Self {
        match e {
            WorldError::Unavailable => ApiError::Unavailable(e.to_string()),
            WorldError::Refused(_) | WorldError::NoCandidate | WorldError::NoPrevious => {
                ApiError::FailedPrecondition(e.to_string())
            }
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
        let s: Status = ApiError::from(WorldError::NoCandidate).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ApiError::from(WorldError::Unavailable).into();
        assert_eq!(s.code(), Code::Unavailable);
    }
}
