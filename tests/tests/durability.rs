//! Durable idempotency across bus instances, and a database that goes away mid-handler.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::sqlx;
use serde::{Deserialize, Serialize};
use support::{TestDb, insert_thing};
use tokio::sync::Notify;

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = Receipt)]
struct PlaceOrder {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: String,
    run: usize,
}

#[command_handler(PlaceOrder)]
#[transactional]
struct PlaceOrderHandler {
    runs: Arc<AtomicUsize>,
}

impl CommandHandler<PlaceOrder> for PlaceOrderHandler {
    async fn handle(&self, cmd: PlaceOrder, cx: &mut CommandContext) -> Result<Receipt, Error> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let order = format!("{}x{}#{run}", cmd.quantity, cmd.sku);
        insert_thing(cx, &order).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Receipt { order, run })
    }
}

fn bus(db: &TestDb, runs: &Arc<AtomicUsize>) -> Bus {
    db.attach(Bus::builder().discover(false))
        .register::<PlaceOrderHandler>()
        .provide(runs.clone())
        .build()
        .unwrap()
}

fn order(key: &str, quantity: u32) -> Envelope<PlaceOrder> {
    Envelope::new(PlaceOrder {
        sku: "tea".into(),
        quantity,
    })
    .idempotency_key(key)
}

async fn idempotency_survives_the_bus(db: &TestDb) {
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let runs = Arc::new(AtomicUsize::new(0));
    let first = bus(db, &runs);
    first.migrate().await.unwrap();
    let receipt = first.send(order("order-1", 2)).await.unwrap();
    assert_eq!(
        receipt,
        Receipt {
            order: "2xtea#1".into(),
            run: 1
        }
    );
    drop(first);

    // Another process (another pool) on the same database: the stored reply, no second run.
    let other_db = db.reopen().await;
    let second = bus(&other_db, &runs);
    let again = second.send_with_report(order("order-1", 2)).await.unwrap();
    assert_eq!(again.output, receipt);
    assert!(again.replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things").await,
        1,
        "one effect per key"
    );

    // The reply was stored with the effect.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_idempotency WHERE reply IS NOT NULL")
            .await,
        1
    );

    // Same key, other payload: Conflict, and nothing runs.
    let err = second.send(order("order-1", 3)).await.unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Twenty concurrent sends with a new key: one run, twenty identical replies.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let bus = second.clone();
        tasks.push(tokio::spawn(
            async move { bus.send(order("order-2", 1)).await },
        ));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap().unwrap());
    }
    assert!(replies.iter().all(|r| *r == replies[0]), "{replies:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 2);
    drop(second);
    other_db.close().await;
}
on_both!(
    sqlite_idempotency_survives_the_bus,
    postgres_idempotency_survives_the_bus,
    idempotency_survives_the_bus
);

/// A key is scoped to its caller: bob reusing alice's key with alice's body runs his own
/// command, on the database's store, where other processes see the same keys.
async fn idempotency_keys_are_scoped_to_their_caller(db: &TestDb) {
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let runs = Arc::new(AtomicUsize::new(0));
    let bus = bus(db, &runs);
    bus.migrate().await.unwrap();
    let as_caller = |who: Option<&str>, quantity| {
        let envelope = order("shared-key", quantity);
        match who {
            Some(id) => envelope.principal(Principal::new(id)),
            None => envelope,
        }
    };
    let alice = bus.send(as_caller(Some("alice"), 1)).await.unwrap();
    let bob = bus
        .send_with_report(as_caller(Some("bob"), 1))
        .await
        .unwrap();
    assert!(!bob.replayed, "bob got alice's stored reply");
    assert_ne!(bob.output, alice);
    // Anonymous callers share one scope of their own.
    let anonymous = bus.send(as_caller(None, 1)).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // Each caller's repeat gets its own reply back, and another payload is a conflict for
    // that caller only.
    for (who, expected) in [
        (Some("alice"), &alice),
        (Some("bob"), &bob.output),
        (None, &anonymous),
    ] {
        let again = bus.send_with_report(as_caller(who, 1)).await.unwrap();
        assert!(again.replayed);
        assert_eq!(&again.output, expected);
    }
    let err = bus.send(as_caller(Some("alice"), 2)).await.unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    // A principal whose id looks like the anonymous scope's name is still not anonymous.
    let lookalike = bus
        .send_with_report(as_caller(Some("anonymous"), 1))
        .await
        .unwrap();
    assert!(!lookalike.replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_idempotency WHERE key = 'shared-key'")
            .await,
        4
    );
}
on_both!(
    sqlite_idempotency_keys_are_scoped_to_their_caller,
    postgres_idempotency_keys_are_scoped_to_their_caller,
    idempotency_keys_are_scoped_to_their_caller
);

/// Blocks mid-transaction until the test has killed its connection.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct SlowInsert {
    name: String,
    pause: bool,
}

