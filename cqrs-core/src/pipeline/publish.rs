//! After the pipeline: events to their handlers, once the command has succeeded (and its
//! transaction has committed).
//!
//! Each event is delivered to every handler of its type, one after the other in a stable order
//! (by handler name). A handler that fails or panics does not stop the others and does not
//! change the command's result: the failure is logged (`tracing` error, target `cqrs`) and
//! passed to the failure sink. Events written to the outbox are marked delivered afterwards;
//! those whose delivery failed stay pending and are retried by the outbox relay.
//!
//! With a transport (a broker, `pipeline/transport.rs`), nothing is delivered here: events not
//! in the outbox yet are written to it in a transaction of their own, and the relay is woken
//! to send them.
//!
//! `bus.publish(event)` is delivered here too ([`envelope`]): to every handler of its type the
//! same way, except that a failure is the publish's own error (each handler still runs).

use std::future::Future;
use std::pin::{Pin, pin};

use futures_util::future::Either;

use super::Layers;
use super::cache::target::Invalidation;
use super::report::DispatchStats;
use crate::Error;
use crate::envelope::{Envelope, Metadata};
use crate::events::{EmittedEvent, ErasedEvent, HandlerFailure};
use crate::message::Event;
use crate::pipeline::runtime::Runtime;

/// The metadata of an event emitted while handling the message with metadata `parent`.
pub(crate) fn event_metadata(emitted: &EmittedEvent, parent: &Metadata) -> Metadata {
    let mut metadata = Metadata::new();
    metadata.set_message_id(emitted.id);
    metadata.inherit(parent);
    // The command has succeeded by now: its caller's deadline bounded the command, not the
    // delivery of what it emitted, which cut short would lose an event that is not in the
    // outbox. Event handlers keep their own `timeout = ..`.
    metadata.clear_deadline();
    metadata.set_aggregate(
        emitted
            .aggregate
            .as_ref()
            .map(|origin| std::sync::Arc::new(origin.to_version())),
    );
    metadata
}

/// After a command's handler succeeded (the last row of the pipeline): its events recorded
/// (for a report), the caches it names dropped, then its events published. `targets`: the
/// answers to drop when `invalidates = [Query(field = ..)]` names fields (read from the command
/// before its handler took it); empty, every named query is dropped whole. The lean and the
/// full paths both end here.
pub(crate) async fn after(
    layers: &Layers,
    bus: &Runtime,
    events: Vec<EmittedEvent>,
    targets: &[Invalidation],
    metadata: &Metadata,
    stats: &mut DispatchStats,
) {
    if stats.collect_events {
        stats.events.extend(events.iter().map(EmittedEvent::name));
    }
    // Answers the command made stale go before its events do: a handler reacting to them
    // must read what the command changed. Both box their work, and only when there is some:
    // their futures are large (event handlers, the outbox) and most dispatches have none.
    if !layers.invalidates.is_empty() {
        let invalidate = Box::pin(async {
            if targets.is_empty() {
                for entry in &layers.invalidates {
                    bus.invalidate(Invalidation::all(entry.query)).await;
                }
            } else {
                for invalidation in targets {
                    bus.invalidate(*invalidation).await;
                }
            }
        });
        invalidate.await;
    }
    if !events.is_empty() {
        // Not boxed here: `after_success` boxes its delivery itself, and only when some event
        // has a handler, an observer or an outbox row to mark.
        after_success(bus, events, metadata).await;
    }
}

/// Publishes what a successful command emitted. Events in the outbox are marked delivered
/// when every handler took them; the others stay pending for the relay (or, when the bus does
/// not deliver inline, are left to it entirely).
///
/// Events that nobody listens to (no handler, no observer) and that are not in the outbox are
/// common (an aggregate's events before any projection exists): when they are all there is,
/// the returned future is ready at once and pointer-sized, and the delivery's own future (large:
/// event handlers' futures, the outbox) is boxed only when there is something to deliver.
pub(crate) fn after_success<'a>(
    bus: &'a Runtime,
    events: Vec<EmittedEvent>,
    parent: &'a Metadata,
) -> impl Future<Output = ()> + Send + 'a {
    if bus.stores.transport.is_some() {
        if events.is_empty() {
            return Either::Left(std::future::ready(()));
        }
        return Either::Right(Either::Left(Box::pin(async move {
            if let Err(error) = through_outbox(bus, events, parent).await {
                // The command has succeeded; only a transactional command writes its events
                // with its work, atomically.
                tracing::error!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "events of a command without `#[transactional]` could not be written to the outbox; they are lost (make the command transactional to write them with its work)");
            }
        })));
    }
    if events.iter().all(|e| !has_work(bus, e)) {
        return Either::Left(std::future::ready(()));
    }
    Either::Right(Either::Right(Box::pin(deliver_all(bus, events, parent))))
}

