//! The stores the layers use, as the builder and the backends configured them: the database
//! (transactions and the outbox), the event store, and how they combine.

use std::sync::Arc;

use super::exclusive::LockBackend;
use super::transaction::TransactionalStore;
use super::transport::EventTransport;
use crate::Error;
use crate::event_store::{DynEventStore, MemoryEventStore};

/// The stores of a built bus.
pub(crate) struct Stores {
    /// The database, when a backend gave one (`.sqlite(..)`, `.postgres(..)`).
    pub(crate) database: Option<Arc<dyn TransactionalStore>>,
    /// Whether events in the outbox are delivered in the dispatch, right after commit.
    pub(crate) outbox_inline: bool,
    /// The broker events leave through (`.nats(..)`): then every event goes through the outbox
    /// and none is delivered in this process (`pipeline/transport.rs`).
    pub(crate) transport: Option<Arc<dyn EventTransport>>,
    pub(crate) event_store: Arc<dyn DynEventStore>,
    /// `event_store` itself, when it is the in-memory store: `cx.load` and `cx.save` use it
    /// directly (typed events, no JSON).
    pub(crate) memory_events: Option<Arc<MemoryEventStore>>,
    /// Whether the event store is the database's, so that saving outside a transaction opens
    /// one of its own for the events and their outbox rows.
    pub(crate) event_store_in_db: bool,
    /// Whether idempotent replies are written in the handler's transaction (the idempotency
    /// store is the database's own).
    pub(crate) idempotency_in_tx: bool,
    /// The locks of `#[exclusive]` handlers: PostgreSQL's advisory locks, else Redis leases.
    pub(crate) locks: Option<Arc<dyn LockBackend>>,
}

impl Stores {
    /// The database, or an error saying how to give one.
    pub(crate) fn database(&self) -> Result<&dyn TransactionalStore, Error> {
        self.database.as_deref().ok_or_else(|| {
            Error::internal(
                "the bus has no database: add `.sqlite(pool)` or `.postgres(pool)` to the builder",
            )
        })
    }
}
