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
//! | 9 | transaction | `#[transactional(..)]` (commands) | [`transaction`] |
//! | 10 | handler | the handler, with panics caught | |
//! | after | publish | emitted events to event handlers (through the outbox when transactional), caches named by `invalidates = [..]` dropped | [`publish`] |
//!
//! Each layer is a small type that knows nothing of the others; this module is the only place
//! that composes them. The composition is generic over the message and handler types, so a
//! dispatch is one future with no allocation per layer: the only allocation on the bare path is
//! the boxed future at the type-erased boundary between `bus.send::<C>` and the handler's
//! pipeline.

pub(crate) mod authorize;
pub(crate) mod cache;
pub(crate) mod describe;
pub(crate) mod idempotency;
pub(crate) mod middleware;
pub(crate) mod publish;
pub(crate) mod retry;
pub(crate) mod timeout;
pub(crate) mod trace;
pub(crate) mod transaction;
pub(crate) mod validate;

use std::any::Any;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::Error;
use crate::bus::BusInner;
use crate::bus::report::DispatchStats;
use crate::context::{CommandContext, EventContext, QueryContext};
use crate::envelope::{Envelope, Metadata};
use crate::events::EmittedEvent;
use crate::handler::{CommandHandler, EventHandler, QueryHandler};
use crate::message::{Command, Event, Message, MessageKind, Query};

use self::authorize::AuthorizeLayer;
use self::cache::{CacheLayer, CacheSpec};
use self::idempotency::Outcome;
use self::middleware::Dispatch;
use self::retry::RetryLayer;
use self::transaction::TransactionLayer;

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
    pub(crate) invalidates: Vec<&'static str>,
}

impl Layers {
    /// The layers as `describe()` prints them, in pipeline order.
    pub(crate) fn describe(
        &self,
        kind: MessageKind,
        validated: bool,
        middleware: usize,
    ) -> Vec<String> {
        let mut out = vec!["trace".to_owned()];
        if middleware > 0 {
            out.push(format!("middleware({middleware})"));
        }
        if let Some(t) = self.timeout {
            out.push(format!("timeout({})", describe::duration(t)));
        }
        if let Some(a) = &self.authorize {
            out.push(a.to_string());
        }
        if validated {
            out.push("validate".to_owned());
        }
        if kind == MessageKind::Command {
            out.push("idempotency".to_owned());
        }
        if let Some(c) = &self.cache {
            out.push(c.to_string());
        }
        if let Some(r) = &self.retry {
            out.push(r.to_string());
        }
        if let Some(t) = &self.transaction {
            out.push(t.to_string());
        }
        out.push("handler".to_owned());
        if !self.invalidates.is_empty() {
            out.push(format!("invalidates{}", describe::list(&self.invalidates)));
        }
        out
    }
}

/// What the inner layers of a command produce: the output, and the events to publish.
pub(crate) struct Handled<T> {
    pub(crate) output: T,
    pub(crate) events: Vec<EmittedEvent>,
}

impl<T> Handled<T> {
    fn replayed(output: T) -> Self {
        Handled {
            output,
            events: Vec::new(),
        }
    }
}

/// Awaits a handler's future, turning a panic into an `Internal` error.
pub(crate) async fn guard_panic<T>(
    handler: &'static str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let error = crate::error::from_panic(&format!("handler `{handler}`"), payload);
            tracing::error!(target: "cqrs", handler, "{error}");
            Err(error)
        }
    }
}

fn command_json<C: Command>(message: &(dyn Any + Send + Sync)) -> Option<serde_json::Value> {
    message
        .downcast_ref::<C>()
        .and_then(|m| serde_json::to_value(m).ok())
}

/// Runs the middleware chain of `kind` around `inner`, or `inner` alone when there is none.
async fn with_middleware<'a, M: Message, T: Send>(
    bus: &'a BusInner,
    handler: &'static str,
    message: &'a M,
    metadata: &'a Metadata,
    to_json: Option<fn(&(dyn Any + Send + Sync)) -> Option<serde_json::Value>>,
    inner: impl Future<Output = Result<T, Error>> + Send + 'a,
) -> Result<T, Error> {
    let chain = bus.middleware(M::KIND);
    if chain.is_empty() {
        return inner.await;
    }
    let dispatch = Dispatch {
        kind: M::KIND,
        name: M::NAME,
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
            "a middleware returned Ok without running `{}`",
            M::NAME
        ))),
        (Err(error), _) => Err(error),
    }
}

