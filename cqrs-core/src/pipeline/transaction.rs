//! Layer 9: the database transaction around the handler.
//!
//! `#[transactional(isolation = "serializable", rollback_on = [..])]` on a command handler. The
//! layer begins a transaction on the bus's database before each attempt, the handler reaches it
//! through `cx.tx()`, and it commits when the handler returns `Ok` and rolls back when it returns
//! `Err` (with `rollback_on`, only errors of those statuses roll back; the others commit what was
//! written and still return the error). Events emitted by the handler go into the outbox inside
//! the same transaction. How each isolation level maps onto each database is documented on
//! [`Isolation`].
//!
//! This file holds the layer's configuration ([`TransactionLayer`]), its behaviour ([`begin`],
//! [`finish`]) and the seam a database backend implements ([`TransactionalStore`],
//! [`Transaction`]; the SQL backends are in `backend/sql`).

use std::any::Any;
use std::fmt;
use std::future::Future;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::exclusive::{self, HeldLock};
use super::idempotency::IdempotencyKey;
use crate::envelope::Metadata;
use crate::events::EmittedEvent;
use crate::{Error, Status};

/// A database the transaction layer runs handlers in, and the outbox lives in: what a database
/// backend implements (SQLite and PostgreSQL in `backend/sql`).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) trait TransactionalStore: Send + Sync + 'static {
    /// Begins a transaction at `isolation`.
    fn begin(&self, isolation: Isolation) -> BoxFuture<'_, Result<Box<dyn Transaction>, Error>>;
    /// Begins the transaction of an `#[exclusive]` attempt that holds `lock`: PostgreSQL
    /// begins on the lock's own connection, which the transaction then owns and unlocks once
    /// it has ended (`backend/sql/lock.rs`); any other lock stays with the exclusive layer.
    fn begin_holding<'a>(
        &'a self,
        isolation: Isolation,
        lock: &'a mut dyn HeldLock,
    ) -> BoxFuture<'a, Result<Box<dyn Transaction>, Error>> {
        let _ = lock;
        self.begin(isolation)
    }
    /// Marks outbox rows delivered, after their events were delivered in the dispatch.
    fn mark_delivered<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<(), Error>>;
    /// Gives back outbox rows whose delivery in the dispatch failed, for the relay to retry
    /// after a short back-off (rather than once the dispatch's claim runs out).
    fn retry_soon<'a>(&'a self, failed: &'a [(Uuid, String)]) -> BoxFuture<'a, Result<(), Error>>;
    /// Tells the outbox relay that rows were committed for it (with a transport, the relay
    /// publishes them at once rather than at its next round).
    fn wake_relay(&self) {}
    /// Forgets which events `handler` has handled (its inbox rows), so that they run again
    /// (a replay); returns how many it forgot.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    fn forget_handled<'a>(&'a self, handler: &'a str) -> BoxFuture<'a, Result<u64, Error>>;
    /// The backend's own type, for its extensions (`bus.migrate()`, `cx.tx::<DB>()`).
    fn as_any(&self) -> &dyn Any;
}

/// One running transaction of a [`TransactionalStore`].
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) trait Transaction: Send + 'static {
    /// Writes events to the outbox, claimed for delivery by this dispatch (each event is marked
    /// `stored`).
    fn write_outbox<'a>(
        &'a mut self,
        events: &'a mut [EmittedEvent],
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Stores an idempotent command's reply, so that it commits with the command's work.
    fn complete_idempotency<'a>(
        &'a mut self,
        key: &'a IdempotencyKey,
        reply: &'a [u8],
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Records in the inbox that `handler` handles event `event_id`, in this transaction;
    /// `false` when it already had (its work was committed then: do not run it again).
    fn record_handled<'a>(
        &'a mut self,
        handler: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// The backend's own transaction, for `cx.tx::<DB>()`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// What a handler's context does in a transaction: where it keeps it, what it records right
/// after `BEGIN`, and what it writes before the `COMMIT` of a success. Implemented by each
/// kind's context (`pipeline/contexts.rs`).
pub(crate) trait InTransaction: Send {
    /// The handler's name, for messages.
    fn handler(&self) -> &'static str;

