//! `#[exclusive]` on PostgreSQL: a session advisory lock, taken before `BEGIN` on the very
//! connection the transaction then runs on, and released once the transaction has ended.
//!
//! **Why before `BEGIN`, on a session.** A lock taken inside a `REPEATABLE READ` or
//! `SERIALIZABLE` transaction would be waited for after the snapshot was taken: the next holder
//! would then read the data as it was before the previous holder committed. A transaction-scoped
//! lock (`pg_advisory_xact_lock`) has that flaw; a session lock taken first has not. The lock
//! and the transaction share one pooled connection, so an `#[exclusive]` command needs no more
//! connections than a plain one.
//!
//! **The lock's number.** The two-`int4` form, `(hashtext(current_schema() || ':' || space),
//! hashtext(key))`: the server hashes, so every process computes the same numbers, and the
//! schema is part of them, so two services (or tests) on one database, each in its schema, do
//! not meet. The two-key form never meets the one-`bigint` locks the outbox and the migrations
//! take. Two keys whose hashes collide share a lock: they wait for each other, never run
//! together.
//!
//! **The fencing token** is `nextval('cqrs_exclusive_fence')`, taken in the statement that
//! takes the lock, only when it was taken: it grows with each holder of any lock.
//!
//! **Never back to the pool still locked.** A connection holding a session lock must not be
//! returned to the pool: the next user would hold the lock without knowing it. So the lock is
//! freed in every way an attempt can end: after commit or rollback (`COMMIT; SELECT
//! pg_advisory_unlock(..); BEGIN` in one round trip, then sqlx ends the empty transaction, since
//! a `sqlx::Transaction` gives its connection back to the pool as it ends), by the non-
//! transactional path's unlock, and, when a future is dropped mid-way (a timeout), by a task
//! that unlocks the connection; when an unlock cannot be confirmed, the connection is closed
//! (a new statement ends the session, `pg_terminate_backend(pg_backend_pid())`, or sqlx's
//! `close_on_drop`), and with the session its locks.

use std::any::Any;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use super::outbox::OutboxSettings;
use super::tx::SqlTransaction;
use super::{Tx, db_error};
use crate::Error;
use crate::pipeline::exclusive::{HeldLock, LockBackend, LockName};
use crate::pipeline::transaction::{Isolation, Transaction, TransactionalStore};

/// Takes the lock when it is free, with the fencing token; its numbers either way.
const TRY_LOCK: &str = "SELECT l.space, l.key,
        CASE WHEN pg_try_advisory_lock(l.space, l.key) THEN nextval('cqrs_exclusive_fence') END
    FROM (SELECT hashtext(current_schema() || ':' || $1) AS space, hashtext($2) AS key) AS l";

/// The locks of `#[exclusive]` handlers on the bus's PostgreSQL pool.
#[derive(Debug, Clone)]
pub(crate) struct PgLocks {
    pool: PgPool,
}

impl PgLocks {
    pub(crate) fn new(pool: PgPool) -> Self {
        PgLocks { pool }
    }
}

/// The lock's two numbers (see the module's header).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdvisoryKey {
    space: i32,
    key: i32,
}

/// A pooled connection that is closed, not given back to the pool, if dropped before
/// [`keep`](Closing::keep): it may hold a lock no one will release.
struct Closing(Option<PoolConnection<Postgres>>);

impl Closing {
    fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, Error> {
        self.0
            .as_mut()
            .ok_or_else(|| Error::internal("the lock's connection is gone"))
    }

    fn keep(mut self) -> Option<PoolConnection<Postgres>> {
        self.0.take()
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

impl LockBackend for PgLocks {
    fn kind(&self) -> &'static str {
        "a PostgreSQL session advisory lock"
    }

    fn try_acquire<'a>(
        &'a self,
        lock: &'a LockName,
    ) -> BoxFuture<'a, Result<Option<Box<dyn HeldLock>>, Error>> {
        Box::pin(async move {
            let mut conn = Closing(Some(self.pool.acquire().await.map_err(db_error)?));
            // An error (or a drop) here may come after the lock was taken (the sequence
            // missing: not migrated): `Closing` then closes the connection, and the lock ends
            // with its session.
            let (space, key, fence): (i32, i32, Option<i64>) = sqlx::query_as(TRY_LOCK)
                .bind(lock.space)
                .bind(&lock.key)
                .fetch_one(&mut **conn.conn()?)
                .await
                .map_err(db_error)?;
            let conn = conn.keep();
            Ok(fence.map(|fence| {
                Box::new(PgSessionLock {
                    conn,
                    key: AdvisoryKey { space, key },
                    fence: fence as u64,
                }) as Box<dyn HeldLock>
            }))
        })
    }
}

