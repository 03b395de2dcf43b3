//! The full path: every layer of [`PIPELINE`](super::plan::PIPELINE) that a handler and its
//! envelope ask for, composed here, once, for commands, queries and event handlers.
//!
//! | # | layer | here |
//! |---|---|---|
//! | 1 | trace | [`run`] (a query's `precheck` made the span already: [`Prechecked`]) |
//! | 2 | middleware | [`run`] |
//! | 3 | timeout | [`guarded`] |
//! | 4, 5 | authorize, validate | [`checked`] (skipped when a query's `precheck` did them) |
//! | 6 | idempotency (commands) | [`checked`], [`idempotent`] |
//! | 7 | cache (queries) | [`checked`], [`cached`] |
//! | 8 | retry | [`attempts`]: the one retry loop |
//! | 8½ | exclusive (commands) | [`attempt`], through [`exclusive::acquire`] and [`exclusive::release`] |
//! | 9 | transaction | [`unlocked`], through [`transaction::begin`] and [`transaction::finish`] |
//! | 10 | handler, its panics caught | [`unlocked`] |
//! | after | publish, invalidate | [`guarded`], through [`LayerContext::after`] |
//!
//! Each layer's configuration and behaviour live in its own module; this file only says in
//! which order they run and what each hands the next. A layer a kind does not have is off for
//! it: the pipe has no replies for idempotency (queries, events), no answers for a cache
//! (commands, events), no middleware or authorization (events).
//!
//! It is written over `dyn` ([`FullPipe`]) and slots (see [`erased`](super::erased)), generic
//! only over the kind's context: three copies in a binary, whatever the number of handlers.
//! The caller boxes its future: one allocation, whatever the number of layers that do no I/O;
//! layers that do I/O box their own part, and only when they run.

use std::pin::pin;

use tracing::Span;

use super::cache::target::{self, Invalidation};
use super::cache::{Answers, CacheLayer};
use super::contexts::LayerContext;
use super::erased::{Erased, HandleFuture, Message, missing};
use super::idempotency::{IdempotencyKey, Outcome, Replies};
use super::report::DispatchStats;
use super::runtime::Runtime;
use super::trace::InSpan;
use super::{CatchPanic, Layers, exclusive, retry, timeout, trace, transaction, with_middleware};
use crate::Error;
use crate::context::{CommandContext, EventContext, QueryContext};
use crate::envelope::{Metadata, Principal};

/// What the full path needs from one handler's types. Implemented by each kind's typed
/// pipeline; every method is small, so a handler adds little code of its own.
pub(crate) trait FullPipe: Send + Sync {
    /// The context its handler gets.
    type Context: LayerContext;

    /// The message's name.
    fn message_name(&self) -> &'static str;
    /// The handler's name.
    fn handler_name(&self) -> &'static str;
    fn layers(&self) -> &Layers;
    /// Starts the handler on the message (the last attempt takes it from its slot, the others
    /// clone it). A success writes `output`. An error means an empty or mistyped slot.
    fn handle<'a>(
        &'a self,
        message: Message<'a>,
        last: bool,
        output: &'a mut Erased,
        cx: &'a mut Self::Context,
    ) -> Result<HandleFuture<'a>, Error>;
    /// The message in its slot (or the event), as `&M`: for authorization, validation,
    /// middleware and cache keys.
    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased>;
    /// The message's field rules.
    fn validate(&self, _message: &Erased) -> Result<(), Error> {
        Ok(())
    }
    /// A copy of the message slot, for middleware to look at while the handler owns the
    /// message; `None` for a kind without middleware (events).
    fn clone_message(&self, _message: &Erased) -> Option<Box<Erased>> {
        None
    }
    /// The message as JSON, for middleware (commands).
    fn to_json(&self) -> Option<fn(&Erased) -> Option<serde_json::Value>> {
        None
    }
    /// What the idempotency layer keeps and gives back (commands).
    fn replies(&self) -> Option<&dyn Replies> {
        None
    }
    /// The cache layer and how its answers go in and out of the output slot (cached queries).
    fn answers(&self) -> Option<(&CacheLayer, &dyn Answers)> {
        None
    }
}

