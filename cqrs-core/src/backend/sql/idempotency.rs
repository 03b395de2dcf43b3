//! Idempotency keys in the database: shared by every process on it, and, for transactional
//! handlers, completed in the handler's own transaction, so a command's effect and its stored
//! reply commit together (exactly one effect per key).

use super::{Database, Tx, now_ms};
use crate::Error;
use crate::pipeline::idempotency::{Claim, IdempotencyKey, IdempotencyStore};

/// The [`IdempotencyStore`] on the bus's database (table `cqrs_idempotency`). The bus uses it
/// by itself when it has a database.
#[derive(Debug, Clone)]
pub struct SqlIdempotencyStore {
    db: Database,
}

impl SqlIdempotencyStore {
    pub(crate) fn new(db: Database) -> Self {
        SqlIdempotencyStore { db }
    }
}

impl IdempotencyStore for SqlIdempotencyStore {
    async fn claim(&self, key: &IdempotencyKey) -> Result<Claim, Error> {
        // Insert a claim; if the key exists, report it, or take it over once it has expired
        // (its holder crashed or its reply outlived the TTL). Loops only on races.
        for _ in 0..16 {
            let now = now_ms();
            let lease_until = now + key.lease.as_millis() as i64;
            let inserted = match &self.db {
                #[cfg(feature = "sqlite")]
                Database::Sqlite(pool) => {
                    super::sqlite::idempotency_insert(pool, key, lease_until).await?
                }
                #[cfg(feature = "postgres")]
                Database::Postgres(pool) => {
                    super::postgres::idempotency_insert(pool, key, lease_until).await?
                }
            };
            if inserted {
                return Ok(Claim::Acquired);
            }
            let found = match &self.db {
                #[cfg(feature = "sqlite")]
                Database::Sqlite(pool) => super::sqlite::idempotency_select(pool, key).await?,
                #[cfg(feature = "postgres")]
                Database::Postgres(pool) => super::postgres::idempotency_select(pool, key).await?,
            };
            let Some((fingerprint, reply, expires_at_ms)) = found else {
                continue; // released in between: try to insert again
            };
            if expires_at_ms > now {
                return Ok(match reply {
                    Some(reply) => Claim::Completed { fingerprint, reply },
                    None => Claim::InProgress { fingerprint },
                });
            }
            let taken = match &self.db {
                #[cfg(feature = "sqlite")]
                Database::Sqlite(pool) => {
                    super::sqlite::idempotency_take_over(pool, key, expires_at_ms, lease_until)
                        .await?
                }
                #[cfg(feature = "postgres")]
                Database::Postgres(pool) => {
                    super::postgres::idempotency_take_over(pool, key, expires_at_ms, lease_until)
                        .await?
                }
            };
            if taken {
                return Ok(Claim::Acquired);
            }
        }
        Err(Error::unavailable(format!(
            "could not claim idempotency key `{}`: too much contention",
            key.key
        )))
    }

    async fn complete(&self, key: &IdempotencyKey, reply: &[u8]) -> Result<(), Error> {
        let expires = now_ms() + key.ttl.as_millis() as i64;
        match &self.db {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(super::db_error)?;
                super::sqlite::idempotency_complete(&mut conn, key, reply, expires).await
            }
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(super::db_error)?;
                super::postgres::idempotency_complete(&mut conn, key, reply, expires).await
            }
        }
    }

    async fn release(&self, key: &IdempotencyKey) -> Result<(), Error> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => super::sqlite::idempotency_release(pool, key).await,
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => super::postgres::idempotency_release(pool, key).await,
        }
    }
}

/// Stores the reply inside the handler's transaction.
pub(crate) async fn complete_in(
    tx: &mut Tx,
    key: &IdempotencyKey,
    reply: &[u8],
) -> Result<(), Error> {
    let expires = now_ms() + key.ttl.as_millis() as i64;
    match tx {
        #[cfg(feature = "sqlite")]
        Tx::Sqlite(tx) => super::sqlite::idempotency_complete(tx, key, reply, expires).await,
        #[cfg(feature = "postgres")]
        Tx::Postgres(tx) => super::postgres::idempotency_complete(tx, key, reply, expires).await,
    }
}

/// Deletes expired keys.
pub(crate) async fn purge(db: &Database) -> Result<u64, Error> {
    match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => super::sqlite::idempotency_purge(pool, now_ms()).await,
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => super::postgres::idempotency_purge(pool, now_ms()).await,
    }
}