#[derive(Clone, Default)]
struct Gate {
    backend_pid: Arc<AtomicI32>,
    inserted: Arc<Notify>,
    killed: Arc<Notify>,
}

#[command_handler(SlowInsert)]
#[transactional]
struct SlowInsertHandler {
    gate: Gate,
}

impl CommandHandler<SlowInsert> for SlowInsertHandler {
    async fn handle(&self, cmd: SlowInsert, cx: &mut CommandContext) -> Result<(), Error> {
        let tx = cx.tx::<sqlx::Postgres>()?;
        let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&mut **tx)
            .await?;
        self.gate.backend_pid.store(pid, Ordering::SeqCst);
        sqlx::query("INSERT INTO things (name) VALUES ($1)")
            .bind(&cmd.name)
            .execute(&mut **tx)
            .await?;
        if cmd.pause {
            self.gate.inserted.notify_one();
            self.gate.killed.notified().await;
        }
        sqlx::query("INSERT INTO things (name) VALUES ($1)")
            .bind(format!("{}-second", cmd.name))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_connection_killed_mid_handler() {
    let db = TestDb::postgres().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let gate = Gate::default();
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<SlowInsertHandler>()
        .provide(gate.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let sending = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.send(SlowInsert {
                name: "a".into(),
                pause: true,
            })
            .await
        })
    };
    gate.inserted.notified().await;
    let TestDb::Postgres { admin, .. } = &db else {
        unreachable!()
    };
    let pid = gate.backend_pid.load(Ordering::SeqCst);
    let (killed,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed);
    gate.killed.notify_one();

    let err = sending.await.unwrap().unwrap_err();
    assert_eq!(err.status(), Status::Unavailable, "{err}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things").await,
        0,
        "nothing partial was committed"
    );

    // The database is back (the pool replaces the dead connection): the bus serves again.
    bus.send(SlowInsert {
        name: "b".into(),
        pause: false,
    })
    .await
    .unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 2);
    drop(bus);
    db.cleanup().await;
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct Insert {
    name: String,
}

#[command_handler(Insert)]
#[transactional]
struct InsertHandler;

impl CommandHandler<Insert> for InsertHandler {
    async fn handle(&self, cmd: Insert, cx: &mut CommandContext) -> Result<(), Error> {
        insert_thing(cx, &cmd.name).await
    }
}

#[tokio::test]
async fn sqlite_pool_closed_is_unavailable() {
    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<InsertHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(Insert { name: "a".into() }).await.unwrap();
    let TestDb::Sqlite { pool, .. } = &db else {
        unreachable!()
    };
    pool.close().await;
    let err = bus.send(Insert { name: "b".into() }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable, "{err}");
    let reopened = db.reopen().await;
    assert_eq!(reopened.count("SELECT COUNT(*) FROM things").await, 1);
    reopened.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_unique_violation_is_a_conflict() {
    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<InsertHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(Insert { name: "dup".into() }).await.unwrap();
    let err = bus.send(Insert { name: "dup".into() }).await.unwrap_err();
    assert_eq!(err.status(), Status::Conflict, "{err}");
    assert!(
        err.find_source::<sqlx::Error>().is_some(),
        "the database error is kept as the source"
    );
    db.cleanup().await;
}

/// SQLite's form of "the database is unavailable": another process holds the write lock longer
/// than the busy timeout. The caller gets `Unavailable`, nothing is written, and once the lock
/// is released the same bus serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_database_is_unavailable_then_serves_again() {
    use cqrs_core::sqlx::Connection;
    use cqrs_core::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};

    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let TestDb::Sqlite { path, .. } = &db else {
        unreachable!()
    };
    // The bus's pool gives up on a busy database quickly (the default waits 5 s).
    let impatient = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .busy_timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let bus = Bus::builder()
        .discover(false)
        .sqlite(impatient.clone())
        .register::<InsertHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let mut other = SqliteConnection::connect(path.to_str().unwrap())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let err = bus.send(Insert { name: "a".into() }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable, "{err}");

    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 0);
    bus.send(Insert { name: "b".into() }).await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 1);
    drop(bus);
    impatient.close().await;
    db.cleanup().await;
}

/// Inserts a row, then a blob: the second write needs new pages.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct InsertWithBlob {
    name: String,
    blob_bytes: u32,
}

#[command_handler(InsertWithBlob)]
#[transactional]
struct InsertWithBlobHandler;

