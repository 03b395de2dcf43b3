//! `#[retry(..)]` (DESIGN §5, layer 8): the inner layers run again on the listed statuses (by
//! default `Unavailable` and `Conflict`), up to `max_attempts` in all; other errors go straight
//! to the caller. Each attempt starts afresh: events emitted by a failed attempt are dropped.
//! Delays are waited on tokio's paused clock, so these tests do not sleep (except the ones on a
//! real database, whose delays are a millisecond). A transactional handler gets a fresh
//! transaction per attempt: what a failed attempt wrote is rolled back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use support::{TestDb, insert_thing};

mod support;

/// Attempts per key, shared by the handlers.
#[derive(Default)]
struct Attempts(Mutex<HashMap<String, u32>>);

impl Attempts {
    fn next(&self, key: impl Into<String>) -> u32 {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(key.into()).or_default();
        *n += 1;
        *n
    }
    fn of(&self, key: &str) -> u32 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// Fails its first `failures` attempts with `status`, then answers.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct Flaky {
    key: String,
    failures: u32,
    status: Status,
}

impl Flaky {
    fn new(key: &str, failures: u32, status: Status) -> Self {
        Flaky {
            key: key.to_owned(),
            failures,
            status,
        }
    }
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AttemptMade {
    key: String,
    attempt: u32,
}

async fn flaky(
    attempts: &Attempts,
    cmd: Flaky,
    cx: &mut CommandContext,
    label: &str,
) -> Result<String, Error> {
    let attempt = attempts.next(&cmd.key);
    cx.emit(AttemptMade {
        key: cmd.key.clone(),
        attempt,
    });
    if attempt <= cmd.failures {
        if cmd.status == Status::Internal && cmd.key.contains("panic") {
            panic!("attempt {attempt} panicked");
        }
        return Err(Error::new(cmd.status, format!("attempt {attempt} failed")));
    }
    Ok(format!("{label}: {} ok on attempt {attempt}", cmd.key))
}

#[command_handler(Flaky)]
#[retry(max_attempts = 3, delay = "10ms", backoff = 2.0, on = [Unavailable])]
struct FlakyHandler {
    attempts: Arc<Attempts>,
}

impl CommandHandler<Flaky> for FlakyHandler {
    async fn handle(&self, cmd: Flaky, cx: &mut CommandContext) -> Result<String, Error> {
        flaky(&self.attempts, cmd, cx, "listed").await
    }
}

/// The same command, with the default statuses and a longer policy.
#[command_handler(Flaky)]
#[retry(max_attempts = 4)]
struct DefaultsHandler {
    attempts: Arc<Attempts>,
}

impl CommandHandler<Flaky> for DefaultsHandler {
    async fn handle(&self, cmd: Flaky, cx: &mut CommandContext) -> Result<String, Error> {
        flaky(&self.attempts, cmd, cx, "defaults").await
    }
}

/// Every option at once; also retries `Internal`, so a panic is retried.
#[command_handler(Flaky)]
#[retry(max_attempts = 5, delay = "1s", backoff = 3.0, max_delay = "2s", jitter = true, on = [Internal, Unavailable])]
struct EverythingHandler {
    attempts: Arc<Attempts>,
}

impl CommandHandler<Flaky> for EverythingHandler {
    async fn handle(&self, cmd: Flaky, cx: &mut CommandContext) -> Result<String, Error> {
        flaky(&self.attempts, cmd, cx, "everything").await
    }
}

#[event_handler(AttemptMade)]
struct RecordAttempt {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
}

impl EventHandler<AttemptMade> for RecordAttempt {
    async fn handle(&self, e: &AttemptMade, _cx: &mut EventContext) -> Result<(), Error> {
        self.seen.lock().unwrap().push((e.key.clone(), e.attempt));
        Ok(())
    }
}

struct World {
    bus: Bus,
    attempts: Arc<Attempts>,
    seen: Arc<Mutex<Vec<(String, u32)>>>,
}

fn world<H: cqrs_core::Handler>() -> World {
    let attempts = Arc::new(Attempts::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .discover(false)
        .register::<H>()
        .register::<RecordAttempt>()
        .register::<FlakyQueryHandler>()
        .register::<UnreliableProjection>()
        .provide(attempts.clone())
        .provide(seen.clone())
        .build()
        .unwrap();
    World {
        bus,
        attempts,
        seen,
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_that_succeeds_on_its_third_attempt_returns_its_output_and_reports_three() {
    let w = world::<FlakyHandler>();
    let report = w
        .bus
        .send_with_report(Flaky::new("a", 2, Status::Unavailable))
        .await
        .unwrap();
    assert_eq!(report.output, "listed: a ok on attempt 3");
    assert_eq!(report.attempts, 3);
    assert_eq!(w.attempts.of("a"), 3);
}

#[tokio::test(start_paused = true)]
async fn only_the_successful_attempts_events_are_published() {
    let w = world::<FlakyHandler>();
    let report = w
        .bus
        .send_with_report(Flaky::new("b", 2, Status::Unavailable))
        .await
        .unwrap();
    assert_eq!(report.events, ["AttemptMade"]);
    assert_eq!(*w.seen.lock().unwrap(), [("b".to_owned(), 3)]);
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_last_error_is_returned_and_nothing_is_published() {
    let w = world::<FlakyHandler>();
    let err = w
        .bus
        .send(Flaky::new("c", 10, Status::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(err.message(), "attempt 3 failed");
    assert_eq!(
        w.attempts.of("c"),
        3,
        "max_attempts counts the first attempt"
    );
    assert!(w.seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_status_that_is_not_listed_is_not_retried() {
    let w = world::<FlakyHandler>();
    for (key, status) in [
        ("conflict", Status::Conflict),
        ("not-found", Status::NotFound),
        ("internal", Status::Internal),
        ("forbidden", Status::Forbidden),
        ("timeout", Status::Timeout),
    ] {
        let err = w.bus.send(Flaky::new(key, 1, status)).await.unwrap_err();
        assert_eq!(err.status(), status, "{key}");
        assert_eq!(err.message(), "attempt 1 failed");
        assert_eq!(w.attempts.of(key), 1, "{key} was not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn without_on_unavailable_and_conflict_are_retried_and_nothing_else() {
    let w = world::<DefaultsHandler>();
    let out = w
        .bus
        .send(Flaky::new("unavailable", 3, Status::Unavailable))
        .await
        .unwrap();
    assert_eq!(out, "defaults: unavailable ok on attempt 4");
    let out = w
        .bus
        .send(Flaky::new("conflict", 2, Status::Conflict))
        .await
        .unwrap();
    assert_eq!(out, "defaults: conflict ok on attempt 3");
    for (key, status) in [
        ("internal", Status::Internal),
        ("timeout", Status::Timeout),
        ("not-found", Status::NotFound),
    ] {
        let err = w.bus.send(Flaky::new(key, 1, status)).await.unwrap_err();
        assert_eq!(err.status(), status);
        assert_eq!(w.attempts.of(key), 1, "{key}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_option_together_still_retries_up_to_max_attempts() {
    let w = world::<EverythingHandler>();
    let report = w
        .bus
        .send_with_report(Flaky::new("d", 4, Status::Unavailable))
        .await
        .unwrap();
    assert_eq!(report.output, "everything: d ok on attempt 5");
    assert_eq!(report.attempts, 5);
    let err = w
        .bus
        .send(Flaky::new("e", 9, Status::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "attempt 5 failed");
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_an_internal_error_and_is_retried_when_internal_is_listed() {
    let w = world::<EverythingHandler>();
    let report = w
        .bus
        .send_with_report(Flaky::new("panic", 2, Status::Internal))
        .await
        .unwrap();
    assert_eq!(report.output, "everything: panic ok on attempt 3");
    assert_eq!(report.attempts, 3);

    let w = world::<FlakyHandler>();
    let err = w
        .bus
        .send(Flaky::new("panic", 2, Status::Internal))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Internal);
    assert!(err.message().contains("attempt 1 panicked"), "{err}");
    assert_eq!(w.attempts.of("panic"), 1);
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u32)]
struct FlakyQuery {
    key: String,
    failures: u32,
}

#[query_handler(FlakyQuery)]
#[retry(max_attempts = 3, delay = "5ms")]
#[cached_query(ttl = "1h")]
struct FlakyQueryHandler {
    attempts: Arc<Attempts>,
}

impl QueryHandler<FlakyQuery> for FlakyQueryHandler {
    async fn handle(&self, q: FlakyQuery, _cx: &QueryContext) -> Result<u32, Error> {
        let attempt = self.attempts.next(&q.key);
        if attempt <= q.failures {
            return Err(Error::unavailable("replica lagging"));
        }
        Ok(attempt * 100)
    }
}

#[tokio::test(start_paused = true)]
async fn a_query_is_retried_too_and_its_answer_cached_once_it_succeeds() {
    let w = world::<FlakyHandler>();
    let q = FlakyQuery {
        key: "q".into(),
        failures: 2,
    };
    let report = w.bus.query_with_report(q.clone()).await.unwrap();
    assert_eq!(report.output, 300);
    assert_eq!(report.attempts, 3);
    assert!(!report.cache_hit);

    let report = w.bus.query_with_report(q).await.unwrap();
    assert_eq!(report.output, 300);
    assert!(report.cache_hit);
    assert_eq!(report.attempts, 0, "a cached answer runs no attempt");
    assert_eq!(w.attempts.of("q"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_query_that_keeps_failing_caches_nothing() {
    let w = world::<FlakyHandler>();
    let q = FlakyQuery {
        key: "r".into(),
        failures: 3,
    };
    let err = w.bus.query(q.clone()).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(w.attempts.of("r"), 3);
    // The fourth run succeeds: the failure was not cached.
    assert_eq!(w.bus.query(q).await.unwrap(), 400);
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tick {
    key: String,
    failures: u32,
}

#[event_handler(Tick)]
#[retry(max_attempts = 3)]
struct UnreliableProjection {
    attempts: Arc<Attempts>,
}

impl EventHandler<Tick> for UnreliableProjection {
    async fn handle(&self, e: &Tick, _cx: &mut EventContext) -> Result<(), Error> {
        if self.attempts.next(&e.key) <= e.failures {
            return Err(Error::unavailable("projection store busy"));
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_handler_is_retried_and_only_its_final_failure_is_reported() {
    let attempts = Arc::new(Attempts::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sink = failures.clone();
    let bus = Bus::builder()
        .discover(false)
        .register::<UnreliableProjection>()
        .provide(attempts.clone())
        .on_handler_failure(move |f| {
            sink.lock()
                .unwrap()
                .push((f.handler, f.error.status(), f.error.message().into_owned()))
        })
        .build()
        .unwrap();

    bus.publish(Tick {
        key: "t1".into(),
        failures: 2,
    })
    .await
    .unwrap();
    assert_eq!(attempts.of("t1"), 3);
    assert!(failures.lock().unwrap().is_empty());

    let err = bus
        .publish(Tick {
            key: "t2".into(),
            failures: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(attempts.of("t2"), 3);
    assert_eq!(
        *failures.lock().unwrap(),
        [(
            "UnreliableProjection",
            Status::Unavailable,
            "projection store busy".to_owned()
        )]
    );
}

/// Inserts a row per attempt in its transaction, and fails the first two with `Unavailable`.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct FlakyInsert {
    key: String,
}

#[retry(max_attempts = 3, delay = "1ms", on = [Unavailable])]
#[command_handler(FlakyInsert)]
#[transactional]
struct FlakyInsertHandler {
    attempts: Arc<Attempts>,
}

impl CommandHandler<FlakyInsert> for FlakyInsertHandler {
    async fn handle(&self, cmd: FlakyInsert, cx: &mut CommandContext) -> Result<u32, Error> {
        let attempt = self.attempts.next(&cmd.key);
        insert_thing(cx, &format!("{}-{attempt}", cmd.key)).await?;
        cx.emit(AttemptMade {
            key: cmd.key.clone(),
            attempt,
        });
        if attempt < 3 {
            return Err(Error::unavailable(format!("attempt {attempt} failed")));
        }
        Ok(attempt)
    }
}

async fn each_attempt_runs_in_a_fresh_transaction(db: &TestDb) {
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
        .await;
    let attempts = Arc::new(Attempts::default());
    let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<FlakyInsertHandler>()
        .register::<RecordAttempt>()
        .provide(attempts.clone())
        .provide(seen.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let report = bus
        .send_with_report(FlakyInsert { key: "k".into() })
        .await
        .unwrap();
    assert_eq!((report.output, report.attempts), (3, 3));
    assert_eq!(report.events, ["AttemptMade"], "the last attempt's only");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things").await,
        1,
        "the rows of the failed attempts were rolled back"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM things WHERE name = 'k-3'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM cqrs_outbox").await,
        1,
        "only the committed attempt's event reached the outbox"
    );
    assert_eq!(*seen.lock().unwrap(), [("k".to_owned(), 3)]);
}
on_both!(
    each_attempt_runs_in_a_fresh_transaction_sqlite,
    each_attempt_runs_in_a_fresh_transaction_postgres,
    each_attempt_runs_in_a_fresh_transaction
);