/// With a transport: writes the events not in the outbox yet in a transaction of their own,
/// then wakes the relay, which sends them.
pub(crate) async fn through_outbox(
    bus: &Runtime,
    mut events: Vec<EmittedEvent>,
    parent: &Metadata,
) -> Result<(), Error> {
    let database = bus.stores.database()?;
    if events.iter().any(|e| !e.stored) {
        let mut tx = database
            .begin(crate::pipeline::transaction::Isolation::ReadCommitted)
            .await?;
        if let Err(error) = tx.write_outbox(&mut events, parent).await {
            let _ = tx.rollback().await;
            return Err(error);
        }
        tx.commit().await?;
    }
    database.wake_relay();
    Ok(())
}

/// Whether publishing `emitted` does anything: deliver it, or mark it delivered in the outbox.
fn has_work(bus: &Runtime, emitted: &EmittedEvent) -> bool {
    if emitted.stored {
        return bus.delivers_inline();
    }
    !bus.observers.is_empty() || !bus.event_handlers(emitted.event.slot()).is_empty()
}

async fn deliver_all(bus: &Runtime, events: Vec<EmittedEvent>, parent: &Metadata) {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for emitted in &events {
        if emitted.stored && !bus.delivers_inline() {
            continue;
        }
        // Nobody to deliver it to: skip making its metadata (and its aggregate's version).
        if bus.observers.is_empty() && bus.event_handlers(emitted.event.slot()).is_empty() {
            if emitted.stored {
                delivered.push(emitted.id);
            }
            continue;
        }
        let metadata = event_metadata(emitted, parent);
        let failures = deliver(bus, &*emitted.event, &metadata).await;
        match failures.first() {
            _ if !emitted.stored => {}
            None => delivered.push(emitted.id),
            Some((handler, error)) => failed.push((emitted.id, format!("`{handler}`: {error}"))),
        }
    }
    if !delivered.is_empty() {
        // Boxed: the database's futures are large, and most publishes have nothing to mark.
        Box::pin(mark_delivered(bus, &delivered)).await;
    }
    if !failed.is_empty() {
        Box::pin(retry_soon(bus, &failed)).await;
    }
}

/// Gives the rows whose delivery failed back to the relay, for a retry within about a second
/// rather than when this dispatch's claim runs out (failures are logged: the claim still runs
/// out, and the relay delivers them then).
async fn retry_soon(runtime: &Runtime, failed: &[(uuid::Uuid, String)]) {
    if let Some(database) = &runtime.stores.database
        && let Err(error) = database.retry_soon(failed).await
    {
        tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "could not give failed events back to the relay; it delivers them once their claim runs out");
    }
}

/// The delivery of one published event to its handlers (or, with a broker, to the outbox).
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async
/// fn` moves the envelope into a local of its body, one more copy per publish.
#[allow(clippy::manual_async_fn)] // deliberate: see above
#[inline]
pub(crate) fn envelope<E: Event>(
    bus: &Runtime,
    env: Envelope<E>,
) -> impl Future<Output = Result<(), Error>> + Send + '_ {
    async move {
        if bus.stores.transport.is_some() {
            return to_broker(bus, env).await;
        }
        let failures = if bus.observers.is_empty() {
            // What `deliver` does when there is no observer, with the event's type
            // known here: no `dyn ErasedEvent` to ask for its slot and `Any`, and no future
            // of `deliver`'s own around the handlers' (about 50 instructions per publish).
            let mut failures = Vec::new();
            for pipe in bus.event_handlers(E::__slot()) {
                // Pinned where it is returned: see `deliver`.
                let result = pin!(pipe.call(bus, &env.message, &env.metadata)).await;
                if let Err(error) = result {
                    let handler = pipe.handler_name();
                    failed(bus, E::NAME, &env.metadata, handler, error, &mut failures);
                }
            }
            failures
        } else {
            deliver(bus, &env.message, &env.metadata).await
        };
        if failures.is_empty() {
            return Ok(());
        }
        Err(publish_failed::<E>(bus, failures))
    }
}

