//! What a handler sees besides its message: metadata, and what it may do through the bus.

use std::any::Any;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use sync_wrapper::SyncWrapper;
use uuid::Uuid;

use crate::envelope::{Metadata, Principal};
use crate::events::EmittedEvent;
use crate::message::Event;

/// The runtime a context belongs to: the pipeline's `Runtime`, behind `dyn Any` so that this
/// layer, below the pipeline, does not name it (the pipeline reads it back with a checked
/// downcast, in `pipeline/runtime.rs`).
///
/// Handlers take `&mut CommandContext` with no lifetime parameter, and `async fn` does not allow
/// an elided one, so a context cannot hold a `&'a Runtime`. Holding an `Arc` instead would cost
/// two atomic operations on one shared counter per dispatch, which every core would contend on.
/// So the context holds a pointer, under one invariant:
///
/// **A context never outlives the runtime it was created from.** Contexts are created only by
/// the pipeline, as locals of a function that holds `&Runtime` for longer than the context
/// lives; users only ever get `&`/`&mut` access (there is no public constructor, no `Clone`, no
/// `Default`, so a context cannot be moved out or replaced), and every reference handed out is
/// bounded by the borrow of the context.
#[derive(Clone, Copy)]
pub(crate) struct RuntimePtr(NonNull<dyn Any + Send + Sync>);

// SAFETY: the runtime is `Send + Sync` (the pointee's type says so), and `RuntimePtr` only ever
// gives out shared references to it.
#[allow(unsafe_code)]
unsafe impl Send for RuntimePtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for RuntimePtr {}

impl RuntimePtr {
    pub(crate) fn new(runtime: &(dyn Any + Send + Sync)) -> Self {
        RuntimePtr(NonNull::from(runtime))
    }

    /// The runtime, if it is an `R` (it always is: the pipeline creates every context).
    #[allow(unsafe_code)]
    #[inline]
    pub(crate) fn get<R: Any>(&self) -> Option<&R> {
        // SAFETY: see the invariant on `RuntimePtr`: the runtime outlives every context, and
        // the returned reference is bounded by the borrow of the context holding this pointer.
        unsafe { self.0.as_ref() }.downcast_ref::<R>()
    }
}

/// The running transaction of a `#[transactional]` attempt, as the context keeps it for
/// `cx.tx()`, and the lock of an `#[exclusive]` attempt with its fencing token: erased here,
/// since this layer is below the layers that define what they are (`pipeline/transaction.rs`,
/// `pipeline/exclusive.rs`, which put them in and take them out).
///
/// `SyncWrapper` makes the context `Sync` (a handler may hold `&cx` across an `.await`) while
/// what it holds is only ever reached through `&mut`. Boxed, and one slot for both: only
/// `#[transactional]` and `#[exclusive]` dispatches use it (and do I/O anyway), while the
/// context that holds it is part of every dispatch's future, whose size decides whether it is
/// stored inline.
#[derive(Default)]
pub(crate) struct TxSlot(Option<ManuallyDrop<Box<Slots>>>);

#[derive(Default)]
struct Slots {
    tx: Option<SyncWrapper<Box<dyn Any + Send>>>,
    /// Dropped after `tx`: a transaction that owns a lock's connection ends before the lock.
    lock: Option<SyncWrapper<Box<dyn Any + Send>>>,
    fencing_token: Option<u64>,
}

impl Drop for TxSlot {
    /// Inline and small, so that a context's drop (on every dispatch, almost always with
    /// nothing in the slot) is a compare rather than a call.
    #[inline]
    fn drop(&mut self) {
        // The field is `ManuallyDrop`, so that the drop glue around this is this compare alone.
        if let Some(slots) = self.0.take() {
            close(ManuallyDrop::into_inner(slots));
        }
    }
}

/// Drops what an attempt left open (a transaction rolls back by its own drop, then a lock is
/// freed by its own), out of line.
#[cold]
#[inline(never)]
fn close(slots: Box<Slots>) {
    drop(slots);
}

impl TxSlot {
    pub(crate) fn open(tx: Box<dyn Any + Send>) -> Self {
        let mut slot = TxSlot::default();
        slot.put(tx);
        slot
    }