/// What a query's `precheck` already did: authorized, validated, and computed its cache key
/// (layers 4, 5 and the lookup of 7).
#[derive(Clone, Copy)]
pub(crate) struct Checked {
    pub(crate) key: u128,
    /// Whether the cache was asked for `key` (and missed); if not, its backend has to be
    /// awaited.
    pub(crate) looked: bool,
}

/// What a query's `precheck` did before the full path: the dispatch's span (see
/// [`trace::lean_span`]), and the checks it ran, if it got that far.
pub(crate) struct Prechecked {
    pub(crate) span: Option<Span>,
    pub(crate) checked: Option<Checked>,
}

/// The full path of a command. This, [`query`] and [`event`] are each kind's entry into
/// [`run`], which is generic only over the kind's context: one copy per kind in a crate that
/// has handlers, whatever their number (`tests/compile-time/llvm-lines.sh` measures what a
/// handler adds).
pub(crate) async fn command(
    pipe: &dyn FullPipe<Context = CommandContext>,
    bus: &Runtime,
    message: Message<'_>,
    output: &mut Erased,
    metadata: &Metadata,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    run(pipe, bus, message, output, metadata, None, stats).await
}

/// The full path of a query; `prechecked`, what its `precheck` did.
pub(crate) async fn query(
    pipe: &dyn FullPipe<Context = QueryContext>,
    bus: &Runtime,
    message: Message<'_>,
    output: &mut Erased,
    metadata: &Metadata,
    prechecked: Prechecked,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    run(
        pipe,
        bus,
        message,
        output,
        metadata,
        Some(prechecked),
        stats,
    )
    .await
}

/// The full path of an event handler.
pub(crate) async fn event(
    pipe: &dyn FullPipe<Context = EventContext>,
    bus: &Runtime,
    event: &Erased,
    metadata: &Metadata,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    // An event handler has no output: its slot is empty.
    let mut output = ();
    let message = Message::Shared(event);
    run(pipe, bus, message, &mut output, metadata, None, stats).await
}

/// Layers 1 and 2. `prechecked`: what a query's `precheck` did; otherwise the span is made
/// here (not in the typed callers: what they hold is compiled once per handler).
async fn run<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    message: Message<'_>,
    output: &mut Erased,
    metadata: &Metadata,
    prechecked: Option<Prechecked>,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    let (span, prechecked) = match prechecked {
        Some(Prechecked { span, checked }) => (span, checked),
        None => (
            trace::lean_span(C::KIND, name, pipe.handler_name(), metadata),
            None,
        ),
    };
    let span = span.as_ref();
    // Futures are pinned where they are built and awaited through wrappers that borrow them
    // (`InSpan`, a pinned reference given to `timeout::run`): moving one into a wrapper would
    // keep its moved-from copy's space in this future too, and copy it.
    let result = {
        let body = pin!(async {
            if bus.middleware(C::KIND).is_empty() {
                let mut cx = C::new(bus.ptr(), metadata, pipe.handler_name());
                guarded(pipe, bus, message, output, &mut cx, prechecked, stats).await
            } else {
                // Boxed: middleware is opt-in, and its (larger) future must not grow the future
                // of every dispatch without it. The middleware sees a copy of the message; the
                // handler gets the original.
                Box::pin(async {
                    let copy = pipe.clone_message(message.get());
                    let Some(seen) = copy.as_deref().and_then(|copy| pipe.peek(copy)) else {
                        return Err(missing(name));
                    };
                    let mut cx = C::new(bus.ptr(), metadata, pipe.handler_name());
                    let inner = guarded(pipe, bus, message, output, &mut cx, None, stats);
                    with_middleware(
                        bus,
                        (C::KIND, name),
                        pipe.handler_name(),
                        seen,
                        metadata,
                        pipe.to_json(),
                        inner,
                    )
                    .await
                })
                .await
            }
        });
        InSpan { span, fut: body }.await
    };
    trace::finish_in(span, C::KIND, name, &result, stats);
    result
}

