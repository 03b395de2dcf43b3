//! The SQL of the PostgreSQL backend.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::rows::{ClaimedRow, Migration, OutboxRow};
use super::{db_error, now_ms};
use crate::Error;
use crate::event_store::{RecordedEvent, Snapshot};
use crate::pipeline::idempotency::IdempotencyKey;

pub(crate) async fn apply_migration(pool: &PgPool, migration: &Migration) -> Result<bool, Error> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    // One migrator at a time per database (and schema): the lock ends with the transaction.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.cqrs_schema_migrations'))",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cqrs_schema_migrations (
            version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    let done: Option<(i64,)> =
        sqlx::query_as("SELECT version FROM cqrs_schema_migrations WHERE version = $1")
            .bind(migration.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    if done.is_some() {
        tx.rollback().await.map_err(db_error)?;
        return Ok(false);
    }
    sqlx::raw_sql(migration.postgres)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    sqlx::query("INSERT INTO cqrs_schema_migrations (version, description, applied_at_ms) VALUES ($1, $2, $3)")
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
    conn: &mut PgConnection,
    row: &OutboxRow,
    locked_until_ms: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cqrs_outbox
           (id, event_name, payload, metadata, created_at_ms, locked_until_ms, partition_key)
         VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7)",
    )
    .bind(row.id)
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

/// Marks rows delivered, committed *asynchronously*: the statement's own transaction sets
/// `synchronous_commit = off` for itself (`set_config(.., true)` lasts until its commit, which
/// reads it), so it returns without waiting for the WAL flush. A crash in the next few hundred
/// milliseconds can lose the mark, never anything else: the relay then delivers the event
/// again, which at-least-once delivery allows and event handlers already expect. The
/// transaction that wrote the event was committed synchronously, as the user's work must be.
pub(crate) async fn outbox_mark_delivered(pool: &PgPool, ids: &[Uuid]) -> Result<(), Error> {
    // One id (a command's one event, the common case) by `=`: with `= ANY($2)` and a one-element
    // array the whole operation measured 3 to 6% slower (BENCHMARKS.md, transactional).
    let query = match ids {
        [id] => sqlx::query(
            "UPDATE cqrs_outbox SET delivered_at_ms = $1, locked_until_ms = NULL, last_error = NULL
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit
             WHERE id = $2",
        )
        .bind(now_ms())
        .bind(*id),
        _ => sqlx::query(
            "UPDATE cqrs_outbox SET delivered_at_ms = $1, locked_until_ms = NULL, last_error = NULL
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit
             WHERE id = ANY($2)",
        )
        .bind(now_ms())
        .bind(ids),
    };
    query.execute(pool).await.map_err(db_error)?;
    Ok(())
}

pub(crate) async fn outbox_defer(
    pool: &PgPool,
    id: Uuid,
    until_ms: i64,
    error: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE cqrs_outbox SET locked_until_ms = $1, last_error = $2 WHERE id = $3")
        .bind(until_ms)
        .bind(error)
        .bind(id)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Claims up to `limit` pending rows, in the order they were written (`seq`), skipping every
/// row with an older pending row of the same partition key that is claimed or backing off (so
/// a key's events leave one after the other). Claims are serialized by a transaction-scoped
/// advisory lock (per schema): with `SKIP LOCKED` instead, a relay could skip an older row
/// another relay is claiming and take the next one of its key.
pub(crate) async fn outbox_claim(
    pool: &PgPool,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedRow>, Error> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.cqrs_outbox'))")
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    /// id, event name, payload, metadata, created at, attempts, partition key, seq.
    type Claimed = (Uuid, String, String, String, i64, i32, Option<String>, i64);
    let rows: Vec<Claimed> = sqlx::query_as(
        "WITH pending AS (
                 SELECT id, seq, bool_or(locked_until_ms IS NOT NULL AND locked_until_ms > $2)
                     OVER (PARTITION BY COALESCE(partition_key, id::text) ORDER BY seq
                           ROWS UNBOUNDED PRECEDING) AS blocked
                 FROM cqrs_outbox WHERE delivered_at_ms IS NULL
             ), chosen AS (
                 SELECT id FROM pending WHERE NOT blocked ORDER BY seq LIMIT $3
             )
             UPDATE cqrs_outbox o SET locked_until_ms = $1, attempts = attempts + 1
             FROM chosen WHERE o.id = chosen.id
             RETURNING o.id, o.event_name, o.payload::text, o.metadata::text, o.created_at_ms,
                       o.attempts, o.partition_key, o.seq",
    )
    .bind(lease_until_ms)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    rows.into_iter()
        .map(
            |(id, event_name, payload, metadata, created_at_ms, attempts, partition_key, seq)| {
                Ok(ClaimedRow {
                    id,
                    event_name,
                    payload,
                    metadata,
                    created_at_ms,
                    attempts: i64::from(attempts),
                    partition_key,
                    seq,
                })
            },
        )
        .collect()
}

