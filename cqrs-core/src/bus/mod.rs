//! The bus: built once, then dispatching without locks (DESIGN §4).

pub(crate) mod build_error;
pub(crate) mod builder;
pub(crate) mod describe;
pub(crate) mod install;
pub(crate) mod report;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::Error;
use crate::envelope::{Envelope, IntoEnvelope};
use crate::events::{EventDecoder, EventObserver, HandlerFailure};
use crate::message::{Command, Event, Message, MessageKind, Query};
use crate::persistence::Persistence;
use crate::pipeline::authorize::DynResourcePolicy;
use crate::pipeline::cache::CacheRegion;
use crate::pipeline::idempotency::IdempotencyLayer;
use crate::pipeline::middleware::MiddlewareChain;
use crate::pipeline::{CommandPipe, DispatchFuture, EventPipe, QueryPipe, publish};

pub use self::build_error::{BuildError, BuildProblem};
pub use self::builder::BusBuilder;
pub use self::describe::{Description, HandlerDescription, MessageDescription};
use self::report::DispatchStats;
pub use self::report::Report;

/// The handlers of one event type.
pub(crate) type EventHandlers = Box<[Box<dyn EventPipe>]>;

pub(crate) type FailureSink = Arc<dyn Fn(&HandlerFailure<'_>) + Send + Sync>;

/// Everything the bus holds; immutable after `build()`.
pub(crate) struct BusInner {
    /// Per command slot: a `Box<dyn CommandPipe<C>>`, erased.
    pub(crate) commands: Box<[Option<Box<dyn Any + Send + Sync>>]>,
    /// Per query slot: a `Box<dyn QueryPipe<Q>>`, erased.
    pub(crate) queries: Box<[Option<Box<dyn Any + Send + Sync>>]>,
    /// Per event slot: its handlers, ordered by name.
    pub(crate) events: Box<[EventHandlers]>,
    pub(crate) command_middleware: Box<MiddlewareChain>,
    pub(crate) query_middleware: Box<MiddlewareChain>,
    pub(crate) failure_sink: Option<FailureSink>,
    pub(crate) observers: Box<[Arc<dyn EventObserver>]>,
    pub(crate) resource_policy: Option<Arc<dyn DynResourcePolicy>>,
    pub(crate) idempotency: Option<IdempotencyLayer>,
    pub(crate) cache_regions: HashMap<&'static str, Arc<dyn CacheRegion>>,
    /// How to decode a stored event, by name (events with a handler here).
    pub(crate) event_decoders: HashMap<&'static str, EventDecoder>,
    pub(crate) persistence: Persistence,
    pub(crate) description: Description,
}

impl BusInner {
    pub(crate) fn middleware(&self, kind: MessageKind) -> &MiddlewareChain {
        match kind {
            MessageKind::Command => &self.command_middleware,
            MessageKind::Query => &self.query_middleware,
            MessageKind::Event => &[],
        }
    }

    pub(crate) fn resource_policy(&self) -> Option<&dyn DynResourcePolicy> {
        self.resource_policy.as_deref()
    }

    pub(crate) fn idempotency(&self) -> Option<&IdempotencyLayer> {
        self.idempotency.as_ref()
    }

    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn event_decoder(&self, name: &str) -> Option<EventDecoder> {
        self.event_decoders.get(name).copied()
    }

    /// Whether events in the outbox are delivered in the dispatch, right after commit.
    pub(crate) fn delivers_inline(&self) -> bool {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        return self.persistence.outbox.inline;
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        return true;
    }

    pub(crate) fn event_handlers(&self, slot: usize) -> &[Box<dyn EventPipe>] {
        self.events.get(slot).map_or(&[], |h| &h[..])
    }

    #[inline]
    fn command_pipe<C: Command>(&self) -> Option<&dyn CommandPipe<C>> {
        let entry = self.commands.get(C::__slot())?.as_ref()?;
        entry
            .downcast_ref::<Box<dyn CommandPipe<C>>>()
            .map(|b| &**b)
    }

    #[inline]
    fn query_pipe<Q: Query>(&self) -> Option<&dyn QueryPipe<Q>> {
        let entry = self.queries.get(Q::__slot())?.as_ref()?;
        entry.downcast_ref::<Box<dyn QueryPipe<Q>>>().map(|b| &**b)
    }

    /// The dispatch of one command, as its pipeline returns it.
    ///
    /// A plain function rather than an `async fn`: an `async fn` would store the envelope in
    /// its state and copy it again into `call`, and would hold the returned 768-byte future
    /// in its own state besides the caller's. The caller pins the result where it lands
    /// (`pin!(bus.send_envelope(..)).await`) so that it is never moved either.
    ///
    /// Inlined, with the no-handler case out of line: the envelope then goes from the caller
    /// to `call` without a copy in between.
    #[inline]
    pub(crate) fn send_envelope<'a, C: Command>(
        &'a self,
        env: Envelope<C>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>> {
        match self.command_pipe::<C>() {
            Some(pipe) => pipe.call(self, env, stats),
            None => no_handler_future::<C, C::Output>(),
        }
    }

    /// The dispatch of one query, as its pipeline returns it: see
    /// [`send_envelope`](Self::send_envelope).
    #[inline]
    pub(crate) fn query_envelope<'a, Q: Query>(
        &'a self,
        env: Envelope<Q>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>> {
        match self.query_pipe::<Q>() {
            Some(pipe) => pipe.call(self, env, stats),
            None => no_handler_future::<Q, Q::Output>(),
        }
    }

    pub(crate) async fn publish_envelope<E: Event>(&self, env: Envelope<E>) -> Result<(), Error> {
        let failures = publish::deliver(self, &env.message, &env.metadata).await;
        let Some((_, first)) = failures.first() else {
            return Ok(());
        };
        let total = self.event_handlers(E::__slot()).len();
        let detail: Vec<String> = failures
            .iter()
            .map(|(h, e)| format!("`{h}`: {e}"))
            .collect();
        // The first failure stays the source, with its own causes (`find_source` reaches them).
        Err(Error::new(
            first.status(),
            format!(
                "{} of {total} handlers of `{}` failed: {}",
                failures.len(),
                E::NAME,
                detail.join("; ")
            ),
        )
        .with_source(crate::StdErrorAdapter(first.clone())))
    }

    pub(crate) async fn invalidate_by_name(&self, query: &str) {
        let Some(region) = self.cache_regions.get(query) else {
            return;
        };
        if let Err(error) = region.invalidate_all().await {
            tracing::warn!(target: "cqrs", query, %error, "cache invalidation failed");
        }
    }

    pub(crate) fn report_failure(&self, failure: &HandlerFailure<'_>) {
        tracing::error!(
            target: "cqrs",
            event = failure.event,
            event_id = %failure.event_id,
            handler = failure.handler,
            status = %failure.error.status(),
            "event handler failed: {:#}",
            failure.error
        );
        if let Some(sink) = &self.failure_sink {
            sink(failure);
        }
    }
}

#[cold]
#[inline(never)]
fn no_handler_future<'a, M: Message, T: Send + 'a>() -> DispatchFuture<'a, Result<T, Error>> {
    DispatchFuture::from_or_box(std::future::ready(Err(no_handler::<M>())))
}