/// A lock held on a pooled connection, until it is released or its connection is handed to
/// the transaction of the attempt ([`begin_holding`]).
pub(crate) struct PgSessionLock {
    conn: Option<PoolConnection<Postgres>>,
    key: AdvisoryKey,
    fence: u64,
}

impl HeldLock for PgSessionLock {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        let conn = self.conn.take();
        let key = self.key;
        Box::pin(async move {
            match conn {
                Some(conn) => unlock(Closing(Some(conn)), key).await,
                // The transaction has it, and unlocked it when it ended.
                None => Ok(()),
            }
        })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for PgSessionLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = unlock(Closing(Some(conn)), key).await {
                        tracing::warn!(target: "cqrs", error = %format_args!("{error:#}"), "unlocking an abandoned `#[exclusive]` lock failed: its connection was closed instead");
                    }
                });
            }
            // No runtime to unlock on: closing the socket ends the session and its locks.
            Err(_) => drop(conn.detach()),
        }
    }
}

/// Unlocks on `conn` and gives it back to the pool; closes it when the unlock is not
/// confirmed (or this future is dropped first).
async fn unlock(mut conn: Closing, key: AdvisoryKey) -> Result<(), Error> {
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
        .bind(key.space)
        .bind(key.key)
        .fetch_one(&mut **conn.conn()?)
        .await
        .map_err(db_error)?;
    if !unlocked {
        return Err(Error::internal(
            "the `#[exclusive]` lock was not held by its connection",
        ));
    }
    conn.keep();
    Ok(())
}

/// Begins the transaction of an attempt on the connection that holds its lock: the
/// transaction takes the connection and unlocks it once it has ended.
pub(crate) fn begin_holding<'a>(
    store: &'a dyn TransactionalStore,
    outbox: OutboxSettings,
    isolation: Isolation,
    lock: &'a mut dyn HeldLock,
) -> BoxFuture<'a, Result<Box<dyn Transaction>, Error>> {
    Box::pin(async move {
        let Some(held) = lock.as_any_mut().downcast_mut::<PgSessionLock>() else {
            return store.begin(isolation).await;
        };
        let Some(conn) = held.conn.take() else {
            return Err(Error::internal(
                "the `#[exclusive]` lock's connection was already given to a transaction",
            ));
        };
        let key = held.key;
        // In a task of its own: `sqlx::Transaction::begin` owns the connection while it runs,
        // and a caller dropped then (a timeout) must not drop a connection that holds the lock.
        // Once begun, the `LockedTransaction` unlocks whenever it is dropped.
        let begun = tokio::spawn(async move {
            let statement = super::begin_statement(isolation);
            let tx =
                sqlx::Transaction::begin(conn, Some(sqlx::SqlSafeStr::into_sql_str(statement)))
                    .await
                    .map_err(db_error)?;
            Ok::<_, Error>(LockedTransaction {
                inner: Some(SqlTransaction::new(Tx::Postgres(tx), outbox)),
                key,
            })
        });
        let tx = begun
            .await
            .map_err(|e| Error::internal(format!("beginning a locked transaction: {e}")))??;
        Ok(Box::new(tx) as Box<dyn Transaction>)
    })
}

/// A transaction on the connection that holds an `#[exclusive]` lock: it frees the lock once
/// it has committed or rolled back, and when dropped unfinished.
struct LockedTransaction {
    inner: Option<SqlTransaction>,
    key: AdvisoryKey,
}

impl LockedTransaction {
    fn inner(&mut self) -> &mut SqlTransaction {
        match &mut self.inner {
            Some(inner) => inner,
            None => unreachable!("taken only by commit, rollback and drop, which consume it"),
        }
    }

