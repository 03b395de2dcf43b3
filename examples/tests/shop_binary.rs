//! The `shop` binary itself: `describe`, `describe --mermaid`, and serving on the port it prints.

mod support;

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
    let args = ["--database", db.0.to_str().unwrap()];
    let (mut shop, url) = support::spawn_shop(&args, Duration::from_secs(30)).await;
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

// ---- shutdown: SIGTERM like Ctrl-C, within the grace period, the database closed -------------

/// Starts the shop on `db` on a free port with `extra` arguments; the child (killed if dropped)
/// and the address it listens on.
async fn start(db: &TempDb, extra: &[&str]) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut shop = Command::new(SHOP)
        .args(["--database", db.0.to_str().unwrap(), "--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the shop starts");
    let mut lines = BufReader::new(shop.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the shop prints where it listens within 30 s")
        .unwrap()
        .expect("a line");
    let addr = first
        .strip_prefix("shop listening on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();
    (shop, addr)
}

fn temp_db() -> TempDb {
    TempDb(std::env::temp_dir().join(format!("cqrs-shop-bin-{}.db", uuid::Uuid::now_v7())))
}

/// Sends SIGTERM, as `docker stop` and Kubernetes do.
fn terminate(shop: &tokio::process::Child) {
    let pid = shop.id().expect("the shop runs").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the shop to exit (panics after `within`), and says how long it took.
async fn exits_within(shop: &mut tokio::process::Child, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(within, shop.wait())
        .await
        .unwrap_or_else(|_| panic!("the shop did not stop within {within:?}"))
        .unwrap();
    assert!(status.success(), "the shop stopped with {status}");
    started.elapsed()
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("the connection was not closed within {within:?}"))
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_stops_with_the_log_checkpointed() {
    use tokio::io::AsyncWriteExt;
    let db = temp_db();
    // The default grace period (10 s).
    let (mut shop, addr) = start(&db, &[]).await;

    // A request whose head is in but whose body is not: in flight when SIGTERM comes.
    let body = r#"{"name":"Lamp","price_cents":1200,"stock":3}"#;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /products HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer staff-token\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Time for the head to be read and the handler to wait for the body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    terminate(&shop);

    // New connections are refused once the signal is handled ..
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections still accepted 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // .. the one in flight is answered, and then closed.
    client.write_all(body.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut client, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    exits_within(&mut shop, Duration::from_secs(15)).await;
    // The pool was closed: the write-ahead log is folded into the file.
    let wal = std::fs::metadata(format!("{}-wal", db.0.display())).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the -wal file still holds {wal} bytes");

    let reopened = cqrs_examples::shop::Db::connect(db.0.to_str().unwrap())
        .await
        .unwrap();
    let cqrs_examples::shop::Db::Sqlite(pool) = &reopened else {
        unreachable!()
    };
    let lamps: i64 =
        cqrs_core::sqlx::query_scalar("SELECT COUNT(*) FROM products WHERE name = 'Lamp'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(lamps, 1);
    reopened.close().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let db = temp_db();
    let (mut shop, addr) = start(&db, &["--header-timeout", "1s"]).await;

    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /products/1 HTTP/1.1\r\nHost: shop\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Both are closed by the server (a generous bound: "not never").
    read_to_close(&mut stalled, Duration::from_secs(15)).await;
    read_to_close(&mut idle, Duration::from_secs(15)).await;

    terminate(&shop);
    exits_within(&mut shop, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn stalled_and_idle_connections_do_not_delay_shutdown_past_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let db = temp_db();
    // A header timeout far longer than the test: only the grace period can end these.
    let (mut shop, addr) = start(&db, &["--grace", "1s", "--header-timeout", "120s"]).await;

    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /products/1 HTTP/1.1\r\nHost: shop\r\n")
        .await
        .unwrap();
    // A keep-alive connection, idle after one answered request.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /products/1 HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut kept, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    terminate(&shop);
    let took = exits_within(&mut shop, Duration::from_secs(60)).await;
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    read_to_close(&mut stalled, Duration::from_secs(5)).await;
}
