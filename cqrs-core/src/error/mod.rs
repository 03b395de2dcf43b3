//! The one error type of the bus, and its status.

mod classify;
mod status;

pub use self::status::Status;

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unused_imports)
)]
pub(crate) use self::classify::ErrorClassifier;
use self::classify::classify;

use std::any::Any;
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The source of an [`Error`]: any standard error, shared so that errors can be cloned.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// One failing field of a message that broke its validation rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// The field's name (`address.city` for nested fields, `items[2]` for list items).
    pub field: String,
    /// A machine-readable code for the rule, e.g. `email` or `length`.
    pub code: String,
    /// A message for people.
    pub message: String,
}

impl FieldError {
    /// A field error from its parts.
    pub fn new(
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The error of every dispatch and every handler.
///
/// Handlers build one with the constructors (`Error::not_found("user 42")`) or with `?` on any
/// [`std::error::Error`], which gives [`Status::Internal`] (or a better status for errors the bus
/// recognises: connection-level I/O errors (refused, reset, timed out, unreachable,
/// interrupted) are `Unavailable`, `tokio`'s elapsed timer is `Timeout`, a [`StdErrorAdapter`]
/// gives back the `Error` it carries,
/// and with the database features, serialization failures and unique violations are `Conflict`,
/// and a lost connection, a server shutting down, a busy or locked SQLite file, a full disk or
/// a database I/O error are `Unavailable`)
/// and keeps the original error as the [`source`](Error::source).
///
/// `to_string()` is the status and the message; `format!("{error:#}")` adds the causes along
/// the source chain, as the bus's own log lines do (a `500` response shows neither: the details
/// are in the logs).
///
/// ```
/// use cqrs_core::{Error, Status};
///
/// fn parse(input: &str) -> Result<u32, Error> {
///     Ok(input.parse::<u32>()?) // ParseIntError -> Status::Internal, source kept
/// }
/// assert_eq!(parse("x").unwrap_err().status(), Status::Internal);
/// assert!(parse("x").unwrap_err().source().is_some());
///
/// let e = Error::not_found("user 42");
/// assert_eq!(e.status(), Status::NotFound);
/// assert_eq!(e.to_string(), "not found: user 42");
/// ```
///
/// Like `anyhow::Error`, this type does not implement [`std::error::Error`] itself (that would
/// conflict with the blanket `From`); convert with `Box::<dyn std::error::Error + Send + Sync>::from(e)`
/// where a standard error is needed.
#[derive(Clone)]
#[non_exhaustive]
pub enum Error {
    /// The message broke field rules; every failing field is listed.
    Validation {
        /// The failing fields, with their messages.
        fields: Vec<FieldError>,
    },
    /// No principal.
    Unauthenticated {
        /// What was missing.
        message: Cow<'static, str>,
    },
    /// The principal may not do this.
    Forbidden {
        /// What is missing (permission, role) or which policy refused.
        message: Cow<'static, str>,
    },
    /// Something does not exist.
    NotFound {
        /// What was not found.
        message: Cow<'static, str>,
        /// The underlying error, if any.
        source: Option<Source>,
    },
    /// A clash with the current state.
    Conflict {
        /// What clashed.
        message: Cow<'static, str>,
        /// The underlying error, if any.
        source: Option<Source>,
    },
    /// The deadline passed.
    Timeout {
        /// Which deadline.
        message: Cow<'static, str>,
    },
    /// A dependency is temporarily unreachable.
    Unavailable {
        /// What is unavailable.
        message: Cow<'static, str>,
        /// The underlying error, if any.
        source: Option<Source>,
    },
    /// An unexpected failure.
    Internal {
        /// What failed.
        message: Cow<'static, str>,
        /// The underlying error, if any.
        source: Option<Source>,
    },
    /// Nobody handles the message.
    NoHandler {
        /// Which message.
        message: Cow<'static, str>,
    },
}

impl Error {
    /// An error of the given status with a message.
    pub fn new(status: Status, message: impl Into<Cow<'static, str>>) -> Self {
        let message = message.into();
        match status {
            Status::Validation => Error::Validation {
                fields: vec![FieldError::new("", "invalid", message)],
            },
            Status::Unauthenticated => Error::Unauthenticated { message },
            Status::Forbidden => Error::Forbidden { message },
            Status::NotFound => Error::NotFound {
                message,
                source: None,
            },
            Status::Conflict => Error::Conflict {
                message,
                source: None,
            },
            Status::Timeout => Error::Timeout { message },
            Status::Unavailable => Error::Unavailable {
                message,
                source: None,
            },
            Status::Internal => Error::Internal {
                message,
                source: None,
            },
            Status::NoHandler => Error::NoHandler { message },
        }
    }

    /// A validation error listing every failing field.
    pub fn validation(fields: impl IntoIterator<Item = FieldError>) -> Self {
        Error::Validation {
            fields: fields.into_iter().collect(),
        }
    }

    /// No principal travelled with the message.
    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Unauthenticated, message)
    }

