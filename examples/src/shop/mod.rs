//! The shop: users, products and orders over HTTP, on SQLite or PostgreSQL, using every part of
//! cqrs. `cargo run -p cqrs-examples --bin shop`, then see the README for `curl` examples.
//!
//! One module per concern:
//!
//! - [`users`]: `RegisterUser` (validated, authorized, transactional, retried) and `GetUser`,
//!   and a welcome mail on `UserRegistered`;
//! - [`products`]: the catalogue, `GetProduct` cached until a change invalidates it, and stock;
//! - [`orders`]: the event-sourced `Order`, its `order_summaries` projection fed through the
//!   outbox, and stock released when an order is cancelled;
//! - [`auth`]: bearer tokens to principals, and who may read which order;
//! - [`routes`]: the HTTP API; [`metrics`]: `GET /metrics` for Prometheus;
//! - [`db`]: the shop's tables, one SQL text for both databases; [`cli`]: the `shop` command;
//!   [`broker`]: the shop on NATS JetStream (`--nats`) and its dead letters and replays;
//!   [`server`]: HTTP/1.1 with a header read timeout and a bounded graceful shutdown.
//!
//! In a test, start it on a free port:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cqrs_examples::shop::{self, Db};
//!
//! let db = Db::connect("sqlite::memory:").await?;
//! shop::migrate(&db).await?;
//! let bus = shop::build_bus(&db)?;
//! bus.start().await?; // with PostgreSQL: its cache invalidation channel subscribed
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(shop::serve(listener, bus, std::future::pending()));
//! // .. requests to `url` ..
//! # Ok(()) }
//! ```

pub mod auth;
pub mod broker;
pub mod cli;
pub mod db;
pub mod metrics;
pub mod orders;
pub mod products;
pub mod routes;
pub mod server;
pub mod users;

use std::future::Future;

use cqrs_core::prelude::*;
use cqrs_core::{BuildError, sqlx};
use tokio::net::TcpListener;

pub use self::db::Db;
pub use self::routes::router;
pub use self::server::ServeOptions;

/// The bus of the shop on `db`, not built yet: tests add to it (`.record_events(..)`,
/// `.override_handler(..)`) before `build()`.
///
/// Every handler in this crate is found by itself (the attribute macros register them); the
/// builder gives them what they need: the database (for transactions, the outbox, idempotency
/// keys and the orders' events), the `Db` handle the query handlers read with, and the policy
/// of `#[authorize(resource = ..)]`. `AuditLog` is a global middleware: every command is logged
/// as attempted, then succeeded or failed (target `cqrs::audit`). `.strict()` makes a message
/// without a handler an error.
pub fn bus_builder(db: &Db) -> BusBuilder {
    db.attach(Bus::builder())
        .provide(db.clone())
        .resource_policy(auth::OrderAccess { db: db.clone() })
        .middleware(AuditLog::new())
        .strict()
}

/// The shop's bus on `db`; `build()` checks every handler's dependencies and decorators.
pub fn build_bus(db: &Db) -> Result<Bus, BuildError> {
    bus_builder(db).build()
}

/// Creates the bus's tables (`cqrs_*`) and the shop's, if they do not exist: run it at every
/// start, before [`build_bus`] (a bus starts its outbox relay when it is built, and the relay
/// waits for its table).
pub async fn migrate(db: &Db) -> Result<(), Error> {
    db.create_tables().await
}

/// Serves the shop on `listener` until `shutdown` completes, with the default
/// [`ServeOptions`] (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    bus: Bus,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, bus, shutdown, ServeOptions::default()).await
}

/// Serves the shop on `listener` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish within `options.grace`, and closes every connection. A client gets
/// `options.header_read_timeout` to send each request head (an idle keep-alive connection is
/// closed after it too). The bus and the database stay open: close them after this returns
/// (`bus.close(..)`, then [`Db::close`]), as the `shop` command does.
pub async fn serve_with(
    listener: TcpListener,
    bus: Bus,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    metrics::spawn_upkeep();
    server::serve_router(listener, router(bus), shutdown, options).await
}

/// Fills an empty catalogue with a few products, so that a fresh shop has something to sell.
pub async fn seed(bus: &Bus, db: &Db) -> Result<(), Error> {
    let count = db::on_db!(db, |c| {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM products")
            .fetch_one(c)
            .await
    })?;
    if count > 0 {
        return Ok(());
    }
    let seeder = Principal::new("seed").with_permissions(["product:write"]);
    for (name, price_cents, stock) in [
        ("Mechanical keyboard", 8900, 25),
        ("Trackball", 5400, 10),
        ("USB-C cable", 900, 200),
    ] {
        let product = products::CreateProduct {
            name: name.to_owned(),
            price_cents,
            stock,
        };
        bus.send(Envelope::new(product).principal(seeder.clone()))
            .await?;
    }
    Ok(())
}
