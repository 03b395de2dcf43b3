//! A process that sends `#[exclusive]` commands, for `tests/exclusive_processes.rs`: two of it
//! share one key through PostgreSQL or Redis, and the test checks in the database that their
//! handlers never overlapped; or one holds a key until it is killed.
//!
//! ```text
//! exclusive_worker --backend postgres|redis --postgres <url> [--redis <url> --prefix <p>]
//!                  [--lease-ms <n>] (--count <n> --key <k> | --hold <k>)
//! ```
//!
//! The database (`--postgres`, its `search_path` the test's schema) has `exclusive_counter
//! (key, value)` and `exclusive_runs (id, entered, left_at)`. Each command records when its
//! handler entered and left (`clock_timestamp()`, one clock for every process), reads the
//! counter, pauses, and writes it back plus one: two handlers that overlapped would lose an
//! increment, and their intervals would intersect.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, PgPool};

/// One increment of the counter `key`, in a PostgreSQL transaction (the lock is the
/// transaction's session's, taken before `BEGIN`).
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct BumpInTx {
    key: String,
}

/// The same without a transaction (the lock is a Redis lease).
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct Bump {
    key: String,
}

/// Takes the key and keeps it until the process dies.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Hold {
    key: String,
}

#[command_handler(BumpInTx)]
#[transactional(isolation = "repeatable_read")]
#[exclusive(key = key, name = "counter")]
struct BumpInTxHandler {
    pool: PgPool,
}

impl CommandHandler<BumpInTx> for BumpInTxHandler {
    async fn handle(&self, cmd: BumpInTx, cx: &mut CommandContext) -> Result<u64, Error> {
        let run = enter(&self.pool).await?;
        let tx = cx.tx::<sqlx::Postgres>()?;
        let (value,): (i64,) = sqlx::query_as("SELECT value FROM exclusive_counter WHERE key = $1")
            .bind(&cmd.key)
            .fetch_one(&mut **tx)
            .await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        sqlx::query("UPDATE exclusive_counter SET value = $1 WHERE key = $2")
            .bind(value + 1)
            .bind(&cmd.key)
            .execute(&mut **tx)
            .await?;
        leave(&self.pool, run).await?;
        Ok(cx.fencing_token().unwrap_or(0))
    }
}

#[command_handler(Bump)]
#[exclusive(key = key, name = "counter")]
struct BumpHandler {
    pool: PgPool,
}

impl CommandHandler<Bump> for BumpHandler {
    async fn handle(&self, cmd: Bump, cx: &mut CommandContext) -> Result<u64, Error> {
        let run = enter(&self.pool).await?;
        let (value,): (i64,) = sqlx::query_as("SELECT value FROM exclusive_counter WHERE key = $1")
            .bind(&cmd.key)
            .fetch_one(&self.pool)
            .await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        sqlx::query("UPDATE exclusive_counter SET value = $1 WHERE key = $2")
            .bind(value + 1)
            .bind(&cmd.key)
            .execute(&self.pool)
            .await?;
        leave(&self.pool, run).await?;
        Ok(cx.fencing_token().unwrap_or(0))
    }
}

#[command_handler(Hold)]
#[exclusive(key = key, name = "counter")]
struct HoldHandler;

impl CommandHandler<Hold> for HoldHandler {
    async fn handle(&self, _: Hold, cx: &mut CommandContext) -> Result<(), Error> {
        println!("holding {}", cx.fencing_token().unwrap_or(0));
        std::future::pending::<()>().await;
        Ok(())
    }
}

async fn enter(pool: &PgPool) -> Result<i64, Error> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO exclusive_runs (entered) VALUES (clock_timestamp()) RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    Ok(id)
}

async fn leave(pool: &PgPool, run: i64) -> Result<(), Error> {
    sqlx::query("UPDATE exclusive_runs SET left_at = clock_timestamp() WHERE id = $1")
        .bind(run)
        .execute(pool)
        .await?;
    Ok(())
}

struct Args {
    postgres: String,
    redis: Option<(String, String)>,
    lease: Option<Duration>,
    count: usize,
    key: String,
    hold: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut postgres, mut redis_url, mut prefix, mut lease) = (None, None, None, None);
    let (mut backend, mut count, mut key, mut hold) = (None, 0, None, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => backend = Some(value()?),
            "--postgres" => postgres = Some(value()?),
            "--redis" => redis_url = Some(value()?),
            "--prefix" => prefix = Some(value()?),
            "--lease-ms" => {
                lease = Some(Duration::from_millis(
                    value()?.parse().map_err(|e| format!("--lease-ms: {e}"))?,
                ))
            }
            "--count" => count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--key" => key = Some(value()?),
            "--hold" => {
                key = Some(value()?);
                hold = true;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let redis = match backend.as_deref() {
        Some("postgres") => None,
        Some("redis") => Some((
            redis_url.ok_or("--backend redis needs --redis")?,
            prefix.ok_or("--backend redis needs --prefix")?,
        )),
        _ => return Err("--backend postgres|redis".into()),
    };
    Ok(Args {
        postgres: postgres.ok_or("--postgres is required")?,
        redis,
        lease,
        count,
        key: key.ok_or("--key or --hold is required")?,
        hold,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exclusive_worker: {error}");
            println!("failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = parse()?;
    let options = PgConnectOptions::from_str(&args.postgres).map_err(|e| e.to_string())?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .map_err(|e| e.to_string())?;
    let builder = Bus::builder().discover(false).provide(pool.clone());
    let builder = match &args.redis {
        None => builder
            .postgres(pool.clone())
            .register::<BumpInTxHandler>()
            .register::<HoldHandler>(),
        Some((url, prefix)) => {
            let client = cqrs_core::redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let builder = builder
                .redis(client)
                .redis_prefix(prefix.clone())
                .register::<BumpHandler>()
                .register::<HoldHandler>();
            match args.lease {
                Some(lease) => builder.redis_lock_lease(lease),
                None => builder,
            }
        }
    };
    let bus = builder.build().map_err(|e| e.to_string())?;
    if args.redis.is_none() {
        bus.migrate().await.map_err(|e| e.to_string())?;
    }
    if args.hold {
        bus.send(Hold { key: args.key })
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    // Eight at a time, so that the two processes' commands contend for the key.
    let mut sent = 0;
    while sent < args.count {
        let batch = (args.count - sent).min(8);
        let mut sends = Vec::new();
        for _ in 0..batch {
            let (bus, key, tx) = (bus.clone(), args.key.clone(), args.redis.is_none());
            sends.push(tokio::spawn(async move {
                if tx {
                    bus.send(BumpInTx { key }).await
                } else {
                    bus.send(Bump { key }).await
                }
            }));
        }
        for send in sends {
            send.await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{e:#}"))?;
        }
        sent += batch;
    }
    println!("done {sent}");
    Ok(())
}
