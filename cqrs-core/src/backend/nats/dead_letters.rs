//! The dead-letter stream (`<stream>_DLQ`): events a handler could not take, each with the
//! error, the handler (group) and how often it was delivered. `bus.dead_letters(..)` lists
//! them; `bus.redeliver(..)` puts them back **to their handler only**, through the handler's
//! redelivery subject (`<prefix>.rd.<group>`, read by its `_rd` consumer): republishing on the
//! event's own subject would run every handler of the event again.
//!
//! An event whose last delivery never came back (its process died while handling it) is
//! parked by the max-deliveries advisory the server publishes, which one process of the service
//! watches (a queue subscription).

use std::sync::Arc;
use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::names;
use super::state::{Group, NatsBackend};
use crate::bus::Bus;
use crate::{Error, Status};

/// One parked event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its position in the dead-letter stream.
    pub sequence: u64,
    /// The event's id (`ce-id`).
    pub event_id: Uuid,
    /// The event's name (`ce-type`).
    pub event: String,
    /// The handler (its consumer group) that could not take it.
    pub handler: String,
    /// Why: the handler's error, or why the event could not be read.
    pub error: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// When it was parked.
    pub parked_at: SystemTime,
    /// The event's data (JSON; a string when it was not JSON).
    pub data: serde_json::Value,
}

/// What to put back: one event (to every handler it is parked for), or all of one handler's.
#[derive(Debug, Clone)]
pub enum Redeliver {
    /// The event with this id.
    Event(Uuid),
    /// Every event parked for this handler.
    AllOf(String),
}

impl From<Uuid> for Redeliver {
    fn from(id: Uuid) -> Self {
        Redeliver::Event(id)
    }
}

/// Header values are one line of printable text.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 4000 {
        let mut end = 4000;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// Parks an event (its headers and data as they came) for `group`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn park(
    backend: &NatsBackend,
    group: &Group,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    subject: &str,
    why: &str,
    delivered: i64,
    sequence: u64,
) -> Result<(), Error> {
    let mut parked = HeaderMap::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name_str: &str = name.as_ref();
            if name_str.starts_with("ce-")
                || name_str == "traceparent"
                || name_str == "content-type"
            {
                for value in values {
                    parked.append(name.clone(), value.clone());
                }
            }
        }
    }
    // One dead letter per (handler, stream position): parking twice (the consumer and the
    // advisory) keeps one.
    parked.insert(
        "Nats-Msg-Id",
        format!("dlq:{}:{}:{sequence}", group.name, backend.config.stream).as_str(),
    );
    parked.insert("cqrs-handler", group.name.as_str());
    parked.insert("cqrs-error", one_line(why).as_str());
    parked.insert("cqrs-deliveries", delivered.to_string().as_str());
    parked.insert("cqrs-stream-sequence", sequence.to_string().as_str());
    parked.insert("cqrs-subject", subject);
    let subject = names::dead_letter_subject(&backend.config.prefix, &group.name);
    let ack = backend
        .js
        .publish_with_headers(subject, parked, payload.to_vec().into())
        .await
        .map_err(|e| backend.unavailable("parking an event", e))?;
    ack.await
        .map_err(|e| backend.unavailable("parking an event (no acknowledgement)", e))?;
    Ok(())
}

/// Every dead letter (of one group, if given), oldest first.
async fn list(backend: &NatsBackend, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
    let stream_name = names::dead_letter_stream(&backend.config.stream);
    let stream = match backend.js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        // No bus has started on this stream yet: nothing was ever parked.
        Err(e) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(backend.unavailable(&format!("reading stream `{stream_name}`"), e)),
    };
    let subject = match group {
        Some(g) => names::dead_letter_subject(&backend.config.prefix, g),
        None => format!("{}.dlq.>", backend.config.prefix),
    };
    let mut letters = Vec::new();
    let mut next = 1;
    loop {
        let message = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject.clone())
            .send()
            .await;
        let message = match message {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(backend.unavailable("reading dead letters", e)),
        };
        next = message.sequence + 1;
        let h = &message.headers;
        let get = |name: &str| {
            h.get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        letters.push(DeadLetter {
            sequence: message.sequence,
            event_id: Uuid::parse_str(&get("ce-id")).unwrap_or_default(),
            event: get("ce-type"),
            handler: get("cqrs-handler"),
            error: get("cqrs-error"),
            deliveries: get("cqrs-deliveries").parse().unwrap_or(0),
            parked_at: SystemTime::from(message.time),
            data: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            }),
        });
    }
    Ok(letters)
}

