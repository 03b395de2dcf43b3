//! Idempotency keys (DESIGN §4, §5 layer 6): a command sent again with the same key and payload
//! gets the stored reply without running the handler or emitting events again; the same key with
//! another payload is a `Conflict`; a failure is not stored, so the key can be tried again;
//! concurrent sends with one key run the handler once and all get its reply.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{
    Claim, Dispatch, IdempotencyKey, IdempotencyStore, MemoryIdempotencyStore, MessageKind, Next,
};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Receipt {
    number: usize,
    order: u32,
    cents: u64,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = Receipt)]
struct Pay {
    order: u32,
    cents: u64,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = usize)]
struct Refund {
    order: u32,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Paid {
    order: u32,
}

/// The payment provider: counts charges, can be down, can hold a charge until released.
#[derive(Default)]
struct Provider {
    charges: AtomicUsize,
    down: AtomicBool,
    hold: AtomicBool,
    holding: Notify,
    release: Notify,
    /// Wait until this many commands entered the pipeline before answering.
    wait_for: AtomicUsize,
    /// Fail the next charge (after waiting), once.
    fail_next: AtomicBool,
    entered: Arc<AtomicUsize>,
}

#[command_handler(Pay)]
struct PayHandler {
    provider: Arc<Provider>,
}

impl CommandHandler<Pay> for PayHandler {
    async fn handle(&self, cmd: Pay, cx: &mut CommandContext) -> Result<Receipt, Error> {
        let p = &self.provider;
        if p.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the payment provider is down"));
        }
        if p.hold.load(Ordering::SeqCst) {
            p.holding.notify_one();
            p.release.notified().await;
        }
        let wait_for = p.wait_for.load(Ordering::SeqCst);
        for _ in 0..1000 {
            if p.entered.load(Ordering::SeqCst) >= wait_for {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if p.fail_next.swap(false, Ordering::SeqCst) {
            return Err(Error::unavailable("the card network timed out"));
        }
        let number = p.charges.fetch_add(1, Ordering::SeqCst) + 1;
        cx.emit(Paid { order: cmd.order });
        Ok(Receipt {
            number,
            order: cmd.order,
            cents: cmd.cents,
        })
    }
}

#[command_handler(Refund)]
struct RefundHandler {
    provider: Arc<Provider>,
}

impl CommandHandler<Refund> for RefundHandler {
    async fn handle(&self, _cmd: Refund, _cx: &mut CommandContext) -> Result<usize, Error> {
        Ok(self.provider.charges.fetch_sub(1, Ordering::SeqCst) - 1)
    }
}

#[event_handler(Paid)]
struct SendReceipt {
    mails: Arc<Mutex<Vec<u32>>>,
}

impl EventHandler<Paid> for SendReceipt {
    async fn handle(&self, e: &Paid, _cx: &mut EventContext) -> Result<(), Error> {
        self.mails.lock().unwrap().push(e.order);
        Ok(())
    }
}

/// Counts commands entering the pipeline (before the idempotency layer).
struct Entered(Arc<AtomicUsize>);

impl Middleware for Entered {
    fn applies_to(&self, kind: MessageKind) -> bool {
        kind == MessageKind::Command
    }
    async fn handle(&self, _d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run().await
    }
}

struct World {
    bus: Bus,
    provider: Arc<Provider>,
    mails: Arc<Mutex<Vec<u32>>>,
}

fn builder() -> (BusBuilder, Arc<Provider>, Arc<Mutex<Vec<u32>>>) {
    let provider = Arc::new(Provider::default());
    let mails = Arc::new(Mutex::new(Vec::new()));
    let builder = Bus::builder()
        .discover(false)
        .register::<PayHandler>()
        .register::<RefundHandler>()
        .register::<SendReceipt>()
        .provide(provider.clone())
        .provide(mails.clone())
        .middleware(Entered(provider.entered.clone()));
    (builder, provider, mails)
}

fn world() -> World {
    let (builder, provider, mails) = builder();
    World {
        bus: builder.build().unwrap(),
        provider,
        mails,
    }
}

fn pay(order: u32, cents: u64, key: &str) -> Envelope<Pay> {
    Envelope::new(Pay { order, cents }).idempotency_key(key)
}

#[tokio::test]
async fn a_repeat_with_the_same_key_and_payload_gets_the_stored_reply_without_running() {
    let w = world();
    let first = w.bus.send_with_report(pay(1, 500, "pay-1")).await.unwrap();
    let expected = Receipt {
        number: 1,
        order: 1,
        cents: 500,
    };
    assert_eq!(first.output, expected);
    assert!(!first.replayed);
    assert_eq!(first.attempts, 1);
    assert_eq!(first.events, ["Paid"]);

    for _ in 0..3 {
        let again = w.bus.send_with_report(pay(1, 500, "pay-1")).await.unwrap();
        assert_eq!(again.output, expected);
        assert!(again.replayed);
        assert_eq!(again.attempts, 0, "the handler did not run");
        assert!(again.events.is_empty(), "a replay emits nothing");
    }
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
    assert_eq!(
        *w.mails.lock().unwrap(),
        [1],
        "the event was delivered once"
    );
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_a_conflict() {
    let w = world();
    w.bus.send(pay(1, 500, "pay-1")).await.unwrap();
    let err = w.bus.send(pay(1, 900, "pay-1")).await.unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    assert_eq!(
        err.message(),
        "idempotency key `pay-1` was already used for `Pay` with a different payload"
    );
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
    // The original is still replayed.
    assert_eq!(w.bus.send(pay(1, 500, "pay-1")).await.unwrap().number, 1);
}

#[tokio::test]
async fn keys_are_scoped_by_command() {
    let w = world();
    w.bus.send(pay(1, 500, "k")).await.unwrap();
    let refunded = w
        .bus
        .send(Envelope::new(Refund { order: 1 }).idempotency_key("k"))
        .await
        .unwrap();
    assert_eq!(refunded, 0, "Refund ran although Pay used the key");
}

#[tokio::test]
async fn keys_are_scoped_by_caller() {
    let w = world();
    let from = |who: Option<&str>| match who {
        Some(id) => pay(1, 500, "k").principal(Principal::new(id)),
        None => pay(1, 500, "k"),
    };
    // Alice pays; bob sends the same body under the same key: his own payment runs, he does
    // not receive alice's receipt.
    let alice = w.bus.send(from(Some("alice"))).await.unwrap();
    let bob = w.bus.send_with_report(from(Some("bob"))).await.unwrap();
    assert!(!bob.replayed);
    assert_eq!((alice.number, bob.output.number), (1, 2));
    // Anonymous callers share one scope, apart from every principal's.
    let anonymous = w.bus.send(from(None)).await.unwrap();
    assert_eq!(anonymous.number, 3);
    assert_eq!(w.bus.send(from(None)).await.unwrap().number, 3);
    assert_eq!(w.bus.send(from(Some("alice"))).await.unwrap().number, 1);
    assert_eq!(w.bus.send(from(Some("bob"))).await.unwrap().number, 2);
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 3);
    // Another payload under alice's key conflicts for her; carol may still use the key.
    let err = w
        .bus
        .send(pay(1, 900, "k").principal(Principal::new("alice")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    let carol = w
        .bus
        .send(pay(1, 900, "k").principal(Principal::new("carol")))
        .await
        .unwrap();
    assert_eq!(carol.number, 4);
}

#[tokio::test]
async fn without_a_key_every_send_runs() {
    let w = world();
    let a = w.bus.send(Pay { order: 1, cents: 5 }).await.unwrap();
    let b = w.bus.send(Pay { order: 1, cents: 5 }).await.unwrap();
    assert_eq!((a.number, b.number), (1, 2));
    assert_eq!(*w.mails.lock().unwrap(), [1, 1]);
}

#[tokio::test]
async fn a_failure_is_not_stored_so_the_key_can_be_tried_again() {
    let w = world();
    w.provider.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let err = w.bus.send(pay(2, 700, "pay-2")).await.unwrap_err();
        assert_eq!(err.status(), Status::Unavailable);
    }
    w.provider.down.store(false, Ordering::SeqCst);
    let report = w.bus.send_with_report(pay(2, 700, "pay-2")).await.unwrap();
    assert!(!report.replayed, "the handler ran again");
    assert_eq!(report.output.number, 1);
    let again = w.bus.send_with_report(pay(2, 700, "pay-2")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.output, report.output);
    assert_eq!(*w.mails.lock().unwrap(), [2]);
}

#[tokio::test]
async fn a_failed_key_may_be_reused_with_another_payload() {
    let w = world();
    w.provider.down.store(true, Ordering::SeqCst);
    w.bus.send(pay(3, 100, "pay-3")).await.unwrap_err();
    w.provider.down.store(false, Ordering::SeqCst);
    let receipt = w.bus.send(pay(3, 150, "pay-3")).await.unwrap();
    assert_eq!(
        receipt.cents, 150,
        "nothing was stored for the failed payload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sends_with_one_key_run_the_handler_once_and_share_its_reply() {
    let w = world();
    w.provider.wait_for.store(50, Ordering::SeqCst);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let bus = w.bus.clone();
            tokio::spawn(async move { bus.send_with_report(pay(4, 4000, "pay-4")).await })
        })
        .collect();
    let mut executed = 0;
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        assert_eq!(
            report.output,
            Receipt {
                number: 1,
                order: 4,
                cents: 4000
            }
        );
        if !report.replayed {
            executed += 1;
        }
    }
    assert_eq!(executed, 1, "one send ran, the others replayed");
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
    assert_eq!(*w.mails.lock().unwrap(), [4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_running_send_fails_one_waiting_send_runs_and_the_others_replay_it() {
    let w = world();
    w.provider.wait_for.store(20, Ordering::SeqCst);
    w.provider.fail_next.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bus = w.bus.clone();
            tokio::spawn(async move { bus.send_with_report(pay(9, 900, "pay-9")).await })
        })
        .collect();
    let (mut failed, mut executed, mut replayed) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(e) => {
                assert_eq!(e.status(), Status::Unavailable);
                failed += 1;
            }
            Ok(report) => {
                assert_eq!(report.output.number, 1);
                if report.replayed {
                    replayed += 1;
                } else {
                    executed += 1;
                }
            }
        }
    }
    assert_eq!((failed, executed, replayed), (1, 1, 18));
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
    assert_eq!(*w.mails.lock().unwrap(), [9]);
}

