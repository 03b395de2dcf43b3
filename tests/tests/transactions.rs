//! `#[transactional]` and the outbox, on real databases (DESIGN §5 layer 9 and "after", §7).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{BuildProblem, Status};
use serde::{Deserialize, Serialize};
use support::{TestDb, insert_thing};

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = String)]
struct CreateThing {
    name: String,
    fail_after_insert: Option<Status>,
}

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
struct ThingCreated {
    name: String,
}

#[command_handler(CreateThing)]
#[transactional(rollback_on = [Internal, Conflict, Unavailable, Validation])]
struct CreateThingHandler;

impl CommandHandler<CreateThing> for CreateThingHandler {
    async fn handle(&self, cmd: CreateThing, cx: &mut CommandContext) -> Result<String, Error> {
        insert_thing(cx, &cmd.name).await?;
        cx.emit(ThingCreated {
            name: cmd.name.clone(),
        });
        match cmd.fail_after_insert {
            Some(status) => Err(Error::new(status, "refused after the insert")),
            None => Ok(cmd.name),
        }
    }
}

/// Counts deliveries and remembers event ids.
#[derive(Clone, Default)]
struct Deliveries {
    count: Arc<AtomicUsize>,
    ids: Arc<std::sync::Mutex<Vec<uuid::Uuid>>>,
}

#[event_handler(ThingCreated)]
struct Projection {
    deliveries: Deliveries,
}

impl EventHandler<ThingCreated> for Projection {
    async fn handle(&self, _e: &ThingCreated, cx: &mut EventContext) -> Result<(), Error> {
        self.deliveries.count.fetch_add(1, Ordering::SeqCst);
        self.deliveries.ids.lock().unwrap().push(cx.event_id());
        Ok(())
    }
}

#[event_handler(ThingCreated)]
struct SecondProjection {
    #[inject(default)]
    count: Arc<AtomicUsize>,
}

impl EventHandler<ThingCreated> for SecondProjection {
    async fn handle(&self, _e: &ThingCreated, _cx: &mut EventContext) -> Result<(), Error> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn setup(db: &TestDb) {
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
}

fn bus(db: &TestDb, deliveries: &Deliveries) -> Bus {
    db.attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Projection>()
        .provide(deliveries.clone())
        .build()
        .unwrap()
}

fn create(name: &str, fail: Option<Status>) -> CreateThing {
    CreateThing {
        name: name.to_owned(),
        fail_after_insert: fail,
    }
}

async fn rollback_leaves_nothing(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let bus = bus(db, &deliveries);
    assert_eq!(bus.migrate().await.unwrap(), 4, "every migration ran");
    assert_eq!(bus.migrate().await.unwrap(), 0, "migrations are idempotent");

    let err = bus
        .send(create("a", Some(Status::Internal)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things").await,
        0,
        "the insert was rolled back"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_outbox").await,
        0,
        "no event left the transaction"
    );
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 0);
    assert_eq!(bus.relay_outbox().await.unwrap(), 0);
    assert_eq!(
        deliveries.count.load(Ordering::SeqCst),
        0,
        "nothing to relay later either"
    );
}
on_both!(
    rollback_leaves_nothing_sqlite,
    rollback_leaves_nothing_postgres,
    rollback_leaves_nothing
);

async fn commit_delivers_once_per_handler(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let second = Arc::new(AtomicUsize::new(0));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Projection>()
        .register::<SecondProjection>()
        .provide(deliveries.clone())
        .provide(second.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let report = bus.send_with_report(create("b", None)).await.unwrap();
    assert_eq!(report.output, "b");
    assert_eq!(report.events, ["ThingCreated"]);
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 1);
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 1);
    assert_eq!(second.load(Ordering::SeqCst), 1);
    assert_eq!(
        bus.pending_events().await.unwrap(),
        0,
        "delivered events are marked"
    );
    assert_eq!(bus.relay_outbox().await.unwrap(), 0);
    assert_eq!(
        deliveries.count.load(Ordering::SeqCst),
        1,
        "and never delivered again"
    );
    let stored_id = db
        .count("SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NOT NULL")
        .await;
    assert_eq!(stored_id, 1);
}
on_both!(
    commit_delivers_once_sqlite,
    commit_delivers_once_postgres,
    commit_delivers_once_per_handler
);

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = ())]
struct CreateSeveral {
    names: Vec<String>,
}

