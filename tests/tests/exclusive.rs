//! `#[exclusive(key = field, name = "..")]`: one command per key value at a time, across buses
//! (here two buses on one PostgreSQL schema or one Redis prefix, each with its own pool or
//! connection, as two processes have; `exclusive_processes.rs` runs real processes).
//!
//! Each handler records how many handlers of its lock space are inside at once (`Probe`) and
//! does a read, a pause and a write of a balance: with two at once the maximum would be 2 and an
//! update would be lost.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::sqlx;
use support::{OwnRedis, TestDb, TestRedis};

/// How many handlers are inside at once, the most seen, and the fencing tokens in the order
/// their handlers entered.
#[derive(Default)]
struct Probe {
    inside: AtomicUsize,
    most: AtomicUsize,
    tokens: Mutex<Vec<u64>>,
    balance: Mutex<HashMap<u64, i64>>,
}

impl Probe {
    fn enter(&self, cx: &CommandContext) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if let Some(token) = cx.fencing_token() {
            self.tokens.lock().unwrap().push(token);
        }
    }

    fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }

    /// Adds `amount` by a read, a pause and a write: two at once would lose one.
    async fn add(&self, account: u64, amount: i64) -> i64 {
        let read = *self.balance.lock().unwrap().entry(account).or_default();
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.balance.lock().unwrap().insert(account, read + amount);
        read + amount
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = i64)]
struct Deposit {
    account: u64,
    amount: i64,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = i64)]
struct Withdraw {
    account: u64,
    amount: i64,
}

#[command_handler(Deposit)]
#[exclusive(key = account, name = "account")]
struct DepositHandler {
    probe: Arc<Probe>,
}

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, cx: &mut CommandContext) -> Result<i64, Error> {
        self.probe.enter(cx);
        let balance = self.probe.add(cmd.account, cmd.amount).await;
        self.probe.leave();
        Ok(balance)
    }
}

#[command_handler(Withdraw)]
#[exclusive(key = account, name = "account")]
struct WithdrawHandler {
    probe: Arc<Probe>,
}

impl CommandHandler<Withdraw> for WithdrawHandler {
    async fn handle(&self, cmd: Withdraw, cx: &mut CommandContext) -> Result<i64, Error> {
        self.probe.enter(cx);
        let balance = self.probe.add(cmd.account, -cmd.amount).await;
        self.probe.leave();
        Ok(balance)
    }
}

/// Adds one to a row in a `REPEATABLE READ` transaction: a lock taken after the snapshot
/// would make the next holder fail to update a row changed since ("could not serialize").
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Credit {
    account: i64,
}

#[command_handler(Credit)]
#[transactional(isolation = "repeatable_read")]
#[exclusive(key = account)]
struct CreditHandler {
    probe: Arc<Probe>,
}

impl CommandHandler<Credit> for CreditHandler {
    async fn handle(&self, cmd: Credit, cx: &mut CommandContext) -> Result<(), Error> {
        self.probe.enter(cx);
        let tx = cx.tx::<sqlx::Postgres>()?;
        let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = $1")
            .bind(cmd.account)
            .fetch_one(&mut **tx)
            .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
            .bind(balance + 1)
            .bind(cmd.account)
            .execute(&mut **tx)
            .await?;
        self.probe.leave();
        Ok(())
    }
}

/// Two of these on different keys wait for each other: they finish only if they run at once.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meet {
    account: u64,
}

#[command_handler(Meet, timeout = "5s")]
#[exclusive(key = account, name = "account")]
struct MeetHandler {
    barrier: Arc<tokio::sync::Barrier>,
}

impl CommandHandler<Meet> for MeetHandler {
    async fn handle(&self, _: Meet, _: &mut CommandContext) -> Result<(), Error> {
        self.barrier.wait().await;
        Ok(())
    }
}

/// Fails in the way it is told, holding its lock: an error, a panic, or running past its
/// timeout (its future is then dropped); `"ok"` succeeds.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Flaky {
    key: String,
    how: String,
}

