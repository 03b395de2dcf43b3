//! Event sourcing (seed `000`): aggregates rebuilt from their events, saved with optimistic
//! concurrency, snapshotted every N events.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context::CommandContext;
use crate::envelope::{AggregateVersion, Metadata, Principal};
use crate::events::{EmittedEvent, ErasedEvent, EventOrigin};
use crate::message::{Event, Message};
use crate::persistence::TxSlot;
use crate::{Error, Status};

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

/// An aggregate as loaded by [`CommandContext::load`]: its id, version, state, and the events
/// recorded since it was loaded. Derefs to the state.
pub struct AggregateRoot<A: Aggregate> {
    id: String,
    version: u64,
    state: A,
    pending: Pending<A::Event>,
    replayed: usize,
    snapshot_version: Option<u64>,
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
enum Pending<E> {
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

    fn as_slice(&self) -> &[E] {
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

/// The in-process [`EventStore`], for tests and for services without a database.
///
/// Events saved by `cx.save` are kept as they are, typed (sharing one allocation with the event
/// being published), with the metadata of the command that saved them: `cx.load` applies them
/// without a round trip through JSON, and they become [`RecordedEvent`]s (JSON) only when read
/// through the [`EventStore`] trait. Events appended through the trait are kept as given.
#[derive(Default)]
pub struct MemoryEventStore {
    streams: Mutex<Streams>,
}

/// By aggregate type and id. Looked up with a [`StreamRef`] that borrows the id (no key to
/// allocate), hashed with foldhash: the default SipHash took a fifth of a `cx.load` + `cx.save`
/// on new streams.
type Streams = hashbrown::HashMap<StreamKey, MemoryStream>;

/// A stream's key. The id is an `Arc` that the events saved by `cx.save` share as their
/// origin (one allocation per stream instead of one more per save).
#[derive(PartialEq, Eq)]
struct StreamKey {
    aggregate: &'static str,
    id: Arc<str>,
}

/// A borrowed [`StreamKey`], to look one up.
struct StreamRef<'a> {
    aggregate: &'static str,
    id: &'a str,
}

// The two hash alike, field by field: `StreamRef` finds the `StreamKey` it is equivalent to.
impl Hash for StreamKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.aggregate.hash(state);
        (*self.id).hash(state);
    }
}

impl Hash for StreamRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.aggregate.hash(state);
        self.id.hash(state);
    }
}

impl hashbrown::Equivalent<StreamKey> for StreamRef<'_> {
    fn equivalent(&self, key: &StreamKey) -> bool {
        self.aggregate == key.aggregate && self.id == &*key.id
    }
}

impl From<&StreamRef<'_>> for StreamKey {
    fn from(r: &StreamRef<'_>) -> Self {
        StreamKey {
            aggregate: r.aggregate,
            id: Arc::from(r.id),
        }
    }
}

impl<'a> From<Stream<'a>> for StreamRef<'a> {
    fn from(s: Stream<'a>) -> Self {
        StreamRef {
            aggregate: s.aggregate,
            id: s.id,
        }
    }
}

#[derive(Default)]
struct MemoryStream {
    events: Vec<MemoryEvent>,
    /// Boxed: most streams have none, and the map holds a `MemoryStream` per stream.
    snapshot: Option<Box<Snapshot>>,
}

impl MemoryStream {
    fn version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.version)
    }
}

struct MemoryEvent {
    event_id: Uuid,
    version: u64,
    recorded_at_ms: i64,
    body: MemoryBody,
}

enum MemoryBody {
    /// Appended through the [`EventStore`] trait. Boxed: it is the larger variant, and the
    /// rarer one.
    Json(Box<JsonEvent>),
    /// Saved by `cx.save`: the event, and what its stored metadata is made from (as the other
    /// stores do when they write).
    Typed {
        event: Arc<dyn ErasedEvent>,
        saved_by: SavedBy,
    },
}

struct JsonEvent {
    name: String,
    payload: serde_json::Value,
    metadata: serde_json::Value,
}

/// The ids of the command that saved an event, and its principal and saga when it has them
/// (rare: shared by the events of one save). What [`StoredMetadata::of_child`] takes from the
/// command's metadata, without keeping the whole of it in every stored event.
#[derive(Clone)]
struct SavedBy {
    correlation_id: Uuid,
    causation_id: Uuid,
    more: Option<Arc<(Option<Principal>, Option<String>)>>,
}

