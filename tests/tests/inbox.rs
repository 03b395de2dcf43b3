//! `#[transactional]` event handlers: the handler's writes commit together with the record that
//! it handled the event (`cqrs_inbox`), so an event delivered again (the outbox's delivery is
//! at least once: here its "delivered" mark is lost, as in a crash right after delivery) does
//! not run the handler a second time. A handler without `#[transactional]` runs again.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{AnyTx, sqlx};
use support::TestDb;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Deposit {
    cents: i64,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[event(name = "inbox.deposited")]
struct Deposited {
    cents: i64,
}

#[command_handler(Deposit)]
#[transactional]
struct DepositHandler;

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, cx: &mut CommandContext) -> Result<(), Error> {
        cx.emit(Deposited { cents: cmd.cents });
        Ok(())
    }
}

/// Adds each deposit to a balance, in its transaction.
#[event_handler(Deposited)]
#[transactional]
struct Balance;

impl EventHandler<Deposited> for Balance {
    async fn handle(&self, event: &Deposited, cx: &mut EventContext) -> Result<(), Error> {
        match cx.any_tx()? {
            AnyTx::Sqlite(c) => {
                sqlx::query("UPDATE balance SET cents = cents + ?")
                    .bind(event.cents)
                    .execute(c)
                    .await?;
            }
            AnyTx::Postgres(c) => {
                sqlx::query("UPDATE balance SET cents = cents + $1")
                    .bind(event.cents)
                    .execute(c)
                    .await?;
            }
            _ => unreachable!(),
        }
        Ok(())
    }
}

/// Counts deliveries, with no transaction.
#[event_handler(Deposited)]
struct Counter {
    seen: Arc<AtomicU32>,
}

impl EventHandler<Deposited> for Counter {
    async fn handle(&self, _: &Deposited, _: &mut EventContext) -> Result<(), Error> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn a_redelivered_event_runs_a_transactional_handler_once(db: TestDb) {
    db.execute("CREATE TABLE balance (cents BIGINT NOT NULL)")
        .await;
    db.execute("INSERT INTO balance (cents) VALUES (0)").await;
    let seen = Arc::new(AtomicU32::new(0));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<DepositHandler>()
        .register::<Balance>()
        .register::<Counter>()
        .provide(seen.clone())
        .outbox_relay(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    bus.send(Deposit { cents: 250 }).await.unwrap();
    assert_eq!(db.count("SELECT cents FROM balance").await, 250);
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // The "delivered" mark is lost: the relay delivers the event again.
    db.execute("UPDATE cqrs_outbox SET delivered_at_ms = NULL, locked_until_ms = NULL")
        .await;
    assert_eq!(bus.relay_outbox().await.unwrap(), 1);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the plain handler ran again"
    );
    assert_eq!(
        db.count("SELECT cents FROM balance").await,
        250,
        "the transactional handler did not"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_inbox WHERE handler = 'Balance'")
            .await,
        1
    );
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_a_redelivered_event_runs_a_transactional_handler_once() {
    a_redelivered_event_runs_a_transactional_handler_once(TestDb::sqlite().await).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_a_redelivered_event_runs_a_transactional_handler_once() {
    a_redelivered_event_runs_a_transactional_handler_once(TestDb::postgres().await).await;
}

/// A failed transactional handler leaves no inbox record: the next delivery runs it.
#[event_handler(Deposited)]
#[transactional]
struct Flaky {
    seen: Arc<AtomicU32>,
}

impl EventHandler<Deposited> for Flaky {
    async fn handle(&self, _: &Deposited, _: &mut EventContext) -> Result<(), Error> {
        if self.seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Error::unavailable("first try fails"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_transactional_handler_runs_again_on_the_next_delivery() {
    let db = TestDb::sqlite().await;
    let seen = Arc::new(AtomicU32::new(0));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<DepositHandler>()
        .register::<Flaky>()
        .provide(seen.clone())
        .outbox_relay(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(Deposit { cents: 1 }).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM cqrs_inbox").await, 0);
    db.execute("UPDATE cqrs_outbox SET locked_until_ms = NULL")
        .await;
    bus.relay_outbox().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM cqrs_inbox").await, 1);
    db.cleanup().await;
}

/// With `#[retry]`, each attempt of a transactional event handler runs in a transaction of its
/// own: the failed attempt's write and inbox record roll back, the next attempt's commit.
#[event_handler(Deposited)]
#[transactional]
#[retry(max_attempts = 3, delay = "1ms")]
struct WritesThenFailsOnce {
    attempts: Arc<AtomicU32>,
}

impl EventHandler<Deposited> for WritesThenFailsOnce {
    async fn handle(&self, event: &Deposited, cx: &mut EventContext) -> Result<(), Error> {
        let AnyTx::Sqlite(c) = cx.any_tx()? else {
            unreachable!("the test runs on SQLite")
        };
        sqlx::query("UPDATE balance SET cents = cents + ?")
            .bind(event.cents)
            .execute(c)
            .await?;
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Error::unavailable("the first attempt fails after writing"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn each_retried_attempt_of_a_transactional_event_handler_has_its_own_transaction() {
    let db = TestDb::sqlite().await;
    db.execute("CREATE TABLE balance (cents BIGINT NOT NULL)")
        .await;
    db.execute("INSERT INTO balance (cents) VALUES (0)").await;
    let attempts = Arc::new(AtomicU32::new(0));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<DepositHandler>()
        .register::<WritesThenFailsOnce>()
        .provide(attempts.clone())
        .outbox_relay(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.send(Deposit { cents: 5 }).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // The first attempt's +5 rolled back with its inbox record; the second's committed.
    assert_eq!(db.count("SELECT cents FROM balance").await, 5);
    assert_eq!(db.count("SELECT COUNT(*) FROM cqrs_inbox").await, 1);
    // Delivered again: the inbox says it was handled, so the handler does not run.
    db.execute("UPDATE cqrs_outbox SET locked_until_ms = NULL, delivered_at_ms = NULL")
        .await;
    bus.relay_outbox().await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(db.count("SELECT cents FROM balance").await, 5);
    db.cleanup().await;
}