#[tokio::test(start_paused = true)]
async fn a_send_waiting_for_a_running_one_gives_up_at_its_own_deadline() {
    let w = world();
    w.provider.hold.store(true, Ordering::SeqCst);
    let bus = w.bus.clone();
    let first = tokio::spawn(async move { bus.send(pay(10, 5, "pay-10")).await });
    w.provider.holding.notified().await;

    let err = w
        .bus
        .send(pay(10, 5, "pay-10").timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Timeout);

    w.provider.hold.store(false, Ordering::SeqCst);
    w.provider.release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().number, 1);
    let report = w.bus.send_with_report(pay(10, 5, "pay-10")).await.unwrap();
    assert!(report.replayed);
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn another_payload_under_a_key_still_running_is_a_conflict_at_once() {
    let w = world();
    w.provider.hold.store(true, Ordering::SeqCst);
    let bus = w.bus.clone();
    let first = tokio::spawn(async move { bus.send(pay(5, 500, "pay-5")).await });
    w.provider.holding.notified().await;

    let err = w.bus.send(pay(5, 999, "pay-5")).await.unwrap_err();
    assert_eq!(err.status(), Status::Conflict);

    w.provider.hold.store(false, Ordering::SeqCst);
    w.provider.release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().cents, 500);
    assert_eq!(w.provider.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stored_reply_expires_after_the_idempotency_ttl() {
    let (builder, provider, _) = builder();
    let bus = builder
        .idempotency_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(bus.send(pay(6, 1, "pay-6")).await.unwrap().number, 1);
    // The in-memory store keeps wall-clock time: wait well past the ttl for real.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = bus.send_with_report(pay(6, 1, "pay-6")).await.unwrap();
    assert!(!report.replayed);
    assert_eq!(report.output.number, 2);
    assert_eq!(provider.charges.load(Ordering::SeqCst), 2);
}

/// A store that records what the bus asks of it, over the in-memory one.
#[derive(Clone, Default)]
struct Recording {
    inner: Arc<MemoryIdempotencyStore>,
    calls: Arc<Mutex<Vec<String>>>,
    keys: Arc<Mutex<Vec<IdempotencyKey>>>,
    replies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl IdempotencyStore for Recording {
    async fn claim(&self, key: &IdempotencyKey) -> Result<Claim, Error> {
        let claim = self.inner.claim(key).await?;
        let what = match &claim {
            Claim::Acquired => "acquired",
            Claim::Completed { .. } => "completed",
            Claim::InProgress { .. } => "in progress",
        };
        self.calls
            .lock()
            .unwrap()
            .push(format!("claim {}: {what}", key.key));
        self.keys.lock().unwrap().push(key.clone());
        Ok(claim)
    }
    async fn complete(&self, key: &IdempotencyKey, reply: &[u8]) -> Result<(), Error> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("complete {}", key.key));
        self.replies
            .lock()
            .unwrap()
            .push(serde_json::from_slice(reply).unwrap());
        self.inner.complete(key, reply).await
    }
    async fn release(&self, key: &IdempotencyKey) -> Result<(), Error> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("release {}", key.key));
        self.inner.release(key).await
    }
}

