//! HTTP with axum (feature `axum`): errors as RFC 9457 problem details, extractors for the
//! caller, the idempotency key and the request's metadata, and handlers that take a route from
//! request to `bus.send` in one line.
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

use std::future::Future;

use axum::extract::{FromRequest, FromRequestParts, Path, Query as QueryString, Request, State};
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
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

/// A problem, as RFC 9457 describes it (`application/problem+json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem (`about:blank` plus the status's title here).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened; for server errors, only a generic text (the details are in the logs).
    pub detail: String,
    /// The status as cqrs names it (`validation`, `conflict`, ..).
    pub code: String,
    /// For validation problems: every failing field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ProblemDetails {
    /// The problem details of an error.
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
        let detail = match status {
            // Server-side failures may carry internals (SQL, paths): keep them in the logs.
            Status::Internal | Status::NoHandler => {
                "the server failed to handle the request".to_owned()
            }
            _ => error.message().into_owned(),
        };
        ProblemDetails {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.http_status(),
            detail,
            code: status.as_str().to_owned(),
            errors: error.fields().to_vec(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if matches!(status, Status::Internal | Status::NoHandler) {
            // `{:#}`: with its causes, which the response leaves out.
            tracing::error!(target: "cqrs::http", error = %format_args!("{self:#}"), "request failed");
        }
        let problem = ProblemDetails::from_error(&self);
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (
            StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == Status::Unauthenticated {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
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

/// The `Idempotency-Key` header, if the request has one (printable ASCII, at most 255 bytes).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        Error::validation([FieldError::new(
            "Idempotency-Key",
            "header",
            "must be 1 to 255 printable ASCII characters",
        )])
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// The metadata of the request's message: the caller, the idempotency key, and the correlation
/// id from `X-Correlation-Id` (a UUID) when present.
#[derive(Debug, Clone)]
pub struct RequestMetadata(pub Metadata);

impl<S: Send + Sync> FromRequestParts<S> for RequestMetadata {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let mut metadata = Metadata::new();
        if let Some(principal) = parts.extensions.get::<Principal>() {
            metadata.set_principal(principal.clone());
        }
        if let Some(key) = idempotency_key(&parts.headers)? {
            metadata.set_idempotency_key(key);
        }
        if let Some(RequestCorrelation(id)) = parts.extensions.get::<RequestCorrelation>() {
            metadata.set_correlation_id(*id);
        } else if let Some(value) = parts.headers.get(&CORRELATION_ID) {
            let id = value
                .to_str()
                .ok()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| {
                    Error::validation([FieldError::new(
                        "X-Correlation-Id",
                        "header",
                        "must be a UUID",
                    )])
                })?;
            metadata.set_correlation_id(id);
        }
        Ok(RequestMetadata(metadata))
    }
}

/// A JSON body whose rejections (syntax, missing fields, wrong types) are validation problems
/// naming what is wrong, in the same `problem+json` form as every other error.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(Error::validation([FieldError::new(
                "body",
                "json",
                rejection.body_text(),
            )])),
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
) -> Result<Response, Error>
where
    C: Command + DeserializeOwned,
{
    send_envelope(&bus, metadata, command, StatusCode::OK).await
}

/// Like [`send`], answering `201 Created` (for commands that create something).
pub async fn create<C>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    JsonBody(command): JsonBody<C>,
) -> Result<Response, Error>
where
    C: Command + DeserializeOwned,
{
    send_envelope(&bus, metadata, command, StatusCode::CREATED).await
}

/// A route handler: query `Q` from the path parameters (`/products/{id}` → `Q { id }`);
/// answers the output as JSON with `X-Cache: hit|miss`.
pub async fn query_path<Q>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    path: Result<Path<Q>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Error>
where
    Q: Query + DeserializeOwned + Send,
{
    let Path(query) =
        path.map_err(|r| Error::validation([FieldError::new("path", "path", r.body_text())]))?;
    ask(&bus, metadata, query).await
}

/// A route handler: query `Q` from the query string (`/products?page=2` → `Q { page }`).
pub async fn query_params<Q>(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    params: Result<QueryString<Q>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error>
where
    Q: Query + DeserializeOwned + Send,
{
    let QueryString(query) = params
        .map_err(|r| Error::validation([FieldError::new("query", "query", r.body_text())]))?;
    ask(&bus, metadata, query).await
}

/// The correlation id the [`correlation`] layer gave the request.
#[derive(Debug, Clone, Copy)]
struct RequestCorrelation(Uuid);

/// A layer that gives every request a correlation id and every response its
/// `X-Correlation-Id` header, errors included.
///
/// The id is the caller's `X-Correlation-Id` when it is a UUID, a new UUID v7 otherwise; the
/// extractors ([`RequestMetadata`], and every helper through it) put it in the message's
/// metadata, so it is on the dispatch's span and on the events the request causes. A header
/// that is not a UUID is still refused by [`RequestMetadata`] (`422`); that answer, and every
/// other, carries a fresh id. A response that already has the header keeps it.
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
    let sent = request
        .headers()
        .get(&CORRELATION_ID)
        .map(|value| value.to_str().ok().and_then(|s| Uuid::parse_str(s).ok()));
    let id = match sent {
        Some(Some(id)) => {
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
        // Not a UUID: left to `RequestMetadata` to refuse, and answered with an id of ours.
        Some(None) => Uuid::now_v7(),
        None => {
            let id = Uuid::now_v7();
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
    };
    Box::pin(async move {
        let mut response = next.run(request).await;
        if !response.headers().contains_key(&CORRELATION_ID)
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            response.headers_mut().insert(CORRELATION_ID, value);
        }
        response
    })
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
            Some(value) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
                Some(token) => Some(token.trim().to_owned()),
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
