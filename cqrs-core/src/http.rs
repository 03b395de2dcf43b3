//! HTTP with axum (feature `axum`): errors as RFC 9457 problem details, extractors for the
//! caller, the idempotency key, the request's metadata, its body and its path, and handlers
//! that take a route from request to `bus.send` in one line.
//!
//! ```no_run
//! use axum::Router;
//! use axum::routing::{get, post};
//! use cqrs_core::prelude::*;
//! use cqrs_core::http;
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! struct CreateProduct { name: String }
//!
//! #[derive(Query, Debug, Clone, Hash, PartialEq, Eq, serde::Deserialize)]
//! #[query(output = Option<String>)]
//! struct GetProduct { id: u64 }
//!
//! fn routes(bus: Bus) -> Router {
//!     Router::new()
//!         .route("/products", post(http::create::<CreateProduct>))      // JSON body -> 201 + output
//!         .route("/products/{id}", get(http::query_path::<GetProduct>)) // path params -> 200 + output
//!         .fallback(http::not_found)                                     // unknown path: 404 problem
//!         .method_not_allowed_fallback(http::method_not_allowed)         // wrong method: 405 + Allow
//!         .layer(http::body_limit(64 * 1024))                            // larger bodies: 413
//!         .layer(http::authenticate(|token: String| async move {
//!             Ok((token == "secret").then(|| Principal::new("admin").with_permissions(["product:create"])))
//!         }))
//!         .layer(http::correlation()) // outermost: every response gets `X-Correlation-Id`
//!         .with_state(bus)
//! }
//! ```
//!
//! Every helper builds the envelope from the request: the principal the authentication layer
//! found, the `Idempotency-Key` header, and the request's correlation id: the caller's
//! `X-Correlation-Id` (a UUID) when it sends one, a new one otherwise. The helpers echo it on
//! their answers; the [`correlation`] layer puts it on every response, errors included (a
//! refused token, a malformed body, a `403` from the bus), which is when a client most needs
//! it to find the request in the logs.
//!
//! # Errors
//!
//! Every error answer is `application/problem+json` ([`ProblemDetails`]): `title` and `code`
//! are stable for a status (`"Conflict"`, `"conflict"`), `detail` says what happened, and
//! `correlation_id` repeats the `X-Correlation-Id` header. A [`Problem`] is such an answer; a
//! [`cqrs_core::Error`](crate::Error) becomes one (`Error` implements `IntoResponse`, so
//! handlers return `Result<_, Error>` and use `?`), and so do the refusals of this module:
//!
//! | what | status | `code` |
//! |---|---|---|
//! | a body that is not JSON; a path parameter or query string that does not parse; a malformed `Idempotency-Key` or `X-Correlation-Id` | 400 | `bad_request` |
//! | a body that is JSON of the wrong shape (a missing field, a wrong type) | 422 | `validation` |
//! | a body over the limit ([`body_limit`]; [`DEFAULT_BODY_LIMIT`] unless set) | 413 | `content_too_large` |
//! | a body without a JSON `Content-Type` | 415 | `unsupported_media_type` |
//! | a path no route matches ([`not_found`]) | 404 | `not_found` |
//! | a method the path does not serve ([`method_not_allowed`]; `Allow` lists those it does) | 405 | `method_not_allowed` |
//! | an `Authorization` header that is not `Bearer <token>`, or a token the verifier refuses ([`authenticate`]) | 401 | `unauthenticated` |
//!
//! Headers are read as the HTTP RFCs say: media types and the `Bearer` scheme are
//! case-insensitive (RFC 9110); `application/json` and every `application/<name>+json` (RFC
//! 6839) are JSON, with parameters, but a `charset` other than UTF-8 is not (RFC 8259); the
//! `Idempotency-Key` may be a structured-field string (`"key"`, the IETF draft's form) or bare;
//! blanks around a value are not part of it; a header that must be one value and is sent twice
//! is refused.
//!
//! **What reaches the client, and what only the log.** An error's message reaches the client
//! when the application wrote it for the client: `Error::conflict("not enough stock")`,
//! `Error::not_found("user 42")`, the fields of a validation error. It does not when
//! - the status is a server-side one (`Internal`, `NoHandler`: 500; `Unavailable`: 503;
//!   `Timeout`: 504): the client can do nothing with the cause, and it may name tables, hosts
//!   or files; or
//! - the message was made from an underlying error: an error converted with `?` or
//!   [`Error::from_std`](crate::Error::from_std) (its message is the driver's text, such as
//!   `error returned from database: could not serialize access ...`), with or without
//!   [`context`](crate::Error::context) in front. Precisely: the error has a
//!   [`source`](crate::Error::source) and its message contains the text of one of the causes
//!   along the source chain. An application that wants a message of its own shown with a
//!   source kept for the log writes `Error::conflict("the email is taken").with_source(e)`.
//!
//! Such an error is answered with a fixed `detail` for its status (for a `409`: "the request
//! conflicts with the current state; it may succeed if sent again"), so that clients see a
//! stable title, code and message. A `503` carries `Retry-After` ([`DEFAULT_RETRY_AFTER`],
//! or [`Problem::retry_after`]).
//!
//! # Logs
//!
//! Every error answer is logged once, when it is rendered, on target `cqrs::http`: at `error`
//! for a `500`, `warn` for another `5xx`, `info` for a `4xx`; with the request's
//! `correlation_id`, `method` and `path`, the answer's `status` and `code`, and as `detail` the
//! full error with its causes (`{:#}`), which the client may not have seen. So a request
//! refused before it reaches the bus (a refused token, a body that does not parse, an unknown
//! route) leaves exactly one line, and a request the bus refused one besides the bus's own
//! dispatch line. The correlation id, method and path come from the [`correlation`] layer: add
//! it, outermost (without it the line lacks them). Values a client controls (the path, and the
//! detail, which may quote the body, a path parameter or a header) are written
//! `Debug`-escaped, in quotes, so that no request can break a log line or forge one.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query as QueryString, Request, State,
};
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::Bus;
use crate::envelope::{Envelope, Metadata, Principal};
use crate::error::{Error, FieldError, Status};
use crate::message::{Command, Query};