/// The type-erased entry point of a command's pipeline.
pub(crate) trait CommandPipe<C: Command>: Send + Sync {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<C>,
        stats: &'a mut DispatchStats,
    ) -> BoxFuture<'a, Result<C::Output, Error>>;
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
        stats: &'a mut DispatchStats,
    ) -> BoxFuture<'a, Result<C::Output, Error>> {
        Box::pin(self.run(bus, env, stats))
    }
}

impl<C: Command, H: CommandHandler<C>> CommandPipeline<C, H> {
    /// Layers 1 and 2.
    async fn run(
        &self,
        bus: &BusInner,
        env: Envelope<C>,
        stats: &mut DispatchStats,
    ) -> Result<C::Output, Error> {
        let Envelope { message, metadata } = env;
        let span = trace::span(MessageKind::Command, C::NAME, self.name, &metadata);
        let result = async {
            if bus.middleware(MessageKind::Command).is_empty() {
                let mut cx = CommandContext::new(bus, metadata, self.name);
                self.guarded(bus, message, &mut cx, stats).await
            } else {
                let mut cx = CommandContext::new(bus, metadata.clone(), self.name);
                let inner = self.guarded(bus, message.clone(), &mut cx, stats);
                with_middleware(
                    bus,
                    self.name,
                    &message,
                    &metadata,
                    Some(command_json::<C>),
                    inner,
                )
                .await
            }
        }
        .instrument(span.clone())
        .await;
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
        if stats.collect_events {
            stats
                .events
                .extend(handled.events.iter().map(EmittedEvent::name));
        }
        // Answers the command made stale go before its events do: a handler reacting to them
        // must read what the command changed.
        for query in &self.layers.invalidates {
            bus.invalidate_by_name(query).await;
        }
        publish::after_success(bus, handled.events, &cx.metadata).await;
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
        cx.idempotency = Some(key.clone());
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
            Some(layer) => {
                crate::persistence::begin(layer, cx).await?;
                let result = guard_panic(self.name, self.handler.handle(message, cx)).await;
                crate::persistence::finish(layer, cx, result).await
            }
        }
    }
}

/// The type-erased entry point of a query's pipeline.
pub(crate) trait QueryPipe<Q: Query>: Send + Sync {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<Q>,
        stats: &'a mut DispatchStats,
    ) -> BoxFuture<'a, Result<Q::Output, Error>>;

    fn invalidate(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// The pipeline of one query handler.
pub(crate) struct QueryPipeline<Q: Query, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    pub(crate) layers: Layers,
    pub(crate) cache: Option<CacheLayer<Q>>,
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipe<Q> for QueryPipeline<Q, H> {
    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        env: Envelope<Q>,
        stats: &'a mut DispatchStats,
    ) -> BoxFuture<'a, Result<Q::Output, Error>> {
        Box::pin(self.run(bus, env, stats))
    }

    fn invalidate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match &self.cache {
                Some(cache) => cache.invalidate().await,
                None => Ok(()),
            }
        })
    }
}

impl<Q: Query, H: QueryHandler<Q>> QueryPipeline<Q, H> {
    /// Layers 1 and 2.
    async fn run(
        &self,
        bus: &BusInner,
        env: Envelope<Q>,
        stats: &mut DispatchStats,
    ) -> Result<Q::Output, Error> {
        let Envelope { message, metadata } = env;
        let span = trace::span(MessageKind::Query, Q::NAME, self.name, &metadata);
        let result = async {
            if bus.middleware(MessageKind::Query).is_empty() {
                let cx = QueryContext::new(bus, metadata, self.name);
                self.guarded(bus, message, &cx, stats).await
            } else {
                let cx = QueryContext::new(bus, metadata.clone(), self.name);
                let inner = self.guarded(bus, message.clone(), &cx, stats);
                with_middleware(bus, self.name, &message, &metadata, None, inner).await
            }
        }
        .instrument(span.clone())
        .await;
        trace::finish(&span, MessageKind::Query, Q::NAME, &result, stats);
        result
    }

