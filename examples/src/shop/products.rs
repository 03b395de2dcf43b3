//! Products: a catalogue anyone may read (cached), staff may change (which drops the cache),
//! and stock that orders take and cancellations give back.

use cqrs_core::prelude::*;
use cqrs_core::{FieldError, sqlx};
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::db::{self, Db, on_db};

/// A product's id.
pub type ProductId = i64;

/// Adds a product to the catalogue (`POST /products`, permission `product:write`).
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = Product, name = "products.create")]
pub struct CreateProduct {
    #[validate(length(min = 1, max = 120, message = "must be 1 to 120 characters"))]
    pub name: String,
    #[validate(range(min = 0, message = "must not be negative"))]
    pub price_cents: i64,
    #[validate(range(min = 0, message = "must not be negative"))]
    pub stock: i64,
}

/// Changes a product (`PUT /products/{id}`, permission `product:write`); absent fields keep
/// their value.
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = Product, name = "products.update")]
pub struct UpdateProduct {
    pub id: ProductId,
    #[validate(length(min = 1, max = 120, message = "must be 1 to 120 characters"))]
    pub name: Option<String>,
    #[validate(range(min = 0, message = "must not be negative"))]
    pub price_cents: Option<i64>,
    #[validate(range(min = 0, message = "must not be negative"))]
    pub stock: Option<i64>,
}

/// Puts units back in stock (sent when an order is cancelled; not exposed over HTTP).
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(name = "products.release_stock")]
pub struct ReleaseStock {
    pub product_id: ProductId,
    #[validate(range(min = 1, message = "must be at least 1"))]
    pub quantity: i64,
}

/// Reads one product (`GET /products/{id}`, anyone). Cached: the `X-Cache` response header says
/// whether the answer came from the cache.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq, Serialize, Deserialize)]
#[query(output = Product, name = "products.get")]
pub struct GetProduct {
    pub id: ProductId,
}

/// A product, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
}

type ProductRow = (ProductId, String, i64, i64);

fn product((id, name, price_cents, stock): ProductRow) -> Product {
    Product {
        id,
        name,
        price_cents,
        stock,
    }
}

#[command_handler(CreateProduct, timeout = "5s")]
#[authorize(permissions = ["product:write"])]
#[transactional]
pub struct CreateProductHandler;

impl CommandHandler<CreateProduct> for CreateProductHandler {
    async fn handle(&self, cmd: CreateProduct, cx: &mut CommandContext) -> Result<Product, Error> {
        let row = on_db!(db::tx(cx)?, |c| {
            sqlx::query_as::<_, ProductRow>(
                "INSERT INTO products (name, price_cents, stock) VALUES ($1, $2, $3)
                 RETURNING id, name, price_cents, stock",
            )
            .bind(&cmd.name)
            .bind(cmd.price_cents)
            .bind(cmd.stock)
            .fetch_one(c)
            .await
        })?;
        Ok(product(row))
    }
}

/// `invalidates = [GetProduct(id = id)]`: once the change is committed, the cached answer for
/// this product is dropped (the others stay), in this shop and in every shop sharing its
/// database or its Redis, so the next read sees the new values.
#[command_handler(UpdateProduct, timeout = "5s", invalidates = [GetProduct(id = id)])]
#[authorize(permissions = ["product:write"], admin_override)]
#[transactional]
pub struct UpdateProductHandler;

impl CommandHandler<UpdateProduct> for UpdateProductHandler {
    async fn handle(&self, cmd: UpdateProduct, cx: &mut CommandContext) -> Result<Product, Error> {
        let row = on_db!(db::tx(cx)?, |c| {
            sqlx::query_as::<_, ProductRow>(
                "UPDATE products SET name = COALESCE($2, name),
                                     price_cents = COALESCE($3, price_cents),
                                     stock = COALESCE($4, stock)
                 WHERE id = $1
                 RETURNING id, name, price_cents, stock",
            )
            .bind(cmd.id)
            .bind(&cmd.name)
            .bind(cmd.price_cents)
            .bind(cmd.stock)
            .fetch_optional(c)
            .await
        })?;
        row.map(product)
            .ok_or_else(|| Error::not_found(format!("product {}", cmd.id)))
    }
}

