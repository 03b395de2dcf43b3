//! Starting and stopping what runs beside the bus: [`Bus::start`] and [`Bus::shutdown`].
//!
//! `build()` is synchronous and touches no network. What needs the network before the bus can
//! do its work (a broker's streams and consumers, checked or created) is done by
//! `bus.start().await`, once, after `build()`; `bus.shutdown(grace).await` undoes it in order:
//! stop taking new work, finish (or give back) the work in flight, stop the outbox relay, let
//! go of the bus. A bus with no broker needs neither: `start()` returns at once, and
//! `shutdown(grace)` is [`Bus::close`].

use std::any::Any;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Bus;
use crate::Error;

/// A backend's part in `bus.start()` and `bus.shutdown(..)`.
pub(crate) trait Lifecycle: Send + Sync + 'static {
    /// Checks or creates what the backend needs and starts its tasks. Called once per
    /// `bus.start()`; a second call after a successful one does nothing.
    fn start<'a>(&'a self, bus: &'a Bus) -> BoxFuture<'a, Result<(), Error>>;
    /// Stops taking new work and finishes, or gives back, the work in flight, within `grace`.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;
    /// The backend's own type, for its `impl Bus` methods.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

impl Bus {
    /// Starts what runs beside the bus once it is built: waits (up to 5 s) for the cache
    /// invalidation channel to be subscribed, when the bus has one (PostgreSQL, Redis, NATS);
    /// with a broker (`.nats(..)`), creates or checks its streams and consumers (every clash
    /// reported at once, saying what differs), then starts the outbox relay and the event
    /// handlers' consumers. Call it once, after `build()` and after `bus.migrate()`, before
    /// serving; with none of these it returns `Ok` at once.
    ///
    /// ```
    /// # use cqrs_core::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().discover(false).build()?;
    /// bus.start().await?;
    /// // .. serve ..
    /// bus.shutdown(std::time::Duration::from_secs(10)).await;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), Error> {
        let inner = self.inner.get()?;
        // Cached answers are dropped when the invalidation channel first subscribes (what was
        // cached before may have missed an invalidation): serve once it has.
        if !inner
            .runtime
            .cache_regions
            .wait_subscribed(Duration::from_secs(5))
            .await
        {
            tracing::warn!(target: "cqrs::cache", "the cache invalidation channel is not subscribed after 5 s; serving anyway (cached answers are dropped once it is)");
        }
        for part in inner.lifecycle.iter() {
            part.start(self).await?;
        }
        Ok(())
    }

    /// Stops the bus within `grace`: consumers stop pulling, the events being handled finish
    /// (or, when `grace` runs out, go back to the broker for another delivery), the outbox
    /// relay stops, and this handle lets go of the bus as [`Bus::close`] does with what is left
    /// of `grace`. Returns `true` if everything stopped in time. A service's shutdown: stop
    /// accepting requests, let the in-flight ones finish, then `bus.shutdown(grace_left)`.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        let parts = match self.inner.get() {
            Ok(inner) => inner.lifecycle.to_vec(),
            Err(_) => Vec::new(),
        };
        for part in parts {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            part.shutdown(left).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.close(left).await
    }
}
