//! The full path of a query's pipeline: layers 1 to 10 of the table in
//! [`pipeline`](super::super), written once for all query handlers (see
//! [`erased`](super::super::erased) for why). The handler's types reach it through
//! [`ErasedQuery`] and the two slots the typed caller owns. Its future is boxed by the caller:
//! one allocation, whatever the number of decorators that do no I/O.

use std::pin::pin;

use super::super::authorize::AuthorizeLayer;
use super::super::cache::{Answer, AnswerCodec, CacheLayer};
use super::super::erased::{Erased, HandleFuture, missing};
use super::super::trace::InSpan;
use super::super::{CatchPanic, Layers, retry, timeout, trace, with_middleware};
use crate::Error;
use crate::context::QueryContext;
use crate::envelope::{Metadata, Principal};
use crate::message::MessageKind;
use crate::pipeline::report::DispatchStats;
use crate::pipeline::runtime::Runtime;

/// What the full path needs from one query handler's types. Implemented by
/// [`QueryPipeline`](super::QueryPipeline); every method is small.
pub(crate) trait ErasedQuery: AnswerCodec {
    /// The query's name.
    fn message_name(&self) -> &'static str;
    /// The handler's name.
    fn handler_name(&self) -> &'static str;
    fn layers(&self) -> &Layers;
    fn cache(&self) -> Option<&CacheLayer>;
    /// This, as what the cache needs to (de)serialize answers.
    fn codec(&self) -> &dyn AnswerCodec;
    /// Starts the handler on the message in `message`: the last attempt takes it, the others
    /// clone it. A success writes `output`. An error means an empty or mistyped slot.
    fn handle<'a>(
        &'a self,
        message: &'a mut Erased,
        last: bool,
        output: &'a mut Erased,
        cx: &'a QueryContext,
    ) -> Result<HandleFuture<'a>, Error>;
    /// The message in the slot, as `&Q`.
    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased>;
    fn validate(&self, message: &Erased) -> Result<(), Error>;
    /// A copy of the message slot, for middleware to look at while the handler owns the message.
    fn clone_message(&self, message: &Erased) -> Box<Erased>;
    /// Takes the output out of its slot, shared: what the cache hands around.
    fn share_output(&self, output: &mut Erased) -> Result<Answer, Error>;
    /// Puts an answer in the output slot: moved out when nothing else holds it, cloned if the
    /// cache (or another caller) does.
    fn restore_output(&self, answer: Answer, output: &mut Erased) -> Result<(), Error>;
}

/// What a dispatch of a cached query settled before building any future (see [`precheck`]).
pub(crate) enum Precheck {
    /// The dispatch is over: refused by layer 4 or 5, or answered by a cache hit.
    Done(Result<Answer, Error>),
    /// Authorized and valid; the full path goes on at the cache (layer 7).
    Checked(Checked),
    /// Something before the cache has to be awaited (middleware, a resource policy), or the
    /// query is not cached: the full path runs from the start.
    Later,
}

/// A query that [`precheck`] authorized and validated, and its cache key.
#[derive(Clone, Copy)]
pub(crate) struct Checked {
    key: u128,
    /// Whether the cache was asked for `key` (and missed); if not, its backend has to be
    /// awaited.
    looked: bool,
}

/// Layers 4, 5 and a cache hit of layer 7, before any future is built, when none of them
/// awaits: for a cached query, with no middleware and no resource policy.
///
/// What a hit costs is then a few hundred instructions and no allocation, where the full path
/// would box a future of 3 KB to find the answer. The other layers have nothing to do on a hit:
/// no attempt runs (layer 8), and a deadline (layer 3) is not reached by a dispatch that never
/// awaits, as inside `tokio::time::timeout_at`, which polls its future before the clock.
/// Refusals and hits are the same, and reported the same, as on the full path.
pub(crate) fn precheck(
    pipe: &dyn ErasedQuery,
    bus: &Runtime,
    query: &Erased,
    metadata: &Metadata,
    stats: &mut DispatchStats,
) -> Precheck {
    let Some(cache) = pipe.cache() else {
        return Precheck::Later;
    };
    if !bus.middleware(MessageKind::Query).is_empty() {
        return Precheck::Later;
    }
    // Layer 4 as the lean paths run it: only a check that needs no resource policy.
    let authorize = pipe.layers().authorize.as_ref();
    if !AuthorizeLayer::is_lean(authorize) {
        return Precheck::Later;
    }
    if let Err(error) = AuthorizeLayer::check_lean(authorize, pipe.message_name(), metadata) {
        return Precheck::Done(Err(error));
    }
    if let Err(error) = pipe.validate(query) {
        return Precheck::Done(Err(error));
    }
    let key = cache.key(query, metadata.principal().map(Principal::id));
    stats.cached = true;
    match cache.peek(pipe.codec(), key) {
        Some(Some(hit)) => {
            stats.cache_hit = true;
            Precheck::Done(Ok(hit))
        }
        Some(None) => Precheck::Checked(Checked { key, looked: true }),
        None => Precheck::Checked(Checked { key, looked: false }),
    }
}

