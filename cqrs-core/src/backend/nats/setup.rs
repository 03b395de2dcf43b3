//! `bus.start()`'s first step: the event stream, the dead-letter stream and every handler's
//! consumers, created when missing and checked when present. Every clash between what exists
//! and what this bus needs is reported in one error, each saying what differs; nothing that
//! exists is changed (another service may rely on it).

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};

use super::names;
use super::state::{Group, NatsBackend};
use crate::Error;

/// The event stream's description, which records the number of partitions.
fn description(partitions: u32) -> String {
    format!("cqrs events; partitions={partitions}")
}

pub(crate) fn event_stream_config(backend: &NatsBackend) -> stream::Config {
    let c = &backend.config;
    stream::Config {
        name: c.stream.clone(),
        subjects: vec![format!("{}.ev.>", c.prefix), format!("{}.rd.>", c.prefix)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_age: c.max_age,
        duplicate_window: c.duplicate_window,
        description: Some(description(c.partitions)),
        allow_direct: true,
        ..Default::default()
    }
}

fn dead_letter_stream_config(backend: &NatsBackend) -> stream::Config {
    let c = &backend.config;
    stream::Config {
        name: names::dead_letter_stream(&c.stream),
        subjects: vec![format!("{}.dlq.>", c.prefix)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        duplicate_window: c.duplicate_window,
        description: Some("cqrs dead letters".to_owned()),
        ..Default::default()
    }
}

/// The consumer of `group` on `partition` (`None`: its redeliveries), starting at `from`.
pub(crate) fn consumer_config(
    backend: &NatsBackend,
    group: &Group,
    partition: Option<u32>,
    from: DeliverPolicy,
) -> pull::Config {
    let c = &backend.config;
    let (name, filter) = match partition {
        Some(p) => (
            names::consumer_name(&c.service, &group.name, p),
            names::event_subject(&c.prefix, group.event, p),
        ),
        None => (
            names::redeliver_consumer_name(&c.service, &group.name),
            names::redeliver_subject(&c.prefix, &group.name),
        ),
    };
    pull::Config {
        durable_name: Some(name),
        description: Some(format!(
            "cqrs handler `{}` of `{}`",
            group.name, group.event
        )),
        deliver_policy: from,
        ack_policy: AckPolicy::Explicit,
        ack_wait: c.ack_wait,
        max_deliver: group.max_deliver,
        filter_subject: filter,
        // One event at a time per partition: the order of a key's events holds in every
        // process that shares the consumer.
        max_ack_pending: 1,
        ..Default::default()
    }
}

/// Creates what is missing; checks what exists; one error listing every clash.
pub(crate) async fn ensure(backend: &NatsBackend, groups: &[Group]) -> Result<(), Error> {
    let mut clashes = Vec::new();
    let events = stream_checked(backend, event_stream_config(backend), &mut clashes).await?;
    stream_checked(backend, dead_letter_stream_config(backend), &mut clashes).await?;
    if let Some(events) = events {
        for group in groups {
            let partitions = (0..backend.config.partitions).map(Some).chain([None]);
            for partition in partitions {
                let wanted = consumer_config(backend, group, partition, DeliverPolicy::New);
                consumer_checked(backend, &events, wanted, &mut clashes).await?;
            }
        }
    }
    if clashes.is_empty() {
        return Ok(());
    }
    Err(Error::internal(format!(
        "NATS at {}: what exists on the server differs from what this bus needs ({} difference{}): {}. Change the bus's settings to match, or remove the stream or consumer (`nats stream rm ..`, `nats consumer rm ..`) to have it created again",
        backend.config.url,
        clashes.len(),
        if clashes.len() == 1 { "" } else { "s" },
        clashes.join("; ")
    )))
}

async fn stream_checked(
    backend: &NatsBackend,
    wanted: stream::Config,
    clashes: &mut Vec<String>,
) -> Result<Option<stream::Stream>, Error> {
    let js = &backend.js;
    let name = wanted.name.clone();
    match js.get_stream(&name).await {
        Ok(existing) => checked(backend, existing, &wanted, clashes).await,
        Err(error)
            if matches!(
                error.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            match js.create_stream(wanted.clone()).await {
                Ok(created) => Ok(Some(created)),
                // Created by another process meanwhile? Then check it.
                Err(e) => match js.get_stream(&name).await {
                    Ok(existing) => checked(backend, existing, &wanted, clashes).await,
                    Err(_) => Err(backend.unavailable(&format!("creating stream `{name}`"), e)),
                },
            }
        }
        Err(error) => Err(backend.unavailable(
            &format!("reading stream `{name}` (is JetStream enabled: `nats-server -js`?)"),
            error,
        )),
    }
}

/// An existing stream, its configuration compared with the wanted one.
async fn checked(
    backend: &NatsBackend,
    mut existing: stream::Stream,
    wanted: &stream::Config,
    clashes: &mut Vec<String>,
) -> Result<Option<stream::Stream>, Error> {
    let info = existing
        .info()
        .await
        .map_err(|e| backend.unavailable("reading a stream", e))?;
    compare_stream(&info.config, wanted, clashes);
    Ok(Some(existing))
}

fn compare_stream(existing: &stream::Config, wanted: &stream::Config, clashes: &mut Vec<String>) {
    let name = &wanted.name;
    for subject in &wanted.subjects {
        if !existing.subjects.contains(subject) {
            clashes.push(format!(
                "stream `{name}` has subjects {:?}, not `{subject}`",
                existing.subjects
            ));
        }
    }
    if existing.retention != wanted.retention {
        clashes.push(format!(
            "stream `{name}` has retention {:?}, not {:?} (events must stay for replay)",
            existing.retention, wanted.retention
        ));
    }
    if existing.max_age != wanted.max_age {
        clashes.push(format!(
            "stream `{name}` has max_age {}, not {}",
            seconds(existing.max_age),
            seconds(wanted.max_age)
        ));
    }
    if existing.duplicate_window != wanted.duplicate_window {
        clashes.push(format!(
            "stream `{name}` has duplicate_window {}, not {}",
            seconds(existing.duplicate_window),
            seconds(wanted.duplicate_window)
        ));
    }
    if existing.description != wanted.description {
        clashes.push(format!(
            "stream `{name}` is described {:?}, not {:?} (every service must use the same number of partitions)",
            existing.description.as_deref().unwrap_or(""),
            wanted.description.as_deref().unwrap_or("")
        ));
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

async fn consumer_checked(
    backend: &NatsBackend,
    stream: &stream::Stream,
    wanted: pull::Config,
    clashes: &mut Vec<String>,
) -> Result<(), Error> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let existing = &info.config;
            let mut differs = |what: &str, have: String, want: String| {
                if have != want {
                    clashes.push(format!("consumer `{name}` has {what} {have}, not {want}"));
                }
            };
            differs(
                "filter subject",
                format!("`{}`", existing.filter_subject),
                format!("`{}`", wanted.filter_subject),
            );
            differs(
                "max_deliver",
                existing.max_deliver.to_string(),
                wanted.max_deliver.to_string(),
            );
            differs(
                "ack_wait",
                seconds(existing.ack_wait),
                seconds(wanted.ack_wait),
            );
            differs(
                "max_ack_pending",
                existing.max_ack_pending.to_string(),
                wanted.max_ack_pending.to_string(),
            );
            differs(
                "ack policy",
                format!("{:?}", existing.ack_policy),
                format!("{:?}", wanted.ack_policy),
            );
            Ok(())
        }
        Err(_) => {
            stream
                .create_consumer(wanted)
                .await
                .map_err(|e| backend.unavailable(&format!("creating consumer `{name}`"), e))?;
            Ok(())
        }
    }
}
