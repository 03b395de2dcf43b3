//! What the shop's tests share: a database of their own (a fresh SQLite file, or a fresh
//! PostgreSQL schema when `CQRS_POSTGRES_URL` is set), a shop serving it on a free loopback
//! port, and a way to wait for something without sleeping a fixed time.
//!
//! Each test cleans up after itself, even when it fails: the body runs in a task of its own, the
//! server is stopped and the database dropped whatever the outcome, then the failure is raised.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, PgPool};
use cqrs_examples::shop::{self, Db};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A database made for one test, removed by [`TestDatabase::remove`].
pub struct TestDatabase {
    pub db: Db,
    remove: Removal,
}

enum Removal {
    File(PathBuf),
    Schema { admin: PgPool, schema: String },
}

impl TestDatabase {
    /// A new SQLite file in the temporary directory.
    pub async fn sqlite() -> TestDatabase {
        let path = std::env::temp_dir().join(format!("cqrs-shop-test-{}.db", uuid::Uuid::now_v7()));
        let pool = cqrs_core::sqlite_pool(path.to_str().expect("a UTF-8 temp path"))
            .await
            .expect("creating a SQLite file in the temp directory");
        TestDatabase {
            db: Db::Sqlite(pool),
            remove: Removal::File(path),
        }
    }

    /// A new schema on the server `CQRS_POSTGRES_URL` names, the pool's `search_path` set to
    /// it. Panics when the variable is unset or the server does not answer: a test told to
    /// use PostgreSQL must not pass without it.
    pub async fn postgres() -> TestDatabase {
        let url = std::env::var("CQRS_POSTGRES_URL").expect(
            "this test needs PostgreSQL: set CQRS_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test)",
        );
        let base = PgConnectOptions::from_str(&url)
            .expect("CQRS_POSTGRES_URL is not a valid PostgreSQL URL");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("CQRS_POSTGRES_URL is set but PostgreSQL does not answer: {e}")
            });
        let schema = format!("shop_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("creating the test schema");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .expect("connecting to the test schema");
        TestDatabase {
            db: Db::Postgres(pool),
            remove: Removal::Schema { admin, schema },
        }
    }

    /// A URL of this database for another process (`shop --database ..`): the file, or the
    /// server's URL with the schema as `search_path`.
    pub fn url(&self) -> String {
        match &self.remove {
            Removal::File(path) => path.display().to_string(),
            Removal::Schema { schema, .. } => {
                let base = std::env::var("CQRS_POSTGRES_URL").unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options=-csearch_path%3D{schema}")
            }
        }
    }

    /// Closes the pool and removes the file or drops the schema.
    pub async fn remove(self) {
        self.db.close().await;
        match self.remove {
            Removal::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Removal::Schema { admin, schema } => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&admin)
                    .await
                    .expect("dropping the test schema");
                admin.close().await;
            }
        }
    }
}

/// A running shop, as a test sees it.
#[derive(Clone)]
pub struct Shop {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub http: reqwest::Client,
    /// Its database, to check what the API says against what is stored.
    pub db: Db,
}

impl Shop {
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A number the database answers (`SELECT COUNT(*) ..`); `$1` is bound to `arg`.
    pub async fn count(&self, sql: &'static str, arg: &str) -> i64 {
        let result = match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(arg)
                    .fetch_one(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(arg)
                    .fetch_one(pool)
                    .await
            }
        };
        result.unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
    }
}

/// Starts the shop on `database` on a free loopback port, runs `test` against it, then stops
/// the shop and removes the database (also when `test` panics, whose panic is then raised).
pub async fn with_shop<F, Fut>(database: TestDatabase, test: F)
where
    F: FnOnce(Shop) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    shop::migrate(&database.db)
        .await
        .expect("the shop's tables are created");
    let bus = shop::build_bus(&database.db).expect("the shop's bus builds");
    bus.start().await.expect("the shop's bus starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(shop::serve(listener, bus, async {
        let _ = stopped.await;
    }));

    let shop = Shop {
        url,
        http: reqwest::Client::new(),
        db: database.db.clone(),
    };
    let outcome = tokio::spawn(test(shop)).await;

    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("the shop failed: {e}"),
        Ok(Err(e)) => panic!("the shop's task failed: {e}"),
        Err(_) => panic!("the shop did not stop within 10 s"),
    }
    database.remove().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Polls `check` until it returns `Some` or `within` passes (then panics, naming `what`).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares `$test` twice, as `$test::sqlite` and as `$test::postgres` (ignored unless asked
/// for, as the project's other PostgreSQL tests).
#[macro_export]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let database = $crate::support::TestDatabase::sqlite().await;
                $crate::support::with_shop(database, super::$test).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
            async fn postgres() {
                let database = $crate::support::TestDatabase::postgres().await;
                $crate::support::with_shop(database, super::$test).await;
            }
        }
    )*};
}

/// Starts the `shop` binary with `args` and `--port 0`: the process (killed when dropped) and
/// the URL it prints on its first line, which it must print within `within`.
pub async fn spawn_shop(args: &[&str], within: Duration) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the shop starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(within, lines.next_line())
        .await
        .expect("the shop prints where it listens in time")
        .unwrap()
        .expect("a line");
    let url = first
        .strip_prefix("shop listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    (child, url)
}
