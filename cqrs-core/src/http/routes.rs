//! One-line route handlers: request to `bus.send` or `bus.query`, and the answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::*;
use crate::Bus;
use crate::envelope::{Envelope, Metadata};
use crate::error::Error;
use crate::message::{Command, Query};

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
pub(super) fn reply<T: Serialize>(
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

pub(super) async fn send_envelope<C>(
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

pub(super) async fn ask<Q: Query>(
    bus: &Bus,
    metadata: Metadata,
    query: Q,
) -> Result<Response, Error> {
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