/// Layer 3 around layers 4 to 10, then what comes after the handler.
async fn guarded<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    message: Message<'_>,
    output: &mut Erased,
    cx: &mut C,
    prechecked: Option<Checked>,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let deadline = timeout::deadline(pipe.layers().timeout, cx.metadata());
    // `invalidates = [Query(field = ..)]`: the answers to drop are read from the command now,
    // before its handler takes it (nothing to do, and no allocation, for the others).
    let mut targets: Vec<Invalidation> = Vec::new();
    if let Some(command) = pipe.peek(message.get()) {
        target::compute(&pipe.layers().invalidates, command, &mut targets);
    }
    {
        let checked = pin!(checked(pipe, bus, message, output, cx, prechecked, stats));
        timeout::run(deadline, pipe.message_name(), checked).await?;
    }
    cx.after(pipe.layers(), bus, &targets, stats).await;
    Ok(())
}

/// Layers 4 and 5, then 6 or 7 when the message has them.
async fn checked<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    message: Message<'_>,
    output: &mut Erased,
    cx: &mut C,
    prechecked: Option<Checked>,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    let Some(seen) = pipe.peek(message.get()) else {
        return Err(missing(name));
    };
    if prechecked.is_none() {
        if let Some(authorize) = &pipe.layers().authorize {
            authorize
                .check(bus.resource_policy(), name, seen, cx.metadata())
                .await?;
        }
        pipe.validate(seen)?;
    }
    if let Some(replies) = pipe.replies()
        && let (Some(key), Some(idempotency)) = (cx.metadata().idempotency_key(), bus.idempotency())
    {
        let principal = cx.metadata().principal().map(Principal::id);
        let fingerprint = replies.fingerprint(seen)?;
        let key = idempotency.key(name, principal, key, fingerprint, pipe.layers().timeout);
        // Boxed: the idempotency store does I/O, and its future must not grow every dispatch's.
        return Box::pin(idempotent(
            pipe, replies, bus, key, message, output, cx, stats,
        ))
        .await;
    }
    if let Some((cache, answers)) = pipe.answers() {
        let checked = prechecked.unwrap_or_else(|| Checked {
            key: cache.key(seen, cx.metadata().principal().map(Principal::id)),
            looked: false,
        });
        return cached(
            pipe,
            (cache, answers),
            bus,
            checked,
            message,
            output,
            cx,
            stats,
        )
        .await;
    }
    attempts(pipe, bus, None, message, output, cx, &mut stats.attempts).await
}

/// Layer 6: the attempts, at most once per idempotency key.
#[allow(clippy::too_many_arguments)]
async fn idempotent<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    replies: &dyn Replies,
    bus: &Runtime,
    key: IdempotencyKey,
    message: Message<'_>,
    output: &mut Erased,
    cx: &mut C,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let Some(idempotency) = bus.idempotency() else {
        return Err(missing(pipe.message_name()));
    };
    let outcome = idempotency
        .run(&key, || async {
            let tries = &mut stats.attempts;
            attempts(pipe, bus, Some(&key), message, &mut *output, cx, tries).await?;
            Ok(((), replies.encode_output(output)))
        })
        .await?;
    match outcome {
        Outcome::Executed(()) => Ok(()),
        Outcome::Replayed(reply) => {
            replies.decode_output(&reply, output).map_err(|e| {
                e.context(format!(
                    "decoding the stored reply of `{}`",
                    pipe.message_name()
                ))
            })?;
            stats.replayed = true;
            stats.attempts = 0;
            Ok(())
        }
    }
}

