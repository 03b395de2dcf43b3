//! Extractors: the caller, the idempotency key, the request's metadata, its JSON body, path and
//! query string, each refusing with a problem.

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query as QueryString, Request,
};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::*;
use crate::envelope::{Metadata, Principal};
use crate::error::{Error, FieldError};

/// A layer setting the largest body the extractors of this module (and axum's) read: a
/// larger one is answered `413` ([`Problem::content_too_large`]). Without it the limit is
/// [`DEFAULT_BODY_LIMIT`].
pub fn body_limit(max_bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(max_bytes)
}

/// The caller, as the authentication layer ([`authenticate`]) found it: `None` for an anonymous
/// request. Handlers with `#[authorize]` turn `None` into `401`.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Caller(parts.extensions.get::<Principal>().cloned()))
    }
}

/// The `Idempotency-Key` header, if the request has one.
///
/// The key is 1 to 255 visible ASCII characters (`!` to `~`: no spaces, no control
/// characters), sent bare (`Idempotency-Key: order-42`) or, as the IETF draft writes it, as a
/// structured-field string (`Idempotency-Key: "order-42"`, the quotes not part of the key).
/// Anything else, or the header sent twice, is refused with a `400` problem naming the header.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Problem::bad_request(format!(
            "the Idempotency-Key header {why}: send one key of 1 to 255 visible ASCII characters \
             (no spaces), bare or in double quotes"
        ))
    };
    if values.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("is not ASCII"))?
        .trim_matches([' ', '\t']);
    let key = match text.strip_prefix('"') {
        Some(quoted) => quoted
            .strip_suffix('"')
            .ok_or_else(|| bad("has an unterminated quote"))?,
        None => text,
    };
    if key.is_empty() {
        return Err(bad("is empty"));
    }
    if key.len() > 255 {
        return Err(bad("is longer than 255 characters"));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) || key.contains(['"', '\\']) {
        return Err(bad("has a character a key may not have"));
    }
    Ok(Some(key.to_owned()))
}

/// The correlation id a request sends: `None` without the header, `Err` when it is not one
/// UUID (sent twice, or not a UUID in any of its usual forms).
pub(super) fn sent_correlation(headers: &HeaderMap) -> Option<Result<Uuid, ()>> {
    let mut values = headers.get_all(&CORRELATION_ID).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| Uuid::parse_str(s.trim_matches([' ', '\t'])).ok())
            .ok_or(()),
    )
}

/// The metadata of the request's message: the caller, the idempotency key, and the correlation
/// id from `X-Correlation-Id` (a UUID) when present.
///
/// Refuses the request (`400`) when `Idempotency-Key` is malformed ([`IdempotencyKey`]) or
/// `X-Correlation-Id` is not one UUID.
#[derive(Debug, Clone)]
pub struct RequestMetadata(pub Metadata);

impl<S: Send + Sync> FromRequestParts<S> for RequestMetadata {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let mut metadata = Metadata::new();
        if let Some(principal) = parts.extensions.get::<Principal>() {
            metadata.set_principal(principal.clone());
        }
        if let Some(key) = idempotency_key(&parts.headers)? {
            metadata.set_idempotency_key(key);
        }
        match sent_correlation(&parts.headers) {
            Some(Err(())) => {
                return Err(Problem::bad_request(
                    "the X-Correlation-Id header must be one UUID",
                ));
            }
            Some(Ok(id)) => metadata.set_correlation_id(id),
            None => {
                if let Some(RequestCorrelation(id)) = parts.extensions.get::<RequestCorrelation>() {
                    metadata.set_correlation_id(*id);
                }
            }
        }
        Ok(RequestMetadata(metadata))
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/<name>+json`
/// (RFC 6839), case-insensitive (RFC 9110 §8.3.1), with parameters; a `charset` other than
/// UTF-8 is refused, JSON being UTF-8 (RFC 8259 §8.1). `Err` says why not.
pub(super) fn json_media_type(headers: &HeaderMap) -> Result<(), Problem> {
    const EXPECTED: &str = "send the body as JSON with `Content-Type: application/json` (or `application/<name>+json`)";
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Err(Problem::unsupported_media_type(format!(
            "the request has no Content-Type: {EXPECTED}"
        )));
    };
    let not_json =
        || Problem::unsupported_media_type(format!("the Content-Type is not JSON: {EXPECTED}"));
    if values.next().is_some() {
        return Err(not_json());
    }
    let text = value.to_str().map_err(|_| not_json())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim_matches([' ', '\t']);
    let (kind, subtype) = essence.split_once('/').ok_or_else(not_json)?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    let json = kind.eq_ignore_ascii_case("application")
        && token(subtype)
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype.is_char_boundary(subtype.len() - 5)
                && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"));
    if !json {
        return Err(not_json());
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name
            .trim_matches([' ', '\t'])
            .eq_ignore_ascii_case("charset")
        {
            let charset = value.trim_matches([' ', '\t']).trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(Problem::unsupported_media_type(
                    "JSON is UTF-8: the Content-Type's charset, if any, must be utf-8",
                ));
            }
        }
    }
    Ok(())
}

/// A JSON body, refused with a problem naming what is wrong: no JSON `Content-Type` (`415`; the
/// [module docs](crate::http#errors) say which are), a body over the [`body_limit`]
/// (`413`), not JSON (`400`), JSON of the wrong shape such as a missing field or a wrong type
/// (`422`, a validation problem on the field `body`).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        use axum::extract::rejection::JsonRejection;

        json_media_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::content_too_large()
            } else {
                Problem::bad_request("the request body could not be read")
            }
        })?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(rejection)) => {
                Err(
                    Error::validation([FieldError::new("body", "json", rejection.body_text())])
                        .into(),
                )
            }
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// Path parameters (`/products/{id}`), as axum's `Path`, refused with a `400` problem when one
/// does not parse (`/products/abc` for a number).
#[derive(Debug, Clone)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            // A route whose parameters do not fit its type: the server's bug, not the client's.
            Err(rejection) if rejection.status().is_server_error() => {
                Err(Error::internal(rejection.body_text()).into())
            }
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// The query string (`/products?page=2`), as axum's `Query`, refused with a `400` problem when
/// it does not parse.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match QueryString::<T>::from_request_parts(parts, state).await {
            Ok(QueryString(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}