    fn slots(&mut self) -> &mut Slots {
        self.0
            .get_or_insert_with(|| ManuallyDrop::new(Box::default()))
    }

    /// Puts the transaction in, beside the lock the slot may hold.
    pub(crate) fn put(&mut self, tx: Box<dyn Any + Send>) {
        self.slots().tx = Some(SyncWrapper::new(tx));
    }

    pub(crate) fn take(&mut self) -> Option<Box<dyn Any + Send>> {
        self.0.as_mut()?.tx.take().map(SyncWrapper::into_inner)
    }

    pub(crate) fn get_mut(&mut self) -> Option<&mut (dyn Any + Send)> {
        self.0.as_mut()?.tx.as_mut().map(|tx| &mut **tx.get_mut())
    }

    /// Keeps an `#[exclusive]` attempt's lock and its fencing token.
    pub(crate) fn hold(&mut self, fencing_token: Option<u64>, lock: Box<dyn Any + Send>) {
        let slots = self.slots();
        slots.lock = Some(SyncWrapper::new(lock));
        slots.fencing_token = fencing_token;
    }

    pub(crate) fn take_lock(&mut self) -> Option<Box<dyn Any + Send>> {
        let slots = self.0.as_mut()?;
        slots.fencing_token = None;
        slots.lock.take().map(SyncWrapper::into_inner)
    }

    pub(crate) fn lock_mut(&mut self) -> Option<&mut (dyn Any + Send)> {
        self.0
            .as_mut()?
            .lock
            .as_mut()
            .map(|lock| &mut **lock.get_mut())
    }

    fn fencing_token(&self) -> Option<u64> {
        self.0.as_ref()?.fencing_token
    }
}

/// The context of a command handler: metadata, events to emit, commands to send, and (for
/// `#[transactional]` handlers) the running transaction.
pub struct CommandContext {
    pub(crate) runtime: RuntimePtr,
    pub(crate) metadata: MetadataPtr,
    pub(crate) handler: &'static str,
    pub(crate) events: Emitted,
    pub(crate) tx: TxSlot,
}

/// The events a command's handler emitted.
///
/// A `Vec` that is dropped only if it ever allocated: most commands emit nothing, and dropping
/// an empty `Vec<EmittedEvent>` still calls its elements' out-of-line drop loop, on every
/// dispatch.
#[derive(Default)]
pub(crate) struct Emitted(ManuallyDrop<Vec<EmittedEvent>>);

impl Emitted {
    /// The events, leaving none.
    pub(crate) fn take(&mut self) -> Vec<EmittedEvent> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Emitted {
    type Target = Vec<EmittedEvent>;
    #[inline]
    fn deref(&self) -> &Vec<EmittedEvent> {
        &self.0
    }
}

impl DerefMut for Emitted {
    #[inline]
    fn deref_mut(&mut self) -> &mut Vec<EmittedEvent> {
        &mut self.0
    }
}

impl Drop for Emitted {
    #[inline]
    fn drop(&mut self) {
        // With no capacity there is nothing to drop or free; what `take` leaves behind (an
        // empty `Vec`) owns nothing either.
        if self.0.capacity() != 0 {
            self.free();
        }
    }
}

impl Emitted {
    /// Out of line, so that dropping a context that emitted nothing stays a compare.
    #[cold]
    #[inline(never)]
    fn free(&mut self) {
        drop(self.take());
    }
}

impl CommandContext {
    /// See [`MetadataPtr`] for what the caller guarantees: the context must not outlive
    /// `metadata`.
    pub(crate) fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        CommandContext {
            runtime,
            metadata: MetadataPtr::new(metadata),
            handler,
            events: Emitted::default(),
            tx: TxSlot::default(),
        }
    }

    /// Forgets what an attempt left behind (events, transaction, lock) before the next one.
    pub(crate) fn reset(&mut self) {
        self.events.clear();
        self.tx = TxSlot::default();
    }

