//! What a handler sees besides its message: metadata, and what it may do through the bus.

use std::fmt;
use std::pin::pin;
use std::ptr::NonNull;

use uuid::Uuid;

use crate::Error;
use crate::bus::BusInner;
use crate::envelope::{IntoEnvelope, Metadata, Principal};
use crate::events::EmittedEvent;
use crate::message::{Command, Event, Query};
use crate::persistence::TxSlot;
use crate::pipeline::idempotency::IdempotencyKey;

/// The bus a context belongs to.
///
/// The contract (DESIGN §3) has handlers take `&mut CommandContext` with no lifetime, and
/// `async fn` does not allow an elided one, so a context cannot hold `&'a BusInner`. Holding an
/// `Arc` instead would cost two atomic operations on one shared counter per dispatch, which
/// every core would contend on. So the context holds a pointer, under one invariant:
///
/// **A context never outlives the `&BusInner` it was created from.** Contexts are created only
/// by [`BusPtr::new`]'s callers in the pipeline, as locals of a function that holds that
/// reference for longer than the context lives; users only ever get `&`/`&mut` access (there is
/// no public constructor, no `Clone`, no `Default`, so a context cannot be moved out or
/// replaced), and every reference handed out is bounded by the borrow of the context.
#[derive(Clone, Copy)]
pub(crate) struct BusPtr(NonNull<BusInner>);

// SAFETY: `BusInner` is `Sync` (it is shared by every task that dispatches), and `BusPtr` only
// ever gives out `&BusInner`.
#[allow(unsafe_code)]
unsafe impl Send for BusPtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for BusPtr {}

impl BusPtr {
    pub(crate) fn new(bus: &BusInner) -> Self {
        BusPtr(NonNull::from(bus))
    }

    #[allow(unsafe_code)]
    pub(crate) fn get(&self) -> &BusInner {
        // SAFETY: see the invariant on `BusPtr`: the `BusInner` outlives every context, and the
        // returned reference is bounded by the borrow of the context holding this pointer.
        unsafe { self.0.as_ref() }
    }
}

const _: () = {
    const fn sync<T: Sync>() {}
    sync::<BusInner>();
};

/// The context of a command handler: metadata, events to emit, commands to send, and (for
/// `#[transactional]` handlers) the running transaction.
pub struct CommandContext {
    bus: BusPtr,
    pub(crate) metadata: Metadata,
    pub(crate) handler: &'static str,
    pub(crate) events: Vec<EmittedEvent>,
    pub(crate) tx: TxSlot,
    /// The idempotency key of this dispatch (its reply is stored in the transaction). Boxed,
    /// as the transaction is: only dispatches that do I/O have one, and the context is part
    /// of every dispatch's future.
    pub(crate) idempotency: Option<Box<IdempotencyKey>>,
}

impl CommandContext {
    pub(crate) fn new(bus: &BusInner, metadata: Metadata, handler: &'static str) -> Self {
        CommandContext {
            bus: BusPtr::new(bus),
            metadata,
            handler,
            events: Vec::new(),
            tx: TxSlot::default(),
            idempotency: None,
        }
    }

    pub(crate) fn bus(&self) -> &BusInner {
        self.bus.get()
    }

    /// A copy of the bus pointer, to reach the bus while `self` is borrowed mutably.
    pub(crate) fn bus_ptr(&self) -> BusPtr {
        self.bus
    }

    /// Forgets what an attempt left behind (events, transaction) before the next one.
    pub(crate) fn reset(&mut self) {
        self.events.clear();
        self.tx = TxSlot::default();
    }

    /// The command's metadata: ids, principal, idempotency key, saga, deadline.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Who sent the command.
    pub fn principal(&self) -> Option<&Principal> {
        self.metadata.principal()
    }

    /// Records an event. It reaches every `#[event_handler]` of its type once the handler has
    /// returned `Ok` (and, for transactional handlers, once the transaction has committed);
    /// it is dropped if the handler fails.
    pub fn emit<E: Event>(&mut self, event: E) {
        self.events.push(EmittedEvent::new(event));
    }

    /// The names of the events emitted so far.
    pub fn emitted(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.events.iter().map(|e| e.name())
    }

