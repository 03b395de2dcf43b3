//! The runtime: every handler's pipeline, assembled by `build()`, and what the layers share
//! (middleware, stores, cache regions, event handlers). Immutable once built.
//!
//! The bus owns one behind an `Arc`; layers and contexts reach it by reference. It is the
//! handle the pipeline needs to publish events and dispatch nested messages, so it lives here,
//! below the bus, and the bus only wraps it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;

use super::authorize::DynResourcePolicy;
use super::cache::CacheRegions;
use super::cache::target::Invalidation;
use super::idempotency::IdempotencyLayer;
use super::middleware::MiddlewareChain;
use super::report::DispatchStats;
use super::stores::Stores;
use super::{CommandPipe, DispatchFuture, EventPipe, QueryPipe};
use crate::Error;
use crate::context::{CommandContext, EventContext, QueryContext, RuntimePtr};
use crate::envelope::{Envelope, IntoEnvelope, Owned};
use crate::events::{EventDecoder, EventObserver, HandlerFailure};
use crate::message::{Command, Message, MessageKind, Query};

/// The handlers of one event type.
pub(crate) type EventHandlers = Box<[Box<dyn EventPipe>]>;

pub(crate) type FailureSink = Arc<dyn Fn(&HandlerFailure<'_>) + Send + Sync>;

/// Everything a built bus holds; immutable after `build()`.
pub(crate) struct Runtime {
    /// Per command slot: a `Box<dyn CommandPipe<C>>`, erased.
    pub(crate) commands: Box<[Option<PipeEntry>]>,
    /// Per query slot: a `Box<dyn QueryPipe<Q>>`, erased.
    pub(crate) queries: Box<[Option<PipeEntry>]>,
    /// Per event slot: its handlers, ordered by name.
    pub(crate) events: Box<[EventHandlers]>,
    pub(crate) command_middleware: Box<MiddlewareChain>,
    pub(crate) query_middleware: Box<MiddlewareChain>,
    pub(crate) failure_sink: Option<FailureSink>,
    pub(crate) observers: Box<[Arc<dyn EventObserver>]>,
    pub(crate) resource_policy: Option<Arc<dyn DynResourcePolicy>>,
    pub(crate) idempotency: Option<IdempotencyLayer>,
    /// The cached queries' regions, and the channel their invalidations go to other
    /// processes on.
    pub(crate) cache_regions: Arc<CacheRegions>,
    /// How to decode a stored event, by name (events with a handler here).
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) event_decoders: HashMap<&'static str, EventDecoder>,
    pub(crate) stores: Stores,
}

/// One command's or query's pipeline, erased (a `Box<dyn CommandPipe<C>>` or
/// `Box<dyn QueryPipe<Q>>` behind `dyn Any`), with its type id read once, at `build()`: a
/// dispatch compares it with a constant instead of asking the box for it (a call through its
/// vtable, on every dispatch).
pub(crate) struct PipeEntry {
    type_id: TypeId,
    pipe: Box<dyn Any + Send + Sync>,
}

impl PipeEntry {
    pub(crate) fn new(pipe: Box<dyn Any + Send + Sync>) -> Self {
        PipeEntry {
            // The boxed value's type, not the box's (`Box<dyn Any>` is `Any` too).
            type_id: (*pipe).type_id(),
            pipe,
        }
    }

    /// The pipeline, if it is a `P` (what `downcast_ref` does, with the id read at `build()`).
    #[allow(unsafe_code)]
    #[inline]
    fn get<P: Any>(&self) -> Option<&P> {
        if self.type_id != TypeId::of::<P>() {
            return None;
        }
        let pipe: *const (dyn Any + Send + Sync) = &*self.pipe;
        // SAFETY: the boxed value is a `P`: its type id, read when the entry was made from this
        // box (which is never replaced), is `P`'s.
        Some(unsafe { &*pipe.cast::<P>() })
    }
}