impl SavedBy {
    fn of(parent: &Metadata) -> Self {
        let (principal, saga_id) = (parent.principal(), parent.saga_id());
        SavedBy {
            correlation_id: parent.correlation_id(),
            causation_id: parent.message_id(),
            more: (principal.is_some() || saga_id.is_some())
                .then(|| Arc::new((principal.cloned(), saga_id.map(str::to_owned)))),
        }
    }

    fn stored(&self, aggregate: AggregateVersion) -> StoredMetadata {
        let (principal, saga_id) = match &self.more {
            Some(more) => (more.0.clone(), more.1.clone()),
            None => (None, None),
        };
        StoredMetadata {
            correlation_id: self.correlation_id,
            causation_id: Some(self.causation_id),
            principal,
            saga_id,
            aggregate: Some(aggregate),
        }
    }
}

impl MemoryEvent {
    fn to_recorded(&self, stream: Stream<'_>) -> Result<RecordedEvent, Error> {
        let (name, payload, metadata) = match &self.body {
            MemoryBody::Json(json) => (
                json.name.clone(),
                json.payload.clone(),
                json.metadata.clone(),
            ),
            MemoryBody::Typed { event, saved_by } => {
                let metadata = saved_by.stored(AggregateVersion {
                    aggregate: stream.aggregate.to_owned(),
                    id: stream.id.to_owned(),
                    version: self.version,
                });
                (
                    event.name().to_owned(),
                    event
                        .to_json()
                        .map_err(json_error("serializing an event"))?,
                    serde_json::to_value(&metadata)
                        .map_err(json_error("serializing event metadata"))?,
                )
            }
        };
        Ok(RecordedEvent {
            event_id: self.event_id,
            version: self.version,
            name,
            payload,
            metadata,
            recorded_at_ms: self.recorded_at_ms,
        })
    }

    /// Applies the event to `state`: by reference when it was stored typed, else decoded.
    fn apply_to<A: Aggregate>(&self, state: &mut A) -> Result<(), Error> {
        let decoded: A::Event = match &self.body {
            MemoryBody::Typed { event, .. } => match event.as_any().downcast_ref::<A::Event>() {
                Some(event) => {
                    state.apply(event);
                    return Ok(());
                }
                // Another type saved under the same aggregate name: as the other stores would.
                None => serde_json::from_value(
                    event
                        .to_json()
                        .map_err(json_error("serializing an event"))?,
                )
                .map_err(json_error("decoding a stored event"))?,
            },
            MemoryBody::Json(json) => A::Event::deserialize(&json.payload)
                .map_err(json_error("decoding a stored event"))?,
        };
        state.apply(&decoded);
        Ok(())
    }
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryEventStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `cx.load` on this store: snapshot and events read under one lock, applied in place.
    fn load_aggregate<A: Aggregate>(&self, id: String) -> Result<AggregateRoot<A>, Error> {
        let streams = self.lock();
        let key = StreamRef {
            aggregate: A::NAME,
            id: &id,
        };
        let Some(stream) = streams.get(&key) else {
            return Ok(AggregateRoot::new(id));
        };
        let snapshot = match (A::SNAPSHOT_EVERY, &stream.snapshot) {
            (1.., Some(s)) => Some(s),
            _ => None,
        };
        let (mut state, from) = match snapshot {
            Some(s) => (
                A::deserialize(&s.state).map_err(json_error("decoding a snapshot"))?,
                s.version,
            ),
            None => (A::default(), 0),
        };
        let mut replayed = 0;
        let mut version = from;
        for e in stream.events.iter().filter(|e| e.version > from) {
            e.apply_to(&mut state)?;
            replayed += 1;
            version = e.version;
        }
        let snapshot_version = snapshot.map(|s| s.version);
        drop(streams);
        Ok(AggregateRoot {
            id,
            version,
            state,
            pending: Pending::None,
            replayed,
            snapshot_version,
        })
    }

