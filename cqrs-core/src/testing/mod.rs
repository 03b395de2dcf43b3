//! Testing your handlers: a bus per test with stub dependencies, handlers replaced by stubs,
//! every published event recorded, and a given/when/then fixture for aggregates (in the spirit
//! of Axon's test fixture and cqrs-es's `TestFramework`).
//!
//! ```
//! use std::sync::Arc;
//! use cqrs_core::prelude::*;
//! use cqrs_core::testing::{EventRecorder, stub};
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! struct Charge { cents: u64 }
//!
//! #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[command(output = u64)]
//! struct Checkout { cents: u64 }
//!
//! #[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
//! struct CheckedOut { receipt: u64 }
//!
//! #[command_handler(Checkout)]
//! struct CheckoutHandler;
//!
//! impl CommandHandler<Checkout> for CheckoutHandler {
//!     async fn handle(&self, cmd: Checkout, cx: &mut CommandContext) -> Result<u64, Error> {
//!         let receipt = cx.send(Charge { cents: cmd.cents }).await?;   // the payment service
//!         cx.emit(CheckedOut { receipt });
//!         Ok(receipt)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let events = EventRecorder::new();
//! let bus = Bus::builder()
//!     .discover(false)
//!     .register::<CheckoutHandler>()
//!     .override_handler::<Charge, _, _>(stub(|c: Charge| async move { Ok(c.cents + 1000) }))
//!     .record_events(&events)
//!     .build()
//!     .unwrap();
//!
//! assert_eq!(bus.send(Checkout { cents: 250 }).await.unwrap(), 1250);
//! assert_eq!(events.published_of::<CheckedOut>()[0].receipt, 1250);
//! # }
//! ```

mod aggregate;

use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::bus::BusBuilder;
use crate::context::{CommandContext, QueryContext};
use crate::envelope::Metadata;
use crate::events::{ErasedEvent, EventObserver};
use crate::handler::{CommandHandler, QueryHandler};
use crate::location::Location;
use crate::message::{Command, Event, Query};
use crate::{Error, Status};

pub use self::aggregate::{AggregateTest, Outcome};

/// A handler made of a closure: `stub(|cmd: PlaceOrder| async move { Ok(receipt) })`. It handles
/// any command or query whose handler signature the closure fits.
#[derive(Clone)]
pub struct Stub<F>(F);

/// Makes a [`Stub`] handler of a closure.
pub fn stub<F>(f: F) -> Stub<F> {
    Stub(f)
}

impl<F> std::fmt::Debug for Stub<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stub")
    }
}

// Not offered as the fix when a handler struct lacks its trait impl (rustc would list it).
#[diagnostic::do_not_recommend]
impl<C, F, Fut> CommandHandler<C> for Stub<F>
where
    C: Command,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, Error>> + Send,
{
    fn handle(
        &self,
        command: C,
        _cx: &mut CommandContext,
    ) -> impl Future<Output = Result<C::Output, Error>> + Send {
        (self.0)(command)
    }
}

// Not offered as the fix when a handler struct lacks its trait impl (rustc would list it).
#[diagnostic::do_not_recommend]
impl<Q, F, Fut> QueryHandler<Q> for Stub<F>
where
    Q: Query,
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Q::Output, Error>> + Send,
{
    fn handle(
        &self,
        query: Q,
        _cx: &QueryContext,
    ) -> impl Future<Output = Result<Q::Output, Error>> + Send {
        (self.0)(query)
    }
}

/// Marks an override as a command handler's (the `K` of [`BusBuilder::override_handler`]).
#[derive(Debug)]
pub enum AsCommandHandler {}
/// Marks an override as a query handler's.
#[derive(Debug)]
pub enum AsQueryHandler {}

/// A handler that can stand in for the handler of `M` (implemented for every command and query
/// handler).
pub trait OverrideFor<M, K>: Send + Sync + 'static {
    #[doc(hidden)]
    fn install(self, builder: BusBuilder, location: Location) -> BusBuilder;
}

impl<C: Command, H: CommandHandler<C>> OverrideFor<C, AsCommandHandler> for H {
    fn install(self, builder: BusBuilder, location: Location) -> BusBuilder {
        builder.command_instance::<C, H>(self, true, location)
    }
}

impl<Q: Query, H: QueryHandler<Q>> OverrideFor<Q, AsQueryHandler> for H {
    fn install(self, builder: BusBuilder, location: Location) -> BusBuilder {
        builder.query_instance::<Q, H>(self, true, location)
    }
}

impl BusBuilder {
    /// Replaces whatever handles command or query `M` (a discovered handler, one registered by
    /// hand) with `handler`, typically a [`stub`]: `.override_handler::<Charge, _, _>(stub(..))`.
    #[track_caller]
    pub fn override_handler<M, K, H: OverrideFor<M, K>>(self, handler: H) -> Self {
        handler.install(self, Location::caller())
    }

