//! The full path of a query's pipeline: layers 1 to 10 of the table in
//! [`pipeline`](super::super), written once for all query handlers (see
//! [`erased`](super::super::erased) for why). The handler's types reach it through
//! [`ErasedQuery`] and the two slots the typed caller owns. Its future is boxed by the caller:
//! one allocation, whatever the number of decorators that do no I/O.

use std::pin::pin;

use super::super::cache::{Answer, AnswerCodec, CacheLayer};
use super::super::erased::{HandleFuture, Slot, missing};
use super::super::trace::InSpan;
use super::super::{Guarded, Layers, retry, timeout, trace, with_middleware};
use crate::Error;
use crate::bus::BusInner;
use crate::bus::report::DispatchStats;
use crate::context::QueryContext;
use crate::envelope::Metadata;
use crate::message::MessageKind;

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
        message: &'a mut Slot,
        last: bool,
        output: &'a mut Slot,
        cx: &'a QueryContext,
    ) -> Result<HandleFuture<'a>, Error>;
    /// The message in the slot, as `&Q`.
    fn peek<'s>(&self, message: &'s Slot) -> Option<&'s Slot>;
    fn validate(&self, message: &Slot) -> Result<(), Error>;
    /// A copy of the message slot, for middleware to look at while the handler owns the message.
    fn clone_message(&self, message: &Slot) -> Box<Slot>;
    /// Takes the output out of its slot, shared: what the cache hands around.
    fn share_output(&self, output: &mut Slot) -> Result<Answer, Error>;
    /// Puts an answer in the output slot: moved out when nothing else holds it, cloned if the
    /// cache (or another caller) does.
    fn restore_output(&self, answer: Answer, output: &mut Slot) -> Result<(), Error>;
}

/// The full path. Layers 1 and 2.
pub(crate) async fn run(
    pipe: &dyn ErasedQuery,
    bus: &BusInner,
    message: &mut Slot,
    output: &mut Slot,
    metadata: Metadata,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    // Futures are pinned where they are built and awaited through wrappers that borrow them
    // (`InSpan`, a pinned reference given to `timeout::run`): moving one into a wrapper would
    // keep its moved-from copy's space in this future too, and copy it.
    let span = trace::lean_span(MessageKind::Query, name, pipe.handler_name(), &metadata);
    let result = {
        let body = pin!(async {
            if bus.middleware(MessageKind::Query).is_empty() {
                let cx = QueryContext::new(bus, metadata, pipe.handler_name());
                guarded(pipe, bus, message, output, &cx, stats).await
            } else {
                // Boxed, as for commands: opt-in, and larger. The middleware sees a copy of the
                // message; the handler gets the original.
                Box::pin(async {
                    let copy = pipe.clone_message(message);
                    let Some(seen) = pipe.peek(&*copy) else {
                        return Err(missing(name));
                    };
                    let cx = QueryContext::new(bus, metadata.clone(), pipe.handler_name());
                    let inner = guarded(pipe, bus, message, output, &cx, stats);
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

/// Layers 3 to 7.
async fn guarded(
    pipe: &dyn ErasedQuery,
    bus: &BusInner,
    message: &mut Slot,
    output: &mut Slot,
    cx: &QueryContext,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    let deadline = timeout::deadline(pipe.layers().timeout, &cx.metadata);
    let checked = pin!(async {
        let Some(query) = pipe.peek(message) else {
            return Err(missing(name));
        };
        if let Some(authorize) = &pipe.layers().authorize {
            authorize
                .check(bus.resource_policy(), name, query, &cx.metadata)
                .await?;
        }
        pipe.validate(query)?;
        let Some(cache) = pipe.cache() else {
            return attempts(pipe, message, output, cx, &mut stats.attempts).await;
        };
        let key = cache.key(query);
        stats.cached = true;
        let DispatchStats {
            attempts: tries,
            cache_hit,
            ..
        } = stats;
        let answer = cache
            .run(pipe.codec(), key, cache_hit, || async {
                attempts(pipe, message, &mut *output, cx, tries).await?;
                pipe.share_output(output)
            })
            .await?;
        pipe.restore_output(answer, output)
    });
    timeout::run(deadline, name, checked).await
}

/// Layers 8 and 10.
async fn attempts(
    pipe: &dyn ErasedQuery,
    message: &mut Slot,
    output: &mut Slot,
    cx: &QueryContext,
    attempts: &mut u32,
) -> Result<(), Error> {
    // The handler's future (up to `HANDLE_INLINE` bytes) is pinned where it is built and
    // polled through `Guarded`, which borrows it: handing it to a wrapper by value would keep
    // it twice in this future. One loop, with or without `#[retry]`: two call sites would be
    // two pinned locals, which the compiler lays out side by side, not overlapping.
    let handler = pipe.handler_name();
    let retry = pipe.layers().retry;
    loop {
        *attempts += 1;
        let last = retry.is_none_or(|r| *attempts >= r.max_attempts());
        let fut = pin!(pipe.handle(message, last, &mut *output, cx)?);
        let span = None;
        match (Guarded { handler, span, fut }).await {
            Ok(()) => return Ok(()),
            Err(error) => match retry.and_then(|r| r.next_delay(*attempts, &error)) {
                Some(delay) if !last => retry::pause(delay).await,
                _ => return Err(error),
            },
        }
    }
}