/// Layer 7: the answer from the cache, or the attempts once for every concurrent caller.
#[allow(clippy::too_many_arguments)]
async fn cached<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    (cache, answers): (&CacheLayer, &dyn Answers),
    bus: &Runtime,
    Checked { key, looked }: Checked,
    mut message: Message<'_>,
    output: &mut Erased,
    cx: &mut C,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    stats.cached = true;
    let DispatchStats {
        attempts: tries,
        cache_hit,
        ..
    } = stats;
    // Where a computed answer is stored: on a miss only (a hit returns before computing).
    let Some(stored) = pipe.peek(message.get()).map(|q| cache.stored_under(q, key)) else {
        return Err(missing(name));
    };
    let answer = cache
        .run(answers.codec(), stored, looked, cache_hit, || async {
            attempts(pipe, bus, None, message.reborrow(), &mut *output, cx, tries).await?;
            answers.share_output(output)
        })
        .await?;
    answers.restore_output(answer, output)
}

/// Layer 8: the one retry loop. Each attempt runs the inner layers again, in a context that
/// forgot what the last one left (events, a transaction). `key`: the idempotency key whose
/// reply a transaction stores with the work.
async fn attempts<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    mut message: Message<'_>,
    output: &mut Erased,
    cx: &mut C,
    tries: &mut u32,
) -> Result<(), Error> {
    let mut tries = retry::Attempts::new(pipe.layers().retry.as_ref(), tries);
    loop {
        let last = tries.start();
        cx.reset();
        match attempt(pipe, bus, key, message.reborrow(), last, &mut *output, cx).await {
            Ok(()) => return Ok(()),
            Err(error) => tries.failed(error, last).await?,
        }
    }
}

/// Layer 8½ (`#[exclusive]`: the attempt's lock, around its transaction), then 9 and 10.
async fn attempt<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    message: Message<'_>,
    last: bool,
    output: &mut Erased,
    cx: &mut C,
) -> Result<(), Error> {
    let Some(lock) = &pipe.layers().exclusive else {
        return unlocked(pipe, bus, key, message, last, output, cx).await;
    };
    // Boxed: a lock does I/O, and only `#[exclusive]` handlers take one.
    Box::pin(async move {
        let handler = pipe.handler_name();
        let Some(slot) = cx.tx_slot() else {
            return Err(Error::internal(format!(
                "`#[exclusive]` on `{handler}`: only commands take a lock"
            )));
        };
        let locks = bus.stores.locks.as_deref();
        exclusive::acquire(lock, locks, pipe.peek(message.get()), slot, handler).await?;
        let result = unlocked(pipe, bus, key, message, last, output, cx).await;
        match cx.tx_slot() {
            Some(slot) => exclusive::release(slot, handler, result).await,
            None => result,
        }
    })
    .await
}

/// Layers 9 and 10: the handler, in a transaction when it is `#[transactional]`.
async fn unlocked<C: LayerContext>(
    pipe: &dyn FullPipe<Context = C>,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    message: Message<'_>,
    last: bool,
    output: &mut Erased,
    cx: &mut C,
) -> Result<(), Error> {
    let handler = pipe.handler_name();
    match &pipe.layers().transaction {
        // The handler's future is pinned where it is built and polled through `CatchPanic`,
        // which borrows it: handing it to a wrapper by value would keep it twice in the future.
        None => {
            let fut = pin!(pipe.handle(message, last, output, cx)?);
            CatchPanic {
                handler,
                span: None,
                fut,
            }
            .await
        }
        // Boxed: a transaction does I/O, and the database driver's futures are large.
        Some(layer) => {
            Box::pin(async move {
                if !transaction::begin(layer, bus.stores.database()?, cx).await? {
                    return Ok(());
                }
                let result = {
                    let fut = pin!(pipe.handle(message, last, &mut *output, cx)?);
                    CatchPanic {
                        handler,
                        span: None,
                        fut,
                    }
                    .await
                };
                // The reply commits with the work when the idempotency store is the
                // database's own.
                let reply = match (key, pipe.replies()) {
                    (Some(key), Some(replies))
                        if result.is_ok() && bus.stores.idempotency_in_tx =>
                    {
                        Some((key, replies.encode_output(output)))
                    }
                    _ => None,
                };
                transaction::finish(layer, cx, result, reply).await
            })
            .await
        }
    }
}
