//! Event sourcing: aggregates rebuilt from their events, saved with optimistic concurrency,
//! snapshotted every N events. This module holds the model (`Aggregate`, `AggregateRoot`), the
//! [`EventStore`] trait and its in-memory implementation, the default; `cx.load` and `cx.save`
//! are in `pipeline/aggregate.rs`, where the configured store is reached, and the database
//! store is a backend (`backend/sql/events.rs`).

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context::TxSlot;
use crate::envelope::{AggregateVersion, Metadata, Principal};
use crate::events::{EmittedEvent, ErasedEvent, EventOrigin};
use crate::message::Event;
use crate::{Error, Status};

mod memory;

pub use self::memory::MemoryEventStore;

/// State rebuilt from its events.
///
/// `apply` must not fail and must not look at anything but the event: it runs on replay too.
/// Decisions (which may fail) belong in methods that look at the state and return the events to
/// record.
///
/// `cx.load::<A>(id)` replays it (from its latest snapshot, if any), `record` applies and keeps
/// new events, `cx.save(&mut a)` appends them at the version it loaded: a clash is a `Conflict`,
/// which `#[retry(on = [Conflict])]` turns into reload-and-retry. Without a database the events
/// live in memory; with `.sqlite(pool)` or `.postgres(pool)` in `cqrs_events`, and saved events
/// also go through the outbox to event handlers.
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::{Aggregate, AggregateRoot};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Debug, Clone, Serialize, Deserialize)]
/// pub enum CounterEvent { Incremented { by: u64 } }
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// pub struct Counter { pub value: u64 }
///
/// impl Aggregate for Counter {
///     const NAME: &'static str = "counter";
///     const SNAPSHOT_EVERY: u64 = 100;
///     type Event = CounterEvent;
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += by }
///     }
/// }
///
/// #[derive(Command, Debug, Clone, Serialize, Deserialize)]
/// #[command(output = u64)]
/// pub struct Increment { pub id: String }
///
/// #[command_handler(Increment)]
/// #[retry(max_attempts = 5, on = [Conflict])]      // a version clash reloads and retries
/// pub struct IncrementHandler;
///
/// impl CommandHandler<Increment> for IncrementHandler {
///     async fn handle(&self, cmd: Increment, cx: &mut CommandContext) -> Result<u64, Error> {
///         let mut counter = cx.load::<Counter>(&cmd.id).await?;   // replay (or snapshot + rest)
///         counter.record(CounterEvent::Incremented { by: 1 });     // decide: apply + remember
///         cx.save(&mut counter).await?;                            // append at the expected version
///         Ok(counter.value)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::builder().discover(false).register::<IncrementHandler>().build().unwrap();
/// assert_eq!(bus.send(Increment { id: "c-1".into() }).await.unwrap(), 1);
/// assert_eq!(bus.send(Increment { id: "c-1".into() }).await.unwrap(), 2);
/// # }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type's stable name: it keys the event store, so renaming it is a data
    /// migration.
    const NAME: &'static str;
    /// Take a snapshot every this many events (0: never). Loading then replays at most this many.
    const SNAPSHOT_EVERY: u64 = 0;
    /// Its events.
    type Event: Event + Clone;
    /// Changes the state by one event.
    fn apply(&mut self, event: &Self::Event);
}

/// An aggregate as loaded by [`CommandContext::load`](crate::CommandContext::load): its id, version, state, and the events
/// recorded since it was loaded. Derefs to the state.
pub struct AggregateRoot<A: Aggregate> {
    pub(crate) id: String,
    pub(crate) version: u64,
    pub(crate) state: A,
    pub(crate) pending: Pending<A::Event>,
    pub(crate) replayed: usize,
    pub(crate) snapshot_version: Option<u64>,
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new aggregate with no events.
    pub fn new(id: impl Into<String>) -> Self {
        AggregateRoot {
            id: id.into(),
            version: 0,
            state: A::default(),
            pending: Pending::None,
            replayed: 0,
            snapshot_version: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of events stored for it (0 for one that does not exist yet). Recorded events
    /// count once saved.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether no event was ever stored for it.
    pub fn is_new(&self) -> bool {
        self.version == 0
    }

    /// Its state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Applies an event and keeps it to be saved.
    pub fn record(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.pending.push(event);
    }

    /// The events recorded and not saved yet.
    pub fn pending(&self) -> &[A::Event] {
        self.pending.as_slice()
    }

    /// How many stored events were applied when it was loaded (after the snapshot, if any).
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    /// The version of the snapshot it was loaded from, if any.
    pub fn snapshot_version(&self) -> Option<u64> {
        self.snapshot_version
    }
}

impl<A: Aggregate> Deref for AggregateRoot<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate + fmt::Debug> fmt::Debug for AggregateRoot<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateRoot")
            .field("aggregate", &A::NAME)
            .field("id", &self.id)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("pending", &self.pending.as_slice().len())
            .finish()
    }
}

/// The events recorded on an aggregate and not saved yet: most commands record one, which is
/// kept inline (no allocation); a `Vec` from the second on.
pub(crate) enum Pending<E> {
    None,
    One(E),
    Many(Vec<E>),
}

