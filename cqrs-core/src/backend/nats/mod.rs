//! NATS JetStream: events across processes and services (feature `nats`).
//!
//! `.nats(Nats::new(client).service("shop"))` on the builder makes the broker the way events
//! travel. Every event goes through the SQL outbox (the record of truth); the outbox relay
//! publishes committed rows to a JetStream stream, as CloudEvents, in order per partition key;
//! each event handler receives events from its own durable consumers, whichever process runs
//! it. Failed events are retried through redelivery, then parked in a dead-letter stream; a
//! handler's past can be replayed. The parts:
//!
//! | file | does |
//! |---|---|
//! | `mod.rs` | [`Nats`], the settings; `.nats(..)` on the builder |
//! | `names.rs` | subjects, consumer names, partitions: the layout on the server |
//! | `cloudevent.rs` | an event as a CloudEvent in binary mode (headers + JSON data) |
//! | `state.rs` | what the running backend holds (settings, JetStream context, groups, tasks) |
//! | `backend.rs` | the running backend: publishing, `bus.start()`, `bus.shutdown(..)` |
//! | `setup.rs` | streams and consumers created or checked, clashes reported |
//! | `consumer.rs` | the pull loops: an event to its handlers, ack, retry, park |
//! | `dead_letters.rs` | the dead-letter stream: park, list, redeliver |
//! | `replay.rs` | a handler's consumers recreated from a point in the past |
//! | `backplane.rs` | cache invalidations between processes (core NATS; wins over Redis, PostgreSQL) |
//!
//! Tested against nats-server 2.9.10, and written for what 2.9 offers (one filter subject per
//! consumer, negative acknowledgement with a delay, the max-deliveries advisory).

mod backend;
mod backplane;
mod cloudevent;
mod consumer;
mod dead_letters;
mod names;
mod replay;
mod setup;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::bus::BusBuilder;
use crate::bus::backends::Backends;

pub use dead_letters::{DeadLetter, Redeliver};
pub use replay::ReplayFrom;

