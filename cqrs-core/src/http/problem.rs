//! Problem details (RFC 9457): what an error answer says, what only the log gets.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::*;
use crate::error::{Error, FieldError, Status};

/// A problem, as RFC 9457 describes it (`application/problem+json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem (`about:blank` plus the status's title here).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem, the same for every problem of a `code`.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened: the message the application wrote, or a fixed text for the status when
    /// the error's message is not for clients (see the [module docs](crate::http#errors)).
    pub detail: String,
    /// A machine-readable name of the problem: the [`Status`] as cqrs names it (`validation`,
    /// `conflict`, ..), or one of this module's (`bad_request`, `unsupported_media_type`, ..).
    pub code: String,
    /// For validation problems: every failing field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request's correlation id (as in `X-Correlation-Id`), when the [`correlation`] layer
    /// gave it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
}

impl ProblemDetails {
    /// The problem details of an error, as a client may see them.
    pub fn from_error(error: &Error) -> Self {
        let status = error.status();
        let title = match status {
            Status::Validation => "Validation failed",
            Status::Unauthenticated => "Authentication required",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not found",
            Status::Conflict => "Conflict",
            Status::Timeout => "Timed out",
            Status::Unavailable => "Service unavailable",
            Status::Internal | Status::NoHandler => "Internal server error",
        };
        let detail = match public_message(error) {
            Some(message) => message.into_owned(),
            None => fixed_detail(status).to_owned(),
        };
        ProblemDetails {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.http_status(),
            detail,
            code: status.as_str().to_owned(),
            errors: error.fields().to_vec(),
            correlation_id: None,
        }
    }
}

/// The error's message if it is meant for the client (see the [module docs](crate::http#errors)).
pub(super) fn public_message(error: &Error) -> Option<Cow<'_, str>> {
    let status = error.status();
    if status.http_status() >= 500 {
        return None;
    }
    let message = error.message();
    let mut cause = error
        .source()
        .map(|s| s as &(dyn std::error::Error + 'static));
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && message.contains(text.as_str()) {
            return None;
        }
        cause = e.source();
    }
    Some(message)
}

/// The detail of an error whose message stays in the logs.
pub(super) fn fixed_detail(status: Status) -> &'static str {
    match status {
        Status::Validation => "the request is not valid",
        Status::Unauthenticated => "the request needs an authenticated caller",
        Status::Forbidden => "the caller may not do this",
        Status::NotFound => "what the request refers to does not exist",
        Status::Conflict => {
            "the request conflicts with the current state; it may succeed if sent again"
        }
        Status::Timeout => "the request did not finish in time",
        Status::Unavailable => {
            "a service the request needs is unavailable for now; try again later"
        }
        Status::Internal | Status::NoHandler => "the server failed to handle the request",
    }
}

/// An error answer: [`ProblemDetails`] with their HTTP status, and, for the log, the
/// [`Error`] they came from.
///
/// The extractors of this module refuse requests with one, and an [`Error`] converts into one
/// (`From`), so a hand-written route may return `Result<_, Problem>` and use `?` on both; or
/// `Result<_, Error>`, which answers the same.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemParts>);

/// Boxed: a `Problem` is the error of every extractor's `Result`, kept one pointer wide.
#[derive(Debug, Clone)]
pub(super) struct ProblemParts {
    status: StatusCode,
    details: ProblemDetails,
    error: Option<Error>,
    retry_after: Option<Duration>,
}

impl Problem {
    /// A problem of this module's own (not from an [`Error`]): `code` names it, `title` sums up
    /// the kind, `detail` is shown to the client as it is.
    pub fn new(
        status: StatusCode,
        code: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem(Box::new(ProblemParts {
            status,
            details: ProblemDetails {
                kind: "about:blank".to_owned(),
                title: title.into(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.into(),
                errors: Vec::new(),
                correlation_id: None,
            },
            error: None,
            retry_after: None,
        }))
    }

    /// `400 Bad Request` (`bad_request`): the request is malformed (syntax, a header, a path
    /// parameter); `detail` says what to fix.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad request",
            detail,
        )
    }

    /// `413 Content Too Large` (`content_too_large`): the body is over the [`body_limit`].
    pub fn content_too_large() -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_large",
            "Content too large",
            "the request body is larger than this server accepts",
        )
    }

    /// `415 Unsupported Media Type` (`unsupported_media_type`).
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail,
        )
    }

    /// Sets the `Retry-After` of the answer (whole seconds, rounded up). A `503` has
    /// [`DEFAULT_RETRY_AFTER`] unless set.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.0.retry_after = Some(after);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// What the client receives (without the correlation id, which is added when the answer is
    /// rendered).
    pub fn details(&self) -> &ProblemDetails {
        &self.0.details
    }

    /// The error this problem came from, if any: what the log gets, which the client may not.
    pub fn error(&self) -> Option<&Error> {
        self.0.error.as_ref()
    }

    /// Writes the one log line of this answer (see the [module docs](crate::http#logs)).
    fn log(&self, request: Option<&RequestInfo>) {
        let correlation_id = request.map(|r| tracing::field::display(r.correlation));
        let method = request.map(|r| tracing::field::display(&r.method));
        let path = request.map(|r| tracing::field::debug(&r.path));
        let status = self.0.status.as_u16();
        let code = self.0.details.code.as_str();
        // The full error, causes included, for the server's eyes; Debug-escaped, as it may
        // quote what the client sent.
        let detail = match &self.0.error {
            Some(error) => format!("{error:#}"),
            None => self.0.details.detail.clone(),
        };
        if self.0.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(target: "cqrs::http", correlation_id, method, path, status, code, detail = ?detail, "request failed");
        } else if self.0.status.is_server_error() {
            tracing::warn!(target: "cqrs::http", correlation_id, method, path, status, code, detail = ?detail, "request failed");
        } else {
            tracing::info!(target: "cqrs::http", correlation_id, method, path, status, code, detail = ?detail, "request refused");
        }
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        let status = StatusCode::from_u16(error.status().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Problem(Box::new(ProblemParts {
            status,
            details: ProblemDetails::from_error(&error),
            error: Some(error),
            retry_after: None,
        }))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let request = REQUEST.try_with(Clone::clone).ok();
        self.log(request.as_ref());
        let mut parts = *self.0;
        parts.details.correlation_id = request.as_ref().map(|r| r.correlation);
        let body = serde_json::to_vec(&parts.details).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (parts.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(request) = &request
            && let Ok(value) = HeaderValue::from_str(&request.correlation.to_string())
        {
            headers.insert(CORRELATION_ID, value);
        }
        if parts.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        let retry_after = parts
            .retry_after
            .or((parts.status == StatusCode::SERVICE_UNAVAILABLE).then_some(DEFAULT_RETRY_AFTER));
        if let Some(after) = retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// A fallback handler answering `404` as a problem (`.fallback(http::not_found)`), logged with
/// the request's correlation id like every refusal.
pub async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        Status::NotFound.as_str(),
        "Not found",
        "no route matches the path",
    )
}

/// A handler answering `405` as a problem, for
/// `.method_not_allowed_fallback(http::method_not_allowed)` (after the routes): axum adds the
/// `Allow` header listing the methods the path serves.
pub async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        format!("{method} is not served at this path; `Allow` lists the methods that are"),
    )
}
