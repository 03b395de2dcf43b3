//! Databases: transactions, the outbox, durable idempotency, the event store (DESIGN §7).
//!
//! Without a database (no `sqlite`/`postgres` feature, or none given to the builder), the bus
//! keeps idempotency keys and aggregates' events in memory, and `#[transactional]` handlers are
//! refused by `build()`. With `.sqlite(pool)` or `.postgres(pool)`:
//!
//! - `#[transactional]` handlers run in a transaction of that database, reached through
//!   `cx.tx::<DB>()`;
//! - the events they emit (and the events aggregates save) are written to the outbox
//!   (`cqrs_outbox`) in the same transaction, delivered after commit and marked delivered; a
//!   relay delivers whatever is left at startup and every few seconds (at least once);
//! - idempotency keys live in `cqrs_idempotency`, and a transactional handler's reply is stored in
//!   its own transaction;
//! - aggregates' events live in `cqrs_events`, snapshots in `cqrs_snapshots`.
//!
//! Create the tables with `Bus::migrate` (features `sqlite`, `postgres`).

pub(crate) mod event_store;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;

use std::error::Error as StdError;
use std::sync::Arc;

use crate::bus::{Bus, BusBuilder, BusInner};
use crate::context::CommandContext;
use crate::envelope::Metadata;
use crate::events::EmittedEvent;
use crate::pipeline::idempotency::DynIdempotencyStore;
use crate::pipeline::transaction::TransactionLayer;
use crate::{Error, Status};

use self::event_store::{
    DynEventStore, EventStore, MemoryEventStore, RecordedEvent, Session, Snapshot, Stream,
};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use self::sql::{Database, TxSlot, now_ms};

/// The running transaction of a `#[transactional]` handler (none without a database feature).
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[derive(Default)]
pub(crate) struct TxSlot {
    _none: (),
}

/// Milliseconds since the Unix epoch.
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the builder was given.
#[derive(Default)]
pub(crate) struct PersistenceConfig {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    database: Option<Database>,
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    outbox: sql::outbox::OutboxSettings,
    event_store: Option<Arc<dyn DynEventStore>>,
    /// The same store, when it is a [`MemoryEventStore`].
    memory: Option<Arc<MemoryEventStore>>,
}

impl PersistenceConfig {
    fn set_event_store<S: EventStore>(&mut self, store: S) {
        // `cx.load` and `cx.save` reach the in-memory store directly (typed events, no JSON):
        // recognise it, whether given as is or in an `Arc` (as `AggregateTest` does).
        let any: Box<dyn std::any::Any> = Box::new(store);
        let any = match any.downcast::<MemoryEventStore>() {
            Ok(memory) => Ok(Arc::new(*memory)),
            Err(any) => any.downcast::<Arc<MemoryEventStore>>().map(|m| *m),
        };
        match any {
            Ok(memory) => {
                self.event_store = Some(memory.clone());
                self.memory = Some(memory);
            }
            Err(any) => {
                let Ok(store) = any.downcast::<S>() else {
                    unreachable!("a `Box<dyn Any>` of an `S` downcasts to `S`")
                };
                self.event_store = Some(Arc::new(*store));
                self.memory = None;
            }
        }
    }

    pub(crate) fn has_database(&self) -> bool {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        return self.database.is_some();
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        return false;
    }

    /// The database's idempotency store, when there is a database.
    pub(crate) fn idempotency_store(&self) -> Option<Arc<dyn DynIdempotencyStore>> {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        return self.database.clone().map(|db| {
            Arc::new(sql::idempotency::SqlIdempotencyStore::new(db)) as Arc<dyn DynIdempotencyStore>
        });
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        return None;
    }

    /// The runtime form; `custom_idempotency` says whether the application gave its own store
    /// (then replies cannot be written in the handler's transaction).
    pub(crate) fn into_runtime(self, custom_idempotency: bool) -> Persistence {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        {
            let event_store_in_db = self.event_store.is_none() && self.database.is_some();
            let (event_store, memory) = match (self.event_store, &self.database) {
                (Some(store), _) => (store, self.memory),
                (None, Some(db)) => (
                    Arc::new(sql::events::SqlEventStore::new(db.clone())) as Arc<dyn DynEventStore>,
                    None,
                ),
                (None, None) => {
                    let memory = Arc::new(MemoryEventStore::new());
                    (memory.clone() as Arc<dyn DynEventStore>, Some(memory))
                }
            };
            Persistence {
                memory,
                idempotency_in_tx: !custom_idempotency && self.database.is_some(),
                database: self.database,
                outbox: self.outbox,
                event_store,
                event_store_in_db,
            }
        }
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        {
            let _ = custom_idempotency;
            let (event_store, memory) = match self.event_store {
                Some(store) => (store, self.memory),
                None => {
                    let memory = Arc::new(MemoryEventStore::new());
                    (memory.clone() as Arc<dyn DynEventStore>, Some(memory))
                }
            };
            Persistence {
                event_store,
                memory,
            }
        }
    }
}

