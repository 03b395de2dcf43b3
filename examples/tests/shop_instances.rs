//! Several `shop` processes on one database: a price changed through one is read fresh from the
//! other (within a second; the bound is 100 ms), and only that product's cached answer is
//! dropped. On PostgreSQL alone the invalidations go over `LISTEN`/`NOTIFY`; with `--redis`,
//! over Redis pub/sub (here with a SQLite file the two processes share).

mod support;

use std::str::FromStr;
use std::time::Duration;

use cqrs_core::sqlx::{self, postgres::PgConnectOptions, postgres::PgPoolOptions};
use serde_json::{Value, json};
use tokio::process::Child;

/// A shop process (killed when dropped) and its URL.
struct Instance {
    _child: Child,
    url: String,
}

async fn start(args: &[&str]) -> Instance {
    let (child, url) = support::spawn_shop(args, Duration::from_secs(30)).await;
    Instance { _child: child, url }
}

/// `GET /products/{id}`: its price and whether it came from the cache.
async fn product(http: &reqwest::Client, shop: &Instance, id: u32) -> (i64, bool) {
    let response = http
        .get(format!("{}/products/{id}", shop.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let hit = response.headers()["x-cache"] == "hit";
    let body: Value = response.json().await.unwrap();
    (body["price_cents"].as_i64().unwrap(), hit)
}

async fn set_price(http: &reqwest::Client, shop: &Instance, id: u32, price: i64) {
    let response = http
        .put(format!("{}/products/{id}", shop.url))
        .bearer_auth("staff-token")
        .json(&json!({ "price_cents": price }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// A price changed on `a` is read fresh from `b`; `b`'s other cached products stay cached.
async fn a_change_on_one_shop_is_fresh_on_the_other(a: &Instance, b: &Instance) {
    let http = reqwest::Client::new();
    // `b` listens once it has started; until then it may miss a message (and drops its cache
    // when it starts listening). Wait until one change made on `a` reaches it.
    let (warm, _) = product(&http, b, 3).await;
    set_price(&http, a, 3, warm + 1).await;
    let mut reached = false;
    for _ in 0..100 {
        if product(&http, b, 3).await.0 == warm + 1 {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reached, "b never saw a change made on a");

    let (before, _) = product(&http, b, 1).await;
    assert_eq!(product(&http, b, 1).await, (before, true), "cached in b");
    let (other, _) = product(&http, b, 2).await;
    assert_eq!(product(&http, b, 2).await, (other, true));

    set_price(&http, a, 1, before + 500).await;
    let mut fresh = false;
    for _ in 0..100 {
        if product(&http, b, 1).await.0 == before + 500 {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fresh, "changed on a, still stale on b after a second");
    assert_eq!(
        product(&http, b, 2).await,
        (other, true),
        "only the changed product's answer is dropped"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set CQRS_POSTGRES_URL"]
async fn two_shops_on_one_postgres_database_serve_fresh_prices() {
    let url = std::env::var("CQRS_POSTGRES_URL").expect("this test needs CQRS_POSTGRES_URL");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(PgConnectOptions::from_str(&url).unwrap())
        .await
        .expect("CQRS_POSTGRES_URL is set but PostgreSQL does not answer");
    let schema = format!("shop_instances_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let database = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    {
        let a = start(&["--database", &database]).await;
        let b = start(&["--database", &database]).await;
        a_change_on_one_shop_is_fresh_on_the_other(&a, &b).await;
        a_change_on_one_shop_is_fresh_on_the_other(&b, &a).await;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs Redis: set CQRS_REDIS_URL"]
async fn two_shops_sharing_redis_serve_fresh_prices() {
    let redis = std::env::var("CQRS_REDIS_URL").expect("this test needs CQRS_REDIS_URL");
    let file =
        std::env::temp_dir().join(format!("cqrs-shop-instances-{}.db", uuid::Uuid::now_v7()));
    let database = file.to_str().unwrap().to_owned();
    {
        let a = start(&["--database", &database, "--redis", &redis]).await;
        let b = start(&["--database", &database, "--redis", &redis]).await;
        a_change_on_one_shop_is_fresh_on_the_other(&a, &b).await;
        a_change_on_one_shop_is_fresh_on_the_other(&b, &a).await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{database}{suffix}"));
    }
}
