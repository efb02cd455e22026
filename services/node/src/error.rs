//! The one mapping from errors to gRPC status codes. Messages are lowercase, without a trailing period, and name
//! the offending field.

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
    /// The request cannot run in the node's current state or configuration.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency inside the node did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The node is overloaded.
    #[error("{0}")]
    ResourceExhausted(String),
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

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::OutOfRange { .. } => Code::OutOfRange,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
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
    }
}
