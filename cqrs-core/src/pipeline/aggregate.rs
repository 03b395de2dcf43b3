//! Aggregates from a handler: `cx.load` replays one from the bus's event store, `cx.save`
//! appends what it recorded (in the handler's transaction when it has one, else in a
//! transaction of its own with the events' outbox rows when the store is the database) and
//! hands the events to the publish step.

use std::sync::Arc;

use serde::Deserialize;

use super::runtime::Runtime;
use super::stores::Stores;
use super::transaction;
use crate::Error;
use crate::context::{CommandContext, TxSlot};
use crate::envelope::Metadata;
use crate::event_store::{
    Aggregate, AggregateRoot, Pending, RecordedEvent, Session, Snapshot, StoredMetadata, Stream,
    json_error, now_ms,
};
use crate::events::{EmittedEvent, EventOrigin};
use crate::message::Message;

impl CommandContext {
    /// Loads aggregate `A` with this id: its latest snapshot (if `A::SNAPSHOT_EVERY` > 0) and the
    /// events after it, applied in order. An aggregate with no events loads as new (version 0).
    /// In a `#[transactional]` handler it reads through the handler's transaction.
    pub async fn load<A: Aggregate>(
        &mut self,
        id: impl Into<String>,
    ) -> Result<AggregateRoot<A>, Error> {
        let id = id.into();
        let runtime = self.runtime;
        let persistence = &Runtime::of(&runtime)?.stores;
        if let Some(memory) = &persistence.memory_events {
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
        let runtime = self.runtime;
        let persistence = &Runtime::of(&runtime)?.stores;
        match &persistence.memory_events {
            Some(memory) => {
                memory.save_aggregate(root, self.metadata.get(), snapshot, &mut self.events)?
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
        persistence: &Stores,
        root: &AggregateRoot<A>,
        snapshot: Option<Snapshot>,
    ) -> Result<(), Error> {
        let stream = Stream {
            aggregate: A::NAME,
            id: &root.id,
        };
        let parent = StoredMetadata::of_child(self.metadata());
        let now = now_ms();
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
        append(
            persistence,
            &mut self.tx,
            self.metadata.get(),
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

/// Appends an aggregate's events: in the handler's transaction when it has one; in a transaction
/// of its own, with their outbox rows, when the store is the database; else through the store.
#[allow(clippy::too_many_arguments)]
async fn append(
    stores: &Stores,
    tx: &mut TxSlot,
    parent: &Metadata,
    stream: Stream<'_>,
    expected: u64,
    events: &[RecordedEvent],
    snapshot: Option<&Snapshot>,
    emitted: &mut [EmittedEvent],
) -> Result<(), Error> {
    if let (true, None, Some(database)) = (stores.event_store_in_db, tx.get_mut(), &stores.database)
    {
        let mut own =
            transaction::into_slot(database.begin(crate::Isolation::ReadCommitted).await?);
        let mut session = Session { tx: Some(&mut own) };
        stores
            .event_store
            .append_dyn(&mut session, stream, expected, events, snapshot)
            .await?;
        let Some(mut own) = transaction::take_from_slot(&mut own) else {
            return Err(Error::internal("the event store's transaction disappeared"));
        };
        own.write_outbox(emitted, parent).await?;
        return own.commit().await;
    }
    let mut session = Session { tx: Some(tx) };
    stores
        .event_store
        .append_dyn(&mut session, stream, expected, events, snapshot)
        .await
}
