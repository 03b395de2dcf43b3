//! The running backend: what `.nats(..)` adds to a bus. It publishes what the outbox relay
//! hands it, and in `bus.start()` sets up the streams and consumers and starts the consumers'
//! pull loops; `bus.shutdown(..)` stops them.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::future::BoxFuture;

use super::{Nats, cloudevent, consumer, dead_letters, names, setup};
use crate::Error;
use crate::bus::lifecycle::Lifecycle;
use crate::bus::{Bus, BusRef, Shared};
use crate::events::EventDecoder;
use crate::pipeline::transport::{EventTransport, OutgoingEvent};

/// The handlers that share one set of consumers: by default one handler, named after it.
#[derive(Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) event: &'static str,
    pub(crate) decoder: EventDecoder,
    /// Where the handlers are in the runtime: (event slot, index among its handlers).
    pub(crate) handlers: Vec<(usize, usize)>,
    pub(crate) handler_names: Vec<&'static str>,
    pub(crate) max_deliver: i64,
}

/// The consumers' tasks, and how to stop them.
struct Running {
    stop: tokio::sync::watch::Sender<u8>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) struct NatsBackend {
    pub(crate) config: Nats,
    pub(crate) js: jetstream::Context,
    ready: AtomicBool,
    running: tokio::sync::Mutex<Option<Running>>,
    /// The groups found at start (for `dead_letters`, `redeliver`, `replay`).
    pub(crate) groups: std::sync::Mutex<Vec<Group>>,
    me: std::sync::Weak<NatsBackend>,
}

impl NatsBackend {
    pub(crate) fn new(config: Nats, me: std::sync::Weak<NatsBackend>) -> Self {
        let js = jetstream::new(config.client.clone());
        NatsBackend {
            me,
            config,
            js,
            ready: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(None),
            groups: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// An error about the server, naming it.
    pub(crate) fn unavailable(&self, doing: &str, error: impl std::fmt::Display) -> Error {
        Error::unavailable(format!("NATS at {}: {doing}: {error}", self.config.url))
    }

    pub(crate) fn group(&self, name: &str) -> Option<Group> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|g| g.name == name || g.handler_names.contains(&name))
            .cloned()
    }

    /// The group of a handler (by its name or its group's), whether or not the bus was
    /// started (an admin command replays without running the handlers).
    pub(crate) fn group_in(&self, shared: &Shared, name: &str) -> Option<Group> {
        self.group(name).or_else(|| {
            self.find_groups(shared)
                .ok()?
                .into_iter()
                .find(|g| g.name == name || g.handler_names.contains(&name))
        })
    }

    /// The handlers of this bus, by group.
    fn find_groups(&self, shared: &Shared) -> Result<Vec<Group>, Error> {
        let mut groups: Vec<Group> = Vec::new();
        for (slot, pipes) in shared.runtime.events.iter().enumerate() {
            for (index, pipe) in pipes.iter().enumerate() {
                let (event, decoder) = pipe.event();
                let name = pipe.group().to_owned();
                let max_deliver = self.config.max_deliver_of(pipe.handler_name());
                match groups.iter_mut().find(|g| g.name == name) {
                    Some(group) if group.event != event => {
                        return Err(Error::internal(format!(
                            "consumer group `{name}` has handlers of two events, `{}` and `{event}`: on nats-server 2.9 a consumer reads one event type; give one of the handlers another `group = \"..\"`",
                            group.event
                        )));
                    }
                    Some(group) => {
                        group.handlers.push((slot, index));
                        group.handler_names.push(pipe.handler_name());
                        group.max_deliver = group.max_deliver.max(max_deliver);
                    }
                    None => groups.push(Group {
                        name,
                        event,
                        decoder,
                        handlers: vec![(slot, index)],
                        handler_names: vec![pipe.handler_name()],
                        max_deliver,
                    }),
                }
            }
        }
        Ok(groups)
    }

    async fn start_all(&self, bus: &Bus) -> Result<(), Error> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let shared = bus.inner.get()?;
        let groups = self.find_groups(&shared)?;
        setup::ensure(self, &groups).await?;
        *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = groups.clone();
        let weak = match &bus.inner {
            BusRef::Strong(arc) => Arc::downgrade(arc),
            BusRef::Weak(weak) => weak.clone(),
        };
        drop(shared);
        let (stop, stopped) = tokio::sync::watch::channel(consumer::RUN);
        let mut tasks = Vec::new();
        let me = self
            .arc()
            .ok_or_else(|| Error::unavailable("the NATS backend has been dropped"))?;
        for group in &groups {
            for partition in 0..self.config.partitions {
                let name = names::consumer_name(&self.config.service, &group.name, partition);
                tasks.push(tokio::spawn(consumer::run(
                    me.clone(),
                    weak.clone(),
                    group.clone(),
                    name,
                    stopped.clone(),
                )));
            }
            let name = names::redeliver_consumer_name(&self.config.service, &group.name);
            tasks.push(tokio::spawn(consumer::run(
                me.clone(),
                weak.clone(),
                group.clone(),
                name,
                stopped.clone(),
            )));
        }
        if !groups.is_empty() {
            tasks.push(tokio::spawn(dead_letters::watch_advisories(
                me.clone(),
                groups.clone(),
                stopped.clone(),
            )));
        }
        self.ready.store(true, Ordering::Release);
        *running = Some(Running { stop, tasks });
        Ok(())
    }

    /// This backend, shared.
    pub(crate) fn arc(&self) -> Option<Arc<NatsBackend>> {
        self.me.upgrade()
    }

    async fn stop_all(&self, grace: Duration) {
        self.ready.store(false, Ordering::Release);
        let Some(running) = self.running.lock().await.take() else {
            return;
        };
        // Stop pulling; the events being handled finish within `grace`.
        let _ = running.stop.send(consumer::STOP_PULLING);
        let deadline = tokio::time::Instant::now() + grace;
        let mut tasks = running.tasks;
        let mut left = Vec::new();
        for mut task in tasks.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                left.push(task);
            }
        }
        if left.is_empty() {
            return;
        }
        // Out of time: what is still being handled goes back to the server for another
        // delivery (a negative acknowledgement, not a wait for `ack_wait`).
        let _ = running.stop.send(consumer::GIVE_BACK);
        let give_back = tokio::time::Instant::now() + Duration::from_secs(1);
        for mut task in left {
            if tokio::time::timeout_at(give_back, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl EventTransport for NatsBackend {
    fn send<'a>(&'a self, event: OutgoingEvent<'a>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let partition =
                names::partition(event.partition_key, &event.id, self.config.partitions);
            let subject = names::event_subject(&self.config.prefix, event.name, partition);
            let headers = cloudevent::headers(&event, &self.config.service);
            let ack = self
                .js
                .publish_with_headers(subject, headers, event.payload.to_owned().into())
                .await
                .map_err(|e| self.unavailable("publishing an event", e))?;
            ack.await
                .map_err(|e| self.unavailable("publishing an event (no acknowledgement)", e))?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Lifecycle for NatsBackend {
    fn start<'a>(&'a self, bus: &'a Bus) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.start_all(bus))
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all(grace))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}