    /// Records every event the bus publishes, and every delivery, in `recorder`.
    pub fn record_events(mut self, recorder: &EventRecorder) -> Self {
        self.observers.push(recorder.inner.clone());
        self
    }
}

/// An event the bus published (emitted by a handler, saved by an aggregate, or published).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    /// The event's name.
    pub name: &'static str,
    /// Its id.
    pub id: Uuid,
    /// The event as JSON.
    pub payload: serde_json::Value,
    /// The correlation id it travelled with.
    pub correlation_id: Uuid,
    /// The id of the message that caused it.
    pub causation_id: Option<Uuid>,
}

/// One delivery of an event to one handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event's name.
    pub event: &'static str,
    /// Its id.
    pub event_id: Uuid,
    /// The handler.
    pub handler: &'static str,
    /// `Ok` or the status the handler failed with.
    pub outcome: Result<(), Status>,
}

#[derive(Default)]
struct Recorded {
    published: Vec<PublishedEvent>,
    deliveries: Vec<Delivery>,
}

#[derive(Default)]
struct RecorderInner(Mutex<Recorded>);

impl RecorderInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventObserver for RecorderInner {
    fn published(&self, event: &dyn ErasedEvent, metadata: &Metadata) {
        let payload = event.to_json().unwrap_or(serde_json::Value::Null);
        self.lock().published.push(PublishedEvent {
            name: event.name(),
            id: metadata.message_id(),
            payload,
            correlation_id: metadata.correlation_id(),
            causation_id: metadata.causation_id(),
        });
    }

    fn delivered(
        &self,
        event: &dyn ErasedEvent,
        metadata: &Metadata,
        handler: &'static str,
        result: &Result<(), Error>,
    ) {
        self.lock().deliveries.push(Delivery {
            event: event.name(),
            event_id: metadata.message_id(),
            handler,
            outcome: result.as_ref().map(|_| ()).map_err(Error::status),
        });
    }
}

/// Records what a bus publishes and delivers; give it to the builder with
/// [`BusBuilder::record_events`]. Cloning shares the record.
#[derive(Clone, Default)]
pub struct EventRecorder {
    inner: Arc<RecorderInner>,
}

impl EventRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        EventRecorder::default()
    }

    /// Every event published, in order.
    pub fn published(&self) -> Vec<PublishedEvent> {
        self.inner.lock().published.clone()
    }

    /// The names of the events published, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.inner.lock().published.iter().map(|e| e.name).collect()
    }

    /// The events of type `E` published, decoded, in order. Panics if one does not decode
    /// (rather than leave it out of the list a test then compares).
    #[track_caller]
    pub fn published_of<E: Event + DeserializeOwned>(&self) -> Vec<E> {
        self.inner
            .lock()
            .published
            .iter()
            .filter(|e| e.name == E::NAME)
            .map(|e| {
                serde_json::from_value(e.payload.clone()).unwrap_or_else(|err| {
                    panic!("a published `{}` does not decode: {err}", E::NAME)
                })
            })
            .collect()
    }

    /// Every delivery to a handler, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().deliveries.clone()
    }

    /// How many times `handler` received an event successfully.
    pub fn delivered_to(&self, handler: &str) -> usize {
        self.inner
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.handler == handler && d.outcome.is_ok())
            .count()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        let mut r = self.inner.lock();
        r.published.clear();
        r.deliveries.clear();
    }

    /// Panics, showing both lists, unless exactly these events of type `E` were published (in
    /// order; compared as JSON).
    #[track_caller]
    pub fn assert_published<E: Event>(&self, expected: &[E]) {
        let actual: Vec<serde_json::Value> = self
            .inner
            .lock()
            .published
            .iter()
            .filter(|e| e.name == E::NAME)
            .map(|e| e.payload.clone())
            .collect();
        let expected: Vec<serde_json::Value> = expected
            .iter()
            .map(|e| {
                // Not `Null` on failure: an event that serializes to nothing would then equal
                // every other one that does.
                serde_json::to_value(e).unwrap_or_else(|err| {
                    panic!("an expected `{}` does not serialize: {err}", E::NAME)
                })
            })
            .collect();
        assert!(
            actual == expected,
            "published `{}` events differ\n  expected: {}\n  actual:   {}",
            E::NAME,
            serde_json::Value::Array(expected),
            serde_json::Value::Array(actual)
        );
    }
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.inner.lock();
        f.debug_struct("EventRecorder")
            .field("published", &r.published.len())
            .field("deliveries", &r.deliveries.len())
            .finish()
    }
}
