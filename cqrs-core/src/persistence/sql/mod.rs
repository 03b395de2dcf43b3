//! The database-backed parts (features `sqlite`, `postgres`): transactions, the outbox,
//! idempotency keys and the event store. The SQL of each backend is in its own file; the other
//! files hold the logic, shared by both.

pub(crate) mod events;
pub(crate) mod idempotency;
pub(crate) mod outbox;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod schema;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use sync_wrapper::SyncWrapper;

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
            Database::Postgres(pool) => {
                let statement = match isolation {
                    Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
                    Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
                    Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
                };
                Ok(Tx::Postgres(
                    pool.begin_with(statement).await.map_err(db_error)?,
                ))
            }
        }
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

/// The slot a transactional attempt keeps its transaction in. `SyncWrapper` makes the context
/// `Sync` (a handler may hold `&cx` across an `.await`) while the transaction is only ever
/// reached through `&mut`.
///
/// Boxed: only `#[transactional]` dispatches have a transaction (and do I/O anyway), while the
/// context that holds this slot is part of every dispatch's future.
#[derive(Default)]
pub(crate) struct TxSlot(Option<Box<SyncWrapper<Tx>>>);

impl TxSlot {
    pub(crate) fn open(tx: Tx) -> Self {
        TxSlot(Some(Box::new(SyncWrapper::new(tx))))
    }

    pub(crate) fn take(&mut self) -> Option<Tx> {
        self.0.take().map(|tx| tx.into_inner())
    }

    pub(crate) fn get_mut(&mut self) -> Option<&mut Tx> {
        self.0.as_mut().map(|tx| tx.get_mut())
    }
}

/// A sqlx error as a cqrs error, with its status (see [`classify`]).
pub(crate) fn db_error(error: sqlx::Error) -> Error {
    Error::from(error)
}

/// Milliseconds since the Unix epoch (how the tables store time).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The status of a database error: connection trouble is `Unavailable` (transient),
/// serialization failures, deadlocks and unique violations are `Conflict` (retry may succeed,
/// or the caller must know), a missing row is `NotFound`.
///
/// `Unavailable`, by database:
/// - PostgreSQL: connection exceptions (class `08`), the server shutting down or restarting
///   (`57P01`..`57P03`), too many connections (`53300`), a full disk (`53100`), out of memory
///   (`53200`), an I/O error (`58030`);
/// - SQLite: the database busy or locked past the busy timeout (`SQLITE_BUSY`,
///   `SQLITE_LOCKED`), an I/O error (`SQLITE_IOERR`), a full disk (`SQLITE_FULL`), the file
///   gone or unopenable (`SQLITE_CANTOPEN`).
pub(crate) fn classify(error: &sqlx::Error) -> Option<crate::Status> {
    use crate::Status;
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Some(Status::Unavailable),
        sqlx::Error::RowNotFound => Some(Status::NotFound),
        sqlx::Error::Database(db) => {
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
                return Some(Status::Conflict);
            }
            let code = db.code()?;
            let code = code.as_ref();
            // Each backend's codes are read only on its own errors: a SQLSTATE such as
            // `42501` (insufficient privilege) is numeric too, and read as a SQLite code its
            // low byte is `SQLITE_BUSY`.
            #[cfg(feature = "sqlite")]
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite (extended) result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                return code
                    .parse::<i32>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
                    .then_some(Status::Unavailable);
            }
            // PostgreSQL SQLSTATEs.
            if code == "40001" || code == "40P01" {
                return Some(Status::Conflict);
            }
            if code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53100" | "53200" | "53300" | "58030"
                )
            {
                return Some(Status::Unavailable);
            }
            None
        }
        _ => None,
    }
}
