//! The HTTP API: one route per message. Most are one line with the helpers of
//! `cqrs_core::http`, which build the envelope from the request (the caller from the bearer
//! token, the `Idempotency-Key` header, `X-Correlation-Id`) and answer errors as
//! `application/problem+json` (422, 401, 403, 404, 409, 504, ..), as they answer what never
//! reaches a handler: an unknown path (404), a wrong method (405), a body over [`BODY_LIMIT`]
//! (413) or not sent as JSON (415), a path parameter that does not parse (400).

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_core::http::{self, JsonBody, PathParams, RequestMetadata};
use cqrs_core::prelude::*;
use serde::Deserialize;

use super::orders::{CancelOrder, GetOrder, OrderId, PlaceOrder};
use super::products::{CreateProduct, GetProduct, Product, ProductId, UpdateProduct};
use super::users::{GetUser, RegisterUser};
use super::{auth, metrics};

/// The largest request body the shop reads: its commands are a few fields each.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every route of the shop, its state the bus.
pub fn router(bus: Bus) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/users", post(http::create::<RegisterUser>))
        .route("/users/{id}", get(http::query_path::<GetUser>))
        .route("/products", post(http::create::<CreateProduct>))
        .route(
            "/products/{id}",
            get(http::query_path::<GetProduct>).put(update_product),
        )
        .route("/orders", post(http::create::<PlaceOrder>))
        .route("/orders/{order_id}", get(http::query_path::<GetOrder>))
        .route("/orders/{order_id}/cancel", post(cancel_order))
        .route("/metrics", get(metrics::render))
        // After the routes: problems, not empty answers, for an unknown path or a wrong method.
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(http::body_limit(BODY_LIMIT))
        .layer(http::authenticate(auth::verify))
        // Outermost: every response, a refused token's included, gets `X-Correlation-Id`.
        .layer(http::correlation())
        .with_state(bus)
}

async fn index() -> &'static str {
    "cqrs shop: POST /users, GET /users/{id}, POST /products, GET|PUT /products/{id}, \
     POST /orders, GET /orders/{order_id}, POST /orders/{order_id}/cancel, GET /metrics \
     (see the README for tokens and examples)\n"
}

/// The body of `PUT /products/{id}`: the fields to change.
#[derive(Debug, Deserialize)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
}

/// A route whose command comes from the path and the body: written by hand, with the same
/// extractors the helpers use (and, like them, echoing the correlation id).
async fn update_product(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    PathParams(id): PathParams<ProductId>,
    JsonBody(changes): JsonBody<ProductChanges>,
) -> Result<impl IntoResponse, Error> {
    let correlation = correlation_header(&metadata);
    let command = UpdateProduct {
        id,
        name: changes.name,
        price_cents: changes.price_cents,
        stock: changes.stock,
    };
    let product: Product = bus.send(Envelope::with_metadata(command, metadata)).await?;
    Ok((correlation, Json(product)))
}

async fn cancel_order(
    State(bus): State<Bus>,
    RequestMetadata(metadata): RequestMetadata,
    PathParams(order_id): PathParams<OrderId>,
) -> Result<impl IntoResponse, Error> {
    let correlation = correlation_header(&metadata);
    bus.send(Envelope::with_metadata(CancelOrder { order_id }, metadata))
        .await?;
    Ok((StatusCode::NO_CONTENT, correlation))
}

fn correlation_header(metadata: &Metadata) -> [(HeaderName, String); 1] {
    [(http::CORRELATION_ID, metadata.correlation_id().to_string())]
}
