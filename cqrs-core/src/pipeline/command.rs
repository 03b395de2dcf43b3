//! A command's pipeline: layers 1 to 10 around one command handler, then publishing.
//!
//! Two paths, chosen per dispatch in [`CommandPipe::call`]:
//!
//! - **lean**: nothing but trace, validation and the handler (no middleware, no timeout or
//!   deadline, no authorization, no idempotency key, no retry, no transaction). Its future is
//!   small enough to live inline in the [`DispatchFuture`], so the dispatch allocates nothing.
//! - **full**: every layer the handler and the envelope ask for. Its future is larger and is
//!   boxed (one allocation); layers that do I/O box their own part only when they run.
//!
//! Both end in [`CommandPipeline::after`], so what happens after the handler is the same.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;

use tracing::Span;

use super::idempotency::{self, IdempotencyKey, IdempotencyLayer, Outcome};
use super::trace::InSpan;
use super::{
    DispatchFuture, Guarded, Handled, Layers, guard_panic, publish, retry, timeout, trace,
    with_middleware,
};
use crate::Error;
use crate::bus::BusInner;
use crate::bus::report::DispatchStats;
use crate::context::CommandContext;
use crate::envelope::{Envelope, Metadata};
use crate::events::EmittedEvent;
use crate::handler::CommandHandler;
use crate::message::{Command, MessageKind};

/// The type-erased entry point of a command's pipeline.
pub(crate) trait CommandPipe<C: Command>: Send + Sync {
    /// `stats` is where a report is collected, `None` when nobody asked for one.
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<C>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>>;
}

/// The pipeline of one command handler.
pub(crate) struct CommandPipeline<C, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    pub(crate) layers: Layers,
    pub(crate) _message: PhantomData<fn(C)>,
}

impl<C: Command, H: CommandHandler<C>> CommandPipe<C> for CommandPipeline<C, H> {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<C>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>> {
        if !self.is_lean(bus, &env.metadata) {
            return DispatchFuture::from_or_box(async move {
                let mut own = DispatchStats::default();
                let run = pin!(self.run(bus, env, stats.unwrap_or(&mut own)));
                run.await
            });
        }
        // The context is made here, outside the future: inside, the envelope it comes from and
        // the context would both take space in the future's state.
        let Envelope { message, metadata } = env;
        let span = trace::lean_span(MessageKind::Command, C::NAME, self.name, &metadata);
        let cx = CommandContext::new(bus, metadata, self.name);
        DispatchFuture::from_or_box(self.lean(bus, message, cx, span, stats))
    }
}

impl<C: Command, H: CommandHandler<C>> CommandPipeline<C, H> {
    /// Whether this dispatch needs no layer beyond trace and validation.
    #[inline]
    fn is_lean(&self, bus: &BusInner, metadata: &Metadata) -> bool {
        let Layers {
            timeout,
            authorize,
            retry,
            cache: _,
            transaction,
            invalidates: _,
        } = &self.layers;
        timeout.is_none()
            && authorize.is_none()
            && retry.is_none()
            && transaction.is_none()
            && metadata.deadline().is_none()
            && bus.middleware(MessageKind::Command).is_empty()
            && (metadata.idempotency_key().is_none() || bus.idempotency().is_none())
    }

