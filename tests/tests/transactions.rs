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
    assert_eq!(bus.migrate().await.unwrap(), 1);
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

async fn failed_delivery_is_retried_with_the_same_id(db: &TestDb) {
    setup(db).await;
    let deliveries = Deliveries::default();
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<CreateThingHandler>()
        .register::<Flaky>()
        .provide(deliveries.clone())
        .provide(Arc::new(AtomicUsize::new(1)))
        .outbox_relay(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
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
    assert_eq!(ran, 1);
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