    /// Layers 3 to 7.
    async fn guarded(
        &self,
        bus: &BusInner,
        message: Q,
        cx: &QueryContext,
        stats: &mut DispatchStats,
    ) -> Result<Q::Output, Error> {
        let deadline = timeout::deadline(self.layers.timeout, &cx.metadata);
        timeout::run(deadline, Q::NAME, async {
            if let Some(authorize) = &self.layers.authorize {
                authorize
                    .check(bus.resource_policy(), Q::NAME, &message, &cx.metadata)
                    .await?;
            }
            message.validate_message()?;
            match &self.cache {
                None => self.attempts(message, cx, &mut stats.attempts).await,
                Some(cache) => {
                    stats.cached = true;
                    let DispatchStats {
                        attempts,
                        cache_hit,
                        ..
                    } = stats;
                    cache
                        .run(&message, cache_hit, || {
                            self.attempts(message.clone(), cx, attempts)
                        })
                        .await
                }
            }
        })
        .await
    }

    /// Layers 8 and 10.
    async fn attempts(
        &self,
        message: Q,
        cx: &QueryContext,
        attempts: &mut u32,
    ) -> Result<Q::Output, Error> {
        let Some(retry) = &self.layers.retry else {
            *attempts = 1;
            return guard_panic(self.name, self.handler.handle(message, cx)).await;
        };
        let mut message = Some(message);
        loop {
            *attempts += 1;
            let last = *attempts >= retry.max_attempts();
            let this = if last {
                message.take()
            } else {
                message.clone()
            };
            let Some(this) = this else {
                return Err(Error::internal("retry ran past its last attempt"));
            };
            match guard_panic(self.name, self.handler.handle(this, cx)).await {
                Ok(output) => return Ok(output),
                Err(error) => match retry.next_delay(*attempts, &error) {
                    Some(delay) => retry::pause(delay).await,
                    None => return Err(error),
                },
            }
        }
    }
}

/// The type-erased entry point of one event handler.
pub(crate) trait EventPipe: Send + Sync {
    fn handler_name(&self) -> &'static str;

    /// The event's name and how to decode a stored one.
    fn event(&self) -> (&'static str, crate::events::EventDecoder);

    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        event: &'a (dyn Any + Send + Sync),
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// The pipeline of one event handler: trace, timeout, retry, handler.
pub(crate) struct EventPipeline<E, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    pub(crate) layers: Layers,
    pub(crate) _event: PhantomData<fn(E)>,
}

impl<E: Event, H: EventHandler<E>> EventPipe for EventPipeline<E, H> {
    fn handler_name(&self) -> &'static str {
        self.name
    }

    fn event(&self) -> (&'static str, crate::events::EventDecoder) {
        (E::NAME, crate::events::decode_event::<E>)
    }

    fn call<'a>(
        &'a self,
        bus: &'a BusInner,
        event: &'a (dyn Any + Send + Sync),
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let Some(event) = event.downcast_ref::<E>() else {
                return Err(Error::internal(format!(
                    "event handler `{}` was given something other than `{}`",
                    self.name,
                    E::NAME
                )));
            };
            let span = trace::span(MessageKind::Event, E::NAME, self.name, metadata);
            let mut stats = DispatchStats::default();
            let deadline = timeout::deadline(self.layers.timeout, metadata);
            let mut cx = EventContext::new(bus, metadata.clone(), self.name);
            let result = timeout::run(
                deadline,
                E::NAME,
                self.attempts(event, &mut cx, &mut stats.attempts),
            )
            .instrument(span.clone())
            .await;
            trace::finish(&span, MessageKind::Event, E::NAME, &result, &stats);
            result
        })
    }
}

impl<E: Event, H: EventHandler<E>> EventPipeline<E, H> {
    async fn attempts(
        &self,
        event: &E,
        cx: &mut EventContext,
        attempts: &mut u32,
    ) -> Result<(), Error> {
        loop {
            *attempts += 1;
            match guard_panic(self.name, self.handler.handle(event, cx)).await {
                Ok(()) => return Ok(()),
                Err(error) => match self
                    .layers
                    .retry
                    .and_then(|r| r.next_delay(*attempts, &error))
                {
                    Some(delay) => retry::pause(delay).await,
                    None => return Err(error),
                },
            }
        }
    }
}