impl Runtime {
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
        self.stores.transport.is_none()
            && (self.stores.database.is_none() || self.stores.outbox_inline)
    }

    pub(crate) fn event_handlers(&self, slot: usize) -> &[Box<dyn EventPipe>] {
        self.events.get(slot).map_or(&[], |h| &h[..])
    }

    #[inline]
    pub(crate) fn command_pipe<C: Command>(&self) -> Option<&dyn CommandPipe<C>> {
        let entry = self.commands.get(C::__slot())?.as_ref()?;
        entry.get::<Box<dyn CommandPipe<C>>>().map(|b| &**b)
    }

    #[inline]
    pub(crate) fn query_pipe<Q: Query>(&self) -> Option<&dyn QueryPipe<Q>> {
        let entry = self.queries.get(Q::__slot())?.as_ref()?;
        entry.get::<Box<dyn QueryPipe<Q>>>().map(|b| &**b)
    }

    /// The dispatch of one command, as its pipeline returns it.
    ///
    /// A plain function rather than an `async fn`: an `async fn` would store the envelope in
    /// its state and copy it again into `call`, and would hold the returned 768-byte future
    /// in its own state besides the caller's. The caller pins the result where it lands
    /// (`pin!(bus.send_envelope(..)).await`) so that it is never moved either.
    ///
    /// The envelope is handed on where it lies, in the caller's `env` slot, and taken out of it
    /// by the pipeline (see [`Owned`]): passed by value, it would be copied into `call`'s
    /// argument on the way. An empty slot (a message dispatched already) is an error.
    /// Inlined, with the no-handler case out of line.
    #[inline]
    pub(crate) fn send_envelope<'a, C: Command>(
        &'a self,
        env: &mut Option<Envelope<C>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<C::Output, Error>> {
        match (self.command_pipe::<C>(), Owned::new(env)) {
            (Some(pipe), Some(env)) => pipe.call(self, env, stats),
            (None, _) => no_handler_future::<C, C::Output>(),
            (_, None) => taken_future(),
        }
    }

    /// The dispatch of one query, as its pipeline returns it: see
    /// [`send_envelope`](Self::send_envelope).
    #[inline]
    pub(crate) fn query_envelope<'a, Q: Query>(
        &'a self,
        env: &mut Option<Envelope<Q>>,
        stats: Option<&'a mut DispatchStats>,
    ) -> DispatchFuture<'a, Result<Q::Output, Error>> {
        match (self.query_pipe::<Q>(), Owned::new(env)) {
            (Some(pipe), Some(env)) => pipe.call(self, env, stats),
            (None, _) => no_handler_future::<Q, Q::Output>(),
            (_, None) => taken_future(),
        }
    }

    /// Drops cached answers here and in every process on the bus's invalidation channel.
    pub(crate) async fn invalidate(&self, invalidation: Invalidation) {
        self.cache_regions.invalidate(invalidation).await;
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

/// A dispatch whose envelope slot was empty: the message was handed to a pipeline already.
#[cold]
#[inline(never)]
fn taken_future<'a, T: Send + 'a>() -> DispatchFuture<'a, Result<T, Error>> {
    DispatchFuture::from_or_box(std::future::ready(Err(Error::internal(
        "a message was dispatched twice from the same slot",
    ))))
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

impl Runtime {
    /// What a context holds to reach this runtime (see [`RuntimePtr`] for the invariant).
    #[inline]
    pub(crate) fn ptr(&self) -> RuntimePtr {
        RuntimePtr::new(self)
    }

    /// The runtime a context belongs to.
    #[inline]
    pub(crate) fn of(ptr: &RuntimePtr) -> Result<&Runtime, Error> {
        ptr.get::<Runtime>()
            .ok_or_else(|| Error::internal("a context lost its bus"))
    }
}

/// Dispatching from a handler: a nested message is a child of the one being handled (same
/// correlation id, the parent's id as causation id, same principal) and runs its own pipeline.
impl CommandContext {
    /// Sends a command through the bus, as a child of this one: same correlation id, this
    /// command's id as causation id, same principal. It runs its own pipeline (and, if
    /// transactional, its own transaction).
    pub async fn send<M>(&self, message: M) -> Result<<M::Message as Command>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(self.metadata());
        let runtime = Runtime::of(&self.runtime)?;
        // Pinned in place: see `Runtime::send_envelope`.
        let dispatch = pin!(runtime.send_envelope(&mut Some(env), None));
        dispatch.await
    }
}

impl QueryContext {
    /// Asks another query, as a child of this one.
    pub async fn query<M>(&self, message: M) -> Result<<M::Message as Query>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(self.metadata());
        let runtime = Runtime::of(&self.runtime)?;
        let dispatch = pin!(runtime.query_envelope(&mut Some(env), None));
        dispatch.await
    }
}

impl EventContext {
    /// Sends a command through the bus, as a child of this event.
    pub async fn send<M>(&self, message: M) -> Result<<M::Message as Command>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(self.metadata());
        let runtime = Runtime::of(&self.runtime)?;
        let dispatch = pin!(runtime.send_envelope(&mut Some(env), None));
        dispatch.await
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;

    use super::PipeEntry;

    #[test]
    fn a_pipe_entry_gives_its_boxed_value_by_type_and_nothing_else() {
        let entry = PipeEntry::new(Box::new(7u32));
        assert_eq!(entry.get::<u32>(), Some(&7));
        assert!(entry.get::<u64>().is_none());
        // The id is the boxed value's, not the box's (`Box<dyn Any>` is `Any` itself).
        assert!(entry.get::<Box<dyn Any + Send + Sync>>().is_none());
        let boxed: Box<dyn Any + Send + Sync> =
            Box::new(Box::new(1u8) as Box<dyn Any + Send + Sync>);
        let entry = PipeEntry::new(boxed);
        let inner = entry
            .get::<Box<dyn Any + Send + Sync>>()
            .expect("a boxed box");
        assert_eq!(inner.downcast_ref::<u8>(), Some(&1));
    }
}
