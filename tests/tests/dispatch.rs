//! Dispatch, as a user first meets it: a command or query reaches its one handler and its output
//! comes back exactly; a panicking handler is an `Internal` error and the bus keeps serving; a
//! message nobody handles says which type it is; one bus, cloned, serves many tasks at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;

#[derive(Default)]
struct Ledger {
    balances: Mutex<HashMap<u32, u64>>,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Deposit {
    account: u32,
    cents: u64,
}

/// Answers the new balance.
#[command_handler(Deposit)]
struct DepositHandler {
    ledger: Arc<Ledger>,
}

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, _cx: &mut CommandContext) -> Result<u64, Error> {
        if cmd.cents == 0 {
            panic!("a deposit of nothing on account {}", cmd.account);
        }
        let mut balances = self.ledger.balances.lock().unwrap();
        let balance = balances.entry(cmd.account).or_default();
        *balance += cmd.cents;
        Ok(*balance)
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<u64>)]
struct Balance {
    account: u32,
}

#[query_handler(Balance)]
struct BalanceHandler {
    ledger: Arc<Ledger>,
}

impl QueryHandler<Balance> for BalanceHandler {
    async fn handle(&self, q: Balance, _cx: &QueryContext) -> Result<Option<u64>, Error> {
        if q.account == u32::MAX {
            panic!("no such account number");
        }
        Ok(self
            .ledger
            .balances
            .lock()
            .unwrap()
            .get(&q.account)
            .copied())
    }
}

/// A command nobody registers in these tests' buses.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CloseAccount {
    account: u32,
}

#[command_handler(CloseAccount)]
struct CloseAccountHandler;

impl CommandHandler<CloseAccount> for CloseAccountHandler {
    async fn handle(&self, _cmd: CloseAccount, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

/// A query nobody registers in these tests' buses.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Vec<u32>)]
struct ListAccounts;

#[query_handler(ListAccounts)]
struct ListAccountsHandler;

impl QueryHandler<ListAccounts> for ListAccountsHandler {
    async fn handle(&self, _q: ListAccounts, _cx: &QueryContext) -> Result<Vec<u32>, Error> {
        Ok(vec![])
    }
}

/// A command whose handler fails with each status in turn.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct Fail {
    status: Status,
}

#[command_handler(Fail)]
struct FailHandler {
    #[inject(default)]
    runs: Arc<AtomicUsize>,
}

impl CommandHandler<Fail> for FailHandler {
    async fn handle(&self, cmd: Fail, _cx: &mut CommandContext) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err(Error::new(
            cmd.status,
            format!("told to fail with {}", cmd.status),
        ))
    }
}

/// Parses its text with `?`: a standard error becomes the handler's error.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct ParseAmount {
    text: String,
}

#[command_handler(ParseAmount)]
struct ParseAmountHandler;

impl CommandHandler<ParseAmount> for ParseAmountHandler {
    async fn handle(&self, cmd: ParseAmount, _cx: &mut CommandContext) -> Result<u32, Error> {
        Ok(cmd.text.parse::<u32>()?)
    }
}

fn bank() -> (Bus, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .register::<BalanceHandler>()
        .register::<FailHandler>()
        .provide(ledger.clone())
        .build()
        .unwrap();
    (bus, ledger)
}

#[tokio::test]
async fn a_command_returns_its_handlers_output_and_a_query_reads_the_state_it_left() {
    let (bus, _) = bank();
    assert_eq!(
        bus.send(Deposit {
            account: 1,
            cents: 100
        })
        .await
        .unwrap(),
        100
    );
    assert_eq!(
        bus.send(Deposit {
            account: 1,
            cents: 50
        })
        .await
        .unwrap(),
        150
    );
    assert_eq!(
        bus.send(Deposit {
            account: 2,
            cents: 7
        })
        .await
        .unwrap(),
        7
    );
    assert_eq!(bus.query(Balance { account: 1 }).await.unwrap(), Some(150));
    assert_eq!(bus.query(Balance { account: 2 }).await.unwrap(), Some(7));
    assert_eq!(bus.query(Balance { account: 3 }).await.unwrap(), None);
}

#[tokio::test]
async fn a_bare_message_and_an_envelope_of_it_dispatch_alike() {
    let (bus, _) = bank();
    let env = Envelope::new(Deposit {
        account: 9,
        cents: 5,
    })
    .principal(Principal::new("teller-1"))
    .saga_id("saga-1");
    assert_eq!(bus.send(env).await.unwrap(), 5);
    assert_eq!(
        bus.query(Envelope::new(Balance { account: 9 }))
            .await
            .unwrap(),
        Some(5)
    );
}

