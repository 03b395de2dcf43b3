//! Adding a SQL database to the bus: the builder's `.sqlite(pool)`, `.postgres(pool)` and
//! outbox settings, turned into the stores the layers use when the bus is built; the bus's
//! `migrate()`, `relay_outbox()` and `pending_events()`; and the same without a bus.

use std::sync::Arc;

#[cfg(feature = "sqlite")]
use super::db_error;
use super::events::SqlEventStore;
use super::idempotency::SqlIdempotencyStore;
use super::outbox::{self, OutboxSettings};
use super::store::SqlStore;
use super::{Database, relay, schema};
use crate::Error;
use crate::bus::backends::Backends;
use crate::bus::{Bus, BusBuilder, Shared};
#[cfg(feature = "postgres")]
use crate::pipeline::cache::backplane::BackplanePriority;
#[cfg(feature = "postgres")]
use crate::pipeline::exclusive::LockPriority;

/// What the builder was told about the database, in any order.
#[derive(Default)]
pub(crate) struct SqlSettings {
    database: Option<Database>,
    outbox: OutboxSettings,
}

fn sql_settings(builder: &mut BusBuilder) -> &mut SqlSettings {
    builder.backends.settings::<SqlSettings>(finish)
}

/// When the bus is built: the database as the transaction layer's store, its idempotency and
/// event stores as the defaults, and the outbox relay to start.
fn finish(backends: &mut Backends) {
    let Some(SqlSettings {
        database: Some(db),
        mut outbox,
    }) = backends.take_settings::<SqlSettings>()
    else {
        return;
    };
    if backends.transport.is_some() {
        // Events leave through the broker: rows are written unclaimed, for the relay (this
        // process's, woken at once, or another's) to send in order.
        outbox.inline = false;
    }
    backends.database_idempotency = Some(Arc::new(SqlIdempotencyStore::new(db.clone())));
    backends.database_events = Some(Arc::new(SqlEventStore::new(db.clone())));
    backends.outbox_inline = outbox.inline;
    // Two instances on one PostgreSQL database keep their caches coherent with nothing else:
    // invalidations go over `LISTEN`/`NOTIFY` unless a broker (Redis, NATS) offers a channel.
    #[cfg(feature = "postgres")]
    #[allow(irrefutable_let_patterns)] // without `sqlite`, every database is PostgreSQL
    if let Database::Postgres(pool) = &db {
        let channel = super::notify::PgInvalidationChannel::new(pool.clone());
        backends.offer_backplane(BackplanePriority::Postgres, Arc::new(channel));
        // `#[exclusive]`: session advisory locks on the transaction's own connection.
        let locks = super::lock::PgLocks::new(pool.clone());
        backends.offer_locks(LockPriority::Postgres, Arc::new(locks));
    }
    let store = SqlStore {
        db,
        outbox,
        wake: Default::default(),
    };
    backends.database = Some(Arc::new(store.clone()));
    if outbox.relay {
        backends
            .on_build
            .push(Box::new(move |bus: &Bus| relay::start(bus, store)));
    }
}

/// The bus's SQL store, or an error saying how to give one.
fn store(inner: &Shared) -> Result<&SqlStore, Error> {
    inner
        .stores
        .database()?
        .as_any()
        .downcast_ref::<SqlStore>()
        .ok_or_else(|| Error::internal("the bus's database is not a SQL database"))
}

