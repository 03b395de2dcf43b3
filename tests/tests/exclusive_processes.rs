//! `#[exclusive]` across real processes (`src/bin/exclusive_worker.rs`): two workers send 50
//! commands each on one key and the database shows they never overlapped; a worker killed with
//! `kill -9` while it holds a key frees it at once on PostgreSQL (its session dies) and within
//! its lease on Redis.

mod support;

use std::process::Stdio;
use std::time::Duration;

use cqrs_core::prelude::*;
use support::{TestDb, TestRedis};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The URL of `db` for another process: the server's, with the test's schema as `search_path`.
fn url_of(db: &TestDb) -> String {
    let TestDb::Postgres { schema, .. } = db else {
        panic!("the workers share a PostgreSQL schema");
    };
    let base = std::env::var("CQRS_POSTGRES_URL").unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

fn worker(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_exclusive_worker"))
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts")
}

/// The worker's stdout up to its end, and whether it exited successfully.
async fn finished(mut child: Child) -> (bool, String) {
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        out.push_str(&line);
        out.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the worker finishes within 2 minutes")
        .unwrap();
    (status.success(), out)
}

async fn tables(db: &TestDb) {
    db.execute(
        "CREATE TABLE exclusive_counter (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
         INSERT INTO exclusive_counter VALUES ('k', 0);
         CREATE TABLE exclusive_runs (id BIGSERIAL PRIMARY KEY, entered TIMESTAMPTZ NOT NULL,
                                      left_at TIMESTAMPTZ);",
    )
    .await;
}

/// Two workers, 50 commands each on key `k`: the counter is 100, every handler finished, and
/// no two handlers' intervals (on the database's one clock) intersect.
async fn two_workers_never_overlap(db: &TestDb, backend_args: &[&str]) {
    tables(db).await;
    let url = url_of(db);
    let mut args = vec!["--postgres", url.as_str(), "--count", "50", "--key", "k"];
    args.extend_from_slice(backend_args);
    let (a, b) = (worker(&args), worker(&args));
    let ((a_ok, a_out), (b_ok, b_out)) = tokio::join!(finished(a), finished(b));
    assert!(a_ok && b_ok, "a worker failed:\n{a_out}\n{b_out}");
    assert_eq!(
        db.count("SELECT value FROM exclusive_counter WHERE key = 'k'")
            .await,
        100,
        "an increment was lost"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM exclusive_runs WHERE left_at IS NOT NULL")
            .await,
        100
    );
    let overlaps = db
        .count(
            "SELECT COUNT(*) FROM exclusive_runs a JOIN exclusive_runs b
               ON a.id < b.id AND a.entered < b.left_at AND b.entered < a.left_at",
        )
        .await;
    assert_eq!(
        overlaps, 0,
        "handlers of two commands on one key overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_two_processes_100_commands_on_one_key_never_overlap() {
    let db = TestDb::postgres().await;
    two_workers_never_overlap(&db, &["--backend", "postgres"]).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and PostgreSQL: set CQRS_REDIS_URL and CQRS_POSTGRES_URL"]
async fn redis_two_processes_100_commands_on_one_key_never_overlap() {
    let db = TestDb::postgres().await;
    let redis = TestRedis::new().await;
    let prefix = redis.prefix.clone();
    two_workers_never_overlap(
        &db,
        &[
            "--backend",
            "redis",
            "--redis",
            &redis.url,
            "--prefix",
            &prefix,
        ],
    )
    .await;
    redis.cleanup().await;
    db.cleanup().await;
}

/// Starts a worker that takes key `k` and keeps it; returns once it holds it.
async fn holder(args: &[&str]) -> Child {
    let mut child = worker(args);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the worker takes the key in time")
        .unwrap()
        .unwrap_or_default();
    assert!(first.starts_with("holding"), "unexpected: {first}");
    child
}

/// What the test sends on `k`: a command whose timeout bounds how long it waits for the key.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Touch {
    key: String,
}

#[command_handler(Touch)]
#[exclusive(key = key, name = "counter")]
struct TouchHandler;

impl CommandHandler<Touch> for TouchHandler {
    async fn handle(&self, _: Touch, _: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn touch() -> Envelope<Touch> {
    Envelope::new(Touch { key: "k".into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn postgres_a_holder_killed_with_sigkill_frees_its_key_at_once() {
    let db = TestDb::postgres().await;
    let url = url_of(&db);
    let mut child = holder(&["--backend", "postgres", "--postgres", &url, "--hold", "k"]).await;
    let bus = db
        .attach(Bus::builder().discover(false).register::<TouchHandler>())
        .build()
        .unwrap();
    let held = bus
        .send(touch().timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(held.status(), Status::Timeout, "the key is held: {held:#}");

    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    // Its session ends with its socket: the key is free as soon as the server notices.
    bus.send(touch().timeout(Duration::from_secs(2)))
        .await
        .expect("the key was freed when its holder died");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and PostgreSQL: set CQRS_REDIS_URL and CQRS_POSTGRES_URL"]
async fn redis_a_holder_killed_with_sigkill_frees_its_key_within_its_lease() {
    let db = TestDb::postgres().await;
    let redis = TestRedis::new().await;
    let url = url_of(&db);
    let lease = Duration::from_millis(1500);
    let lease_ms = lease.as_millis().to_string();
    let mut child = holder(&[
        "--backend",
        "redis",
        "--postgres",
        &url,
        "--redis",
        &redis.url,
        "--prefix",
        &redis.prefix,
        "--lease-ms",
        &lease_ms,
        "--hold",
        "k",
    ])
    .await;
    let bus = Bus::builder()
        .discover(false)
        .register::<TouchHandler>()
        .redis(redis.client.clone())
        .redis_prefix(redis.prefix.clone())
        .build()
        .unwrap();
    // Held past several leases while its holder lives: the holder renews it.
    tokio::time::sleep(lease * 2).await;
    let held = bus
        .send(touch().timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(held.status(), Status::Timeout, "the key is held: {held:#}");

    child.start_kill().unwrap(); // SIGKILL: no release, no renewal
    child.wait().await.unwrap();
    let killed = std::time::Instant::now();
    bus.send(touch().timeout(lease + Duration::from_secs(1)))
        .await
        .expect("the key was freed within the lease of its dead holder");
    assert!(
        killed.elapsed() <= lease + Duration::from_secs(1),
        "freed within the lease"
    );
    redis.cleanup().await;
    db.cleanup().await;
}