/// How a bus uses NATS JetStream: the connection, the service's name, and the layout and
/// timing of its streams and consumers. Every setting has a default; `Nats::new(client)` (or
/// just `.nats(client)`) is enough on one machine.
///
#[cfg_attr(feature = "sqlite", doc = "```no_run")]
#[cfg_attr(not(feature = "sqlite"), doc = "```ignore")]
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::Nats;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = cqrs_core::sqlite_pool("sqlite::memory:").await?;
/// let nats = Nats::connect("nats://127.0.0.1:4222").await?.service("shop");
/// let bus = Bus::builder().sqlite(pool).nats(nats).build()?;
/// bus.migrate().await?;
/// bus.start().await?; // streams and consumers, then the relay and the consumers run
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) url: String,
    pub(crate) service: String,
    pub(crate) stream: String,
    pub(crate) prefix: String,
    pub(crate) partitions: u32,
    pub(crate) max_age: Duration,
    pub(crate) duplicate_window: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: i64,
    pub(crate) handler_max_deliver: HashMap<String, i64>,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) pull_wait: Duration,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.url)
            .field("service", &self.service)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// Uses this connection, with the default settings.
    pub fn new(client: async_nats::Client) -> Self {
        let info = client.server_info();
        let url = format!("nats://{}:{}", info.host, info.port);
        Nats {
            client,
            url,
            service: "cqrs".to_owned(),
            stream: "CQRS_EVENTS".to_owned(),
            prefix: "cqrs".to_owned(),
            partitions: 8,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            handler_max_deliver: HashMap::new(),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            pull_wait: Duration::from_secs(1),
        }
    }

    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`), failing within a few seconds with an
    /// `Unavailable` error that names the URL when nothing answers there.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .retry_on_initial_connect();
        let connecting = options.connect(url);
        // `retry_on_initial_connect` makes `connect` return at once and keep trying in the
        // background; wait for the first connection here, so a wrong URL is an error now.
        let client = connecting
            .await
            .map_err(|e| Error::unavailable(format!("cannot reach NATS at {url}: {e}")))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "cannot reach NATS at {url}: no answer within 5 s (is nats-server running, with `-js`?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut nats = Nats::new(client);
        nats.url = url.to_owned();
        Ok(nats)
    }

    /// The service's name (`cqrs` by default): it prefixes the names of its consumers
    /// (`<service>_<handler>_<partition>`) and is the CloudEvent `source` of its events. Two
    /// services with different names each get every event; instances of one service share
    /// the work.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// The JetStream stream of events (`CQRS_EVENTS` by default); dead letters go to
    /// `<stream>_DLQ`. Services that exchange events use the same stream and subject prefix.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// The first token of every subject (`cqrs` by default): events are published on
    /// `<prefix>.ev.<event>.<partition>`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many partitions the events are spread over (8 by default): the events of one key go
    /// to one partition, where each handler takes them one at a time, in order; partitions
    /// proceed in parallel. Every service on the stream must use the same number (it is
    /// recorded in the stream's description, and `start()` refuses another).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// How long the stream keeps events (7 days by default): how far back a replay reaches.
    /// Retention is by limits, never by interest, so that events can be replayed.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long the server waits for a handler's answer before it delivers the event again
    /// (30 s by default). A handler still working tells the server so every half of it.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How many times an event is delivered to a handler before it is parked in the
    /// dead-letter stream (5 by default).
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = i64::from(max_deliver.max(1));
        self
    }

    /// `max_deliver` for one handler (by its name, as `describe()` shows it).
    pub fn handler_max_deliver(mut self, handler: impl Into<String>, max_deliver: u32) -> Self {
        self.handler_max_deliver
            .insert(handler.into(), i64::from(max_deliver.max(1)));
        self
    }

    /// The delay before a failed event is delivered again: `initial` after the first failure,
    /// doubling up to `max` (1 s and 60 s by default).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }

    /// How long one pull waits for an event before asking again (1 s by default); also how
    /// long `shutdown` may wait for a pull to end.
    pub fn pull_wait(mut self, pull_wait: Duration) -> Self {
        self.pull_wait = pull_wait.max(Duration::from_millis(100));
        self
    }

    /// The connection.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    pub(crate) fn max_deliver_of(&self, handler: &str) -> i64 {
        self.handler_max_deliver
            .get(handler)
            .copied()
            .unwrap_or(self.max_deliver)
    }
}

impl From<async_nats::Client> for Nats {
    fn from(client: async_nats::Client) -> Self {
        Nats::new(client)
    }
}

/// What the builder was told (a second `.nats(..)` replaces the first).
#[derive(Default)]
struct NatsSettings {
    backend: Option<Arc<state::NatsBackend>>,
}

/// When the bus is built: a broker needs the database's outbox.
fn finish(backends: &mut Backends) {
    let Some(NatsSettings {
        backend: Some(backend),
    }) = backends.take_settings::<NatsSettings>()
    else {
        return;
    };
    // After every backend finished: `.sqlite(..)` may come after `.nats(..)`.
    backends.checks.push(|backends| {
        backends.database.is_none().then(|| crate::BuildProblem::Backend {
            backend: "nats",
            problem: "`.nats(..)` needs a database for the outbox, through which every event reaches the broker: add `.sqlite(pool)` or `.postgres(pool)` to the builder".to_owned(),
        })
    });
    if backend.config.partitions == 0 {
        backends.problems.push(crate::BuildProblem::Backend {
            backend: "nats",
            problem: "`Nats::partitions(0)`: events need at least one partition".to_owned(),
        });
    }
    // Cache invalidations between processes go over NATS too (over Redis and PostgreSQL).
    backends.offer_backplane(
        crate::pipeline::cache::backplane::BackplanePriority::Nats,
        Arc::new(backplane::NatsInvalidationChannel::new(
            backend.config.client.clone(),
            &backend.config.prefix,
        )),
    );
    backends.lifecycle.push(backend);
}

impl BusBuilder {
    /// Sends events through NATS JetStream (feature `nats`): committed events go from the
    /// outbox to a stream, and each event handler receives them from its own durable
    /// consumers, in this process or any other running it. Needs a database (the outbox);
    /// call `bus.start().await` after `build()`. See [`Nats`] for the settings, and the
    /// [guide](crate::guide) for the layout on the server and what it guarantees.
    pub fn nats(mut self, nats: impl Into<Nats>) -> Self {
        let nats = nats.into();
        let backend = Arc::new_cyclic(|me| state::NatsBackend::new(nats, me.clone()));
        self.backends.transport = Some(backend.clone());
        self.backends.settings::<NatsSettings>(finish).backend = Some(backend);
        self
    }
}
