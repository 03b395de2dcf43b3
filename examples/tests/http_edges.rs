//! The shop's HTTP edges, over real HTTP on loopback (issue 16, items 2, 5 and 8): what a
//! client gets when a request goes wrong before, in or under the bus, and what the log gets.
//!
//! The log is captured: this test binary installs one `tracing` subscriber, the shop's format
//! (`fmt`, level `info`), writing to memory; each test finds its lines by the correlation ids it
//! sent, so the tests can run in parallel.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use cqrs_core::prelude::*;
use cqrs_core::sqlx;
use cqrs_core::testing::stub;
use cqrs_examples::shop::users::{RegisterUser, User};
use cqrs_examples::shop::{self, Db};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

const STAFF: &str = "staff-token";

// ---- the captured log ----------------------------------------------------------------------

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged so far in this test binary.
fn log() -> String {
    static LOG: OnceLock<Captured> = OnceLock::new();
    let captured = LOG.get_or_init(|| {
        let captured = Captured(Arc::default());
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        captured
    });
    String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned()
}

/// The log lines that name `id`.
fn lines_of(id: Uuid) -> Vec<String> {
    let id = id.to_string();
    log()
        .lines()
        .filter(|line| line.contains(&id))
        .map(str::to_owned)
        .collect()
}

// ---- a shop on a free port -----------------------------------------------------------------

struct Shop {
    url: String,
    http: reqwest::Client,
}

impl Shop {
    /// The shop on a fresh in-memory database, its bus as `customize` makes it.
    async fn start(customize: impl FnOnce(BusBuilder) -> BusBuilder) -> Shop {
        log();
        let db = Db::connect("sqlite::memory:").await.unwrap();
        shop::migrate(&db).await.unwrap();
        let bus = customize(shop::bus_builder(&db)).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Stopped with the test's runtime.
        tokio::spawn(shop::serve(listener, bus, std::future::pending()));
        Shop {
            url,
            http: reqwest::Client::new(),
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// A response's status, headers and body as JSON (`Null` when empty), after checking that an
/// error is `application/problem+json` whose `correlation_id` is the header's.
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("the shop answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/problem+json"),
            "{status}: {body}"
        );
        let header = headers
            .get("x-correlation-id")
            .unwrap_or_else(|| panic!("{status} without x-correlation-id"));
        assert_eq!(body["correlation_id"], header.to_str().unwrap(), "{body}");
        assert_eq!(body["status"], status.as_u16(), "{body}");
        for member in ["title", "code", "detail"] {
            assert!(body[member].is_string(), "{status}: no {member}: {body}");
        }
    }
    (status, headers, body)
}

fn user(email: &str) -> Value {
    json!({ "email": email, "name": "Ada" })
}

// ---- item 2: error bodies never carry internals --------------------------------------------