/// Gives claimed rows back at once, without a back-off (rows of a key held back behind an older
/// row that failed).
pub(crate) async fn outbox_release(pool: &PgPool, ids: &[Uuid]) -> Result<(), Error> {
    sqlx::query(
        "UPDATE cqrs_outbox SET locked_until_ms = NULL, attempts = GREATEST(attempts - 1, 0)
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn outbox_pending(pool: &PgPool) -> Result<u64, Error> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NULL")
            .fetch_one(pool)
            .await
            .map_err(db_error)?;
    Ok(n as u64)
}

// ---- idempotency keys ---------------------------------------------------------------------

pub(crate) async fn idempotency_insert(
    pool: &PgPool,
    key: &IdempotencyKey,
    expires_at_ms: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO cqrs_idempotency (scope, caller, key, fingerprint, reply, expires_at_ms) VALUES ($1, $2, $3, $4, NULL, $5)
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
    pool: &PgPool,
    key: &IdempotencyKey,
) -> Result<Option<(String, Option<Vec<u8>>, i64)>, Error> {
    sqlx::query_as("SELECT fingerprint, reply, expires_at_ms FROM cqrs_idempotency WHERE scope = $1 AND caller = $2 AND key = $3")
        .bind(key.scope)
        .bind(key.caller())
        .bind(&key.key)
        .fetch_optional(pool)
        .await
        .map_err(db_error)
}

pub(crate) async fn idempotency_take_over(
    pool: &PgPool,
    key: &IdempotencyKey,
    old_expires_at_ms: i64,
    expires_at_ms: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE cqrs_idempotency SET fingerprint = $1, reply = NULL, expires_at_ms = $2
         WHERE scope = $3 AND caller = $4 AND key = $5 AND expires_at_ms = $6",
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
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    reply: &[u8],
    expires_at_ms: i64,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE cqrs_idempotency SET reply = $1, expires_at_ms = $2
         WHERE scope = $3 AND caller = $4 AND key = $5 AND fingerprint = $6",
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

pub(crate) async fn idempotency_release(pool: &PgPool, key: &IdempotencyKey) -> Result<(), Error> {
    sqlx::query("DELETE FROM cqrs_idempotency WHERE scope = $1 AND caller = $2 AND key = $3 AND reply IS NULL")
        .bind(key.scope)
        .bind(key.caller())
        .bind(&key.key)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn idempotency_purge(pool: &PgPool, now_ms: i64) -> Result<u64, Error> {
    let done = sqlx::query("DELETE FROM cqrs_idempotency WHERE expires_at_ms < $1")
        .bind(now_ms)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected())
}

// ---- events and snapshots -----------------------------------------------------------------

pub(crate) async fn events_load(
    conn: &mut PgConnection,
    aggregate: &str,
    id: &str,
    after_version: u64,
) -> Result<Vec<RecordedEvent>, Error> {
    let rows: Vec<(i64, Uuid, String, String, String, i64)> = sqlx::query_as(
        "SELECT version, event_id, event_name, payload::text, metadata::text, recorded_at_ms FROM cqrs_events
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3 ORDER BY version",
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
                    event_id,
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
    conn: &mut PgConnection,
    aggregate: &str,
    id: &str,
) -> Result<u64, Error> {
    let (v,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(version), 0) FROM cqrs_events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(db_error)?;
    Ok(v as u64)
}

pub(crate) async fn events_append(
    conn: &mut PgConnection,
    aggregate: &str,
    id: &str,
    events: &[RecordedEvent],
) -> Result<(), Error> {
    for e in events {
        sqlx::query(
            "INSERT INTO cqrs_events
             (aggregate_type, aggregate_id, version, event_id, event_name, payload, metadata, recorded_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)",
        )
        .bind(aggregate)
        .bind(id)
        .bind(e.version as i64)
        .bind(e.event_id)
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
    conn: &mut PgConnection,
    aggregate: &str,
    id: &str,
) -> Result<Option<Snapshot>, Error> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT version, state::text FROM cqrs_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
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
    conn: &mut PgConnection,
    aggregate: &str,
    id: &str,
    snapshot: &Snapshot,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO cqrs_snapshots (aggregate_type, aggregate_id, version, state, taken_at_ms) VALUES ($1, $2, $3, $4::jsonb, $5)
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