#[tokio::test]
async fn a_custom_store_is_asked_to_claim_complete_and_release() {
    let store = Recording::default();
    let (builder, provider, _) = builder();
    let bus = builder
        .idempotency_store(store.clone())
        .idempotency_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();

    bus.send(pay(7, 70, "pay-7")).await.unwrap();
    bus.send(pay(7, 70, "pay-7")).await.unwrap();
    provider.down.store(true, Ordering::SeqCst);
    bus.send(pay(8, 80, "pay-8")).await.unwrap_err();

    assert_eq!(
        *store.calls.lock().unwrap(),
        [
            "claim pay-7: acquired",
            "complete pay-7",
            "claim pay-7: completed",
            "claim pay-8: acquired",
            "release pay-8",
        ]
    );
    assert_eq!(
        *store.replies.lock().unwrap(),
        [serde_json::json!({ "number": 1, "order": 7, "cents": 70 })]
    );
    let keys = store.keys.lock().unwrap();
    assert!(keys.iter().all(|k| k.scope == "Pay"));
    assert!(keys.iter().all(|k| k.ttl == Duration::from_secs(3600)));
    assert_eq!(keys[0].fingerprint, keys[1].fingerprint, "same payload");
    assert_ne!(keys[0].fingerprint, keys[2].fingerprint, "another payload");
    assert_eq!(keys[0].fingerprint.len(), 32);
}

