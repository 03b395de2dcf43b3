//! [`MemoryEventStore`]: the in-process event store, and the typed fast path `cx.load` and
//! `cx.save` take on it.

#[allow(clippy::wildcard_imports)]
// this file is the parent module's store, split out for size
use super::*;

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
    pub(crate) fn load_aggregate<A: Aggregate>(
        &self,
        id: String,
    ) -> Result<AggregateRoot<A>, Error> {
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
    pub(crate) fn save_aggregate<A: Aggregate>(
        &self,
        root: &AggregateRoot<A>,
        parent: &Metadata,
        snapshot: Option<Snapshot>,
        emitted: &mut Vec<EmittedEvent>,
    ) -> Result<(), Error> {
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
            // The time in the id: one clock read for both.
            let now = event_id.get_timestamp().map_or_else(super::now_ms, |ts| {
                let (secs, nanos) = ts.to_unix();
                secs as i64 * 1000 + i64::from(nanos / 1_000_000)
            });
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
