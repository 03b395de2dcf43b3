//! The SQL databases (features `sqlite`, `postgres`): transactions, the outbox and its relay,
//! idempotency keys and the event store. The SQL of each database is in its own file
//! (`sqlite.rs`, `postgres.rs`); the other files hold the logic, shared by both, one file per
//! store, each implementing the trait its layer defines.

pub(crate) mod classify;
pub(crate) mod events;
pub(crate) mod idempotency;
pub(crate) mod inbox;
#[cfg(feature = "postgres")]
pub(crate) mod lock;
#[cfg(feature = "postgres")]
pub(crate) mod notify;
pub(crate) mod outbox;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod relay;
pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod setup;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
pub(crate) mod store;
pub(crate) mod tx;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::pipeline::transaction::Isolation;

/// The database the bus runs its transactions, outbox, idempotency keys and events on.
#[derive(Clone)]
pub(crate) enum Database {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running transaction.
pub(crate) enum Tx {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Database {
    pub(crate) fn name(&self) -> &'static str {
        match *self {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            Database::Postgres(_) => "PostgreSQL",
        }
    }

    /// Begins a transaction at `isolation` (see [`Isolation`] for how levels map).
    pub(crate) async fn begin(&self, isolation: Isolation) -> Result<Tx, Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => {
                let _ = isolation; // SQLite is serializable; IMMEDIATE takes the write lock up front.
                Ok(Tx::Sqlite(
                    pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?,
                ))
            }
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => Ok(Tx::Postgres(
                pool.begin_with(begin_statement(isolation))
                    .await
                    .map_err(db_error)?,
            )),
        }
    }
}

/// PostgreSQL's `BEGIN` at `isolation`.
#[cfg(feature = "postgres")]
pub(crate) fn begin_statement(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
        Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
    }
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(tx) => tx.commit().await.map_err(db_error),
            #[cfg(feature = "postgres")]
            Tx::Postgres(tx) => tx.commit().await.map_err(db_error),
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(tx) => tx.rollback().await.map_err(db_error),
            #[cfg(feature = "postgres")]
            Tx::Postgres(tx) => tx.rollback().await.map_err(db_error),
        }
    }
}

/// A sqlx error as a cqrs error, with its status (see [`classify::classify`]).
pub(crate) fn db_error(error: sqlx::Error) -> Error {
    Error::from(error)
}

/// Milliseconds since the Unix epoch (how the tables store time).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