#[command_handler(CreateSeveral)]
#[transactional]
struct CreateSeveralHandler;

impl CommandHandler<CreateSeveral> for CreateSeveralHandler {
    async fn handle(&self, cmd: CreateSeveral, cx: &mut CommandContext) -> Result<(), Error> {
        for name in cmd.names {
            insert_thing(cx, &name).await?;
            cx.emit(ThingCreated { name });
        }
        Ok(())
    }
}

/// A command's one event and a command's several are marked delivered by different statements
/// (`id = $1` and `id = ANY($1)` on PostgreSQL): both leave nothing for the relay.
async fn several_events_are_all_marked_delivered(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<CreateSeveralHandler>()
        .register::<Projection>()
        .provide(deliveries.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let names = ["x", "y", "z"].map(str::to_owned).to_vec();
    bus.send(CreateSeveral { names }).await.unwrap();
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 3);
    assert_eq!(bus.pending_events().await.unwrap(), 0);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NOT NULL AND locked_until_ms IS NULL")
            .await,
        3,
        "all three marked, their claims cleared"
    );
    assert_eq!(bus.relay_outbox().await.unwrap(), 0);
    assert_eq!(
        deliveries.count.load(Ordering::SeqCst),
        3,
        "none delivered twice"
    );
}
on_both!(
    several_events_sqlite,
    several_events_postgres,
    several_events_are_all_marked_delivered
);

async fn rollback_on_lets_other_errors_commit(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let bus = bus(db, &deliveries);
    bus.migrate().await.unwrap();
    // NotFound is not in `rollback_on`: the insert commits, the caller still gets the error, and
    // the events of a failed handler are not published.
    let err = bus
        .send(create("c", Some(Status::NotFound)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::NotFound);
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 1);
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM cqrs_outbox").await, 0);
}
on_both!(
    rollback_on_sqlite,
    rollback_on_postgres,
    rollback_on_lets_other_errors_commit
);

async fn crash_between_commit_and_delivery(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    // A bus that commits but never delivers: what a process killed right after commit leaves.
    let crashed = db
        .attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Projection>()
        .provide(deliveries.clone())
        .outbox_inline_delivery(false)
        .outbox_relay(false)
        .build()
        .unwrap();
    crashed.migrate().await.unwrap();
    crashed.send(create("d", None)).await.unwrap();
    crashed.send(create("e", None)).await.unwrap();
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 0);
    assert_eq!(crashed.pending_events().await.unwrap(), 2);
    drop(crashed);

    // A new bus on the same database (another pool, as a restarted process has) delivers the
    // pending events at startup, once each.
    let restarted_db = db.reopen().await;
    let restarted = restarted_db
        .attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Projection>()
        .provide(deliveries.clone())
        .outbox_relay_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    for _ in 0..500 {
        if restarted.pending_events().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(restarted.pending_events().await.unwrap(), 0);
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(restarted.relay_outbox().await.unwrap(), 0);
    assert_eq!(
        deliveries.count.load(Ordering::SeqCst),
        2,
        "delivered once each"
    );
    let ids = deliveries.ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    drop(restarted);
    restarted_db.close().await;
}
on_both!(
    crash_sqlite,
    crash_postgres,
    crash_between_commit_and_delivery
);

/// A handler that fails delivery the first time: the event stays pending and the relay
/// delivers it again, with the same event id.
#[event_handler(ThingCreated)]
struct Flaky {
    failures_left: Arc<AtomicUsize>,
    deliveries: Deliveries,
}

impl EventHandler<ThingCreated> for Flaky {
    async fn handle(&self, _e: &ThingCreated, cx: &mut EventContext) -> Result<(), Error> {
        self.deliveries.ids.lock().unwrap().push(cx.event_id());
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::unavailable("mail server down"));
        }
        self.deliveries.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A bus whose only event handler fails its first delivery, with no relay running.
async fn flaky_bus(
    db: &TestDb,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> (Bus, Deliveries) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let builder = db
        .attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Flaky>()
        .provide(deliveries.clone())
        .provide(Arc::new(AtomicUsize::new(1)))
        .outbox_relay(false);
    let bus = configure(builder).build().unwrap();
    bus.migrate().await.unwrap();
    (bus, deliveries)
}

