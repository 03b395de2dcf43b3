//! One durable consumer's pull loop: fetch an event, run the group's handlers on it, answer
//! the server. Success is acknowledged (and the acknowledgement confirmed); a failure before
//! the last delivery is negatively acknowledged with a delay that doubles each time (the
//! server delivers it again after that delay, to this process or another); on the last
//! delivery the event is parked in the dead-letter stream with the error, then acknowledged.
//! An event that cannot be read (no CloudEvent, or data that no longer decodes as the event
//! type: a schema that drifted) is parked at once: another delivery would not read better.
//! A handler's panic is an error like any other (the pipeline catches it).
//!
//! With `max_ack_pending = 1` a partition's next event is delivered only once this one is
//! answered: while an event is retried it holds back the later events of its partition; once
//! parked, it no longer does (the later events of its key go on without it, and a redelivery
//! from the dead-letter stream comes after them).

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::state::{Group, NatsBackend};
use super::{cloudevent, dead_letters};
use crate::Error;
use crate::bus::Shared;
use crate::events::HandlerFailure;

/// What the consumers are told to do: run, stop pulling, or give back the work in flight.
pub(crate) const RUN: u8 = 0;
pub(crate) const STOP_PULLING: u8 = 1;
pub(crate) const GIVE_BACK: u8 = 2;

pub(crate) async fn run(
    backend: Arc<NatsBackend>,
    bus: Weak<Shared>,
    group: Group,
    name: String,
    mut signal: watch::Receiver<u8>,
) {
    let stream = backend.config.stream.clone();
    let mut consumer: Option<jetstream::consumer::PullConsumer> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        if *signal.borrow() != RUN || bus.strong_count() == 0 {
            return;
        }
        let current = match &consumer {
            Some(c) => c.clone(),
            None => match backend.js.get_consumer_from_stream(&name, &stream).await {
                Ok(c) => {
                    pause = Duration::from_millis(100);
                    consumer = Some(c.clone());
                    c
                }
                Err(error) => {
                    // Deleted for a replay (and about to be created again), or the server is
                    // away: try again, without creating it (only `start` and `replay` do).
                    tracing::debug!(target: "cqrs::nats", consumer = %name, %error, "consumer not reachable; retrying");
                    wait(&mut signal, pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        let batch = current
            .fetch()
            .max_messages(1)
            .expires(backend.config.pull_wait)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::debug!(target: "cqrs::nats", consumer = %name, %error, "pull failed; retrying");
                consumer = None;
                wait(&mut signal, pause).await;
                continue;
            }
        };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => handle(&backend, &bus, &group, message, &mut signal).await,
                Err(error) => {
                    tracing::debug!(target: "cqrs::nats", consumer = %name, %error, "pull interrupted; retrying");
                    consumer = None;
                    break;
                }
            }
        }
    }
}

/// Sleeps `pause`, or less if told to stop.
async fn wait(signal: &mut watch::Receiver<u8>, pause: Duration) {
    let sleep = std::pin::pin!(tokio::time::sleep(pause));
    let changed = std::pin::pin!(signal.changed());
    futures_util::future::select(sleep, changed).await;
}