/// `RegisterUser` failing the ways a database fails: a real unique violation (SQLite's own
/// text), a pool that is closed, and a conflict the handler wrote for the client.
async fn failing_registrations() -> Shop {
    let store = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE twins (email TEXT PRIMARY KEY)")
        .execute(&store)
        .await
        .unwrap();
    let closed = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    closed.close().await;
    Shop::start(move |builder| {
        builder.override_handler::<RegisterUser, _, _>(stub(move |cmd: RegisterUser| {
            let (store, closed) = (store.clone(), closed.clone());
            async move {
                match cmd.email.as_str() {
                    "twin@example.com" => {
                        for _ in 0..2 {
                            sqlx::query("INSERT INTO twins (email) VALUES ($1)")
                                .bind(&cmd.email)
                                .execute(&store)
                                .await?;
                        }
                    }
                    "down@example.com" => {
                        sqlx::query("SELECT 1").execute(&closed).await?;
                    }
                    _ => return Err(Error::conflict("this email is on hold")),
                }
                Ok(User {
                    id: 1,
                    email: cmd.email,
                    name: cmd.name,
                })
            }
        }))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_answer_a_stable_problem_and_log_their_text() {
    let shop = failing_registrations().await;
    let register = |email: &str, id: Uuid| {
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .header("X-Correlation-Id", id.to_string())
            .json(&user(email))
    };

    // A unique violation: a 409 whose body says nothing of SQLite; the log has it all.
    let id = Uuid::now_v7();
    let (status, headers, problem) = call(register("twin@example.com", id)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["title"], "Conflict");
    assert_eq!(problem["code"], "conflict");
    assert_eq!(
        problem["detail"],
        "the request conflicts with the current state; it may succeed if sent again"
    );
    let text = problem.to_string();
    for internal in ["UNIQUE", "twins", "database", "2067"] {
        assert!(
            !text.contains(internal),
            "`{internal}` reached the client: {text}"
        );
    }
    assert!(headers.get("retry-after").is_none());
    let lines = lines_of(id);
    assert!(
        lines.iter().any(
            |l| l.contains("cqrs::http") && l.contains("UNIQUE constraint failed: twins.email")
        ),
        "the driver's text is logged with the correlation id: {lines:#?}"
    );

    // A pool that is closed: a 503 with Retry-After, the cause only in the log.
    let id = Uuid::now_v7();
    let (status, headers, problem) = call(register("down@example.com", id)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "unavailable");
    assert_eq!(problem["title"], "Service unavailable");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert!(!problem.to_string().contains("pool"), "{problem}");
    let lines = lines_of(id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cqrs::http") && l.contains("closed pool")),
        "{lines:#?}"
    );

    // What the handler wrote for the client reaches it.
    let (status, _, problem) = call(register("held@example.com", Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["detail"], "this email is on hold");
}

// ---- item 5: every edge answers a problem --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_wrong_methods_and_bad_path_parameters_are_problems() {
    let shop = Shop::start(|b| b).await;
    let mine = Uuid::now_v7();

    let (status, headers, problem) = call(
        shop.http
            .get(shop.at("/no/such/thing"))
            .header("X-Correlation-Id", mine.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["code"], "not_found");
    assert_eq!(headers["x-correlation-id"], mine.to_string().as_str());

    let (status, headers, problem) =
        call(shop.http.delete(shop.at("/products/1")).bearer_auth(STAFF)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{problem}");
    assert_eq!(problem["code"], "method_not_allowed");
    let allow = headers["allow"].to_str().unwrap().to_owned();
    assert!(
        allow.contains("GET") && allow.contains("PUT"),
        "Allow: {allow}"
    );

    for path in ["/products/abc", "/products/99999999999999999999999"] {
        let (status, _, problem) = call(shop.http.get(shop.at(path))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert_eq!(problem["code"], "bad_request");
    }
    let (status, _, problem) = call(
        shop.http
            .put(shop.at("/products/abc"))
            .bearer_auth(STAFF)
            .json(&json!({ "price_cents": 1 })),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a hand-written route: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_json_within_the_limit() {
    let shop = Shop::start(|b| b).await;
    let post = |content_type: Option<&str>, body: String| {
        let request = shop
            .http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .body(body);
        match content_type {
            Some(value) => request.header("content-type", value),
            None => request,
        }
    };
    let body = |email: &str| user(email).to_string();

    let (status, _, problem) = call(post(None, body("a@example.com"))).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no Content-Type: {problem}"
    );
    assert_eq!(problem["code"], "unsupported_media_type");
    for wrong in [
        "text/plain",
        "application/xml",
        "application/json; charset=latin1",
        "json",
    ] {
        let (status, _, problem) = call(post(Some(wrong), body("a@example.com"))).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{wrong}: {problem}"
        );
    }

    // Media types are case-insensitive; parameters and `+json` suffixes are JSON too.
    for (i, right) in [
        "application/json",
        "Application/JSON; charset=UTF-8",
        "application/json;charset=\"utf-8\"",
        "application/vnd.shop.user+json",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, _, created) =
            call(post(Some(right), body(&format!("u{i}@example.com")))).await;
        assert_eq!(status, StatusCode::CREATED, "{right}: {created}");
    }
    let product = call(
        shop.http
            .post(shop.at("/products"))
            .bearer_auth(STAFF)
            .json(&json!({ "name": "Lamp", "price_cents": 100, "stock": 1 })),
    )
    .await
    .2["id"]
        .clone();
    let (status, _, updated) = call(
        shop.http
            .put(shop.at(&format!("/products/{product}")))
            .bearer_auth(STAFF)
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"price_cents": 90}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");

    // Not JSON: 400. JSON of the wrong shape: 422 naming the body.
    let (status, _, problem) = call(post(Some("application/json"), "{ not json".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["code"], "bad_request");
    let (status, _, problem) = call(post(Some("application/json"), r#"{"email": 5}"#.into())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "body");

    // Over the shop's limit: 413, the user not created.
    let name = "x".repeat(shop::routes::BODY_LIMIT);
    let big = json!({ "email": "big@example.com", "name": name }).to_string();
    let (status, _, problem) = call(post(Some("application/json"), big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["code"], "content_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_read_as_the_rfcs_say() {
    let shop = Shop::start(|b| b).await;
    let register = |email: &str| {
        shop.http
            .post(shop.at("/users"))
            .bearer_auth(STAFF)
            .json(&user(email))
    };

    // Idempotency-Key: bare or as a structured-field string; anything else a 400 naming it.
    let (status, _, first) =
        call(register("k@example.com").header("Idempotency-Key", "\"k-1\"")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _, again) = call(register("k@example.com").header("Idempotency-Key", "k-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, first, "the same key, quoted or not");
    for bad in ["two words", "", "\"unterminated", "caf\u{e9}"] {
        let (status, _, problem) =
            call(register("k2@example.com").header("Idempotency-Key", bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{problem}"
        );
    }
    let (status, _, problem) = call(
        register("k2@example.com")
            .header("Idempotency-Key", "a")
            .header("Idempotency-Key", "b"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a key sent twice: {problem}"
    );

    // X-Correlation-Id: a UUID, surrounding blanks aside; anything else a 400.
    let mine = Uuid::now_v7();
    let (status, headers, _) = call(
        shop.http
            .get(shop.at("/products/1"))
            .header("X-Correlation-Id", format!(" {mine} ")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-correlation-id"], mine.to_string().as_str());
    let (status, headers, problem) = call(
        shop.http
            .get(shop.at("/products/1"))
            .header("X-Correlation-Id", "not-a-uuid"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_ne!(headers["x-correlation-id"], "not-a-uuid");

    // The authentication scheme is case-insensitive.
    let (status, _, created) = call(
        shop.http
            .post(shop.at("/users"))
            .header("Authorization", "bearer staff-token")
            .json(&user("lower@example.com")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

// ---- item 8: refusals logged once, and no request can forge a log line ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_bus_are_logged_once_with_their_correlation_id() {
    let shop = Shop::start(|b| b).await;
    let with_id = |request: reqwest::RequestBuilder| {
        let id = Uuid::now_v7();
        (id, request.header("X-Correlation-Id", id.to_string()))
    };
    let refusals = [
        (
            "an unknown route",
            with_id(shop.http.get(shop.at("/nowhere"))),
        ),
        (
            "a refused token",
            with_id(shop.http.post(shop.at("/users")).bearer_auth("not-a-token")),
        ),
        (
            "a body that is not JSON",
            with_id(
                shop.http
                    .post(shop.at("/users"))
                    .bearer_auth(STAFF)
                    .header("content-type", "application/json")
                    .body("{"),
            ),
        ),
        (
            "a wrong method",
            with_id(shop.http.patch(shop.at("/users"))),
        ),
    ];
    for (what, (id, request)) in refusals {
        let (status, _, _) = call(request).await;
        assert!(status.is_client_error(), "{what}: {status}");
        let lines = lines_of(id);
        assert_eq!(lines.len(), 1, "{what} is logged once: {lines:#?}");
        assert!(lines[0].contains("cqrs::http"), "{lines:#?}");
        assert!(
            lines[0].contains(&format!("status={}", status.as_u16())),
            "{lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_sends_cannot_forge_a_log_line() {
    let shop = Shop::start(|b| b).await;
    let forged = "2026-12-03T00:00:00.000000Z  INFO cqrs::audit: forged";
    let encoded = forged.replace(' ', "%20");
    // A path parameter that does not parse (refused, its value quoted in the detail), one that
    // does and reaches the bus (an order id), and an unknown path.
    for (method, path) in [
        (reqwest::Method::GET, format!("/products/1%0A{encoded}")),
        (reqwest::Method::PUT, format!("/products/1%0D%0A{encoded}")),
        (
            reqwest::Method::POST,
            format!("/orders/x%0A{encoded}/cancel"),
        ),
        (reqwest::Method::GET, format!("/nowhere%0A{encoded}")),
    ] {
        let (status, _, _) = call(
            shop.http
                .request(method, shop.at(&path))
                .bearer_auth(STAFF)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let log = log();
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    let quoted: Vec<&str> = log.lines().filter(|l| l.contains("forged")).collect();
    assert!(
        quoted.len() >= 4,
        "the refusals quote the paths: {quoted:#?}"
    );
    for line in quoted {
        assert!(
            !line.starts_with("2026-12-03T00:00:00"),
            "a line of the client's making: {line:?}"
        );
        assert!(line.contains("correlation_id="), "{line:?}");
    }
}