/// The databases and stores the bus runs on.
pub(crate) struct Persistence {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) database: Option<Database>,
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) outbox: sql::outbox::OutboxSettings,
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) event_store_in_db: bool,
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) idempotency_in_tx: bool,
    pub(crate) event_store: Arc<dyn DynEventStore>,
    /// `event_store` itself, when it is the in-memory store: `cx.load` and `cx.save` use it
    /// directly.
    pub(crate) memory: Option<Arc<MemoryEventStore>>,
}

impl BusBuilder {
    /// Uses this SQLite pool for transactions, the outbox, idempotency keys and the event store.
    /// See [`sqlite_pool`] for a pool configured the way the bus expects (WAL, busy timeout).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, pool: sqlx::SqlitePool) -> Self {
        self.persistence.database = Some(Database::Sqlite(pool));
        self
    }

    /// Uses this PostgreSQL pool for transactions, the outbox, idempotency keys and the event
    /// store. The tables live in the connection's `search_path` schema.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.persistence.database = Some(Database::Postgres(pool));
        self
    }

    /// Keeps aggregates' events in this store (the database's when there is one, otherwise in
    /// memory).
    pub fn event_store<S: EventStore>(mut self, store: S) -> Self {
        self.persistence.set_event_store(store);
        self
    }

    /// Whether events in the outbox are delivered right after commit, in the dispatch (on by
    /// default). Off, only a relay delivers them (within its interval): this process's, or,
    /// with [`outbox_relay(false)`](Self::outbox_relay), another process's.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn outbox_inline_delivery(mut self, inline: bool) -> Self {
        self.persistence.outbox.inline = inline;
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
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn outbox_relay(mut self, relay: bool) -> Self {
        self.persistence.outbox.relay = relay;
        self
    }

    /// How often the relay looks for pending events (2 s by default).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn outbox_relay_interval(mut self, interval: std::time::Duration) -> Self {
        self.persistence.outbox.interval = interval;
        self
    }

    /// How long a dispatch (or a relay) owns the events it is delivering before another relay
    /// may take them over (30 s by default): the time after which a crashed process's events
    /// are delivered by the others.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn outbox_lease(mut self, lease: std::time::Duration) -> Self {
        self.persistence.outbox.lease = lease;
        self
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl Bus {
    /// Creates or updates the bus's tables (`cqrs_*`) in its database; safe to call from
    /// several processes at once and on every start. Returns how many migrations ran.
    pub async fn migrate(&self) -> Result<usize, Error> {
        let inner = self.inner.get()?;
        let db = database(&inner)?;
        sql::schema::migrate(db).await
    }

    /// Delivers the outbox's pending events now (the relay does it periodically); returns how
    /// many it handled.
    pub async fn relay_outbox(&self) -> Result<usize, Error> {
        let inner = self.inner.get()?;
        let db = database(&inner)?;
        let mut total = 0;
        loop {
            let n = sql::outbox::relay_once(&inner, db, &inner.persistence.outbox).await?;
            total += n;
            if n < inner.persistence.outbox.batch as usize {
                return Ok(total);
            }
        }
    }

    /// Whether the bus was given a database.
    pub fn has_database(&self) -> bool {
        self.inner
            .get()
            .is_ok_and(|inner| inner.persistence.database.is_some())
    }

    /// The number of events in the outbox not delivered yet.
    pub async fn pending_events(&self) -> Result<u64, Error> {
        let inner = self.inner.get()?;
        sql::outbox::pending(database(&inner)?).await
    }
}

/// Creates or updates the bus's tables (`cqrs_*`) in a SQLite database, without a bus (e.g.
/// before building one, or in a deployment step). Returns how many migrations ran.
#[cfg(feature = "sqlite")]
pub async fn migrate_sqlite(pool: &sqlx::SqlitePool) -> Result<usize, Error> {
    sql::schema::migrate(&Database::Sqlite(pool.clone())).await
}

