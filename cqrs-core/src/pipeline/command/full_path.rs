//! The full path of a command's pipeline: every layer the handler and the envelope ask for
//! (layers 1 to 10 of the table in [`pipeline`](super::super)), written once for all command
//! handlers (see [`erased`](super::super::erased) for why). The handler's types reach it
//! through [`ErasedCommand`] and the two slots the typed caller owns. Its future is boxed by
//! the caller: one allocation, whatever the number of decorators that do no I/O.

use std::pin::pin;

use super::super::cache::target::{self, Invalidation};
use super::super::erased::{Erased, HandleFuture, missing};
use super::super::idempotency::{IdempotencyKey, Outcome};
use super::super::trace::InSpan;
use super::super::{
    CatchPanic, Layers, exclusive, publish, retry, timeout, trace, transaction, with_middleware,
};
use crate::Error;
use crate::context::CommandContext;
use crate::envelope::{Metadata, Principal};
use crate::events::EmittedEvent;
use crate::message::MessageKind;
use crate::pipeline::report::DispatchStats;
use crate::pipeline::runtime::Runtime;

/// What the full path needs from one handler's types. Implemented by
/// [`CommandPipeline`](super::CommandPipeline); every method is small, so a handler adds little
/// code of its own.
pub(crate) trait ErasedCommand: Send + Sync {
    /// The command's name.
    fn message_name(&self) -> &'static str;
    /// The handler's name.
    fn handler_name(&self) -> &'static str;
    fn layers(&self) -> &Layers;
    /// Starts the handler on the message in `message`: the last attempt takes it, the others
    /// clone it. A success writes `output`. An error means an empty or mistyped slot.
    fn handle<'a>(
        &'a self,
        message: &'a mut Erased,
        last: bool,
        output: &'a mut Erased,
        cx: &'a mut CommandContext,
    ) -> Result<HandleFuture<'a>, Error>;
    /// The message in the slot, as `&C` (for authorization, validation, middleware).
    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased>;
    fn validate(&self, message: &Erased) -> Result<(), Error>;
    /// The fingerprint of the message, for idempotency.
    fn fingerprint(&self, message: &Erased) -> Result<String, Error>;
    /// A copy of the message slot, for middleware to look at while the handler owns the message.
    fn clone_message(&self, message: &Erased) -> Box<Erased>;
    /// The command as JSON, for middleware.
    fn to_json(&self) -> fn(&Erased) -> Option<serde_json::Value>;
    /// The output in the slot, serialized: the reply an idempotency store keeps.
    fn encode_output(&self, output: &Erased) -> Result<Vec<u8>, Error>;
    /// Writes a stored reply into the output slot.
    fn decode_output(&self, reply: &[u8], output: &mut Erased) -> Result<(), Error>;
}

