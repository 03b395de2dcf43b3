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

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, Connection, PgConnection, PgPool, SqliteConnection, SqlitePool};
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

/// How long connecting to PostgreSQL may take, at start and when the pool opens a connection
/// later: a server that does not answer is an error within seconds, not after sqlx's default of
/// 30 s (a dispatch's own timeout is 5 s anyway).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Db {
    /// Connects to `url`: `postgres://..` (or `postgresql://..`) for PostgreSQL; anything else is
    /// a SQLite file path or `sqlite:` URL (the file is created if missing).
    ///
    /// An error says what could not be opened and where: the SQLite file, or the PostgreSQL URL
    /// without its password (see [`redact`]); a PostgreSQL server that does not answer is one
    /// within [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<Db, Error> {
        if is_postgres(url) {
            let failed = |e: &dyn std::fmt::Display| {
                Error::unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    redact(url)
                ))
            };
            let options = PgConnectOptions::from_str(url).map_err(|e| failed(&e))?;
            // One connection first, on its own: the pool retries a refused connection until its
            // acquire timeout and then reports only that it timed out; this says why.
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
            {
                Ok(Ok(probe)) => probe.close().await.map_err(|e| failed(&e))?,
                Ok(Err(e)) => return Err(failed(&e)),
                Err(_) => {
                    return Err(failed(&format_args!(
                        "no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| failed(&e))?;
            Ok(Db::Postgres(pool))
        } else {
            let pool = cqrs_core::sqlite_pool(url).await.map_err(|e| {
                let mut message = format!("cannot open the SQLite database {url}: {}", e.message());
                if let Some(dir) = sqlite_path(url).parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.is_dir()
                {
                    message.push_str(&format!(
                        " (the directory {} does not exist)",
                        dir.display()
                    ));
                }
                Error::unavailable(message)
            })?;
            Ok(Db::Sqlite(pool))
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

    /// Closes the pool (and every clone of it: the bus's included), waiting for the
    /// connections in use to come back. SQLite's write-ahead log is checkpointed into the
    /// database file first (`PRAGMA wal_checkpoint(TRUNCATE)`), so the file alone holds
    /// everything; closing the last connection then removes `-wal` and `-shm`.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => {
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(pool)
                    .await
                {
                    tracing::warn!(target: "shop", %error, "could not checkpoint the SQLite log; it is folded in at the next start");
                }
                pool.close().await
            }
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

/// Whether `url` names a PostgreSQL database (otherwise it is SQLite).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The file a SQLite `url` names (a path, or a `sqlite:` URL with or without options).
fn sqlite_path(url: &str) -> &Path {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    Path::new(path.split('?').next().unwrap_or(path))
}

/// `url` fit to print: the password of a PostgreSQL URL (`user:password@`, or a `password=`
/// option) replaced by `***`. A SQLite path is printed as it is. Everything the shop prints
/// or logs about its database goes through this.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("postgres://shop:s3cret@db.internal:5432/shop?sslmode=require"),
            "postgres://shop:***@db.internal:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://shop@db/shop?password=s3cret&application_name=shop"),
            "postgresql://shop@db/shop?password=***&application_name=shop"
        );
        // A password holding '@' or ':' is hidden whole.
        assert_eq!(
            redact("postgres://shop:p@ss:w0rd@127.0.0.1/shop"),
            "postgres://shop:***@127.0.0.1/shop"
        );
        assert_eq!(
            redact("postgres://127.0.0.1/shop"),
            "postgres://127.0.0.1/shop"
        );
        assert_eq!(redact("./shop.db"), "./shop.db");
        assert_eq!(redact("sqlite:shop.db?mode=rwc"), "sqlite:shop.db?mode=rwc");
    }

    #[test]
    fn sqlite_path_strips_the_scheme_and_options() {
        assert_eq!(sqlite_path("/tmp/a/shop.db"), Path::new("/tmp/a/shop.db"));
        assert_eq!(
            sqlite_path("sqlite:///tmp/a/shop.db?mode=rwc"),
            Path::new("/tmp/a/shop.db")
        );
        assert_eq!(sqlite_path("sqlite:shop.db"), Path::new("shop.db"));
    }
}
