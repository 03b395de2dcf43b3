//! The shop's own tables, on SQLite (the embedded default) or PostgreSQL.
//!
//! Every statement is written once, with `$1, $2, ..` placeholders (PostgreSQL's style, which
//! SQLite understands too) and types both databases share (`BIGINT`, `TEXT`). The `on_db!`
//! macro runs it on whichever database the shop was started with, a pool or a handler's
//! transaction:
//!
//! ```text
//! // in a query handler: on the pool
//! let n = on_db!(&self.db, |c| sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
//!     .fetch_one(c)
//!     .await)?;
//! // in a #[transactional] command handler: in the command's transaction
//! on_db!(db::tx(cx)?, |c| sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(c).await)?;
//! ```

use std::str::FromStr;

use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, PgConnection, PgPool, SqliteConnection, SqlitePool};
use cqrs_core::{AnyTx, BusBuilder, CommandContext, Error};

/// One thing in its SQLite form or its PostgreSQL form: a pool ([`Db`]) or a connection
/// ([`Conn`]).
#[derive(Debug, Clone)]
pub enum Backend<S, P> {
    /// SQLite.
    Sqlite(S),
    /// PostgreSQL.
    Postgres(P),
}

/// The database the shop runs on. Cheap to clone (the pools are shared), and injected into the
/// handlers that read it.
pub type Db = Backend<SqlitePool, PgPool>;

/// A connection inside a command's transaction (see [`tx`]).
pub type Conn<'a> = Backend<&'a mut SqliteConnection, &'a mut PgConnection>;

/// Runs `$body` with `$c` bound to the SQLite or the PostgreSQL form of `$db` (a `&Db` or a
/// [`Conn`]): the body is compiled once for each database, so one statement serves both.
macro_rules! on_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::shop::db::Backend::Sqlite($c) => $body,
            $crate::shop::db::Backend::Postgres($c) => $body,
        }
    };
}
pub(crate) use on_db;

/// The running transaction of a `#[transactional]` command handler, whichever the database
/// (`cx.any_tx()`, in the shape `on_db!` takes).
pub fn tx(cx: &mut CommandContext) -> Result<Conn<'_>, Error> {
    match cx.any_tx()? {
        AnyTx::Sqlite(c) => Ok(Backend::Sqlite(c)),
        AnyTx::Postgres(c) => Ok(Backend::Postgres(c)),
        _ => Err(Error::internal("the shop runs on SQLite or PostgreSQL")),
    }
}

impl Db {
    /// Connects to `url`: `postgres://..` (or `postgresql://..`) for PostgreSQL; anything else is
    /// a SQLite file path or `sqlite:` URL (the file is created if missing).
    pub async fn connect(url: &str) -> Result<Db, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect_with(options)
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            Ok(Db::Sqlite(cqrs_core::sqlite_pool(url).await?))
        }
    }

    /// Gives the database to the bus: transactions, outbox, idempotency keys, event store.
    pub fn attach(&self, builder: BusBuilder) -> BusBuilder {
        match self {
            Db::Sqlite(pool) => builder.sqlite(pool.clone()),
            Db::Postgres(pool) => builder.postgres(pool.clone()),
        }
    }

    /// Creates the bus's tables (`cqrs_*`, with `cqrs_core::migrate_sqlite` or
    /// `migrate_postgres`: no bus needed) and the shop's, if they do not exist.
    pub async fn create_tables(&self) -> Result<(), Error> {
        match self {
            Db::Sqlite(pool) => {
                cqrs_core::migrate_sqlite(pool).await?;
                sqlx::raw_sql(SQLITE_SCHEMA).execute(pool).await?;
            }
            Db::Postgres(pool) => {
                cqrs_core::migrate_postgres(pool).await?;
                sqlx::raw_sql(POSTGRES_SCHEMA).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes the pool (and every clone of it: the bus's included).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

/// The two schemas differ only in how ids are generated.
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    email         TEXT   NOT NULL UNIQUE,
    name          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    id          INTEGER PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock       BIGINT NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS order_summaries (
    order_id     TEXT   PRIMARY KEY,
    customer     TEXT   NOT NULL,
    product_id   BIGINT NOT NULL,
    quantity     BIGINT NOT NULL,
    total_cents  BIGINT NOT NULL,
    status       TEXT   NOT NULL,
    placed_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_events (
    handler  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (handler, event_id)
);
";

const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    email         TEXT   NOT NULL UNIQUE,
    name          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock       BIGINT NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS order_summaries (
    order_id     TEXT   PRIMARY KEY,
    customer     TEXT   NOT NULL,
    product_id   BIGINT NOT NULL,
    quantity     BIGINT NOT NULL,
    total_cents  BIGINT NOT NULL,
    status       TEXT   NOT NULL,
    placed_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_events (
    handler  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (handler, event_id)
);
";

/// Milliseconds since the Unix epoch (how the tables store time).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
