//! What kind of failure an error is: its [`Status`], and the HTTP status code it maps to.

use std::fmt;

/// What kind of failure an [`Error`](super::Error) is.
///
/// `#[retry(on = [..])]` and `#[transactional(rollback_on = [..])]` name these, and the `axum`
/// feature maps them to HTTP statuses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum Status {
    /// The message broke a field rule (HTTP 422).
    Validation,
    /// No principal travelled with the message (HTTP 401).
    Unauthenticated,
    /// The principal lacks a permission or role, or a resource policy refused (HTTP 403).
    Forbidden,
    /// Something the message refers to does not exist (HTTP 404).
    NotFound,
    /// The message clashes with the current state: a version, a unique key, an idempotency key
    /// reused with another payload (HTTP 409).
    Conflict,
    /// The deadline passed before the handler finished (HTTP 504).
    Timeout,
    /// A dependency is temporarily unreachable; trying again later may succeed (HTTP 503).
    Unavailable,
    /// A bug or an unexpected failure, including a panicking handler (HTTP 500).
    Internal,
    /// Nobody handles this message (HTTP 500: the bus was built without its handler).
    NoHandler,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 9] = [
        Status::Validation,
        Status::Unauthenticated,
        Status::Forbidden,
        Status::NotFound,
        Status::Conflict,
        Status::Timeout,
        Status::Unavailable,
        Status::Internal,
        Status::NoHandler,
    ];

    /// The status as it appears in logs and metrics, e.g. `"not_found"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Validation => "validation",
            Status::Unauthenticated => "unauthenticated",
            Status::Forbidden => "forbidden",
            Status::NotFound => "not_found",
            Status::Conflict => "conflict",
            Status::Timeout => "timeout",
            Status::Unavailable => "unavailable",
            Status::Internal => "internal",
            Status::NoHandler => "no_handler",
        }
    }

    /// The HTTP status code this status maps to.
    pub const fn http_status(self) -> u16 {
        match self {
            Status::Validation => 422,
            Status::Unauthenticated => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::Conflict => 409,
            Status::Timeout => 504,
            Status::Unavailable => 503,
            Status::Internal | Status::NoHandler => 500,
        }
    }

    /// Whether trying again may succeed without changing the message (`Unavailable`,
    /// `Conflict`, `Timeout`).
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Status::Unavailable | Status::Conflict | Status::Timeout
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
