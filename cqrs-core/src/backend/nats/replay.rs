//! `bus.replay(handler, from)`: one handler's consumers recreated to start at a point in the
//! past (on nats-server 2.9 a consumer cannot be moved, so it is deleted and created again),
//! after its inbox rows are cleared, or the inbox would skip every replayed event. How a new
//! projection catches up, or a broken one is rebuilt (the handler's own tables are the
//! application's to clear first). Other handlers see nothing of it.

use std::time::SystemTime;

use async_nats::jetstream::consumer::DeliverPolicy;

use super::dead_letters::nats_backend;
use super::setup;
use crate::Error;
use crate::bus::Bus;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The oldest event the stream still holds (see [`Nats::max_age`](super::Nats::max_age)).
    Start,
    /// The first event published at or after this time.
    Time(SystemTime),
    /// This position in the stream (a dead letter's `cqrs-stream-sequence`, say).
    Sequence(u64),
}

impl Bus {
    /// Delivers past events again to one handler (by its name, or its `group`), from `from`:
    /// clears the handler's inbox, then recreates its consumers at that point. The bus must
    /// have the handler registered (it need not be started: an admin command can replay for
    /// the running services). Events keep their order per
    /// key as on first delivery; the handler's other consumers in other processes pick the new
    /// ones up by themselves.
    pub async fn replay(&self, handler: &str, from: ReplayFrom) -> Result<(), Error> {
        let backend = nats_backend(self)?;
        let shared = self.inner.get()?;
        let Some(group) = backend.group_in(&shared, handler) else {
            return Err(Error::not_found(format!(
                "no event handler `{handler}` on this bus: is the name right? (`bus.describe()` lists them)"
            )));
        };
        let policy = match from {
            ReplayFrom::Start => DeliverPolicy::All,
            ReplayFrom::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: start_sequence.max(1),
            },
            ReplayFrom::Time(time) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(time),
            },
        };
        let database = shared.stores.database()?;
        for handler in &group.handler_names {
            let forgotten = database.forget_handled(handler).await?;
            tracing::info!(target: "cqrs::nats", handler, forgotten, "inbox cleared for a replay");
        }
        drop(shared);
        let stream = backend
            .js
            .get_stream(&backend.config.stream)
            .await
            .map_err(|e| backend.unavailable("reading the event stream", e))?;
        for partition in 0..backend.config.partitions {
            let config = setup::consumer_config(&backend, &group, Some(partition), policy);
            let name = config.durable_name.clone().unwrap_or_default();
            // Gone already is fine: the point is that it is created again below.
            let _ = stream.delete_consumer(&name).await;
            stream
                .create_consumer(config)
                .await
                .map_err(|e| backend.unavailable(&format!("creating consumer `{name}`"), e))?;
        }
        tracing::info!(target: "cqrs::nats", group = %group.name, ?from, "replay started");
        Ok(())
    }
}
