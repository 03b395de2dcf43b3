//! The seam through which events leave the process: a broker a backend gives (`.nats(..)`).
//!
//! With a transport, no event is delivered in the process that emitted it. Every event goes
//! through the outbox (in the command's transaction, or in a transaction of its own after a
//! command without one, or for `bus.publish`); the outbox relay hands the committed rows to the
//! transport, in the order they were written for each partition key, and marks a row sent only
//! once the transport says the broker has it. Event handlers receive events from the broker
//! (the backend's consumers), in whichever process runs them.

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::Error;
use crate::envelope::Metadata;

/// One committed event, as the outbox hands it to a transport (read by the NATS backend).
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) struct OutgoingEvent<'a> {
    /// The event id, which the broker uses to drop a second publish of the same event.
    pub(crate) id: Uuid,
    /// The event's stable name (`Event::NAME`).
    pub(crate) name: &'a str,
    /// The event, as JSON.
    pub(crate) payload: &'a str,
    /// Its metadata (correlation, causation, principal, saga, aggregate).
    pub(crate) metadata: &'a Metadata,
    /// The key whose events keep their order: an aggregate (`type/id`) or what the event
    /// declares; `None`, no order with any other event.
    pub(crate) partition_key: Option<&'a str>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub(crate) created_at_ms: i64,
}

/// Where committed events go when they leave the process.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) trait EventTransport: Send + Sync + 'static {
    /// Publishes one event; `Ok` once the broker acknowledged it (then the outbox row is
    /// marked sent). The outbox calls this for the events of one partition key one after the
    /// other, never with an event whose older sibling is not acknowledged yet.
    fn send<'a>(&'a self, event: OutgoingEvent<'a>) -> BoxFuture<'a, Result<(), Error>>;

    /// Whether events can be sent: after `bus.start()` set the broker up, until
    /// `bus.shutdown(..)`. The relay leaves the outbox alone meanwhile.
    fn is_ready(&self) -> bool;
}
