//! The event store in the database (tables `cqrs_events`, `cqrs_snapshots`). In a transactional
//! handler it reads and writes through the handler's transaction; otherwise each append is its
//! own transaction (with the outbox rows of its events, see `pipeline/aggregate.rs`).

use super::{Database, Tx, db_error};
use crate::event_store::{EventStore, RecordedEvent, Session, Snapshot, Stream, version_conflict};
use crate::{Error, Status};

/// The [`EventStore`] on the bus's database. The bus uses it by itself when it has a database.
#[derive(Debug, Clone)]
pub struct SqlEventStore {
    db: Database,
}

impl SqlEventStore {
    pub(crate) fn new(db: Database) -> Self {
        SqlEventStore { db }
    }
}

fn tx_of<'s>(session: &'s mut Session<'_>) -> Option<&'s mut Tx> {
    session.tx.as_deref_mut().and_then(super::tx::in_slot)
}

impl EventStore for SqlEventStore {
    async fn load(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, Error> {
        match (tx_of(session), &self.db) {
            #[cfg(feature = "sqlite")]
            (Some(Tx::Sqlite(tx)), _) => {
                super::sqlite::events_load(tx, stream.aggregate, stream.id, after).await
            }
            #[cfg(feature = "postgres")]
            (Some(Tx::Postgres(tx)), _) => {
                super::postgres::events_load(tx, stream.aggregate, stream.id, after).await
            }
            #[cfg(feature = "sqlite")]
            (None, Database::Sqlite(pool)) => {
                let mut conn = pool.acquire().await.map_err(db_error)?;
                super::sqlite::events_load(&mut conn, stream.aggregate, stream.id, after).await
            }
            #[cfg(feature = "postgres")]
            (None, Database::Postgres(pool)) => {
                let mut conn = pool.acquire().await.map_err(db_error)?;
                super::postgres::events_load(&mut conn, stream.aggregate, stream.id, after).await
            }
        }
    }

    async fn load_snapshot(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
    ) -> Result<Option<Snapshot>, Error> {
        match (tx_of(session), &self.db) {
            #[cfg(feature = "sqlite")]
            (Some(Tx::Sqlite(tx)), _) => {
                super::sqlite::snapshot_load(tx, stream.aggregate, stream.id).await
            }
            #[cfg(feature = "postgres")]
            (Some(Tx::Postgres(tx)), _) => {
                super::postgres::snapshot_load(tx, stream.aggregate, stream.id).await
            }
            #[cfg(feature = "sqlite")]
            (None, Database::Sqlite(pool)) => {
                let mut conn = pool.acquire().await.map_err(db_error)?;
                super::sqlite::snapshot_load(&mut conn, stream.aggregate, stream.id).await
            }
            #[cfg(feature = "postgres")]
            (None, Database::Postgres(pool)) => {
                let mut conn = pool.acquire().await.map_err(db_error)?;
                super::postgres::snapshot_load(&mut conn, stream.aggregate, stream.id).await
            }
        }
    }

    async fn append(
        &self,
        session: &mut Session<'_>,
        stream: Stream<'_>,
        expected: u64,
        events: &[RecordedEvent],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), Error> {
        match tx_of(session) {
            Some(tx) => append_in(tx, stream, expected, events, snapshot).await,
            None => {
                let mut tx = self.db.begin(crate::Isolation::ReadCommitted).await?;
                append_in(&mut tx, stream, expected, events, snapshot).await?;
                tx.commit().await
            }
        }
    }
}

/// Checks the stream's version and appends, inside `tx`. Two writers that both saw the old
/// version cannot both succeed: the primary key `(type, id, version)` refuses the second, which
/// is reported as the same `Conflict`.
async fn append_in(
    tx: &mut Tx,
    stream: Stream<'_>,
    expected: u64,
    events: &[RecordedEvent],
    snapshot: Option<&Snapshot>,
) -> Result<(), Error> {
    let clash = |e: Error| {
        if e.status() == Status::Conflict {
            version_conflict(stream, expected, expected + 1)
        } else {
            e
        }
    };
    match tx {
        #[cfg(feature = "sqlite")]
        Tx::Sqlite(tx) => {
            let current = super::sqlite::events_version(tx, stream.aggregate, stream.id).await?;
            if current != expected {
                return Err(version_conflict(stream, expected, current));
            }
            super::sqlite::events_append(tx, stream.aggregate, stream.id, events)
                .await
                .map_err(clash)?;
            if let Some(s) = snapshot {
                super::sqlite::snapshot_save(tx, stream.aggregate, stream.id, s).await?;
            }
        }
        #[cfg(feature = "postgres")]
        Tx::Postgres(tx) => {
            let current = super::postgres::events_version(tx, stream.aggregate, stream.id).await?;
            if current != expected {
                return Err(version_conflict(stream, expected, current));
            }
            super::postgres::events_append(tx, stream.aggregate, stream.id, events)
                .await
                .map_err(clash)?;
            if let Some(s) = snapshot {
                super::postgres::snapshot_save(tx, stream.aggregate, stream.id, s).await?;
            }
        }
    }
    Ok(())
}
