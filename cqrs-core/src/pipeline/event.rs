//! An event handler's pipeline: trace, timeout, retry, transaction (with the inbox), handler.
//! Its future lives inline in the [`DispatchFuture`] when it fits, so publishing to N handlers
//! allocates nothing for them. A handler whose plan is lean (no timeout, retry or transaction)
//! and an event with no deadline take the lean path: the handler's future, polled in place
//! with its panics caught, and nothing around it.

use std::any::Any;
use std::marker::PhantomData;
use std::pin::pin;

use super::lean::Lean;
use super::plan::Plan;
use super::{DispatchFuture, Layers, guard_panic, retry, timeout, trace, transaction};
use crate::Error;
use crate::context::EventContext;
use crate::envelope::Metadata;
use crate::handler::EventHandler;
use crate::message::{Event, MessageKind};
use crate::pipeline::report::DispatchStats;
use crate::pipeline::runtime::Runtime;

/// The type-erased entry point of one event handler.
pub(crate) trait EventPipe: Send + Sync {
    fn handler_name(&self) -> &'static str;

    /// The consumer group it reads a broker's events in: its name unless `group = ".."`.
    fn group(&self) -> &'static str {
        self.handler_name()
    }

    /// The event's name and how to decode a stored one.
    fn event(&self) -> (&'static str, crate::events::EventDecoder);

    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        event: &'a (dyn Any + Send + Sync),
        metadata: &'a Metadata,
    ) -> DispatchFuture<'a, Result<(), Error>>;
}

/// The pipeline of one event handler: trace, timeout, retry, handler.
pub(crate) struct EventPipeline<E, H> {
    pub(crate) handler: H,
    pub(crate) name: &'static str,
    pub(crate) group: Option<&'static str>,
    /// Which layers are on, and whether they all run inline: decided at `build()`.
    pub(crate) plan: Plan,
    pub(crate) layers: Layers,
    pub(crate) _event: PhantomData<fn(E)>,
}

impl<E: Event, H: EventHandler<E>> EventPipe for EventPipeline<E, H> {
    fn handler_name(&self) -> &'static str {
        self.name
    }

    fn group(&self) -> &'static str {
        self.group.unwrap_or(self.name)
    }

    fn event(&self) -> (&'static str, crate::events::EventDecoder) {
        (E::NAME, crate::events::decode_event::<E>)
    }

    fn call<'a>(
        &'a self,
        bus: &'a Runtime,
        event: &'a (dyn Any + Send + Sync),
        metadata: &'a Metadata,
    ) -> DispatchFuture<'a, Result<(), Error>> {
        DispatchFuture::from_or_box(async move {
            let Some(event) = event.downcast_ref::<E>() else {
                return Err(Error::internal(format!(
                    "event handler `{}` was given something other than `{}`",
                    self.name,
                    E::NAME
                )));
            };
            let mut cx = EventContext::new(bus.ptr(), metadata, self.name);
            if self.plan.lean_for(metadata) {
                // The lean path: the handler, its panics caught, in its span if traced.
                let mut stats = DispatchStats::default();
                let lean = Lean::start(MessageKind::Event, E::NAME, self.name, metadata);
                let fut = pin!(self.handler.handle(event, &mut cx));
                let result = lean.handler(self.name, fut, &mut stats).await;
                lean.finish::<E, _>(&result, &stats);
                return result;
            }
            let deadline = timeout::deadline(self.layers.timeout, metadata);
            let span = trace::span(MessageKind::Event, E::NAME, self.name, metadata);
            let mut stats = DispatchStats::default();
            let body = trace::within(
                &span,
                timeout::run(
                    deadline,
                    E::NAME,
                    self.attempts(bus, event, &mut cx, &mut stats.attempts),
                ),
            );
            let result = body.await;
            trace::finish(&span, MessageKind::Event, E::NAME, &result, &stats);
            result
        })
    }
}

impl<E: Event, H: EventHandler<E>> EventPipeline<E, H> {
    async fn attempts(
        &self,
        bus: &Runtime,
        event: &E,
        cx: &mut EventContext,
        attempts: &mut u32,
    ) -> Result<(), Error> {
        let mut tries = retry::Attempts::new(self.layers.retry.as_ref(), attempts);
        loop {
            let last = tries.start();
            let result = match &self.layers.transaction {
                None => guard_panic(self.name, self.handler.handle(event, cx)).await,
                Some(layer) => self.in_transaction(bus, layer, event, cx).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) => tries.failed(error, last).await?,
            }
        }
    }

    /// One attempt in a transaction, with the event recorded in the handler's inbox.
    async fn in_transaction(
        &self,
        runtime: &Runtime,
        layer: &crate::pipeline::transaction::TransactionLayer,
        event: &E,
        cx: &mut EventContext,
    ) -> Result<(), Error> {
        if !transaction::begin_event(layer, runtime, cx).await? {
            return Ok(());
        }
        let result = guard_panic(self.name, self.handler.handle(event, cx)).await;
        transaction::finish_event(layer, cx, result).await
    }
}