/// One delivery: read it, run the handlers, answer the server.
async fn handle(
    backend: &NatsBackend,
    bus: &Weak<Shared>,
    group: &Group,
    message: jetstream::Message,
    signal: &mut watch::Receiver<u8>,
) {
    let (delivered, sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let Some(shared) = bus.upgrade() else {
        answer(&message, AckKind::Nak(None)).await;
        return;
    };
    let incoming = match cloudevent::read(message.headers.as_ref(), &message.payload) {
        Ok(incoming) if incoming.name == group.event => incoming,
        Ok(incoming) => {
            let why = format!(
                "this consumer reads `{}` events, and this one is `{}`",
                group.event, incoming.name
            );
            park_and_ack(backend, group, &message, &why, delivered, sequence).await;
            return;
        }
        Err(why) => {
            let why = format!("not a readable CloudEvent: {why}");
            park_and_ack(backend, group, &message, &why, delivered, sequence).await;
            return;
        }
    };
    let event = match (group.decoder)(incoming.data) {
        Ok(event) => event,
        Err(error) => {
            let why = format!(
                "the data does not decode as `{}` (has its schema changed?): {error}",
                group.event
            );
            park_and_ack(backend, group, &message, &why, delivered, sequence).await;
            return;
        }
    };
    let runtime = &shared.runtime;
    let work = async {
        let mut failures: Vec<(&'static str, Error)> = Vec::new();
        for &(slot, index) in &group.handlers {
            let Some(pipe) = runtime.events.get(slot).and_then(|h| h.get(index)) else {
                continue;
            };
            let result =
                std::pin::pin!(pipe.call(runtime, event.as_any(), &incoming.metadata)).await;
            if let Err(error) = result {
                runtime.report_failure(&HandlerFailure {
                    event: event.name(),
                    event_id: incoming.id,
                    handler: pipe.handler_name(),
                    error: &error,
                });
                failures.push((pipe.handler_name(), error));
            }
        }
        failures
    };
    let Some(failures) = with_progress(&message, backend.config.ack_wait, signal, work).await
    else {
        // Told to give the work back: another delivery will run it.
        answer(&message, AckKind::Nak(None)).await;
        return;
    };
    if failures.is_empty() {
        if let Err(error) = message.double_ack().await {
            tracing::warn!(target: "cqrs::nats", event_id = %incoming.id, %error, "could not acknowledge a handled event; it will be delivered again");
        }
        return;
    }
    let why = failures
        .iter()
        .map(|(handler, error)| format!("`{handler}`: {error:#}"))
        .collect::<Vec<_>>()
        .join("; ");
    if delivered >= group.max_deliver {
        park_and_ack(backend, group, &message, &why, delivered, sequence).await;
    } else {
        let delay = backoff(backend, delivered);
        tracing::warn!(target: "cqrs::nats", group = %group.name, event_id = %incoming.id, delivered, max_deliver = group.max_deliver, retry_in = ?delay, "event handler failed; the event will be delivered again: {why}");
        answer(&message, AckKind::Nak(Some(delay))).await;
    }
}

/// The delay before the next delivery after `delivered` failed ones.
fn backoff(backend: &NatsBackend, delivered: i64) -> Duration {
    let c = &backend.config;
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    c.retry_initial
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(c.retry_max)
}

/// Runs `work`, telling the server every half of `ack_wait` that it is still in progress (so
/// a long handler is not delivered to another process meanwhile). `None` if told to give the
/// work back before it finished.
async fn with_progress<T>(
    message: &jetstream::Message,
    ack_wait: Duration,
    signal: &mut watch::Receiver<u8>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    let every = (ack_wait / 2).max(Duration::from_millis(50));
    loop {
        if *signal.borrow() == GIVE_BACK {
            return None;
        }
        let tick = std::pin::pin!(tokio::time::sleep(every));
        let changed = std::pin::pin!(signal.changed());
        let interrupt = futures_util::future::select(tick, changed);
        match futures_util::future::select(work.as_mut(), interrupt).await {
            futures_util::future::Either::Left((done, _)) => return Some(done),
            futures_util::future::Either::Right((futures_util::future::Either::Left(_), _)) => {
                answer(message, AckKind::Progress).await;
            }
            futures_util::future::Either::Right((futures_util::future::Either::Right(_), _)) => {}
        }
    }
}

async fn answer(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::debug!(target: "cqrs::nats", %error, "could not answer the server about an event; it will be delivered again");
    }
}

/// Parks the event in the dead-letter stream, then acknowledges it. If parking fails, the
/// event is left unacknowledged: the server delivers it again (or, past `max_deliver`, the
/// advisory watcher parks it).
async fn park_and_ack(
    backend: &NatsBackend,
    group: &Group,
    message: &jetstream::Message,
    why: &str,
    delivered: i64,
    sequence: u64,
) {
    tracing::error!(target: "cqrs::nats", group = %group.name, subject = %message.subject, sequence, delivered, "event parked in the dead-letter stream: {why}");
    match dead_letters::park(
        backend,
        group,
        message.headers.as_ref(),
        &message.payload,
        message.subject.as_str(),
        why,
        delivered,
        sequence,
    )
    .await
    {
        Ok(()) => {
            if let Err(error) = message.double_ack().await {
                tracing::warn!(target: "cqrs::nats", %error, "could not acknowledge a parked event");
            }
        }
        Err(error) => {
            tracing::error!(target: "cqrs::nats", error = %format_args!("{error:#}"), "could not park an event; it stays with its consumer");
            answer(message, AckKind::Nak(Some(backend.config.retry_max))).await;
        }
    }
}