/// Creates or updates the bus's tables (`cqrs_*`) in a PostgreSQL database (in the connection's
/// `search_path` schema), without a bus. Returns how many migrations ran.
#[cfg(feature = "postgres")]
pub async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<usize, Error> {
    sql::schema::migrate(&Database::Postgres(pool.clone())).await
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn database(inner: &BusInner) -> Result<&Database, Error> {
    inner.persistence.database.as_ref().ok_or_else(|| {
        Error::internal(
            "the bus has no database: add `.sqlite(pool)` or `.postgres(pool)` to the builder",
        )
    })
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
        SqliteConnectOptions::from_str(url).map_err(sql::db_error)?
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
    pool.connect_with(options).await.map_err(sql::db_error)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl CommandContext {
    /// The running transaction of this `#[transactional]` handler, on database `DB`
    /// (`sqlx::Sqlite` or `sqlx::Postgres`): write your own SQL in it and it commits, or rolls
    /// back, with everything else the command does: `.execute(&mut **cx.tx::<sqlx::Sqlite>()?)`.
    /// The [guide](crate::guide) has a complete example. Without `#[transactional]`, or with the
    /// other database's type, it is an `Internal` error saying so.
    pub fn tx<DB: sqlx::Database>(&mut self) -> Result<&mut sqlx::Transaction<'static, DB>, Error> {
        use std::any::Any;
        let handler = self.handler;
        let Some(tx) = self.tx.get_mut() else {
            return Err(Error::internal(format!(
                "`cx.tx()` needs a transaction: add `#[transactional]` to `{handler}`"
            )));
        };
        let (any, running): (&mut dyn Any, &str) = match tx {
            #[cfg(feature = "sqlite")]
            sql::Tx::Sqlite(t) => (t, "SQLite"),
            #[cfg(feature = "postgres")]
            sql::Tx::Postgres(t) => (t, "PostgreSQL"),
        };
        any.downcast_mut::<sqlx::Transaction<'static, DB>>()
            .ok_or_else(|| {
                Error::internal(format!(
                    "`{handler}` asked for a `{}` transaction, but the bus runs on {running}",
                    std::any::type_name::<DB>()
                ))
            })
    }
}

/// The running transaction's connection, whichever the database: for handlers (and libraries)
/// that run on both. `cx.tx::<DB>()` gives the typed transaction when the database is known.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyTx<'a> {
    /// A SQLite transaction's connection.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut sqlx::SqliteConnection),
    /// A PostgreSQL transaction's connection.
    #[cfg(feature = "postgres")]
    Postgres(&'a mut sqlx::PgConnection),
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl CommandContext {
    /// The running transaction of this `#[transactional]` handler, whichever the database:
    /// match on it to run the SQL of each (`?` placeholders for SQLite, `$1` for PostgreSQL).
    pub fn any_tx(&mut self) -> Result<AnyTx<'_>, Error> {
        let handler = self.handler;
        match self.tx.get_mut() {
            None => Err(Error::internal(format!(
                "`cx.any_tx()` needs a transaction: add `#[transactional]` to `{handler}`"
            ))),
            #[cfg(feature = "sqlite")]
            Some(sql::Tx::Sqlite(tx)) => Ok(AnyTx::Sqlite(tx)),
            #[cfg(feature = "postgres")]
            Some(sql::Tx::Postgres(tx)) => Ok(AnyTx::Postgres(tx)),
        }
    }
}

/// Begins the transaction of one attempt.
pub(crate) async fn begin(layer: &TransactionLayer, cx: &mut CommandContext) -> Result<(), Error> {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let bus = cx.bus_ptr();
        let db = database(bus.get())?;
        cx.tx = TxSlot::open(db.begin(layer.isolation_level()).await?);
        Ok(())
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    {
        let _ = (layer, cx);
        Err(Error::internal(
            "`#[transactional]` needs the `sqlite` or `postgres` feature",
        ))
    }
}

/// Ends the transaction of one attempt: on success, writes the outbox rows and the idempotent
/// reply (`reply`: the output, serialized), then commits and returns the events to publish; on
/// failure, rolls back (or commits, for statuses not in `rollback_on`).
pub(crate) async fn finish(
    layer: &TransactionLayer,
    cx: &mut CommandContext,
    result: Result<(), Error>,
    reply: impl FnOnce() -> Result<Vec<u8>, Error>,
) -> Result<Vec<EmittedEvent>, Error> {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let Some(mut tx) = cx.tx.take() else {
            return Err(Error::internal(
                "the transaction of a `#[transactional]` handler disappeared",
            ));
        };
        let bus = cx.bus_ptr();
        let persistence = &bus.get().persistence;
        match result {
            Ok(()) => {
                sql::outbox::write(&mut tx, &mut cx.events, &cx.metadata, &persistence.outbox)
                    .await?;
                if let (Some(key), true) = (&cx.idempotency, persistence.idempotency_in_tx) {
                    sql::idempotency::complete_in(&mut tx, key, &reply()?).await?;
                }
                tx.commit().await?;
                Ok(std::mem::take(&mut cx.events))
            }
            Err(error) if layer.rolls_back(error.status()) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(target: "cqrs", handler = cx.handler, error = %rollback, "rollback failed (the database discards the transaction anyway)");
                }
                Err(error)
            }
            Err(error) => {
                if let Err(commit) = tx.commit().await {
                    // The caller gets the commit's failure (what happened to the work), and
                    // the handler's own error with it: neither is lost.
                    tracing::error!(target: "cqrs", handler = cx.handler, error = %format_args!("{commit:#}"), handler_error = %format_args!("{error:#}"), "commit after a non-rollback error failed");
                    return Err(commit.context(format_args!(
                        "committing the work of `{}`, which had returned: {error}",
                        cx.handler
                    )));
                }
                Err(error)
            }
        }
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    {
        let _ = (layer, cx, result, reply);
        Err(Error::internal(
            "`#[transactional]` needs the `sqlite` or `postgres` feature",
        ))
    }
}