    /// The fencing token of the `#[exclusive]` lock this attempt holds: a number that grows
    /// with each holder of the lock, for storage outside the bus to refuse a write from a
    /// holder that has been superseded (store it with the write, reject a smaller one).
    ///
    /// `None` without `#[exclusive]`. On Redis it is the lease's: a holder whose process
    /// stalled past its lease may still be running when the next holder starts, and the token
    /// is how a store tells them apart. On PostgreSQL the lock is the transaction's own
    /// session, so a superseded holder cannot commit there; the token (from the sequence
    /// `cqrs_exclusive_fence`, taken with the lock) serves writes elsewhere.
    pub fn fencing_token(&self) -> Option<u64> {
        self.tx.fencing_token()
    }

    /// The command's metadata: ids, principal, idempotency key, saga, deadline.
    #[inline]
    pub fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    /// Who sent the command.
    pub fn principal(&self) -> Option<&Principal> {
        self.metadata().principal()
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
}

impl fmt::Debug for CommandContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandContext")
            .field("handler", &self.handler)
            .field("metadata", self.metadata())
            .field("emitted", &self.emitted().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The context of a query handler: metadata, and other queries. It has no way to send commands
/// or emit events: a query does not change state.
pub struct QueryContext {
    pub(crate) runtime: RuntimePtr,
    pub(crate) metadata: MetadataPtr,
    pub(crate) handler: &'static str,
}

impl QueryContext {
    /// See [`MetadataPtr`] for what the caller guarantees: the context must not outlive
    /// `metadata`.
    pub(crate) fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        QueryContext {
            runtime,
            metadata: MetadataPtr::new(metadata),
            handler,
        }
    }

    /// The query's metadata.
    #[inline]
    pub fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    /// Who asked.
    pub fn principal(&self) -> Option<&Principal> {
        self.metadata().principal()
    }
}

impl fmt::Debug for QueryContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryContext")
            .field("handler", &self.handler)
            .field("metadata", self.metadata())
            .finish_non_exhaustive()
    }
}

/// The context of an event handler: the event's id and metadata, and commands to send (how a
/// saga or process manager reacts to events).
pub struct EventContext {
    pub(crate) runtime: RuntimePtr,
    pub(crate) metadata: MetadataPtr,
    pub(crate) handler: &'static str,
    /// The transaction of a `#[transactional]` event handler (see `backend/sql/inbox.rs`).
    pub(crate) tx: TxSlot,
}

/// The metadata of the message being handled, where the dispatch keeps it, rather than a copy
/// in the context: a command's or query's context then costs no copy of the envelope's
/// metadata (about 120 bytes, twice: into the context and the context into the dispatch's
/// future), and an event's metadata is shared by every handler of that event rather than
/// cloned for each (a clone would have to fix the event's id first, so that both copies agree
/// on it, which generates a UUID for every delivery whether or not a handler reads it).
///
/// The same invariant as [`RuntimePtr`]: **a context never outlives the `&Metadata` it was
/// created from.** The pipeline creates each context inside a future that owns or borrows that
/// metadata for longer than the context lives (declared after it, so dropped before it), and
/// users only ever get `&`/`&mut` access to the context (no constructor, no `Clone`, no
/// `Default`: a context cannot be moved out of its place or swapped with a made-up one).
#[derive(Clone, Copy)]
pub(crate) struct MetadataPtr(NonNull<Metadata>);

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
    #[inline]
    fn new(metadata: &Metadata) -> Self {
        MetadataPtr(NonNull::from(metadata))
    }

    /// The metadata, borrowed for as long as the context holding this pointer is (through the
    /// field rather than `metadata()`, a caller can borrow the context's other fields mutably).
    #[allow(unsafe_code)]
    #[inline]
    pub(crate) fn get(&self) -> &Metadata {
        // SAFETY: see the invariant on `MetadataPtr`: the metadata outlives every context made
        // from it, and the returned reference is bounded by the borrow of the context.
        unsafe { self.0.as_ref() }
    }
}

impl EventContext {
    /// See [`MetadataPtr`] for what the caller guarantees: the context must not outlive
    /// `metadata`.
    pub(crate) fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        EventContext {
            runtime,
            metadata: MetadataPtr::new(metadata),
            handler,
            tx: TxSlot::default(),
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
}

impl fmt::Debug for EventContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("handler", &self.handler)
            .field("metadata", self.metadata())
            .finish_non_exhaustive()
    }
}