    /// The lean path: trace, validate, handler, then [`after`](Self::after) when there is
    /// anything to do after.
    ///
    /// Every future is pinned where it is built (`pin!`) and awaited through a wrapper that
    /// borrows it: `fut.await` would move it into a second place in this future's state (a
    /// `memcpy` of its size, and its size again in the state).
    #[allow(clippy::manual_async_fn)] // deliberate: see the comment in the body
    fn lean<'a>(
        &'a self,
        bus: &'a BusInner,
        message: C,
        mut cx: CommandContext,
        span: Option<Span>,
        stats: Option<&'a mut DispatchStats>,
    ) -> impl Future<Output = Result<C::Output, Error>> + Send + 'a {
        // An `async move` block rather than an `async fn`: an `async fn` moves each argument
        // into a local of its body, and both copies take space in its future.
        async move {
            let mut own = DispatchStats::default();
            let stats = stats.unwrap_or(&mut own);
            stats.attempts = 1;
            let handled = match message.validate_message() {
                Err(error) => Err(error),
                Ok(()) => {
                    let fut = pin!(self.handler.handle(message, &mut cx));
                    let handler = self.name;
                    Guarded {
                        handler,
                        span: span.as_ref(),
                        fut,
                    }
                    .await
                }
            };
            let result = match handled {
                Err(error) => Err(error),
                // Nothing to record, publish or invalidate: `after` would only return `output`.
                Ok(output) if cx.events.is_empty() && self.layers.invalidates.is_empty() => {
                    Ok(output)
                }
                Ok(output) => {
                    let events = std::mem::take(&mut cx.events);
                    let fut = pin!(self.after(bus, Handled { output, events }, &cx, stats));
                    InSpan {
                        span: span.as_ref(),
                        fut,
                    }
                    .await
                }
            };
            trace::finish_in(span.as_ref(), MessageKind::Command, C::NAME, &result, stats);
            result
        }
    }

    /// The full path. Layers 1 and 2.
    async fn run(
        &self,
        bus: &BusInner,
        env: Envelope<C>,
        stats: &mut DispatchStats,
    ) -> Result<C::Output, Error> {
        let Envelope { message, metadata } = env;
        let span = trace::span(MessageKind::Command, C::NAME, self.name, &metadata);
        let body = async {
            if bus.middleware(MessageKind::Command).is_empty() {
                let mut cx = CommandContext::new(bus, metadata, self.name);
                self.guarded(bus, message, &mut cx, stats).await
            } else {
                // Boxed: middleware is opt-in, and its (larger) future must not grow the
                // future of every dispatch without it.
                Box::pin(async {
                    let mut cx = CommandContext::new(bus, metadata.clone(), self.name);
                    let inner = self.guarded(bus, message.clone(), &mut cx, stats);
                    with_middleware(
                        bus,
                        self.name,
                        &message,
                        &metadata,
                        Some(super::command_json::<C>),
                        inner,
                    )
                    .await
                })
                .await
            }
        };
        let body = trace::within(&span, body);
        let result = body.await;
        trace::finish(&span, MessageKind::Command, C::NAME, &result, stats);
        result
    }

    /// Layer 3, then publishing.
    async fn guarded(
        &self,
        bus: &BusInner,
        message: C,
        cx: &mut CommandContext,
        stats: &mut DispatchStats,
    ) -> Result<C::Output, Error> {
        let deadline = timeout::deadline(self.layers.timeout, &cx.metadata);
        let handled =
            timeout::run(deadline, C::NAME, self.checked(bus, message, cx, stats)).await?;
        self.after(bus, handled, cx, stats).await
    }

    /// After the handler succeeded: its events recorded (for a report), the caches it names
    /// dropped, then its events published.
    async fn after(
        &self,
        bus: &BusInner,
        handled: Handled<C::Output>,
        cx: &CommandContext,
        stats: &mut DispatchStats,
    ) -> Result<C::Output, Error> {
        if stats.collect_events {
            stats
                .events
                .extend(handled.events.iter().map(EmittedEvent::name));
        }
        // Answers the command made stale go before its events do: a handler reacting to them
        // must read what the command changed. Both are boxed, and only when there is work:
        // their futures are large (event handlers, the outbox) and most dispatches have none.
        if !self.layers.invalidates.is_empty() {
            let invalidate = Box::pin(async {
                for query in &self.layers.invalidates {
                    bus.invalidate_by_name(query).await;
                }
            });
            invalidate.await;
        }
        if !handled.events.is_empty() {
            let publish = Box::pin(publish::after_success(bus, handled.events, &cx.metadata));
            publish.await;
        }
        Ok(handled.output)
    }

    /// Layers 4 to 6.
    async fn checked(
        &self,
        bus: &BusInner,
        message: C,
        cx: &mut CommandContext,
        stats: &mut DispatchStats,
    ) -> Result<Handled<C::Output>, Error> {
        if let Some(authorize) = &self.layers.authorize {
            authorize
                .check(bus.resource_policy(), C::NAME, &message, &cx.metadata)
                .await?;
        }
        message.validate_message()?;
        let (Some(key), Some(idempotency)) = (cx.metadata.idempotency_key(), bus.idempotency())
        else {
            return self.attempts(message, cx, stats).await;
        };
        let key = idempotency.key(
            C::NAME,
            key,
            idempotency::fingerprint(&message)?,
            self.layers.timeout,
        );
        // Boxed: the idempotency store does I/O, and its future must not grow every dispatch's.
        Box::pin(self.idempotent(idempotency, key, message, cx, stats)).await
    }

    /// Layer 6: the attempts, at most once per idempotency key.
    async fn idempotent(
        &self,
        idempotency: &IdempotencyLayer,
        key: IdempotencyKey,
        message: C,
        cx: &mut CommandContext,
        stats: &mut DispatchStats,
    ) -> Result<Handled<C::Output>, Error> {
        cx.idempotency = Some(Box::new(key.clone()));
        let outcome = idempotency
            .run(
                &key,
                |handled: &Handled<C::Output>| &handled.output,
                Handled::replayed,
                || self.attempts(message, cx, &mut *stats),
            )
            .await?;
        Ok(match outcome {
            Outcome::Executed(handled) => handled,
            Outcome::Replayed(handled) => {
                stats.replayed = true;
                stats.attempts = 0;
                handled
            }
        })
    }

    /// Layer 8.
    async fn attempts(
        &self,
        message: C,
        cx: &mut CommandContext,
        stats: &mut DispatchStats,
    ) -> Result<Handled<C::Output>, Error> {
        let Some(retry) = &self.layers.retry else {
            stats.attempts = 1;
            return self.attempt(message, cx).await;
        };
        let mut message = Some(message);
        loop {
            stats.attempts += 1;
            let last = stats.attempts >= retry.max_attempts();
            let this = if last {
                message.take()
            } else {
                message.clone()
            };
            let Some(this) = this else {
                return Err(Error::internal("retry ran past its last attempt"));
            };
            cx.reset();
            match self.attempt(this, cx).await {
                Ok(handled) => return Ok(handled),
                Err(error) => match retry.next_delay(stats.attempts, &error) {
                    Some(delay) => retry::pause(delay).await,
                    None => return Err(error),
                },
            }
        }
    }

    /// Layers 9 and 10.
    async fn attempt(
        &self,
        message: C,
        cx: &mut CommandContext,
    ) -> Result<Handled<C::Output>, Error> {
        match &self.layers.transaction {
            None => {
                let output = guard_panic(self.name, self.handler.handle(message, cx)).await?;
                Ok(Handled {
                    output,
                    events: std::mem::take(&mut cx.events),
                })
            }
            // Boxed: a transaction does I/O, and the database driver's futures are large.
            Some(layer) => {
                Box::pin(async move {
                    crate::persistence::begin(layer, cx).await?;
                    let result = guard_panic(self.name, self.handler.handle(message, cx)).await;
                    crate::persistence::finish(layer, cx, result).await
                })
                .await
            }
        }
    }
}