    /// Where the transaction of a `#[transactional]` handler is kept (`cx.tx()` finds it
    /// there); `None` for a kind that cannot be transactional.
    fn tx_slot(&mut self) -> Option<&mut crate::context::TxSlot> {
        None
    }

    /// Right after `BEGIN`: `false` when the handler must not run in this transaction (an
    /// event handler records the event in its inbox, and finds it was handled already).
    fn opened<'a>(
        &'a mut self,
        _tx: &'a mut dyn Transaction,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'a {
        std::future::ready(Ok(true))
    }

    /// Before the `COMMIT` of a success: what has to commit with the handler's work (a
    /// command's events into the outbox, and its idempotent reply).
    fn committing<'a>(
        &'a mut self,
        _tx: &'a mut dyn Transaction,
        _reply: Option<(&'a IdempotencyKey, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        std::future::ready(Ok(()))
    }
}

/// A transaction as a context's [`TxSlot`](crate::context::TxSlot) keeps it.
pub(crate) fn into_slot(tx: Box<dyn Transaction>) -> crate::context::TxSlot {
    crate::context::TxSlot::open(Box::new(tx))
}

/// The transaction in a context's slot.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn in_slot(slot: &mut crate::context::TxSlot) -> Option<&mut dyn Transaction> {
    let tx = slot.get_mut()?.downcast_mut::<Box<dyn Transaction>>()?;
    Some(&mut **tx)
}

/// Takes the transaction out of a context's slot.
pub(crate) fn take_from_slot(slot: &mut crate::context::TxSlot) -> Option<Box<dyn Transaction>> {
    slot.take()?
        .downcast::<Box<dyn Transaction>>()
        .ok()
        .map(|tx| *tx)
}

/// Begins the transaction of one attempt, in the context's slot (where `cx.tx()` finds it).
/// `false` when the handler must not run in it (an event handler that had already handled this
/// event: see [`InTransaction::opened`]); the transaction is then rolled back.
pub(crate) async fn begin<C: InTransaction>(
    layer: &TransactionLayer,
    store: &dyn TransactionalStore,
    cx: &mut C,
) -> Result<bool, Error> {
    let handler = cx.handler();
    let Some(slot) = cx.tx_slot() else {
        return Err(Error::internal(format!(
            "`{handler}` cannot run in a transaction"
        )));
    };
    let isolation = layer.isolation_level();
    let mut tx = match exclusive::held_mut(slot) {
        Some(lock) => store.begin_holding(isolation, lock).await?,
        None => store.begin(isolation).await?,
    };
    match cx.opened(&mut *tx).await {
        Ok(true) => {
            // Beside the attempt's `#[exclusive]` lock, if it holds one.
            if let Some(slot) = cx.tx_slot() {
                slot.put(Box::new(tx));
            }
            Ok(true)
        }
        Ok(false) => {
            let _ = tx.rollback().await;
            tracing::debug!(target: "cqrs", handler = cx.handler(), "event already handled (in the inbox): not run again");
            Ok(false)
        }
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// Ends the transaction of one attempt: on success, writes what commits with the work (see
/// [`InTransaction::committing`]: a command's outbox rows and its idempotent `reply`), then
/// commits; on failure, rolls back (or commits, for statuses not in `rollback_on`, and still
/// returns the error).
pub(crate) async fn finish<C: InTransaction>(
    layer: &TransactionLayer,
    cx: &mut C,
    result: Result<(), Error>,
    reply: Option<(&IdempotencyKey, Result<Vec<u8>, Error>)>,
) -> Result<(), Error> {
    let handler = cx.handler();
    let Some(mut tx) = cx.tx_slot().and_then(take_from_slot) else {
        return Err(Error::internal(
            "the transaction of a `#[transactional]` handler disappeared",
        ));
    };
    match result {
        Ok(()) => {
            // A reply that cannot be serialized fails the attempt: the transaction is
            // dropped, which rolls it back.
            let reply = match reply {
                Some((key, reply)) => Some((key, reply?)),
                None => None,
            };
            cx.committing(&mut *tx, reply).await?;
            commit_confirmed(cx, tx).await
        }
        Err(error) if layer.rolls_back(error.status()) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(target: "cqrs", handler, error = %rollback, "rollback failed (the database discards the transaction anyway)");
            }
            Err(error)
        }
        Err(error) => {
            if let Err(commit) = commit_confirmed(cx, tx).await {
                // The caller gets the commit's failure (what happened to the work: it failed,
                // or the lock could not be confirmed and it was rolled back), and the
                // handler's own error with it: neither is lost.
                tracing::error!(target: "cqrs", handler, error = %format_args!("{commit:#}"), handler_error = %format_args!("{error:#}"), "commit after a non-rollback error failed");
                return Err(commit.context(format_args!(
                    "committing the work of `{handler}`, which had returned: {error}"
                )));
            }
            Err(error)
        }
    }
}

