//! `RedisIdempotencyStore`: a key shared by processes (two buses on one Redis, no database) runs
//! its command once; a claim's lease frees the key of a holder that died; Redis down makes keyed
//! sends fail closed with `Unavailable`, and they work again once it is back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{Claim, IdempotencyKey, IdempotencyStore, RedisIdempotencyStore};
use support::{OwnRedis, TestRedis};

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct Deposit {
    account: u32,
    amount: u64,
}

/// Answers something new each run (a fresh id), so that a repeat that ran again would show.
#[command_handler(Deposit)]
struct DepositHandler {
    runs: Arc<AtomicUsize>,
}

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, _: &mut CommandContext) -> Result<String, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(format!(
            "{} +{} #{}",
            cmd.account,
            cmd.amount,
            uuid::Uuid::now_v7()
        ))
    }
}

fn bus(redis: &TestRedis, runs: &Arc<AtomicUsize>) -> Bus {
    Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .provide(runs.clone())
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap()
}

fn keyed(key: &str, who: &str) -> Envelope<Deposit> {
    Envelope::new(Deposit {
        account: 7,
        amount: 10,
    })
    .idempotency_key(key)
    .principal(Principal::new(who))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn fifty_sends_of_one_key_over_two_processes_run_once_and_get_one_answer() {
    let redis = TestRedis::new().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (bus(&redis, &runs), bus(&redis, &runs));
    let mut sends = Vec::new();
    for i in 0..50 {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        sends.push(tokio::spawn(async move {
            bus.send(keyed("deposit-1", "alice")).await
        }));
    }
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "every send got the one answer: {answers:?}"
    );

    // The key belongs to its caller: bob's same key runs his own command.
    let bobs = b.send(keyed("deposit-1", "bob")).await.unwrap();
    assert_ne!(bobs, answers[0]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The same key with another payload is a conflict, in either process.
    let other = Envelope::new(Deposit {
        account: 7,
        amount: 99,
    })
    .idempotency_key("deposit-1")
    .principal(Principal::new("alice"));
    assert_eq!(a.send(other).await.unwrap_err().status(), Status::Conflict);
    drop((a, b));
    redis.cleanup().await;
}

fn key(lease: Duration) -> IdempotencyKey {
    IdempotencyKey {
        scope: "Deposit",
        principal: Some("alice".into()),
        key: "lease-1".into(),
        fingerprint: "f".repeat(32),
        ttl: Duration::from_secs(60),
        lease,
    }
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn a_claim_whose_holder_died_frees_the_key_within_its_lease() {
    let redis = TestRedis::new().await;
    let store = RedisIdempotencyStore::new(redis.client.clone(), &redis.prefix);
    let key = key(Duration::from_millis(300));
    assert_eq!(store.claim(&key).await.unwrap(), Claim::Acquired);
    // The holder "dies": it never completes nor releases. Others see it in progress ..
    assert!(matches!(
        store.claim(&key).await.unwrap(),
        Claim::InProgress { .. }
    ));
    // .. until its lease runs out (polled for up to 3 s), then the key can be claimed again.
    let mut freed = false;
    for _ in 0..300 {
        if store.claim(&key).await.unwrap() == Claim::Acquired {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the key stayed claimed past its lease");
    // A completed key keeps its reply (not the lease: the TTL).
    store.complete(&key, b"\"done\"").await.unwrap();
    assert_eq!(
        store.claim(&key).await.unwrap(),
        Claim::Completed {
            fingerprint: key.fingerprint.clone(),
            reply: b"\"done\"".to_vec()
        }
    );
    redis.cleanup().await;
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL (this test runs its own redis-server)"]
async fn keyed_sends_fail_closed_while_redis_is_down_and_recover() {
    let _ = TestRedis::new().await;
    let mut server = OwnRedis::start();
    let redis = TestRedis::at(&server.url()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let bus = bus(&redis, &runs);
    bus.send(keyed("k1", "alice")).await.unwrap();

    server.stop();
    let error = bus.send(keyed("k2", "alice")).await.unwrap_err();
    assert_eq!(error.status(), Status::Unavailable, "{error:#}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not run without its key");
    // Commands without a key do not need Redis.
    bus.send(Deposit {
        account: 1,
        amount: 1,
    })
    .await
    .unwrap();

    server.restart();
    let mut recovered = None;
    for _ in 0..300 {
        if let Ok(answer) = bus.send(keyed("k2", "alice")).await {
            recovered = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        recovered.is_some(),
        "keyed sends work again once Redis is back"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "k2 ran once, when Redis was back"
    );
}
