//! Invalidations between processes: the seam a broadcast backend implements.
//!
//! Each process keeps its own first level of cached answers (in memory). When a command
//! invalidates answers in one process, the bus sends an [`Invalidation`] on its
//! [`InvalidationChannel`], and every other process sharing the channel drops the same answers
//! from its own first level, typically within milliseconds. A process that connects, or
//! reconnects after losing the channel, may have missed invalidations: it drops its whole first
//! level then ([`InvalidationSink::connected`]).
//!
//! **Which channel.** A bus uses one. When several backends could carry invalidations, the
//! one with the highest [`BackplanePriority`] wins: NATS (`.nats(..)`) over Redis
//! (`.redis(..)`) over PostgreSQL (`.postgres(pool)`, `LISTEN`/`NOTIFY`: two instances on one
//! database are coherent with nothing else running). SQLite has none (one process owns the
//! file).
//!
//! **The epoch rule across processes.** An answer computed before an invalidation is never
//! stored after it, in any process: a process that receives an invalidation counts it in the
//! query's epoch before dropping the answers, so that a computation it started before is not
//! stored; an answer it stored before the message arrived is dropped by it. A shared second
//! level (Redis) keeps its own epoch per query beside the answers (see `backend/redis`).
//!
//! **Implementing a channel** (as `backend/redis/backplane.rs` and `backend/sql/notify.rs`
//! do): [`publish`](InvalidationChannel::publish) sends the text it is given to every process
//! on the channel (its own included or not: a process ignores its own), and
//! [`listen`](InvalidationChannel::listen) is the receiving loop the bus spawns once built.
//! The loop connects, calls [`InvalidationSink::connected`] each time it is subscribed, hands
//! each payload to [`InvalidationSink::received`], reconnects after a loss (with a back-off),
//! and returns once [`InvalidationSink::is_closed`] (the bus was dropped;
//! [`InvalidationSink::closed`] resolves then). A backend offers its channel with a priority
//! from its `finish` function (`Backends::offer_backplane` in `bus/backends.rs`).

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::CacheRegions;
use crate::Error;

/// One invalidation on a channel: which process sent it, which query, which answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The bus that sent it (random per bus): a bus ignores its own.
    pub origin: u64,
    /// The query's name.
    pub query: String,
    /// The answers' target (see [`CacheKey`](super::CacheKey)); `None`: every answer.
    pub target: Option<u128>,
}

impl Invalidation {
    /// The text sent on a channel: `v1 <origin> <target or *> <query>` (hex numbers; the query
    /// last, so that any name fits).
    pub fn encode(&self) -> String {
        match self.target {
            Some(target) => format!("v1 {:016x} {target:032x} {}", self.origin, self.query),
            None => format!("v1 {:016x} * {}", self.origin, self.query),
        }
    }

    /// The invalidation in a payload, or `None` if it is not one.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(4, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
        let target = match parts.next()? {
            "*" => None,
            hex => Some(u128::from_str_radix(hex, 16).ok()?),
        };
        let query = parts.next()?.to_owned();
        Some(Invalidation {
            origin,
            query,
            target,
        })
    }
}

/// Which channel a bus uses when several backends offer one: the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(dead_code)] // each variant is offered by its backend, when its feature is on
pub(crate) enum BackplanePriority {
    /// PostgreSQL `LISTEN`/`NOTIFY` (the database every instance shares already).
    Postgres = 1,
    /// Redis pub/sub.
    Redis = 2,
    /// NATS.
    Nats = 3,
}

