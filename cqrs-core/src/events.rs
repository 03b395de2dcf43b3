//! Events in flight: emitted by a handler, waiting to be delivered to event handlers.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::message::Event;

/// An event whose type is known only at run time.
pub(crate) trait ErasedEvent: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn slot(&self) -> usize;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    fn partition_key(&self) -> Option<String>;
}

impl<E: Event> ErasedEvent for E {
    fn name(&self) -> &'static str {
        E::NAME
    }
    fn slot(&self) -> usize {
        E::__slot()
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
    fn partition_key(&self) -> Option<String> {
        Event::partition_key(self)
    }
}

/// An event a handler emitted, with the id it keeps through the outbox and every redelivery.
pub(crate) struct EmittedEvent {
    pub(crate) id: Uuid,
    /// Shared: the in-memory event store keeps the same allocation as the event it stored.
    pub(crate) event: Arc<dyn ErasedEvent>,
    /// Whether it is in the outbox (then it is marked delivered after delivery).
    pub(crate) stored: bool,
    /// The aggregate it was saved for, if any.
    pub(crate) aggregate: Option<EventOrigin>,
}

impl EmittedEvent {
    pub(crate) fn new<E: Event>(event: E) -> Self {
        EmittedEvent {
            id: Uuid::now_v7(),
            event: Arc::new(event),
            stored: false,
            aggregate: None,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.event.name()
    }

    /// The key whose events keep their order: its aggregate (`type/id`), else what the event
    /// declares.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn partition_key(&self) -> Option<String> {
        match &self.aggregate {
            Some(origin) => Some(format!("{}/{}", origin.aggregate, origin.id)),
            None => self.event.partition_key(),
        }
    }
}

/// The aggregate an event was saved for, in the form that costs the least to make: the
/// [`AggregateVersion`](crate::envelope::AggregateVersion) in the event's metadata (two strings
/// and an `Arc`) is built from it only when something reads it (an event handler, an observer,
/// the outbox), and the id is shared by every event of one save.
#[derive(Debug, Clone)]
pub(crate) struct EventOrigin {
    pub(crate) aggregate: &'static str,
    pub(crate) id: Arc<str>,
    pub(crate) version: u64,
}

impl EventOrigin {
    pub(crate) fn to_version(&self) -> crate::envelope::AggregateVersion {
        crate::envelope::AggregateVersion {
            aggregate: self.aggregate.to_owned(),
            id: (*self.id).to_owned(),
            version: self.version,
        }
    }
}

impl fmt::Debug for EmittedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmittedEvent")
            .field("id", &self.id)
            .field("name", &self.event.name())
            .finish()
    }
}

/// Decodes a stored event (outbox, event store, broker) back into its type.
pub(crate) type EventDecoder =
    fn(serde_json::Value) -> Result<Box<dyn ErasedEvent>, serde_json::Error>;

pub(crate) fn decode_event<E: Event>(
    value: serde_json::Value,
) -> Result<Box<dyn ErasedEvent>, serde_json::Error> {
    Ok(Box::new(serde_json::from_value::<E>(value)?))
}

/// Something that watches every event the bus publishes (the test recorder).
pub(crate) trait EventObserver: Send + Sync {
    fn published(&self, event: &dyn ErasedEvent, metadata: &crate::Metadata);
    fn delivered(
        &self,
        event: &dyn ErasedEvent,
        metadata: &crate::Metadata,
        handler: &'static str,
        result: &Result<(), crate::Error>,
    );
}

/// A failed delivery of an event to one handler, as the failure sink sees it.
#[derive(Debug)]
pub struct HandlerFailure<'a> {
    /// The event's name.
    pub event: &'static str,
    /// The event's id.
    pub event_id: Uuid,
    /// The handler that failed.
    pub handler: &'static str,
    /// What it returned (a panic is an `Internal` error saying so).
    pub error: &'a crate::Error,
}
