//! What `send_with_report` and `query_with_report` return.

use std::time::Duration;

/// The output of a dispatch, with what happened on the way.
///
/// ```
/// # use cqrs_core::prelude::*;
/// # #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// # struct Ping;
/// # #[command_handler(Ping)] struct PingHandler;
/// # impl CommandHandler<Ping> for PingHandler {
/// #     async fn handle(&self, _: Ping, _: &mut CommandContext) -> Result<(), Error> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let bus = Bus::builder().discover(false).register::<PingHandler>().build().unwrap();
/// let report = bus.send_with_report(Ping).await.unwrap();
/// assert_eq!(report.attempts, 1);
/// assert!(!report.cache_hit);
/// assert!(report.events.is_empty());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report<T> {
    /// What the handler returned (or the stored reply, or the cached answer).
    pub output: T,
    /// How many times the handler ran: 1 unless retried, 0 when the answer came from the cache
    /// or from a stored idempotent reply.
    pub attempts: u32,
    /// Whether a query's answer came from the cache.
    pub cache_hit: bool,
    /// Whether a command's reply was the one stored for its idempotency key.
    pub replayed: bool,
    /// The names of the events the handler emitted, in order.
    pub events: Vec<&'static str>,
    /// The time from dispatch to answer, event delivery included.
    pub elapsed: Duration,
}

/// What the layers record while a dispatch runs.
#[derive(Debug, Default)]
pub(crate) struct DispatchStats {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) started: Started,
    pub(crate) attempts: u32,
    pub(crate) cache_hit: bool,
    /// Whether the query went through a cache layer (hit or miss).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) cached: bool,
    pub(crate) replayed: bool,
    pub(crate) collect_events: bool,
    pub(crate) events: Vec<&'static str>,
}

impl DispatchStats {
    pub(crate) fn reporting() -> Self {
        DispatchStats {
            collect_events: true,
            ..DispatchStats::default()
        }
    }

    pub(crate) fn into_report<T>(self, output: T, elapsed: Duration) -> Report<T> {
        Report {
            output,
            attempts: self.attempts,
            cache_hit: self.cache_hit,
            replayed: self.replayed,
            events: self.events,
            elapsed,
        }
    }
}

/// When a dispatch started (only measured with the `metrics` feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Started {
    /// The time since the dispatch started.
    #[cfg(feature = "metrics")]
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.at.elapsed()
    }
}

impl Default for Started {
    #[inline]
    fn default() -> Self {
        Started {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }
}