impl<E> Pending<E> {
    fn push(&mut self, event: E) {
        *self = match std::mem::replace(self, Pending::None) {
            Pending::None => Pending::One(event),
            Pending::One(first) => Pending::Many(vec![first, event]),
            Pending::Many(mut events) => {
                events.push(event);
                Pending::Many(events)
            }
        };
    }

    pub(crate) fn as_slice(&self) -> &[E] {
        match self {
            Pending::None => &[],
            Pending::One(event) => std::slice::from_ref(event),
            Pending::Many(events) => events,
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event's id (the same in the outbox and in every delivery).
    pub event_id: Uuid,
    /// Its position in the aggregate's stream, from 1.
    pub version: u64,
    /// The event's name.
    pub name: String,
    /// The event, as JSON.
    pub payload: serde_json::Value,
    /// Its metadata (correlation and causation ids, principal, saga), as JSON.
    pub metadata: serde_json::Value,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
}

/// An aggregate's state at a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version it was taken at.
    pub version: u64,
    /// The state, as JSON.
    pub state: serde_json::Value,
}

/// Which aggregate's events.
#[derive(Debug, Clone, Copy)]
pub struct Stream<'a> {
    /// The aggregate type's name ([`Aggregate::NAME`]).
    pub aggregate: &'static str,
    /// The aggregate's id.
    pub id: &'a str,
}

/// The transaction an event store call runs in, when the handler is `#[transactional]` (the
/// database stores write the events in it; other stores ignore it).
pub struct Session<'a> {
    pub(crate) tx: Option<&'a mut TxSlot>,
}

impl Session<'_> {
    /// A session outside any transaction: to read or fill a store directly (tests, tools).
    pub fn none() -> Session<'static> {
        Session { tx: None }
    }
}

impl fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("in_transaction", &self.tx.is_some())
            .finish()
    }
}

/// Where aggregates' events live: [`MemoryEventStore`] by default, the bus's database when it
/// has one (table `cqrs_events`, snapshots in `cqrs_snapshots`).
pub trait EventStore: Send + Sync + 'static {
    /// The events of `stream` after `after_version`, in order.
    fn load(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        after_version: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// The latest snapshot of `stream`, if any.
    fn load_snapshot(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Appends `events` (numbered from `expected_version + 1`), failing with `Conflict` if the
    /// stream is no longer at `expected_version`; stores `snapshot` with them, if given.
    fn append(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        expected_version: u64,
        events: &[RecordedEvent],
        snapshot: Option<&Snapshot>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

pub(crate) trait DynEventStore: Send + Sync {
    fn load_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, Error>>;
    fn load_snapshot_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, Error>>;
    fn append_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
        expected_version: u64,
        events: &'a [RecordedEvent],
        snapshot: Option<&'a Snapshot>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl<S: EventStore> DynEventStore for S {
    fn load_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, Error>> {
        Box::pin(self.load(session, stream, after_version))
    }
    fn load_snapshot_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, Error>> {
        Box::pin(self.load_snapshot(session, stream))
    }
    fn append_dyn<'a>(
        &'a self,
        session: &'a mut Session<'_>,
        stream: Stream<'a>,
        expected_version: u64,
        events: &'a [RecordedEvent],
        snapshot: Option<&'a Snapshot>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.append(session, stream, expected_version, events, snapshot))
    }
}

impl<S: EventStore> EventStore for std::sync::Arc<S> {
    fn load(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        after_version: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send {
        (**self).load(session, stream, after_version)
    }
    fn load_snapshot(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send {
        (**self).load_snapshot(session, stream)
    }
    fn append(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        expected_version: u64,
        events: &[RecordedEvent],
        snapshot: Option<&Snapshot>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).append(session, stream, expected_version, events, snapshot)
    }
}

/// The error of a version clash.
pub(crate) fn version_conflict(stream: Stream<'_>, expected: u64, current: u64) -> Error {
    Error::conflict(format!(
        "{} `{}` is at version {current}, not {expected}: someone else changed it; reload and try again",
        stream.aggregate, stream.id
    ))
}

/// The metadata stored with an event: the emitting message's correlation id, its id as
/// causation id, its principal and saga.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredMetadata {
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) saga_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aggregate: Option<AggregateVersion>,
}

impl StoredMetadata {
    /// The metadata of an event emitted while handling the message with metadata `parent`.
    pub(crate) fn of_child(parent: &Metadata) -> Self {
        StoredMetadata {
            correlation_id: parent.correlation_id(),
            causation_id: Some(parent.message_id()),
            principal: parent.principal().cloned(),
            saga_id: parent.saga_id().map(str::to_owned),
            aggregate: None,
        }
    }

    /// The metadata of the event with id `event_id`.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn into_metadata(self, event_id: Uuid) -> Metadata {
        let mut m = Metadata::new();
        m.set_message_id(event_id);
        m.set_correlation_id(self.correlation_id);
        if let Some(c) = self.causation_id {
            m.set_causation_id(c);
        }
        if let Some(p) = self.principal {
            m.set_principal(p);
        }
        if let Some(s) = self.saga_id {
            m.set_saga_id(s);
        }
        m.set_aggregate(self.aggregate.map(std::sync::Arc::new));
        m
    }
}

pub(crate) fn json_error(what: &'static str) -> impl Fn(serde_json::Error) -> Error {
    move |e| Error::from_std(Status::Internal, e).context(what)
}

/// Milliseconds since the Unix epoch (how stored events record time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
