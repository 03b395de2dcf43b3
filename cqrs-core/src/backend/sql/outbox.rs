//! The outbox: events of a transactional handler are written in its transaction, delivered
//! after commit, and marked delivered; the relay delivers what is left (after a crash, after a
//! failed delivery) at startup and periodically.
//!
//! A row written by a dispatch is *claimed* by it (`locked_until_ms` = now + lease), so the relay
//! leaves it alone while the dispatch delivers it inline. If the process dies before delivering,
//! the claim runs out and the relay of any process sharing the database delivers it. A failed
//! delivery, in the dispatch or by the relay, gives the row back with a growing back-off (about a
//! second the first time), so a transient failure delays a read model by seconds, not by the
//! lease. Delivery is therefore at least once;
//! event handlers get the event id (`cx.event_id()`) to recognise a redelivery.
//!
//! On PostgreSQL the "delivered" mark is committed asynchronously (`synchronous_commit = off`
//! for its own statement, see `postgres::outbox_mark_delivered`): losing it in a crash costs a
//! redelivery, which at-least-once allows, and not waiting for its WAL flush made a
//! transactional command with one event 20 to 30% faster (BENCHMARKS.md). SQLite in WAL mode
//! with `synchronous = NORMAL` (the pool `sqlite_pool` opens) already commits without an fsync.

use std::time::Duration;

use uuid::Uuid;

use super::rows::{ClaimedRow, OutboxRow};
use super::{Database, Tx, now_ms};

use crate::envelope::Metadata;
use crate::event_store::StoredMetadata;
use crate::events::{EmittedEvent, ErasedEvent};
use crate::pipeline::publish;
use crate::pipeline::runtime::Runtime;

use crate::{Error, Status};

/// How the outbox behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxSettings {
    /// Deliver right after commit, in the dispatch (otherwise only the relay delivers).
    pub(crate) inline: bool,
    /// Run the relay in the background.
    pub(crate) relay: bool,
    /// How often the relay looks for pending events.
    pub(crate) interval: Duration,
    /// How long a claim protects a row being delivered.
    pub(crate) lease: Duration,
    /// The most rows the relay takes at once.
    pub(crate) batch: i64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            inline: true,
            relay: true,
            interval: Duration::from_secs(2),
            lease: Duration::from_secs(30),
            batch: 100,
        }
    }
}

fn json_error(e: serde_json::Error) -> Error {
    Error::from_std(Status::Internal, e).context("serializing an event for the outbox")
}

/// Writes the events not yet stored into the outbox, inside `tx`, claimed by this dispatch.
pub(crate) async fn write(
    tx: &mut Tx,
    events: &mut [EmittedEvent],
    parent: &Metadata,
    settings: &OutboxSettings,
) -> Result<(), Error> {
    let now = now_ms();
    let stored = StoredMetadata::of_child(parent);
    let plain = serde_json::to_string(&stored).map_err(json_error)?;
    let claim = settings
        .inline
        .then(|| now + settings.lease.as_millis() as i64);
    for event in events.iter_mut().filter(|e| !e.stored) {
        let metadata = match &event.aggregate {
            None => plain.clone(),
            Some(origin) => serde_json::to_string(&StoredMetadata {
                aggregate: Some(origin.to_version()),
                ..stored.clone()
            })
            .map_err(json_error)?,
        };
        let row = OutboxRow {
            id: event.id,
            event_name: event.name(),
            payload: event.event.to_json().map_err(json_error)?.to_string(),
            metadata,
            created_at_ms: now,
            partition_key: event.partition_key(),
        };
        match tx {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(tx) => super::sqlite::outbox_insert(tx, &row, claim).await?,
            #[cfg(feature = "postgres")]
            Tx::Postgres(tx) => super::postgres::outbox_insert(tx, &row, claim).await?,
        }
        event.stored = true;
    }
    Ok(())
}

/// Marks delivered rows.
pub(crate) async fn mark_delivered(db: &Database, ids: &[Uuid]) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => super::sqlite::outbox_mark_delivered(pool, ids).await,
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => super::postgres::outbox_mark_delivered(pool, ids).await,
    }
}

/// Gives a row back to the relay after a failed delivery, to retry after a back-off that grows
/// with its attempts (1 s, 2 s, 4 s, … up to 5 minutes).
pub(crate) async fn defer(
    db: &Database,
    id: Uuid,
    attempts: i64,
    error: &str,
) -> Result<(), Error> {
    let backoff_ms = 1000i64
        .saturating_mul(1 << attempts.clamp(0, 8))
        .min(300_000);
    let until = now_ms() + backoff_ms;
    match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => super::sqlite::outbox_defer(pool, id, until, error).await,
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => super::postgres::outbox_defer(pool, id, until, error).await,
    }
}

/// The number of events not yet delivered.
pub(crate) async fn pending(db: &Database) -> Result<u64, Error> {
    match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => super::sqlite::outbox_pending(pool).await,
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => super::postgres::outbox_pending(pool).await,
    }
}