/// A broadcast channel between the processes of one application, carrying cache
/// invalidations.
///
/// Each process keeps its own first level of cached answers. When a command invalidates
/// answers in one process, the bus sends an [`Invalidation`] on its channel and every other
/// process sharing the channel drops the same answers. A process that connects, or reconnects
/// after losing the channel, may have missed invalidations: it drops its whole first level then.
/// A process that receives an invalidation counts it before dropping the answers, so a
/// computation it started before is not stored (an answer computed before an invalidation is
/// never stored after it, in any process).
///
/// A bus uses one channel: NATS (`.nats(..)`) over Redis ([`redis`](crate::BusBuilder::redis))
/// over PostgreSQL (`.postgres(pool)`, `LISTEN`/`NOTIFY`, so that two instances on one
/// database are coherent with nothing else running). SQLite has none.
///
/// An implementation's [`publish`](Self::publish) sends the text it is given to every process
/// on the channel (its own included or not: a bus ignores its own), and
/// [`listen`](Self::listen) is the receiving loop: it connects, calls
/// [`InvalidationSink::connected`] each time it is subscribed, hands each payload to
/// [`InvalidationSink::received`], reconnects after a loss (with a back-off), and returns once
/// [`InvalidationSink::closed`] resolves (the bus was dropped).
pub trait InvalidationChannel: Send + Sync + 'static {
    /// A short name for logs and `describe()` (`"redis"`, `"postgres"`).
    fn name(&self) -> &'static str;
    /// Sends `payload` (an [`Invalidation::encode`]d text) to every process on the channel.
    fn publish<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// The receiving loop (see above). Spawned once, when the bus is built.
    fn listen(&self, sink: InvalidationSink) -> BoxFuture<'static, ()>;
}

/// What a channel's receiving loop reports to: the bus's cache regions, held weakly.
#[derive(Debug)]
pub struct InvalidationSink {
    regions: Weak<CacheRegions>,
    closed: watch::Receiver<()>,
}

impl InvalidationSink {
    pub(super) fn new(regions: Weak<CacheRegions>, closed: watch::Receiver<()>) -> Self {
        InvalidationSink { regions, closed }
    }

    /// The channel is (again) subscribed: drops every answer of the first level, since
    /// invalidations may have been missed while it was not.
    pub fn connected(&self) {
        if let Some(regions) = self.regions.upgrade() {
            regions.drop_local_answers();
            regions.subscribed.send_replace(true);
        }
    }

    /// A payload received on the channel: applied if it is another bus's invalidation (others
    /// are ignored, with a debug log).
    pub fn received(&self, payload: &[u8]) {
        let Some(regions) = self.regions.upgrade() else {
            return;
        };
        match Invalidation::decode(payload) {
            Some(invalidation) => regions.apply_received(&invalidation),
            None => {
                tracing::debug!(target: "cqrs::cache", payload = %String::from_utf8_lossy(payload), "not an invalidation; ignored")
            }
        }
    }

    /// Whether the bus is gone (the loop should return).
    pub fn is_closed(&self) -> bool {
        self.regions.strong_count() == 0
    }

    /// Resolves when the bus is dropped.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        while closed.changed().await.is_ok() {}
    }
}

/// Starts `channel`'s receiving loop for `regions`, when a tokio runtime is running.
pub(super) fn spawn_listener(
    channel: &Arc<dyn InvalidationChannel>,
    regions: &Arc<CacheRegions>,
    closed: watch::Receiver<()>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(target: "cqrs::cache", channel = channel.name(), "no tokio runtime at build(): invalidations from other processes are not received");
        return;
    };
    let sink = InvalidationSink::new(Arc::downgrade(regions), closed);
    runtime.spawn(channel.listen(sink));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip() {
        for target in [None, Some(0), Some(u128::MAX), Some(0x1234)] {
            let inv = Invalidation {
                origin: 42,
                query: "shop.get product".to_owned(),
                target,
            };
            assert_eq!(Invalidation::decode(inv.encode().as_bytes()), Some(inv));
        }
        assert_eq!(Invalidation::decode(b"v2 1 * Q"), None);
        assert_eq!(Invalidation::decode(b"v1 zz * Q"), None);
        assert_eq!(Invalidation::decode(b"v1 1 *"), None);
        assert_eq!(Invalidation::decode(&[0xff, 0xfe]), None);
    }
}
