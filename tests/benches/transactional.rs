//! A transactional command that inserts a row and emits one event, against the same work
//! written by hand with `sqlx`, on SQLite (a file, WAL) and PostgreSQL.
//!
//! Run with `cargo bench -p cqrs-tests --bench transactional`; the PostgreSQL rows run when
//! `CQRS_POSTGRES_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/test`), in a schema of
//! their own that is dropped at the end.
//!
//! "The same work" is what the framework does for such a command, written out: begin; insert
//! the row; insert the event into the outbox (JSON payload and metadata, in the same
//! transaction); commit; then, the event delivered, mark its outbox row delivered.
//!
//! Two measurements per database. The criterion rows (the hand-written one before and after the
//! framework's) give the time and allocations of each; then 1,000 operations of each,
//! in turn, give their ratio on the same tables at the same moment: rows measured one
//! after the other drift apart with the disk's load and the tables' growth (the same
//! hand-written row was 25% slower after the framework's row than before it in one run).
//!
//! On PostgreSQL the framework commits the "delivered" mark without waiting for the WAL flush
//! (see `outbox_mark_delivered`), which the plain hand-written code does not; two more
//! hand-written variants in the interleaved comparison separate that from the rest: one with
//! the same asynchronous mark, one with the framework's very statements.

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, PgPool, SqlitePool};
use cqrs_core::{AnyTx, Bus};
use criterion::Criterion;
use serde::{Deserialize, Serialize};

use support::Suite;
use support::alloc::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
#[event(name = "bench.item_added")]
struct ItemAdded {
    id: String,
    name: String,
}

#[derive(Command, Debug, Clone, Serialize, Deserialize)]
#[command(output = ())]
struct AddItem {
    id: String,
    name: String,
}

#[command_handler(AddItem, emits = [ItemAdded])]
#[transactional]
struct AddItemHandler;

