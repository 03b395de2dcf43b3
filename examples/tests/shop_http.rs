//! The shop end to end: real HTTP on loopback against a shop started in-process on a free port,
//! on a fresh SQLite file, and on a fresh PostgreSQL schema when `CQRS_POSTGRES_URL` is set
//! (`cargo test -p cqrs-examples -- --include-ignored`).

mod support;

use std::time::Duration;

use cqrs_examples::shop::Db;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Shop, eventually};

const STAFF: &str = "staff-token";
const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";

on_both_databases!(
    users_are_created_once_per_idempotency_key,
    an_idempotency_key_answers_only_its_own_caller,
    invalid_email_is_a_422_naming_the_field,
    missing_token_is_401_and_missing_permission_403,
    every_answer_carries_a_correlation_id,
    product_reads_are_cached_until_an_update,
    placed_order_reaches_the_projection,
    fifty_orders_for_the_last_ten_units,
    fifty_concurrent_registrations_all_succeed,
    text_the_database_cannot_store_is_a_422,
    cancelled_order_puts_the_stock_back,
    metrics_are_served_for_prometheus,
);

/// A request's status and JSON body (`Null` when there is none).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the shop answers");
    let status = response.status();
    let body = response.bytes().await.expect("a body");
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
    };
    (status, json)
}