#[tokio::test]
async fn the_report_of_a_plain_dispatch_says_one_attempt_no_cache_no_replay_no_events() {
    let (bus, _) = bank();
    let report = bus
        .send_with_report(Deposit {
            account: 1,
            cents: 3,
        })
        .await
        .unwrap();
    assert_eq!(report.output, 3);
    assert_eq!(report.attempts, 1);
    assert!(!report.cache_hit);
    assert!(!report.replayed);
    assert!(report.events.is_empty());

    let report = bus.query_with_report(Balance { account: 1 }).await.unwrap();
    assert_eq!(report.output, Some(3));
    assert_eq!(report.attempts, 1);
    assert!(!report.cache_hit, "the query is not cached at all");
}

#[tokio::test]
async fn a_handler_error_reaches_the_caller_with_its_status_and_message() {
    let (bus, _) = bank();
    for status in [
        Status::NotFound,
        Status::Conflict,
        Status::Unavailable,
        Status::Internal,
        Status::Forbidden,
        Status::Unauthenticated,
        Status::Timeout,
    ] {
        let err = bus.send(Fail { status }).await.unwrap_err();
        assert_eq!(err.status(), status);
        assert_eq!(err.message(), format!("told to fail with {status}"));
    }
}

#[tokio::test]
async fn a_std_error_returned_with_question_mark_is_internal_and_keeps_its_source() {
    let bus = Bus::builder()
        .discover(false)
        .register::<ParseAmountHandler>()
        .build()
        .unwrap();
    assert_eq!(
        bus.send(ParseAmount { text: "42".into() }).await.unwrap(),
        42
    );
    let err = bus
        .send(ParseAmount {
            text: "forty-two".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    let source = err
        .find_source::<std::num::ParseIntError>()
        .expect("the ParseIntError is kept as the source");
    assert_eq!(source.to_string(), "invalid digit found in string");
    assert!(err.message().contains("invalid digit"), "{err}");
}

#[tokio::test]
async fn a_panicking_command_handler_is_an_internal_error_and_the_bus_keeps_serving() {
    let (bus, ledger) = bank();
    let err = bus
        .send(Deposit {
            account: 4,
            cents: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    let message = err.message();
    assert!(message.contains("DepositHandler"), "{message}");
    assert!(message.contains("panicked"), "{message}");
    assert!(
        message.contains("a deposit of nothing on account 4"),
        "{message}"
    );

    // The same handler, on the same bus, still works, and nothing was half-written.
    assert!(ledger.balances.lock().unwrap().get(&4).is_none());
    assert_eq!(
        bus.send(Deposit {
            account: 4,
            cents: 10
        })
        .await
        .unwrap(),
        10
    );
    assert_eq!(bus.query(Balance { account: 4 }).await.unwrap(), Some(10));
}

#[tokio::test]
async fn a_panicking_query_handler_is_an_internal_error_and_the_bus_keeps_serving() {
    let (bus, _) = bank();
    let err = bus.query(Balance { account: u32::MAX }).await.unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert!(err.message().contains("BalanceHandler"), "{err}");
    assert!(err.message().contains("no such account number"), "{err}");

    assert_eq!(bus.query(Balance { account: 1 }).await.unwrap(), None);
    assert_eq!(
        bus.send(Deposit {
            account: 1,
            cents: 1
        })
        .await
        .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_command_without_a_registered_handler_is_no_handler_naming_its_type() {
    let (bus, _) = bank();
    assert!(bus.handles::<Deposit>());
    assert!(!bus.handles::<CloseAccount>());

    let err = bus.send(CloseAccount { account: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::NoHandler);
    let message = err.message();
    assert!(message.contains("`CloseAccount`"), "{message}");
    assert!(message.contains("dispatch::CloseAccount"), "{message}");
    assert!(
        message.contains("#[command_handler(CloseAccount)]"),
        "{message}"
    );
}

#[tokio::test]
async fn a_query_without_a_registered_handler_is_no_handler_naming_its_type() {
    let (bus, _) = bank();
    assert!(bus.handles::<Balance>());
    assert!(!bus.handles::<ListAccounts>());

    let err = bus.query(ListAccounts).await.unwrap_err();
    assert_eq!(err.status(), Status::NoHandler);
    let message = err.message();
    assert!(message.contains("`ListAccounts`"), "{message}");
    assert!(message.contains("dispatch::ListAccounts"), "{message}");
    assert!(
        message.contains("#[query_handler(ListAccounts)]"),
        "{message}"
    );
}

#[tokio::test]
async fn a_discovering_bus_finds_every_handler_in_the_program() {
    let bus = Bus::builder()
        .provide(Arc::new(Ledger::default()))
        .build()
        .unwrap();
    assert!(bus.handles::<Deposit>());
    assert!(bus.handles::<Balance>());
    assert!(bus.handles::<CloseAccount>());
    assert!(bus.handles::<ListAccounts>());
    bus.send(CloseAccount { account: 1 }).await.unwrap();
    assert_eq!(bus.query(ListAccounts).await.unwrap(), Vec::<u32>::new());
}

#[test]
fn the_bus_is_clone_send_sync_and_static() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Bus>();
    shareable::<QueryBus>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bus_cloned_into_many_tasks_serves_them_all_concurrently() {
    let (bus, _) = bank();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let account = i % 10;
            let balance = bus.send(Deposit { account, cents: 1 }).await.unwrap();
            let seen = bus.query(Balance { account }).await.unwrap().unwrap();
            assert!(seen >= balance, "a balance never goes down");
            (account, balance)
        }));
    }
    let mut per_account: HashMap<u32, Vec<u64>> = HashMap::new();
    for t in tasks {
        let (account, balance) = t.await.unwrap();
        per_account.entry(account).or_default().push(balance);
    }
    // Every deposit was applied exactly once: each account saw the balances 1..=20, each once.
    assert_eq!(per_account.len(), 10);
    for (account, mut balances) in per_account {
        balances.sort_unstable();
        assert_eq!(
            balances,
            (1..=20).collect::<Vec<u64>>(),
            "account {account}"
        );
        assert_eq!(bus.query(Balance { account }).await.unwrap(), Some(20));
    }
}

#[tokio::test]
async fn a_clone_is_the_same_bus() {
    let (bus, _) = bank();
    let clone = bus.clone();
    bus.send(Deposit {
        account: 1,
        cents: 2,
    })
    .await
    .unwrap();
    assert_eq!(clone.query(Balance { account: 1 }).await.unwrap(), Some(2));
    drop(bus);
    assert_eq!(
        clone
            .send(Deposit {
                account: 1,
                cents: 2
            })
            .await
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn an_instance_registered_by_hand_handles_its_command() {
    struct Doubling;
    impl CommandHandler<Deposit> for Doubling {
        async fn handle(&self, cmd: Deposit, _cx: &mut CommandContext) -> Result<u64, Error> {
            Ok(cmd.cents * 2)
        }
    }
    struct Fixed(u64);
    impl QueryHandler<Balance> for Fixed {
        async fn handle(&self, _q: Balance, _cx: &QueryContext) -> Result<Option<u64>, Error> {
            Ok(Some(self.0))
        }
    }
    let bus = Bus::builder()
        .discover(false)
        .command_handler::<Deposit, _>(Doubling)
        .query_handler::<Balance, _>(Fixed(77))
        .build()
        .unwrap();
    assert_eq!(
        bus.send(Deposit {
            account: 1,
            cents: 21
        })
        .await
        .unwrap(),
        42
    );
    assert_eq!(bus.query(Balance { account: 1 }).await.unwrap(), Some(77));
}

/// A query answered from the cache: its second ask ends at the cache, before any future is built.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct CachedTotal {
    account: u32,
}

#[query_handler(CachedTotal)]
#[cached_query(ttl = "1m")]
struct CachedTotalHandler;

impl QueryHandler<CachedTotal> for CachedTotalHandler {
    async fn handle(&self, q: CachedTotal, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(u64::from(q.account) * 2)
    }
}

/// The envelope is handed to the pipeline by reference and moved out only by the path that
/// needs it: whichever way a dispatch ends, its metadata (here, the principal it holds) is
/// dropped exactly once, and a dispatch dropped before it is polled drops it too.
#[tokio::test]
async fn an_envelope_is_released_once_however_its_dispatch_ends() {
    let ledger = Arc::new(Ledger::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .register::<BalanceHandler>()
        .register::<CachedTotalHandler>()
        .provide(ledger)
        .build()
        .unwrap();
    let principal = Arc::new(Principal::new("teller-2"));
    let held = || Arc::strong_count(&principal);
    let deposit = |cents| Envelope::new(Deposit { account: 4, cents }).principal(principal.clone());

    assert_eq!(bus.send(deposit(3)).await.unwrap(), 3);
    assert_eq!(held(), 1, "after a command that succeeded");
    let panicked = bus.send(deposit(0)).await.unwrap_err();
    assert_eq!(panicked.status(), Status::Internal);
    assert_eq!(held(), 1, "after a command whose handler panicked");
    let no_handler = bus
        .send(Envelope::new(CloseAccount { account: 4 }).principal(principal.clone()))
        .await
        .unwrap_err();
    assert_eq!(no_handler.status(), Status::NoHandler);
    assert_eq!(held(), 1, "after a command nobody handles");
    let timed = Envelope::new(Balance { account: 4 })
        .principal(principal.clone())
        .timeout(std::time::Duration::from_secs(5));
    assert_eq!(bus.query(timed).await.unwrap(), Some(3));
    assert_eq!(held(), 1, "after a query on the full path (a deadline)");
    for round in ["miss", "hit"] {
        let q = Envelope::new(CachedTotal { account: 4 }).principal(principal.clone());
        assert_eq!(bus.query(q).await.unwrap(), 8);
        assert_eq!(held(), 1, "after a cached query's {round}");
    }
    let never_polled = bus.send(deposit(5));
    assert_eq!(held(), 2);
    drop(never_polled);
    assert_eq!(held(), 1, "after a dispatch dropped before it was polled");
    assert_eq!(
        bus.query(Balance { account: 4 }).await.unwrap(),
        Some(3),
        "the dropped dispatch never ran"
    );
}