fn is_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Puts dead letters back to their handlers; returns how many.
async fn redeliver(backend: &NatsBackend, what: &Redeliver) -> Result<usize, Error> {
    let letters = match what {
        Redeliver::Event(id) => list(backend, None)
            .await?
            .into_iter()
            .filter(|l| l.event_id == *id)
            .collect::<Vec<_>>(),
        Redeliver::AllOf(handler) => list(backend, Some(&group_name(backend, handler))).await?,
    };
    if letters.is_empty() {
        return Ok(0);
    }
    let stream_name = names::dead_letter_stream(&backend.config.stream);
    let stream = backend
        .js
        .get_stream(&stream_name)
        .await
        .map_err(|e| backend.unavailable(&format!("reading stream `{stream_name}`"), e))?;
    let mut count = 0;
    for letter in letters {
        let message = stream
            .get_raw_message(letter.sequence)
            .await
            .map_err(|e| backend.unavailable("reading a dead letter", e))?;
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            let name_str: &str = name.as_ref();
            if !name_str.starts_with("cqrs-") && name_str != "Nats-Msg-Id" {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(
            "Nats-Msg-Id",
            format!("rd:{}:{}", letter.handler, letter.sequence).as_str(),
        );
        let subject = names::redeliver_subject(&backend.config.prefix, &letter.handler);
        let ack = backend
            .js
            .publish_with_headers(subject, headers, message.payload.clone())
            .await
            .map_err(|e| backend.unavailable("redelivering an event", e))?;
        ack.await
            .map_err(|e| backend.unavailable("redelivering an event (no acknowledgement)", e))?;
        stream
            .delete_message(letter.sequence)
            .await
            .map_err(|e| backend.unavailable("removing a redelivered dead letter", e))?;
        count += 1;
    }
    Ok(count)
}

/// The group a handler's name belongs to (its own name when not running here).
pub(crate) fn group_name(backend: &NatsBackend, handler: &str) -> String {
    backend
        .group(handler)
        .map_or_else(|| handler.to_owned(), |g| g.name)
}

/// Parks the events whose last delivery never came back, from the server's max-deliveries
/// advisories (one process of the service takes each).
pub(crate) async fn watch_advisories(
    backend: Arc<NatsBackend>,
    groups: Vec<Group>,
    mut signal: watch::Receiver<u8>,
) {
    let c = &backend.config;
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", c.stream);
    let queue = format!("{}_dead_letters", names::escape(&c.service));
    let mut subscription = match c.client.queue_subscribe(subject, queue).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(target: "cqrs::nats", %error, "cannot watch max-deliveries advisories: an event whose last delivery never came back stays with its consumer");
            return;
        }
    };
    loop {
        let next = subscription.next();
        let changed = std::pin::pin!(signal.changed());
        let advisory = match futures_util::future::select(next, changed).await {
            futures_util::future::Either::Left((Some(m), _)) => m,
            _ => return,
        };
        #[derive(serde::Deserialize)]
        struct Advisory {
            consumer: String,
            stream_seq: u64,
            deliveries: i64,
        }
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            continue;
        };
        let Some(group) = groups.iter().find(|g| {
            advisory.consumer == names::redeliver_consumer_name(&c.service, &g.name)
                || (0..c.partitions)
                    .any(|p| advisory.consumer == names::consumer_name(&c.service, &g.name, p))
        }) else {
            continue;
        };
        let stream = match backend.js.get_stream(&c.stream).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(target: "cqrs::nats", %error, "cannot read an event to park");
                continue;
            }
        };
        let Ok(message) = stream.get_raw_message(advisory.stream_seq).await else {
            continue;
        };
        let why = format!(
            "delivered {} times without an answer (its process may have stopped while handling it)",
            advisory.deliveries
        );
        tracing::error!(target: "cqrs::nats", group = %group.name, sequence = advisory.stream_seq, "event parked in the dead-letter stream: {why}");
        if let Err(error) = park(
            &backend,
            group,
            Some(&message.headers),
            &message.payload,
            message.subject.as_str(),
            &why,
            advisory.deliveries,
            advisory.stream_seq,
        )
        .await
        {
            tracing::error!(target: "cqrs::nats", error = %format_args!("{error:#}"), "could not park an event");
        }
    }
}

pub(crate) fn nats_backend(bus: &Bus) -> Result<Arc<NatsBackend>, Error> {
    let shared = bus.inner.get()?;
    shared
        .lifecycle
        .iter()
        .find_map(|part| part.as_any().downcast_ref::<NatsBackend>())
        .and_then(NatsBackend::arc)
        .ok_or_else(|| {
            Error::new(
                Status::Internal,
                "the bus has no broker: add `.nats(..)` to the builder (feature `nats`)",
            )
        })
}

impl Bus {
    /// The events parked in the dead-letter stream, oldest first: all of them, or one
    /// handler's (by its name, or its `group`).
    pub async fn dead_letters(&self, handler: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let backend = nats_backend(self)?;
        let group = handler.map(|h| group_name(&backend, h));
        list(&backend, group.as_deref()).await
    }

    /// Puts parked events back, each to the handler it was parked for and to no other:
    /// `bus.redeliver(event_id)` or `bus.redeliver(Redeliver::AllOf("handler".into()))`.
    /// They leave the dead-letter stream once the broker has them again. Returns how many.
    pub async fn redeliver(&self, what: impl Into<Redeliver>) -> Result<usize, Error> {
        let backend = nats_backend(self)?;
        redeliver(&backend, &what.into()).await
    }
}
