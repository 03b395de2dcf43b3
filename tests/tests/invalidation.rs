//! Invalidation: targeted (`invalidates = [GetPrice(id = product_id)]`, `bus.invalidate_answer`)
//! and across processes (two buses sharing PostgreSQL `LISTEN`/`NOTIFY` or Redis pub/sub, each
//! with its own first-level cache, over one shared "database").

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::BuildProblem;
use cqrs_core::prelude::*;
use support::{OwnRedis, TestDb, TestRedis};

/// Prices by product, shared by every bus of a test (the database they would share).
#[derive(Default)]
struct Prices {
    prices: Mutex<HashMap<u64, u64>>,
    reads: AtomicUsize,
}

impl Prices {
    fn get(&self, id: u64) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        *self.prices.lock().unwrap().get(&id).unwrap_or(&100)
    }
}

/// The same for everyone.
#[derive(Query, Debug, Clone)]
#[query(output = u64)]
struct GetPrice {
    id: u64,
    /// Not part of the key.
    trace: u32,
}

#[query_handler(GetPrice)]
#[cached_query(ttl = "5m", vary_by = [id], public)]
struct GetPriceHandler {
    prices: Arc<Prices>,
}

impl QueryHandler<GetPrice> for GetPriceHandler {
    async fn handle(&self, q: GetPrice, _: &QueryContext) -> Result<u64, Error> {
        Ok(self.prices.get(q.id))
    }
}

/// Kept per caller: the price with the caller's discount.
#[derive(Query, Debug, Clone)]
#[query(output = String)]
struct MyPrice {
    product: u64,
}

#[query_handler(MyPrice)]
#[cached_query(ttl = "5m", vary_by = [product])]
struct MyPriceHandler {
    prices: Arc<Prices>,
}