fn no_handler<M: Message>() -> Error {
    Error::no_handler(format!(
        "no handler for {} `{}` ({}): declare one with `#[{}_handler({})]` or register one with `Bus::builder().discover(false).register::<..>()`",
        M::KIND,
        M::NAME,
        std::any::type_name::<M>(),
        M::KIND,
        std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or(M::NAME),
    ))
}

/// A strong handle, or a weak one held by a handler (which must not keep the bus alive).
#[derive(Clone)]
pub(crate) enum BusRef {
    Strong(Arc<BusInner>),
    Weak(Weak<BusInner>),
}

pub(crate) enum InnerRef<'a> {
    Borrowed(&'a BusInner),
    Owned(Arc<BusInner>),
}

impl Deref for InnerRef<'_> {
    type Target = BusInner;
    #[inline]
    fn deref(&self) -> &BusInner {
        match self {
            InnerRef::Borrowed(inner) => inner,
            InnerRef::Owned(inner) => inner,
        }
    }
}

impl BusRef {
    #[inline]
    pub(crate) fn get(&self) -> Result<InnerRef<'_>, Error> {
        match self {
            BusRef::Strong(inner) => Ok(InnerRef::Borrowed(inner)),
            BusRef::Weak(weak) => weak
                .upgrade()
                .map(InnerRef::Owned)
                .ok_or_else(|| Error::unavailable("the bus has been dropped")),
        }
    }
}

/// The command, query and event bus.
///
/// Built once with [`Bus::builder`], then cloned freely (a clone is an `Arc` clone) and shared
/// across tasks. It never changes after `build()`, and finding a message's pipeline takes no
/// lock (an array index for a non-generic message; a generic one, whose slot is assigned at
/// run time, reads it under a read lock). Layers that share state take their own: a cache
/// miss registers itself so that concurrent misses run the handler once, and the in-memory
/// idempotency store locks its map.
///
/// ```
/// use cqrs_core::prelude::*;
///
/// #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// #[command(output = String)]
/// struct Greet { name: String }
///
/// #[command_handler(Greet)]
/// struct GreetHandler;
///
/// impl CommandHandler<Greet> for GreetHandler {
///     async fn handle(&self, cmd: Greet, _cx: &mut CommandContext) -> Result<String, Error> {
///         Ok(format!("hello, {}", cmd.name))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().discover(false).register::<GreetHandler>().build()?;
/// assert_eq!(bus.send(Greet { name: "ada".into() }).await?, "hello, ada");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: BusRef,
}