/// Appends an aggregate's events: in the handler's transaction when it has one; in a transaction
/// of its own, with their outbox rows, when the store is the database; else through the store.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn append(
    persistence: &Persistence,
    tx: &mut TxSlot,
    parent: &Metadata,
    stream: Stream<'_>,
    expected: u64,
    events: &[RecordedEvent],
    snapshot: Option<&Snapshot>,
    emitted: &mut [EmittedEvent],
) -> Result<(), Error> {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    if let (true, None, Some(db)) = (
        persistence.event_store_in_db,
        tx.get_mut(),
        &persistence.database,
    ) {
        {
            let mut own = TxSlot::open(db.begin(crate::Isolation::ReadCommitted).await?);
            let mut session = Session { tx: Some(&mut own) };
            persistence
                .event_store
                .append_dyn(&mut session, stream, expected, events, snapshot)
                .await?;
            let Some(mut own) = own.take() else {
                return Err(Error::internal("the event store's transaction disappeared"));
            };
            sql::outbox::write(&mut own, emitted, parent, &persistence.outbox).await?;
            return own.commit().await;
        }
    }
    let _ = (parent, &emitted);
    let mut session = Session { tx: Some(tx) };
    persistence
        .event_store
        .append_dyn(&mut session, stream, expected, events, snapshot)
        .await
}

/// Marks outbox rows delivered after an inline delivery (failures are logged: the relay will
/// deliver the rows again).
pub(crate) async fn mark_delivered(bus: &BusInner, ids: &[uuid::Uuid]) {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    if let Some(db) = &bus.persistence.database
        && let Err(error) = sql::outbox::mark_delivered(db, ids).await
    {
        tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "could not mark events delivered; the relay will deliver them again");
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    let _ = (bus, ids);
}

/// Starts the outbox relay, when the bus has a database and a tokio runtime is running.
pub(crate) fn start(bus: &Bus) {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let Ok(inner) = bus.inner.get() else { return };
        if inner.persistence.database.is_none() || !inner.persistence.outbox.relay {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "cqrs::outbox", "no tokio runtime at build(): the outbox relay is not running; call `bus.relay_outbox()` yourself");
            return;
        };
        let weak = match &bus.inner {
            crate::bus::BusRef::Strong(arc) => Arc::downgrade(arc),
            crate::bus::BusRef::Weak(weak) => weak.clone(),
        };
        let interval = inner.persistence.outbox.interval;
        runtime.spawn(async move {
            let mut ticks: u64 = 0;
            let mut schema_ready = false;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if !schema_ready && let Some(db) = &inner.persistence.database {
                    match sql::schema::is_current(db).await {
                        Ok(true) => schema_ready = true,
                        Ok(false) => tracing::debug!(target: "cqrs::outbox", "the relay waits for the tables: call `bus.migrate()`"),
                        Err(error) => tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "the outbox relay cannot reach the database; retrying"),
                    }
                }
                if schema_ready && let Some(db) = &inner.persistence.database {
                    match sql::outbox::relay_once(&inner, db, &inner.persistence.outbox).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(target: "cqrs::outbox", delivered = n, "relay delivered pending events"),
                        Err(error) => tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "outbox relay failed; retrying"),
                    }
                    if ticks.is_multiple_of(300)
                        && let Err(error) = sql::idempotency::purge(db).await
                    {
                        tracing::debug!(target: "cqrs", %error, "could not purge expired idempotency keys");
                    }
                }
                drop(inner);
                ticks += 1;
                tokio::time::sleep(interval).await;
            }
        });
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    let _ = bus;
}

/// The status of a database error, if `e` is one.
pub(crate) fn classify_error(e: &(dyn StdError + 'static)) -> Option<Status> {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    if let Some(e) = e.downcast_ref::<sqlx::Error>() {
        return sql::classify(e);
    }
    let _ = e;
    None
}