async fn failed_delivery_is_retried_with_the_same_id(db: &TestDb) {
    let (bus, deliveries) = flaky_bus(db, |b| b).await;
    let sent = bus.send(create("f", None)).await.unwrap();
    assert_eq!(sent, "f", "a failed delivery does not fail the command");
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 0);
    assert_eq!(bus.pending_events().await.unwrap(), 1);
    // The failed row is given back with a back-off of about a second.
    db.execute("UPDATE cqrs_outbox SET locked_until_ms = 0")
        .await;
    assert_eq!(bus.relay_outbox().await.unwrap(), 1);
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 1);
    assert_eq!(bus.pending_events().await.unwrap(), 0);
    let ids = deliveries.ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "a redelivery carries the same event id");
}
on_both!(
    retry_delivery_sqlite,
    retry_delivery_postgres,
    failed_delivery_is_retried_with_the_same_id
);

/// After an inline delivery fails, the row is given back for a retry within about a second,
/// not held for the dispatch's whole lease (an hour here): a read model fed by the event
/// catches up in seconds after a transient failure.
async fn failed_inline_delivery_is_retried_soon(db: &TestDb) {
    let (bus, deliveries) = flaky_bus(db, |b| b.outbox_lease(Duration::from_secs(3600))).await;
    bus.send(create("soon", None)).await.unwrap();
    assert_eq!(
        deliveries.count.load(Ordering::SeqCst),
        0,
        "the first delivery failed"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NULL AND locked_until_ms < {}",
            now_ms + 10_000
        ))
        .await,
        1,
        "the failed row is free again within seconds, not after the hour-long lease"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while deliveries.count.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never delivered the event"
        );
        bus.relay_outbox().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bus.pending_events().await.unwrap(), 0);
}
on_both!(
    retry_soon_sqlite,
    retry_soon_postgres,
    failed_inline_delivery_is_retried_soon
);

async fn concurrent_writers_queue(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let bus = bus(db, &deliveries);
    bus.migrate().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                bus.send(create(&format!("{t}-{i}"), None)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 160);
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 160);
}
on_both!(
    writers_queue_sqlite,
    writers_queue_postgres,
    concurrent_writers_queue
);

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct NotTransactional;

#[command_handler(NotTransactional)]
struct NotTransactionalHandler;

impl CommandHandler<NotTransactional> for NotTransactionalHandler {
    async fn handle(&self, _: NotTransactional, cx: &mut CommandContext) -> Result<(), Error> {
        cx.tx::<cqrs_core::sqlx::Sqlite>()?;
        Ok(())
    }
}

#[tokio::test]
async fn tx_without_transactional_is_a_clear_error() {
    let db = TestDb::sqlite().await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<NotTransactionalHandler>()
        .build()
        .unwrap();
    let err = bus.send(NotTransactional).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert_eq!(
        err.message(),
        "`cx.tx()` needs a transaction: add `#[transactional]` to `NotTransactionalHandler`"
    );
    db.cleanup().await;
}

#[test]
fn transactional_without_a_database_is_a_build_error() {
    let err = Bus::builder()
        .discover(false)
        .register::<CreateThingHandler>()
        .build()
        .unwrap_err();
    assert!(matches!(
        err.problems(),
        [BuildProblem::MissingBackend {
            handler: "CreateThingHandler",
            decorator: "#[transactional]",
            ..
        }]
    ));
    assert!(
        err.to_string()
            .contains("add `.sqlite(pool)` or `.postgres(pool)`"),
        "{err}"
    );
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct PortableInsert {
    name: String,
}

/// Runs on either database through `cx.any_tx()`.
#[command_handler(PortableInsert)]
#[transactional]
struct PortableInsertHandler;

impl CommandHandler<PortableInsert> for PortableInsertHandler {
    async fn handle(&self, cmd: PortableInsert, cx: &mut CommandContext) -> Result<(), Error> {
        match cx.any_tx()? {
            cqrs_core::AnyTx::Sqlite(conn) => {
                cqrs_core::sqlx::query("INSERT INTO things (name) VALUES (?)")
                    .bind(&cmd.name)
                    .execute(conn)
                    .await?;
            }
            cqrs_core::AnyTx::Postgres(conn) => {
                cqrs_core::sqlx::query("INSERT INTO things (name) VALUES ($1)")
                    .bind(&cmd.name)
                    .execute(conn)
                    .await?;
            }
            _ => return Err(Error::internal("another database")),
        }
        Ok(())
    }
}

async fn migrate_without_a_bus_then_any_tx(db: &TestDb) {
    setup(db).await;
    let ran = match db {
        TestDb::Sqlite { pool, .. } => cqrs_core::migrate_sqlite(pool).await.unwrap(),
        TestDb::Postgres { pool, .. } => cqrs_core::migrate_postgres(pool).await.unwrap(),
    };
    assert_eq!(ran, 4, "every migration ran");
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<PortableInsertHandler>()
        .build()
        .unwrap();
    assert_eq!(bus.migrate().await.unwrap(), 0, "already migrated");
    bus.send(PortableInsert { name: "x".into() }).await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 1);
}
on_both!(
    sqlite_migrate_then_any_tx,
    postgres_migrate_then_any_tx,
    migrate_without_a_bus_then_any_tx
);