async fn create_product(shop: &Shop, name: &str, price_cents: i64, stock: i64) -> i64 {
    let (status, body) = call(
        shop.http
            .post(shop.at("/products"))
            .bearer_auth(STAFF)
            .json(&json!({ "name": name, "price_cents": price_cents, "stock": stock })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().expect("the product's id")
}

async fn place_order(
    shop: &Shop,
    token: &str,
    product_id: i64,
    quantity: i64,
) -> (StatusCode, Value) {
    call(
        shop.http
            .post(shop.at("/orders"))
            .bearer_auth(token)
            .json(&json!({ "product_id": product_id, "quantity": quantity })),
    )
    .await
}

async fn users_are_created_once_per_idempotency_key(shop: Shop) {
    let register = |key: &'static str, email: &'static str| {
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .header("Idempotency-Key", key)
            .json(&json!({ "email": email, "name": "Ada" }))
    };

    let (status, first) = call(register("signup-ada", "ada@example.com")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["id"].as_i64().expect("the new user's id");
    assert_eq!(first["email"], "ada@example.com");

    let (status, again) = call(register("signup-ada", "ada@example.com")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        again, first,
        "the same key and body answer the stored reply"
    );
    assert_eq!(
        shop.count(
            "SELECT COUNT(*) FROM users WHERE email = $1",
            "ada@example.com"
        )
        .await,
        1,
        "and the user was created once"
    );

    let (status, problem) = call(register("signup-ada", "someone@example.com")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the same key with another body: {problem}"
    );

    let (status, user) = call(
        shop.http
            .get(shop.at(&format!("/users/{id}")))
            .bearer_auth(STAFF),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user, first);
}

async fn an_idempotency_key_answers_only_its_own_caller(shop: Shop) {
    let product = create_product(&shop, "Shared key tea", 500, 10).await;
    let order = |token: &'static str| {
        shop.http
            .post(shop.at("/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", "order-1")
            .json(&json!({ "product_id": product, "quantity": 2 }))
    };
    let (status, alice) = call(order(ALICE)).await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    // Bob sends alice's key with alice's body: his own order, not her stored receipt.
    let (status, bob) = call(order(BOB)).await;
    assert_eq!(status, StatusCode::CREATED, "{bob}");
    assert_ne!(bob["order_id"], alice["order_id"], "bob got alice's order");
    // Each one's retry gets their own receipt back, and nothing more is ordered.
    assert_eq!(call(order(ALICE)).await.1, alice);
    assert_eq!(call(order(BOB)).await.1, bob);
    let (status, stock) = call(shop.http.get(shop.at(&format!("/products/{product}")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stock["stock"], 6, "two orders of two: {stock}");
    // Bob's receipt names an order he can read; alice's stays hers.
    let read = |token: &'static str, receipt: &Value| {
        shop.http
            .get(shop.at(&format!(
                "/orders/{}",
                receipt["order_id"].as_str().unwrap()
            )))
            .bearer_auth(token)
    };
    eventually(
        "bob's order in the projection",
        Duration::from_secs(5),
        || async { (call(read(BOB, &bob)).await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(call(read(BOB, &alice)).await.0, StatusCode::FORBIDDEN);
}

async fn invalid_email_is_a_422_naming_the_field(shop: Shop) {
    let (status, problem) = call(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .json(&json!({ "email": "not-an-email", "name": "Ada" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "validation");
    assert_eq!(
        problem["errors"],
        json!([{ "field": "email", "code": "email", "message": "must be an email address" }])
    );
    assert_eq!(
        shop.count("SELECT COUNT(*) FROM users WHERE email <> $1", "")
            .await,
        0
    );
}

async fn missing_token_is_401_and_missing_permission_403(shop: Shop) {
    let body = json!({ "email": "eve@example.com", "name": "Eve" });

    let response = shop
        .http
        .post(shop.at("/users"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let (status, _) = call(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth("not-a-token")
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an unknown token");

    let (status, problem) = call(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(ALICE)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"].as_str().unwrap().contains("user:create"),
        "the problem names the missing permission: {problem}"
    );
    assert_eq!(
        shop.count("SELECT COUNT(*) FROM users WHERE email <> $1", "")
            .await,
        0
    );
}

/// The `X-Correlation-Id` of a response, which must be a UUID.
fn correlation_of(response: &reqwest::Response) -> uuid::Uuid {
    let value = response
        .headers()
        .get("x-correlation-id")
        .unwrap_or_else(|| panic!("no x-correlation-id on a {}", response.status()));
    uuid::Uuid::parse_str(value.to_str().unwrap()).expect("a UUID")
}

async fn every_answer_carries_a_correlation_id(shop: Shop) {
    let mine = uuid::Uuid::now_v7();
    let body = json!({ "email": "eve@example.com", "name": "Eve" });
    let send = |request: reqwest::RequestBuilder| async move { request.send().await.unwrap() };

    // Refused by the authentication layer, before any route runs: a fresh id.
    let refused = send(shop.http.post(shop.at("/users")).bearer_auth("not-a-token")).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    correlation_of(&refused);

    // Refused by the bus (403), by the body's parser (400: not JSON), and not found (404): the
    // caller's.
    let forbidden = send(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(ALICE)
            .header("X-Correlation-Id", mine.to_string())
            .json(&body),
    )
    .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(correlation_of(&forbidden), mine);
    let malformed = send(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .header("X-Correlation-Id", mine.to_string())
            .header("content-type", "application/json")
            .body("{ not json"),
    )
    .await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(correlation_of(&malformed), mine);
    let missing = send(
        shop.http
            .get(shop.at("/products/987654321"))
            .header("X-Correlation-Id", mine.to_string()),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(correlation_of(&missing), mine);

    // A header that is not a UUID is refused (400: a malformed header), and the answer carries
    // an id of the shop's.
    let garbled = send(
        shop.http
            .get(shop.at("/products/1"))
            .header("X-Correlation-Id", "not-a-uuid"),
    )
    .await;
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);
    correlation_of(&garbled);

    // A success without one: the id the shop made, the same on the answer as in the message
    // (the helpers echo the metadata's, the layer leaves a header that is there).
    let created = send(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .json(&body),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    correlation_of(&created);
}

async fn product_reads_are_cached_until_an_update(shop: Shop) {
    let id = create_product(&shop, "Desk lamp", 2500, 7).await;
    let get = || shop.http.get(shop.at(&format!("/products/{id}")));

    let first = get().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = get().send().await.unwrap();
    assert_eq!(
        second.headers()["x-cache"],
        "hit",
        "the second read is cached"
    );
    let cached: Value = second.json().await.unwrap();
    assert_eq!(cached["price_cents"], 2500);

    let correlation = uuid::Uuid::now_v7().to_string();
    let response = shop
        .http
        .put(shop.at(&format!("/products/{id}")))
        .bearer_auth(STAFF)
        .header("X-Correlation-Id", &correlation)
        .json(&json!({ "price_cents": 1999 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-correlation-id"], correlation.as_str());
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["price_cents"], 1999);

    let third = get().send().await.unwrap();
    assert_eq!(
        third.headers()["x-cache"],
        "miss",
        "the update dropped the cached answer"
    );
    let fresh: Value = third.json().await.unwrap();
    assert_eq!(fresh["price_cents"], 1999);
    assert_eq!(
        fresh["name"], "Desk lamp",
        "fields not sent keep their value"
    );

    let (status, _) = call(
        shop.http
            .put(shop.at(&format!("/products/{id}")))
            .bearer_auth(ALICE)
            .json(&json!({ "price_cents": 1 })),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "customers cannot change prices"
    );
}

async fn placed_order_reaches_the_projection(shop: Shop) {
    let product = create_product(&shop, "Notebook", 350, 20).await;

    let (status, receipt) = place_order(&shop, ALICE, product, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert_eq!(receipt["total_cents"], 1050);
    let order_id = receipt["order_id"].as_str().unwrap().to_owned();

    // The projection is fed after the commit, through the outbox: wait for it, with a deadline.
    let summary = eventually(
        "the order in the projection",
        Duration::from_secs(10),
        || async {
            let (status, body) = call(
                shop.http
                    .get(shop.at(&format!("/orders/{order_id}")))
                    .bearer_auth(ALICE),
            )
            .await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await;
    assert_eq!(
        summary,
        json!({
            "order_id": order_id,
            "customer": "alice",
            "product_id": product,
            "quantity": 3,
            "total_cents": 1050,
            "status": "placed",
        })
    );

    let (status, _) = call(
        shop.http
            .get(shop.at(&format!("/orders/{order_id}")))
            .bearer_auth(BOB),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another customer's order");
    let (status, _) = call(
        shop.http
            .get(shop.at(&format!("/orders/{order_id}")))
            .bearer_auth("admin-token"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the admin flag overrides");

    let (_, product) = call(shop.http.get(shop.at(&format!("/products/{product}")))).await;
    assert_eq!(product["stock"], 17, "the order took the stock");
}

/// Serializable registrations of distinct emails clash inside PostgreSQL (serialization
/// failures, `40001`): they are transient, retried with jittered backoff, and every one of the
/// fifty ends with its user created.
async fn fifty_concurrent_registrations_all_succeed(shop: Shop) {
    let registrations = (0..50).map(|i| {
        let shop = shop.clone();
        tokio::spawn(async move {
            call(
                shop.http
                    .post(shop.at("/users"))
                    .bearer_auth(STAFF)
                    .json(&json!({ "email": format!("crowd-{i}@example.com"), "name": "Crowd" })),
            )
            .await
        })
    });
    for registration in registrations.collect::<Vec<_>>() {
        let (status, body) = registration.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(
        shop.count(
            "SELECT COUNT(*) FROM users WHERE email LIKE $1",
            "crowd-%@example.com"
        )
        .await,
        50
    );
}

/// A NUL character passes JSON and validation, but PostgreSQL cannot store it in text: the
/// request is at fault (422), not the server (500). SQLite stores it.
async fn text_the_database_cannot_store_is_a_422(shop: Shop) {
    let (status, body) = call(
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .json(&json!({ "email": "nul@example.com", "name": "Nul\u{0}Byte" })),
    )
    .await;
    if matches!(shop.db, Db::Postgres(_)) {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "validation", "{body}");
        assert!(!body.to_string().contains("0x00"), "no driver text: {body}");
    } else {
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

async fn fifty_orders_for_the_last_ten_units(shop: Shop) {
    let product = create_product(&shop, "Limited edition", 9900, 10).await;

    let orders = (0..50).map(|_| {
        let shop = shop.clone();
        tokio::spawn(async move { place_order(&shop, ALICE, product, 1).await })
    });
    let mut placed = Vec::new();
    let mut refused = 0;
    for order in orders.collect::<Vec<_>>() {
        let (status, body) = order.await.unwrap();
        match status {
            StatusCode::CREATED => placed.push(body["order_id"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => refused += 1,
            other => panic!("an order answered {other}: {body}"),
        }
    }
    assert_eq!(placed.len(), 10, "exactly the last ten units were sold");
    assert_eq!(refused, 40, "every other order was refused with 409");

    let id = product.to_string();
    assert_eq!(
        shop.count(
            "SELECT stock FROM products WHERE id = CAST($1 AS BIGINT)",
            &id
        )
        .await,
        0,
        "the stock is empty, not negative"
    );
    let projected = eventually(
        "ten orders in the projection",
        Duration::from_secs(10),
        || async {
            let n = shop
                .count(
                    "SELECT COUNT(*) FROM order_summaries WHERE product_id = CAST($1 AS BIGINT)",
                    &id,
                )
                .await;
            (n == 10).then_some(n)
        },
    )
    .await;
    assert_eq!(projected, 10);
    let (status, problem) = place_order(&shop, BOB, product, 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("0 unit(s) left"),
        "{problem}"
    );
}

async fn cancelled_order_puts_the_stock_back(shop: Shop) {
    let product = create_product(&shop, "Headphones", 12000, 5).await;
    let (status, receipt) = place_order(&shop, BOB, product, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    let order_id = receipt["order_id"].as_str().unwrap().to_owned();
    let cancel = |token: &'static str| {
        shop.http
            .post(shop.at(&format!("/orders/{order_id}/cancel")))
            .bearer_auth(token)
    };

    let (status, _) = call(cancel(ALICE)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not alice's order");
    let (status, _) = call(cancel(BOB)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(cancel(BOB)).await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "cancelling twice changes nothing"
    );

    // OrderEvent::Cancelled -> RestockOnCancel -> ReleaseStock, after the commit.
    let id = product.to_string();
    eventually("the stock released", Duration::from_secs(10), || async {
        let stock = shop
            .count(
                "SELECT stock FROM products WHERE id = CAST($1 AS BIGINT)",
                &id,
            )
            .await;
        (stock == 5).then_some(())
    })
    .await;
    let summary = eventually(
        "the cancellation projected",
        Duration::from_secs(10),
        || async {
            let (_, body) = call(
                shop.http
                    .get(shop.at(&format!("/orders/{order_id}")))
                    .bearer_auth(STAFF),
            )
            .await;
            (body["status"] == "cancelled").then_some(body)
        },
    )
    .await;
    assert_eq!(summary["customer"], "bob");
}

async fn metrics_are_served_for_prometheus(shop: Shop) {
    let product = create_product(&shop, "Pen", 150, 3).await;
    for _ in 0..2 {
        let response = shop
            .http
            .get(shop.at(&format!("/products/{product}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = shop.http.get(shop.at("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    // The recorder is the process's: other tests' dispatches are in it too, so look for lines,
    // not exact counts.
    for expected in [
        "# TYPE cqrs_dispatch_total counter",
        r#"cqrs_dispatch_total{kind="command",message="products.create",status="ok"}"#,
        "# TYPE cqrs_dispatch_duration_seconds histogram",
        r#"cqrs_dispatch_duration_seconds_bucket{kind="query",message="products.get",status="ok",le="0.005"}"#,
        r#"cqrs_cache_total{message="products.get",result="hit"}"#,
        r#"cqrs_cache_total{message="products.get",result="miss"}"#,
    ] {
        assert!(
            text.contains(expected),
            "/metrics lacks `{expected}`:\n{text}"
        );
    }
}