/// Its reply is a map with non-string keys, which JSON cannot hold: it can not be stored.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = std::collections::BTreeMap<(u8, u8), u8>)]
struct Tabulate {
    size: u8,
}

#[command_handler(Tabulate)]
struct TabulateHandler {
    provider: Arc<Provider>,
}

impl CommandHandler<Tabulate> for TabulateHandler {
    async fn handle(
        &self,
        cmd: Tabulate,
        _cx: &mut CommandContext,
    ) -> Result<std::collections::BTreeMap<(u8, u8), u8>, Error> {
        self.provider.charges.fetch_add(1, Ordering::SeqCst);
        Ok((1..=cmd.size).map(|i| ((i, i), i * i)).collect())
    }
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_cannot_be_stored_leaves_the_key_free_instead_of_blocking_it() {
    let provider = Arc::new(Provider::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<TabulateHandler>()
        .provide(provider.clone())
        .build()
        .unwrap();
    let send = || {
        bus.send_with_report(
            Envelope::new(Tabulate { size: 2 })
                .idempotency_key("table-1")
                .timeout(Duration::from_secs(5)),
        )
    };
    let first = send().await.unwrap();
    assert_eq!(first.output.get(&(2, 2)), Some(&4));
    let again = send()
        .await
        .expect("a repeat must not wait for a claim that nothing will ever complete");
    assert!(!again.replayed, "there was nothing stored to replay");
    assert_eq!(again.output, first.output);
    assert_eq!(provider.charges.load(Ordering::SeqCst), 2);
}