/// The header a client sends its idempotency key in.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header carrying the correlation id, in and out.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The header saying whether a query's answer came from the cache (`hit` or `miss`).
pub const CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The `Retry-After` of a `503` unless [`Problem::retry_after`] says otherwise.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The largest body the extractors read when no [`body_limit`] is set (axum's default).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

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
    /// the error's message is not for clients (see the [module docs](self#errors)).
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

/// The error's message if it is meant for the client (see the [module docs](self#errors)).
fn public_message(error: &Error) -> Option<Cow<'_, str>> {
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
fn fixed_detail(status: Status) -> &'static str {
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
struct ProblemParts {
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

    /// Writes the one log line of this answer (see the [module docs](self#logs)).
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

/// A layer setting the largest body the extractors of this module (and axum's) read: a
/// larger one is answered `413` ([`Problem::content_too_large`]). Without it the limit is
/// [`DEFAULT_BODY_LIMIT`].
pub fn body_limit(max_bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(max_bytes)
}

/// The caller, as the authentication layer ([`authenticate`]) found it: `None` for an anonymous
/// request. Handlers with `#[authorize]` turn `None` into `401`.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Caller(parts.extensions.get::<Principal>().cloned()))
    }
}

/// The `Idempotency-Key` header, if the request has one.
///
/// The key is 1 to 255 visible ASCII characters (`!` to `~`: no spaces, no control
/// characters), sent bare (`Idempotency-Key: order-42`) or, as the IETF draft writes it, as a
/// structured-field string (`Idempotency-Key: "order-42"`, the quotes not part of the key).
/// Anything else, or the header sent twice, is refused with a `400` problem naming the header.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Problem::bad_request(format!(
            "the Idempotency-Key header {why}: send one key of 1 to 255 visible ASCII characters \
             (no spaces), bare or in double quotes"
        ))
    };
    if values.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("is not ASCII"))?
        .trim_matches([' ', '\t']);
    let key = match text.strip_prefix('"') {
        Some(quoted) => quoted
            .strip_suffix('"')
            .ok_or_else(|| bad("has an unterminated quote"))?,
        None => text,
    };
    if key.is_empty() {
        return Err(bad("is empty"));
    }
    if key.len() > 255 {
        return Err(bad("is longer than 255 characters"));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) || key.contains(['"', '\\']) {
        return Err(bad("has a character a key may not have"));
    }
    Ok(Some(key.to_owned()))
}

