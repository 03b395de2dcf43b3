//! The `shop` binary itself: `describe`, `describe --mermaid`, and serving on the port it prints.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SHOP: &str = env!("CARGO_BIN_EXE_shop");

async fn run(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = Command::new(SHOP)
        .args(args)
        .output()
        .await
        .expect("the shop binary runs");
    (
        output.status,
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn describe_lists_every_message_its_handler_layers_and_source() {
    let (status, out, err) = run(&["describe"]).await;
    assert!(status.success(), "{err}");

    for (message, handler, file) in [
        ("users.register", "RegisterUserHandler", "users.rs"),
        ("products.create", "CreateProductHandler", "products.rs"),
        ("products.update", "UpdateProductHandler", "products.rs"),
        (
            "products.release_stock",
            "ReleaseStockHandler",
            "products.rs",
        ),
        ("orders.place", "PlaceOrderHandler", "orders.rs"),
        ("orders.cancel", "CancelOrderHandler", "orders.rs"),
        ("users.get", "GetUserHandler", "users.rs"),
        ("products.get", "GetProductHandler", "products.rs"),
        ("orders.get", "GetOrderHandler", "orders.rs"),
    ] {
        let line = format!("  {message} -> {handler}  (examples/src/shop/{file}:");
        assert!(out.contains(&line), "no `{line}` in:\n{out}");
    }
    // Each command and query's layers follow on the next line, outermost first.
    let layers = |message: &str| -> &str {
        let at = out.find(&format!("  {message} -> ")).unwrap();
        out[at..].lines().nth(1).unwrap().trim()
    };
    let place = layers("orders.place");
    for layer in [
        "trace",
        "middleware(1)",
        "timeout(5s)",
        "authorize(permissions=[order:place])",
        "validate",
        "idempotency",
        "retry(",
        "transaction(",
        "handler",
    ] {
        assert!(
            place.contains(layer),
            "orders.place lacks `{layer}`: {place}"
        );
    }
    assert!(layers("products.get").contains("cache(ttl=30s, vary_by=[id]"));
    assert!(layers("users.register").contains("transaction(isolation=serializable)"));
    assert!(layers("orders.get").contains("resource=order_id"));

    assert!(out.contains("  orders.event -> "), "{out}");
    for handler in [
        "OrderSummaries (examples/src/shop/orders.rs:",
        "RestockOnCancel (",
    ] {
        assert!(out.contains(handler), "no `{handler}` in:\n{out}");
    }
    assert!(out.contains("  users.registered -> SendWelcomeMail (examples/src/shop/users.rs:"));
}

#[tokio::test]
async fn describe_mermaid_draws_command_event_handler_command() {
    let (status, out, err) = run(&["describe", "--mermaid"]).await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("flowchart LR\n"), "{out}");
    for edge in [
        // a command, its handler, the event it emits ..
        "c_orders_cancel --> h_CancelOrderHandler",
        "h_CancelOrderHandler -- emits --> e_orders_event",
        "h_PlaceOrderHandler -- emits --> e_orders_event",
        // .. the event's handlers ..
        "e_orders_event --> h_OrderSummaries",
        "e_orders_event --> h_RestockOnCancel",
        // .. and the command one of them sends, to its handler.
        "h_RestockOnCancel -- sends --> c_products_release_stock",
        "c_products_release_stock --> h_ReleaseStockHandler",
        "h_RegisterUserHandler -- emits --> e_users_registered",
        "e_users_registered --> h_SendWelcomeMail",
        "h_UpdateProductHandler -. invalidates .-> q_products_get",
    ] {
        assert!(out.contains(edge), "no `{edge}` in:\n{out}");
    }
}

#[tokio::test]
async fn bad_arguments_print_the_usage() {
    let (status, _, err) = run(&["--port", "eighty"]).await;
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("`eighty` is not a port number"), "{err}");
    assert!(err.contains("usage:"), "{err}");
}

/// A SQLite file removed (with its `-wal` and `-shm`) when dropped, even by a failing test.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[tokio::test]
async fn serves_the_seeded_catalogue_on_the_port_it_prints() {
    let db =
        TempDb(std::env::temp_dir().join(format!("cqrs-shop-bin-{}.db", uuid::Uuid::now_v7())));
    // Dropped (so killed) before `db` is, when the test ends or fails.
    let mut shop = Command::new(SHOP)
        .args(["--database", db.0.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the shop starts");

    let stdout = shop.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the shop prints where it listens within 30 s")
        .unwrap()
        .expect("a line");
    let url = first
        .strip_prefix("shop listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let response = reqwest::get(format!("{url}/products/1")).await;
    shop.kill().await.unwrap();

    let response = response.expect("the shop answers");
    assert_eq!(response.status(), 200);
    let product: serde_json::Value = response.json().await.unwrap();
    assert_eq!(product["name"], "Mechanical keyboard");
}

// ---- startup errors: what and where, quickly, one line, a non-zero exit ----------------------

/// Runs the shop expecting it to refuse to start; its stdout and stderr, and how long it took.
async fn refused(args: &[&str]) -> (String, String, Duration) {
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(SHOP).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("the shop gives up within 60 s")
    .expect("the shop binary runs");
    let elapsed = started.elapsed();
    let (out, err) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert!(!output.status.success(), "the shop started: {out}{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr:\n{err}");
    (out, err, elapsed)
}

#[tokio::test]
async fn a_port_in_use_is_said_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let db =
        TempDb(std::env::temp_dir().join(format!("cqrs-shop-bin-{}.db", uuid::Uuid::now_v7())));

    let (_, err, _) = refused(&["--database", db.0.to_str().unwrap(), "--port", &port]).await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("already in use"), "{err}");
    assert!(
        !db.0.exists(),
        "the database was created before the port was checked"
    );
}

#[tokio::test]
async fn a_sqlite_file_that_cannot_be_opened_is_named() {
    let (_, err, _) = refused(&["--database", "/nonexistent/dir/shop.db", "--port", "0"]).await;
    assert!(err.contains("/nonexistent/dir/shop.db"), "{err}");
    assert!(err.contains("cannot open"), "{err}");
    assert!(err.contains("/nonexistent/dir does not exist"), "{err}");
}

#[tokio::test]
async fn a_postgres_server_that_does_not_answer_is_said_quickly_without_the_password() {
    // A port nothing listens on: bound, then freed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://shop:hunter2-secret@127.0.0.1:{port}/shop");
    let (out, err, elapsed) = refused(&["--database", &url, "--port", "0"]).await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
    for printed in [&out, &err] {
        assert!(
            !printed.contains("hunter2"),
            "the password was printed: {printed}"
        );
    }
    // Not the pool's 30 s acquire timeout (the bound is generous for a loaded machine).
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}
