//! The cache regions of a built bus, by query name, and the channel that carries their
//! invalidations to the other processes (see [`backplane`](super::backplane)).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::backplane::{self, Invalidation, InvalidationChannel};
use super::target::Invalidation as Requested;
use super::{CacheRegion, Invalidated};

/// Every cached query's region, and the bus's invalidation channel.
pub(crate) struct CacheRegions {
    by_name: HashMap<&'static str, Arc<Invalidated>>,
    channel: Option<Arc<dyn InvalidationChannel>>,
    /// This bus, on the channel.
    origin: u64,
    /// Dropped with the bus: ends the channel's receiving loop.
    _closed: watch::Sender<()>,
    /// Whether the channel's receiving loop has been subscribed at least once (`bus.start()`
    /// waits for it: answers cached before would be dropped when it is).
    pub(super) subscribed: watch::Sender<bool>,
}

impl CacheRegions {
    /// The regions, and the channel's receiving loop started (when there is a channel and some
    /// cached query to keep coherent).
    pub(crate) fn new(
        by_name: HashMap<&'static str, Arc<Invalidated>>,
        channel: Option<Arc<dyn InvalidationChannel>>,
    ) -> Arc<Self> {
        let (closed, on_closed) = watch::channel(());
        let regions = Arc::new(CacheRegions {
            by_name,
            channel,
            origin: fastrand::u64(..),
            _closed: closed,
            subscribed: watch::channel(false).0,
        });
        if let Some(channel) = &regions.channel
            && !regions.by_name.is_empty()
        {
            backplane::spawn_listener(channel, &regions, on_closed);
        }
        regions
    }

    /// Waits, up to `within`, until the invalidation channel's receiving loop is subscribed (at
    /// once when there is no channel or nothing cached); `false` if it was not in time.
    pub(crate) async fn wait_subscribed(&self, within: std::time::Duration) -> bool {
        if self.channel.is_none() || self.by_name.is_empty() {
            return true;
        }
        let mut subscribed = self.subscribed.subscribe();
        tokio::time::timeout(within, subscribed.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The region of a cached query.
    pub(crate) fn get(&self, query: &str) -> Option<&Arc<Invalidated>> {
        self.by_name.get(query)
    }

    /// Drops the answers `invalidation` names, here and (through the channel) in every other
    /// process. Failures are logged: the command has succeeded, and the answers expire anyway.
    pub(crate) async fn invalidate(&self, invalidation: Requested) {
        let Requested { query, target } = invalidation;
        let Some(region) = self.by_name.get(query) else {
            return;
        };
        let dropped = match target {
            Some(target) => region.invalidate(target).await,
            None => region.invalidate_all().await,
        };
        if let Err(error) = dropped {
            tracing::warn!(target: "cqrs::cache", query, %error, "cache invalidation failed");
        }
        if let Some(channel) = &self.channel {
            let message = Invalidation {
                origin: self.origin,
                query: query.to_owned(),
                target,
            };
            if let Err(error) = channel.publish(&message.encode()).await {
                tracing::warn!(target: "cqrs::cache", query, channel = channel.name(), %error,
                    "could not send the invalidation to the other processes; their answers expire with their ttl");
            }
        }
    }

    /// Another process's invalidation: drops the answers from this process's first level.
    pub(super) fn apply_received(&self, invalidation: &Invalidation) {
        if invalidation.origin == self.origin {
            return;
        }
        let Some(region) = self.by_name.get(invalidation.query.as_str()) else {
            return;
        };
        region.drop_local(invalidation.target);
    }

    /// Drops every first-level answer (the channel (re)connected: messages may have been lost).
    pub(super) fn drop_local_answers(&self) {
        for region in self.by_name.values() {
            region.drop_local(None);
        }
    }
}