/// The correlation id a request sends: `None` without the header, `Err` when it is not one
/// UUID (sent twice, or not a UUID in any of its usual forms).
fn sent_correlation(headers: &HeaderMap) -> Option<Result<Uuid, ()>> {
    let mut values = headers.get_all(&CORRELATION_ID).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| Uuid::parse_str(s.trim_matches([' ', '\t'])).ok())
            .ok_or(()),
    )
}

/// The metadata of the request's message: the caller, the idempotency key, and the correlation
/// id from `X-Correlation-Id` (a UUID) when present.
///
/// Refuses the request (`400`) when `Idempotency-Key` is malformed ([`IdempotencyKey`]) or
/// `X-Correlation-Id` is not one UUID.
#[derive(Debug, Clone)]
pub struct RequestMetadata(pub Metadata);

impl<S: Send + Sync> FromRequestParts<S> for RequestMetadata {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let mut metadata = Metadata::new();
        if let Some(principal) = parts.extensions.get::<Principal>() {
            metadata.set_principal(principal.clone());
        }
        if let Some(key) = idempotency_key(&parts.headers)? {
            metadata.set_idempotency_key(key);
        }
        match sent_correlation(&parts.headers) {
            Some(Err(())) => {
                return Err(Problem::bad_request(
                    "the X-Correlation-Id header must be one UUID",
                ));
            }
            Some(Ok(id)) => metadata.set_correlation_id(id),
            None => {
                if let Some(RequestCorrelation(id)) = parts.extensions.get::<RequestCorrelation>() {
                    metadata.set_correlation_id(*id);
                }
            }
        }
        Ok(RequestMetadata(metadata))
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/<name>+json`
/// (RFC 6839), case-insensitive (RFC 9110 §8.3.1), with parameters; a `charset` other than
/// UTF-8 is refused, JSON being UTF-8 (RFC 8259 §8.1). `Err` says why not.
fn json_media_type(headers: &HeaderMap) -> Result<(), Problem> {
    const EXPECTED: &str = "send the body as JSON with `Content-Type: application/json` (or `application/<name>+json`)";
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Err(Problem::unsupported_media_type(format!(
            "the request has no Content-Type: {EXPECTED}"
        )));
    };
    let not_json =
        || Problem::unsupported_media_type(format!("the Content-Type is not JSON: {EXPECTED}"));
    if values.next().is_some() {
        return Err(not_json());
    }
    let text = value.to_str().map_err(|_| not_json())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim_matches([' ', '\t']);
    let (kind, subtype) = essence.split_once('/').ok_or_else(not_json)?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    let json = kind.eq_ignore_ascii_case("application")
        && token(subtype)
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype.is_char_boundary(subtype.len() - 5)
                && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"));
    if !json {
        return Err(not_json());
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name
            .trim_matches([' ', '\t'])
            .eq_ignore_ascii_case("charset")
        {
            let charset = value.trim_matches([' ', '\t']).trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(Problem::unsupported_media_type(
                    "JSON is UTF-8: the Content-Type's charset, if any, must be utf-8",
                ));
            }
        }
    }
    Ok(())
}

/// A JSON body, refused with a problem naming what is wrong: no JSON `Content-Type` (`415`; the
/// [module docs](self#errors) say which are), a body over the [`body_limit`]
/// (`413`), not JSON (`400`), JSON of the wrong shape such as a missing field or a wrong type
/// (`422`, a validation problem on the field `body`).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        use axum::extract::rejection::JsonRejection;

        json_media_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::content_too_large()
            } else {
                Problem::bad_request("the request body could not be read")
            }
        })?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(rejection)) => {
                Err(
                    Error::validation([FieldError::new("body", "json", rejection.body_text())])
                        .into(),
                )
            }
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// Path parameters (`/products/{id}`), as axum's `Path`, refused with a `400` problem when one
/// does not parse (`/products/abc` for a number).
#[derive(Debug, Clone)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            // A route whose parameters do not fit its type: the server's bug, not the client's.
            Err(rejection) if rejection.status().is_server_error() => {
                Err(Error::internal(rejection.body_text()).into())
            }
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// The query string (`/products?page=2`), as axum's `Query`, refused with a `400` problem when
/// it does not parse.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match QueryString::<T>::from_request_parts(parts, state).await {
            Ok(QueryString(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// The response of a hand-written route: `output` as JSON with `status`, echoing the request's
/// correlation id (`X-Correlation-Id`), as the one-line helpers answer.
///
/// ```no_run
/// # use axum::extract::{Path, State};
/// # use axum::response::Response;
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::http::{self, JsonBody, RequestMetadata};
/// # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)] struct Rename { id: u64, name: String }
/// # #[derive(serde::Deserialize)] struct NewName { name: String }
/// async fn rename(
///     State(bus): State<Bus>,
///     Path(id): Path<u64>,
///     RequestMetadata(metadata): RequestMetadata,
///     JsonBody(body): JsonBody<NewName>,
/// ) -> Result<Response, Error> {
///     let correlation = metadata.correlation_id();
///     let output = bus.send(Envelope::with_metadata(Rename { id, name: body.name }, metadata)).await?;
///     Ok(http::respond(axum::http::StatusCode::OK, correlation, &output))
/// }
/// ```
pub fn respond<T: Serialize>(status: StatusCode, correlation: Uuid, output: &T) -> Response {
    reply(status, correlation, output, None)
}

/// Answers with the output as JSON, echoing the correlation id.
fn reply<T: Serialize>(
    status: StatusCode,
    correlation: Uuid,
    output: &T,
    cache_hit: Option<bool>,
) -> Response {
    let mut response = (status, axum::Json(output)).into_response();
    if let Ok(value) = HeaderValue::from_str(&correlation.to_string()) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    if let Some(hit) = cache_hit {
        response.headers_mut().insert(
            CACHE,
            HeaderValue::from_static(if hit { "hit" } else { "miss" }),
        );
    }
    response
}

async fn send_envelope<C>(
    bus: &Bus,
    metadata: Metadata,
    command: C,
    status: StatusCode,
) -> Result<Response, Error>
where
    C: Command,
{
    let correlation = metadata.correlation_id();
    let output = bus.send(Envelope::with_metadata(command, metadata)).await?;
    Ok(reply(status, correlation, &output, None))
}

async fn ask<Q: Query>(bus: &Bus, metadata: Metadata, query: Q) -> Result<Response, Error> {
    let correlation = metadata.correlation_id();
    let report = bus
        .query_with_report(Envelope::with_metadata(query, metadata))
        .await?;
    Ok(reply(
        StatusCode::OK,
        correlation,
        &report.output,
        Some(report.cache_hit),
    ))
}

/// A route handler: the JSON body is command `C`, sent with the request's metadata; answers
/// `200` with the output as JSON, or the error as problem details.
pub async fn send<C>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    JsonBody(command): JsonBody<C>,
) -> Result<Response, Problem>
where
    C: Command + DeserializeOwned,
{
    Ok(send_envelope(&bus, metadata, command, StatusCode::OK).await?)
}