/// The full path. Layers 1 and 2. `span` is the dispatch's (see [`trace::lean_span`]);
/// `checked`, what [`precheck`] already did.
#[allow(clippy::too_many_arguments)] // one caller, `QueryPipeline::full`, which owns them all
pub(crate) async fn run(
    pipe: &dyn ErasedQuery,
    bus: &Runtime,
    message: &mut Erased,
    output: &mut Erased,
    metadata: Metadata,
    span: Option<tracing::Span>,
    checked: Option<Checked>,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    // Futures are pinned where they are built and awaited through wrappers that borrow them
    // (`InSpan`, a pinned reference given to `timeout::run`): moving one into a wrapper would
    // keep its moved-from copy's space in this future too, and copy it.
    let result = {
        let body = pin!(async {
            if bus.middleware(MessageKind::Query).is_empty() {
                let cx = QueryContext::new(bus.ptr(), &metadata, pipe.handler_name());
                guarded(pipe, bus, message, output, &cx, checked, stats).await
            } else {
                // Boxed, as for commands: opt-in, and larger. The middleware sees a copy of the
                // message; the handler gets the original.
                Box::pin(async {
                    let copy = pipe.clone_message(message);
                    let Some(seen) = pipe.peek(&*copy) else {
                        return Err(missing(name));
                    };
                    let cx = QueryContext::new(bus.ptr(), &metadata, pipe.handler_name());
                    let inner = guarded(pipe, bus, message, output, &cx, None, stats);
                    with_middleware(
                        bus,
                        (MessageKind::Query, name),
                        pipe.handler_name(),
                        seen,
                        &metadata,
                        None,
                        inner,
                    )
                    .await
                })
                .await
            }
        });
        InSpan {
            span: span.as_ref(),
            fut: body,
        }
        .await
    };
    trace::finish_in(span.as_ref(), MessageKind::Query, name, &result, stats);
    result
}

/// Layers 3 to 7 (4 and 5 skipped when [`precheck`] `checked` them).
async fn guarded(
    pipe: &dyn ErasedQuery,
    bus: &Runtime,
    message: &mut Erased,
    output: &mut Erased,
    cx: &QueryContext,
    checked: Option<Checked>,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    let deadline = timeout::deadline(pipe.layers().timeout, cx.metadata());
    let guarded = pin!(async {
        let (cache, Checked { key, looked }) = match (pipe.cache(), checked) {
            (Some(cache), Some(checked)) => (cache, checked),
            (cache, _) => {
                let Some(query) = pipe.peek(message) else {
                    return Err(missing(name));
                };
                if let Some(authorize) = &pipe.layers().authorize {
                    authorize
                        .check(bus.resource_policy(), name, query, cx.metadata())
                        .await?;
                }
                pipe.validate(query)?;
                let Some(cache) = cache else {
                    return attempts(pipe, message, output, cx, &mut stats.attempts).await;
                };
                let key = cache.key(query, cx.metadata().principal().map(Principal::id));
                (cache, Checked { key, looked: false })
            }
        };
        stats.cached = true;
        let DispatchStats {
            attempts: tries,
            cache_hit,
            ..
        } = stats;
        // Where a computed answer is stored: on a miss only (a hit returned above).
        let Some(stored) = pipe.peek(message).map(|q| cache.stored_under(q, key)) else {
            return Err(missing(name));
        };
        let answer = cache
            .run(pipe.codec(), stored, looked, cache_hit, || async {
                attempts(pipe, message, &mut *output, cx, tries).await?;
                pipe.share_output(output)
            })
            .await?;
        pipe.restore_output(answer, output)
    });
    timeout::run(deadline, name, guarded).await
}

/// Layers 8 and 10.
async fn attempts(
    pipe: &dyn ErasedQuery,
    message: &mut Erased,
    output: &mut Erased,
    cx: &QueryContext,
    attempts: &mut u32,
) -> Result<(), Error> {
    // The handler's future (up to `HANDLE_INLINE` bytes) is pinned where it is built and
    // polled through `CatchPanic`, which borrows it: handing it to a wrapper by value would keep
    // it twice in this future. One loop, with or without `#[retry]`: two call sites would be
    // two pinned locals, which the compiler lays out side by side, not overlapping.
    let handler = pipe.handler_name();
    let mut tries = retry::Attempts::new(pipe.layers().retry.as_ref(), attempts);
    loop {
        let last = tries.start();
        let fut = pin!(pipe.handle(message, last, &mut *output, cx)?);
        let span = None;
        match (CatchPanic { handler, span, fut }).await {
            Ok(()) => return Ok(()),
            Err(error) => tries.failed(error, last).await?,
        }
    }
}