#[command_handler(Flaky, timeout = "2s")]
#[exclusive(key = key)]
struct FlakyHandler;

impl CommandHandler<Flaky> for FlakyHandler {
    async fn handle(&self, cmd: Flaky, _: &mut CommandContext) -> Result<(), Error> {
        flake(&cmd.how).await
    }
}

/// The same in a transaction (PostgreSQL: the transaction owns the lock's connection).
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FlakyInTx {
    key: String,
    how: String,
}

#[command_handler(FlakyInTx, timeout = "2s")]
#[transactional]
#[exclusive(key = key)]
struct FlakyInTxHandler;

impl CommandHandler<FlakyInTx> for FlakyInTxHandler {
    async fn handle(&self, cmd: FlakyInTx, cx: &mut CommandContext) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&mut **cx.tx::<sqlx::Postgres>()?)
            .await?;
        flake(&cmd.how).await
    }
}

async fn flake(how: &str) -> Result<(), Error> {
    match how {
        "error" => Err(Error::conflict("told to fail")),
        "panic" => panic!("told to panic"),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn builder(probe: &Arc<Probe>) -> BusBuilder {
    Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .register::<WithdrawHandler>()
        .register::<MeetHandler>()
        .register::<FlakyHandler>()
        .provide(probe.clone())
        .provide(Arc::new(tokio::sync::Barrier::new(2)))
}

/// 40 deposits and 40 withdrawals on one account, alternately on `a` and `b`: never two at
/// once, no update lost, and the fencing tokens grow in the order the handlers ran.
async fn one_key_at_a_time(a: &Bus, b: &Bus, probe: &Probe) {
    let mut sends = Vec::new();
    for i in 0..80u64 {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        sends.push(tokio::spawn(async move {
            if i % 4 < 2 {
                bus.send(Deposit {
                    account: 1,
                    amount: 10,
                })
                .await
            } else {
                bus.send(Withdraw {
                    account: 1,
                    amount: 3,
                })
                .await
            }
        }));
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
    assert_eq!(
        probe.most.load(Ordering::SeqCst),
        1,
        "two handlers ran at once"
    );
    assert_eq!(probe.balance.lock().unwrap()[&1], 40 * 10 - 40 * 3);
    let tokens = probe.tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 80, "every handler had a fencing token");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens grow with each holder: {tokens:?}"
    );
}

/// Two commands on different keys meet inside their handlers: they ran at the same time.
async fn different_keys_side_by_side(bus: &Bus) {
    let (one, two) = tokio::join!(bus.send(Meet { account: 1 }), bus.send(Meet { account: 2 }));
    one.unwrap();
    two.unwrap();
}

/// Each failure frees the key: the next command on it runs at once (within its timeout).
async fn failures_free_the_key(bus: &Bus, in_tx: bool) {
    for how in ["error", "panic", "hang", "ok"] {
        let key = "k".to_owned();
        let result = if in_tx {
            bus.send(FlakyInTx {
                key,
                how: how.into(),
            })
            .await
        } else {
            bus.send(Flaky {
                key,
                how: how.into(),
            })
            .await
        };
        match how {
            "error" => assert_eq!(result.unwrap_err().status(), Status::Conflict),
            "panic" => assert_eq!(result.unwrap_err().status(), Status::Internal),
            "hang" => assert_eq!(result.unwrap_err().status(), Status::Timeout),
            _ => result.unwrap_or_else(|e| panic!("the key was not freed after failures: {e}")),
        }
    }
}

// ---- PostgreSQL ----------------------------------------------------------------------------

async fn pg_bus(db: &TestDb, probe: &Arc<Probe>) -> Bus {
    let bus = db
        .attach(builder(probe))
        .register::<CreditHandler>()
        .register::<FlakyInTxHandler>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus
}

/// The advisory locks of lock space `space` that some session of the schema holds.
async fn pg_locks_held(db: &TestDb, space: &str) -> i64 {
    db.count(&format!(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
           AND classid = (hashtext(current_schema() || ':' || '{space}'))::oid"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_one_key_runs_one_command_at_a_time_and_named_commands_share_it() {
    let db = TestDb::postgres().await;
    let other = db.reopen().await;
    let probe = Arc::new(Probe::default());
    let (a, b) = (pg_bus(&db, &probe).await, pg_bus(&other, &probe).await);
    one_key_at_a_time(&a, &b, &probe).await;
    assert_eq!(pg_locks_held(&db, "account").await, 0, "no lock left held");
    other.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_takes_the_lock_before_begin_so_repeatable_read_sees_the_last_commit() {
    let db = TestDb::postgres().await;
    let other = db.reopen().await;
    let probe = Arc::new(Probe::default());
    let (a, b) = (pg_bus(&db, &probe).await, pg_bus(&other, &probe).await);
    db.execute("CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); INSERT INTO accounts VALUES (1, 0)").await;
    let mut sends = Vec::new();
    for i in 0..40 {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        sends.push(tokio::spawn(async move {
            bus.send(Credit { account: 1 }).await
        }));
    }
    for send in sends {
        // A lock taken inside the transaction would let a command's snapshot predate the
        // previous holder's commit: its update would fail to serialize.
        send.await.unwrap().unwrap();
    }
    assert_eq!(probe.most.load(Ordering::SeqCst), 1);
    assert_eq!(
        db.count("SELECT balance FROM accounts WHERE id = 1").await,
        40
    );
    assert_eq!(pg_locks_held(&db, "Credit").await, 0, "no lock left held");
    other.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_different_keys_run_side_by_side() {
    let db = TestDb::postgres().await;
    let bus = pg_bus(&db, &Arc::new(Probe::default())).await;
    different_keys_side_by_side(&bus).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_an_error_a_panic_or_a_timeout_frees_the_lock_and_its_connection() {
    let db = TestDb::postgres().await;
    let bus = pg_bus(&db, &Arc::new(Probe::default())).await;
    failures_free_the_key(&bus, false).await;
    failures_free_the_key(&bus, true).await;
    // What a dropped attempt left is unlocked by a task of its own: soon no session holds it.
    support::eventually("the locks of the dropped attempts freed", async || {
        pg_locks_held(&db, "Flaky").await + pg_locks_held(&db, "FlakyInTx").await == 0
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_without_redis_is_used_even_when_redis_is_configured_too() {
    let db = TestDb::postgres().await;
    let probe = Arc::new(Probe::default());
    // A Redis nobody listens on: were it used, the send would fail with `Unavailable`.
    let nowhere = cqrs_core::redis::Client::open("redis://127.0.0.1:1").unwrap();
    let bus = db.attach(builder(&probe)).redis(nowhere).build().unwrap();
    bus.migrate().await.unwrap();
    bus.send(Deposit {
        account: 9,
        amount: 1,
    })
    .await
    .unwrap();
    db.cleanup().await;
}

// ---- Redis ---------------------------------------------------------------------------------

fn redis_bus(redis: &TestRedis, probe: &Arc<Probe>) -> Bus {
    builder(probe)
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_one_key_runs_one_command_at_a_time_and_named_commands_share_it() {
    let redis = TestRedis::new().await;
    let probe = Arc::new(Probe::default());
    let (a, b) = (redis_bus(&redis, &probe), redis_bus(&redis, &probe));
    one_key_at_a_time(&a, &b, &probe).await;
    let keys = redis.keys().await;
    assert_eq!(
        keys,
        [format!("{}lock-fence", redis.prefix)],
        "every lease deleted"
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_different_keys_run_side_by_side() {
    let redis = TestRedis::new().await;
    different_keys_side_by_side(&redis_bus(&redis, &Arc::new(Probe::default()))).await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_an_error_a_panic_or_a_timeout_frees_the_lease() {
    let redis = TestRedis::new().await;
    let bus = redis_bus(&redis, &Arc::new(Probe::default()));
    failures_free_the_key(&bus, false).await;
    support::eventually("every lease deleted", async || {
        redis.keys().await == [format!("{}lock-fence", redis.prefix)]
    })
    .await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_down_fails_closed_with_unavailable_then_recovers() {
    // The test's own server, so that stopping it disturbs no other test.
    let _ = std::env::var("CQRS_REDIS_URL").expect("this test needs Redis: set CQRS_REDIS_URL");
    let mut server = OwnRedis::start();
    let redis = TestRedis::at(&server.url()).await;
    let probe = Arc::new(Probe::default());
    let bus = redis_bus(&redis, &probe);
    let deposit = || Deposit {
        account: 3,
        amount: 5,
    };
    assert_eq!(bus.send(deposit()).await.unwrap(), 5);

    server.stop();
    let error = bus.send(deposit()).await.unwrap_err();
    assert_eq!(error.status(), Status::Unavailable, "{error:#}");
    let message = format!("{error:#}");
    assert!(
        message.contains("could not take its lock") && message.contains("did not run"),
        "the error says what happened: {message}"
    );
    assert_eq!(
        probe.balance.lock().unwrap()[&3],
        5,
        "the handler did not run"
    );

    server.restart();
    support::eventually("sends work again once Redis is back", async || {
        bus.send(deposit()).await.is_ok()
    })
    .await;
    assert_eq!(probe.balance.lock().unwrap()[&3], 10);
}

/// Writes a row in its transaction, then waits inside its handler until the test lets it go.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    key: String,
}

#[command_handler(Record)]
#[transactional]
#[exclusive(key = key)]
struct RecordHandler {
    gate: Arc<Gate>,
}

/// Where a `Record` handler says it is inside, and waits to be let go.
#[derive(Default)]
struct Gate {
    inside: tokio::sync::Notify,
    go: tokio::sync::Notify,
}

impl CommandHandler<Record> for RecordHandler {
    async fn handle(&self, cmd: Record, cx: &mut CommandContext) -> Result<(), Error> {
        sqlx::query("INSERT INTO recorded (key) VALUES (?)")
            .bind(&cmd.key)
            .execute(&mut **cx.tx::<sqlx::Sqlite>()?)
            .await?;
        self.gate.inside.notify_one();
        self.gate.go.notified().await;
        Ok(())
    }
}

/// A bus on SQLite whose `#[exclusive]` locks are Redis leases (SQLite has none), with the
/// `recorded` table `Record` writes to.
async fn record_bus(redis: &TestRedis, db: &TestDb, gate: &Arc<Gate>) -> Bus {
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<RecordHandler>()
        .provide(gate.clone())
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    db.execute("CREATE TABLE recorded (key TEXT NOT NULL)")
        .await;
    bus
}

/// A `Record` on key `k`, sent from a task of its own (its handler waits for the test).
fn spawn_record(bus: &Bus) -> tokio::task::JoinHandle<Result<(), Error>> {
    let bus = bus.clone();
    tokio::spawn(async move { bus.send(Record { key: "k".into() }).await })
}

/// A lease that runs out while its handler runs (here: the test gives the key to another
/// holder, as the lease's expiry and the next command would) fails the command with
/// `Conflict` before `COMMIT`: its transaction is rolled back, not committed outside the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_a_lease_lost_while_the_handler_ran_rolls_its_transaction_back() {
    let redis = TestRedis::new().await;
    let db = TestDb::sqlite().await;
    let gate = Arc::new(Gate::default());
    let bus = record_bus(&redis, &db, &gate).await;

    let send = spawn_record(&bus);
    gate.inside.notified().await;
    let lease = format!("{}lock:", redis.prefix);
    let keys = redis.keys().await;
    let lease = keys
        .iter()
        .find(|k| k.starts_with(&lease))
        .unwrap_or_else(|| panic!("no lease under {lease}: {keys:?}"));
    let mut connection = redis
        .client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = cqrs_core::redis::cmd("SET")
        .arg(lease)
        .arg("another-holder")
        .arg("PX")
        .arg(300)
        .query_async(&mut connection)
        .await
        .unwrap();
    gate.go.notify_one();

    let error = send.await.unwrap().unwrap_err();
    assert_eq!(error.status(), Status::Conflict, "{error:#}");
    let message = format!("{error:#}");
    assert!(
        message.contains("ran out") && message.contains("rolled back"),
        "the error says what happened: {message}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM recorded").await,
        0,
        "the row written outside the lock was rolled back"
    );

    // Once the other holder's lease has run out, the key is free and the next command commits.
    let next = spawn_record(&bus);
    gate.inside.notified().await;
    gate.go.notify_one();
    next.await.unwrap().unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM recorded").await, 1);
    redis.cleanup().await;
    db.cleanup().await;
}

/// Redis gone when the lease is to be confirmed before `COMMIT`: the lease cannot be vouched
/// for, so the command fails with `Unavailable` and its transaction is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn redis_gone_before_commit_rolls_the_transaction_back_with_unavailable() {
    // The test's own server, so that stopping it disturbs no other test.
    let _ = std::env::var("CQRS_REDIS_URL").expect("this test needs Redis: set CQRS_REDIS_URL");
    let mut server = OwnRedis::start();
    let redis = TestRedis::at(&server.url()).await;
    let db = TestDb::sqlite().await;
    let gate = Arc::new(Gate::default());
    let bus = record_bus(&redis, &db, &gate).await;

    let send = spawn_record(&bus);
    gate.inside.notified().await;
    server.stop();
    gate.go.notify_one();

    let error = send.await.unwrap().unwrap_err();
    assert_eq!(error.status(), Status::Unavailable, "{error:#}");
    let message = format!("{error:#}");
    assert!(
        message.contains("confirming the lease") && message.contains("rolled back"),
        "the error says what happened: {message}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM recorded").await,
        0,
        "nothing was committed without the lock"
    );
    db.cleanup().await;
}

// ---- without a server ----------------------------------------------------------------------

#[test]
fn build_fails_without_postgresql_or_redis_naming_the_handler_and_the_fix() {
    let probe = Arc::new(Probe::default());
    let error = builder(&probe).build().expect_err("build() must fail");
    let message = error.to_string();
    for needed in [
        "DepositHandler",
        "#[exclusive]",
        ".postgres(pool)",
        ".redis(client)",
    ] {
        assert!(message.contains(needed), "`{needed}` not in: {message}");
    }
}

#[tokio::test]
async fn build_fails_with_sqlite_alone() {
    let db = TestDb::sqlite().await;
    let error = db
        .attach(builder(&Arc::new(Probe::default())))
        .build()
        .expect_err("build() must fail: SQLite cannot lock across processes");
    assert!(error.to_string().contains("SQLite alone cannot"), "{error}");
    db.cleanup().await;
}

#[test]
fn describe_shows_the_lock_between_retry_and_the_transaction() {
    #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Transfer {
        from: String,
    }
    #[command_handler(Transfer)]
    #[retry(max_attempts = 3)]
    #[transactional]
    #[exclusive(key = from, name = "account")]
    struct TransferHandler;
    impl CommandHandler<Transfer> for TransferHandler {
        async fn handle(&self, _: Transfer, _: &mut CommandContext) -> Result<(), Error> {
            Ok(())
        }
    }
    let redis = cqrs_core::redis::Client::open("redis://127.0.0.1:1").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::sqlite());
    let bus = db
        .attach(Bus::builder().discover(false).register::<TransferHandler>())
        .redis(redis)
        .build()
        .unwrap();
    let described = bus.describe().to_string();
    let at = |what: &str| {
        described
            .find(what)
            .unwrap_or_else(|| panic!("`{what}` not in:\n{described}"))
    };
    assert!(at("retry(") < at("exclusive(key=from, name=\"account\")"));
    assert!(at("exclusive(") < at("transaction("));
    runtime.block_on(db.cleanup());
}