/// Like [`send`], answering `201 Created` (for commands that create something).
pub async fn create<C>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    JsonBody(command): JsonBody<C>,
) -> Result<Response, Problem>
where
    C: Command + DeserializeOwned,
{
    Ok(send_envelope(&bus, metadata, command, StatusCode::CREATED).await?)
}

/// A route handler: query `Q` from the path parameters (`/products/{id}` → `Q { id }`);
/// answers the output as JSON with `X-Cache: hit|miss`; a parameter that does not parse is a
/// `400` ([`PathParams`]).
pub async fn query_path<Q>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    PathParams(query): PathParams<Q>,
) -> Result<Response, Problem>
where
    Q: Query + DeserializeOwned + Send,
{
    Ok(ask(&bus, metadata, query).await?)
}

/// A route handler: query `Q` from the query string (`/products?page=2` → `Q { page }`); a
/// query string that does not parse is a `400` ([`QueryParams`]).
pub async fn query_params<Q>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    QueryParams(query): QueryParams<Q>,
) -> Result<Response, Problem>
where
    Q: Query + DeserializeOwned + Send,
{
    Ok(ask(&bus, metadata, query).await?)
}

/// The correlation id the [`correlation`] layer gave the request.
#[derive(Debug, Clone, Copy)]
struct RequestCorrelation(Uuid);

/// What the [`correlation`] layer knows of the request being answered, for the log line of
/// an error answer and its `correlation_id`.
#[derive(Debug, Clone)]
struct RequestInfo {
    correlation: Uuid,
    method: Method,
    path: String,
}

tokio::task_local! {
    static REQUEST: RequestInfo;
}

