//! The pipeline's fixed order (DESIGN §5), seen from outside: the order the attributes are
//! written in changes nothing, and each layer meets its neighbours the way the table says:
//! timeout around authorize, authorize before validation and before idempotency, idempotency
//! around retry, cache around retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{ResourcePolicy, ResourceRequest};
use validator::Validate;

/// How many times each handler ran.
#[derive(Default)]
struct Runs(Mutex<std::collections::HashMap<&'static str, usize>>);

impl Runs {
    fn bump(&self, who: &'static str) -> usize {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(who).or_default();
        *n += 1;
        *n
    }
    fn of(&self, who: &str) -> usize {
        self.0.lock().unwrap().get(who).copied().unwrap_or(0)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize, Validate)]
#[command(output = String)]
struct Transfer {
    #[validate(range(min = 1))]
    cents: u64,
    /// Fail this many attempts with `Unavailable` first.
    flaky: usize,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize, Validate)]
#[command(output = String)]
struct Withdraw {
    #[validate(range(min = 1))]
    cents: u64,
    flaky: usize,
}

async fn move_money(
    runs: &Runs,
    who: &'static str,
    cents: u64,
    flaky: usize,
) -> Result<String, Error> {
    let n = runs.bump(who);
    if n <= flaky {
        return Err(Error::unavailable(format!(
            "{who} attempt {n}: bank offline"
        )));
    }
    Ok(format!("{who} moved {cents} on run {n}"))
}

/// Handler attribute first, decorators below it.
#[command_handler(Transfer)]
#[authorize(permissions = ["money:move"])]
#[retry(max_attempts = 3, on = [Unavailable])]
#[timeout("3s")]
struct TransferHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<Transfer> for TransferHandler {
    async fn handle(&self, cmd: Transfer, _cx: &mut CommandContext) -> Result<String, Error> {
        move_money(&self.runs, "Transfer", cmd.cents, cmd.flaky).await
    }
}

