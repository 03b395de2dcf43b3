//! After the pipeline: events to their handlers, once the command has succeeded (and its
//! transaction has committed).
//!
//! Each event is delivered to every handler of its type, one after the other in a stable order
//! (by handler name). A handler that fails or panics does not stop the others and does not
//! change the command's result: the failure is logged (`tracing` error, target `cqrs`) and
//! passed to the failure sink. Events written to the outbox are marked delivered afterwards;
//! those whose delivery failed stay pending and are retried by the outbox relay.

use crate::Error;
use crate::bus::BusInner;
use crate::envelope::Metadata;
use crate::events::{EmittedEvent, ErasedEvent, HandlerFailure};

/// The metadata of an event emitted while handling the message with metadata `parent`.
pub(crate) fn event_metadata(emitted: &EmittedEvent, parent: &Metadata) -> Metadata {
    let mut metadata = Metadata::new();
    metadata.set_message_id(emitted.id);
    metadata.inherit(parent);
    metadata.set_aggregate(emitted.aggregate.clone());
    metadata
}

/// Publishes what a successful command emitted. Events in the outbox are marked delivered
/// when every handler took them; the others stay pending for the relay (or, when the bus does
/// not deliver inline, are left to it entirely).
pub(crate) async fn after_success(bus: &BusInner, events: Vec<EmittedEvent>, parent: &Metadata) {
    if events.is_empty() {
        return;
    }
    let mut delivered = Vec::new();
    for emitted in &events {
        if emitted.stored && !bus.delivers_inline() {
            continue;
        }
        let metadata = event_metadata(emitted, parent);
        let failures = deliver(bus, &*emitted.event, &metadata).await;
        if emitted.stored && failures.is_empty() {
            delivered.push(emitted.id);
        }
    }
    if !delivered.is_empty() {
        crate::persistence::mark_delivered(bus, &delivered).await;
    }
}

/// Delivers one event to every handler of its type; returns the failures (already reported).
pub(crate) async fn deliver(
    bus: &BusInner,
    event: &dyn ErasedEvent,
    metadata: &Metadata,
) -> Vec<(&'static str, Error)> {
    let mut failures = Vec::new();
    for observer in &bus.observers {
        observer.published(event, metadata);
    }
    for pipe in bus.event_handlers(event.slot()) {
        let result = pipe.call(bus, event.as_any(), metadata).await;
        for observer in &bus.observers {
            observer.delivered(event, metadata, pipe.handler_name(), &result);
        }
        if let Err(error) = result {
            let failure = HandlerFailure {
                event: event.name(),
                event_id: metadata.message_id(),
                handler: pipe.handler_name(),
                error: &error,
            };
            bus.report_failure(&failure);
            failures.push((pipe.handler_name(), error));
        }
    }
    failures
}
