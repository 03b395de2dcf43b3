//! The Redis backend's costs: a first-level hit with `RedisCache` against `MemoryCache` (the
//! same in-process lookup), a second-level hit (answered by Redis, decoded, kept in process), a
//! miss in both (lookup, lock, handler, store), and an idempotent send with
//! `RedisIdempotencyStore` (claim, handler, complete).
//!
//! `CQRS_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p cqrs-tests --bench redis`, under a key
//! prefix of its own, removed at the end. Without the variable only the in-process rows run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cqrs_core::prelude::*;
use cqrs_core::{RedisCache, redis};
use criterion::Criterion;

#[derive(Query, Debug, Clone)]
#[query(output = u64)]
struct Price {
    id: u64,
}

#[query_handler(Price)]
#[cached_query(ttl = "5m", vary_by = [id], public, max_entries = 1000000)]
struct PriceHandler;

impl QueryHandler<Price> for PriceHandler {
    async fn handle(&self, q: Price, _: &QueryContext) -> Result<u64, Error> {
        Ok(q.id * 3)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Deposit {
    amount: u64,
}

#[command_handler(Deposit)]
struct DepositHandler;

impl CommandHandler<Deposit> for DepositHandler {
    async fn handle(&self, cmd: Deposit, _: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.amount)
    }
}

fn builder() -> BusBuilder {
    Bus::builder()
        .discover(false)
        .register::<PriceHandler>()
        .register::<DepositHandler>()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();

    let memory = rt.block_on(async { builder().build().unwrap() });
    rt.block_on(memory.query(Price { id: 1 })).unwrap();
    c.bench_function("cache hit (MemoryCache)", |b| {
        b.iter(|| {
            rt.block_on(memory.query(black_box(Price { id: 1 })))
                .unwrap()
        })
    });

    let Ok(url) = std::env::var("CQRS_REDIS_URL") else {
        eprintln!("CQRS_REDIS_URL is not set: the Redis rows do not run");
        return;
    };
    let client = redis::Client::open(url.as_str()).expect("CQRS_REDIS_URL is not a Redis URL");
    let prefix = format!("cqrs-bench-{}:", uuid::Uuid::now_v7().simple());
    let on_redis = || {
        rt.block_on(async {
            builder()
                .redis(client.clone())
                .redis_prefix(prefix.clone())
                .query_cache(RedisCache::new(client.clone()).prefix(&prefix))
                .build()
                .unwrap()
        })
    };
    let (a, b) = (on_redis(), on_redis());
    rt.block_on(a.query(Price { id: 1 })).unwrap();
    c.bench_function("cache hit in process (RedisCache)", |bench| {
        bench.iter(|| rt.block_on(a.query(black_box(Price { id: 1 }))).unwrap())
    });

    // Fresh ids for every measured operation: stored by `a` beforehand (not timed), asked of
    // `b`, whose first level has never seen them.
    let mut next = 1_000_000u64;
    c.bench_function("cache hit in Redis (RedisCache)", |bench| {
        bench.iter_custom(|iters| {
            let ids: Vec<u64> = (next..next + iters).collect();
            next += iters;
            rt.block_on(async {
                for id in &ids {
                    a.query(Price { id: *id }).await.unwrap();
                }
                let started = Instant::now();
                for id in &ids {
                    black_box(b.query(Price { id: *id }).await.unwrap());
                }
                started.elapsed()
            })
        })
    });
    c.bench_function(
        "cache miss (RedisCache: lookup, lock, handler, store)",
        |bench| {
            bench.iter_custom(|iters| {
                let ids: Vec<u64> = (next..next + iters).collect();
                next += iters;
                rt.block_on(async {
                    let started = Instant::now();
                    for id in &ids {
                        black_box(a.query(Price { id: *id }).await.unwrap());
                    }
                    started.elapsed()
                })
            })
        },
    );
    let mut key = 0u64;
    c.bench_function("idempotent send (RedisIdempotencyStore)", |bench| {
        bench.iter(|| {
            key += 1;
            let env = Envelope::new(Deposit { amount: 1 }).idempotency_key(key.to_string());
            rt.block_on(a.send(env)).unwrap()
        })
    });
    c.bench_function("send without a key (same bus)", |bench| {
        bench.iter(|| {
            rt.block_on(a.send(black_box(Deposit { amount: 1 })))
                .unwrap()
        })
    });
    drop((a, b));

    // Remove what the run stored.
    rt.block_on(async {
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        for chunk in keys.chunks(1000) {
            let _: i64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    });
}
