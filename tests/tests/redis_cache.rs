//! `RedisCache`: a second level shared by processes (two buses on one Redis) under each one's
//! in-process first level: an answer computed in one process is a hit in the other; concurrent
//! misses across processes run the handler once; an answer computed before an invalidation is
//! never stored after it; Redis down leaves each process its first level.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::RedisCache;
use cqrs_core::prelude::*;
use support::{OwnRedis, TestRedis};
use tokio::sync::Semaphore;

/// Prices shared by every bus of a test; each read can be held at a gate.
#[derive(Default)]
struct Prices {
    prices: Mutex<HashMap<u64, u64>>,
    reads: AtomicUsize,
    /// When set, a read waits for a permit after reading (the test decides when it returns).
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl Prices {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[derive(Query, Debug, Clone)]
#[query(output = u64)]
struct GetPrice {
    id: u64,
}

#[query_handler(GetPrice)]
#[cached_query(ttl = "5m", vary_by = [id], public)]
struct GetPriceHandler {
    prices: Arc<Prices>,
}

impl QueryHandler<GetPrice> for GetPriceHandler {
    async fn handle(&self, q: GetPrice, _: &QueryContext) -> Result<u64, Error> {
        self.prices.reads.fetch_add(1, Ordering::SeqCst);
        let price = *self
            .prices
            .prices
            .lock()
            .unwrap()
            .get(&q.id)
            .unwrap_or(&100);
        let gate = self.prices.gate.lock().unwrap().clone();
        match gate {
            Some(gate) => drop(gate.acquire().await.unwrap()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        Ok(price)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct SetPrice {
    id: u64,
    price: u64,
}

#[command_handler(SetPrice, invalidates = [GetPrice(id = id)])]
struct SetPriceHandler {
    prices: Arc<Prices>,
}

impl CommandHandler<SetPrice> for SetPriceHandler {
    async fn handle(&self, cmd: SetPrice, _: &mut CommandContext) -> Result<(), Error> {
        self.prices.prices.lock().unwrap().insert(cmd.id, cmd.price);
        Ok(())
    }
}

/// A bus on Redis, subscribed to its invalidation channel (`start()`: a first subscription
/// drops what was cached before it, and stops a computation in flight from being stored).
async fn bus(redis: &TestRedis, prices: &Arc<Prices>) -> Bus {
    let bus = Bus::builder()
        .discover(false)
        .register::<GetPriceHandler>()
        .register::<SetPriceHandler>()
        .provide(prices.clone())
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .query_cache(RedisCache::new(redis.client.clone()).prefix(&redis.prefix))
        .build()
        .unwrap();
    bus.start().await.unwrap();
    bus
}

async fn ask(bus: &Bus, id: u64) -> (u64, bool) {
    let r = bus.query_with_report(GetPrice { id }).await.unwrap();
    (r.output, r.cache_hit)
}

async fn within_a_second(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn an_answer_computed_in_one_process_is_a_hit_in_the_other() {
    let redis = TestRedis::new().await;
    let prices = Arc::new(Prices::default());
    let (a, b) = (bus(&redis, &prices).await, bus(&redis, &prices).await);
    assert_eq!(ask(&a, 1).await, (100, false));
    assert_eq!(ask(&b, 1).await, (100, true), "from the shared level");
    assert_eq!(ask(&b, 1).await, (100, true), "now from b's own level");
    assert_eq!(prices.reads(), 1);
    assert!(
        redis
            .keys()
            .await
            .iter()
            .any(|k| k.contains("cache:GetPrice:")),
        "the answer is in Redis under the prefix"
    );

    // A change in a: b's first level is dropped (pub/sub), and the shared level no longer has
    // the old answer; other products stay cached in both levels.
    ask(&a, 2).await;
    assert!(ask(&b, 2).await.1);
    a.send(SetPrice { id: 1, price: 150 }).await.unwrap();
    assert!(within_a_second(async || ask(&b, 1).await.0 == 150).await);
    assert_eq!(ask(&b, 2).await, (100, true));
    drop((a, b));
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn concurrent_misses_across_processes_run_the_handler_once() {
    let redis = TestRedis::new().await;
    let prices = Arc::new(Prices::default());
    let (a, b) = (bus(&redis, &prices).await, bus(&redis, &prices).await);
    let mut asks = Vec::new();
    for i in 0..20 {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        asks.push(tokio::spawn(
            async move { bus.query(GetPrice { id: 9 }).await },
        ));
    }
    for ask in asks {
        assert_eq!(ask.await.unwrap().unwrap(), 100);
    }
    assert_eq!(
        prices.reads(),
        1,
        "one process computed, the other waited for it"
    );
    drop((a, b));
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn an_answer_computed_before_an_invalidation_is_not_stored_after_it_in_any_process() {
    let redis = TestRedis::new().await;
    let prices = Arc::new(Prices::default());
    let (a, b) = (bus(&redis, &prices).await, bus(&redis, &prices).await);
    let gate = Arc::new(Semaphore::new(0));
    *prices.gate.lock().unwrap() = Some(gate.clone());

    // a starts computing product 7: it reads 100, then waits at the gate.
    let slow = tokio::spawn({
        let a = a.clone();
        async move { a.query(GetPrice { id: 7 }).await }
    });
    while prices.reads() == 0 {
        tokio::task::yield_now().await;
    }
    // Meanwhile b changes it (and invalidates it everywhere).
    b.send(SetPrice { id: 7, price: 200 }).await.unwrap();
    *prices.gate.lock().unwrap() = None;
    gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        100,
        "computed before the change"
    );

    assert_eq!(
        ask(&b, 7).await.0,
        200,
        "the stale answer was not stored in the shared level"
    );
    assert!(
        within_a_second(async || ask(&a, 7).await.0 == 200).await,
        "nor kept in a's own level"
    );
    drop((a, b));
    redis.cleanup().await;
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL (this test runs its own redis-server)"]
async fn with_redis_down_each_process_keeps_its_first_level() {
    let _ = TestRedis::new().await;
    let mut server = OwnRedis::start();
    let redis = TestRedis::at(&server.url()).await;
    let prices = Arc::new(Prices::default());
    let a = bus(&redis, &prices).await;
    assert_eq!(ask(&a, 1).await, (100, false));

    server.stop();
    assert_eq!(
        ask(&a, 1).await,
        (100, true),
        "the first level still answers"
    );
    assert_eq!(
        ask(&a, 2).await,
        (100, false),
        "a miss runs the handler (the lookup's failure is logged)"
    );
    assert_eq!(
        ask(&a, 2).await,
        (100, true),
        "and keeps the answer in process"
    );

    server.restart();
    assert!(
        within_a_second(async || {
            let b = bus(&redis, &prices).await;
            let first = ask(&b, 3).await;
            first == (100, false) && ask(&bus(&redis, &prices).await, 3).await == (100, true)
        })
        .await,
        "the shared level works again once Redis is back"
    );
}
