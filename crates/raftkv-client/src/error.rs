//! `ClientError`: how a call can fail, from the caller's point of view. The key distinction is
//! between a write that certainly did not happen ([`ClientError::Unavailable`]) and one whose
//! outcome cannot be known ([`ClientError::Indeterminate`]).

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request is malformed (empty key, value over the limit, bad range...). Retrying the
    /// same request cannot succeed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No node could serve the call before its deadline. A write that fails this way was not
    /// applied.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but its outcome is unknown: it may or may not have been applied (for
    /// example the leader died, or the deadline passed, after the write was sent).
    #[error("indeterminate: the write may or may not have been applied ({0})")]
    Indeterminate(String),
    /// The cluster requires a token and this call carried none, or one it does not know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The call's token does not have the role this call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// The client configuration is unusable (no endpoints, a malformed address...).
    #[error("client configuration: {0}")]
    Config(String),
    /// A watch asked for changes no reachable node still holds (`oldest` is the oldest
    /// revision one does). Read the current state and watch again from its revision + 1.
    #[error("compacted: {message}")]
    Compacted { oldest: u64, message: String },
    /// The thing the call named does not exist (a lease that expired or was revoked).
    #[error("not found: {0}")]
    NotFound(String),
    /// The call would create something that exists already (a lease id in use).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Any other error the server returned.
    #[error("server error {code:?}: {message}")]
    Server { code: Code, message: String },
}

impl ClientError {
    pub(crate) fn from_status(s: &Status) -> Self {
        match s.code() {
            Code::InvalidArgument => Self::InvalidArgument(s.message().to_string()),
            Code::Unauthenticated => Self::Unauthenticated(s.message().to_string()),
            Code::PermissionDenied => Self::PermissionDenied(s.message().to_string()),
            Code::NotFound => Self::NotFound(s.message().to_string()),
            Code::AlreadyExists => Self::AlreadyExists(s.message().to_string()),
            code => Self::Server {
                code,
                message: s.message().to_string(),
            },
        }
    }

    /// Whether the cluster could not be reached or could not decide (exit code 3 in the CLI).
    pub fn is_unavailable_or_indeterminate(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Indeterminate(_))
    }
}
