//! The shop's own arithmetic on numbers callers choose (prices, stock, quantities) never panics
//! or wraps: a total or a stock past `i64::MAX` is a 422 or a 409 that says so, and nothing
//! changes. Over HTTP on SQLite (and PostgreSQL with `CQRS_POSTGRES_URL`), and through the bus.

mod support;

use cqrs_core::prelude::*;
use cqrs_examples::shop::products::{GetProduct, ReleaseStock};
use cqrs_examples::shop::{self, Db};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::Shop;

on_both_databases!(an_order_whose_total_overflows_is_a_422_and_takes_nothing);

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the shop answers");
    let status = response.status();
    let body = response.bytes().await.expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

async fn an_order_whose_total_overflows_is_a_422_and_takes_nothing(shop: Shop) {
    let (status, product) = call(
        shop.http
            .post(shop.at("/products"))
            .bearer_auth("staff-token")
            .json(&json!({ "name": "Everything", "price_cents": i64::MAX, "stock": 10 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    let id = product["id"].as_i64().unwrap();

    let (status, body) = call(
        shop.http
            .post(shop.at("/orders"))
            .bearer_auth("alice-token")
            .json(&json!({ "product_id": id, "quantity": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = body.to_string();
    assert!(text.contains("quantity"), "{text}");
    assert!(text.contains("total"), "{text}");

    // The stock the order took was given back with its transaction.
    let (status, product) = call(shop.http.get(shop.at(&format!("/products/{id}")))).await;
    assert_eq!(status, StatusCode::OK, "{product}");
    assert_eq!(product["stock"], 10);

    // A number past i64::MAX in the JSON is refused by the extractor, before any arithmetic.
    let response = shop
        .http
        .post(shop.at("/orders"))
        .bearer_auth("alice-token")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"product_id": {id}, "quantity": 99999999999999999999}}"#
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());

    // One unit fits: i64::MAX itself is a total.
    let (status, body) = call(
        shop.http
            .post(shop.at("/orders"))
            .bearer_auth("alice-token")
            .json(&json!({ "product_id": id, "quantity": 1 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["total_cents"], i64::MAX);
}

#[tokio::test]
async fn releasing_stock_past_i64_max_is_a_conflict_and_changes_nothing() {
    let db = Db::connect("sqlite::memory:").await.unwrap();
    shop::migrate(&db).await.unwrap();
    let bus = shop::build_bus(&db).unwrap();
    let staff = Principal::new("sam").with_permissions(["product:write"]);
    let full = bus
        .send(
            Envelope::new(shop::products::CreateProduct {
                name: "Sand".into(),
                price_cents: 1,
                stock: i64::MAX - 1,
            })
            .principal(staff),
        )
        .await
        .unwrap();

    // One unit fits exactly ..
    bus.send(ReleaseStock {
        product_id: full.id,
        quantity: 1,
    })
    .await
    .unwrap();
    // .. one more does not.
    let error = bus
        .send(ReleaseStock {
            product_id: full.id,
            quantity: 1,
        })
        .await
        .expect_err("stock past i64::MAX");
    assert_eq!(error.status(), Status::Conflict, "{error}");
    assert!(error.message().contains("past"), "{error}");

    let product = bus.query(GetProduct { id: full.id }).await.unwrap();
    assert_eq!(product.stock, i64::MAX);
    drop(bus);
    db.close().await;
}
