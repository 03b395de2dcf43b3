//! A running SQL transaction ([`SqlTransaction`], begun by the store in `store.rs`): it writes
//! the outbox and the idempotent reply before it commits. Also what a handler reaches its
//! transaction through: `cx.tx::<DB>()` and `cx.any_tx()`.

use std::any::Any;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::Tx;
use super::outbox::{self, OutboxSettings};
use crate::Error;
use crate::context::{CommandContext, EventContext, TxSlot};
use crate::envelope::Metadata;
use crate::events::EmittedEvent;
use crate::pipeline::idempotency::IdempotencyKey;
use crate::pipeline::transaction::{self, Transaction};

/// A running transaction and the outbox settings it writes rows with.
pub(crate) struct SqlTransaction {
    tx: Tx,
    outbox: OutboxSettings,
}

impl SqlTransaction {
    pub(crate) fn new(tx: Tx, outbox: OutboxSettings) -> Self {
        SqlTransaction { tx, outbox }
    }

    /// The database's transaction, for an `#[exclusive]` one to end itself (`lock.rs`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn into_tx(self) -> Tx {
        self.tx
    }
}

impl Transaction for SqlTransaction {
    fn write_outbox<'a>(
        &'a mut self,
        events: &'a mut [EmittedEvent],
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(outbox::write(&mut self.tx, events, metadata, &self.outbox))
    }

    fn complete_idempotency<'a>(
        &'a mut self,
        key: &'a IdempotencyKey,
        reply: &'a [u8],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(super::idempotency::complete_in(&mut self.tx, key, reply))
    }

    fn record_handled<'a>(
        &'a mut self,
        handler: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(super::inbox::record(&mut self.tx, handler, event_id))
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(self.tx.commit())
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(self.tx.rollback())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.tx
    }
}

/// The SQL transaction in a context's slot, if it holds one.
pub(crate) fn in_slot(slot: &mut TxSlot) -> Option<&mut Tx> {
    transaction::in_slot(slot)?
        .as_any_mut()
        .downcast_mut::<Tx>()
}

/// The typed transaction in `slot`, or an error saying what is missing.
fn typed_tx<'s, DB: sqlx::Database>(
    slot: &'s mut TxSlot,
    handler: &str,
) -> Result<&'s mut sqlx::Transaction<'static, DB>, Error> {
    let Some(tx) = in_slot(slot) else {
        return Err(Error::internal(format!(
            "`cx.tx()` needs a transaction: add `#[transactional]` to `{handler}`"
        )));
    };
    let (any, running): (&mut dyn Any, &str) = match tx {
        #[cfg(feature = "sqlite")]
        Tx::Sqlite(t) => (t, "SQLite"),
        #[cfg(feature = "postgres")]
        Tx::Postgres(t) => (t, "PostgreSQL"),
    };
    any.downcast_mut::<sqlx::Transaction<'static, DB>>()
        .ok_or_else(|| {
            Error::internal(format!(
                "`{handler}` asked for a `{}` transaction, but the bus runs on {running}",
                std::any::type_name::<DB>()
            ))
        })
}

/// The connection of the transaction in `slot`, whichever the database.
fn any_tx_of<'s>(slot: &'s mut TxSlot, handler: &str) -> Result<AnyTx<'s>, Error> {
    match in_slot(slot) {
        None => Err(Error::internal(format!(
            "`cx.any_tx()` needs a transaction: add `#[transactional]` to `{handler}`"
        ))),
        #[cfg(feature = "sqlite")]
        Some(Tx::Sqlite(tx)) => Ok(AnyTx::Sqlite(tx)),
        #[cfg(feature = "postgres")]
        Some(Tx::Postgres(tx)) => Ok(AnyTx::Postgres(tx)),
    }
}

impl CommandContext {
    /// The running transaction of this `#[transactional]` handler, on database `DB`
    /// (`sqlx::Sqlite` or `sqlx::Postgres`): write your own SQL in it and it commits, or rolls
    /// back, with everything else the command does: `.execute(&mut **cx.tx::<sqlx::Sqlite>()?)`.
    /// The [guide](crate::guide) has a complete example. Without `#[transactional]`, or with the
    /// other database's type, it is an `Internal` error saying so.
    pub fn tx<DB: sqlx::Database>(&mut self) -> Result<&mut sqlx::Transaction<'static, DB>, Error> {
        typed_tx(&mut self.tx, self.handler)
    }

    /// The running transaction of this `#[transactional]` handler, whichever the database:
    /// match on it to run the SQL of each (`?` placeholders for SQLite, `$1` for PostgreSQL).
    pub fn any_tx(&mut self) -> Result<AnyTx<'_>, Error> {
        any_tx_of(&mut self.tx, self.handler)
    }
}

impl EventContext {
    /// The running transaction of this `#[transactional]` event handler, on database `DB`:
    /// its writes commit together with the record that it handled this event (the inbox), so
    /// a redelivered event is acknowledged without running it again. Without
    /// `#[transactional]`, or with the other database's type, an `Internal` error saying so.
    pub fn tx<DB: sqlx::Database>(&mut self) -> Result<&mut sqlx::Transaction<'static, DB>, Error> {
        typed_tx(&mut self.tx, self.handler)
    }

    /// The running transaction of this `#[transactional]` event handler, whichever the
    /// database.
    pub fn any_tx(&mut self) -> Result<AnyTx<'_>, Error> {
        any_tx_of(&mut self.tx, self.handler)
    }
}

/// The running transaction's connection, whichever the database: for handlers (and libraries)
/// that run on both. `cx.tx::<DB>()` gives the typed transaction when the database is known.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyTx<'a> {
    /// A SQLite transaction's connection.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut sqlx::SqliteConnection),
    /// A PostgreSQL transaction's connection.
    #[cfg(feature = "postgres")]
    Postgres(&'a mut sqlx::PgConnection),
}