/// A layer that gives every request a correlation id and every response its
/// `X-Correlation-Id` header, errors included.
///
/// The id is the caller's `X-Correlation-Id` when it is one UUID, a new UUID v7 otherwise; the
/// extractors ([`RequestMetadata`], and every helper through it) put it in the message's
/// metadata, so it is on the dispatch's span and on the events the request causes. A header
/// that is not a UUID is refused by [`RequestMetadata`] (`400`); that answer, and every
/// other, carries a fresh id. A response that already has the header keeps it.
///
/// Error answers rendered inside it ([`Problem`], [`Error`]) carry the id in their body too,
/// and their log line has it, with the method and path (see the [module docs](self#logs)).
///
/// Add it last (outermost), so that it also covers what the layers inside it answer, such as
/// [`authenticate`]'s `401`.
pub fn correlation() -> CorrelationLayer {
    axum::middleware::from_fn(correlate as CorrelateFn)
}

/// The layer [`correlation`] returns.
pub type CorrelationLayer = axum::middleware::FromFnLayer<CorrelateFn, (), (Request,)>;

/// The function behind [`CorrelationLayer`].
pub type CorrelateFn = fn(Request, Next) -> futures_util::future::BoxFuture<'static, Response>;

fn correlate(
    mut request: Request,
    next: Next,
) -> futures_util::future::BoxFuture<'static, Response> {
    let id = match sent_correlation(request.headers()) {
        Some(Ok(id)) => {
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
        // Not one UUID: left to `RequestMetadata` to refuse, and answered with an id of ours.
        Some(Err(())) => Uuid::now_v7(),
        None => {
            let id = Uuid::now_v7();
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
    };
    let info = RequestInfo {
        correlation: id,
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
    };
    Box::pin(REQUEST.scope(info, async move {
        let mut response = next.run(request).await;
        if !response.headers().contains_key(&CORRELATION_ID)
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            response.headers_mut().insert(CORRELATION_ID, value);
        }
        response
    }))
}

/// Turns a bearer token into the caller, for [`authenticate`].
pub trait TokenVerifier: Clone + Send + Sync + 'static {
    /// The principal the token stands for; `None` for a token that is not valid (the request
    /// is answered `401`).
    fn verify(
        &self,
        token: String,
    ) -> impl Future<Output = Result<Option<Principal>, Error>> + Send;
}

impl<F, Fut> TokenVerifier for F
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Principal>, Error>> + Send,
{
    fn verify(
        &self,
        token: String,
    ) -> impl Future<Output = Result<Option<Principal>, Error>> + Send {
        self(token)
    }
}

/// A layer that reads `Authorization: Bearer <token>`, asks `verifier` who it is, and puts the
/// [`Principal`] in the request for [`Caller`] and [`RequestMetadata`]. A request without the
/// header goes on anonymously (handlers with `#[authorize]` answer it `401`); a request with a
/// token the verifier rejects is answered `401` at once.
pub fn authenticate<V: TokenVerifier>(verifier: V) -> AuthenticateLayer<V> {
    axum::middleware::from_fn_with_state(verifier, authenticate_request::<V> as AuthenticateFn<V>)
}

/// The layer [`authenticate`] returns.
pub type AuthenticateLayer<V> =
    axum::middleware::FromFnLayer<AuthenticateFn<V>, V, (State<V>, Request)>;

/// The function behind [`AuthenticateLayer`].
pub type AuthenticateFn<V> =
    fn(State<V>, Request, Next) -> futures_util::future::BoxFuture<'static, Response>;

fn authenticate_request<V: TokenVerifier>(
    State(verifier): State<V>,
    mut request: Request,
    next: Next,
) -> futures_util::future::BoxFuture<'static, Response> {
    Box::pin(async move {
        let token = match request.headers().get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(value) => match bearer_token(value) {
                Some(token) => Some(token.to_owned()),
                None => {
                    return Error::unauthenticated(
                        "the Authorization header must be `Bearer <token>`",
                    )
                    .into_response();
                }
            },
        };
        if let Some(token) = token {
            match verifier.verify(token).await {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                }
                Ok(None) => {
                    return Error::unauthenticated("the bearer token is not valid").into_response();
                }
                Err(error) => return error.into_response(),
            }
        }
        next.run(request).await
    })
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// §11.1), the token one or more non-blank characters (RFC 6750 §2.1).
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains([' ', '\t']))
        .then_some(token)
}