    /// Sends a command through the bus, as a child of this one: same correlation id, this
    /// command's id as causation id, same principal. It runs its own pipeline (and, if
    /// transactional, its own transaction).
    pub async fn send<M>(&self, message: M) -> Result<<M::Message as Command>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(&self.metadata);
        // Pinned in place: see `BusInner::send_envelope`.
        let dispatch = pin!(self.bus().send_envelope(env, None));
        dispatch.await
    }
}

impl fmt::Debug for CommandContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandContext")
            .field("handler", &self.handler)
            .field("metadata", &self.metadata)
            .field("emitted", &self.emitted().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The context of a query handler: metadata, and other queries. It has no way to send commands
/// or emit events: a query does not change state.
pub struct QueryContext {
    bus: BusPtr,
    pub(crate) metadata: Metadata,
    pub(crate) handler: &'static str,
}

impl QueryContext {
    pub(crate) fn new(bus: &BusInner, metadata: Metadata, handler: &'static str) -> Self {
        QueryContext {
            bus: BusPtr::new(bus),
            metadata,
            handler,
        }
    }

    /// The query's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Who asked.
    pub fn principal(&self) -> Option<&Principal> {
        self.metadata.principal()
    }

    /// Asks another query, as a child of this one.
    pub async fn query<M>(&self, message: M) -> Result<<M::Message as Query>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Query,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(&self.metadata);
        let bus = self.bus.get();
        let dispatch = std::pin::pin!(bus.query_envelope(env, None));
        dispatch.await
    }
}

impl fmt::Debug for QueryContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryContext")
            .field("handler", &self.handler)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// The context of an event handler: the event's id and metadata, and commands to send (how a
/// saga or process manager reacts to events).
pub struct EventContext {
    bus: BusPtr,
    metadata: MetadataPtr,
    pub(crate) handler: &'static str,
}

/// The metadata of the event being delivered, shared by every handler of that event rather than
/// cloned for each: a clone would have to fix the event's id first (so that both copies agree
/// on it), which generates a UUID for every delivery whether or not a handler reads it.
///
/// The same invariant as [`BusPtr`]: **an event context never outlives the `&Metadata` it was
/// created from.** The one caller, the event pipeline, creates the context inside a future
/// that borrows that metadata for its whole life, and users only ever get `&`/`&mut` access to
/// the context.
#[derive(Clone, Copy)]
struct MetadataPtr(NonNull<Metadata>);

// SAFETY: `Metadata` is `Sync`, and `MetadataPtr` only ever gives out `&Metadata`.
#[allow(unsafe_code)]
unsafe impl Send for MetadataPtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for MetadataPtr {}

const _: () = {
    const fn sync<T: Sync>() {}
    sync::<Metadata>();
};

impl MetadataPtr {
    #[allow(unsafe_code)]
    fn get(&self) -> &Metadata {
        // SAFETY: see the invariant on `MetadataPtr`: the metadata outlives every context made
        // from it, and the returned reference is bounded by the borrow of the context.
        unsafe { self.0.as_ref() }
    }
}

impl EventContext {
    /// See [`MetadataPtr`] for what the caller guarantees: the context must not outlive
    /// `metadata`.
    pub(crate) fn new(bus: &BusInner, metadata: &Metadata, handler: &'static str) -> Self {
        EventContext {
            bus: BusPtr::new(bus),
            metadata: MetadataPtr(NonNull::from(metadata)),
            handler,
        }
    }

    /// The event's id: the same on every delivery of this event, so a handler can skip events it
    /// has already processed (delivery from the outbox is at least once).
    pub fn event_id(&self) -> Uuid {
        self.metadata().message_id()
    }

    /// For an event saved by an aggregate (`cx.save`): the aggregate's type, id, and the
    /// event's version, so a projection can order and de-duplicate by version.
    pub fn aggregate(&self) -> Option<&crate::envelope::AggregateVersion> {
        self.metadata().aggregate()
    }

    /// The event's metadata: its correlation id is the one of the command that emitted it, its
    /// causation id that command's id.
    pub fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    /// Sends a command through the bus, as a child of this event.
    pub async fn send<M>(&self, message: M) -> Result<<M::Message as Command>::Output, Error>
    where
        M: IntoEnvelope,
        M::Message: Command,
    {
        let mut env = message.into_envelope();
        env.metadata.inherit(self.metadata());
        let dispatch = pin!(self.bus.get().send_envelope(env, None));
        dispatch.await
    }
}

impl fmt::Debug for EventContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("handler", &self.handler)
            .field("metadata", self.metadata())
            .finish_non_exhaustive()
    }
}
