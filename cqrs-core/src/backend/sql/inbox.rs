//! The inbox (`cqrs_inbox`): which events each transactional event handler has handled,
//! recorded in the handler's own transaction. A redelivered event whose (handler, event id) is
//! there was handled and committed already: it is acknowledged without running the handler
//! again. A replay clears the handler's rows first.

use uuid::Uuid;

use super::{Database, Tx, db_error, now_ms};
use crate::Error;

/// Records that `handler` handles `event_id`, inside `tx`; `false` if it already had (then
/// the handler must not run: its work was committed with the first record).
pub(crate) async fn record(tx: &mut Tx, handler: &str, event_id: Uuid) -> Result<bool, Error> {
    let inserted = match tx {
        #[cfg(feature = "sqlite")]
        Tx::Sqlite(tx) => sqlx::query(
            "INSERT INTO cqrs_inbox (handler, event_id, handled_at_ms) VALUES (?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(handler)
        .bind(event_id.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?
        .rows_affected(),
        #[cfg(feature = "postgres")]
        Tx::Postgres(tx) => sqlx::query(
            "INSERT INTO cqrs_inbox (handler, event_id, handled_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(handler)
        .bind(event_id)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?
        .rows_affected(),
    };
    Ok(inserted == 1)
}

/// Forgets every event `handler` handled; returns how many.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) async fn forget(db: &Database, handler: &str) -> Result<u64, Error> {
    let done = match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => sqlx::query("DELETE FROM cqrs_inbox WHERE handler = ?")
            .bind(handler)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected(),
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => sqlx::query("DELETE FROM cqrs_inbox WHERE handler = $1")
            .bind(handler)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected(),
    };
    Ok(done)
}