    /// The principal may not do this.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Forbidden, message)
    }

    /// Something does not exist.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::NotFound, message)
    }

    /// A clash with the current state.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Conflict, message)
    }

    /// The deadline passed.
    pub fn timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Timeout, message)
    }

    /// A dependency is temporarily unreachable.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Unavailable, message)
    }

    /// An unexpected failure.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::Internal, message)
    }

    /// Nobody handles the message.
    pub fn no_handler(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Status::NoHandler, message)
    }

    /// Keeps `source` as the underlying error (ignored by statuses that carry none:
    /// `Validation`, `Unauthenticated`, `Forbidden`, `Timeout`, `NoHandler`).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        if let Some(slot) = self.source_slot() {
            *slot = Some(Arc::new(source));
        }
        self
    }

    /// Wraps any standard error with an explicit status, keeping it as the source.
    pub fn from_std(status: Status, error: impl StdError + Send + Sync + 'static) -> Self {
        Error::new(status, error.to_string()).with_source(error)
    }

    /// The status of this error.
    pub fn status(&self) -> Status {
        match self {
            Error::Validation { .. } => Status::Validation,
            Error::Unauthenticated { .. } => Status::Unauthenticated,
            Error::Forbidden { .. } => Status::Forbidden,
            Error::NotFound { .. } => Status::NotFound,
            Error::Conflict { .. } => Status::Conflict,
            Error::Timeout { .. } => Status::Timeout,
            Error::Unavailable { .. } => Status::Unavailable,
            Error::Internal { .. } => Status::Internal,
            Error::NoHandler { .. } => Status::NoHandler,
        }
    }

    /// The message, without the status prefix (for validation errors, the fields joined).
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            Error::Validation { fields } => Cow::Owned(
                fields
                    .iter()
                    .map(|f| {
                        if f.field.is_empty() {
                            f.message.clone()
                        } else {
                            format!("{}: {}", f.field, f.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Error::Unauthenticated { message }
            | Error::Forbidden { message }
            | Error::NotFound { message, .. }
            | Error::Conflict { message, .. }
            | Error::Timeout { message }
            | Error::Unavailable { message, .. }
            | Error::Internal { message, .. }
            | Error::NoHandler { message } => Cow::Borrowed(message),
        }
    }

    /// The failing fields of a validation error (empty for every other status).
    pub fn fields(&self) -> &[FieldError] {
        match self {
            Error::Validation { fields } => fields,
            _ => &[],
        }
    }

    /// The underlying error, if this error wraps one.
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Error::NotFound { source, .. }
            | Error::Conflict { source, .. }
            | Error::Unavailable { source, .. }
            | Error::Internal { source, .. } => source.as_deref(),
            _ => None,
        }
    }

    /// Looks for an error of type `E` in the source chain.
    pub fn find_source<E: StdError + 'static>(&self) -> Option<&E> {
        let mut next: Option<&(dyn StdError + 'static)> = self.source().map(|s| s as _);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }

    fn source_slot(&mut self) -> Option<&mut Option<Source>> {
        match self {
            Error::NotFound { source, .. }
            | Error::Conflict { source, .. }
            | Error::Unavailable { source, .. }
            | Error::Internal { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Adds context in front of the message: `"loading user 42: <message>"`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        match &mut self {
            Error::Validation { .. } => {}
            Error::Unauthenticated { message }
            | Error::Forbidden { message }
            | Error::NotFound { message, .. }
            | Error::Conflict { message, .. }
            | Error::Timeout { message }
            | Error::Unavailable { message, .. }
            | Error::Internal { message, .. }
            | Error::NoHandler { message } => {
                *message = Cow::Owned(format!("{context}: {message}"));
            }
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.status() {
            Status::Validation => "validation failed",
            Status::Unauthenticated => "unauthenticated",
            Status::Forbidden => "forbidden",
            Status::NotFound => "not found",
            Status::Conflict => "conflict",
            Status::Timeout => "timeout",
            Status::Unavailable => "unavailable",
            Status::Internal => "internal error",
            Status::NoHandler => "no handler",
        };
        write!(f, "{label}: {}", self.message())?;
        if f.alternate() {
            // `{:#}`: the causes too, as `anyhow` prints them, skipping one whose text the
            // message already holds (`?` on a standard error copies its text into the message).
            let mut written = self.message().into_owned();
            let mut next = self.source().map(|s| s as &(dyn StdError + 'static));
            while let Some(cause) = next {
                let text = cause.to_string();
                if !written.contains(&text) {
                    write!(f, ": {text}")?;
                    written.push_str(&text);
                }
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("status", &self.status());
        match self {
            Error::Validation { fields } => d.field("fields", fields),
            _ => d.field("message", &self.message()),
        };
        if let Some(source) = self.source() {
            d.field("source", &source);
        }
        d.finish()
    }
}

impl<E> From<E> for Error
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        // An adapter carries an `Error` already: give it back as it was (its message, its
        // fields), rather than one whose message is the adapter's `Display` of it.
        let mut slot = Some(error);
        if let Some(StdErrorAdapter(inner)) = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<StdErrorAdapter>>()
            .and_then(Option::take)
        {
            return inner;
        }
        let Some(error) = slot else {
            return Error::internal("an error was lost converting it");
        };
        let status = classify(&error);
        if status == Status::Validation {
            // A rule the database enforces on a value (text it cannot store). A validation
            // error carries no source and its fields reach the client, so it says what is
            // wrong in stable words; the driver's own text, which names internals, is logged.
            tracing::debug!(target: "cqrs", error = %error, "the database refused a value");
            return Error::validation([FieldError::new(
                "",
                "unstorable",
                "contains a value the database cannot store, such as a NUL character",
            )]);
        }
        Error::new(status, error.to_string()).with_source(error)
    }
}

/// A standard error carrying a cqrs [`Error`], for APIs that need `std::error::Error`.
#[derive(Debug, Clone)]
pub struct StdErrorAdapter(pub Error);

impl fmt::Display for StdErrorAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for StdErrorAdapter {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source().map(|s| s as _)
    }
}

impl From<Error> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(error: Error) -> Self {
        Box::new(StdErrorAdapter(error))
    }
}

impl From<Error> for Box<dyn StdError + 'static> {
    fn from(error: Error) -> Self {
        Box::new(StdErrorAdapter(error))
    }
}

/// Turns a caught panic payload into an `Internal` error naming what panicked.
pub(crate) fn from_panic(what: &str, payload: Box<dyn Any + Send>) -> Error {
    let detail = payload
        .downcast_ref::<&'static str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    Error::internal(format!("{what} panicked: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_unavailable() {
        let e: Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(e.status(), Status::Unavailable);
        assert!(e.find_source::<std::io::Error>().is_some());
    }

    #[test]
    fn alternate_display_adds_the_causes_once() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::from_std(Status::Unavailable, io).context("saving the order");
        assert_eq!(e.to_string(), format!("unavailable: {}", e.message()));
        let full = format!("{e:#}");
        assert!(full.contains("saving the order"), "{full}");
        assert_eq!(full.matches("disk on fire").count(), 1, "{full}");

        let wrapped = Error::internal("the projection failed")
            .with_source(std::io::Error::other("connection refused by 10.0.0.7"));
        assert_eq!(
            format!("{wrapped:#}"),
            "internal error: the projection failed: connection refused by 10.0.0.7"
        );
    }

    #[test]
    fn a_missing_file_is_internal_not_a_missing_resource() {
        let e: Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert_eq!(e.status(), Status::Internal);
    }

    #[test]
    fn adapter_round_trips_the_error_as_it_was() {
        let boxed: Box<dyn StdError + Send + Sync> = Error::conflict("v2 != v3").into();
        assert!(boxed.to_string().contains("v2 != v3"));

        let back = Error::from(StdErrorAdapter(Error::conflict("again")));
        assert_eq!(back.status(), Status::Conflict);
        assert_eq!(back.to_string(), "conflict: again");

        let fields = [FieldError::new("email", "email", "not an email")];
        let back = Error::from(StdErrorAdapter(Error::validation(fields.clone())));
        assert_eq!(back.fields(), &fields[..]);
    }

    #[test]
    fn an_adapter_deeper_in_the_source_chain_gives_its_status() {
        #[derive(Debug)]
        struct Wrapper(StdErrorAdapter);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("while saving")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::from(Wrapper(StdErrorAdapter(Error::unavailable("db down"))));
        assert_eq!(e.status(), Status::Unavailable);
        assert!(e.find_source::<Wrapper>().is_some());
    }

    #[test]
    fn validation_message_lists_fields() {
        let e = Error::validation([
            FieldError::new("email", "email", "not an email"),
            FieldError::new("password", "length", "too short"),
        ]);
        assert_eq!(
            e.to_string(),
            "validation failed: email: not an email; password: too short"
        );
    }
}
