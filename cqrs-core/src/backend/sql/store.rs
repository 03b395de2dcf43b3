//! A SQL database as the transaction layer's store ([`SqlStore`]): it begins transactions (on
//! PostgreSQL, an `#[exclusive]` attempt's on the connection that holds its lock: `lock.rs`),
//! and gives the outbox relay and the inbox what they ask of the store.

use std::any::Any;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::Database;
use super::outbox::{self, OutboxSettings};
use super::tx::SqlTransaction;
use crate::Error;
#[cfg(feature = "postgres")]
use crate::pipeline::exclusive::HeldLock;
use crate::pipeline::transaction::{Isolation, Transaction, TransactionalStore};

/// The bus's database, with the outbox settings its transactions write with.
#[derive(Debug, Clone)]
pub(crate) struct SqlStore {
    pub(crate) db: Database,
    pub(crate) outbox: OutboxSettings,
    /// Wakes the relay when rows were committed for it (with a transport).
    pub(crate) wake: std::sync::Arc<tokio::sync::Notify>,
}

impl TransactionalStore for SqlStore {
    fn begin(&self, isolation: Isolation) -> BoxFuture<'_, Result<Box<dyn Transaction>, Error>> {
        Box::pin(async move {
            let tx = self.db.begin(isolation).await?;
            Ok(Box::new(SqlTransaction::new(tx, self.outbox)) as Box<dyn Transaction>)
        })
    }

    /// On PostgreSQL, on the connection that holds the `#[exclusive]` lock (`lock.rs`).
    #[cfg(feature = "postgres")]
    fn begin_holding<'a>(
        &'a self,
        isolation: Isolation,
        lock: &'a mut dyn HeldLock,
    ) -> BoxFuture<'a, Result<Box<dyn Transaction>, Error>> {
        super::lock::begin_holding(self, self.outbox, isolation, lock)
    }

    fn mark_delivered<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(outbox::mark_delivered(&self.db, ids))
    }

    fn retry_soon<'a>(&'a self, failed: &'a [(Uuid, String)]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for (id, error) in failed {
                outbox::defer(&self.db, *id, 0, error).await?;
            }
            Ok(())
        })
    }

    fn wake_relay(&self) {
        self.wake.notify_one();
    }

    fn forget_handled<'a>(&'a self, handler: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(super::inbox::forget(&self.db, handler))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