impl CommandHandler<InsertWithBlob> for InsertWithBlobHandler {
    async fn handle(&self, cmd: InsertWithBlob, cx: &mut CommandContext) -> Result<(), Error> {
        insert_thing(cx, &cmd.name).await?;
        let tx = cx.tx::<sqlx::Sqlite>()?;
        sqlx::query("INSERT INTO blobs (data) VALUES (randomblob(?))")
            .bind(cmd.blob_bytes)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// SQLite's form of "the database goes away mid-handler": the disk fills up between two writes
/// of one transaction. A full disk is simulated with `PRAGMA max_page_count`, set on each
/// connection as the pool hands it out: past it SQLite fails exactly as on a full disk
/// (`SQLITE_FULL`). The caller gets `Unavailable`, the first write is rolled back with the rest,
/// and once there is room again the same bus serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_mid_handler_is_unavailable_then_serves_again() {
    use cqrs_core::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    db.execute("CREATE TABLE blobs (data BLOB NOT NULL)").await;
    let TestDb::Sqlite { path, .. } = &db else {
        unreachable!()
    };
    // Pages the database may grow to; 1: as large as it is now (SQLite never sets it lower).
    let room = Arc::new(AtomicI32::new(1_000_000));
    let pool = {
        let room = room.clone();
        SqlitePoolOptions::new()
            .max_connections(2)
            .before_acquire(move |conn, _| {
                let pages = room.load(Ordering::SeqCst);
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "PRAGMA max_page_count = {pages}"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(true)
                })
            })
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .unwrap()
    };
    let bus = Bus::builder()
        .discover(false)
        .sqlite(pool.clone())
        .register::<InsertWithBlobHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(InsertWithBlob {
        name: "before".into(),
        blob_bytes: 16,
    })
    .await
    .unwrap();

    // The disk is full: the row still fits in a page the table has, the blob does not.
    room.store(1, Ordering::SeqCst);
    let err = bus
        .send(InsertWithBlob {
            name: "during".into(),
            blob_bytes: 256 * 1024,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Unavailable, "{err}");
    assert!(
        err.find_source::<sqlx::Error>().is_some() && err.to_string().contains("full"),
        "SQLite's \"database or disk is full\" is kept as the source: {err}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things WHERE name = 'during'")
            .await,
        0,
        "the first write was rolled back with the second"
    );

    // Room again: the same bus serves.
    room.store(1_000_000, Ordering::SeqCst);
    bus.send(InsertWithBlob {
        name: "after".into(),
        blob_bytes: 256 * 1024,
    })
    .await
    .unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM things").await, 2);
    drop(bus);
    pool.close().await;
    db.cleanup().await;
}

/// Runs SQL that PostgreSQL refuses with a numeric SQLSTATE, and counts its runs.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct BadBytes;

#[command_handler(BadBytes)]
#[transactional]
#[retry(max_attempts = 3, delay = "1ms")]
struct BadBytesHandler {
    runs: Arc<AtomicUsize>,
}

impl CommandHandler<BadBytes> for BadBytesHandler {
    async fn handle(&self, _: BadBytes, cx: &mut CommandContext) -> Result<(), Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let tx = cx.tx::<sqlx::Postgres>()?;
        // SQLSTATE 22021 (character_not_in_repertoire).
        sqlx::query("SELECT convert_from('\\xff'::bytea, 'UTF8')")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_numeric_sqlstate_is_not_read_as_a_sqlite_code() {
    // 22021's low byte is 5, SQLite's BUSY: read as a SQLite code, this refusal became
    // `Unavailable`, and `#[retry]` ran it again.
    let db = TestDb::postgres().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<BadBytesHandler>()
        .provide(runs.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let err = bus.send(BadBytes).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal, "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "an internal error is not retried"
    );
    drop(bus);
    db.cleanup().await;
}

/// Leaves a row that breaks a deferred foreign key, then fails with a status that commits.
#[derive(Command, Debug, Clone, Serialize, Deserialize)]
struct OrphanThenNotFound;

#[command_handler(OrphanThenNotFound)]
#[transactional(rollback_on = [Conflict])]
struct OrphanThenNotFoundHandler;

impl CommandHandler<OrphanThenNotFound> for OrphanThenNotFoundHandler {
    async fn handle(&self, _: OrphanThenNotFound, cx: &mut CommandContext) -> Result<(), Error> {
        let tx = cx.tx::<sqlx::Sqlite>()?;
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO children (parent) VALUES (42)")
            .execute(&mut **tx)
            .await?;
        Err(Error::not_found("parent 42 is not there"))
    }
}

#[tokio::test]
async fn sqlite_failed_commit_after_a_kept_error_reports_both() {
    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
        .await;
    db.execute("CREATE TABLE children (parent INTEGER NOT NULL REFERENCES parents(id))")
        .await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<OrphanThenNotFoundHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    // NotFound is not in `rollback_on`, so the layer commits; the commit fails on the deferred
    // foreign key. The caller learns both: the commit failed, and what the handler returned.
    let err = bus.send(OrphanThenNotFound).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("FOREIGN KEY"), "{message}");
    assert!(message.contains("parent 42 is not there"), "{message}");
    assert_ne!(
        err.status(),
        Status::NotFound,
        "the work did not commit: {message}"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM children").await, 0);
    drop(bus);
    db.cleanup().await;
}