    /// `cx.save` on this store: appends the typed events, and hands them to `emitted` to be
    /// published.
    fn save_aggregate<A: Aggregate>(
        &self,
        root: &AggregateRoot<A>,
        parent: &Metadata,
        snapshot: Option<Snapshot>,
        emitted: &mut Vec<EmittedEvent>,
    ) -> Result<(), Error> {
        let now = crate::persistence::now_ms();
        let saved_by = SavedBy::of(parent);
        let mut streams = self.lock();
        let (origin_id, stream) = stream_entry(
            &mut streams,
            StreamRef {
                aggregate: A::NAME,
                id: &root.id,
            },
        );
        let current = stream.version();
        if current != root.version {
            let stream = Stream {
                aggregate: A::NAME,
                id: &root.id,
            };
            return Err(version_conflict(stream, root.version, current));
        }
        // Exactly, the first time: most streams (and commands) get one save of a few events,
        // and `Vec`'s first growth would make room for four.
        let pending = root.pending.as_slice();
        reserve(&mut stream.events, pending.len());
        reserve(emitted, pending.len());
        for (i, event) in pending.iter().enumerate() {
            let version = root.version + 1 + i as u64;
            let event: Arc<dyn ErasedEvent> = Arc::new(event.clone());
            let event_id = Uuid::now_v7();
            stream.events.push(MemoryEvent {
                event_id,
                version,
                recorded_at_ms: now,
                body: MemoryBody::Typed {
                    event: event.clone(),
                    saved_by: saved_by.clone(),
                },
            });
            emitted.push(EmittedEvent {
                id: event_id,
                event,
                stored: false,
                aggregate: Some(EventOrigin {
                    aggregate: A::NAME,
                    id: origin_id.clone(),
                    version,
                }),
            });
        }
        if let Some(snapshot) = snapshot {
            stream.snapshot = Some(Box::new(snapshot));
        }
        Ok(())
    }

    fn with_stream<T>(
        &self,
        stream: Stream<'_>,
        f: impl FnOnce(Option<&MemoryStream>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let streams = self.lock();
        f(streams.get(&StreamRef::from(stream)))
    }
}

impl fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lock().len();
        f.debug_struct("MemoryEventStore")
            .field("streams", &n)
            .finish()
    }
}

impl EventStore for MemoryEventStore {
    async fn load(
        &self,
        _: &mut Session<'_>,
        stream: Stream<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, Error> {
        self.with_stream(stream, |s| {
            s.map_or(Ok(Vec::new()), |s| {
                s.events
                    .iter()
                    .filter(|e| e.version > after_version)
                    .map(|e| e.to_recorded(stream))
                    .collect()
            })
        })
    }

    async fn load_snapshot(
        &self,
        _: &mut Session<'_>,
        stream: Stream<'_>,
    ) -> Result<Option<Snapshot>, Error> {
        self.with_stream(stream, |s| {
            Ok(s.and_then(|s| s.snapshot.as_deref().cloned()))
        })
    }

    async fn append(
        &self,
        _: &mut Session<'_>,
        stream: Stream<'_>,
        expected_version: u64,
        events: &[RecordedEvent],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), Error> {
        let mut streams = self.lock();
        let (_, s) = stream_entry(&mut streams, StreamRef::from(stream));
        let current = s.version();
        if current != expected_version {
            return Err(version_conflict(stream, expected_version, current));
        }
        s.events.extend(events.iter().map(|e| MemoryEvent {
            event_id: e.event_id,
            version: e.version,
            recorded_at_ms: e.recorded_at_ms,
            body: MemoryBody::Json(Box::new(JsonEvent {
                name: e.name.clone(),
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
            })),
        }));
        if let Some(snapshot) = snapshot {
            s.snapshot = Some(Box::new(snapshot.clone()));
        }
        Ok(())
    }
}

/// The stream with this key, created if missing, and its key's id.
fn stream_entry<'s>(
    streams: &'s mut Streams,
    key: StreamRef<'_>,
) -> (Arc<str>, &'s mut MemoryStream) {
    match streams.entry_ref(&key) {
        hashbrown::hash_map::EntryRef::Occupied(e) => (e.key().id.clone(), e.into_mut()),
        hashbrown::hash_map::EntryRef::Vacant(e) => {
            let e = e.insert_entry(MemoryStream::default());
            (e.key().id.clone(), e.into_mut())
        }
    }
}