#[command_handler(ReleaseStock, timeout = "5s", invalidates = [GetProduct(id = product_id)])]
#[transactional]
#[retry(max_attempts = 5, delay = "20ms", backoff = 2.0, on = [Unavailable])]
pub struct ReleaseStockHandler;

/// `stock + quantity` is checked in the statement itself (`stock <= i64::MAX - quantity`): past
/// `i64::MAX`, PostgreSQL fails with "bigint out of range" and SQLite silently turns the column
/// into a floating-point number that no longer reads back as an `i64`. Either way the answer is
/// a `Conflict` saying so, and the row is unchanged.
impl CommandHandler<ReleaseStock> for ReleaseStockHandler {
    async fn handle(&self, cmd: ReleaseStock, cx: &mut CommandContext) -> Result<(), Error> {
        let room = i64::MAX.checked_sub(cmd.quantity).ok_or_else(|| {
            Error::validation([FieldError::new("quantity", "range", "must not be negative")])
        })?;
        let updated = on_db!(db::tx(cx)?, |c| {
            sqlx::query("UPDATE products SET stock = stock + $2 WHERE id = $1 AND stock <= $3")
                .bind(cmd.product_id)
                .bind(cmd.quantity)
                .bind(room)
                .execute(c)
                .await
                .map(|done| done.rows_affected())
        })?;
        if updated == 1 {
            return Ok(());
        }
        let stock = on_db!(db::tx(cx)?, |c| {
            sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = $1")
                .bind(cmd.product_id)
                .fetch_optional(c)
                .await
        })?;
        Err(match stock {
            None => Error::not_found(format!("product {}", cmd.product_id)),
            Some(stock) => Error::conflict(format!(
                "product {}: putting back {} unit(s) would take its stock ({stock}) past {}",
                cmd.product_id,
                cmd.quantity,
                i64::MAX
            )),
        })
    }
}

#[query_handler(GetProduct)]
#[cached_query(ttl = "30s", vary_by = [id], public)] // the catalogue is the same for every caller
#[timeout("2s")]
pub struct GetProductHandler {
    db: Db,
}

impl QueryHandler<GetProduct> for GetProductHandler {
    async fn handle(&self, q: GetProduct, _cx: &QueryContext) -> Result<Product, Error> {
        let row = on_db!(&self.db, |c| {
            sqlx::query_as::<_, ProductRow>(
                "SELECT id, name, price_cents, stock FROM products WHERE id = $1",
            )
            .bind(q.id)
            .fetch_optional(c)
            .await
        })?;
        row.map(product)
            .ok_or_else(|| Error::not_found(format!("product {}", q.id)))
    }
}

/// Takes `quantity` units of a product in the command's transaction; answers the unit price.
///
/// One conditional `UPDATE` does the check and the write, so concurrent orders can never take
/// the stock below zero, whatever the isolation level: on PostgreSQL a second writer waits for
/// the first and re-checks `stock >= $2` on the row it committed; SQLite runs one writer at a
/// time. Not enough stock is a `Conflict` (409).
pub async fn take_stock(
    cx: &mut CommandContext,
    id: ProductId,
    quantity: i64,
) -> Result<i64, Error> {
    let price = on_db!(db::tx(cx)?, |c| {
        sqlx::query_scalar::<_, i64>(
            "UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2
             RETURNING price_cents",
        )
        .bind(id)
        .bind(quantity)
        .fetch_optional(c)
        .await
    })?;
    if let Some(price) = price {
        return Ok(price);
    }
    let stock = on_db!(db::tx(cx)?, |c| {
        sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = $1")
            .bind(id)
            .fetch_optional(c)
            .await
    })?;
    Err(match stock {
        None => Error::not_found(format!("product {id}")),
        Some(stock) => Error::conflict(format!(
            "product {id} has {stock} unit(s) left, {quantity} requested"
        )),
    })
}