/// The full path. Layers 1 and 2.
pub(crate) async fn run(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    message: &mut Erased,
    output: &mut Erased,
    metadata: Metadata,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let name = pipe.message_name();
    // Futures are pinned where they are built and awaited through wrappers that borrow them
    // (`InSpan`, a pinned reference given to `timeout::run`): moving one into a wrapper would
    // keep its moved-from copy's space in this future too, and copy it.
    let span = trace::lean_span(MessageKind::Command, name, pipe.handler_name(), &metadata);
    let result = {
        let body = pin!(async {
            if bus.middleware(MessageKind::Command).is_empty() {
                let mut cx = CommandContext::new(bus.ptr(), &metadata, pipe.handler_name());
                guarded(pipe, bus, message, output, &mut cx, stats).await
            } else {
                // Boxed: middleware is opt-in, and its (larger) future must not grow the future
                // of every dispatch without it. The middleware sees a copy of the message; the
                // handler gets the original.
                Box::pin(async {
                    let copy = pipe.clone_message(message);
                    let Some(seen) = pipe.peek(&*copy) else {
                        return Err(missing(name));
                    };
                    let mut cx = CommandContext::new(bus.ptr(), &metadata, pipe.handler_name());
                    let inner = guarded(pipe, bus, message, output, &mut cx, stats);
                    with_middleware(
                        bus,
                        (MessageKind::Command, name),
                        pipe.handler_name(),
                        seen,
                        &metadata,
                        Some(pipe.to_json()),
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
    trace::finish_in(span.as_ref(), MessageKind::Command, name, &result, stats);
    result
}

/// Layer 3, then what comes after the handler.
async fn guarded(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    message: &mut Erased,
    output: &mut Erased,
    cx: &mut CommandContext,
    stats: &mut DispatchStats,
) -> Result<(), Error> {
    let deadline = timeout::deadline(pipe.layers().timeout, cx.metadata());
    // `invalidates = [Query(field = ..)]`: the answers to drop are read from the command now,
    // before its handler takes it (nothing to do, and no allocation, for the others).
    let mut targets = Vec::new();
    if let Some(command) = pipe.peek(message) {
        target::compute(&pipe.layers().invalidates, command, &mut targets);
    }
    let events = {
        let checked = pin!(checked(pipe, bus, message, output, cx, stats));
        timeout::run(deadline, pipe.message_name(), checked).await?
    };
    after(pipe.layers(), bus, events, &targets, cx, stats).await;
    Ok(())
}

/// After the handler succeeded: its events recorded (for a report), the caches it names
/// dropped, then its events published. Shared with the lean path.
pub(crate) async fn after(
    layers: &Layers,
    bus: &Runtime,
    events: Vec<EmittedEvent>,
    targets: &[Invalidation],
    cx: &CommandContext,
    stats: &mut DispatchStats,
) {
    if stats.collect_events {
        stats.events.extend(events.iter().map(EmittedEvent::name));
    }
    // Answers the command made stale go before its events do: a handler reacting to them
    // must read what the command changed. Both box their work, and only when there is some:
    // their futures are large (event handlers, the outbox) and most dispatches have none.
    if !layers.invalidates.is_empty() {
        let invalidate = Box::pin(async {
            // `targets`: computed from the command before its handler took it, when some
            // entry is by field; otherwise every entry drops its whole query.
            if targets.is_empty() {
                for entry in &layers.invalidates {
                    bus.invalidate(Invalidation::all(entry.query)).await;
                }
            } else {
                for invalidation in targets {
                    bus.invalidate(*invalidation).await;
                }
            }
        });
        invalidate.await;
    }
    if !events.is_empty() {
        // Not boxed here: `after_success` boxes its delivery itself, and only when some event
        // has a handler, an observer or an outbox row to mark.
        publish::after_success(bus, events, cx.metadata()).await;
    }
}

/// Layers 4 to 6.
async fn checked(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    message: &mut Erased,
    output: &mut Erased,
    cx: &mut CommandContext,
    stats: &mut DispatchStats,
) -> Result<Vec<EmittedEvent>, Error> {
    let name = pipe.message_name();
    let Some(command) = pipe.peek(message) else {
        return Err(missing(name));
    };
    if let Some(authorize) = &pipe.layers().authorize {
        authorize
            .check(bus.resource_policy(), name, command, cx.metadata())
            .await?;
    }
    pipe.validate(command)?;
    let (Some(key), Some(idempotency)) = (cx.metadata().idempotency_key(), bus.idempotency())
    else {
        return attempts(pipe, bus, None, message, output, cx, stats).await;
    };
    let principal = cx.metadata().principal().map(Principal::id);
    let key = idempotency.key(
        name,
        principal,
        key,
        pipe.fingerprint(command)?,
        pipe.layers().timeout,
    );
    // Boxed: the idempotency store does I/O, and its future must not grow every dispatch's.
    Box::pin(idempotent(pipe, bus, key, message, output, cx, stats)).await
}

/// Layer 6: the attempts, at most once per idempotency key.
async fn idempotent(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    key: IdempotencyKey,
    message: &mut Erased,
    output: &mut Erased,
    cx: &mut CommandContext,
    stats: &mut DispatchStats,
) -> Result<Vec<EmittedEvent>, Error> {
    let Some(idempotency) = bus.idempotency() else {
        return Err(missing(pipe.message_name()));
    };
    let outcome = idempotency
        .run(&key, || async {
            let events = attempts(
                pipe,
                bus,
                Some(&key),
                message,
                &mut *output,
                cx,
                &mut *stats,
            )
            .await?;
            Ok((events, pipe.encode_output(output)))
        })
        .await?;
    match outcome {
        Outcome::Executed(events) => Ok(events),
        Outcome::Replayed(reply) => {
            pipe.decode_output(&reply, output).map_err(|e| {
                e.context(format!(
                    "decoding the stored reply of `{}`",
                    pipe.message_name()
                ))
            })?;
            stats.replayed = true;
            stats.attempts = 0;
            Ok(Vec::new())
        }
    }
}

/// Layer 8. `key`: the idempotency key whose reply the transaction stores.
async fn attempts(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    message: &mut Erased,
    output: &mut Erased,
    cx: &mut CommandContext,
    stats: &mut DispatchStats,
) -> Result<Vec<EmittedEvent>, Error> {
    let mut tries = retry::Attempts::new(pipe.layers().retry.as_ref(), &mut stats.attempts);
    loop {
        let last = tries.start();
        // What an earlier attempt left behind (events, a transaction) is not this one's.
        cx.reset();
        match attempt(pipe, bus, key, message, last, output, cx).await {
            Ok(events) => return Ok(events),
            Err(error) => tries.failed(error, last).await?,
        }
    }
}

/// Layer 8½ (`#[exclusive]`: the attempt's lock, around its transaction), then 9 and 10.
async fn attempt(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    message: &mut Erased,
    last: bool,
    output: &mut Erased,
    cx: &mut CommandContext,
) -> Result<Vec<EmittedEvent>, Error> {
    let Some(lock) = &pipe.layers().exclusive else {
        return unlocked(pipe, bus, key, message, last, output, cx).await;
    };
    // Boxed: a lock does I/O, and only `#[exclusive]` handlers take one.
    Box::pin(async move {
        exclusive::acquire(lock, bus, pipe.peek(message), cx).await?;
        let result = unlocked(pipe, bus, key, message, last, output, cx).await;
        exclusive::release(cx, result).await
    })
    .await
}

/// Layers 9 and 10.
async fn unlocked(
    pipe: &dyn ErasedCommand,
    bus: &Runtime,
    key: Option<&IdempotencyKey>,
    message: &mut Erased,
    last: bool,
    output: &mut Erased,
    cx: &mut CommandContext,
) -> Result<Vec<EmittedEvent>, Error> {
    let handler = pipe.handler_name();
    match &pipe.layers().transaction {
        // The handler's future is pinned where it is built and polled through `CatchPanic`,
        // which borrows it: handing it to a wrapper by value would keep it twice in the future.
        None => {
            {
                let fut = pin!(pipe.handle(message, last, output, cx)?);
                let span = None;
                CatchPanic { handler, span, fut }.await?;
            }
            Ok(cx.events.take())
        }
        // Boxed: a transaction does I/O, and the database driver's futures are large.
        Some(layer) => {
            Box::pin(async move {
                transaction::begin(layer, bus, cx).await?;
                let result = {
                    let fut = pin!(pipe.handle(message, last, &mut *output, cx)?);
                    let span = None;
                    CatchPanic { handler, span, fut }.await
                };
                let reply = || pipe.encode_output(output);
                transaction::finish(layer, bus, cx, key, result, reply).await
            })
            .await
        }
    }
}
