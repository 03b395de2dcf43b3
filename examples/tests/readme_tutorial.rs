//! The README's "Writing and testing a handler of your own", done the way it says: a command and
//! its handler written outside the shop's modules, found by `build()` with nothing registered by
//! hand, tested through the bus and over HTTP with a one-line route.

use axum::Router;
use axum::routing::post;
use cqrs_core::http;
use cqrs_core::prelude::*;
use cqrs_core::sqlx;
use cqrs_examples::shop::db::{self, Backend};
use cqrs_examples::shop::products::{CreateProduct, GetProduct, Product, ProductId};
use cqrs_examples::shop::{self, Db, auth};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use validator::Validate;

/// Adds units to a product's stock (`POST /products/restock`, permission `product:write`).
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = Product, name = "products.restock")]
pub struct RestockProduct {
    pub id: ProductId,
    #[validate(range(min = 1, max = 10000, message = "must be 1 to 10000"))]
    pub quantity: i64,
}

#[command_handler(RestockProduct, timeout = "5s", invalidates = [GetProduct(id = id)])]
#[authorize(permissions = ["product:write"])]
#[transactional]
pub struct RestockProductHandler;

type ProductRow = (ProductId, String, i64, i64);

const RESTOCK: &str = "UPDATE products SET stock = stock + $2 WHERE id = $1
                       RETURNING id, name, price_cents, stock";

impl CommandHandler<RestockProduct> for RestockProductHandler {
    async fn handle(&self, cmd: RestockProduct, cx: &mut CommandContext) -> Result<Product, Error> {
        // Outside the shop's crate `on_db!` is not at hand: match on the transaction's database.
        let row = match db::tx(cx)? {
            Backend::Sqlite(c) => {
                sqlx::query_as::<_, ProductRow>(RESTOCK)
                    .bind(cmd.id)
                    .bind(cmd.quantity)
                    .fetch_optional(c)
                    .await
            }
            Backend::Postgres(c) => {
                sqlx::query_as::<_, ProductRow>(RESTOCK)
                    .bind(cmd.id)
                    .bind(cmd.quantity)
                    .fetch_optional(c)
                    .await
            }
        }?;
        row.map(|(id, name, price_cents, stock)| Product {
            id,
            name,
            price_cents,
            stock,
        })
        .ok_or_else(|| Error::not_found(format!("product {}", cmd.id)))
    }
}

#[tokio::test]
async fn restocking_adds_units_and_drops_the_cached_product() {
    let db = Db::connect("sqlite::memory:").await.unwrap();
    shop::migrate(&db).await.unwrap();
    let bus = shop::build_bus(&db).unwrap();
    assert!(
        bus.describe()
            .to_string()
            .contains("products.restock -> RestockProductHandler"),
        "build() found the new handler by itself"
    );
    let staff = Principal::new("sam").with_permissions(["product:write"]);

    let mug = CreateProduct {
        name: "Mug".into(),
        price_cents: 800,
        stock: 1,
    };
    let mug = bus
        .send(Envelope::new(mug).principal(staff.clone()))
        .await
        .unwrap();
    bus.query(GetProduct { id: mug.id }).await.unwrap(); // cached from now on

    let restock = RestockProduct {
        id: mug.id,
        quantity: 5,
    };
    let restocked = bus
        .send(Envelope::new(restock).principal(staff))
        .await
        .unwrap();
    assert_eq!(restocked.stock, 6);

    let read = bus
        .query_with_report(GetProduct { id: mug.id })
        .await
        .unwrap();
    assert!(!read.cache_hit, "the restock invalidated the cached answer");
    assert_eq!(read.output.stock, 6);

    let anonymous = bus
        .send(RestockProduct {
            id: mug.id,
            quantity: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.status(), Status::Unauthenticated);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restock_over_http() {
    let db = Db::connect("sqlite::memory:").await.unwrap();
    shop::migrate(&db).await.unwrap();
    let bus = shop::build_bus(&db).unwrap();
    // The README's one line, beside the shop's routes.
    let restock = Router::new()
        .route("/products/restock", post(http::send::<RestockProduct>))
        .layer(http::authenticate(auth::verify))
        .with_state(bus.clone());
    let app = shop::router(bus).merge(restock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let created: Value = client
        .post(format!("{url}/products"))
        .bearer_auth("staff-token")
        .json(&json!({ "name": "Mug", "price_cents": 800, "stock": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = client
        .post(format!("{url}/products/restock"))
        .bearer_auth("staff-token")
        .json(&json!({ "id": created["id"], "quantity": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let restocked: Value = response.json().await.unwrap();
    assert_eq!(restocked["stock"], 6);

    let too_many = client
        .post(format!("{url}/products/restock"))
        .bearer_auth("staff-token")
        .json(&json!({ "id": created["id"], "quantity": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422);
    let forbidden = client
        .post(format!("{url}/products/restock"))
        .bearer_auth("alice-token")
        .json(&json!({ "id": created["id"], "quantity": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    server.abort();
    db.close().await;
}