    /// Ends the transaction (commit or roll back), then unlocks, in a task of its own so that
    /// a caller dropped meanwhile leaves no lock behind.
    fn end(&mut self, commit: bool) -> BoxFuture<'static, Result<(), Error>> {
        let inner = self.inner.take();
        let key = self.key;
        Box::pin(async move {
            let Some(inner) = inner else {
                return Ok(());
            };
            tokio::spawn(end_and_unlock(inner.into_tx(), key, commit))
                .await
                .map_err(|e| Error::internal(format!("ending a locked transaction: {e}")))?
        })
    }
}

impl Drop for LockedTransaction {
    fn drop(&mut self) {
        if let (Some(inner), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        {
            let key = self.key;
            runtime.spawn(async move {
                if let Err(error) = end_and_unlock(inner.into_tx(), key, false).await {
                    tracing::warn!(target: "cqrs", error = %format_args!("{error:#}"), "rolling back an abandoned `#[exclusive]` transaction failed");
                }
            });
        }
    }
}

/// `COMMIT` (or `ROLLBACK`), unlock, and an empty `BEGIN` for sqlx to end (it tracks the
/// transaction it began and gives the connection back to the pool when it ends it), in one
/// round trip. Which statements completed tells what happened: the commit's outcome is the
/// attempt's; a lock that could not be freed ends with its session.
async fn end_and_unlock(tx: Tx, key: AdvisoryKey, commit: bool) -> Result<(), Error> {
    #[allow(irrefutable_let_patterns)] // without `sqlite`, every transaction is PostgreSQL's
    let Tx::Postgres(mut tx) = tx else {
        return Err(Error::internal(
            "a locked transaction that is not PostgreSQL's",
        ));
    };
    let ending = if commit { "COMMIT" } else { "ROLLBACK" };
    let unlock = format!("SELECT pg_advisory_unlock({}, {})", key.space, key.key);
    let (completed, error) = run_batch(&mut tx, format!("{ending}; {unlock}; BEGIN")).await;
    match (completed, error) {
        (3, None) => {
            // The empty transaction: its end gives the connection back, unlocked.
            let _ = tx.commit().await;
            Ok(())
        }
        (0, Some(error)) => {
            // The transaction ended without committing: unlock, and let sqlx end an empty one.
            match run_batch(&mut tx, format!("{unlock}; BEGIN")).await {
                (2, None) => {
                    let _ = tx.rollback().await;
                }
                _ => terminate(&mut tx).await,
            }
            Err(db_error(error))
        }
        (_, error) => {
            // Committed (or rolled back), but the lock may still be held: end the session.
            tracing::warn!(target: "cqrs", error = ?error, "could not unlock an `#[exclusive]` lock after its transaction: closing its connection");
            terminate(&mut tx).await;
            Ok(())
        }
    }
}

/// Runs statements in one round trip: how many completed, and the error that stopped them.
async fn run_batch(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    sql: String,
) -> (usize, Option<sqlx::Error>) {
    let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute_many(&mut **tx);
    let mut completed = 0;
    while let Some(result) = results.next().await {
        match result {
            Ok(_) => completed += 1,
            Err(error) => return (completed, Some(error)),
        }
    }
    (completed, None)
}

/// Ends the connection's session (and with it every lock it holds); sqlx then finds the
/// connection dead and closes it rather than pool it.
async fn terminate(tx: &mut sqlx::Transaction<'static, Postgres>) {
    let _ = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut **tx)
        .await;
}

impl Transaction for LockedTransaction {
    fn write_outbox<'a>(
        &'a mut self,
        events: &'a mut [crate::events::EmittedEvent],
        metadata: &'a crate::envelope::Metadata,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.inner().write_outbox(events, metadata)
    }

    fn complete_idempotency<'a>(
        &'a mut self,
        key: &'a crate::pipeline::idempotency::IdempotencyKey,
        reply: &'a [u8],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.inner().complete_idempotency(key, reply)
    }

    fn record_handled<'a>(
        &'a mut self,
        handler: &'a str,
        event_id: uuid::Uuid,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.inner().record_handled(handler, event_id)
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.end(true)
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.end(false)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self.inner().as_any_mut()
    }
}
