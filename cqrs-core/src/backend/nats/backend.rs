//! The running backend: what `.nats(..)` adds to a bus. It publishes what the outbox relay
//! hands it, and in `bus.start()` sets up the streams and consumers and starts the consumers'
//! pull loops; `bus.shutdown(..)` stops them.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::state::{NatsBackend, Running};
use super::{cloudevent, consumer, dead_letters, names, setup};
use crate::Error;
use crate::bus::lifecycle::Lifecycle;
use crate::bus::{Bus, BusRef};
use crate::pipeline::transport::{EventTransport, OutgoingEvent};

impl NatsBackend {
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
