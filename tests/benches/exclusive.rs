//! What `#[exclusive]` adds to a send: taking and freeing its lock, uncontended, next to the
//! same send without it, on each backend.
//!
//! - Redis: the acquire script (`SET NX PX` and `INCR` of the fence), the renewal task started
//!   and stopped, the compare-and-delete script: two round trips.
//! - PostgreSQL, not transactional: `pg_try_advisory_lock` (with the fence's `nextval`) and
//!   `pg_advisory_unlock` on a pooled connection: two round trips.
//! - PostgreSQL, transactional: the lock on the connection, `BEGIN`, then `COMMIT; unlock;
//!   BEGIN` and the `COMMIT` of the empty transaction: two round trips more than `BEGIN` and
//!   `COMMIT` alone.
//!
//! `CQRS_REDIS_URL=redis://127.0.0.1:6379 CQRS_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo bench -p cqrs-tests --bench exclusive`, under a key prefix and a schema of its own,
//! removed at the end. A backend whose variable is unset is skipped.

use std::hint::black_box;
use std::str::FromStr;
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::redis;
use cqrs_core::sqlx::{self, postgres::PgConnectOptions, postgres::PgPoolOptions};
use criterion::Criterion;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Plain {
    account: u64,
}

#[command_handler(Plain)]
struct PlainHandler;

impl CommandHandler<Plain> for PlainHandler {
    async fn handle(&self, cmd: Plain, _: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.account)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Locked {
    account: u64,
}

#[command_handler(Locked)]
#[exclusive(key = account, name = "account")]
struct LockedHandler;

impl CommandHandler<Locked> for LockedHandler {
    async fn handle(&self, cmd: Locked, _: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.account)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct InTx {
    account: u64,
}

#[command_handler(InTx)]
#[transactional]
struct InTxHandler;

impl CommandHandler<InTx> for InTxHandler {
    async fn handle(&self, cmd: InTx, _: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.account)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct LockedInTx {
    account: u64,
}

#[command_handler(LockedInTx)]
#[transactional]
#[exclusive(key = account, name = "account")]
struct LockedInTxHandler;

impl CommandHandler<LockedInTx> for LockedInTxHandler {
    async fn handle(&self, cmd: LockedInTx, _: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.account)
    }
}

fn builder() -> BusBuilder {
    Bus::builder()
        .discover(false)
        .register::<PlainHandler>()
        .register::<LockedHandler>()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();

    if let Ok(url) = std::env::var("CQRS_REDIS_URL") {
        let client = redis::Client::open(url.as_str()).expect("CQRS_REDIS_URL is not a Redis URL");
        let prefix = format!("cqrs-bench-{}:", uuid::Uuid::now_v7().simple());
        let bus = builder()
            .redis(client.clone())
            .redis_prefix(prefix.clone())
            .build()
            .unwrap();
        c.bench_function("redis: send without #[exclusive]", |b| {
            b.iter(|| {
                rt.block_on(bus.send(black_box(Plain { account: 1 })))
                    .unwrap()
            })
        });
        c.bench_function("redis: send with #[exclusive] (lease taken, freed)", |b| {
            b.iter(|| {
                rt.block_on(bus.send(black_box(Locked { account: 1 })))
                    .unwrap()
            })
        });
        drop(bus);
        rt.block_on(async {
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut connection)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
        });
    } else {
        eprintln!("CQRS_REDIS_URL is not set: the Redis rows do not run");
    }

    let Ok(url) = std::env::var("CQRS_POSTGRES_URL") else {
        eprintln!("CQRS_POSTGRES_URL is not set: the PostgreSQL rows do not run");
        return;
    };
    let base = PgConnectOptions::from_str(&url).expect("CQRS_POSTGRES_URL is not a PostgreSQL URL");
    let schema = format!("cqrs_bench_{}", uuid::Uuid::now_v7().simple());
    let (admin, bus) = rt.block_on(async {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .unwrap();
        let bus = builder()
            .register::<InTxHandler>()
            .register::<LockedInTxHandler>()
            .postgres(pool)
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        (admin, bus)
    });
    c.bench_function("postgres: send without #[exclusive]", |b| {
        b.iter(|| {
            rt.block_on(bus.send(black_box(Plain { account: 1 })))
                .unwrap()
        })
    });
    c.bench_function(
        "postgres: send with #[exclusive] (advisory lock, unlock)",
        |b| {
            b.iter(|| {
                rt.block_on(bus.send(black_box(Locked { account: 1 })))
                    .unwrap()
            })
        },
    );
    c.bench_function("postgres: #[transactional] send", |b| {
        b.iter(|| {
            rt.block_on(bus.send(black_box(InTx { account: 1 })))
                .unwrap()
        })
    });
    c.bench_function("postgres: #[transactional] #[exclusive] send", |b| {
        b.iter(|| {
            rt.block_on(bus.send(black_box(LockedInTx { account: 1 })))
                .unwrap()
        })
    });
    drop(bus);
    rt.block_on(async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    });
}
