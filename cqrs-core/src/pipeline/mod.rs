//! The pipeline: one per handler, assembled once in `build()`, in this fixed order (outermost
//! first). The order the attributes are written in does not matter.
//!
//! | # | layer | from | module |
//! |---|---|---|---|
//! | 1 | trace | always | [`trace`] |
//! | 2 | middleware | `BusBuilder::middleware` | [`middleware`] |
//! | 3 | timeout | `timeout = ".."`, `#[timeout("..")]`, the envelope's deadline | [`timeout`] |
//! | 4 | authorize | `#[authorize(..)]` | [`authorize`] |
//! | 5 | validate | `#[validate(..)]` on message fields | [`validate`] |
//! | 6 | idempotency | `Envelope::idempotency_key` (commands) | [`idempotency`] |
//! | 7 | cache | `#[cached_query(..)]` (queries) | [`cache`] |
//! | 8 | retry | `#[retry(..)]` | [`retry`] |
//! | 8½ | exclusive | `#[exclusive(key = field, name = "..")]` (commands) | [`exclusive`] |
//! | 9 | transaction | `#[transactional(..)]` (commands; event handlers, with their inbox) | [`transaction`] |
//! | 10 | handler | the handler, with panics caught | |
//! | after | publish | emitted events to event handlers (through the outbox when transactional), caches named by `invalidates = [..]` dropped | [`publish`] |
//!
//! Exclusive sits inside retry and directly outside the transaction: each attempt takes the
//! lock, begins, runs the handler, commits, and releases the lock, so that the next holder
//! begins after this one committed (and reads what it wrote), and a retried attempt waits its
//! turn again rather than holding the key through the back-off. Outside idempotency, so that a
//! replayed reply needs no lock.
//!
//! Each layer is a small type that knows nothing of the others. [`plan`] declares their order
//! and which of them await, once; `build()` turns it into each handler's [`plan::Plan`], which
//! decides per dispatch between two paths, for commands, queries and event handlers alike:
//!
//! - the **lean** path (the layers that run inline: trace, authorization by the principal
//!   alone, validation, handler; see [`lean`]) is generic over the message and handler types,
//!   and its future is stored inline in a [`DispatchFuture`]: a dispatch with no other layer
//!   allocates nothing;
//! - the **full** path (every layer) is composed once, in [`full_path`], for every kind and
//!   every handler, over `dyn` and slots (see [`erased`]), so that a crate with many handlers
//!   does not compile it once per handler; what differs per kind is in [`contexts`].
//!   Its future is boxed: one allocation, whatever the number of layers. A cached query is
//!   first authorized, validated and looked up without any future when none of that awaits
//!   (`query/precheck.rs`): a cache hit allocates nothing either.
//!
//! Layers that do I/O (transaction, idempotency store, publishing) box their own part, and only
//! when they run, so they do not grow every dispatch's future.

pub(crate) mod aggregate;
pub(crate) mod assemble;
pub(crate) mod authorize;
pub(crate) mod cache;
pub(crate) mod command;
pub(crate) mod contexts;
pub(crate) mod describe;
pub(crate) mod erased;
pub(crate) mod event;
pub(crate) mod exclusive;
pub(crate) mod full_path;
pub(crate) mod idempotency;
pub(crate) mod lean;
pub(crate) mod metrics;
pub(crate) mod middleware;
pub(crate) mod plan;
pub(crate) mod publish;
pub(crate) mod query;
pub(crate) mod report;
pub(crate) mod retry;
pub(crate) mod runtime;
pub(crate) mod stores;
pub(crate) mod timeout;
pub(crate) mod trace;
pub(crate) mod transaction;
pub(crate) mod transport;
pub(crate) mod validate;

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use stackfuture::StackFuture;

use self::runtime::Runtime;
use crate::Error;
use crate::envelope::Metadata;
use crate::message::{Command, MessageKind};

pub(crate) use self::command::{CommandPipe, CommandPipeline};
pub(crate) use self::event::{EventPipe, EventPipeline};
pub(crate) use self::query::{QueryPipe, QueryPipeline};

use self::authorize::AuthorizeLayer;
use self::cache::CacheSpec;
use self::exclusive::ExclusiveLayer;
use self::middleware::Dispatch;
use self::retry::RetryLayer;
use self::transaction::TransactionLayer;

/// Bytes a dispatch future may take inline, in [`DispatchFuture`], before it is boxed.
///
/// Large enough for the lean path of a handler whose own future is a few hundred bytes (the
/// lean path adds about 350: span, context, metadata); small enough that awaiting a dispatch
/// does not make the caller's future much larger. `BENCHMARKS.md` has the measurements.
pub(crate) const INLINE_FUTURE: usize = 768;