/// The same decorators, the other way round, around the handler attribute.
#[timeout("3s")]
#[retry(max_attempts = 3, on = [Unavailable])]
#[command_handler(Withdraw)]
#[authorize(permissions = ["money:move"])]
struct WithdrawHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<Withdraw> for WithdrawHandler {
    async fn handle(&self, cmd: Withdraw, _cx: &mut CommandContext) -> Result<String, Error> {
        move_money(&self.runs, "Withdraw", cmd.cents, cmd.flaky).await
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct Statement {
    account: u32,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct History {
    account: u32,
}

#[query_handler(Statement)]
#[cached_query(ttl = "1m", vary_by = [account])]
#[authorize(roles = ["teller"])]
#[retry(max_attempts = 2)]
struct StatementHandler {
    runs: Arc<Runs>,
}

impl QueryHandler<Statement> for StatementHandler {
    async fn handle(&self, q: Statement, _cx: &QueryContext) -> Result<String, Error> {
        let n = self.runs.bump("Statement");
        if n == 1 {
            return Err(Error::conflict("snapshot moved"));
        }
        Ok(format!("statement of {} (run {n})", q.account))
    }
}

#[retry(max_attempts = 2)]
#[authorize(roles = ["teller"])]
#[cached_query(ttl = "1m", vary_by = [account])]
#[query_handler(History)]
struct HistoryHandler {
    runs: Arc<Runs>,
}

impl QueryHandler<History> for HistoryHandler {
    async fn handle(&self, q: History, _cx: &QueryContext) -> Result<String, Error> {
        let n = self.runs.bump("History");
        if n == 1 {
            return Err(Error::conflict("snapshot moved"));
        }
        Ok(format!("statement of {} (run {n})", q.account))
    }
}

fn world() -> (Bus, Arc<Runs>) {
    let runs = Arc::new(Runs::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<TransferHandler>()
        .register::<WithdrawHandler>()
        .register::<StatementHandler>()
        .register::<HistoryHandler>()
        .provide(runs.clone())
        .build()
        .unwrap();
    (bus, runs)
}

fn mover() -> Principal {
    Principal::new("mo").with_permissions(["money:move"])
}

fn teller() -> Principal {
    Principal::new("tess").with_roles(["teller"])
}

#[test]
fn the_order_of_the_attributes_does_not_change_the_pipeline() {
    let (bus, _) = world();
    let d = bus.describe();
    let layers = |name: &str| d.message(name).unwrap().handlers[0].layers.clone();
    assert_eq!(layers("Transfer"), layers("Withdraw"));
    assert_eq!(
        layers("Transfer"),
        [
            "trace",
            "timeout(3s)",
            "authorize(permissions=[money:move])",
            "validate",
            "idempotency",
            "retry(max_attempts=3, delay=10ms, backoff=2, max_delay=1s, jitter=0.5, on=[Unavailable])",
            "handler",
        ]
    );
    assert_eq!(layers("Statement"), layers("History"));
    assert_eq!(
        layers("Statement"),
        [
            "trace",
            "authorize(roles=[teller])",
            "cache(ttl=1m, vary_by=[account], max_entries=10000)",
            "retry(max_attempts=2, delay=10ms, backoff=2, max_delay=1s, jitter=0.5, on=[Unavailable, Conflict])",
            "handler",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_order_of_the_attributes_does_not_change_the_behaviour() {
    let (bus, runs) = world();

    let t = bus.send(Transfer { cents: 0, flaky: 0 }).await.unwrap_err();
    let w = bus.send(Withdraw { cents: 0, flaky: 0 }).await.unwrap_err();
    assert_eq!(
        (t.status(), w.status()),
        (Status::Unauthenticated, Status::Unauthenticated)
    );

    let t = bus
        .send(Envelope::new(Transfer { cents: 0, flaky: 0 }).principal(mover()))
        .await
        .unwrap_err();
    let w = bus
        .send(Envelope::new(Withdraw { cents: 0, flaky: 0 }).principal(mover()))
        .await
        .unwrap_err();
    assert_eq!(t.fields(), w.fields());
    assert_eq!(t.status(), Status::Validation);

    let t = bus
        .send_with_report(Envelope::new(Transfer { cents: 5, flaky: 2 }).principal(mover()))
        .await
        .unwrap();
    let w = bus
        .send_with_report(Envelope::new(Withdraw { cents: 5, flaky: 2 }).principal(mover()))
        .await
        .unwrap();
    assert_eq!((t.attempts, w.attempts), (3, 3));
    assert_eq!(t.output, "Transfer moved 5 on run 3");
    assert_eq!(w.output, "Withdraw moved 5 on run 3");

    for (name, report) in [
        (
            "Statement",
            bus.query_with_report(Envelope::new(Statement { account: 1 }).principal(teller()))
                .await
                .unwrap(),
        ),
        (
            "History",
            bus.query_with_report(Envelope::new(History { account: 1 }).principal(teller()))
                .await
                .unwrap(),
        ),
    ] {
        assert_eq!(report.output, "statement of 1 (run 2)", "{name}");
        assert_eq!(report.attempts, 2, "{name}");
        assert!(!report.cache_hit, "{name}");
    }
    assert_eq!((runs.of("Statement"), runs.of("History")), (2, 2));
}

#[tokio::test]
async fn authorization_comes_before_validation() {
    let (bus, runs) = world();
    let invalid = || Transfer { cents: 0, flaky: 0 };

    let err = bus.send(invalid()).await.unwrap_err();
    assert_eq!(
        err.status(),
        Status::Unauthenticated,
        "an anonymous caller learns nothing of the message's validity"
    );
    let err = bus
        .send(Envelope::new(invalid()).principal(Principal::new("guest")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    let err = bus
        .send(Envelope::new(invalid()).principal(mover()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Validation);
    assert_eq!(runs.of("Transfer"), 0);
}

#[tokio::test]
async fn authorization_comes_before_idempotency() {
    let (bus, runs) = world();
    let send = |who: Principal| {
        bus.send_with_report(
            Envelope::new(Transfer {
                cents: 10,
                flaky: 0,
            })
            .principal(who)
            .idempotency_key("t-1"),
        )
    };

    // A refused caller does not claim the key...
    let err = send(Principal::new("guest")).await.unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    let first = send(mover()).await.unwrap();
    assert!(!first.replayed, "the refused send left the key free");

    // ...and does not get the stored reply either.
    let err = send(Principal::new("guest")).await.unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    let again = send(mover()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.output, first.output);
    assert_eq!(runs.of("Transfer"), 1);
}

#[tokio::test(start_paused = true)]
async fn idempotency_is_outside_retry_so_only_the_final_reply_is_stored() {
    let (bus, runs) = world();
    let send = || {
        bus.send_with_report(
            Envelope::new(Transfer {
                cents: 20,
                flaky: 2,
            })
            .principal(mover())
            .idempotency_key("t-2"),
        )
    };
    let first = send().await.unwrap();
    assert_eq!(first.attempts, 3);
    assert_eq!(first.output, "Transfer moved 20 on run 3");
    let again = send().await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.output, first.output);
    assert_eq!(runs.of("Transfer"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_retried_query_fills_the_cache_once_and_a_hit_runs_no_attempt() {
    let (bus, runs) = world();
    let ask = || bus.query_with_report(Envelope::new(Statement { account: 9 }).principal(teller()));
    let miss = ask().await.unwrap();
    assert_eq!((miss.attempts, miss.cache_hit), (2, false));
    let hit = ask().await.unwrap();
    assert_eq!((hit.attempts, hit.cache_hit), (0, true));
    assert_eq!(hit.output, miss.output);
    assert_eq!(runs.of("Statement"), 2);
}

/// A resource policy that takes its time.
struct SlowPolicy;

impl ResourcePolicy for SlowPolicy {
    async fn allows(&self, _r: &ResourceRequest<'_>) -> Result<bool, Error> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(true)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Close {
    account: u32,
}

#[command_handler(Close, timeout = "1s")]
#[authorize(resource = account)]
struct CloseHandler {
    closed: Arc<AtomicUsize>,
}

impl CommandHandler<Close> for CloseHandler {
    async fn handle(&self, _cmd: Close, _cx: &mut CommandContext) -> Result<(), Error> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeout_covers_authorization() {
    let closed = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<CloseHandler>()
        .provide(closed.clone())
        .resource_policy(SlowPolicy)
        .build()
        .unwrap();
    let err = bus
        .send(Envelope::new(Close { account: 1 }).principal(Principal::new("owner")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Timeout);
    assert_eq!(closed.load(Ordering::SeqCst), 0);
}
