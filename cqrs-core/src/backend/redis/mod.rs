//! Redis (feature `redis`), shared by every instance of a service: cache invalidations between
//! processes over pub/sub ([`backplane`]), [`RedisIdempotencyStore`] ([`idempotency`]), and the
//! leases of `#[exclusive]` handlers when the bus has no PostgreSQL ([`lock`]).
//!
//! ```no_run
//! # use cqrs_core::prelude::*;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = cqrs_core::redis::Client::open("redis://127.0.0.1:6379")?;
//! let bus = Bus::builder().redis(redis).redis_prefix("shop:").build()?;
//! # Ok(()) }
//! ```
//!
//! **Why the `redis` crate** (redis-rs) rather than `fred`: both are maintained and async on
//! tokio; redis-rs is the client most of the ecosystem already builds, its `ConnectionManager`
//! reconnects by itself and is cheap to clone (one multiplexed connection per bus), its scripts
//! are all the atomic steps here need, and its pub/sub is a plain stream whose end says the
//! connection was lost: the very signal to drop the first-level cache. fred's own reconnect
//! policy, pools and event streams would sit beside this code rather than replace it.
//!
//! **When Redis is down**: invalidations are not sent (logged; the answers expire with their
//! `ttl`) and the listener reconnects with a back-off, dropping the first level once back;
//! idempotency keys and `#[exclusive]` locks fail closed, with `Unavailable` (a 503 over HTTP):
//! running the command without its key could run it twice, without its lock beside another. Commands without a key are not affected.
//!
//! Every key and channel starts with the bus's prefix (`cqrs:` unless
//! [`redis_prefix`](crate::BusBuilder::redis_prefix) is given), so that services, or tests,
//! sharing one Redis do not meet.

pub(crate) mod backplane;
pub(crate) mod cache;
pub(crate) mod idempotency;
pub(crate) mod lock;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

pub use self::cache::RedisCache;
pub use self::idempotency::RedisIdempotencyStore;
use crate::bus::BusBuilder;
use crate::bus::backends::Backends;
use crate::pipeline::cache::backplane::BackplanePriority;
use crate::pipeline::exclusive::LockPriority;
use crate::{Error, Status};

/// The prefix of every key and channel when none is given.
pub(crate) const DEFAULT_PREFIX: &str = "cqrs:";

/// One Redis for a bus: the client, a multiplexed connection made on first use (and remade
/// after a loss by `ConnectionManager`), and the prefix.
#[derive(Clone)]
pub(crate) struct Redis {
    client: redis::Client,
    manager: Arc<OnceCell<ConnectionManager>>,
    pub(crate) prefix: Arc<str>,
}

impl Redis {
    pub(crate) fn new(client: redis::Client, prefix: &str) -> Self {
        Redis {
            client,
            manager: Arc::new(OnceCell::new()),
            prefix: prefix.into(),
        }
    }

    /// The shared connection (connected on first use; a failed attempt is retried next time).
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, Error> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                // Short timeouts and few retries: a dispatch waiting on a Redis that is down
                // should fail (closed) in about a second, not hang.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(redis_error)
            })
            .await?;
        Ok(manager.clone())
    }

    /// The client, for connections of their own (pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `prefix` + `rest`.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

/// A Redis error as the bus's: the connection's (refused, dropped, timed out) are transient
/// (`Unavailable`), the others internal.
pub(crate) fn redis_error(error: redis::RedisError) -> Error {
    let status = if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
    {
        Status::Unavailable
    } else {
        Status::Internal
    };
    Error::from_std(status, error).context("Redis")
}

/// What the builder was told about Redis, in any order.
#[derive(Default)]
pub(crate) struct RedisSettings {
    client: Option<redis::Client>,
    prefix: Option<String>,
    lock_lease: Option<Duration>,
}

fn settings(builder: &mut BusBuilder) -> &mut RedisSettings {
    builder.backends.settings::<RedisSettings>(finish)
}

/// When the bus is built: Redis pub/sub as the invalidation channel (over PostgreSQL's), and
/// the idempotency store when the bus has no database (a database's store commits its replies
/// with the work, so it stays the truth when there is one).
fn finish(backends: &mut Backends) {
    let Some(RedisSettings {
        client: Some(client),
        prefix,
        lock_lease,
    }) = backends.take_settings::<RedisSettings>()
    else {
        return;
    };
    let redis = Redis::new(client, prefix.as_deref().unwrap_or(DEFAULT_PREFIX));
    backends.offer_backplane(
        BackplanePriority::Redis,
        Arc::new(backplane::RedisInvalidationChannel::new(redis.clone())),
    );
    // `#[exclusive]`: leases, unless PostgreSQL's advisory locks are there (they are held by
    // the transaction's own session, and need no lease).
    let lease = lock_lease.unwrap_or(lock::DEFAULT_LEASE);
    backends.offer_locks(
        LockPriority::Redis,
        Arc::new(lock::RedisLocks::new(redis.clone(), lease)),
    );
    backends.redis_idempotency = Some(Arc::new(RedisIdempotencyStore::from_redis(redis)));
}

impl BusBuilder {
    /// Uses this Redis, shared by every instance of the service: cache invalidations reach
    /// every process through its pub/sub (NATS wins when also configured; Redis wins over
    /// PostgreSQL's `LISTEN`/`NOTIFY`), idempotency keys live there when the bus has no
    /// database, and `#[exclusive]` handlers take leases there when it has no PostgreSQL. See [`redis_prefix`](Self::redis_prefix) for the names it uses.
    pub fn redis(mut self, client: redis::Client) -> Self {
        settings(&mut self).client = Some(client);
        self
    }

    /// How long the lease of an `#[exclusive]` lock on Redis lasts unless renewed (10 s by
    /// default). The holder renews it every third of it while its handler runs; a holder that
    /// dies frees its key within one lease. Shorter frees keys of dead holders sooner, and
    /// needs Redis to answer a renewal within a third of it. Not used when the bus has
    /// PostgreSQL (its advisory locks end with their session).
    pub fn redis_lock_lease(mut self, lease: Duration) -> Self {
        settings(&mut self).lock_lease = Some(lease);
        self
    }

    /// The prefix of every Redis key and channel of this bus (`cqrs:` by default): give each
    /// service its own (`"shop:"`).
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        settings(&mut self).prefix = Some(prefix.into());
        self
    }
}