/// Delivers (or, with a transport, sends) one batch of pending events; returns how many rows it
/// handled. The rows of one partition key go one after the other; when one fails, it backs off
/// and the later rows of its key are given back untouched, to leave after it.
pub(crate) async fn relay_once(
    bus: &Runtime,
    db: &Database,
    settings: &OutboxSettings,
) -> Result<usize, Error> {
    let now = now_ms();
    let lease_until = now + settings.lease.as_millis() as i64;
    let rows = match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => {
            super::sqlite::outbox_claim(pool, now, lease_until, settings.batch).await?
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => {
            super::postgres::outbox_claim(pool, now, lease_until, settings.batch).await?
        }
    };
    let handled = rows.len();
    let chains = chains(rows);
    let outcomes: Vec<ChainOutcome> = match &bus.stores.transport {
        // Keys are independent: their chains are sent concurrently.
        Some(transport) => {
            futures_util::future::join_all(
                chains
                    .iter()
                    .map(|chain| run_chain(chain, |row| send_row(&**transport, row))),
            )
            .await
        }
        // In-process handlers run one event at a time, as inline delivery does.
        None => {
            let mut outcomes = Vec::with_capacity(chains.len());
            for chain in &chains {
                outcomes.push(run_chain(chain, |row| deliver_row(bus, row)).await);
            }
            outcomes
        }
    };
    let mut delivered = Vec::with_capacity(handled);
    let mut held_back = Vec::new();
    for outcome in outcomes {
        delivered.extend(outcome.done);
        if let Some((row, error)) = outcome.failed {
            tracing::warn!(target: "cqrs::outbox", event = %row.event_name, event_id = %row.id, attempts = row.attempts, error = %format_args!("{error:#}"), "outbox delivery failed; will retry");
            defer(db, row.id, row.attempts, &error.to_string()).await?;
        }
        held_back.extend(outcome.held_back);
    }
    mark_delivered(db, &delivered).await?;
    release(db, &held_back).await?;
    Ok(handled)
}

/// The claimed rows, by partition key, each key's rows in the order they were written; a row
/// without a key is a chain of its own. Chains are in the order of their first row.
fn chains(mut rows: Vec<ClaimedRow>) -> Vec<Vec<ClaimedRow>> {
    rows.sort_by_key(|r| r.seq);
    let mut chains: Vec<Vec<ClaimedRow>> = Vec::new();
    let mut by_key: std::collections::HashMap<String, usize> = Default::default();
    for row in rows {
        match row.partition_key.clone() {
            Some(key) => match by_key.get(&key) {
                Some(&i) => chains[i].push(row),
                None => {
                    by_key.insert(key, chains.len());
                    chains.push(vec![row]);
                }
            },
            None => chains.push(vec![row]),
        }
    }
    chains
}

/// What became of one chain: the rows done, the one that failed, the ones after it.
struct ChainOutcome<'a> {
    done: Vec<Uuid>,
    failed: Option<(&'a ClaimedRow, Error)>,
    held_back: Vec<Uuid>,
}

async fn run_chain<'a, F, Fut>(chain: &'a [ClaimedRow], mut step: F) -> ChainOutcome<'a>
where
    F: FnMut(&'a ClaimedRow) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut outcome = ChainOutcome {
        done: Vec::with_capacity(chain.len()),
        failed: None,
        held_back: Vec::new(),
    };
    for (i, row) in chain.iter().enumerate() {
        if let Err(error) = step(row).await {
            outcome.failed = Some((row, error));
            outcome.held_back = chain[i + 1..].iter().map(|r| r.id).collect();
            break;
        }
        outcome.done.push(row.id);
    }
    outcome
}

/// Gives claimed rows back without a back-off.
async fn release(db: &Database, ids: &[Uuid]) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    match db {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(pool) => super::sqlite::outbox_release(pool, ids).await,
        #[cfg(feature = "postgres")]
        Database::Postgres(pool) => super::postgres::outbox_release(pool, ids).await,
    }
}

/// Hands a row to the transport; `Ok` once the broker has it.
async fn send_row(
    transport: &dyn crate::pipeline::transport::EventTransport,
    row: &ClaimedRow,
) -> Result<(), Error> {
    let stored: StoredMetadata = serde_json::from_str(&row.metadata)?;
    let metadata = stored.into_metadata(row.id);
    transport
        .send(crate::pipeline::transport::OutgoingEvent {
            id: row.id,
            name: &row.event_name,
            payload: &row.payload,
            metadata: &metadata,
            partition_key: row.partition_key.as_deref(),
            created_at_ms: row.created_at_ms,
        })
        .await
}

async fn deliver_row(bus: &Runtime, row: &ClaimedRow) -> Result<(), Error> {
    let Some(decode) = bus.event_decoder(&row.event_name) else {
        // No handler of this event in this process: nothing to deliver.
        return Ok(());
    };
    let payload: serde_json::Value = serde_json::from_str(&row.payload)?;
    let event: Box<dyn ErasedEvent> = decode(payload).map_err(|e| {
        Error::from_std(Status::Internal, e)
            .context(format!("decoding outbox event `{}`", row.event_name))
    })?;
    let stored: StoredMetadata = serde_json::from_str(&row.metadata)?;
    let metadata = stored.into_metadata(row.id);
    let failures = publish::deliver(bus, &*event, &metadata).await;
    match failures.first() {
        None => Ok(()),
        // The first failure stays the source, with its own causes.
        Some((handler, error)) => Err(Error::new(
            error.status(),
            format!(
                "{} handler(s) failed, first `{handler}`: {error}",
                failures.len()
            ),
        )
        .with_source(crate::StdErrorAdapter(error.clone()))),
    }
}
