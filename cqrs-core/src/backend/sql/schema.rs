//! The tables, created by `bus.migrate()`: versioned migrations shipped with the crate, applied
//! once each (recorded in `cqrs_schema_migrations`), safe to run from several processes at once.
//! Every table is prefixed `cqrs_`. Times are milliseconds since the Unix epoch.

use super::Database;
use super::rows::Migration;
use crate::Error;

/// Every migration, oldest first. Never edit one that has shipped: add the next.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox, idempotency keys, events, snapshots",
        #[cfg(feature = "sqlite")]
        sqlite: r#"
CREATE TABLE cqrs_outbox (
    id              TEXT PRIMARY KEY,
    event_name      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    locked_until_ms INTEGER,
    delivered_at_ms INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX cqrs_outbox_pending ON cqrs_outbox (created_at_ms) WHERE delivered_at_ms IS NULL;

CREATE TABLE cqrs_idempotency (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    reply         BLOB,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE cqrs_events (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        INTEGER NOT NULL,
    event_id       TEXT NOT NULL UNIQUE,
    event_name     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);

CREATE TABLE cqrs_snapshots (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        INTEGER NOT NULL,
    state          TEXT NOT NULL,
    taken_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
"#,
        #[cfg(feature = "postgres")]
        postgres: r#"
CREATE TABLE cqrs_outbox (
    id              UUID PRIMARY KEY,
    event_name      TEXT NOT NULL,
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    locked_until_ms BIGINT,
    delivered_at_ms BIGINT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX cqrs_outbox_pending ON cqrs_outbox (created_at_ms) WHERE delivered_at_ms IS NULL;

CREATE TABLE cqrs_idempotency (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    reply         BYTEA,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE cqrs_events (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        BIGINT NOT NULL,
    event_id       UUID NOT NULL UNIQUE,
    event_name     TEXT NOT NULL,
    payload        JSONB NOT NULL,
    metadata       JSONB NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);

CREATE TABLE cqrs_snapshots (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        BIGINT NOT NULL,
    state          JSONB NOT NULL,
    taken_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
"#,
    },
    Migration {
        version: 2,
        description: "idempotency keys scoped to their caller",
        // A key is now (command, caller, key). Rows written before this migration have no
        // caller and could answer the wrong one: they are dropped, so a request retried across
        // the upgrade runs once more rather than receive another caller's reply.
        #[cfg(feature = "sqlite")]
        sqlite: r#"
DROP TABLE cqrs_idempotency;
CREATE TABLE cqrs_idempotency (
    scope         TEXT NOT NULL,
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    reply         BLOB,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, caller, key)
);
"#,
        #[cfg(feature = "postgres")]
        postgres: r#"
DROP TABLE cqrs_idempotency;
CREATE TABLE cqrs_idempotency (
    scope         TEXT NOT NULL,
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    reply         BYTEA,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, caller, key)
);
"#,
    },
    Migration {
        version: 3,
        description: "outbox order per partition key; inbox of transactional event handlers",
        // `partition_key`: the events of one key (an aggregate, or the key an event declares)
        // leave the outbox in the order they were written (`seq`; SQLite's `rowid`). The inbox
        // records (handler, event id) in a transactional event handler's own transaction.
        #[cfg(feature = "sqlite")]
        sqlite: r#"
ALTER TABLE cqrs_outbox ADD COLUMN partition_key TEXT;
CREATE INDEX cqrs_outbox_partition ON cqrs_outbox (partition_key) WHERE delivered_at_ms IS NULL;
CREATE TABLE cqrs_inbox (
    handler       TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    handled_at_ms INTEGER NOT NULL,
    PRIMARY KEY (handler, event_id)
);
"#,
        #[cfg(feature = "postgres")]
        postgres: r#"
ALTER TABLE cqrs_outbox ADD COLUMN partition_key TEXT, ADD COLUMN seq BIGSERIAL;
CREATE INDEX cqrs_outbox_partition ON cqrs_outbox (partition_key) WHERE delivered_at_ms IS NULL;
CREATE TABLE cqrs_inbox (
    handler       TEXT NOT NULL,
    event_id      UUID NOT NULL,
    handled_at_ms BIGINT NOT NULL,
    PRIMARY KEY (handler, event_id)
);
"#,
    },
    Migration {
        version: 4,
        description: "fencing tokens of `#[exclusive]` locks",
        // PostgreSQL's advisory locks take their fencing token from this sequence
        // (`backend/sql/lock.rs`); SQLite has no lock of its own (Redis's leases count theirs).
        #[cfg(feature = "sqlite")]
        sqlite: "SELECT 1;",
        #[cfg(feature = "postgres")]
        postgres: "CREATE SEQUENCE cqrs_exclusive_fence;",
    },
];

/// Whether every migration has run (the relay waits for it rather than failing on missing
/// tables). An error is returned only when the database cannot be reached: a missing table
/// means "not migrated yet".
pub(crate) async fn is_current(database: &Database) -> Result<bool, Error> {
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    let applied: Result<(Option<i64>,), sqlx::Error> = match database {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => {
            sqlx::query_as("SELECT MAX(version) FROM cqrs_schema_migrations")
                .fetch_one(pool)
                .await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => {
            sqlx::query_as("SELECT MAX(version) FROM cqrs_schema_migrations")
                .fetch_one(pool)
                .await
        }
    };
    match applied {
        Ok((version,)) => Ok(version.unwrap_or(0) >= latest),
        Err(error) if super::classify::classify(&error) == Some(crate::Status::Unavailable) => {
            Err(super::db_error(error))
        }
        Err(_) => Ok(false),
    }
}

/// Applies the migrations that have not run yet; returns how many ran.
pub(crate) async fn migrate(database: &Database) -> Result<usize, Error> {
    let mut applied = 0;
    for migration in MIGRATIONS {
        let ran = match database {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => super::sqlite::apply_migration(pool, migration).await?,
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => super::postgres::apply_migration(pool, migration).await?,
        };
        if ran {
            tracing::info!(target: "cqrs", version = migration.version, description = migration.description, database = database.name(), "applied migration");
            applied += 1;
        }
    }
    Ok(applied)
}