// ---- isolation levels ------------------------------------------------------------------------

/// The isolation level the running transaction really has (PostgreSQL), or `None` on SQLite.
async fn running_isolation(cx: &mut CommandContext) -> Result<Option<String>, Error> {
    match cx.any_tx()? {
        cqrs_core::AnyTx::Postgres(conn) => {
            let (level,): (String,) = cqrs_core::sqlx::query_as("SHOW transaction_isolation")
                .fetch_one(conn)
                .await?;
            Ok(Some(level))
        }
        _ => Ok(None),
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = Option<String>)]
struct IsolationDefault;

#[command_handler(IsolationDefault)]
#[transactional]
struct IsolationDefaultHandler;

impl CommandHandler<IsolationDefault> for IsolationDefaultHandler {
    async fn handle(
        &self,
        _: IsolationDefault,
        cx: &mut CommandContext,
    ) -> Result<Option<String>, Error> {
        running_isolation(cx).await
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = Option<String>)]
struct IsolationRepeatable;

#[command_handler(IsolationRepeatable)]
#[transactional(isolation = "repeatable_read")]
struct IsolationRepeatableHandler;

impl CommandHandler<IsolationRepeatable> for IsolationRepeatableHandler {
    async fn handle(
        &self,
        _: IsolationRepeatable,
        cx: &mut CommandContext,
    ) -> Result<Option<String>, Error> {
        running_isolation(cx).await
    }
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = Option<String>)]
struct IsolationSerializable;

#[command_handler(IsolationSerializable)]
#[transactional(isolation = "serializable")]
struct IsolationSerializableHandler;

