//! `cqrs_core::Error` as an HTTP response (feature `axum`): `application/problem+json` (RFC 9457)
//! with the status mapping of DESIGN §6, every failing field for a validation error, and no
//! internals leaked for server errors.

use axum::body::to_bytes;
use axum::response::IntoResponse;
use cqrs_core::FieldError;
use cqrs_core::http::ProblemDetails;
use cqrs_core::prelude::*;

async fn problem(error: Error) -> (u16, String, ProblemDetails) {
    let response = error.into_response();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, content_type, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn every_status_has_its_http_code() {
    for (status, code) in [
        (Status::Validation, 422),
        (Status::Unauthenticated, 401),
        (Status::Forbidden, 403),
        (Status::NotFound, 404),
        (Status::Conflict, 409),
        (Status::Timeout, 504),
        (Status::Unavailable, 503),
        (Status::Internal, 500),
        (Status::NoHandler, 500),
    ] {
        let (http, content_type, body) = problem(Error::new(status, "what happened")).await;
        assert_eq!(http, code, "{status}");
        assert_eq!(content_type, "application/problem+json", "{status}");
        assert_eq!(body.status, code, "{status}");
        assert_eq!(body.code, status.as_str());
        assert!(!body.title.is_empty());
        if code >= 500 {
            assert!(
                !body.detail.contains("what happened"),
                "a server error keeps its details in the logs: {}",
                body.detail
            );
        } else {
            assert_eq!(body.detail, "what happened");
        }
    }
}

#[tokio::test]
async fn a_validation_error_lists_every_field() {
    let error = Error::validation([
        FieldError::new("email", "email", "must be an email address"),
        FieldError::new("name", "length", "must be 1 to 80 characters"),
    ]);
    let (http, _, body) = problem(error).await;
    assert_eq!(http, 422);
    let fields: Vec<&str> = body.errors.iter().map(|f| f.field.as_ref()).collect();
    assert_eq!(fields, ["email", "name"]);
}

#[tokio::test]
async fn a_message_made_from_an_underlying_error_stays_in_the_logs() {
    let driver = || std::io::Error::other("connection to 10.0.0.7:5432 lost mid-statement");

    // `?` / `from_std`: the message is the source's text, with or without context in front.
    for error in [
        Error::from_std(Status::Conflict, driver()),
        Error::from_std(Status::NotFound, driver()).context("loading order 7"),
    ] {
        let (_, _, body) = problem(error.clone()).await;
        assert!(!body.detail.contains("10.0.0.7"), "{}", body.detail);
        assert_eq!(body.code, error.status().as_str());
        assert!(!body.detail.is_empty());
    }

    // A message the application wrote reaches the client, its source kept for the log only.
    let (status, _, body) =
        problem(Error::conflict("the email is taken").with_source(driver())).await;
    assert_eq!(status, 409);
    assert_eq!(body.detail, "the email is taken");

    // A 503 carries Retry-After, whatever its message.
    let response = Error::unavailable("the payment provider is down").into_response();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
}
