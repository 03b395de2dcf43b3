//! Tower layers: the correlation id on every response and the error log line, and
//! authentication from a bearer token.

use std::future::Future;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::header::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::*;
use crate::envelope::Principal;
use crate::error::Error;

/// The correlation id the [`correlation`] layer gave the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestCorrelation(pub(super) Uuid);

/// What the [`correlation`] layer knows of the request being answered, for the log line of
/// an error answer and its `correlation_id`.
#[derive(Debug, Clone)]
pub(super) struct RequestInfo {
    pub(super) correlation: Uuid,
    pub(super) method: Method,
    pub(super) path: String,
}

tokio::task_local! {
    pub(super) static REQUEST: RequestInfo;
}

/// A layer that gives every request a correlation id and every response its
/// `X-Correlation-Id` header, errors included.
///
/// The id is the caller's `X-Correlation-Id` when it is one UUID, a new UUID v7 otherwise; the
/// extractors ([`RequestMetadata`], and every helper through it) put it in the message's
/// metadata, so it is on the dispatch's span and on the events the request causes. A header
/// that is not a UUID is refused by [`RequestMetadata`] (`400`); that answer, and every
/// other, carries a fresh id. A response that already has the header keeps it.
///
/// Error answers rendered inside it ([`Problem`], [`Error`]) carry the id in their body too,
/// and their log line has it, with the method and path (see the [module docs](crate::http#logs)).
///
/// Add it last (outermost), so that it also covers what the layers inside it answer, such as
/// [`authenticate`]'s `401`.
pub fn correlation() -> CorrelationLayer {
    axum::middleware::from_fn(correlate as CorrelateFn)
}

/// The layer [`correlation`] returns.
pub type CorrelationLayer = axum::middleware::FromFnLayer<CorrelateFn, (), (Request,)>;

/// The function behind [`CorrelationLayer`].
pub type CorrelateFn = fn(Request, Next) -> futures_util::future::BoxFuture<'static, Response>;

pub(super) fn correlate(
    mut request: Request,
    next: Next,
) -> futures_util::future::BoxFuture<'static, Response> {
    let id = match sent_correlation(request.headers()) {
        Some(Ok(id)) => {
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
        // Not one UUID: left to `RequestMetadata` to refuse, and answered with an id of ours.
        Some(Err(())) => Uuid::now_v7(),
        None => {
            let id = Uuid::now_v7();
            request.extensions_mut().insert(RequestCorrelation(id));
            id
        }
    };
    let info = RequestInfo {
        correlation: id,
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
    };
    Box::pin(REQUEST.scope(info, async move {
        let mut response = next.run(request).await;
        if !response.headers().contains_key(&CORRELATION_ID)
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            response.headers_mut().insert(CORRELATION_ID, value);
        }
        response
    }))
}

/// Turns a bearer token into the caller, for [`authenticate`].
pub trait TokenVerifier: Clone + Send + Sync + 'static {
    /// The principal the token stands for; `None` for a token that is not valid (the request
    /// is answered `401`).
    fn verify(
        &self,
        token: String,
    ) -> impl Future<Output = Result<Option<Principal>, Error>> + Send;
}

impl<F, Fut> TokenVerifier for F
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Principal>, Error>> + Send,
{
    fn verify(
        &self,
        token: String,
    ) -> impl Future<Output = Result<Option<Principal>, Error>> + Send {
        self(token)
    }
}

/// A layer that reads `Authorization: Bearer <token>`, asks `verifier` who it is, and puts the
/// [`Principal`] in the request for [`Caller`] and [`RequestMetadata`]. A request without the
/// header goes on anonymously (handlers with `#[authorize]` answer it `401`); a request with a
/// token the verifier rejects is answered `401` at once.
pub fn authenticate<V: TokenVerifier>(verifier: V) -> AuthenticateLayer<V> {
    axum::middleware::from_fn_with_state(verifier, authenticate_request::<V> as AuthenticateFn<V>)
}

/// The layer [`authenticate`] returns.
pub type AuthenticateLayer<V> =
    axum::middleware::FromFnLayer<AuthenticateFn<V>, V, (State<V>, Request)>;

/// The function behind [`AuthenticateLayer`].
pub type AuthenticateFn<V> =
    fn(State<V>, Request, Next) -> futures_util::future::BoxFuture<'static, Response>;

pub(super) fn authenticate_request<V: TokenVerifier>(
    State(verifier): State<V>,
    mut request: Request,
    next: Next,
) -> futures_util::future::BoxFuture<'static, Response> {
    Box::pin(async move {
        let token = match request.headers().get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(value) => match bearer_token(value) {
                Some(token) => Some(token.to_owned()),
                None => {
                    return Error::unauthenticated(
                        "the Authorization header must be `Bearer <token>`",
                    )
                    .into_response();
                }
            },
        };
        if let Some(token) = token {
            match verifier.verify(token).await {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                }
                Ok(None) => {
                    return Error::unauthenticated("the bearer token is not valid").into_response();
                }
                Err(error) => return error.into_response(),
            }
        }
        next.run(request).await
    })
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// §11.1), the token one or more non-blank characters (RFC 6750 §2.1).
pub(super) fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains([' ', '\t']))
        .then_some(token)
}