impl CommandHandler<IsolationSerializable> for IsolationSerializableHandler {
    async fn handle(
        &self,
        _: IsolationSerializable,
        cx: &mut CommandContext,
    ) -> Result<Option<String>, Error> {
        running_isolation(cx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_runs_each_isolation_level() {
    let db = TestDb::postgres().await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<IsolationDefaultHandler>()
        .register::<IsolationRepeatableHandler>()
        .register::<IsolationSerializableHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    assert_eq!(
        bus.send(IsolationDefault).await.unwrap().as_deref(),
        Some("read committed")
    );
    assert_eq!(
        bus.send(IsolationRepeatable).await.unwrap().as_deref(),
        Some("repeatable read")
    );
    assert_eq!(
        bus.send(IsolationSerializable).await.unwrap().as_deref(),
        Some("serializable")
    );
    drop(bus);
    db.cleanup().await;
}

/// Emits an event, and answers with the `synchronous_commit` its own transaction runs with.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = String)]
struct ReadSynchronousCommit;

#[command_handler(ReadSynchronousCommit)]
#[transactional]
struct ReadSynchronousCommitHandler;

impl CommandHandler<ReadSynchronousCommit> for ReadSynchronousCommitHandler {
    async fn handle(
        &self,
        _: ReadSynchronousCommit,
        cx: &mut CommandContext,
    ) -> Result<String, Error> {
        let cqrs_core::AnyTx::Postgres(conn) = cx.any_tx()? else {
            return Err(Error::internal("this test runs on PostgreSQL"));
        };
        let (setting,): (String,) = cqrs_core::sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(conn)
            .await?;
        cx.emit(ThingCreated {
            name: setting.clone(),
        });
        Ok(setting)
    }
}

/// The outbox commits its "delivered" mark with `synchronous_commit = off`, for that statement's
/// own transaction only: the handlers' transactions, on the same connection afterwards, wait
/// for their WAL flush as always (a pool of one connection makes them share it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_asynchronous_mark_does_not_leak_into_the_next_transaction() {
    let db = TestDb::postgres().await;
    let TestDb::Postgres { options, .. } = &db else {
        unreachable!()
    };
    let one = cqrs_core::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .unwrap();
    let deliveries = Deliveries::default();
    let bus = Bus::builder()
        .discover(false)
        .postgres(one.clone())
        .register::<ReadSynchronousCommitHandler>()
        .register::<Projection>()
        .provide(deliveries.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    for _ in 0..3 {
        assert_eq!(bus.send(ReadSynchronousCommit).await.unwrap(), "on");
    }
    assert_eq!(deliveries.count.load(Ordering::SeqCst), 3);
    assert_eq!(
        bus.pending_events().await.unwrap(),
        0,
        "all marked delivered"
    );
    let (after,): (String,) = cqrs_core::sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(after, "on");
    drop(bus);
    one.close().await;
    db.cleanup().await;
}

/// Holds its transaction open, without writing, until the test lets it go.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct HoldTransaction;

#[derive(Clone, Default)]
struct Hold {
    begun: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

#[command_handler(HoldTransaction)]
#[transactional]
struct HoldTransactionHandler {
    hold: Hold,
}

impl CommandHandler<HoldTransaction> for HoldTransactionHandler {
    async fn handle(&self, _: HoldTransaction, cx: &mut CommandContext) -> Result<(), Error> {
        cx.any_tx()?;
        self.hold.begun.notify_one();
        self.hold.release.notified().await;
        Ok(())
    }
}

/// On SQLite a transactional handler takes the write lock when its transaction begins (`BEGIN
/// IMMEDIATE`), before its first write: another writer cannot start until it ends, and then can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_transaction_takes_the_write_lock_when_it_begins() {
    use cqrs_core::sqlx::Connection;
    use cqrs_core::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    let db = TestDb::sqlite().await;
    let hold = Hold::default();
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<HoldTransactionHandler>()
        .provide(hold.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let sending = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(HoldTransaction).await })
    };
    hold.begun.notified().await;

    // Another writer that does not wait (busy timeout 0).
    let TestDb::Sqlite { path, .. } = &db else {
        unreachable!()
    };
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::ZERO);
    let mut other = SqliteConnection::connect_with(&options).await.unwrap();
    let busy = cqrs_core::sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap_err();
    let busy = Error::from(busy);
    assert_eq!(busy.status(), Status::Unavailable, "{busy}");

    hold.release.notify_one();
    sending.await.unwrap().unwrap();
    cqrs_core::sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    drop(bus);
    db.cleanup().await;
}

/// Write skew under SERIALIZABLE: each reads the total, waits until both have read, then
/// inserts. PostgreSQL lets one commit and fails the other with a serialization failure.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct SkewedInsert {
    name: String,
}

#[command_handler(SkewedInsert)]
#[transactional(isolation = "serializable")]
struct SkewedInsertHandler {
    both_read: Arc<tokio::sync::Barrier>,
}

impl CommandHandler<SkewedInsert> for SkewedInsertHandler {
    async fn handle(&self, cmd: SkewedInsert, cx: &mut CommandContext) -> Result<(), Error> {
        let cqrs_core::AnyTx::Postgres(conn) = cx.any_tx()? else {
            return Err(Error::internal("this test runs on PostgreSQL"));
        };
        let (_count,): (i64,) = cqrs_core::sqlx::query_as("SELECT COUNT(*) FROM things")
            .fetch_one(&mut *conn)
            .await?;
        self.both_read.wait().await;
        cqrs_core::sqlx::query("INSERT INTO things (name) VALUES ($1)")
            .bind(&cmd.name)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// A serialization failure is transient: `Unavailable` (what `#[retry(on = [Unavailable])]`
/// retries, and a 503 with `Retry-After` over HTTP), not a `Conflict` the caller must resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_serialization_failure_is_unavailable() {
    let db = TestDb::postgres().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<SkewedInsertHandler>()
        .provide(Arc::new(tokio::sync::Barrier::new(2)))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let send = |name: &str| {
        let bus = bus.clone();
        let name = name.to_owned();
        tokio::spawn(async move { bus.send(SkewedInsert { name }).await })
    };
    let (a, b) = (send("a"), send("b"));
    let results = [a.await.unwrap(), b.await.unwrap()];
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failures.len(), 1, "{results:?}");
    assert_eq!(failures[0].status(), Status::Unavailable, "{}", failures[0]);
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 1);
    drop(bus);
    db.cleanup().await;
}
