//! The SQL of the SQLite backend.

use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::rows::{ClaimedRow, Migration, OutboxRow};
use super::{db_error, now_ms};
use crate::Error;
use crate::event_store::{RecordedEvent, Snapshot};
use crate::pipeline::idempotency::IdempotencyKey;

pub(crate) async fn apply_migration(
    pool: &SqlitePool,
    migration: &Migration,
) -> Result<bool, Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cqrs_schema_migrations (
            version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    let done: Option<(i64,)> =
        sqlx::query_as("SELECT version FROM cqrs_schema_migrations WHERE version = ?")
            .bind(migration.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    if done.is_some() {
        tx.rollback().await.map_err(db_error)?;
        return Ok(false);
    }
    sqlx::raw_sql(migration.sqlite)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO cqrs_schema_migrations (version, description, applied_at_ms) VALUES (?, ?, ?)",
    )
    .bind(migration.version)
    .bind(migration.description)
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(true)
}

// ---- outbox -------------------------------------------------------------------------------

pub(crate) async fn outbox_insert(
    conn: &mut SqliteConnection,
    row: &OutboxRow,
    locked_until_ms: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cqrs_outbox
           (id, event_name, payload, metadata, created_at_ms, locked_until_ms, partition_key)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id.to_string())
    .bind(row.event_name)
    .bind(&row.payload)
    .bind(&row.metadata)
    .bind(row.created_at_ms)
    .bind(locked_until_ms)
    .bind(row.partition_key.as_deref())
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn outbox_mark_delivered(pool: &SqlitePool, ids: &[Uuid]) -> Result<(), Error> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let ids =
        serde_json::to_string(&ids).map_err(|e| Error::from_std(crate::Status::Internal, e))?;
    sqlx::query(
        "UPDATE cqrs_outbox SET delivered_at_ms = ?, locked_until_ms = NULL, last_error = NULL
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(now_ms())
    .bind(ids)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn outbox_defer(
    pool: &SqlitePool,
    id: Uuid,
    until_ms: i64,
    error: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE cqrs_outbox SET locked_until_ms = ?, last_error = ? WHERE id = ?")
        .bind(until_ms)
        .bind(error)
        .bind(id.to_string())
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Claims up to `limit` pending rows, in the order they were written, skipping every row with
/// an older pending row of the same partition key that is claimed or backing off (so a key's
/// events leave one after the other). One statement: SQLite has one writer at a time.
pub(crate) async fn outbox_claim(
    pool: &SqlitePool,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedRow>, Error> {
    /// id, event name, payload, metadata, created at, attempts, partition key, rowid.
    type Claimed = (
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<String>,
        i64,
    );
    let rows: Vec<Claimed> =
        sqlx::query_as(
            "UPDATE cqrs_outbox SET locked_until_ms = ?, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM (
                     SELECT id, rowid AS seq, MAX(CASE WHEN locked_until_ms > ? THEN 1 ELSE 0 END)
                         OVER (PARTITION BY COALESCE(partition_key, id) ORDER BY rowid
                               ROWS UNBOUNDED PRECEDING) AS blocked
                     FROM cqrs_outbox WHERE delivered_at_ms IS NULL)
                 WHERE blocked = 0 ORDER BY seq LIMIT ?)
             RETURNING id, event_name, payload, metadata, created_at_ms, attempts, partition_key, rowid",
        )
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    rows.into_iter()
        .map(
            |(id, event_name, payload, metadata, created_at_ms, attempts, partition_key, seq)| {
                Ok(ClaimedRow {
                    id: Uuid::parse_str(&id)
                        .map_err(|e| Error::from_std(crate::Status::Internal, e))?,
                    event_name,
                    payload,
                    metadata,
                    created_at_ms,
                    attempts,
                    partition_key,
                    seq,
                })
            },
        )
        .collect()
}

/// Gives claimed rows back at once, without a back-off (rows of a key held back behind an older
/// row that failed).
pub(crate) async fn outbox_release(pool: &SqlitePool, ids: &[Uuid]) -> Result<(), Error> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let ids =
        serde_json::to_string(&ids).map_err(|e| Error::from_std(crate::Status::Internal, e))?;
    sqlx::query(
        "UPDATE cqrs_outbox SET locked_until_ms = NULL, attempts = MAX(attempts - 1, 0)
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn outbox_pending(pool: &SqlitePool) -> Result<u64, Error> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NULL")
            .fetch_one(pool)
            .await
            .map_err(db_error)?;
    Ok(n as u64)
}

// ---- idempotency keys ---------------------------------------------------------------------

pub(crate) async fn idempotency_insert(
    pool: &SqlitePool,
    key: &IdempotencyKey,
    expires_at_ms: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO cqrs_idempotency (scope, caller, key, fingerprint, reply, expires_at_ms) VALUES (?, ?, ?, ?, NULL, ?)
         ON CONFLICT (scope, caller, key) DO NOTHING",
    )
    .bind(key.scope)
    .bind(key.caller())
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(expires_at_ms)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn idempotency_select(
    pool: &SqlitePool,
    key: &IdempotencyKey,
) -> Result<Option<(String, Option<Vec<u8>>, i64)>, Error> {
    sqlx::query_as("SELECT fingerprint, reply, expires_at_ms FROM cqrs_idempotency WHERE scope = ? AND caller = ? AND key = ?")
        .bind(key.scope)
        .bind(key.caller())
        .bind(&key.key)
        .fetch_optional(pool)
        .await
        .map_err(db_error)
}

pub(crate) async fn idempotency_take_over(
    pool: &SqlitePool,
    key: &IdempotencyKey,
    old_expires_at_ms: i64,
    expires_at_ms: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE cqrs_idempotency SET fingerprint = ?, reply = NULL, expires_at_ms = ?
         WHERE scope = ? AND caller = ? AND key = ? AND expires_at_ms = ?",
    )
    .bind(&key.fingerprint)
    .bind(expires_at_ms)
    .bind(key.scope)
    .bind(key.caller())
    .bind(&key.key)
    .bind(old_expires_at_ms)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn idempotency_complete(
    conn: &mut SqliteConnection,
    key: &IdempotencyKey,
    reply: &[u8],
    expires_at_ms: i64,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE cqrs_idempotency SET reply = ?, expires_at_ms = ?
         WHERE scope = ? AND caller = ? AND key = ? AND fingerprint = ?",
    )
    .bind(reply)
    .bind(expires_at_ms)
    .bind(key.scope)
    .bind(key.caller())
    .bind(&key.key)
    .bind(&key.fingerprint)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn idempotency_release(
    pool: &SqlitePool,
    key: &IdempotencyKey,
) -> Result<(), Error> {
    sqlx::query(
        "DELETE FROM cqrs_idempotency WHERE scope = ? AND caller = ? AND key = ? AND reply IS NULL",
    )
    .bind(key.scope)
    .bind(key.caller())
    .bind(&key.key)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn idempotency_purge(pool: &SqlitePool, now_ms: i64) -> Result<u64, Error> {
    let done = sqlx::query("DELETE FROM cqrs_idempotency WHERE expires_at_ms < ?")
        .bind(now_ms)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected())
}

// ---- events and snapshots -----------------------------------------------------------------

pub(crate) async fn events_load(
    conn: &mut SqliteConnection,
    aggregate: &str,
    id: &str,
    after_version: u64,
) -> Result<Vec<RecordedEvent>, Error> {
    let rows: Vec<(i64, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT version, event_id, event_name, payload, metadata, recorded_at_ms FROM cqrs_events
         WHERE aggregate_type = ? AND aggregate_id = ? AND version > ? ORDER BY version",
    )
    .bind(aggregate)
    .bind(id)
    .bind(after_version as i64)
    .fetch_all(conn)
    .await
    .map_err(db_error)?;
    rows.into_iter()
        .map(
            |(version, event_id, name, payload, metadata, recorded_at_ms)| {
                Ok(RecordedEvent {
                    event_id: Uuid::parse_str(&event_id)
                        .map_err(|e| Error::from_std(crate::Status::Internal, e))?,
                    version: version as u64,
                    name,
                    payload: serde_json::from_str(&payload)?,
                    metadata: serde_json::from_str(&metadata)?,
                    recorded_at_ms,
                })
            },
        )
        .collect()
}

pub(crate) async fn events_version(
    conn: &mut SqliteConnection,
    aggregate: &str,
    id: &str,
) -> Result<u64, Error> {
    let (v,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(version), 0) FROM cqrs_events WHERE aggregate_type = ? AND aggregate_id = ?",
    )
    .bind(aggregate)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(db_error)?;
    Ok(v as u64)
}