fn reserve<T>(v: &mut Vec<T>, n: usize) {
    if v.is_empty() {
        v.reserve_exact(n);
    } else {
        v.reserve(n);
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

fn json_error(what: &'static str) -> impl Fn(serde_json::Error) -> Error {
    move |e| Error::from_std(Status::Internal, e).context(what)
}

impl CommandContext {
    /// Loads aggregate `A` with this id: its latest snapshot (if `A::SNAPSHOT_EVERY` > 0) and the
    /// events after it, applied in order. An aggregate with no events loads as new (version 0).
    /// In a `#[transactional]` handler it reads through the handler's transaction.
    pub async fn load<A: Aggregate>(
        &mut self,
        id: impl Into<String>,
    ) -> Result<AggregateRoot<A>, Error> {
        let id = id.into();
        let bus = self.bus_ptr();
        let persistence = &bus.get().persistence;
        if let Some(memory) = &persistence.memory {
            return memory.load_aggregate(id);
        }
        let store = &persistence.event_store;
        let stream = Stream {
            aggregate: A::NAME,
            id: &id,
        };
        let mut session = Session {
            tx: Some(&mut self.tx),
        };
        let snapshot = if A::SNAPSHOT_EVERY > 0 {
            store.load_snapshot_dyn(&mut session, stream).await?
        } else {
            None
        };
        let (mut state, from, snapshot_version) = match snapshot {
            Some(s) => (
                serde_json::from_value::<A>(s.state).map_err(json_error("decoding a snapshot"))?,
                s.version,
                Some(s.version),
            ),
            None => (A::default(), 0, None),
        };
        let events = store.load_dyn(&mut session, stream, from).await?;
        for e in &events {
            let event =
                A::Event::deserialize(&e.payload).map_err(json_error("decoding a stored event"))?;
            state.apply(&event);
        }
        Ok(AggregateRoot {
            version: events.last().map_or(from, |e| e.version),
            replayed: events.len(),
            snapshot_version,
            id,
            state,
            pending: Pending::None,
        })
    }

    /// Appends the events recorded on `root` at its loaded version (`Conflict` if someone else
    /// appended first: `#[retry(on = [Conflict])]` reloads and tries again), takes a snapshot
    /// when one is due, and publishes the events to event handlers after the handler succeeds
    /// (through the outbox when the store is the database).
    pub async fn save<A: Aggregate>(&mut self, root: &mut AggregateRoot<A>) -> Result<(), Error> {
        if root.pending.as_slice().is_empty() {
            return Ok(());
        }
        let new_version = root.version + root.pending.as_slice().len() as u64;
        let snapshot = match A::SNAPSHOT_EVERY {
            0 => None,
            every if new_version / every > root.version / every => Some(Snapshot {
                version: new_version,
                state: serde_json::to_value(&root.state)
                    .map_err(json_error("serializing a snapshot"))?,
            }),
            _ => None,
        };
        let bus = self.bus_ptr();
        let persistence = &bus.get().persistence;
        match &persistence.memory {
            Some(memory) => {
                memory.save_aggregate(root, &self.metadata, snapshot, &mut self.events)?
            }
            // Boxed: the database's futures are large, and inline they would make every
            // handler that saves an aggregate too large for the dispatch's inline storage.
            None => Box::pin(self.save_through(persistence, root, snapshot)).await?,
        }
        root.version = new_version;
        root.pending = Pending::None;
        Ok(())
    }

    /// `save` through the [`EventStore`] trait: the events as JSON, with their metadata.
    async fn save_through<A: Aggregate>(
        &mut self,
        persistence: &crate::persistence::Persistence,
        root: &AggregateRoot<A>,
        snapshot: Option<Snapshot>,
    ) -> Result<(), Error> {
        let stream = Stream {
            aggregate: A::NAME,
            id: &root.id,
        };
        let parent = StoredMetadata::of_child(&self.metadata);
        let now = crate::persistence::now_ms();
        let origin_id: Arc<str> = Arc::from(root.id.as_str());
        let pending = root.pending.as_slice();
        let mut emitted = Vec::with_capacity(pending.len());
        let mut recorded = Vec::with_capacity(pending.len());
        for (i, event) in pending.iter().enumerate() {
            let origin = EventOrigin {
                aggregate: A::NAME,
                id: origin_id.clone(),
                version: root.version + 1 + i as u64,
            };
            let metadata = StoredMetadata {
                aggregate: Some(origin.to_version()),
                ..parent.clone()
            };
            let mut e = EmittedEvent::new(event.clone());
            recorded.push(RecordedEvent {
                event_id: e.id,
                version: origin.version,
                name: <A::Event as Message>::NAME.to_owned(),
                payload: serde_json::to_value(event).map_err(json_error("serializing an event"))?,
                metadata: serde_json::to_value(&metadata)
                    .map_err(json_error("serializing event metadata"))?,
                recorded_at_ms: now,
            });
            e.aggregate = Some(origin);
            emitted.push(e);
        }
        crate::persistence::append(
            persistence,
            &mut self.tx,
            &self.metadata,
            stream,
            root.version,
            &recorded,
            snapshot.as_ref(),
            &mut emitted,
        )
        .await?;
        self.events.extend(emitted);
        Ok(())
    }
}