impl CommandHandler<AddItem> for AddItemHandler {
    async fn handle(&self, cmd: AddItem, cx: &mut CommandContext) -> Result<(), Error> {
        match cx.any_tx()? {
            AnyTx::Sqlite(tx) => {
                sqlx::query("INSERT INTO items (id, name) VALUES (?, ?)")
                    .bind(&cmd.id)
                    .bind(&cmd.name)
                    .execute(tx)
                    .await?;
            }
            AnyTx::Postgres(tx) => {
                sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
                    .bind(&cmd.id)
                    .bind(&cmd.name)
                    .execute(tx)
                    .await?;
            }
            _ => return Err(Error::internal("a database this bench does not know")),
        }
        cx.emit(ItemAdded {
            id: cmd.id,
            name: cmd.name,
        });
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The event's outbox row, as the framework writes it: payload and metadata as JSON.
fn outbox_row(cmd: &AddItem) -> (uuid::Uuid, String, String) {
    let id = uuid::Uuid::now_v7();
    let payload = serde_json::to_string(&ItemAdded {
        id: cmd.id.clone(),
        name: cmd.name.clone(),
    })
    .expect("json");
    let metadata = serde_json::to_string(&serde_json::json!({
        "correlation_id": uuid::Uuid::now_v7(),
        "causation_id": uuid::Uuid::now_v7(),
    }))
    .expect("json");
    (id, payload, metadata)
}

/// The hand-written SQLite code: plainly (`BEGIN`, the mark by `id = ?`), or with the
/// framework's very statements (`framework`: `BEGIN IMMEDIATE`, the row claimed, the mark
/// through `json_each`).
async fn by_hand_sqlite(
    pool: &SqlitePool,
    cmd: AddItem,
    framework: bool,
) -> Result<(), sqlx::Error> {
    let mut tx = if framework {
        pool.begin_with("BEGIN IMMEDIATE").await?
    } else {
        pool.begin().await?
    };
    sqlx::query("INSERT INTO items (id, name) VALUES (?, ?)")
        .bind(&cmd.id)
        .bind(&cmd.name)
        .execute(&mut *tx)
        .await?;
    let (id, payload, metadata) = outbox_row(&cmd);
    sqlx::query(
        "INSERT INTO cqrs_outbox (id, event_name, payload, metadata, created_at_ms, locked_until_ms)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id.to_string())
    .bind("bench.item_added")
    .bind(payload)
    .bind(metadata)
    .bind(now_ms())
    .bind(framework.then(|| now_ms() + 30_000))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if framework {
        sqlx::query(
            "UPDATE cqrs_outbox SET delivered_at_ms = ?, locked_until_ms = NULL, last_error = NULL
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(now_ms())
        .bind(serde_json::to_string(&[id.to_string()]).expect("json"))
        .execute(pool)
        .await?;
    } else {
        sqlx::query("UPDATE cqrs_outbox SET delivered_at_ms = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// How the hand-written PostgreSQL code commits the "delivered" mark.
#[derive(Clone, Copy)]
enum Mark {
    /// A plain `UPDATE`: its commit waits for the WAL flush, as any commit.
    Synchronous,
    /// As the framework does it: the `UPDATE`'s transaction sets `synchronous_commit = off`.
    Asynchronous,
    /// Asynchronously, and every statement as the framework writes it: `BEGIN ISOLATION LEVEL
    /// READ COMMITTED`, the event's row claimed for the dispatch (`locked_until_ms`), the claim
    /// and any last error cleared with the mark.
    Framework,
}

async fn by_hand_postgres(pool: &PgPool, cmd: AddItem, mark: Mark) -> Result<(), sqlx::Error> {
    let framework = matches!(mark, Mark::Framework);
    let mut tx = if framework {
        pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?
    } else {
        pool.begin().await?
    };
    sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
        .bind(&cmd.id)
        .bind(&cmd.name)
        .execute(&mut *tx)
        .await?;
    let (id, payload, metadata) = outbox_row(&cmd);
    sqlx::query(
        "INSERT INTO cqrs_outbox (id, event_name, payload, metadata, created_at_ms, locked_until_ms)
         VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6)",
    )
    .bind(id)
    .bind("bench.item_added")
    .bind(payload)
    .bind(metadata)
    .bind(now_ms())
    .bind(framework.then(|| now_ms() + 30_000))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query(match mark {
        Mark::Synchronous => "UPDATE cqrs_outbox SET delivered_at_ms = $1 WHERE id = $2",
        Mark::Asynchronous => {
            "UPDATE cqrs_outbox SET delivered_at_ms = $1
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit
             WHERE id = $2"
        }
        Mark::Framework => {
            "UPDATE cqrs_outbox SET delivered_at_ms = $1, locked_until_ms = NULL, last_error = NULL
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit
             WHERE id = $2"
        }
    })
    .bind(now_ms())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// One operation of a variant of the interleaved comparison.
type Operation<'a> = Box<dyn FnMut(u64) -> Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>;

/// The variants one operation each in turn, `n` times: all see the same tables, the same
/// server and the same moment of the disk, which the criterion rows, measured one after the
/// other, cannot. Each turn starts one variant further, so that none always runs right after
/// the same other (a commit's WAL flush still under way slows the next statement). Prints the
/// mean of each and its ratio to the first.
async fn interleaved(database: &str, n: u64, variants: &mut [(&str, Operation<'_>)]) {
    let count = variants.len();
    let mut spent = vec![Duration::ZERO; count];
    for i in 0..n {
        for k in 0..count {
            let v = (i as usize + k) % count;
            let started = std::time::Instant::now();
            (variants[v].1)(i).await;
            spent[v] += started.elapsed();
        }
    }
    let mean_us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "\n### {database}, interleaved ({n} operations each, in turn)\n\
         | variant | time/op | vs {} |\n|---|---:|---:|",
        variants[0].0
    );
    for ((name, _), each) in variants.iter().zip(&spent) {
        println!(
            "| {name} | {:.1} µs | {:.2}× |",
            mean_us(*each),
            mean_us(*each) / mean_us(spent[0])
        );
    }
}

fn item(i: u64, prefix: &str) -> AddItem {
    AddItem {
        id: format!("{prefix}-{i}"),
        name: "a bench item".to_owned(),
    }
}

/// The rows of one database: the hand-written code before and after the framework's row (so
/// that a drift of the disk shows as two baselines that disagree), then [`interleaved`], with
/// `more` variants of the hand-written code after the framework.
fn compare<'a, H, HF>(
    suite: &Suite,
    c: &mut Criterion,
    database: &str,
    bus: &'a Bus,
    hand: &'a H,
    more: Vec<(&str, Operation<'a>)>,
) where
    H: Fn(AddItem) -> HF,
    HF: Future<Output = Result<(), sqlx::Error>> + 'a,
{
    let before = format!("{database}: by hand with sqlx");
    let after = format!("{database}: by hand with sqlx, again after");
    let baselines = [before.as_str(), after.as_str()];
    let mut g = suite.group(
        c,
        &format!("transactional insert + event, {database}"),
        &["vs by hand (before)", "vs by hand (after)"],
    );
    g.row(&before, &baselines, |i| async move {
        black_box(hand(item(i, "hand")).await).expect("by hand");
    });
    g.row(
        &format!("{database}: bus.send, #[transactional]"),
        &baselines,
        |i| async move {
            black_box(bus.send(item(i, "bus")).await).expect("framework");
        },
    );
    g.row(&after, &baselines, |i| async move {
        black_box(hand(item(i, "again")).await).expect("by hand");
    });
    g.finish();
    let mut variants: Vec<(&str, Operation<'a>)> = vec![
        (
            "by hand",
            Box::new(move |i| {
                Box::pin(async move {
                    black_box(hand(item(i, "ih")).await).expect("by hand");
                })
            }),
        ),
        (
            "`bus.send`",
            Box::new(move |i| {
                Box::pin(async move {
                    black_box(bus.send(item(i, "ib")).await).expect("framework");
                })
            }),
        ),
    ];
    variants.extend(more);
    suite
        .runtime()
        .block_on(interleaved(database, INTERLEAVED, &mut variants));
}

fn sqlite(suite: &Suite, c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("cqrs-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench.db");
    let (pool, bus) = suite.runtime().block_on(async {
        let pool = cqrs_core::sqlite_pool(path.to_str().expect("utf-8 path"))
            .await
            .expect("sqlite pool");
        cqrs_core::migrate_sqlite(&pool).await.expect("migrate");
        sqlx::query("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("items table");
        let bus: Bus = Bus::builder()
            .discover(false)
            .register::<AddItemHandler>()
            .sqlite(pool.clone())
            .build()
            .expect("bus");
        bus.send(item(0, "check")).await.expect("framework");
        by_hand_sqlite(&pool, item(1, "check"), false)
            .await
            .expect("by hand");
        (pool, bus)
    });
    // WAL with `synchronous = NORMAL` (as `sqlite_pool` opens it): commits do not fsync, the WAL
    // is synced at checkpoints, on a disk other processes share: the time of one row drifts
    // with the disk's load.
    let hand = |cmd| by_hand_sqlite(&pool, cmd, false);
    let pool = &pool;
    let framework: Operation<'_> = Box::new(move |i| {
        Box::pin(async move {
            black_box(by_hand_sqlite(pool, item(i, "if"), true).await).expect("by hand");
        })
    });
    compare(
        suite,
        c,
        "SQLite (file, WAL)",
        &bus,
        &hand,
        vec![("by hand, the framework's statements", framework)],
    );
    drop(bus);
    suite.runtime().block_on(pool.close());
    let _ = std::fs::remove_dir_all(&dir);
}

fn postgres(suite: &Suite, c: &mut Criterion, url: &str) {
    let schema = format!("cqrs_bench_{}", uuid::Uuid::now_v7().simple());
    let base = PgConnectOptions::from_str(url).expect("CQRS_POSTGRES_URL is not a valid URL");
    let (admin, pool, bus) = suite.runtime().block_on(async {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("CQRS_POSTGRES_URL is set but PostgreSQL does not answer: {e}")
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("schema");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .expect("pool");
        cqrs_core::migrate_postgres(&pool).await.expect("migrate");
        sqlx::query("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("items table");
        let bus: Bus = Bus::builder()
            .discover(false)
            .register::<AddItemHandler>()
            .postgres(pool.clone())
            .build()
            .expect("bus");
        bus.send(item(0, "check")).await.expect("framework");
        by_hand_postgres(&pool, item(1, "check"), Mark::Synchronous)
            .await
            .expect("by hand");
        (admin, pool, bus)
    });
    // Each commit waits for the server's WAL flush (`synchronous_commit` is on by default).
    // The framework commits the "delivered" mark asynchronously (losing it in a crash only
    // redelivers the event). The third variant does the same by hand, so that the difference
    // between it and `bus.send` is what the framework adds; the fourth sends the framework's
    // very statements, so that what is left beyond it is the framework's Rust.
    let hand = |cmd| by_hand_postgres(&pool, cmd, Mark::Synchronous);
    let pool = &pool;
    let by_hand = |mark, prefix| -> Operation<'_> {
        Box::new(move |i| {
            Box::pin(async move {
                black_box(by_hand_postgres(pool, item(i, prefix), mark).await).expect("by hand");
            })
        })
    };
    compare(
        suite,
        c,
        "PostgreSQL",
        &bus,
        &hand,
        vec![
            (
                "by hand, mark committed asynchronously",
                by_hand(Mark::Asynchronous, "ia"),
            ),
            (
                "by hand, the framework's statements",
                by_hand(Mark::Framework, "if"),
            ),
        ],
    );
    drop(bus);
    suite.runtime().block_on(async {
        pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .expect("drop schema");
    });
}

/// Operations of each kind in the interleaved comparison.
const INTERLEAVED: u64 = 1_000;

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let suite = Suite::new(30).with_alloc_ops(500);
    sqlite(&suite, &mut c);
    match std::env::var("CQRS_POSTGRES_URL") {
        Ok(url) => postgres(&suite, &mut c, &url),
        Err(_) => eprintln!("PostgreSQL rows skipped: set CQRS_POSTGRES_URL to run them"),
    }
    c.final_summary();
    println!(
        "\n## Results (time: criterion slope; allocations: counted over 500 operations)\n{}",
        suite.table()
    );
}