pub(crate) async fn events_append(
    conn: &mut SqliteConnection,
    aggregate: &str,
    id: &str,
    events: &[RecordedEvent],
) -> Result<(), Error> {
    for e in events {
        sqlx::query(
            "INSERT INTO cqrs_events
             (aggregate_type, aggregate_id, version, event_id, event_name, payload, metadata, recorded_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(aggregate)
        .bind(id)
        .bind(e.version as i64)
        .bind(e.event_id.to_string())
        .bind(&e.name)
        .bind(e.payload.to_string())
        .bind(e.metadata.to_string())
        .bind(e.recorded_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

pub(crate) async fn snapshot_load(
    conn: &mut SqliteConnection,
    aggregate: &str,
    id: &str,
) -> Result<Option<Snapshot>, Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, state FROM cqrs_snapshots WHERE aggregate_type = ? AND aggregate_id = ?",
    )
    .bind(aggregate)
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?;
    row.map(|(version, state)| {
        Ok(Snapshot {
            version: version as u64,
            state: serde_json::from_str(&state)?,
        })
    })
    .transpose()
}

pub(crate) async fn snapshot_save(
    conn: &mut SqliteConnection,
    aggregate: &str,
    id: &str,
    snapshot: &Snapshot,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cqrs_snapshots (aggregate_type, aggregate_id, version, state, taken_at_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
         SET version = excluded.version, state = excluded.state, taken_at_ms = excluded.taken_at_ms
         WHERE excluded.version > cqrs_snapshots.version",
    )
    .bind(aggregate)
    .bind(id)
    .bind(snapshot.version as i64)
    .bind(snapshot.state.to_string())
    .bind(now_ms())
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}
