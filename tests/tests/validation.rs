//! Field rules (DESIGN §2, §5 layer 5): a message that breaks its `#[validate(..)]` rules never
//! reaches its handler; the caller gets `Error::Validation` listing every failing field at once.
//! It is never retried, never cached, and does not use up an idempotency key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::FieldError;
use cqrs_core::prelude::*;
use validator::Validate;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Validate)]
struct Address {
    #[validate(length(min = 1))]
    city: String,
    #[validate(length(equal = 5))]
    zip: String,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize, Validate)]
#[command(output = u32)]
struct Register {
    #[validate(email)]
    email: String,
    #[validate(length(min = 8))]
    password: String,
    #[validate(range(min = 18, max = 130))]
    age: u32,
    #[validate(length(min = 1, max = 20, message = "a display name has 1 to 20 characters"))]
    display_name: String,
    #[validate(nested)]
    address: Address,
}

#[command_handler(Register)]
#[retry(max_attempts = 5, on = [Conflict, Unavailable, Internal])]
struct RegisterHandler {
    runs: Arc<AtomicUsize>,
}

impl CommandHandler<Register> for RegisterHandler {
    async fn handle(&self, cmd: Register, _cx: &mut CommandContext) -> Result<u32, Error> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) as u32 + 1;
        Ok(cmd.age * 1000 + n)
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq, Validate)]
#[query(output = Vec<String>)]
struct Search {
    #[validate(length(min = 3, message = "type at least 3 characters"))]
    term: String,
    #[validate(range(max = 100))]
    limit: u32,
}

#[query_handler(Search)]
#[cached_query(ttl = "1m")]
struct SearchHandler {
    runs: Arc<AtomicUsize>,
}

impl QueryHandler<Search> for SearchHandler {
    async fn handle(&self, q: Search, _cx: &QueryContext) -> Result<Vec<String>, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok((1..=q.limit.min(3))
            .map(|i| format!("{}-{i}", q.term))
            .collect())
    }
}

fn valid() -> Register {
    Register {
        email: "ada@example.com".into(),
        password: "correct horse".into(),
        age: 36,
        display_name: "Ada".into(),
        address: Address {
            city: "London".into(),
            zip: "12345".into(),
        },
    }
}

fn bus() -> (Bus, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<RegisterHandler>()
        .register::<SearchHandler>()
        .provide(runs.clone())
        .build()
        .unwrap();
    (bus, runs)
}

#[tokio::test]
async fn a_valid_message_reaches_the_handler() {
    let (bus, runs) = bus();
    assert_eq!(bus.send(valid()).await.unwrap(), 36_001);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_failing_field_is_listed_at_once_and_the_handler_never_runs() {
    let (bus, runs) = bus();
    let err = bus
        .send(Register {
            email: "not an email".into(),
            password: "short".into(),
            age: 12,
            display_name: String::new(),
            address: Address {
                city: String::new(),
                zip: "1234".into(),
            },
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Validation);
    assert_eq!(
        err.fields(),
        [
            FieldError::new("address.city", "length", "must have length at least 1"),
            FieldError::new("address.zip", "length", "must have length 5"),
            FieldError::new("age", "range", "must be between 18 and 130"),
            FieldError::new(
                "display_name",
                "length",
                "a display name has 1 to 20 characters"
            ),
            FieldError::new("email", "email", "must be an email address"),
            FieldError::new("password", "length", "must have length at least 8"),
        ]
    );
    assert!(matches!(&err, Error::Validation { fields } if fields.len() == 6));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "not run, and not retried although the handler retries Internal errors"
    );
}

#[tokio::test]
async fn only_the_fields_that_fail_are_listed() {
    let (bus, runs) = bus();
    let mut cmd = valid();
    cmd.age = 200;
    let err = bus.send(cmd).await.unwrap_err();
    assert_eq!(err.status(), Status::Validation);
    assert_eq!(
        err.fields(),
        [FieldError::new(
            "age",
            "range",
            "must be between 18 and 130"
        )]
    );
    assert_eq!(
        err.to_string(),
        "validation failed: age: must be between 18 and 130"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_query_is_refused_before_the_cache_and_the_handler() {
    let (bus, runs) = bus();
    let err = bus
        .query(Search {
            term: "ab".into(),
            limit: 500,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Validation);
    assert_eq!(
        err.fields(),
        [
            FieldError::new("limit", "range", "must be at most 100"),
            FieldError::new("term", "length", "type at least 3 characters"),
        ]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let report = bus
        .query_with_report(Search {
            term: "abc".into(),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(report.output, ["abc-1", "abc-2"]);
    assert!(!report.cache_hit);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_invalid_message_does_not_use_up_its_idempotency_key() {
    let (bus, runs) = bus();
    let mut invalid = valid();
    invalid.email = "nope".into();
    let err = bus
        .send(Envelope::new(invalid).idempotency_key("signup-1"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Validation);

    // The corrected message, with the same key, is not a conflicting payload: it runs.
    let report = bus
        .send_with_report(Envelope::new(valid()).idempotency_key("signup-1"))
        .await
        .unwrap();
    assert_eq!(report.output, 36_001);
    assert!(!report.replayed);

    let again = bus
        .send_with_report(Envelope::new(valid()).idempotency_key("signup-1"))
        .await
        .unwrap();
    assert_eq!(again.output, 36_001);
    assert!(again.replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
