//! How the full path reaches a handler's types: through slots and small trait methods, so
//! that it is written, and compiled, once for all handlers.
//!
//! Why: a full path is large (middleware, timeout, authorization, idempotency or cache, retry,
//! transaction), and a generic one is compiled, and optimized, again for every handler. A
//! service with 1,000 handlers spent most of its optimized build on 1,000 copies of it. The
//! lean paths stay generic: they are small, and they are the ones that must not allocate.
//!
//! The typed caller owns two slots, `Option<M>` for the message and `Option<M::Output>` for the
//! output, and lends them to the full path behind `dyn Any`. What that costs at run time: a
//! `TypeId` comparison per downcast, and one more allocation when a handler's own future does
//! not fit in [`HANDLE_INLINE`] bytes.

use std::any::Any;

use stackfuture::StackFuture;

use crate::Error;

/// Bytes a handler's future may take inline in a full path's future before it is boxed.
///
/// Enough for a handler that awaits another dispatch (`cx.send`: a
/// [`DispatchFuture`](super::DispatchFuture) of 768 bytes and change); a handler that talks to a
/// database has a larger future, and does I/O anyway.
pub(crate) const HANDLE_INLINE: usize = 1024;

/// One call of a handler, as a full path sees it: the output goes to the output slot.
pub(crate) type HandleFuture<'a> = StackFuture<'a, Result<(), Error>, HANDLE_INLINE>;

/// A message or output slot (`Option<M>`, `Option<M::Output>`), or a message (`&M`).
pub(crate) type Erased = dyn Any + Send + Sync;

/// The message, as a full path hands it down to the handler.
pub(crate) enum Message<'a> {
    /// A command's or query's slot (`Option<M>`): the last attempt takes the message, the
    /// others clone it.
    Slot(&'a mut Erased),
    /// An event (`&E`), shared by every handler of it.
    Shared(&'a Erased),
}

impl Message<'_> {
    /// The same message, for one attempt.
    pub(crate) fn reborrow(&mut self) -> Message<'_> {
        match self {
            Message::Slot(slot) => Message::Slot(&mut **slot),
            Message::Shared(event) => Message::Shared(*event),
        }
    }

    /// The slot, or the event.
    pub(crate) fn get(&self) -> &Erased {
        match self {
            Message::Slot(slot) => &**slot,
            Message::Shared(event) => *event,
        }
    }
}

/// The message to hand a handler: the last attempt takes it from the slot, the others clone it.
pub(crate) fn message_for<M: Clone + 'static>(message: Message<'_>, last: bool) -> Option<M> {
    let Message::Slot(slot) = message else {
        return None;
    };
    let slot = slot.downcast_mut::<Option<M>>()?;
    if last { slot.take() } else { slot.clone() }
}

/// The event to hand a handler.
pub(crate) fn shared<'a, E: 'static>(message: Message<'a>) -> Option<&'a E> {
    match message {
        Message::Shared(event) => event.downcast_ref::<E>(),
        Message::Slot(_) => None,
    }
}

/// The message in a slot, as `&M`.
pub(crate) fn peek<M: Send + Sync + 'static>(slot: &Erased) -> Option<&Erased> {
    let message = slot.downcast_ref::<Option<M>>()?.as_ref()?;
    Some(message)
}

/// A copy of a message slot (`Option<M>`), for middleware to look at while the handler owns
/// the original.
pub(crate) fn clone_message<M: Clone + Send + Sync + 'static>(slot: &Erased) -> Box<Erased> {
    Box::new(slot.downcast_ref::<Option<M>>().cloned().flatten())
}

/// A message behind `&dyn Any`, as `&M`.
pub(crate) fn message<M: crate::Message>(message: &Erased) -> Result<&M, Error> {
    message.downcast_ref::<M>().ok_or_else(|| missing(M::NAME))
}

/// A slot was empty or of another type where a full path needed it: a bug in this crate.
pub(crate) fn missing(name: &'static str) -> Error {
    Error::internal(format!(
        "the pipeline of `{name}` found no message or output where it needed one"
    ))
}