impl Bus {
    /// A builder that discovers every handler declared with the attribute macros.
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    /// Sends a command (or an [`Envelope`] of one) to its handler.
    pub async fn send<M>(&self, message: M) -> Result<<M::Message as Command>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let inner = self.inner.get()?;
        let dispatch = pin!(inner.send_envelope(message.into_envelope(), None));
        dispatch.await
    }

    /// Sends a command and reports what happened: attempts, events emitted, replay, elapsed time.
    pub async fn send_with_report<M>(
        &self,
        message: M,
    ) -> Result<Report<<M::Message as Command>::Output>, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let started = Instant::now();
        let inner = self.inner.get()?;
        let mut stats = DispatchStats::reporting();
        let output = {
            let dispatch = pin!(inner.send_envelope(message.into_envelope(), Some(&mut stats)));
            dispatch.await?
        };
        Ok(stats.into_report(output, started.elapsed()))
    }

    /// Asks a query (or an [`Envelope`] of one).
    pub async fn query<M>(&self, message: M) -> Result<<M::Message as Query>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let inner = self.inner.get()?;
        let dispatch = pin!(inner.query_envelope(message.into_envelope(), None));
        dispatch.await
    }

    /// Asks a query and reports what happened: cache hit or miss, attempts, elapsed time.
    pub async fn query_with_report<M>(
        &self,
        message: M,
    ) -> Result<Report<<M::Message as Query>::Output>, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let started = Instant::now();
        let inner = self.inner.get()?;
        let mut stats = DispatchStats::reporting();
        let output = {
            let dispatch = pin!(inner.query_envelope(message.into_envelope(), Some(&mut stats)));
            dispatch.await?
        };
        Ok(stats.into_report(output, started.elapsed()))
    }

    /// Delivers an event (or an [`Envelope`] of one) to every handler of its type.
    ///
    /// Every handler runs even if one fails; the result is an error (with the first failure's
    /// status) listing the handlers that failed.
    pub async fn publish<M>(&self, event: M) -> Result<(), Error>
    where
        M: IntoEnvelope,
        M::Message: Event,
    {
        let inner = self.inner.get()?;
        // Pinned in place, not moved into this future's state: see `BusInner::send_envelope`.
        pin!(inner.publish_envelope(event.into_envelope())).await
    }

    /// Drops every cached answer of query `Q`.
    pub async fn invalidate<Q: Query>(&self) -> Result<(), Error> {
        let inner = self.inner.get()?;
        match inner.query_pipe::<Q>() {
            Some(pipe) => pipe.invalidate().await,
            None => Ok(()),
        }
    }

    /// Every message, its handlers, their pipelines and where they are declared.
    pub fn describe(&self) -> Description {
        match self.inner.get() {
            Ok(inner) => inner.description.clone(),
            Err(_) => Description::default(),
        }
    }

    /// A handle that can only ask queries.
    pub fn query_bus(&self) -> QueryBus {
        QueryBus {
            inner: self.inner.clone(),
        }
    }

    /// Whether a handler is registered for command or query `M`, or any for event `M`.
    pub fn handles<M: Message>(&self) -> bool {
        let Ok(inner) = self.inner.get() else {
            return false;
        };
        let slot = M::__slot();
        match M::KIND {
            MessageKind::Command => inner.commands.get(slot).is_some_and(Option::is_some),
            MessageKind::Query => inner.queries.get(slot).is_some_and(Option::is_some),
            MessageKind::Event => !inner.event_handlers(slot).is_empty(),
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bus");
        if let Ok(inner) = self.inner.get() {
            d.field("commands", &inner.commands.iter().flatten().count())
                .field("queries", &inner.queries.iter().flatten().count())
                .field(
                    "event_handlers",
                    &inner.events.iter().map(|h| h.len()).sum::<usize>(),
                );
        }
        d.finish_non_exhaustive()
    }
}

/// A handle on the bus that can only ask queries: what a query handler (or, with a documented
/// `reads_queries` exception, a command handler) holds to read other read models.
///
/// Injected by type like any dependency. It does not keep the bus alive: once every `Bus`
/// handle is dropped, its queries fail with `Unavailable`.
#[derive(Clone)]
pub struct QueryBus {
    pub(crate) inner: BusRef,
}

impl QueryBus {
    /// Asks a query.
    pub async fn query<M>(&self, message: M) -> Result<<M::Message as Query>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let inner = self.inner.get()?;
        let dispatch = pin!(inner.query_envelope(message.into_envelope(), None));
        dispatch.await
    }
}

impl fmt::Debug for QueryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBus").finish_non_exhaustive()
    }
}
