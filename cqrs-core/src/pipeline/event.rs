//! An event handler's pipeline: trace, timeout, retry, transaction (with the inbox), handler.
//!
//! A handler whose plan is lean (no timeout, retry or transaction) and an event with no
//! deadline take the lean path: the handler's future, polled in place with its panics caught,
//! and nothing around it, inline in the [`DispatchFuture`], so publishing to N such handlers
//! allocates nothing for them. The others take the full path, composed once for every kind in
//! [`full_path`].

use std::any::Any;
use std::marker::PhantomData;
use std::pin::pin;

use super::erased::{self, Erased, HandleFuture, Message};
use super::full_path::{self, FullPipe};
use super::lean::Lean;
use super::plan::Plan;
use super::{DispatchFuture, Layers};
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
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
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
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
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
        if !self.plan.lean_for(metadata) {
            return self.full(bus, event, metadata);
        }
        DispatchFuture::from_or_box(async move {
            let Some(event) = event.downcast_ref::<E>() else {
                return Err(mistyped::<E>(self.name));
            };
            // The lean path: the handler, its panics caught, in its span if traced.
            let mut cx = EventContext::new(bus.ptr(), metadata, self.name);
            let mut stats = DispatchStats::default();
            let lean = Lean::start(MessageKind::Event, E::NAME, self.name, metadata);
            let fut = pin!(self.handler.handle(event, &mut cx));
            let result = lean.handler(self.name, fut, &mut stats).await;
            lean.finish::<E, _>(&result, &stats);
            result
        })
    }
}

impl<E: Event, H: EventHandler<E>> EventPipeline<E, H> {
    /// The full path ([`full_path::event`]). Out of line: it is the rarer path, and its code in
    /// `call` would make the lean path's entry slower.
    #[inline(never)]
    fn full<'a>(
        &'a self,
        bus: &'a Runtime,
        event: &'a (dyn Any + Send + Sync),
        metadata: &'a Metadata,
    ) -> DispatchFuture<'a, Result<(), Error>> {
        DispatchFuture::from_or_box(async move {
            let mut stats = DispatchStats::default();
            let run = full_path::event(self, bus, event, metadata, &mut stats);
            pin!(run).await
        })
    }
}

/// An event handler was handed another type of event: a bug in this crate.
#[cold]
fn mistyped<E: Event>(handler: &'static str) -> Error {
    Error::internal(format!(
        "event handler `{handler}` was given something other than `{}`",
        E::NAME
    ))
}

/// The handler's types, for the full path (see [`full_path`]).
impl<E: Event, H: EventHandler<E>> FullPipe for EventPipeline<E, H> {
    type Context = EventContext;

    fn message_name(&self) -> &'static str {
        E::NAME
    }

    fn handler_name(&self) -> &'static str {
        self.name
    }

    fn layers(&self) -> &Layers {
        &self.layers
    }

    fn handle<'a>(
        &'a self,
        message: Message<'a>,
        _last: bool,
        _output: &'a mut Erased,
        cx: &'a mut EventContext,
    ) -> Result<HandleFuture<'a>, Error> {
        let Some(event) = erased::shared::<E>(message) else {
            return Err(mistyped::<E>(self.name));
        };
        Ok(HandleFuture::from_or_box(self.handler.handle(event, cx)))
    }

    /// The event itself: it is shared, not in a slot.
    fn peek<'s>(&self, message: &'s Erased) -> Option<&'s Erased> {
        Some(message)
    }
}