impl BusBuilder {
    /// Uses this SQLite pool for transactions, the outbox, idempotency keys and the event store.
    /// See [`sqlite_pool`] for a pool configured the way the bus expects (WAL, busy timeout).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, pool: sqlx::SqlitePool) -> Self {
        sql_settings(&mut self).database = Some(Database::Sqlite(pool));
        self
    }

    /// Uses this PostgreSQL pool for transactions, the outbox, idempotency keys and the event
    /// store. The tables live in the connection's `search_path` schema.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, pool: sqlx::PgPool) -> Self {
        sql_settings(&mut self).database = Some(Database::Postgres(pool));
        self
    }

    /// Whether events in the outbox are delivered right after commit, in the dispatch (on by
    /// default). Off, only a relay delivers them (within its interval): this process's, or,
    /// with [`outbox_relay(false)`](Self::outbox_relay), another process's.
    pub fn outbox_inline_delivery(mut self, inline: bool) -> Self {
        sql_settings(&mut self).outbox.inline = inline;
        self
    }

    /// Whether this bus runs the outbox relay in the background (on by default).
    ///
    /// A bus delivers an outbox event to *its own* event handlers, then marks it delivered for
    /// every process sharing the database. So processes that share a database either register
    /// the same event handlers, or do not deliver at all: a CLI or a one-off job that sends
    /// commands against the service's database turns off both this and inline delivery,
    /// `.outbox_relay(false).outbox_inline_delivery(false)`, and its events (written without a
    /// claim) reach the service's handlers through the service's relay.
    pub fn outbox_relay(mut self, relay: bool) -> Self {
        sql_settings(&mut self).outbox.relay = relay;
        self
    }

    /// How often the relay looks for pending events (2 s by default).
    pub fn outbox_relay_interval(mut self, interval: std::time::Duration) -> Self {
        sql_settings(&mut self).outbox.interval = interval;
        self
    }

    /// How long a dispatch (or a relay) owns the events it is delivering before another relay
    /// may take them over (30 s by default): the time after which a crashed process's events
    /// are delivered by the others.
    pub fn outbox_lease(mut self, lease: std::time::Duration) -> Self {
        sql_settings(&mut self).outbox.lease = lease;
        self
    }
}

impl Bus {
    /// Creates or updates the bus's tables (`cqrs_*`) in its database; safe to call from
    /// several processes at once and on every start. Returns how many migrations ran.
    pub async fn migrate(&self) -> Result<usize, Error> {
        let inner = self.inner.get()?;
        schema::migrate(&store(&inner)?.db).await
    }

    /// Delivers the outbox's pending events now (the relay does it periodically); returns how
    /// many it handled.
    pub async fn relay_outbox(&self) -> Result<usize, Error> {
        let inner = self.inner.get()?;
        let store = store(&inner)?;
        let mut total = 0;
        loop {
            let n = outbox::relay_once(&inner, &store.db, &store.outbox).await?;
            total += n;
            if n < store.outbox.batch as usize {
                return Ok(total);
            }
        }
    }

    /// The number of events in the outbox not delivered yet.
    pub async fn pending_events(&self) -> Result<u64, Error> {
        let inner = self.inner.get()?;
        outbox::pending(&store(&inner)?.db).await
    }
}

/// Creates or updates the bus's tables (`cqrs_*`) in a SQLite database, without a bus (e.g.
/// before building one, or in a deployment step). Returns how many migrations ran.
#[cfg(feature = "sqlite")]
pub async fn migrate_sqlite(pool: &sqlx::SqlitePool) -> Result<usize, Error> {
    schema::migrate(&Database::Sqlite(pool.clone())).await
}

/// Creates or updates the bus's tables (`cqrs_*`) in a PostgreSQL database (in the connection's
/// `search_path` schema), without a bus. Returns how many migrations ran.
#[cfg(feature = "postgres")]
pub async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<usize, Error> {
    schema::migrate(&Database::Postgres(pool.clone())).await
}

/// A SQLite pool configured as the bus expects: the file is created if missing, WAL journal
/// (readers do not block the writer), `synchronous = NORMAL`, foreign keys on, and a busy
/// timeout of 5 s so that writers queue instead of failing with "database is locked".
/// `url` is a path or a `sqlite:` URL; `sqlite::memory:` gives a private in-memory database
/// (one connection, so that every query sees it).
#[cfg(feature = "sqlite")]
pub async fn sqlite_pool(url: &str) -> Result<sqlx::SqlitePool, Error> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use std::str::FromStr;
    use std::time::Duration;

    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let options = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(db_error)?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    let mut options = options
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    if !memory {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
    }
    let pool = SqlitePoolOptions::new();
    let pool = if memory {
        pool.max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        pool.max_connections(8)
    };
    pool.connect_with(options).await.map_err(db_error)
}
