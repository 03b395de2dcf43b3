//! Two shop processes on one PostgreSQL database and one NATS JetStream stream: orders placed
//! and cancelled on either are projected exactly once, in order, and each cancellation puts
//! its units back once. Needs `CQRS_POSTGRES_URL` and `CQRS_NATS_URL`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{TestDatabase, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `shop --nats ..` on a free port; its child (killed on drop) and its URL.
async fn shop(database: &str, nats: &str, stream: &str) -> (Child, String) {
    let args = [
        "--database",
        database,
        "--nats",
        nats,
        "--nats-stream",
        stream,
        "--grace",
        "2s",
    ];
    support::spawn_shop(&args, Duration::from_secs(60)).await
}

/// Removes a test's event stream and its dead-letter stream.
async fn delete_streams(nats: &str, stream: &str) {
    let js = cqrs_core::async_nats::jetstream::new(
        cqrs_core::Nats::connect(nats).await.unwrap().client(),
    );
    let _ = js.delete_stream(stream).await;
    let _ = js.delete_stream(format!("{stream}_DLQ")).await;
}

/// The one number `sql` answers, on the test's PostgreSQL schema.
async fn count(database: &TestDatabase, sql: &'static str) -> i64 {
    let cqrs_examples::shop::Db::Postgres(pool) = &database.db else {
        unreachable!("the test runs on PostgreSQL")
    };
    cqrs_core::sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn post(url: &str, body: serde_json::Value) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth("alice-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn two_shops_project_each_order_once_and_restock_each_cancellation_once() {
    let nats = std::env::var("CQRS_NATS_URL").expect("this test needs NATS: set CQRS_NATS_URL");
    let database = TestDatabase::postgres().await;
    let stream = format!("SHOP{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (mut a, a_url) = shop(&database.url(), &nats, &stream).await;
    let (mut b, b_url) = shop(&database.url(), &nats, &stream).await;
    let stock_before = count(&database, "SELECT stock FROM products WHERE id = 1").await;

    let mut orders = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 { &a_url } else { &b_url };
        let receipt = post(
            &format!("{url}/orders"),
            serde_json::json!({"product_id": 1, "quantity": 1}),
        )
        .await;
        orders.push(receipt["order_id"].as_str().unwrap().to_owned());
    }
    // Half of them cancelled on the other shop than the one that took them.
    for (i, order) in orders.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let url = if i % 4 == 0 { &b_url } else { &a_url };
        post(
            &format!("{url}/orders/{order}/cancel"),
            serde_json::json!({}),
        )
        .await;
    }

    eventually(
        "every order projected, the cancelled ones as cancelled",
        Duration::from_secs(60),
        || async {
            let placed = count(
                &database,
                "SELECT COUNT(*) FROM order_summaries WHERE status = 'placed'",
            )
            .await;
            let cancelled = count(
                &database,
                "SELECT COUNT(*) FROM order_summaries WHERE status = 'cancelled'",
            )
            .await;
            (placed == 10 && cancelled == 10).then_some(())
        },
    )
    .await;
    eventually(
        "the units of every cancellation back in stock",
        Duration::from_secs(60),
        || async {
            let stock = count(&database, "SELECT stock FROM products WHERE id = 1").await;
            (stock == stock_before - 10).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &database,
            "SELECT COUNT(*) FROM processed_events WHERE handler = 'order_summaries'"
        )
        .await,
        30,
        "30 events, each projected once"
    );
    assert_eq!(
        count(&database, "SELECT stock FROM products WHERE id = 1").await,
        stock_before - 10,
        "no cancellation restocked twice"
    );

    a.kill().await.unwrap();
    b.kill().await.unwrap();
    delete_streams(&nats, &stream).await;
    database.remove().await;
}

const NOTIFIER: &str = env!("CARGO_BIN_EXE_order_notifier");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set CQRS_NATS_URL"]
async fn another_binary_handles_the_shop_s_events_by_their_name() {
    let nats = std::env::var("CQRS_NATS_URL").expect("this test needs NATS: set CQRS_NATS_URL");
    let database = TestDatabase::sqlite().await;
    let notifier_db = std::env::temp_dir().join(format!(
        "cqrs-notifier-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let stream = format!("SHOP{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (mut shop, url) = shop(&database.url(), &nats, &stream).await;

    let mut notifier = Command::new(NOTIFIER)
        .args(["--nats", &nats, "--nats-stream", &stream, "--database"])
        .arg(&notifier_db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the notifier starts");
    let mut lines = BufReader::new(notifier.stdout.take().unwrap()).lines();
    let mut next_line = async move || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the notifier says something within 30 s")
            .unwrap()
            .expect("a line")
    };
    assert_eq!(next_line().await, "order_notifier ready");

    let receipt = post(
        &format!("{url}/orders"),
        serde_json::json!({"product_id": 1, "quantity": 2}),
    )
    .await;
    let order = receipt["order_id"].as_str().unwrap().to_owned();
    assert_eq!(
        next_line().await,
        format!("notify: order {order} placed by alice (2 units)")
    );
    post(
        &format!("{url}/orders/{order}/cancel"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(
        next_line().await,
        format!("notify: order {order} cancelled")
    );

    notifier.kill().await.unwrap();
    shop.kill().await.unwrap();
    delete_streams(&nats, &stream).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", notifier_db.display()));
    }
    database.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn a_shop_killed_mid_stream_loses_nothing_the_other_finishes() {
    let nats = std::env::var("CQRS_NATS_URL").expect("this test needs NATS: set CQRS_NATS_URL");
    let database = TestDatabase::postgres().await;
    let stream = format!("SHOP{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (mut a, a_url) = shop(&database.url(), &nats, &stream).await;
    let (mut b, b_url) = shop(&database.url(), &nats, &stream).await;

    // A takes orders while its relay publishes and its consumers project; it is killed (-9)
    // in the middle of that, with events in its outbox and in its handlers.
    let mut placed = 0;
    let sending = {
        let a_url = a_url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ok = 0;
            for _ in 0..40 {
                let sent = client
                    .post(format!("{a_url}/orders"))
                    .bearer_auth("alice-token")
                    .json(&serde_json::json!({"product_id": 3, "quantity": 1}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => ok += 1,
                    _ => break,
                }
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.kill().await.unwrap();
    placed += sending.await.unwrap();
    for _ in 0..10 {
        post(
            &format!("{b_url}/orders"),
            serde_json::json!({"product_id": 3, "quantity": 1}),
        )
        .await;
        placed += 1;
    }
    // What A committed is in the database whatever it managed to publish: B's relay sends it
    // once A's claims run out, and B's consumers take A's unanswered events after `ack_wait`.
    let committed = count(&database, "SELECT COUNT(*) FROM cqrs_events").await;
    assert!(committed >= placed, "every answered order is stored");
    eventually(
        "B projects every committed order",
        Duration::from_secs(120),
        || async {
            (count(&database, "SELECT COUNT(*) FROM order_summaries").await == committed)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &database,
            "SELECT COUNT(*) FROM processed_events WHERE handler = 'order_summaries'"
        )
        .await,
        committed,
        "each projected once"
    );
    // Rows A published but had not marked sent when it died are marked by B once A's claim
    // runs out (their second publish is dropped by JetStream as a duplicate).
    eventually("an empty outbox", Duration::from_secs(60), || async {
        (count(
            &database,
            "SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NULL",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;

    b.kill().await.unwrap();
    delete_streams(&nats, &stream).await;
    database.remove().await;
}