impl QueryHandler<MyPrice> for MyPriceHandler {
    async fn handle(&self, q: MyPrice, cx: &QueryContext) -> Result<String, Error> {
        let who = cx.principal().map_or("nobody", |p| p.id());
        Ok(format!("{who}: {}", self.prices.get(q.product)))
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct SetPrice {
    product_id: u64,
    price: u64,
}

#[command_handler(SetPrice, invalidates = [GetPrice(id = product_id), MyPrice(product = product_id)])]
struct SetPriceHandler {
    prices: Arc<Prices>,
}

impl CommandHandler<SetPrice> for SetPriceHandler {
    async fn handle(&self, cmd: SetPrice, _: &mut CommandContext) -> Result<(), Error> {
        self.prices
            .prices
            .lock()
            .unwrap()
            .insert(cmd.product_id, cmd.price);
        Ok(())
    }
}

fn builder(prices: &Arc<Prices>) -> BusBuilder {
    Bus::builder()
        .discover(false)
        .register::<GetPriceHandler>()
        .register::<MyPriceHandler>()
        .register::<SetPriceHandler>()
        .provide(prices.clone())
}

fn price(id: u64) -> GetPrice {
    GetPrice { id, trace: 0 }
}

async fn hit(bus: &Bus, id: u64) -> (u64, bool) {
    let r = bus.query_with_report(price(id)).await.unwrap();
    (r.output, r.cache_hit)
}

async fn my_price(bus: &Bus, who: &str, product: u64) -> (String, bool) {
    let env = Envelope::new(MyPrice { product }).principal(Principal::new(who));
    let r = bus.query_with_report(env).await.unwrap();
    (r.output, r.cache_hit)
}

#[tokio::test]
async fn a_targeted_invalidation_drops_only_that_products_answers_for_every_caller() {
    let prices = Arc::new(Prices::default());
    let bus = builder(&prices).build().unwrap();
    for id in [1, 2] {
        hit(&bus, id).await;
        for who in ["alice", "bob"] {
            my_price(&bus, who, id).await;
        }
    }
    assert_eq!(hit(&bus, 1).await, (100, true));
    assert!(my_price(&bus, "bob", 1).await.1);

    bus.send(SetPrice {
        product_id: 1,
        price: 120,
    })
    .await
    .unwrap();

    assert_eq!(hit(&bus, 1).await, (120, false), "product 1 is read again");
    assert_eq!(hit(&bus, 2).await, (100, true), "product 2 stays cached");
    for who in ["alice", "bob"] {
        assert_eq!(
            my_price(&bus, who, 1).await,
            (format!("{who}: 120"), false),
            "every caller's answer for product 1 is dropped"
        );
        assert_eq!(my_price(&bus, who, 2).await, (format!("{who}: 100"), true));
    }

    // By hand: the named form.
    bus.invalidate_answer(&GetPrice { id: 2, trace: 9 })
        .await
        .unwrap();
    assert_eq!(hit(&bus, 2).await, (100, false));
    assert_eq!(hit(&bus, 1).await, (120, true));
    // And the whole query, as before.
    bus.invalidate::<GetPrice>().await.unwrap();
    assert!(!hit(&bus, 1).await.1);
    assert!(!hit(&bus, 2).await.1);
}

#[tokio::test]
async fn describe_shows_the_targeted_fields() {
    let bus = builder(&Arc::default()).build().unwrap();
    let text = bus.describe().to_string();
    assert!(
        text.contains("invalidates[GetPrice(id), MyPrice(product)]"),
        "{text}"
    );
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct Reprice {
    product_id: u64,
    trace: u32,
}

/// `trace` is a field of `GetPrice`, but not one it varies by.
#[command_handler(Reprice, invalidates = [GetPrice(trace = trace)])]
struct RepriceHandler;

impl CommandHandler<Reprice> for RepriceHandler {
    async fn handle(&self, _: Reprice, _: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[derive(Query, Debug, Clone)]
#[query(output = u64)]
struct Uncached {
    id: u64,
}

#[query_handler(Uncached)]
struct UncachedHandler;

impl QueryHandler<Uncached> for UncachedHandler {
    async fn handle(&self, q: Uncached, _: &QueryContext) -> Result<u64, Error> {
        Ok(q.id)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct Touch {
    id: u64,
}

#[command_handler(Touch, invalidates = [Uncached(id = id)])]
struct TouchHandler;

impl CommandHandler<Touch> for TouchHandler {
    async fn handle(&self, _: Touch, _: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[test]
fn a_mapping_that_is_not_the_querys_vary_by_is_a_build_error() {
    let error = builder(&Arc::default())
        .register::<RepriceHandler>()
        .register::<UncachedHandler>()
        .register::<TouchHandler>()
        .build()
        .unwrap_err();
    let problems: Vec<String> = error
        .problems()
        .iter()
        .filter(|p| matches!(p, BuildProblem::InvalidationTarget { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 2, "{error}");
    assert!(
        problems[0].contains("`RepriceHandler`")
            && problems[0].contains("the fields named (trace) are not its `vary_by` fields (id)")
            && problems[0].contains("write `GetPrice(id = ..)`"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains("`Uncached` has no `#[cached_query]` handler"),
        "{}",
        problems[1]
    );
}

/// Polls `check` for up to a second (the bound is 100 ms; tests allow for a loaded machine).
async fn within_a_second(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Two processes' buses (`a`, `b`) over one channel, sharing `prices`.
async fn two_processes_stay_coherent(a: &Bus, b: &Bus, prices: &Prices) {
    // Until `b` listens, it may miss a message (and drops its cache when it starts listening):
    // wait until a change made on `a` reaches it.
    let next = b.query(price(99)).await.unwrap() + 1;
    a.send(SetPrice {
        product_id: 99,
        price: next,
    })
    .await
    .unwrap();
    assert!(
        within_a_second(async || hit(b, 99).await.0 == next).await,
        "b never saw the change"
    );

    let mut was = [0; 3];
    for id in [1, 2] {
        was[id as usize] = hit(b, id).await.0;
        assert_eq!(hit(b, id).await, (was[id as usize], true), "cached in b");
        my_price(b, "carol", id).await;
    }
    let reads = prices.reads.load(Ordering::SeqCst);
    let new = was[1] + 30;
    a.send(SetPrice {
        product_id: 1,
        price: new,
    })
    .await
    .unwrap();
    assert!(
        within_a_second(async || hit(b, 1).await.0 == new).await,
        "changed on a, still stale on b after a second"
    );
    let mine = format!("carol: {new}");
    assert!(within_a_second(async || my_price(b, "carol", 1).await.0 == mine).await);
    assert_eq!(
        hit(b, 2).await,
        (was[2], true),
        "other products stay cached"
    );
    assert!(my_price(b, "carol", 2).await.1);
    assert!(prices.reads.load(Ordering::SeqCst) > reads);

    // The whole query, by hand, from b to a.
    hit(a, 2).await;
    assert!(hit(a, 2).await.1);
    b.invalidate::<GetPrice>().await.unwrap();
    assert!(within_a_second(async || !hit(a, 2).await.1).await);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn two_buses_on_one_postgres_database_are_coherent_with_nothing_else() {
    let db = TestDb::postgres().await;
    let other = db.reopen().await;
    let prices = Arc::new(Prices::default());
    let a = db.attach(builder(&prices)).build().unwrap();
    let b = other.attach(builder(&prices)).build().unwrap();
    two_processes_stay_coherent(&a, &b, &prices).await;
    drop((a, b));
    other.close().await;
    db.cleanup().await;
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn two_buses_on_one_redis_are_coherent() {
    let redis = TestRedis::new().await;
    let prices = Arc::new(Prices::default());
    let on_redis = || {
        builder(&prices)
            .redis(redis.client.clone())
            .redis_prefix(redis.prefix.clone())
    };
    let (a, b) = (on_redis().build().unwrap(), on_redis().build().unwrap());
    two_processes_stay_coherent(&a, &b, &prices).await;
    drop((a, b));
    redis.cleanup().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL and Redis: set CQRS_POSTGRES_URL and CQRS_REDIS_URL"]
async fn redis_carries_invalidations_over_postgres_when_both_are_configured() {
    let db = TestDb::postgres().await;
    let redis = TestRedis::new().await;
    let prices = Arc::new(Prices::default());
    let a = db
        .attach(builder(&prices))
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap();
    // b hears only PostgreSQL: a's invalidations go over Redis, so b is not told.
    let b = db.attach(builder(&prices)).build().unwrap();
    // c hears Redis (a different database is fine: the channel is Redis's).
    let c = builder(&prices)
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap();
    // Each subscribed to its channel before anything is cached (a first subscription drops
    // what was cached before it).
    for bus in [&a, &b, &c] {
        bus.start().await.unwrap();
    }
    two_processes_stay_coherent(&a, &c, &prices).await;
    hit(&b, 5).await;
    a.send(SetPrice {
        product_id: 5,
        price: 7,
    })
    .await
    .unwrap();
    assert!(within_a_second(async || hit(&c, 5).await.0 == 7).await);
    assert_eq!(
        hit(&b, 5).await,
        (100, true),
        "b listens on PostgreSQL, which a does not use"
    );
    drop((a, b, c));
    redis.cleanup().await;
    db.cleanup().await;
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL (this test runs its own redis-server)"]
async fn when_redis_goes_down_each_process_keeps_its_cache_and_drops_it_on_reconnecting() {
    // The variable says the machine has Redis; this test stops its own server.
    let _ = TestRedis::new().await;
    let mut server = OwnRedis::start();
    let redis = TestRedis::at(&server.url()).await;
    let prices = Arc::new(Prices::default());
    let on_redis = || {
        builder(&prices)
            .redis(redis.client.clone())
            .redis_prefix(redis.prefix.clone())
    };
    let (a, b) = (on_redis().build().unwrap(), on_redis().build().unwrap());
    two_processes_stay_coherent(&a, &b, &prices).await;

    server.stop();
    hit(&b, 3).await;
    assert_eq!(hit(&b, 3).await, (100, true), "the first level serves");
    // A change while the channel is down: a's own cache is dropped, b cannot be told.
    a.send(SetPrice {
        product_id: 3,
        price: 33,
    })
    .await
    .expect("a command succeeds without Redis; only the broadcast is lost");
    assert_eq!(hit(&a, 3).await.0, 33);

    server.restart();
    assert!(
        within_a_second(async || hit(&b, 3).await.0 == 33).await
            || within_a_second(async || hit(&b, 3).await.0 == 33).await,
        "b drops its first level when it reconnects"
    );
    two_processes_stay_coherent(&a, &b, &prices).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn nats_carries_invalidations_over_redis_and_postgres_when_configured() {
    let url = std::env::var("CQRS_NATS_URL").expect("this test needs NATS: set CQRS_NATS_URL");
    let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let nats = || async {
        cqrs_core::Nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("CQRS_NATS_URL is set but NATS does not answer: {e}"))
            .subject_prefix(prefix.clone())
    };
    // Two databases: only NATS joins the two buses.
    let (db_a, db_b) = (TestDb::postgres().await, TestDb::postgres().await);
    let prices = Arc::new(Prices::default());
    let a = db_a
        .attach(builder(&prices))
        .nats(nats().await)
        .build()
        .unwrap();
    let b = db_b
        .attach(builder(&prices))
        .nats(nats().await)
        .build()
        .unwrap();
    two_processes_stay_coherent(&a, &b, &prices).await;
    drop((a, b));
    db_a.cleanup().await;
    db_b.cleanup().await;
}
