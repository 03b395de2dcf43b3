//! What the layers need from a handler's context, for each kind of message: how to make one,
//! what to forget between attempts, what a transaction does around the handler (layer 9, see
//! [`InTransaction`]), and what runs after a success. Implemented for [`CommandContext`],
//! [`QueryContext`] and [`EventContext`]; the full path ([`full_path`](super::full_path)) is
//! generic over it, so that one composition serves all three kinds.

use std::future::Future;

use super::cache::target::Invalidation;
use super::idempotency::IdempotencyKey;
use super::report::DispatchStats;
use super::runtime::Runtime;
use super::transaction::{InTransaction, Transaction};
use super::{Layers, publish};
use crate::Error;
use crate::context::{CommandContext, EventContext, QueryContext, RuntimePtr, TxSlot};
use crate::envelope::Metadata;
use crate::message::MessageKind;

/// A handler's context, as the layers of the full path use it.
pub(crate) trait LayerContext: InTransaction + Sized {
    /// The kind of message whose handlers get this context.
    const KIND: MessageKind;

    /// See [`MetadataPtr`](crate::context::MetadataPtr): the context must not outlive
    /// `metadata`.
    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self;

    fn metadata(&self) -> &Metadata;

    /// Forgets what an earlier attempt left behind (events, a transaction).
    fn reset(&mut self) {}

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

    fn reset(&mut self) {
        CommandContext::reset(self);
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

/// A command's transaction: its events go into the outbox, and its idempotent reply into the
/// store, with its work.
impl InTransaction for CommandContext {
    fn handler(&self) -> &'static str {
        self.handler
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
}

impl LayerContext for QueryContext {
    const KIND: MessageKind = MessageKind::Query;

    fn new(runtime: RuntimePtr, metadata: &Metadata, handler: &'static str) -> Self {
        QueryContext::new(runtime, metadata, handler)
    }

    fn metadata(&self) -> &Metadata {
        self.metadata.get()
    }
}

/// Queries are never transactional (the macro refuses it): no slot.
impl InTransaction for QueryContext {
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

    fn reset(&mut self) {
        self.tx = TxSlot::default();
    }
}

/// An event handler's transaction records the event in its inbox.
impl InTransaction for EventContext {
    fn handler(&self) -> &'static str {
        self.handler
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
