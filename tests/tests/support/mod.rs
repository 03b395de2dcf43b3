//! Real databases for tests: a fresh SQLite file per test, and, when `CQRS_POSTGRES_URL` is set,
//! a fresh PostgreSQL schema per test (dropped at the end), so tests run in parallel and leave
//! nothing behind.
#![allow(dead_code, unreachable_pub, clippy::large_enum_variant)]

use std::path::PathBuf;
use std::str::FromStr;

use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cqrs_core::sqlx::{self, PgPool, SqlitePool};
use cqrs_core::{BusBuilder, Error};

/// A database for one test.
pub enum TestDb {
    Sqlite {
        pool: SqlitePool,
        path: PathBuf,
    },
    Postgres {
        pool: PgPool,
        admin: PgPool,
        schema: String,
        options: PgConnectOptions,
    },
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let path = std::env::temp_dir().join(format!("cqrs-test-{}.db", uuid::Uuid::now_v7()));
        let pool = cqrs_core::sqlite_pool(path.to_str().unwrap())
            .await
            .unwrap();
        TestDb::Sqlite { pool, path }
    }

    /// A fresh schema on the server `CQRS_POSTGRES_URL` names; fails loudly when it is unset or
    /// the server does not answer (the test is `#[ignore]`d unless CI runs it with the variable).
    pub async fn postgres() -> TestDb {
        let url = std::env::var("CQRS_POSTGRES_URL")
            .expect("this test needs PostgreSQL: set CQRS_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test)");
        let base = PgConnectOptions::from_str(&url)
            .expect("CQRS_POSTGRES_URL is not a valid PostgreSQL URL");
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(base.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("CQRS_POSTGRES_URL is set but PostgreSQL does not answer: {e}")
            });
        let schema = format!("cqrs_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let options = base.options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options.clone())
            .await
            .unwrap();
        TestDb::Postgres {
            pool,
            admin,
            schema,
            options,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    pub fn attach(&self, builder: BusBuilder) -> BusBuilder {
        match self {
            TestDb::Sqlite { pool, .. } => builder.sqlite(pool.clone()),
            TestDb::Postgres { pool, .. } => builder.postgres(pool.clone()),
        }
    }

    /// A second pool on the same database (as another process would have).
    pub async fn reopen(&self) -> TestDb {
        match self {
            TestDb::Sqlite { path, .. } => TestDb::Sqlite {
                pool: cqrs_core::sqlite_pool(path.to_str().unwrap())
                    .await
                    .unwrap(),
                path: path.clone(),
            },
            TestDb::Postgres {
                admin,
                schema,
                options,
                ..
            } => TestDb::Postgres {
                pool: PgPoolOptions::new()
                    .max_connections(10)
                    .connect_with(options.clone())
                    .await
                    .unwrap(),
                admin: admin.clone(),
                schema: schema.clone(),
                options: options.clone(),
            },
        }
    }

    /// Runs a statement outside any handler (`?` placeholders are rewritten for PostgreSQL).
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite { pool, .. } => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            TestDb::Postgres { pool, .. } => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    /// The single integer a query returns.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestDb::Sqlite { pool, .. } => {
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(pool)
                    .await
                    .unwrap();
                n
            }
            TestDb::Postgres { pool, .. } => {
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(pool)
                    .await
                    .unwrap();
                n
            }
        }
    }

    /// Closes this handle's pool (the database stays).
    pub async fn close(self) {
        match self {
            TestDb::Sqlite { pool, .. } => pool.close().await,
            TestDb::Postgres { pool, .. } => pool.close().await,
        }
    }

    /// Drops what the test created.
    pub async fn cleanup(self) {
        match self {
            TestDb::Sqlite { pool, path } => {
                pool.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            TestDb::Postgres {
                pool,
                admin,
                schema,
                ..
            } => {
                pool.close().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
            }
        }
    }
}

/// Inserts a row into `things` inside the handler's transaction, whichever the database.
pub async fn insert_thing(cx: &mut cqrs_core::CommandContext, name: &str) -> Result<(), Error> {
    if let Ok(tx) = cx.tx::<sqlx::Sqlite>() {
        sqlx::query("INSERT INTO things (name) VALUES (?)")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        return Ok(());
    }
    let tx = cx.tx::<sqlx::Postgres>()?;
    sqlx::query("INSERT INTO things (name) VALUES ($1)")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Runs `test` on SQLite and cleans up.
#[macro_export]
macro_rules! on_both {
    ($sqlite:ident, $postgres:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            let db = support::TestDb::sqlite().await;
            $body(&db).await;
            db.cleanup().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
        async fn $postgres() {
            let db = support::TestDb::postgres().await;
            $body(&db).await;
            db.cleanup().await;
        }
    };
}

/// A key prefix of its own on the Redis `CQRS_REDIS_URL` names; fails loudly when it is unset
/// or the server does not answer. `cleanup` removes every key under the prefix.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
    pub client: cqrs_core::redis::Client,
}

impl TestRedis {
    pub async fn new() -> TestRedis {
        let url = std::env::var("CQRS_REDIS_URL")
            .expect("this test needs Redis: set CQRS_REDIS_URL (e.g. redis://127.0.0.1:6379)");
        TestRedis::at(&url).await
    }

    /// The Redis at `url` (a server the test started itself).
    pub async fn at(url: &str) -> TestRedis {
        let client = cqrs_core::redis::Client::open(url).expect("not a valid Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} does not answer: {e}"));
        let _: String = cqrs_core::redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .unwrap();
        TestRedis {
            url: url.to_owned(),
            prefix: format!("cqrs-test-{}:", uuid::Uuid::now_v7().simple()),
            client,
        }
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        cqrs_core::redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    pub async fn cleanup(self) {
        let keys = self.keys().await;
        if keys.is_empty() {
            return;
        }
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: i64 = cqrs_core::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

/// A `redis-server` of the test's own on a free port (for tests that stop it), without
/// persistence; killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut own = OwnRedis { port, child: None };
        own.restart();
        own
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` until it is true, for up to 5 s (then panics, naming `what`).
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
