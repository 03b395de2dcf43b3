//! What the layers need from a handler's context, for each kind of message: how to make one,
//! what to forget between attempts, what a transaction does around the handler (layer 9), and
//! what runs after a success. Implemented for [`CommandContext`], [`QueryContext`] and
//! [`EventContext`]; the full path ([`full_path`](super::full_path)) is generic over it, so
//! that one composition serves all three kinds.

use std::future::Future;

use super::cache::target::Invalidation;
use super::idempotency::IdempotencyKey;
use super::report::DispatchStats;
use super::runtime::Runtime;
use super::transaction::Transaction;
use super::{Layers, publish};
use crate::Error;
use crate::context::{CommandContext, EventContext, QueryContext, RuntimePtr, TxSlot};
use crate::envelope::Metadata;
use crate::message::MessageKind;

/// A handler's context, as the layers of the full path use it.
pub(crate) trait LayerContext: Send + Sized {
    /// The kind of message whose handlers get this context.
    const KIND: MessageKind;

    /// See [`MetadataPtr`](crate::context::MetadataPtr): the context must not outlive
    /// `metadata`.
    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self;

    fn metadata(&self) -> &Metadata;

    /// The handler's name, for messages.
    fn handler(&self) -> &'static str;

    /// Forgets what an earlier attempt left behind (events, a transaction).
    fn reset(&mut self) {}

    /// Where the transaction of a `#[transactional]` handler is kept (`cx.tx()` finds it
    /// there); `None` for a kind that cannot be transactional.
    fn tx_slot(&mut self) -> Option<&mut TxSlot> {
        None
    }

    /// Right after `BEGIN`: `false` when the handler must not run in this transaction (an
    /// event handler records the event in its inbox, and finds it was handled already).
    fn opened<'a>(
        &'a mut self,
        _tx: &'a mut dyn Transaction,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'a {
        std::future::ready(Ok(true))
    }

    /// Before the `COMMIT` of a success: what has to commit with the handler's work (a
    /// command's events into the outbox, and its idempotent reply).
    fn committing<'a>(
        &'a mut self,
        _tx: &'a mut dyn Transaction,
        _reply: Option<(&'a IdempotencyKey, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        std::future::ready(Ok(()))
    }

    /// After the handler succeeded, outside the timeout: a command's events published and the
    /// caches it names dropped (see [`publish::after`]). `targets`: the answers to drop, read
    /// from the command before its handler took it.
    fn after<'a>(
        &'a mut self,
        _layers: &'a Layers,
        _runtime: &'a Runtime,
        _targets: &'a [Invalidation],
        _stats: &'a mut DispatchStats,
    ) -> impl Future<Output = ()> + Send + 'a {
        std::future::ready(())
    }
}

impl LayerContext for CommandContext {
    const KIND: MessageKind = MessageKind::Command;

    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        CommandContext::new(runtime, metadata, handler)
    }

    fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    fn handler(&self) -> &'static str {
        self.handler
    }

    fn reset(&mut self) {
        CommandContext::reset(self);
    }

    fn tx_slot(&mut self) -> Option<&mut TxSlot> {
        Some(&mut self.tx)
    }

    async fn committing<'a>(
        &'a mut self,
        tx: &'a mut dyn Transaction,
        reply: Option<(&'a IdempotencyKey, Vec<u8>)>,
    ) -> Result<(), Error> {
        tx.write_outbox(&mut self.events, self.metadata.get())
            .await?;
        if let Some((key, reply)) = reply {
            tx.complete_idempotency(key, &reply).await?;
        }
        Ok(())
    }

    fn after<'a>(
        &'a mut self,
        layers: &'a Layers,
        runtime: &'a Runtime,
        targets: &'a [Invalidation],
        stats: &'a mut DispatchStats,
    ) -> impl Future<Output = ()> + Send + 'a {
        let events = self.events.take();
        publish::after(layers, runtime, events, targets, self.metadata.get(), stats)
    }
}

impl LayerContext for QueryContext {
    const KIND: MessageKind = MessageKind::Query;

    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        QueryContext::new(runtime, metadata, handler)
    }

    fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    fn handler(&self) -> &'static str {
        self.handler
    }
}

impl LayerContext for EventContext {
    const KIND: MessageKind = MessageKind::Event;

    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        EventContext::new(runtime, metadata, handler)
    }

    fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }

    fn handler(&self) -> &'static str {
        self.handler
    }

    fn reset(&mut self) {
        self.tx = TxSlot::default();
    }

    fn tx_slot(&mut self) -> Option<&mut TxSlot> {
        Some(&mut self.tx)
    }

    /// Records the event in the handler's inbox, in the handler's transaction: `false` when it
    /// was there already (its work committed with that record), which is what makes a
    /// redelivered event's effects happen once.
    fn opened<'a>(
        &'a mut self,
        tx: &'a mut dyn Transaction,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'a {
        let event_id = self.event_id();
        tx.record_handled(self.handler, event_id)
    }
}
