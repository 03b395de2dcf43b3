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

mod extract;
mod layers;
mod problem;
mod routes;

use std::time::Duration;

use axum::http::header::HeaderName;

pub use self::extract::*;
pub use self::layers::*;
pub use self::problem::*;
pub use self::routes::*;
// What the submodules share among themselves (`pub(super)` in each).
#[allow(unused_imports)]
use self::{extract::*, layers::*, problem::*, routes::*};

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