/// With a broker: the event goes through the outbox, like a command's events. Boxed and
/// out of line: its state (the outbox's transaction) stays out of every in-process publish.
#[cold]
#[inline(never)]
fn to_broker<E: Event>(
    bus: &Runtime,
    env: Envelope<E>,
) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
    Box::pin(async move {
        // The envelope's metadata is the event's own: as the "parent" the outbox derives it
        // from, it keeps its correlation id, and its causation id (a root event is its own
        // cause).
        let mut emitted = crate::events::EmittedEvent::new(env.message);
        emitted.id = env.metadata.message_id();
        let mut parent = env.metadata;
        parent.set_message_id(parent.causation_id().unwrap_or(emitted.id));
        through_outbox(bus, vec![emitted], &parent).await
    })
}

/// The error of a publish some handlers failed: the first failure stays the source.
#[cold]
#[inline(never)]
fn publish_failed<E: Event>(bus: &Runtime, failures: Vec<(&'static str, Error)>) -> Error {
    let Some((_, first)) = failures.first() else {
        return Error::internal("a publish failed with no failure recorded");
    };
    let total = bus.event_handlers(E::__slot()).len();
    let detail: Vec<String> = failures
        .iter()
        .map(|(h, e)| format!("`{h}`: {e}"))
        .collect();
    // The first failure stays the source, with its own causes (`find_source` reaches them).
    Error::new(
        first.status(),
        format!(
            "{} of {total} handlers of `{}` failed: {}",
            failures.len(),
            E::NAME,
            detail.join("; ")
        ),
    )
    .with_source(crate::StdErrorAdapter(first.clone()))
}

/// Delivers one event to every handler of its type; returns the failures (already reported).
///
/// `bus.publish` of an event when no observer is registered does the same in
/// [`envelope`], with the event's type known: a change here belongs there too.
pub(crate) async fn deliver(
    bus: &Runtime,
    event: &dyn ErasedEvent,
    metadata: &Metadata,
) -> Vec<(&'static str, Error)> {
    let mut failures = Vec::new();
    for observer in &bus.observers {
        observer.published(event, metadata);
    }
    for pipe in bus.event_handlers(event.slot()) {
        // Pinned where it is returned: awaiting it by value would copy its inline storage
        // (`DispatchFuture`, 768 bytes) into this future's state first.
        let result = pin!(pipe.call(bus, event.as_any(), metadata)).await;
        for observer in &bus.observers {
            observer.delivered(event, metadata, pipe.handler_name(), &result);
        }
        if let Err(error) = result {
            failed(
                bus,
                event.name(),
                metadata,
                pipe.handler_name(),
                error,
                &mut failures,
            );
        }
    }
    failures
}

/// A handler of event `event` failed: reported (log, failure sink), and added to `failures`.
#[cold]
#[inline(never)]
pub(crate) fn failed(
    bus: &Runtime,
    event: &'static str,
    metadata: &Metadata,
    handler: &'static str,
    error: Error,
    failures: &mut Vec<(&'static str, Error)>,
) {
    bus.report_failure(&HandlerFailure {
        event,
        event_id: metadata.message_id(),
        handler,
        error: &error,
    });
    failures.push((handler, error));
}

/// Marks outbox rows delivered after an inline delivery (failures are logged: the relay will
/// deliver the rows again).
async fn mark_delivered(runtime: &Runtime, ids: &[uuid::Uuid]) {
    if let Some(database) = &runtime.stores.database
        && let Err(error) = database.mark_delivered(ids).await
    {
        tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "could not mark events delivered; the relay will deliver them again");
    }
}