/// The future of one dispatch at the type-erased boundary: stored inline when it fits in
/// [`INLINE_FUTURE`] bytes (and its alignment is at most 8), boxed otherwise.
pub(crate) type DispatchFuture<'a, T> = StackFuture<'a, T, INLINE_FUTURE>;

/// A decorator's configuration, as its attribute registers it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Decorator {
    /// `#[authorize(..)]`.
    Authorize(AuthorizeLayer),
    /// `#[retry(..)]`.
    Retry(RetryLayer),
    /// `#[timeout("..")]`.
    Timeout(Duration),
    /// `#[cached_query(..)]`.
    Cache(CacheSpec),
    /// `#[transactional(..)]`.
    Transactional(TransactionLayer),
    /// `#[exclusive(..)]`.
    Exclusive(ExclusiveLayer),
}

impl Decorator {
    /// The attribute's name, for messages.
    pub fn attribute(&self) -> &'static str {
        match self {
            Decorator::Authorize(_) => "authorize",
            Decorator::Retry(_) => "retry",
            Decorator::Timeout(_) => "timeout",
            Decorator::Cache(_) => "cached_query",
            Decorator::Transactional(_) => "transactional",
            Decorator::Exclusive(_) => "exclusive",
        }
    }
}

/// The configuration of every layer of one handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layers {
    pub(crate) timeout: Option<Duration>,
    pub(crate) authorize: Option<AuthorizeLayer>,
    pub(crate) retry: Option<RetryLayer>,
    pub(crate) cache: Option<CacheSpec>,
    pub(crate) transaction: Option<TransactionLayer>,
    pub(crate) exclusive: Option<ExclusiveLayer>,
    pub(crate) invalidates: Vec<cache::target::Invalidates>,
}

impl Layers {
    /// The layers as `describe()` prints them, in pipeline order (from [`plan::PIPELINE`]).
    pub(crate) fn describe(
        &self,
        kind: MessageKind,
        validated: bool,
        middleware: usize,
    ) -> Vec<String> {
        plan::Plan::describe(&plan::Inputs {
            kind,
            validated,
            layers: self,
            middleware,
        })
    }
}

/// The error a handler's panic becomes (logged).
#[cold]
#[inline(never)]
fn panicked(handler: &'static str, payload: Box<dyn Any + Send>) -> Error {
    let error = crate::error::from_panic(&format!("handler `{handler}`"), payload);
    tracing::error!(target: "cqrs", handler, "{error}");
    error
}

/// Awaits a handler's future, turning a panic into an `Internal` error, with the dispatch's
/// span entered (on the lean paths): one poll wrapper around a future pinned where it lies,
/// which is never moved (see [`trace::InSpan`]).
pub(crate) struct CatchPanic<'a, F> {
    pub(crate) handler: &'static str,
    pub(crate) span: Option<&'a tracing::Span>,
    pub(crate) fut: Pin<&'a mut F>,
}

impl<T, F: Future<Output = Result<T, Error>>> Future for CatchPanic<'_, F> {
    type Output = Result<T, Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let this = &mut *self;
        let _entered = this.span.map(tracing::Span::enter);
        let fut = &mut this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            // Ready, so the poisoned future is not polled again.
            Err(payload) => Poll::Ready(Err(panicked(this.handler, payload))),
        }
    }
}

fn command_json<C: Command>(message: &(dyn Any + Send + Sync)) -> Option<serde_json::Value> {
    message
        .downcast_ref::<C>()
        .and_then(|m| serde_json::to_value(m).ok())
}

/// Runs the middleware chain of `kind` around `inner`, or `inner` alone when there is none.
/// `message` is the message (`&M`), for the middleware to look at.
async fn with_middleware<'a, T: Send>(
    bus: &'a Runtime,
    (kind, name): (MessageKind, &'static str),
    handler: &'static str,
    message: &'a (dyn Any + Send + Sync),
    metadata: &'a Metadata,
    to_json: Option<fn(&(dyn Any + Send + Sync)) -> Option<serde_json::Value>>,
    inner: impl Future<Output = Result<T, Error>> + Send + 'a,
) -> Result<T, Error> {
    let chain = bus.middleware(kind);
    if chain.is_empty() {
        return inner.await;
    }
    let dispatch = Dispatch {
        kind,
        name,
        handler,
        metadata,
        message,
        to_json,
    };
    let mut output = None;
    let slot = &mut output;
    let result = middleware::around(
        chain,
        &dispatch,
        Box::new(move || {
            Box::pin(async move {
                *slot = Some(inner.await?);
                Ok(())
            })
        }),
    )
    .await;
    match (result, output) {
        (Ok(()), Some(output)) => Ok(output),
        (Ok(()), None) => Err(Error::internal(format!(
            "a middleware returned Ok without running `{name}`"
        ))),
        (Err(error), _) => Err(error),
    }
}