/// Commits, once the attempt's `#[exclusive]` lock, if it holds one, is confirmed (see
/// [`HeldLock::confirm`]): a Redis lease can run out while the handler runs, and committing
/// then would write outside the lock, so the transaction is rolled back instead.
async fn commit_confirmed<C: InTransaction>(
    cx: &mut C,
    tx: Box<dyn Transaction>,
) -> Result<(), Error> {
    let confirm = cx
        .tx_slot()
        .and_then(exclusive::held_mut)
        .and_then(|lock| lock.confirm());
    if let Some(confirm) = confirm
        && let Err(lost) = confirm.await
    {
        let _ = tx.rollback().await;
        return Err(lost);
    }
    tx.commit().await
}

/// The isolation level of a `#[transactional]` handler.
///
/// | level | PostgreSQL | SQLite |
/// |---|---|---|
/// | `ReadCommitted` | `READ COMMITTED` | `BEGIN IMMEDIATE` (SQLite is always serializable) |
/// | `RepeatableRead` | `REPEATABLE READ` | `BEGIN IMMEDIATE` |
/// | `Serializable` | `SERIALIZABLE` (a serialization failure or a deadlock is a transient `Unavailable`, which `#[retry]` retries; when the attempts run out the caller gets `Unavailable`: a 503 with `Retry-After` over HTTP, not a 409) | `BEGIN IMMEDIATE` |
///
/// SQLite runs one writer at a time, so every level is serializable there. The transaction takes
/// the write lock when it begins (`BEGIN IMMEDIATE`) rather than at its first write: two writers
/// then queue on the busy timeout instead of failing with "database is locked" when a reader
/// tries to upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// The database's default for PostgreSQL.
    #[default]
    ReadCommitted,
    /// Snapshot isolation.
    RepeatableRead,
    /// Full serializability.
    Serializable,
}

impl Isolation {
    /// The name used in the attribute: `read_committed`, `repeatable_read`, `serializable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::RepeatableRead => "repeatable_read",
            Isolation::Serializable => "serializable",
        }
    }

    /// The PostgreSQL statement that sets this level.
    pub const fn postgres_sql(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// The configuration of `#[transactional(..)]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TransactionLayer {
    isolation: Isolation,
    rollback_on: Option<&'static [Status]>,
}

impl TransactionLayer {
    /// Read committed; every error rolls back.
    pub const fn new() -> Self {
        TransactionLayer {
            isolation: Isolation::ReadCommitted,
            rollback_on: None,
        }
    }

    /// The isolation level.
    pub const fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Only errors of these statuses roll back; the others commit.
    pub const fn rollback_on(mut self, statuses: &'static [Status]) -> Self {
        self.rollback_on = Some(statuses);
        self
    }

    /// The isolation level.
    pub fn isolation_level(&self) -> Isolation {
        self.isolation
    }

    /// Whether an error of this status rolls the transaction back.
    pub fn rolls_back(&self, status: Status) -> bool {
        self.rollback_on.is_none_or(|on| on.contains(&status))
    }
}

impl Default for TransactionLayer {
    fn default() -> Self {
        TransactionLayer::new()
    }
}

impl fmt::Display for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transaction(isolation={}", self.isolation.as_str())?;
        if let Some(on) = self.rollback_on {
            let on: Vec<_> = on.iter().map(|s| format!("{s:?}")).collect();
            write!(f, ", rollback_on={}", super::describe::list(&on))?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
